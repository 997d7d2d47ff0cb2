"""refill.run (shared prefix + slots refilled as rows end + label scoring) against the plain path.

A tiny random decoder (seconds): greedy tokens equal `generate.generate` on each prompt alone,
whatever the slot count or prefix; the label scores equal log-probs from a full forward without
any cache; the stop cue ends a row and the scored context is rewound to it.
"""

import jax
import numpy as np
import pytest

from rd_jax import generate as gen, refill
from rd_jax.models.decoder import Decoder, DecoderConfig, init_params

TINY = DecoderConfig(vocab_size=61, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                     intermediate_size=48, rope_theta=1000.0, rms_norm_eps=1e-6, max_position=128)
PAD = 0
PREFIX = [5, 9, 11, 4, 20, 7, 7, 13, 2, 17, 30, 31, 32, 33, 40, 41, 42, 43]   # 18 shared tokens
TAILS = [[8, 9], [50, 51, 52, 53, 54], [6], [21, 22, 23], [44, 45, 46, 47, 48, 49, 10], [12, 12],
         list(range(12, 52))]   # 40 tokens: its refill runs two 32-token chunks, the others one


@pytest.fixture(scope="module")
def params():
  p = init_params(TINY, jax.random.PRNGKey(3))
  # sharper logits than the default init, so greedy choices are far from ties
  return jax.tree.map(lambda x: x * 4.0 if x.ndim == 2 else x, p)


def _alone(params, prompt, max_new, eos):
  tokens, mask = gen.left_pad([prompt], len(prompt), PAD)
  g = gen.generate(TINY, params, tokens, mask, max_new_tokens=max_new, eos_ids=eos, pad_id=PAD)
  return g.tokens[0, :g.lengths[0]].tolist(), bool(g.finished[0])


def _full_logprobs(params, seq):
  """log p(seq[j+1] | seq[:j+1]) for every j, one forward, no cache."""
  seq = np.asarray([seq], np.int32)
  logits, _ = Decoder(TINY).apply({"params": params}, seq, np.arange(seq.shape[1])[None])
  lp = jax.nn.log_softmax(np.asarray(logits[0], np.float64), -1)
  return np.array([lp[j, seq[0, j + 1]] for j in range(seq.shape[1] - 1)])


