"""Teacher generation for many prompts: a shared prefix prefilled once, slots refilled as rows end,
and the label scored as K continuations — all in one jitted call.

Why (README "Performance"): at batch 16 the plain path (`generate.generate`) spends ~44% of its
time prefilling ~200 prompt tokens per row that every row shares, and decodes each batch to its
longest row (<= 96 tokens) while the average answer is ~35. Here:
  1. prefix: the longest common token prefix of all prompts (P0 tokens: the chat template, the
     instructions and label definitions of prompt v2) is prefilled ONCE for one row and copied into
     every slot's cache;
  2. slots: a fixed decode batch of B slots; each holds one prompt at a time. When a slot's row
     ends (EOS, the stop cue, or max_new tokens), its label is scored (3.) and it takes the next
     prompt: a one-row prefill of that prompt's own suffix (query + item) into the slot's cache
     at slots [P0, P0 + Ls), then decoding resumes with per-slot cache indices and positions;
  3. scoring: with `candidates` (the token ids of the cue "\\nLabel:" + each label name), the row's
     cache is broadcast to K rows and the K candidates are fed in one pass from where the
     reasoning ended, giving  score_k = sum_j log p(label_k token j | prompt, reasoning, cue, ...).
     A row that stopped on the cue is rewound to the cue's start (the same tokens are rewritten);
     a row that ended otherwise gets the cue appended. No parsing decides the label.

Cache of one slot, S = P0 + Ls + max_new + A slots (A = cue + longest label):
    [ prefix (shared, P0) | suffix (LEFT-padded, Ls) | generated (max_new) | scoring room (A) ]
Positions count valid slots only, so a slot computes exactly what the plain path computes for its
prompt alone (greedy: the same tokens; `tests/test_refill.py`).

Static (compile) shapes: B, P0, Ls, max_new, the padded prompt count N and the candidates' shape;
`run` rounds P0 down and Ls, N up so a run compiles a handful of times.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rd_jax.models.decoder import Decoder, DecoderConfig, init_cache

ROUND = 16          # P0 is rounded down to a multiple of this (fewer distinct compiles)
CHUNK = 32          # a refill prefills its suffix in chunks of this many tokens (Ls: a multiple)
NEVER = -2          # a token id no window ever holds (empty stop cue / window fill)


@dataclasses.dataclass
class Result:
  tokens: np.ndarray     # [N, max_new] int32, pad after a row's end (EOS / the cue included)
  lengths: np.ndarray    # [N] tokens generated, counting the EOS or the cue
  finished: np.ndarray   # [N] bool: ended by EOS or the stop cue (False = cut at max_new)
  stopped: np.ndarray    # [N] bool: ended by the stop cue
  scores: np.ndarray | None  # [N, K] fp32 log p(candidate k | ...), None without candidates
  prefix_len: int        # P0: tokens prefilled once and shared


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
  """Length of the longest token prefix every row shares."""
  first, n = rows[0], min(len(r) for r in rows)
  for r in rows[1:]:
    k = 0
    while k < n and r[k] == first[k]:
      k += 1
    n = k
  return n


@functools.partial(jax.jit, static_argnames=("config", "slots", "max_new", "greedy"))
def _run(params, prefix, suffix, suffix_mask, n_real, rng, temperature, eos, stop, cand, cand_mask,
         label_mask, *, config: DecoderConfig, slots: int, max_new: int, greedy: bool):
  model = Decoder(config)
  b_, p0, (n_pad, ls), (k_, a_) = slots, prefix.shape[0], suffix.shape, cand.shape
  c_ = stop.shape[0]
  score_on = k_ > 0 and a_ > 1
  s_ = p0 + ls + max_new + a_
  gen0 = p0 + ls                                     # first generated token's slot

  def forward(tokens, positions, mask, cache, index):
    return model.apply({"params": params}, tokens, positions, attention_mask=mask, cache=cache,
                       cache_index=index, method=Decoder.hidden_states)

  def pick(h, key):  # h [R, D] -> [R]
    logits = model.apply({"params": params}, h, method=Decoder.head)
    if greedy:
      return jnp.argmax(logits, -1).astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature, -1).astype(jnp.int32)

  # 1. The shared prefix, once, for one row; every slot starts from a copy of it.
  row_mask = (jnp.arange(s_) < p0).astype(jnp.int32)[None]                 # [1, S]
  row_cache = init_cache(config, 1, s_)
  if p0:
    _, row_cache = forward(prefix[None], jnp.arange(p0)[None], row_mask, row_cache, 0)
  st = dict(cache=jax.tree.map(lambda x: jnp.repeat(x, b_, axis=1), row_cache),  # [layers, B, ..]
            mask=jnp.repeat(row_mask, b_, 0),                              # [B, S] valid slots
            prompt=jnp.full((b_,), -1, jnp.int32),    # prompt held by the slot (-1: none)
            t=jnp.zeros((b_,), jnp.int32),            # tokens generated for it
            last=jnp.zeros((b_,), jnp.int32),         # last picked token (not yet in the cache)
            pos=jnp.zeros((b_,), jnp.int32),          # its position
            active=jnp.zeros((b_,), bool),
            window=jnp.full((b_, c_), NEVER, jnp.int32),  # last C tokens, for the stop cue
            next=jnp.int32(0), rng=rng,
            out=jnp.zeros((n_pad, max_new), jnp.int32), lengths=jnp.zeros((n_pad,), jnp.int32),
            finished=jnp.zeros((n_pad,), bool), stopped=jnp.zeros((n_pad,), bool),
            scores=jnp.zeros((n_pad, max(k_, 1)), jnp.float32))
  row = lambda cache, b: jax.tree.map(lambda x: lax.dynamic_slice_in_dim(x, b, 1, axis=1), cache)

  def end_row(st, idx, ended, t, eos_hit, stop_hit):
    """Records lengths / finished / stopped of the rows `ended` (idx: their prompts)."""
    drop = jnp.where(ended, idx, n_pad)                                    # out of range: dropped
    st["lengths"] = st["lengths"].at[drop].set(t, mode="drop")
    st["finished"] = st["finished"].at[drop].set(eos_hit | stop_hit, mode="drop")
    st["stopped"] = st["stopped"].at[drop].set(stop_hit, mode="drop")
    return st

  # 2a. Refill slot b with the next prompt: its suffix through the slot's cache, first token.
  # The suffix is LEFT-padded to Ls; only the CHUNK-token chunks holding real tokens are run (a
  # short query + item does not pay for the longest one's prefill).
  def refill(st, b):
    n = st["next"]
    toks, sm = suffix[n], suffix_mask[n]                                   # [Ls]
    mask = jnp.concatenate([jnp.ones((p0,), jnp.int32), sm, jnp.zeros((s_ - gen0,), jnp.int32)])
    positions = p0 + jnp.maximum(jnp.cumsum(sm) - 1, 0)
    first_chunk = (ls - jnp.sum(sm)) // CHUNK

    def chunk(carry):
      j, rc, _ = carry
      sl = lambda x: lax.dynamic_slice_in_dim(x, j * CHUNK, CHUNK)
      h, rc = forward(sl(toks)[None], sl(positions)[None], mask[None], rc, p0 + j * CHUNK)
      return j + 1, rc, h[:, -1]

    h0 = jnp.zeros((1, config.hidden_size), config.compute_dtype)
    _, rc, h_last = lax.while_loop(lambda c: c[0] < ls // CHUNK, chunk,
                                   (first_chunk, row(st["cache"], b), h0))
    st["cache"] = jax.tree.map(lambda x, r: lax.dynamic_update_slice_in_dim(x, r, b, axis=1),
                               st["cache"], rc)
    st["rng"], key = jax.random.split(st["rng"])
    first = pick(h_last, key)[0]
    window = jnp.concatenate([jnp.full((c_ - 1,), NEVER, jnp.int32), first[None]])
    eos_hit, stop_hit = jnp.isin(first, eos), jnp.all(window == stop)
    ended = eos_hit | stop_hit | (max_new == 1)
    st["out"] = st["out"].at[n].set(jnp.zeros((max_new,), jnp.int32).at[0].set(first))
    st = end_row(st, n[None], jnp.ones((1,), bool), jnp.ones((1,), jnp.int32), eos_hit[None], stop_hit[None])
    upd = dict(mask=mask, prompt=n, t=1, last=first, pos=p0 + jnp.sum(sm), active=~ended, window=window)
    for k, v in upd.items():
      st[k] = st[k].at[b].set(v)
    st["next"] = n + 1
    return st

  # 2b. Score the K candidates after the row slot b ended (rewound to the cue if it stopped on it).
  def score(st, b):
    n = st["prompt"][b]
    back = (c_ - 1) * st["stopped"][n].astype(jnp.int32)
    e = gen0 + st["t"][b] - 1 - back                                       # the cue's first slot
    q = st["pos"][b] - back                                                # and its position
    slot = jnp.arange(s_)
    rel = jnp.clip(slot - e, 0, a_ - 1)
    mask = ((st["mask"][b] > 0) & (slot < e))[None] | (
        (slot >= e) & (slot < e + a_))[None] & (cand_mask[:, rel] > 0)     # [K, S]
    rc = jax.tree.map(lambda x: jnp.repeat(x, k_, axis=1), row(st["cache"], b))
    h, _ = forward(cand, jnp.broadcast_to(q + jnp.arange(a_), (k_, a_)), mask.astype(jnp.int32), rc, e)
    logits = model.apply({"params": params}, h[:, :-1], method=Decoder.head)   # [K, A-1, V] fp32
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), cand[:, 1:, None], -1)[..., 0]
    st["scores"] = st["scores"].at[n].set(jnp.sum(lp * label_mask[:, 1:], -1))
    return st

  def needs(st):  # slots with a row to score, or free while prompts remain
    return ~st["active"] & ((st["prompt"] >= 0) | (st["next"] < n_real))

  def service(st):
    b = jnp.argmax(needs(st))
    held = st["prompt"][b] >= 0
    if score_on:
      st = lax.cond(held, lambda s: score(s, b), lambda s: s, st)
    st["prompt"] = st["prompt"].at[b].set(-1)
    return lax.cond(st["next"] < n_real, lambda s: refill(s, b), lambda s: s, st)

  # 2c. One decode step for every slot; only active slots change state.
  def decode(st):
    active, t = st["active"], st["t"]
    w = gen0 + t - 1                                                       # [B] write slot
    mask = st["mask"].at[jnp.arange(b_), w].max(active.astype(jnp.int32), mode="drop")
    h, cache = forward(st["last"][:, None], st["pos"][:, None], mask, st["cache"], w)
    st["rng"], key = jax.random.split(st["rng"])
    nxt = pick(h[:, 0], key)
    idx = jnp.where(active, st["prompt"], n_pad)
    st["out"] = st["out"].at[idx, jnp.minimum(t, max_new - 1)].set(nxt, mode="drop")
    window = jnp.where(active[:, None], jnp.concatenate([st["window"][:, 1:], nxt[:, None]], 1), st["window"])
    eos_hit, stop_hit = jnp.isin(nxt, eos), jnp.all(window == stop[None], -1)
    inc = active.astype(jnp.int32)
    t = t + inc
    ended = active & (eos_hit | stop_hit | (t >= max_new))
    st = end_row(st, idx, ended, t, eos_hit & active, stop_hit & active)
    st.update(cache=cache, mask=mask, t=t, pos=st["pos"] + inc, window=window,
              last=jnp.where(active, nxt, st["last"]), active=active & ~ended)
    return st

  def body(st):
    st = lax.while_loop(lambda s: jnp.any(needs(s)), service, st)
    return lax.cond(jnp.any(st["active"]), decode, lambda s: s, st)

  st = lax.while_loop(lambda s: jnp.any(s["active"]) | jnp.any(needs(s)), body, st)
  return st["out"], st["lengths"], st["finished"], st["stopped"], st["scores"]


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def run(config: DecoderConfig, params, prompts: Sequence[Sequence[int]], *, slots: int,
        max_new_tokens: int, eos_ids: Sequence[int], pad_id: int, temperature: float = 0.0,
        rng: jax.Array | None = None, stop_ids: Sequence[int] = (),
        candidates: Sequence[Sequence[int]] = (), prefix_len: int | None = None) -> Result:
  """Generates for token-id `prompts` (no padding) with `slots` rows decoding at a time.

  stop_ids: a token sequence that ends a row (the cue before the label; kept in its tokens).
  candidates: K token sequences, each the cue followed by one label's tokens; with them, `scores`
  holds log p(label tokens | prompt, the row's text up to the cue, the cue) per prompt.
  prefix_len: tokens to share (default: the prompts' common prefix, rounded down to 16).
  """
  prompts = [list(map(int, p)) for p in prompts]
  if not prompts or min(map(len, prompts)) < 1:
    raise ValueError("refill.run needs at least one non-empty prompt")
  lcp = common_prefix(prompts) if prefix_len is None else int(prefix_len)
  p0 = max(0, min(lcp, min(map(len, prompts)) - 1))      # every row keeps >= 1 token of its own
  if prefix_len is None:
    p0 -= p0 % ROUND
  ls = _round_up(max(len(p) - p0 for p in prompts), CHUNK)
  n_pad = max(8, 1 << (len(prompts) - 1).bit_length())
  suffix = np.full((n_pad, ls), pad_id, np.int32)
  suffix_mask = np.zeros((n_pad, ls), np.int32)
  for i, p in enumerate(prompts):
    tail = p[p0:]
    suffix[i, ls - len(tail):], suffix_mask[i, ls - len(tail):] = tail, 1
  stop = np.asarray(list(stop_ids) or [NEVER], np.int32)
  k = len(candidates)
  a = max((len(c) for c in candidates), default=0)
  cand = np.full((k, a), pad_id, np.int32)
  cand_mask, label_mask = np.zeros((k, a), np.int32), np.zeros((k, a), np.float32)
  cue = len(stop_ids)
  for j, c in enumerate(candidates):
    if list(c[:cue]) != list(stop_ids) or len(c) <= cue:
      raise ValueError(f"candidate {j} {list(c)} must be the stop cue {list(stop_ids)} + >= 1 label token")
    cand[j, :len(c)], cand_mask[j, :len(c)], label_mask[j, cue:len(c)] = c, 1, 1.0
  if cue and not k:
    cand, cand_mask, label_mask = np.zeros((0, 1), np.int32), np.zeros((0, 1), np.int32), np.zeros((0, 1), np.float32)
  if p0 + ls + max_new_tokens + a > config.max_position:
    raise ValueError(f"prompt {p0 + ls} + {max_new_tokens} new + {a} scored tokens > max_position {config.max_position}")
  greedy = temperature <= 0.0
  eos = np.asarray([int(e) for e in eos_ids] or [-1], np.int32)
  out, lengths, finished, stopped, scores = _run(
      params, np.asarray(prompts[0][:p0], np.int32), suffix, suffix_mask, np.int32(len(prompts)),
      jax.random.PRNGKey(0) if rng is None else rng, np.float32(max(temperature, 1e-6)), eos, stop,
      cand, cand_mask, label_mask, config=config, slots=int(slots), max_new=int(max_new_tokens),
      greedy=greedy)
  n = len(prompts)
  out, lengths = np.asarray(out)[:n], np.asarray(lengths)[:n]
  out = np.where(np.arange(out.shape[1])[None] < lengths[:, None], out, pad_id).astype(np.int32)
  return Result(out, lengths, np.asarray(finished)[:n], np.asarray(stopped)[:n],
                np.asarray(scores)[:n] if k else None, p0)
