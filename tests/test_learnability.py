"""The students learn: on a task whose label is written in the item (tests/cue_data.py), the tiny
baseline and the tiny CRSD student with the library's default CRSD settings reach valid
macro-F1 >= 0.5 in 100 steps (the prior, always "Exact", scores ~0.17). A student that stops
learning — InfoNCE drowning CE, collapsed [CLS] vectors, a dead decision rule — fails here."""

import pytest

from rd_jax.stages import crsd

from cue_data import cue_config, write_cue_pairs


@pytest.fixture(scope="module")
def cue_path(tmp_path_factory):
  return write_cue_pairs(tmp_path_factory.mktemp("cue") / "cue.jsonl")


@pytest.mark.parametrize("stage,query_prior", [("baseline", 0.0), ("crsd", 0.0), ("crsd", 1.0)])
def test_student_learns_the_cue(stage, query_prior, cue_path, tiny_config, tmp_path):
  cfg = cue_config(tiny_config, cue_path)
  cfg.student.query_prior = query_prior   # the per-query prior expert must not block learning
  summary = crsd.run(cfg, str(tmp_path), stage=stage)
  assert summary["valid_macro_f1"] >= 0.5, summary
  # and not only through the fitted offsets: the argmax of the logits has learned the cue too
  assert summary["valid_macro_f1_argmax"] >= 0.5, summary


def test_curves_scores_valid_after_every_epoch(cue_path, tmp_path):
  """experiments.curves: one valid row per epoch (argmax, fitted offsets, log-loss vs prior) and
  the test logits saved unscored, never scored here."""
  import json
  import subprocess
  import sys
  from conftest import REPO
  out = tmp_path / "curves"
  r = subprocess.run([sys.executable, "-m", "rd_jax.experiments.curves",
                      f"--config={REPO / 'configs' / 'tiny.py'}", f"--workdir={out}",
                      "--stage=crsd", "--epochs=2", f"--config.data.path={cue_path}",
                      "--config.train.batch_size=16"], capture_output=True, text=True, cwd=REPO)
  assert r.returncode == 0, r.stderr[-2000:]
  rows = [json.loads(line) for line in open(out / "curves.jsonl")]
  assert [row["epoch"] for row in rows] == [1, 2]
  last = rows[-1]
  assert last["valid_macro_f1_fitted_offsets"] >= last["valid_macro_f1_argmax"]
  assert last["offsets"][0] == 0.0 and len(last["offsets"]) == 4
  assert last["valid_log_loss"] > 0 and last["valid_prior_log_loss"] > 0
  assert (out / "test_logits_e2.npy").exists() and "test_macro_f1" not in json.dumps(last)
