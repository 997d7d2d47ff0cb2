"""student.class_weighting=query_balanced: per-pair CE weights that flatten each train query's
label mix, then the classes' (losses/classification.query_balanced_weights). Golden values by hand
and with NumPy; the stage wiring checked on a tiny run."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from rd_jax import config_check
from rd_jax.losses import classification
from rd_jax.stages import crsd


def test_weights_by_hand_at_power_one():
  # q0: labels 0,0,0,1 (n 4, K 2) -> a = 4/(2*3) = 2/3 for label 0, 4/(2*1) = 2 for label 1.
  # q1: labels 1,2 (n 2, K 2) -> a = 1, 1.  A = 6; class masses M = (2, 3, 1); C = 3.
  # r = a * A / (C * M_y): label 0 x 1, label 1 x 2/3, label 2 x 2.
  r = classification.query_balanced_weights([0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 1, 1], 3, 1.0)
  np.testing.assert_allclose(r, [2 / 3, 2 / 3, 2 / 3, 4 / 3, 2 / 3, 2.0], rtol=1e-6)
  # the classes' weighted totals are equal (2 each), as "balanced" makes them
  np.testing.assert_allclose(np.bincount([0, 0, 0, 1, 1, 2], weights=r), [2, 2, 2], rtol=1e-6)
  # within q0 the weighted mix is proportional to the global class factor (1, 2/3) alone: the
  # query's own 3:1 mix is gone
  assert r[:3].sum() / r[3] == pytest.approx((2.0 * 1.0) / (2.0 * 2 / 3))


def test_power_zero_is_balanced_and_half_is_between():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, size=200)
  queries = rng.integers(0, 9, size=200)
  counts = np.bincount(labels, minlength=4)
  balanced = np.asarray(classification.class_weights_for(counts, "balanced"))[labels]
  np.testing.assert_allclose(classification.query_balanced_weights(labels, queries, 4, 0.0),
                             balanced, rtol=1e-6)
  effective = lambda r: r.sum() ** 2 / (r ** 2).sum()
  e0, e5, e1 = (effective(classification.query_balanced_weights(labels, queries, 4, p))
                for p in (0.0, 0.5, 1.0))
  assert e0 > e5 > e1
  assert classification.class_weights_for(counts, "query_balanced") is None


def test_absent_class_gets_no_weight_and_shapes_are_checked():
  r = classification.query_balanced_weights([0, 1, 1], [0, 0, 1], 3, 0.5)
  assert r.shape == (3,) and np.all(r > 0) and np.isfinite(r).all()
  with pytest.raises(ValueError, match="shape"):
    classification.query_balanced_weights([0, 1], [0], 2, 1.0)


def test_row_weights_in_cross_entropy_golden():
  logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [5.0, -5.0, 0.0]], np.float32)
  labels = np.array([0, 2, 1])
  w = np.array([1.0, 1.0, 0.0], np.float32)            # third row is padding
  rows = np.array([0.25, 3.0, 7.0], np.float32)
  s, n = classification.weighted_cross_entropy(jnp.array(logits), jnp.array(labels),
                                               jnp.array(w), row_weights=jnp.array(rows))
  x = logits - logits.max(-1, keepdims=True)
  logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
  np.testing.assert_allclose(float(s), -(0.25 * logp[0, 0] + 3.0 * logp[1, 2]), rtol=1e-6)
  assert float(n) == 2.0   # the normaliser counts rows, not weights


def test_config_accepts_it_and_refuses_a_negative_power(tiny_config):
  cfg = tiny_config()
  cfg.student.class_weighting = "query_balanced"
  config_check.validate(cfg)
  cfg.student.query_balance_power = -1.0
  with pytest.raises(Exception, match="student.query_balance_power"):
    config_check.validate(cfg)


def test_stage_weights_each_row_by_its_pair(tiny_config, tmp_path):
  """objective_of hands the per-pair table to the loss; on a real batch the loss equals the one
  computed with class weights c when the table holds c[label] for every pair, and the tiny
  stage trains with it and reports how uneven the weights were."""
  from rd_jax.losses.crsd import CrsdLossConfig
  from rd_jax.models import bert
  from rd_jax.student import batches as batches_lib, data as data_lib
  from rd_jax.student.model import initial_student
  cfg = tiny_config()
  cfg.student.dropout = 0.0
  cfg.student.class_weighting = "query_balanced"
  data = data_lib.load_student_data(cfg, str(tmp_path), use_reasoning=False)
  objective = crsd.objective_of(cfg, data.train)
  table = objective["pair_weights"]
  assert objective["class_weights"] is None and table.shape == (len(data.train),)
  labels = np.array([p.label_id for p in data.train])
  from rd_jax.data import tokenize
  np.testing.assert_allclose(table, classification.query_balanced_weights(
      labels, tokenize.query_indices(data.train), len(cfg.labels), 0.5), rtol=1e-6)
  model_cfg, params, _ = initial_student(cfg, jax.random.PRNGKey(0))
  model = bert.BertClassifier(model_cfg)
  settings = CrsdLossConfig.from_config(cfg.crsd)
  common = dict(use_reasoning=False, local_block=cfg.train.batch_size, seed=0)
  batch = next(iter(batches_lib.train_batches(data.train, data.tokenizer, cfg,
                                              use_reasoning=False)))
  class_w = np.array([0.5, 1.0, 2.0, 4.0][:len(cfg.labels)], np.float32)
  by_pair, _ = crsd.make_loss_fn(model, settings, pair_weights=class_w[labels],
                                 **common)(params, batch, 0)
  by_class, _ = crsd.make_loss_fn(model, settings, class_weights=class_w,
                                  **common)(params, batch, 0)
  plain, _ = crsd.make_loss_fn(model, settings, **common)(params, batch, 0)
  np.testing.assert_allclose(float(by_pair), float(by_class), rtol=1e-5)
  assert abs(float(by_pair) - float(plain)) > 1e-4   # the weights do enter the loss
  cfg.train.num_steps = 8
  summary = crsd.run(cfg, str(tmp_path / "run"), stage="baseline")
  report = summary["objective"]["query_balanced"]
  assert report["power"] == 0.5 and report["pairs"] == len(data.train)
  assert 0 < report["effective_pairs"] <= len(data.train)
  assert "pair_weights" not in summary["objective"]
