"""Decoder: parity with transformers' LlamaForCausalLM, converter round trip, KV cache, generate.

Tiny random configs (seconds). `-m slow` adds the real SmolLM2-135M GGUF check.
"""

import numpy as np
import pytest
import torch
import jax
import jax.numpy as jnp
from transformers import LlamaConfig, LlamaForCausalLM

from rd_jax import generate as gen
from rd_jax.convert import hf_decoder
from rd_jax.losses import lm
from rd_jax.models.decoder import (Decoder, DecoderConfig, flops_per_token, init_cache, init_params,
                                   positions_from_mask)

TINY = DecoderConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                     intermediate_size=48, rope_theta=1000.0, rms_norm_eps=1e-6, max_position=64)
EOS, PAD = 3, 0


def _hf_model(config, seed=0):
  """A LlamaForCausalLM with every weight (norm scales included) random, so no map is trivial."""
  torch.manual_seed(seed)
  model = LlamaForCausalLM(LlamaConfig(**hf_decoder.hf_config_dict(config), attn_implementation="eager"))
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.3)
  return model.eval()


@pytest.fixture(scope="module")
def tiny():
  model = _hf_model(TINY)
  return model, hf_decoder.from_hf_state_dict(TINY, model.state_dict())


_init = jax.jit(init_params, static_argnums=0)
_forward = jax.jit(lambda p, t, pos, m, config: Decoder(config).apply({"params": p}, t, pos, attention_mask=m)[0],
                   static_argnames="config")


@pytest.mark.parametrize("tied", [True, False])
def test_logits_match_transformers(tied):
  config = DecoderConfig(**{**TINY.to_dict(), "tie_embeddings": tied})
  model = _hf_model(config, seed=1)
  params = hf_decoder.from_hf_state_dict(config, model.state_dict())
  assert ("lm_head" in params) == (not tied)
  tokens = np.random.RandomState(0).randint(0, config.vocab_size, (2, 11))
  with torch.no_grad():
    want = model(torch.tensor(tokens)).logits.numpy()
  pos = np.broadcast_to(np.arange(11), tokens.shape)
  got = np.asarray(_forward(params, tokens, pos, None, config=config))
  assert np.abs(got - want).max() <= 1e-4, np.abs(got - want).max()


def test_round_trip_hf_flax_hf(tiny):
  model, params = tiny
  back = hf_decoder.to_hf_state_dict(TINY, params)
  ref = {k: v.numpy() for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied alias
  assert sorted(back) == sorted(ref)
  for k in ref:
    np.testing.assert_array_equal(back[k], ref[k], err_msg=k)
  # every Flax param came from HF: none is left at its init value
  init = _init(TINY, jax.random.PRNGKey(0))
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree_util.tree_leaves(init)):
    assert not np.allclose(a, b), jax.tree_util.keystr(path)


def test_converter_names_missing_and_extra_keys(tiny):
  model, _ = tiny
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  with pytest.raises(KeyError, match="model.norm.weight"):
    hf_decoder.from_hf_state_dict(TINY, {k: v for k, v in state.items() if k != "model.norm.weight"})
  with pytest.raises(KeyError, match="model.layers.9.extra"):
    hf_decoder.from_hf_state_dict(TINY, {**state, "model.layers.9.extra": state["model.norm.weight"]})


def test_left_padding_matches_unpadded(tiny):
  _, params = tiny
  ids = np.array([[5, 6, 7, 8]])
  alone = _forward(params, ids, np.arange(4)[None], None, config=TINY)
  padded = np.array([[PAD, PAD, 5, 6, 7, 8]])
  mask = (np.arange(6) >= 2).astype(np.int32)[None]
  got = _forward(params, padded, positions_from_mask(mask), mask, config=TINY)
  np.testing.assert_allclose(got[:, 2:], alone, atol=1e-5)


