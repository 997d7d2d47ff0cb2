"""student.overlap_weight: the lexical overlap features as [CLS] regression targets (golden values
with NumPy), the K-output head's loss, and a student trained with both heads that hands over a
plain BERT."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rd_jax import references
from rd_jax.stages import crsd
from rd_jax.student import overlap_targets, similarity


class _Pair:
  def __init__(self, query, item_text):
    self.query, self.item_text = query, item_text


def test_targets_are_the_z_scored_overlap_features():
  pairs = [_Pair("red shoes size 10", "red running shoes size 10"),
           _Pair("red shoes size 10", "blue kettle"),
           _Pair("kettle without lid", "steel kettle with lid"),
           _Pair("kettle without lid", "red running shoes for men")]
  targets, stats = overlap_targets.overlap_targets(pairs)
  x = np.array([references.overlap_features(p.query, p.item_text) for p in pairs])   # [4, 9]
  assert targets.shape == (4, 9) and targets.dtype == np.float32
  # hand check of the first feature (query-term coverage): 4/4, 0/4, 2/3, 0/3
  np.testing.assert_allclose(x[:, 0], [1.0, 0.0, 2 / 3, 0.0])
  std = x.std(0)
  expected = np.where(std > 1e-8, (x - x.mean(0)) / np.where(std > 1e-8, std, 1.0), 0.0)
  np.testing.assert_allclose(targets, expected, atol=1e-6)
  # the item negation flag is 0 for every pair: a constant feature's target is 0, not NaN
  np.testing.assert_array_equal(targets[:, 6], 0.0)
  assert stats["pairs"] == 4 and stats["features"] == 9


def test_k_output_head_loss_golden():
  rng = np.random.default_rng(1)
  cls = rng.normal(size=(3, 5)).astype(np.float32)
  v = rng.normal(size=(5, 2)).astype(np.float32)
  b = np.array([0.3, -0.2], np.float32)
  f = rng.normal(size=(3, 2)).astype(np.float32)
  w = np.array([1.0, 2.0, 0.0], np.float32)                   # third row: padding
  params = similarity.with_head({}, 5, name=similarity.OVERLAP_HEAD, outputs=2)
  assert params[similarity.OVERLAP_HEAD]["kernel"].shape == (5, 2)
  params[similarity.OVERLAP_HEAD] = {"kernel": jnp.array(v), "bias": jnp.array(b)}
  total, n = similarity.similarity_loss(params, jnp.array(cls), jnp.array(f), jnp.array(w),
                                        name=similarity.OVERLAP_HEAD)
  per_row = [np.mean((cls[i] @ v + b - f[i]) ** 2) for i in range(3)]
  np.testing.assert_allclose(float(total), 1.0 * per_row[0] + 2.0 * per_row[1], rtol=1e-5)
  assert float(n) == 3.0
  assert similarity.without_head({**params, "encoder": 1}) == {"encoder": 1}


def test_overlap_term_in_the_loss_golden(tiny_config, tmp_path):
  """The loss gains overlap_weight * the NumPy mean over the batch's rows of the mean squared
  error of V^T cls + b against the rows' targets."""
  from rd_jax.losses.crsd import CrsdLossConfig
  from rd_jax.models import bert
  from rd_jax.student import batches as batches_lib, data as data_lib
  from rd_jax.student.model import initial_student
  cfg = tiny_config()
  cfg.student.dropout = 0.0
  cfg.student.overlap_weight = 2.0
  data = data_lib.load_student_data(cfg, str(tmp_path), use_reasoning=False)
  model_cfg, params, _ = initial_student(cfg, jax.random.PRNGKey(0))
  model = bert.BertClassifier(model_cfg)
  objective = crsd.objective_of(cfg, data.train)
  params, kwargs = crsd.with_overlap(cfg, params, model_cfg, data, objective)
  assert objective["overlap"]["pairs"] == len(data.train)
  v = np.random.default_rng(0).normal(size=(model_cfg.hidden_size, 9)).astype(np.float32) * 0.1
  params[similarity.OVERLAP_HEAD] = {"kernel": jnp.array(v), "bias": jnp.full((9,), 0.1)}
  settings = CrsdLossConfig.from_config(cfg.crsd)
  common = dict(use_reasoning=False, local_block=cfg.train.batch_size, seed=0)
  batch = next(iter(batches_lib.train_batches(data.train, data.tokenizer, cfg,
                                              use_reasoning=False)))
  loss_with, metrics = crsd.make_loss_fn(model, settings, **common, **kwargs)(params, batch, 0)
  loss_without, _ = crsd.make_loss_fn(model, settings, **common)(params, batch, 0)
  cls = np.asarray(model.apply({"params": similarity.without_head(params)},
                               batch["std_input_ids"], batch["std_attention_mask"],
                               batch["std_token_type_ids"])["cls"], np.float64)
  rows = np.asarray(batch["weights"]) > 0
  err = ((cls @ v + 0.1 - kwargs["overlap_targets"][batch["pair_index"]]) ** 2).mean(1)
  expected = err[rows].mean()
  np.testing.assert_allclose(float(metrics["overlap_mse"]), expected, rtol=1e-4)
  np.testing.assert_allclose(float(loss_with) - float(loss_without), 2.0 * expected, rtol=1e-4)
  # the term reaches the encoder, and descending it on this batch lowers it (a few SGD steps)
  loss_fn = crsd.make_loss_fn(model, settings, **common, **kwargs)
  grad_fn = jax.jit(jax.grad(lambda p: loss_fn(p, batch, 0)[1]["overlap_mse"]))
  grads = grad_fn(params)
  assert float(jnp.abs(grads["encoder"]["layer_0"]["attention"]["query"]["kernel"]).max()) > 0
  trained = params
  for _ in range(10):
    trained = jax.tree.map(lambda x, g: x - 0.05 * g, trained, grad_fn(trained))
  after = float(loss_fn(trained, batch, 0)[1]["overlap_mse"])
  assert after < 0.85 * float(metrics["overlap_mse"])   # 1.22 -> 0.92 here


def test_off_by_default_and_negative_weight_refused(tiny_config):
  from rd_jax import config_check
  cfg = tiny_config()
  assert cfg.student.overlap_weight == 0.0
  params, kwargs = crsd.with_overlap(cfg, {"encoder": 1}, None, None, {})
  assert kwargs == {} and params == {"encoder": 1}
  cfg.student.overlap_weight = -1.0
  with pytest.raises(Exception, match="student.overlap_weight"):
    config_check.validate(cfg)


def test_student_with_overlap_head_hands_over_plain_bert(tiny_config, tmp_path):
  cfg = tiny_config()
  cfg.student.overlap_weight = 1.0
  cfg.student.similarity_weight = 1.0
  cfg.train.num_steps = 12
  summary = crsd.run(cfg, str(tmp_path), stage="baseline")
  assert summary["objective"]["overlap"]["features"] == 9
  metrics = [json.loads(line) for line in open(tmp_path / "baseline" / "metrics.jsonl")]
  ovl = [m["overlap_mse"] for m in metrics if "overlap_mse" in m]
  assert len(ovl) >= 2 and all(np.isfinite(ovl))
  from rd_jax import checkpoint
  params, _ = checkpoint.load_final(os.path.join(tmp_path, "baseline"))
  assert not set(similarity.AUX_HEADS) & set(params)
  assert {"embeddings", "encoder", "pooler", "classifier"} <= set(params)
