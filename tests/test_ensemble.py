"""experiments.ensemble on the tiny config: a student ensembled or souped with itself is that
student, figure for figure; the ensemble's logits are the members' mean and the soup's weights
their average; students fed differently are refused, naming the checkpoint and the key."""

import json
import os
import shutil
import tempfile

import jax
import numpy as np
import pytest

from rd_jax.experiments import ensemble, interpolate
from rd_jax.stages import crsd, eval as eval_stage
from rd_jax.student import data as data_lib, predict as predict_lib


@pytest.fixture(scope="module")
def two_students(tmp_path_factory, tiny_config):
  root = str(tmp_path_factory.mktemp("ens"))
  dirs = []
  for seed in (0, 1):
    cfg = tiny_config()
    cfg.train.num_steps = 4
    cfg.seed = seed
    crsd.run(cfg, os.path.join(root, f"s{seed}"))
    dirs.append(os.path.join(root, f"s{seed}", "crsd"))
  return tiny_config(), root, dirs


def test_a_student_with_itself_is_that_student(two_students):
  cfg, root, (a, _) = two_students
  out = os.path.join(root, "self.json")
  result = ensemble.run(cfg, [a, a], out, with_soup=True, test=True)
  assert json.load(open(out)) == result
  meta, model, params, mesh = eval_stage.restore_student(cfg, a)
  alone = {}
  for split in ("valid", "test"):
    pairs = eval_stage.pairs_of(cfg, split, root, meta["item_template"])
    tokenizer = data_lib.load_tokenizer(meta["tokenizer"])
    offsets = None if split == "valid" else alone["valid"]["decision_offsets"]
    alone[split], _ = interpolate.score(predict_lib.make_predict_fn(model, mesh), params, pairs,
                                        tokenizer, cfg, meta, offsets)
  for split in ("valid", "test"):
    for name in ("member_0", "member_1", "ensemble", "soup"):
      got = result[split][name]
      for key in ("macro_f1", "macro_f1_argmax", "ndcg@10", "log_loss", "decision_offsets"):
        np.testing.assert_allclose(got[key], alone[split][key], atol=1e-6,
                                   err_msg=f"{split} {name} {key}")
  assert "macro_f1_crossfit" in result["valid"]["ensemble"]


def test_ensemble_is_the_mean_of_the_logits_and_soup_the_mean_of_the_weights(two_students, tmp_path,
                                                                              monkeypatch):
  cfg, root, dirs = two_students
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))   # no output file: a temporary folder
  result = ensemble.run(cfg, dirs, with_soup=True)
  assert list(tmp_path.iterdir()) == []                       # removed on return
  assert "test" not in result                          # test is read only with test=True
  restored = [eval_stage.restore_student(cfg, d) for d in dirs]
  meta, model, _, mesh = restored[0]
  pairs = eval_stage.pairs_of(cfg, "valid", root, meta["item_template"])
  tokenizer = data_lib.load_tokenizer(meta["tokenizer"])
  predict = predict_lib.make_predict_fn(model, mesh)
  logits = [predict_lib.predict_logits(predict, r[2], pairs, tokenizer, cfg,
                                       max_len_std=meta["max_len_std"])[0] for r in restored]
  gold = np.asarray([p.label_id for p in pairs])
  mean = interpolate.figures_of_logits((logits[0] + logits[1]) / 2, gold, pairs, cfg, meta)
  assert result["valid"]["ensemble"]["log_loss"] == pytest.approx(mean["log_loss"], abs=1e-9)
  assert result["valid"]["ensemble"]["macro_f1"] == pytest.approx(mean["macro_f1"], abs=1e-9)
  # the two seeds' heads differ, so the soup is not either member
  soup = ensemble.soup([r[2] for r in restored])
  k0, k1, ks = (np.asarray(p["classifier"]["kernel"])
                for p in (restored[0][2], restored[1][2], soup))
  assert not np.allclose(k0, k1)
  np.testing.assert_allclose(ks, (k0 + k1) / 2, rtol=1e-6)
  assert jax.tree.structure(soup) == jax.tree.structure(restored[0][2])
  m = result["members_mean"]["valid"]["macro_f1"]
  assert m == pytest.approx((result["valid"]["member_0"]["macro_f1"]
                             + result["valid"]["member_1"]["macro_f1"]) / 2)


def test_students_fed_differently_are_refused(two_students):
  cfg, root, (a, b) = two_students
  other = os.path.join(root, "hinted", "crsd")
  shutil.copytree(b, other)
  meta_path = os.path.join(other, "final", "meta.json")
  meta = json.load(open(meta_path))
  meta["match_hint"] = "missing" if not meta.get("match_hint") else ""
  json.dump(meta, open(meta_path, "w"))
  with pytest.raises(ValueError, match=r"hinted/crsd has match_hint"):
    ensemble.run(cfg, [a, other], os.path.join(root, "bad.json"))
  with pytest.raises(ValueError, match="at least 2"):
    ensemble.run(cfg, [a], os.path.join(root, "one.json"))