@pytest.mark.parametrize("per_row_index", [False, True])
def test_kv_cache_steps_equal_full_recompute(tiny, per_row_index):
  """Left-padded batch of different prompt lengths: prefill + 1-token steps == one full forward."""
  _, params = tiny
  rs = np.random.RandomState(1)
  p, steps = 6, 4
  s = p + steps
  lens = [6, 3]
  seq = rs.randint(4, TINY.vocab_size, (2, s))
  mask = np.ones((2, s), np.int32)
  for r, n in enumerate(lens):
    seq[r, :p - n], mask[r, :p - n] = PAD, 0
  positions = np.asarray(positions_from_mask(mask))
  full = np.asarray(_forward(params, seq, positions, mask, config=TINY))  # [2, S, V]

  model = Decoder(TINY)
  step = jax.jit(lambda prm, t, pos, m, c, i: model.apply({"params": prm}, t, pos, attention_mask=m, cache=c, cache_index=i))
  index = (lambda i: np.array([i, i], np.int32)) if per_row_index else (lambda i: np.int32(i))
  slots = np.concatenate([mask[:, :p], np.zeros((2, steps), np.int32)], 1)
  logits, cache = step(params, seq[:, :p], positions[:, :p], slots, init_cache(TINY, 2, s), index(0))
  valid = mask[:, :p].astype(bool)  # a pad query's output is meaningless (it attends to nothing)
  np.testing.assert_allclose(np.asarray(logits)[valid], full[:, :p][valid], atol=1e-5)
  for t in range(p, s):
    slots[:, t] = 1
    logits, cache = step(params, seq[:, t:t + 1], positions[:, t:t + 1], slots, cache, index(t))
    np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-5)


def test_shared_prefix_cache_equals_a_full_forward(tiny):
  """Cache entries prefix_k/prefix_v (one copy for all rows, slots counted after it) + per-row
  suffixes of different lengths (left-padded) + 1-token steps == one full forward per row."""
  _, params = tiny
  rs = np.random.RandomState(2)
  p0, ls, steps = 5, 4, 3
  prefix = rs.randint(4, TINY.vocab_size, p0)
  rows = [rs.randint(4, TINY.vocab_size, n + steps) for n in (4, 2)]   # suffix + generated
  model = Decoder(TINY)
  apply = jax.jit(lambda prm, t, pos, m, c, i: model.apply(
      {"params": prm}, t, pos, attention_mask=m, cache=c, cache_index=i))
  _, pc = apply(params, prefix[None], np.arange(p0)[None], None, init_cache(TINY, 1, p0), 0)
  s = ls + steps
  cache = dict(init_cache(TINY, 2, s), prefix_k=pc["k"][:, 0], prefix_v=pc["v"][:, 0])
  tokens, mask = np.full((2, ls), PAD), np.zeros((2, s), np.int32)
  positions = np.full((2, ls), p0)
  for r, row in enumerate(rows):
    n = len(row) - steps
    tokens[r, ls - n:], mask[r, ls - n:ls], positions[r, ls - n:] = row[:n], 1, p0 + np.arange(n)
  logits, cache = apply(params, tokens, positions, mask, cache, 0)
  got = [[np.asarray(logits[r, -1])] for r in range(2)]
  for t in range(steps):
    mask[:, ls + t] = 1
    pos = np.asarray([[p0 + len(row) - steps + t] for row in rows])
    step_tokens = np.asarray([[row[len(row) - steps + t]] for row in rows])
    logits, cache = apply(params, step_tokens, pos, mask, cache, np.int32(ls + t))
    for r in range(2):
      got[r].append(np.asarray(logits[r, 0]))
  for r, row in enumerate(rows):
    seq = np.concatenate([prefix, row])[None]
    full = np.asarray(_forward(params, seq, np.arange(seq.shape[1])[None], None, config=TINY))[0]
    n = len(row) - steps
    np.testing.assert_allclose(np.stack(got[r]), full[p0 + n - 1:p0 + n + steps], atol=1e-5)


