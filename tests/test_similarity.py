"""student.similarity_weight: the initial bi-encoder's similarity targets, the auxiliary loss
(golden values with NumPy), and a student trained with it that hands over a plain BERT."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from rd_jax.data.tokenize import load_tokenizer
from rd_jax.models import bert
from rd_jax.stages import crsd
from rd_jax.student import similarity


class _Pair:
  def __init__(self, query, item_text):
    self.query, self.item_text = query, item_text


def _tiny_model():
  cfg = bert.BertConfig(vocab_size=30522, hidden_size=32, num_layers=2, num_heads=2,
                        intermediate_size=64, max_position=512, dropout=0.0, num_labels=4)
  return bert.BertClassifier(cfg), bert.init_params(cfg, jax.random.PRNGKey(0))


def test_similarity_loss_golden():
  rng = np.random.default_rng(0)
  cls = rng.normal(size=(3, 4)).astype(np.float32)
  v, b = rng.normal(size=4).astype(np.float32), np.float32(0.3)
  s = np.array([0.5, -1.0, 2.0], np.float32)
  w = np.array([1.0, 1.0, 0.0], np.float32)                  # third row: padding
  params = {similarity.SIMILARITY_HEAD: {"kernel": jnp.array(v), "bias": jnp.array(b)}}
  total, n = similarity.similarity_loss(params, jnp.array(cls), jnp.array(s), jnp.array(w))
  ref = sum((float(cls[i] @ v + b) - s[i]) ** 2 for i in range(2))
  np.testing.assert_allclose(float(total), ref, rtol=1e-5)
  assert float(n) == 2.0


def test_targets_are_the_z_scored_cosine_of_each_text_encoded_alone():
  model, params = _tiny_model()
  tok = load_tokenizer("minilm")
  pairs = [_Pair("red shoes", "red running shoes for men"), _Pair("red shoes", "blue kettle"),
           _Pair("steel kettle", "blue kettle with a very long title " * 5),
           _Pair("steel kettle", "red running shoes for men")]
  targets, stats = similarity.similarity_targets(model, params, pairs, tok, max_len=64)

  def embed(text):   # one text, no padding: mean of its token states
    ids = np.array([tok(text, truncation=True, max_length=64)["input_ids"]], np.int32)
    h = model.apply({"params": params}, ids, np.ones_like(ids), np.zeros_like(ids))["hidden"][0]
    e = np.asarray(h).mean(0)
    return e / np.linalg.norm(e)

  cos = np.array([embed(p.query) @ embed(p.item_text) for p in pairs])
  np.testing.assert_allclose(targets, (cos - cos.mean()) / cos.std(), atol=1e-4)
  assert stats["pairs"] == 4 and abs(stats["cos_mean"] - cos.mean()) < 1e-3


def test_within_query_standardisation_golden():
  # query a: values 1, 3 -> mean 2, std 1 -> -1, +1; query b: 2, 2, 8 -> mean 4, std sqrt(8)
  # -> -2/sqrt(8), -2/sqrt(8), 4/sqrt(8); query c: a single pair -> 0
  out = similarity.standardise_within_queries(np.array([1.0, 2.0, 3.0, 2.0, 8.0, 5.0]),
                                              ["a", "b", "a", "b", "b", "c"])
  r8 = np.sqrt(8.0)
  np.testing.assert_allclose(out, [-1.0, -2 / r8, 1.0, -2 / r8, 4 / r8, 0.0], atol=1e-6)
  assert out.dtype == np.float32


def test_query_normalised_targets_rank_each_querys_items_as_the_split_ones_do():
  model, params = _tiny_model()
  tok = load_tokenizer("minilm")
  pairs = [_Pair("red shoes", "red running shoes for men"), _Pair("red shoes", "blue kettle"),
           _Pair("red shoes", "red shoe laces"),
           _Pair("steel kettle", "blue kettle with a very long title " * 5),
           _Pair("steel kettle", "red running shoes for men")]
  split, _ = similarity.similarity_targets(model, params, pairs, tok, max_len=64)
  query, stats = similarity.similarity_targets(model, params, pairs, tok, max_len=64,
                                               normalisation="query")
  assert stats["normalisation"] == "query"
  for rows in ([0, 1, 2], [3, 4]):                  # per query: mean 0, std 1, same order
    np.testing.assert_allclose(query[rows].mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(query[rows].std(), 1.0, atol=1e-4)
    assert list(np.argsort(query[rows])) == list(np.argsort(split[rows]))
  with np.testing.assert_raises(ValueError):
    similarity.similarity_targets(model, params, pairs, tok, max_len=64, normalisation="pair")


def test_student_with_similarity_head_hands_over_plain_bert(tiny_config, tmp_path):
  cfg = tiny_config()
  cfg.student.similarity_weight = 1.0
  cfg.train.num_steps = 8
  summary = crsd.run(cfg, str(tmp_path), stage="baseline")
  assert summary["objective"]["similarity"]["pairs"] > 0
  metrics = [json.loads(line) for line in open(tmp_path / "baseline" / "metrics.jsonl")]
  sims = [m["similarity_mse"] for m in metrics if "similarity_mse" in m]
  assert sims and all(np.isfinite(sims))
  # the head trains only: final/ holds the student's own params, which the BERT module accepts
  from rd_jax import checkpoint
  params, _ = checkpoint.load_final(os.path.join(tmp_path, "baseline"))
  assert similarity.SIMILARITY_HEAD not in params
  assert {"embeddings", "encoder", "pooler", "classifier"} <= set(params)


def test_similarity_head_on_the_logits_golden(tiny_config, tmp_path):
  """student.similarity_from = "logits": the head is u [C], b [] on the standard view's logits,
  and the loss term is the NumPy mean of (u . z_i + b - s_i)^2 over the batch's rows."""
  from rd_jax.losses.crsd import CrsdLossConfig
  from rd_jax.student import batches as batches_lib, data as data_lib
  from rd_jax.student.model import initial_student
  cfg = tiny_config()
  cfg.student.dropout = 0.0
  cfg.student.similarity_weight = 1.0
  cfg.student.similarity_from = "logits"
  data = data_lib.load_student_data(cfg, str(tmp_path), use_reasoning=False)
  model_cfg, params, _ = initial_student(cfg, jax.random.PRNGKey(0))
  model = bert.BertClassifier(model_cfg)
  objective = crsd.objective_of(cfg, data.train)
  params, targets = crsd.with_similarity(cfg, model, params, model_cfg, data, objective)
  assert params[similarity.SIMILARITY_HEAD]["kernel"].shape == (len(cfg.labels),)
  u = np.array([0.5, -1.0, 0.25, 2.0], np.float32)
  params[similarity.SIMILARITY_HEAD] = {"kernel": jnp.array(u), "bias": jnp.array(0.1)}
  loss_fn = crsd.make_loss_fn(model, CrsdLossConfig.from_config(cfg.crsd), use_reasoning=False,
                              local_block=cfg.train.batch_size, seed=0,
                              similarity_targets=targets, similarity_weight=1.0,
                              similarity_from="logits")
  batch = next(iter(batches_lib.train_batches(data.train, data.tokenizer, cfg,
                                              use_reasoning=False)))
  _, metrics = loss_fn(params, batch, 0)
  logits = np.asarray(model.apply({"params": similarity.without_head(params)},
                                  batch["std_input_ids"], batch["std_attention_mask"],
                                  batch["std_token_type_ids"])["logits"], np.float64)
  expected = np.mean((logits @ u + 0.1 - targets[batch["pair_index"]]) ** 2)
  np.testing.assert_allclose(float(metrics["similarity_mse"]), expected, rtol=1e-4)
