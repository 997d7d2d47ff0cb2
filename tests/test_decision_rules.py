"""decision.fit_prior_scale (golden), the cross-fitting with any fitter, and
experiments.decision_rules on a tiny student: its `offsets` and `argmax` rules reproduce what the
crsd stage reported for the same student, figure for figure."""

import json
import os
import tempfile

import numpy as np
import pytest

from rd_jax import decision
from rd_jax.experiments import decision_rules
from rd_jax.stages import crsd


def _three_class_rows():
  """Rows whose argmax is always class 0 but whose logits, shifted by tau * (-log p) with
  0.5 < tau ln 2 < 1 (tau in (0.72, 1.44)), are all right (worked by hand)."""
  per_class = {0: [0.0, -1.0, -1.0], 1: [0.0, -0.5, -1.0], 2: [0.0, -1.0, -0.5]}
  labels = np.array([0, 0, 1, 2, 1, 2, 0, 1])
  return np.array([per_class[y] for y in labels]), labels, np.log([0.5, 0.25, 0.25])


def test_fit_prior_scale_golden():
  logits, labels, log_prior = _three_class_rows()
  assert decision.macro_f1(labels, decision.predict(logits), 3) < 0.5
  offsets = decision.fit_prior_scale(logits, labels, log_prior)
  # the smallest |tau| on the 0.1 grid inside (0.72, 1.44) is 0.8; b_0 = 0
  np.testing.assert_allclose(offsets, 0.8 * np.array([0.0, np.log(2), np.log(2)]), atol=1e-12)
  assert decision.macro_f1(labels, decision.predict(logits, offsets), 3) == 1.0


def test_fit_prior_scale_keeps_zero_when_nothing_beats_the_argmax():
  logits = np.array([[2.0, 0.0], [0.0, 2.0]])
  np.testing.assert_array_equal(decision.fit_prior_scale(logits, [0, 1], np.log([0.9, 0.1])),
                                [0.0, 0.0])
  with pytest.raises(ValueError, match="empty"):
    decision.fit_prior_scale(np.zeros((0, 2)), [], np.log([0.5, 0.5]))


def test_cross_fitting_with_a_fitter_that_fits_nothing_is_the_argmax():
  logits, labels, _ = _three_class_rows()
  groups = ["a", "a", "b", "b", "c", "c", "d", "d"]
  zeros = lambda z, y: np.zeros(3)
  np.testing.assert_array_equal(
      decision.cross_fitted_predictions(logits, labels, groups, 2, fit=zeros),
      decision.predict(logits))


def test_the_experiment_reproduces_the_stage_and_orders_the_rules(tiny_config, tmp_path):
  cfg = tiny_config()
  cfg.train.num_steps = 4
  cfg.student.decision_rule = "offsets"     # the stage fits the free offsets, as the experiment's
  summary = crsd.run(cfg, str(tmp_path / "s0"))
  out = str(tmp_path / "rules.json")
  result = decision_rules.run(cfg, [str(tmp_path / "s0" / "crsd")], out, test=True)
  assert json.load(open(out)) == result
  (student,) = result["students"].values()
  assert set(student) == set(decision_rules.RULES)
  np.testing.assert_allclose(student["offsets"]["valid_macro_f1"], summary["valid_macro_f1"],
                             atol=1e-9)
  np.testing.assert_allclose(student["offsets"]["valid_macro_f1_crossfit"],
                             summary["valid_macro_f1_crossfit"], atol=1e-9)
  np.testing.assert_allclose(student["argmax"]["valid_macro_f1"],
                             summary["valid_macro_f1_argmax"], atol=1e-9)
  # no fitting: the argmax's cross-fitted figure is its in-sample one; tau = 0 is on the grid
  assert student["argmax"]["valid_macro_f1_crossfit"] == student["argmax"]["valid_macro_f1"]
  assert student["prior_scale"]["valid_macro_f1"] >= student["argmax"]["valid_macro_f1"]
  assert all("test_macro_f1" in student[r] for r in decision_rules.RULES)
  assert result["mean"]["offsets"]["valid_macro_f1"] == student["offsets"]["valid_macro_f1"]


def test_a_single_fold_is_refused():
  logits, labels, _ = _three_class_rows()
  with pytest.raises(ValueError, match="offsets_crossfit_folds"):
    decision_rules.compare({"valid": logits}, {"valid": labels}, ["a"] * 8, [2, 1, 1], folds=1)


def test_the_stage_fits_the_configured_rule(tiny_config, tmp_path, monkeypatch):
  """student.decision_rule = prior_scale: the crsd stage's offsets are tau * -log p_train (b_0 =
  0), in meta.json, and its figures equal the experiment's prior_scale rule on the same student."""
  from rd_jax import checkpoint
  cfg = tiny_config()
  cfg.train.num_steps = 4
  cfg.student.decision_rule = "prior_scale"
  summary = crsd.run(cfg, str(tmp_path / "s0"))
  meta = checkpoint.read_meta(str(tmp_path / "s0" / "crsd"))
  counts = np.asarray(meta["train_label_counts"], float)
  direction = -np.log(counts / counts.sum())
  direction -= direction[0]
  offsets = np.asarray(meta["decision_offsets"])
  tau = offsets[1] / direction[1]
  np.testing.assert_allclose(offsets, tau * direction, atol=1e-9)
  scratch = tmp_path / "tmp"         # without an output file: eval's report goes to a temporary
  scratch.mkdir()                    # folder, removed when the experiment returns
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))
  result = decision_rules.run(cfg, [str(tmp_path / "s0" / "crsd")])
  assert list(scratch.iterdir()) == []
  (student,) = result["students"].values()
  np.testing.assert_allclose(student["prior_scale"]["offsets"], np.round(offsets, 4), atol=1e-9)
  np.testing.assert_allclose(student["prior_scale"]["valid_macro_f1"], summary["valid_macro_f1"],
                             atol=1e-9)
  np.testing.assert_allclose(student["prior_scale"]["valid_macro_f1_crossfit"],
                             summary["valid_macro_f1_crossfit"], atol=1e-9)


def test_an_unknown_rule_is_a_config_error(tiny_config):
  from rd_jax import config_check
  cfg = tiny_config()
  cfg.student.decision_rule = "oracle"
  with pytest.raises(ValueError, match="student.decision_rule"):
    config_check.validate(cfg)