def _naive_greedy(params, tokens, mask, max_new):
  """Recomputes the whole (fixed-length) sequence every step, no cache."""
  b, p = tokens.shape
  seq = np.concatenate([tokens, np.full((b, max_new), PAD)], 1)
  m = np.concatenate([mask, np.zeros((b, max_new), np.int32)], 1)
  out = np.full((b, max_new), PAD)
  done = np.zeros(b, bool)
  for t in range(max_new):
    logits = np.asarray(_forward(params, seq, positions_from_mask(m), m, config=TINY))
    nxt = np.where(done, PAD, logits[:, p + t - 1].argmax(-1))
    out[:, t], seq[:, p + t], m[:, p + t] = nxt, nxt, 1
    done |= nxt == EOS
  return out


def test_greedy_generate_equals_naive_loop(tiny):
  _, params = tiny
  rows = [[5, 9, 11, 4, 20], [7, 8], [30, 31, 32]]
  tokens, mask = gen.left_pad(rows, 6, PAD)
  naive = _naive_greedy(params, tokens, mask, 8)
  got = gen.generate(TINY, params, tokens, mask, max_new_tokens=8, eos_ids=[EOS], pad_id=PAD)
  np.testing.assert_array_equal(got.tokens, naive)
  # with an EOS in the vocabulary's likely set, lengths/finished follow the first EOS
  eos = int(naive[0, 2])
  got = gen.generate(TINY, params, tokens, mask, max_new_tokens=8, eos_ids=[eos], pad_id=PAD)
  assert got.finished[0] and got.lengths[0] == 3 and (got.tokens[0, 3:] == PAD).all()
  np.testing.assert_array_equal(got.tokens[0, :3], naive[0, :3])


class _Tok:
  eos_token_id, pad_token_id = EOS, PAD

  def decode(self, ids, skip_special_tokens):
    return " ".join(str(i) for i in ids if not (skip_special_tokens and i in (EOS, PAD)))


def test_generate_texts_batches_and_buckets(tiny):
  _, params = tiny
  rows = [[5, 9, 11, 4, 20], [7, 8], [30, 31, 32], [7, 8]]  # 2 batches of 3 (the 2nd padded)
  got = gen.generate_texts(TINY, params, _Tok(), rows, max_new_tokens=8, batch_size=3, buckets=(6,))
  want = _naive_greedy(params, *gen.left_pad(rows[:3], 6, PAD), 8)
  assert [s.prompt_index for s in got] == [0, 1, 2, 3]
  for s, w in zip(got, list(want) + [want[1]]):
    n = len(s.token_ids)
    assert s.token_ids == w[:n].tolist() and s.finished == (EOS in s.token_ids)
    assert s.text == " ".join(str(i) for i in s.token_ids if i != EOS)
  assert [gen.bucket_length(n, (64, 128)) for n in (1, 64, 65)] == [64, 64, 128]
  with pytest.raises(ValueError, match="longer than the largest bucket"):
    gen.generate_texts(TINY, params, _Tok(), [[1] * 7], max_new_tokens=8, buckets=(6,))


def test_sampling_shapes_and_determinism(tiny):
  _, params = tiny
  tokens, mask = gen.left_pad([[5, 6], [7]], 4, PAD)
  kw = dict(max_new_tokens=5, eos_ids=[], pad_id=PAD, temperature=1.0, num_samples=3)
  a = gen.generate(TINY, params, tokens, mask, rng=jax.random.PRNGKey(1), **kw)
  b = gen.generate(TINY, params, tokens, mask, rng=jax.random.PRNGKey(1), **kw)
  assert a.tokens.shape == (6, 5) and (a.lengths == 5).all() and not a.finished.any()
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert len({tuple(r) for r in a.tokens}) > 1


