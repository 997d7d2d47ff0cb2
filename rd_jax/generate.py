"""Batched teacher generation with a preallocated KV cache, one jitted call per shape.

`generate` takes LEFT-padded prompts [B, P] and returns up to `max_new_tokens` per row:
  1. prefill: one forward over the P prompt slots writes the cache and gives the first token;
  2. decode: a `lax.while_loop` feeds the last token at slot P + t - 1 (position = the row's
     valid-token count + t - 1), writes its K/V there and picks the next token; it stops after
     max_new_tokens or as soon as every row has produced an EOS.
The cache has S = P + max_new_tokens slots; slot validity is a [B, S] mask (pads 0), so padded
rows compute exactly what they would alone. Greedy = argmax; sampling = softmax(logits / T).
k samples per prompt repeat each row k times (rows b*k .. b*k+k-1 belong to prompt b).

Compilation happens once per (B, P, max_new_tokens, num_samples, greedy) — temperature, the
rng and the EOS ids are traced. `generate` is the plain path (the benchmarks' and tests'
reference); the stages go through `generate_texts`, which runs `rd_jax/refill.py` (the prompts'
common prefix prefilled once, `batch_size` slots refilled in batches as rows end, the label scored
as K continuations when `score_labels` is given).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from rd_jax.models.decoder import Decoder, DecoderConfig, init_cache, positions_from_mask

# Prefill is compute-bound on CPU (B * P tokens through every weight): padding a 178-token prompt
# to 256 costs 44% more, so buckets are fine-grained where teacher prompts fall (~150-250).
DEFAULT_BUCKETS = (64, 128, 160, 192, 224, 256, 320, 384, 512)
LABEL_CUE = "\nLabel:"   # the line before the label in every teacher answer (data/prompts.py)


@dataclasses.dataclass
class Generation:
  tokens: np.ndarray    # [N, max_new] int32, pad_id after a row's end
  lengths: np.ndarray   # [N] int32: tokens generated, counting the EOS
  finished: np.ndarray  # [N] bool: the row produced an EOS (False = cut at max_new: truncated)


@dataclasses.dataclass
class Sample:
  prompt_index: int
  sample_index: int
  text: str             # decoded without special tokens
  token_ids: list
  finished: bool
  label_logprobs: list | None = None  # [K] log-softmax of the scored labels (score_labels)
  stopped: bool = False               # the row ended on the label cue


@functools.partial(jax.jit, static_argnames=("config", "max_new", "num_samples", "greedy", "pad_id"))
def _generate(params, tokens, mask, rng, temperature, eos, *, config, max_new, num_samples, greedy, pad_id):
  model = Decoder(config)
  if num_samples > 1:
    tokens, mask = jnp.repeat(tokens, num_samples, 0), jnp.repeat(mask, num_samples, 0)
  b, p = tokens.shape
  mask = mask.astype(jnp.int32)
  slots = jnp.concatenate([mask, jnp.zeros((b, max_new), jnp.int32)], axis=1)  # [B, S]

  def pick(h_last, key):  # h_last [B, D] -> next token [B]
    logits = model.apply({"params": params}, h_last, method=Decoder.head)
    if greedy:
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)

  # Prefill: all P prompt slots at once; only the last position's logits are needed.
  h, cache = model.apply({"params": params}, tokens, positions_from_mask(mask), attention_mask=slots,
                         cache=init_cache(config, b, p + max_new), cache_index=0,
                         method=Decoder.hidden_states)
  rng, key = jax.random.split(rng)
  first = pick(h[:, -1], key)
  out = jnp.full((b, max_new), pad_id, jnp.int32).at[:, 0].set(first)
  done = jnp.isin(first, eos)
  lengths = jnp.ones((b,), jnp.int32)
  pos = jnp.sum(mask, axis=1)  # next position of each row = its valid-token count

  def cond(state):
    t, *_, done, _ = state
    return (t < max_new) & ~jnp.all(done)

  def body(state):
    t, last, pos, cache, slots, out, lengths, done, rng = state
    slot = p + t - 1
    slots = jax.lax.dynamic_update_slice(slots, jnp.ones((b, 1), jnp.int32), (0, slot))
    h, cache = model.apply({"params": params}, last[:, None], pos[:, None], attention_mask=slots,
                           cache=cache, cache_index=slot, method=Decoder.hidden_states)
    rng, key = jax.random.split(rng)
    nxt = jnp.where(done, pad_id, pick(h[:, 0], key))
    out = jax.lax.dynamic_update_slice(out, nxt[:, None], (0, t))
    lengths = lengths + (~done).astype(jnp.int32)
    done = done | jnp.isin(nxt, eos)
    return t + 1, nxt, pos + 1, cache, slots, out, lengths, done, rng

  state = (jnp.int32(1), first, pos, cache, slots, out, lengths, done, rng)
  *_, out, lengths, done, _ = jax.lax.while_loop(cond, body, state)
  return out, lengths, done


def generate(config: DecoderConfig, params, prompt_tokens, prompt_mask, *, max_new_tokens: int,
             eos_ids: Sequence[int], pad_id: int, temperature: float = 0.0, num_samples: int = 1,
             rng: jax.Array | None = None) -> Generation:
  """Generates for LEFT-padded prompts [B, P] (mask 1 = real token); temperature 0 = greedy.

  Returns numpy arrays for B * num_samples rows (prompt-major). Rows hold pad_id after their EOS.
  """
  prompt_tokens, prompt_mask = np.asarray(prompt_tokens, np.int32), np.asarray(prompt_mask, np.int32)
  if prompt_tokens.shape != prompt_mask.shape or prompt_tokens.ndim != 2:
    raise ValueError(f"prompt tokens {prompt_tokens.shape} and mask {prompt_mask.shape} must be equal [B, P]")
  if (prompt_mask[:, -1] != 1).any():
    raise ValueError("prompts must be LEFT-padded: every row's last slot must be a real token")
  if prompt_tokens.shape[1] + max_new_tokens > config.max_position:
    raise ValueError(f"prompt {prompt_tokens.shape[1]} + {max_new_tokens} new tokens > max_position {config.max_position}")
  greedy = temperature <= 0.0
  if greedy and num_samples > 1:
    raise ValueError("num_samples > 1 needs temperature > 0 (greedy samples would be identical)")
  rng = jax.random.PRNGKey(0) if rng is None else rng
  eos = np.asarray([int(e) for e in eos_ids] or [-1], np.int32)  # [] = never stop early
  out, lengths, done = _generate(params, prompt_tokens, prompt_mask, rng, np.float32(max(temperature, 1e-6)),
                                 eos, config=config, max_new=int(max_new_tokens), num_samples=int(num_samples),
                                 greedy=greedy, pad_id=int(pad_id))
  return Generation(np.asarray(out), np.asarray(lengths), np.asarray(done))


def left_pad(rows: Sequence[Sequence[int]], length: int, pad_id: int, batch: int | None = None):
  """Token lists -> LEFT-padded (tokens, mask) [batch, length]; extra rows repeat row 0."""
  batch = batch or len(rows)
  tokens = np.full((batch, length), pad_id, np.int32)
  mask = np.zeros((batch, length), np.int32)
  for r in range(batch):
    ids = rows[r] if r < len(rows) else rows[0]
    if len(ids) > length:
      raise ValueError(f"prompt row {r} has {len(ids)} tokens > padded length {length}")
    if ids:
      tokens[r, length - len(ids):], mask[r, length - len(ids):] = ids, 1
  return tokens, mask


def bucket_length(n: int, buckets: Sequence[int]) -> int:
  for b in sorted(buckets):
    if n <= b:
      return b
  raise ValueError(f"prompt of {n} tokens is longer than the largest bucket {max(buckets)}: "
                   "shorten the item text (data.max_item_chars) or add a bucket")


def generate_texts(config: DecoderConfig, params, tokenizer, prompts: Sequence, *, max_new_tokens: int,
                   batch_size: int = 16, temperature: float = 0.0, num_samples: int = 1, seed: int = 0,
                   buckets: Sequence[int] = DEFAULT_BUCKETS, eos_ids: Sequence[int] | None = None,
                   score_labels: Sequence[str] | None = None, cue: str = LABEL_CUE,
                   chunk_prompts: int = 1024, draft_tokens: int = 0,
                   matmul_dtype: str = "") -> list[Sample]:
  """Prompts (chat-rendered strings, or token-id lists) -> Samples, prompt-major, k per prompt.

  Strings are tokenised without extra special tokens (the chat template already has them).
  Generation is `refill.run`: `batch_size` slots decode at a time, the prompts' common prefix is
  prefilled once, free slots take the next prompts (in batches) as rows end. `buckets` bounds the
  prompt length (the largest bucket). With `score_labels`, a row stops at `cue` ("\nLabel:") and
  each label is scored as its continuation: `Sample.label_logprobs` [K] (log-softmax over the
  labels) and the text ends "<reasoning>\nLabel: <argmax label>" (what `prompts.parse_response`
  reads); a row cut at max tokens keeps its text (a "truncated" failure) and its scores.
  draft_tokens: greedy speculative decoding with n-gram guesses (`teacher.draft_tokens`; the
  same tokens in fewer steps, `rd_jax/drafts.py`); sampling ignores it.
  matmul_dtype: "" = the config's dtype (no change); "bfloat16" with a float32 config =
  bf16-input fp32-output matmuls with fp32 activations and cache (`teacher.generate_matmul_dtype`,
  models/decoder.py).
  """
  from rd_jax import refill
  if matmul_dtype and matmul_dtype != config.dtype:
    config = dataclasses.replace(config, matmul_dtype=matmul_dtype)
  if eos_ids is None:
    eos_ids = [tokenizer.eos_token_id]
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
  ids = [list(p) if not isinstance(p, str) else tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
  for r in ids:
    bucket_length(len(r), buckets)   # raises for a prompt longer than the largest bucket
  stop, cands = (), ()
  if score_labels:
    stop = tokenizer(cue, add_special_tokens=False)["input_ids"]
    cands = [tokenizer(f"{cue} {l}", add_special_tokens=False)["input_ids"] for l in score_labels]
  rng = jax.random.PRNGKey(seed)
  samples, t0, generated = [], time.perf_counter(), 0
  rows = [(i, k) for i in range(len(ids)) for k in range(num_samples)]
  for start in range(0, len(rows), chunk_prompts):
    part = rows[start:start + chunk_prompts]
    rng, key = jax.random.split(rng)
    res = refill.run(config, params, [ids[i] for i, _ in part], slots=batch_size,
                     max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id,
                     temperature=temperature, rng=key, stop_ids=stop, candidates=cands,
                     draft_tokens=draft_tokens)
    for r, (i, k) in enumerate(part):
      row = res.tokens[r, :res.lengths[r]].tolist()
      text = tokenizer.decode(row, skip_special_tokens=True)
      logprobs = None
      if score_labels:
        logprobs = np.asarray(jax.nn.log_softmax(res.scores[r])).tolist()
        text = _with_label(text, score_labels[int(np.argmax(res.scores[r]))], bool(res.finished[r]),
                           bool(res.stopped[r]), cue)
      samples.append(Sample(i, k, text, row, bool(res.finished[r]), logprobs, bool(res.stopped[r])))
      generated += len(row)
    elapsed = time.perf_counter() - t0
    logging.info("generate: %d/%d rows (%d prompts x %d samples), shared prefix %d tokens, "
                 "%.1f tokens/s, %.2f rows/s", min(start + chunk_prompts, len(rows)), len(rows),
                 len(ids), num_samples, res.prefix_len, generated / elapsed,
                 min(start + chunk_prompts, len(rows)) / elapsed)
  return samples


_LABEL_TAIL = re.compile(r"\n?\s*label\s*:[^\n]*$", re.IGNORECASE)


def _with_label(text: str, label: str, finished: bool, stopped: bool, cue: str) -> str:
  """The generated text with the scored label as its last line (unless the row was cut)."""
  if not finished:
    return text
  if stopped:
    return f"{text.rstrip()} {label}"
  body = _LABEL_TAIL.sub("", text.rstrip()).rstrip()   # drop a label line the row wrote itself
  return f"{body}{cue} {label}" if body else f"{cue.strip()} {label}"