def _eos_for(params, prompts, max_new):
  """An EOS id some rows produce early and others never: rows of different lengths."""
  outs = [_alone(params, p, max_new, [])[0] for p in prompts]
  counts = {}
  for o in outs:
    for t in set(o[1:max_new // 2]):
      counts[t] = counts.get(t, 0) + 1
  return min(counts, key=lambda t: abs(counts[t] - len(prompts) / 2))


# (slots, refill_at): one row at a time; several slots refilled (and scored) together, in
# power-of-two groups (4 free -> one [4, CHUNK] refill, 3 -> 2 + 1); more slots than prompts
@pytest.mark.parametrize("slots,refill_at", [(1, None), (2, None), (4, None), (4, 3), (4, 4),
                                             (16, None)])
def test_greedy_tokens_equal_the_plain_path(params, slots, refill_at):
  prompts = [PREFIX + t for t in TAILS]
  eos = [_eos_for(params, prompts, 12)]
  want = [_alone(params, p, 12, eos) for p in prompts]
  assert len({len(w[0]) for w in want}) > 1, "rows should end at different lengths"
  got = refill.run(TINY, params, prompts, slots=slots, max_new_tokens=12, eos_ids=eos, pad_id=PAD,
                   refill_at=refill_at)
  assert got.prefix_len == 16  # 18 shared tokens, rounded down to a multiple of 16
  for r, (tokens, finished) in enumerate(want):
    assert got.tokens[r, :got.lengths[r]].tolist() == tokens, r
    assert got.finished[r] == finished and not got.stopped[r]
    assert (got.tokens[r, got.lengths[r]:] == PAD).all()


def test_prefix_choice_does_not_change_tokens(params):
  prompts = [PREFIX + t for t in TAILS]
  a = refill.run(TINY, params, prompts, slots=3, max_new_tokens=8, eos_ids=[], pad_id=PAD, prefix_len=0)
  b = refill.run(TINY, params, prompts, slots=3, max_new_tokens=8, eos_ids=[], pad_id=PAD, prefix_len=18)
  assert a.prefix_len == 0 and b.prefix_len == 18
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert (a.lengths == 8).all() and not a.finished.any()


@pytest.mark.parametrize("slots,refill_at", [(2, None), (4, 3)])
def test_label_scores_equal_a_full_forward(params, slots, refill_at):
  """The K candidates scored from the slot's cache == log-probs of prompt + text + candidate."""
  prompts = [PREFIX + t for t in TAILS]
  cue = [14, 15]
  cands = [cue + [24], cue + [25, 26], cue + [27, 28, 29]]
  eos = [_eos_for(params, prompts, 10)]
  got = refill.run(TINY, params, prompts, slots=slots, max_new_tokens=10, eos_ids=eos, pad_id=PAD,
                   stop_ids=cue, candidates=cands, refill_at=refill_at)
  assert got.scores.shape == (len(prompts), 3)
  for r, p in enumerate(prompts):
    text = got.tokens[r, :got.lengths[r]].tolist()
    context = p + text[:-1]   # EOS, or the last token of a cut row, is not part of the context
    for k, c in enumerate(cands):
      lp = _full_logprobs(params, context + c)
      want = lp[len(context) + len(cue) - 1:].sum()
      np.testing.assert_allclose(got.scores[r, k], want, atol=2e-4, rtol=1e-4)


def test_stop_cue_ends_a_row_and_scoring_rewinds_to_it(params):
  prompts = [PREFIX + t for t in TAILS]
  free = [_alone(params, p, 12, [])[0] for p in prompts]
  cue = free[1][3:5]                                   # a pair row 1 writes at tokens 3-4
  cands = [cue + [24], cue + [25, 26]]
  got = refill.run(TINY, params, prompts, slots=2, max_new_tokens=12, eos_ids=[], pad_id=PAD,
                   stop_ids=cue, candidates=cands)
  end = next(j + 2 for j in range(len(free[1]) - 1) if free[1][j:j + 2] == cue)   # first occurrence
  assert got.stopped[1] and got.finished[1] and got.lengths[1] == end
  for r, p in enumerate(prompts):
    text = got.tokens[r, :got.lengths[r]].tolist()
    assert text == free[r][:len(text)]
    context = p + (text[:-len(cue)] if got.stopped[r] else text[:-1])
    for k, c in enumerate(cands):
      want = _full_logprobs(params, context + c)[len(context) + len(cue) - 1:].sum()
      np.testing.assert_allclose(got.scores[r, k], want, atol=2e-4, rtol=1e-4)


def test_sampling_is_seeded_and_fills_every_prompt(params):
  prompts = [PREFIX + t for t in TAILS] * 3
  kw = dict(slots=4, max_new_tokens=6, eos_ids=[], pad_id=PAD, temperature=1.0)
  a = refill.run(TINY, params, prompts, rng=jax.random.PRNGKey(1), **kw)
  b = refill.run(TINY, params, prompts, rng=jax.random.PRNGKey(1), **kw)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert (a.lengths == 6).all() and len({tuple(r) for r in a.tokens}) > len(TAILS)


def test_generate_texts_appends_the_scored_label(params):
  class Tok:
    eos_token_id, pad_token_id = 3, PAD

    def __call__(self, text, add_special_tokens=False):
      vocab = {"\nLabel:": [14, 15], "\nLabel: A": [14, 15, 24], "\nLabel: B": [14, 15, 25, 26]}
      return {"input_ids": vocab[text]}

    def decode(self, ids, skip_special_tokens=True):
      return "".join("\nLabel:" if i == 15 else "" if i == 14 else f"w{i} " for i in ids
                     if not (skip_special_tokens and i in (3, PAD)))

  prompts = [PREFIX + t for t in TAILS]
  got = gen.generate_texts(TINY, params, Tok(), prompts, max_new_tokens=10, batch_size=3,
                           score_labels=["A", "B"], buckets=(64,))
  direct = refill.run(TINY, params, prompts, slots=3, max_new_tokens=10, eos_ids=[3], pad_id=PAD,
                      stop_ids=[14, 15], candidates=[[14, 15, 24], [14, 15, 25, 26]])
  for s, scores, fin in zip(got, direct.scores, direct.finished):
    np.testing.assert_allclose(np.exp(s.label_logprobs).sum(), 1.0, rtol=1e-5)
    label = "AB"[int(np.argmax(scores))]
    assert s.text.endswith(f"Label: {label}") == bool(fin)


def test_tail_batch_halves_when_slots_idle(params, monkeypatch):
  """8 slots, 14 prompts: once no prompt is left and half the slots are idle, the active rows move
  to a 4-slot batch (the ended ones scored first); tokens and scores do not change."""
  prompts = [PREFIX + t for t in TAILS] + [PREFIX + [t[0] + 1] + t for t in TAILS]
  cue = [14, 15]
  cands = [cue + [24], cue + [25, 26]]
  eos = [_eos_for(params, prompts, 12)]
  kw = dict(max_new_tokens=12, eos_ids=eos, pad_id=PAD, stop_ids=cue, candidates=cands)
  batches, decode = [], refill._decode
  monkeypatch.setattr(refill, "_decode", lambda p, cache, *a, **k:
                      batches.append(cache["k"].shape[1]) or decode(p, cache, *a, **k))
  got = refill.run(TINY, params, prompts, slots=8, **kw)
  assert batches[0] == 8 and batches[-1] == 4   # the tail decoded in a 4-slot batch
  ref = refill.run(TINY, params, prompts, slots=2, **kw)   # never halves (2 < 2 x MIN_TAIL)
  np.testing.assert_array_equal(got.tokens, ref.tokens)
  np.testing.assert_allclose(got.scores, ref.scores, atol=1e-5)
  for r, p in enumerate(prompts):
    tokens, _ = _alone(params, p, 12, eos)
    n = got.lengths[r]
    assert got.tokens[r, :n].tolist() == tokens[:n], r


def test_packing_layout_by_hand():
  """cue [14, 15]; labels [24], [25, 26], [27, 28, 29] -> one row [14 15 | 25 | 27 28]."""
  p = refill.Packing.build([14, 15], [[24], [25, 26], [27, 28, 29]])
  assert p.tokens.tolist() == [14, 15, 25, 27, 28]
  assert p.offset.tolist() == [0, 1, 2, 2, 3]          # each label at the positions it has alone
  assert p.source.tolist() == [1, 1, 2, 1, 3, 4]       # the cue's end predicts every first token
  assert p.target.tolist() == [24, 25, 26, 27, 28, 29]
  assert p.owner.argmax(1).tolist() == [0, 1, 1, 2, 2, 2]
  want = np.array([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 0, 1, 0],
                   [1, 1, 0, 1, 1]], bool)              # 27 and 28 never see 25
  np.testing.assert_array_equal(p.visible, want)


def test_candidates_need_a_stop_cue(params):
  with pytest.raises(ValueError, match="stop cue"):
    refill.run(TINY, params, [PREFIX + [1]], slots=1, max_new_tokens=2, eos_ids=[], pad_id=PAD,
               candidates=[[24], [25]])


def test_bf16_matmuls_stay_close_to_fp32(params):
  """matmul_dtype=bfloat16 (bf16 inputs, fp32 accumulation and activations): logits within bf16
  rounding of fp32's, the matrices cast once, norms kept fp32; refill runs with it."""
  import dataclasses
  from rd_jax.models.decoder import cast_matmul_params
  mixed = dataclasses.replace(TINY, matmul_dtype="bfloat16")
  cast = cast_matmul_params(mixed, params)
  assert cast["layers_0"]["mlp"]["up_proj"]["kernel"].dtype == np.dtype("bfloat16")
  assert cast["norm"]["scale"].dtype == np.float32
  assert cast_matmul_params(TINY, params) is params
  seq = np.asarray([PREFIX + TAILS[1]], np.int32)
  pos = np.arange(seq.shape[1])[None]
  want, _ = Decoder(TINY).apply({"params": params}, seq, pos)
  got, _ = Decoder(mixed).apply({"params": cast}, seq, pos)
  assert got.dtype == np.float32
  # the reference for "bf16 rounding only": the all-bf16 compute path (dtype=bfloat16); fp32
  # activations and accumulation must be at least as close to fp32 as it is
  full_bf16, _ = Decoder(dataclasses.replace(TINY, dtype="bfloat16")).apply({"params": params}, seq, pos)
  err = lambda x: np.abs(np.asarray(x, np.float32) - np.asarray(want)).mean()
  assert 0 < err(got) <= err(full_bf16), (err(got), err(full_bf16))
  prompts = [PREFIX + t for t in TAILS]
  a = refill.run(TINY, params, prompts, slots=4, max_new_tokens=8, eos_ids=[], pad_id=PAD)
  b = refill.run(mixed, params, prompts, slots=4, max_new_tokens=8, eos_ids=[], pad_id=PAD)
  assert (a.tokens[:, 0] == b.tokens[:, 0]).mean() >= 0.5   # mostly the same first tokens
