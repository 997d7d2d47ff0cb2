"""Flax BertClassifier vs PyTorch transformers.BertForSequenceClassification, masks, packing."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from rd_jax.convert.hf_bert import flax_to_hf, hf_to_flax
from rd_jax.models.bert import BertClassifier, BertConfig, flops_per_example, init_params

TINY = BertConfig(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                  max_position=32, num_labels=4)


@functools.cache
def _jitted_apply(config):
  return jax.jit(BertClassifier(config).apply, static_argnames=("deterministic",))


def _apply(config, params, *args, **kwargs):
  """Jitted apply: one compile per config and shape beats op-by-op dispatch on a shared CPU."""
  return _jitted_apply(config)({"params": params}, *args, **kwargs)


def _torch_model(config: BertConfig, seed: int = 0):
  torch.manual_seed(seed)
  hf = transformers.BertConfig(
      vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
      num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
      max_position_embeddings=config.max_position, num_labels=config.num_labels)
  model = transformers.BertForSequenceClassification(hf).eval()
  with torch.no_grad():  # random LayerNorm and biases too, so a swapped scale/bias would show
    for name, p in model.named_parameters():
      if "LayerNorm" in name or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  return model


def _batch(rng, batch=3, length=10, vocab=64):
  ids = rng.integers(1, vocab, (batch, length)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 6:] = 0  # row 1 is padded
  types = np.zeros_like(ids)
  types[:, 4:] = 1
  ids[mask == 0] = 0
  return ids, mask, types


@pytest.fixture(scope="module")
def tiny():
  model = _torch_model(TINY)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  return model, state, hf_to_flax(state, TINY)


def test_logits_and_hidden_match_pytorch(tiny):
  model, _, params = tiny
  ids, mask, types = _batch(np.random.default_rng(0))
  out = _apply(TINY, params, ids, mask, types)
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                token_type_ids=torch.tensor(types, dtype=torch.long), output_hidden_states=True)
  hidden_ref = ref.hidden_states[-1].numpy()
  assert out["logits"].shape == (3, 4) and out["logits"].dtype == jnp.float32
  assert np.abs(out["logits"] - ref.logits.numpy()).max() <= 1e-5
  assert np.abs(out["hidden"] - hidden_ref)[mask > 0].max() <= 1e-5
  np.testing.assert_allclose(out["cls"], hidden_ref[:, 0], atol=1e-5)
  pooled_ref = model.bert.pooler(torch.tensor(hidden_ref)).detach().numpy()
  np.testing.assert_allclose(out["pooled"], pooled_ref, atol=1e-5)


def test_padding_is_ignored(tiny):
  _, _, params = tiny
  ids, mask, types = _batch(np.random.default_rng(1))
  garbage = ids.copy()
  garbage[mask == 0] = 7  # whatever sits under the padding must not change the result
  a = _apply(TINY, params, ids, mask, types)
  b = _apply(TINY, params, garbage, mask, types)
  trimmed = _apply(TINY, params, ids[1:2, :6], mask[1:2, :6], types[1:2, :6])
  np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-6)
  np.testing.assert_allclose(a["logits"][1:2], trimmed["logits"], atol=1e-5)


def test_packed_row_with_block_diagonal_mask_matches_separate_pairs(tiny):
  _, _, params = tiny
  rng = np.random.default_rng(2)
  first, second = rng.integers(1, 64, 7).astype(np.int32), rng.integers(1, 64, 5).astype(np.int32)
  types1, types2 = (np.arange(7) >= 4).astype(np.int32), (np.arange(5) >= 3).astype(np.int32)
  alone = [_apply(TINY, params, t[None], np.ones((1, len(t)), np.int32), tt[None])
           for t, tt in ((first, types1), (second, types2))]
  # One row [pair1 | pair2 | pad]: each token attends within its own segment; positions restart.
  length, segment = 14, np.array([1] * 7 + [2] * 5 + [0] * 2)
  block = (segment[:, None] == segment[None, :]) & (segment[:, None] > 0)   # [L, L]
  packed = _apply(
      TINY, params, np.concatenate([first, second, [0, 0]])[None].astype(np.int32),
      block[None].astype(np.int32), np.concatenate([types1, types2, [0, 0]])[None].astype(np.int32),
      position_ids=np.concatenate([np.arange(7), np.arange(5), [0, 0]])[None],
      cls_positions=np.array([[0, 7]]))
  assert packed["logits"].shape == (1, 2, 4) and packed["cls"].shape == (1, 2, 16)
  for s, single in enumerate(alone):
    np.testing.assert_allclose(packed["cls"][0, s], single["cls"][0], atol=1e-5)
    np.testing.assert_allclose(packed["logits"][0, s], single["logits"][0], atol=1e-5)
  assert length == packed["hidden"].shape[1]


def test_dropout_projection_and_bf16():
  config = dataclasses.replace(TINY, projection_dim=8)
  rbg = lambda seed: jax.random.key(seed, impl="rbg")  # compiles far faster than threefry on CPU
  params = init_params(config, rbg(0))
  assert params["crsd_projection"]["output"]["kernel"].shape == (16, 8)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  ids, mask, types = _batch(np.random.default_rng(3))
  det = _apply(config, params, ids, mask, types)
  drop = _apply(config, params, ids, mask, types, deterministic=False, rngs={"dropout": rbg(1)})
  assert det["proj"].shape == (3, 8) and not np.allclose(det["logits"], drop["logits"])
  # the heads as pure functions of [CLS] (CRSD's per-step gradient ratio) match the module
  from rd_jax.models.bert import head_logits, head_projection
  np.testing.assert_allclose(head_logits(params, det["cls"]), det["logits"], atol=1e-5)
  np.testing.assert_allclose(head_projection(params, det["cls"]), det["proj"], atol=1e-5)
  bf16 = _apply(dataclasses.replace(config, dtype="bfloat16"), params, ids, mask, types)
  assert bf16["logits"].dtype == jnp.float32
  np.testing.assert_allclose(bf16["logits"], det["logits"], atol=5e-2)


def test_attention_dropout_is_its_own_rate():
  rbg = lambda seed: jax.random.key(seed, impl="rbg")
  params = init_params(TINY, rbg(0))
  ids, mask, types = _batch(np.random.default_rng(3))
  det = _apply(TINY, params, ids, mask, types)["logits"]
  def train_mode(dropout, attention_dropout):
    config = dataclasses.replace(TINY, dropout=dropout, attention_dropout=attention_dropout)
    return _apply(config, params, ids, mask, types, deterministic=False,
                  rngs={"dropout": rbg(1)})["logits"]
  np.testing.assert_allclose(train_mode(0.0, 0.0), det, atol=1e-6)   # no mask anywhere
  assert not np.allclose(train_mode(0.0, 0.5), det)                  # the attention mask alone
  assert not np.allclose(train_mode(0.5, 0.0), det)                  # the hidden masks alone
  # HF's two rates round-trip through the export's config
  from rd_jax.convert import export, hf_bert
  hf = export.hf_config(dataclasses.replace(TINY, attention_dropout=0.0), ["a", "b", "c", "d"])
  assert (hf.hidden_dropout_prob, hf.attention_probs_dropout_prob) == (0.1, 0.0)
  back = hf_bert.config_from_hf({**hf.to_dict(), "model_type": "bert"}, num_labels=4,
                                dropout=0.1, attention_dropout=hf.attention_probs_dropout_prob)
  assert back.attention_dropout == 0.0 and back.dropout == 0.1
  assert hf_bert.config_from_hf(hf.to_dict(), num_labels=4, dropout=0.2).attention_dropout == 0.2


def test_config_dict_round_trip_and_errors():
  assert BertConfig.from_dict(TINY.to_dict()) == TINY
  with pytest.raises(ValueError, match="no field"):
    BertConfig.from_dict({**TINY.to_dict(), "hidden_sise": 3})
  with pytest.raises(ValueError, match="divisible"):
    dataclasses.replace(TINY, num_heads=3)


def test_flops_per_example():
  # bert-base at 128 tokens: ~22 GFLOPs (2 FLOPs x 85M matmul weights x 128 tokens + attention).
  base = BertConfig(vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)
  l, d = 128, 768
  expected = 12 * (2 * l * (4 * d * d + 2 * d * 3072) + 2 * 2 * l * l * d) + 2 * d * d + 2 * d * 4
  assert flops_per_example(base, l) == expected
  assert 21e9 < flops_per_example(base, l) < 23e9


def test_flax_to_hf_inverts_hf_to_flax(tiny):
  _, state, params = tiny
  back = flax_to_hf(params, TINY)
  assert set(back) == set(state)
  assert all(np.array_equal(back[k], state[k]) for k in state)