def test_token_logprobs_and_flops():
  logits = jnp.array([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])
  got = lm.token_log_probs(logits, jnp.array([[2, 1]]))
  want = np.log([np.exp(3) / np.exp([1, 2, 3]).sum(), 1 / 3])
  np.testing.assert_allclose(got[0], want, rtol=1e-6)
  n = sum(x.size for x in jax.tree_util.tree_leaves(jax.eval_shape(lambda: init_params(TINY, jax.random.PRNGKey(0)))))
  # tied: the embedding is used once as the LM head; norm scales are not matmul weights
  norms = (2 * TINY.num_layers + 1) * TINY.hidden_size
  assert flops_per_token(TINY) == 2 * (n - norms)
  assert flops_per_token(TINY, context_len=10, training=True) == 3 * (2 * (n - norms) + 4 * 2 * 10 * 32)


# ---------------------------------------------------------------------------------- real weights
ENGLISH = ("The quick brown fox jumps over the lazy dog. It was a sunny day in the park, and children "
           "were playing on the grass while their parents watched from the benches.")


@pytest.mark.slow
def test_smollm2_gguf_parity_and_sanity():
  """Real SmolLM2-135M (GGUF, dequantised): Flax == PyTorch logits; perplexity is sane."""
  from rd_jax.data import prompts
  model, tokenizer = hf_decoder.load_torch_model("smollm2")
  config = hf_decoder.config_from_hf(model.config.to_dict())
  params = hf_decoder.from_hf_state_dict(config, model.state_dict())
  text = prompts.build_prompt(tokenizer, "red running shoes for women",
                              "Nike Air Zoom Pegasus 39\nBrand: Nike\nColor: Red", ["Exact", "Substitute",
                                                                                   "Complement", "Irrelevant"])
  for s in (text, ENGLISH):
    ids = np.array([tokenizer(s, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
      want = model(torch.tensor(ids)).logits.numpy()
    got = np.asarray(_forward(params, ids, np.arange(ids.shape[1])[None], None, config=config))
    delta = np.abs(got - want).max()
    print(f"SmolLM2 max|dlogit| over {ids.shape[1]} tokens: {delta:.2e}")
    assert delta <= 1e-3
  nll = -float(lm.token_log_probs(jnp.asarray(got[:, :-1]), jnp.asarray(ids[:, 1:])).mean())
  print(f"SmolLM2 English NLL {nll:.3f} nats/token")
  assert nll < 4.0
  # GGUF keeps q/k rows in llama.cpp's order; transformers must undo it. Check the result where
  # RoPE matters most, copying: random tokens repeated twice are predictable only by position
  # (induction heads). With q/k left in GGUF order the copy is lost.
  half = np.random.RandomState(0).randint(1000, 40000, 40)
  ids = np.concatenate([half, half])[None]
  gguf_order = jax.tree_util.tree_map(np.asarray, params)
  for i in range(config.num_layers):
    attn = gguf_order[f"layers_{i}"]["self_attn"]
    for name, heads in (("q_proj", config.num_heads), ("k_proj", config.num_kv_heads)):
      w = attn[name]["kernel"].T  # [heads*hd, D]
      attn[name]["kernel"] = w.reshape(heads, 2, -1, w.shape[1]).swapaxes(1, 2).reshape(w.shape).T
  copy_nll = {}
  for name, p in (("loaded", params), ("gguf_order", gguf_order)):
    logits = _forward(p, ids, np.arange(80)[None], None, config=config)
    copy_nll[name] = -float(lm.token_log_probs(logits[:, 40:-1], jnp.asarray(ids[:, 41:])).mean())
  print(f"SmolLM2 NLL of the repeated half: {copy_nll}")
  assert copy_nll["loaded"] < 5.0 and copy_nll["gguf_order"] > 10.0
  # greedy generation agrees with transformers' generate on the chat prompt
  ids = tokenizer(text, add_special_tokens=False)["input_ids"]
  ours = gen.generate(config, params, np.array([ids]), np.ones((1, len(ids))), max_new_tokens=24,
                      eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id)
  with torch.no_grad():
    hf = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                        pad_token_id=tokenizer.pad_token_id)[0, len(ids):].numpy()
  n = min(len(hf), int(ours.lengths[0]))
  np.testing.assert_array_equal(ours.tokens[0, :n], hf[:n])
