"""student.head_init="probe" (LP-FT): the classifier starts as a class-weighted logistic regression
on the initial encoder's frozen pooled vectors, standardisation folded into the kernel and bias."""

import jax
import numpy as np
import pytest

from rd_jax import config_check
from rd_jax.models import bert
from rd_jax.stages import crsd
from rd_jax.student import data as data_lib, predict as predict_lib, probe_head
from rd_jax.student.model import initial_student

from cue_data import cue_config, write_cue_pairs


def _blobs(seed, n=300, d=6, c=3):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, c, n)
  centres = rng.normal(size=(c, d)) * 2.0
  x = centres[y] + rng.normal(size=(n, d)) * np.array([1, 3, 0.5, 10, 1, 2])  # unequal scales
  return x + 5.0, y


def test_the_folded_head_reproduces_the_fitted_logistic_regression():
  """Golden: sklearn on hand-standardised features, scored by its own decision_function, equals
  x @ kernel + bias on the raw features; C is the grid's best by valid macro-F1."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.metrics import f1_score
  (x, y), (vx, vy) = _blobs(0), _blobs(1)
  weights = np.array([1.0, 2.0, 0.5])
  grid = (0.001, 0.1, 10.0)
  probe = probe_head.fit_probe(x, y, vx, vy, 3, weights, grid)
  mu, sd = x.mean(0), x.std(0)
  by_c = {}
  for c in grid:
    ref = LogisticRegression(C=c, max_iter=3000, random_state=0).fit(
        (x - mu) / sd, y, sample_weight=weights[y])
    by_c[c] = (f1_score(vy, ref.predict((vx - mu) / sd), average="macro"), ref)
  best = max(grid, key=lambda c: (by_c[c][0], -c))
  assert probe["C"] == best
  assert probe["valid_macro_f1_by_C"] == {str(c): round(by_c[c][0], 4) for c in grid}
  expected = by_c[best][1].decision_function((vx - mu) / sd)                 # [N, C]
  np.testing.assert_allclose(vx @ probe["kernel"] + probe["bias"], expected, rtol=1e-4, atol=1e-4)
  assert probe["kernel"].shape == (6, 3) and probe["kernel"].dtype == np.float32


def test_the_class_weights_move_the_decision():
  (x, y), (vx, vy) = _blobs(2), _blobs(3)
  plain = probe_head.fit_probe(x, y, vx, vy, 3, None, (1.0,))
  heavy = probe_head.fit_probe(x, y, vx, vy, 3, np.array([1.0, 1.0, 50.0]), (1.0,))
  share = lambda p: np.mean(np.argmax(vx @ p["kernel"] + p["bias"], 1) == 2)
  assert share(heavy) > share(plain)


def test_a_missing_class_or_empty_grid_is_refused():
  x, y = _blobs(4)
  with pytest.raises(ValueError, match="every class"):
    probe_head.fit_probe(x[y < 2], y[y < 2], x, y, 3, None, (1.0,))
  with pytest.raises(ValueError, match="probe_c_grid"):
    probe_head.fit_probe(x, y, x, y, 3, None, ())


@pytest.mark.parametrize("grid", [(), (0.0,), (-1.0, 1.0), ("a",)])
def test_a_bad_c_grid_is_a_config_error(tiny_config, grid):
  cfg = tiny_config()
  cfg.student.probe_c_grid = grid
  with pytest.raises(ValueError, match="student.probe_c_grid"):
    config_check.validate(cfg)


def test_the_student_starts_from_the_probe_and_learns_the_cue(tiny_config, tmp_path):
  """Through the model: the classifier the run starts from gives the probe's logits on the
  initial encoder's pooled vectors, its valid macro-F1 is the probe's, and the run learns."""
  cfg = cue_config(tiny_config, write_cue_pairs(tmp_path / "cue.jsonl"))
  cfg.student.head_init = "probe"
  cfg.student.probe_c_grid = (0.1, 1.0)
  stage_dir = tmp_path / "probe"
  stage_dir.mkdir()
  data = data_lib.load_student_data(cfg, str(stage_dir), use_reasoning=True)
  model_cfg, params, _ = initial_student(cfg, jax.random.PRNGKey(cfg.seed))
  model = bert.BertClassifier(model_cfg)
  mesh = crsd.fit.make_mesh(cfg)
  objective = crsd.objective_of(cfg, data.train)
  started = probe_head.with_probe_head(cfg, model, params, mesh, data, objective["class_weights"],
                                       objective)
  pooled_fn = predict_lib.make_predict_fn(model, mesh, output="pooled")
  logits_fn = predict_lib.make_predict_fn(model, mesh)
  pooled, gold = predict_lib.predict_logits(pooled_fn, params, data.valid, data.tokenizer, cfg)
  logits, _ = predict_lib.predict_logits(logits_fn, started, data.valid, data.tokenizer, cfg)
  head = started["classifier"]
  np.testing.assert_allclose(logits, pooled @ np.asarray(head["kernel"]) + np.asarray(head["bias"]),
                             rtol=1e-3, atol=2e-3)   # fp32 sums in another order
  from rd_jax import decision
  f1 = decision.macro_f1(gold, np.argmax(logits, 1), len(cfg.labels))
  assert objective["probe_head"]["valid_macro_f1_by_C"][str(objective["probe_head"]["C"])] == \
      pytest.approx(f1, abs=1e-4)
  for name in ("embeddings", "encoder", "pooler"):      # only the classifier changed
    for a, b in zip(jax.tree.leaves(params[name]), jax.tree.leaves(started[name])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  summary = crsd.run(cfg, str(tmp_path / "work"), stage="crsd")
  assert summary["objective"]["probe_head"]["C"] in (0.1, 1.0)
  assert summary["valid_macro_f1"] >= 0.5 and summary["valid_macro_f1_argmax"] >= 0.5, summary
