"""Teacher generation for many prompts: a shared prefix prefilled once, slots refilled in batches
as rows end, and the label scored as K continuations from each row's cache.

Why (README "Performance"): at batch 16 the plain path (`generate.generate`) spends ~44% of its
time prefilling ~200 prompt tokens per row that every row shares, and decodes each batch to its
longest row (<= 96 tokens) while the average answer is ~35. Here:
  1. prefix: the longest common token prefix of all prompts (P0 tokens: the chat template, the
     instructions and label definitions of prompt v2) is prefilled ONCE; its keys/values are
     stored once ([layers, K, P0, hd]) and every slot attends to them (the decoder's shared-prefix
     cache entries), so a decode step reads them once, not B times;
  2. slots: a fixed decode batch of B slots; each holds one prompt at a time. A Python loop runs
     one jitted decode step for all B slots at a time (the cache donated: updated in place). When
     at least `refill_at` slots are free, their rows are scored (3.) and the free slots take the
     next prompts together: one [R, CHUNK] prefill per CHUNK of the batch's longest suffix (query
     + item), so R rows share each pass over the weights;
  3. scoring: with `candidates` (the token ids of the cue "\\nLabel:" + each label name), each
     ended row's cache is gathered once and the K candidates are fed as ONE packed row (`Packing`:
     the cue, then every label's tokens, each label seeing only the cue and itself), giving
     score_k = sum_j log p(label_k token j | prompt, reasoning, cue, label_k tokens < j).
     A row that stopped on the cue is rewound to the cue's start (the same tokens are rewritten);
     a row that ended otherwise gets the cue appended. No parsing decides the label.
  4. drafts (greedy, `draft_tokens` D > 0): each step feeds every slot's last token and up to D
     n-gram guesses (`rd_jax/drafts.py`) and keeps the guesses the argmax agrees with.

Why (issue #19, SmolLM2-135M fp32 on 2 CPU cores): a decode step streams all weights (B=1:
30 ms) plus every slot's cache (~1.8 ms a slot at 229 slots): B=16 86 ms, B=32 122 ms, B=64 211 ms
a step, so more slots are cheaper per token; a one-row 32-token refill chunk ran its matmuls at
M = 32 (~half the rate of M >= 128). The old single jitted `_run` (refills and scorings one row at
a time inside `lax.while_loop`s, the prefix copied into every slot) ran at 0.76x HF `generate` at
batch 16.

The tail: once no prompt is left and at most half the slots are active, the ended rows are scored
and the active ones move to a half-size batch (down to MIN_TAIL slots), as a slot's cache is
read every step whether its row is active or not.

Cache of one slot, S = Ls + max_new + A slots after the shared P0 (A = cue + longest label, Ls =
the longest suffix rounded up to CHUNK):
    (prefix, shared, P0) [ suffix (LEFT-padded, Lb <= Ls) | generated (max_new) | room (A) ]
Lb is the refill batch's longest suffix rounded up to CHUNK; prompts are taken longest suffix
first so a batch's rows pad little. Positions count valid slots only, so a slot computes exactly
what the plain path computes for its prompt alone (greedy: the same tokens; `tests/test_refill.py`).

Compiles: one decode step per batch size (B and its tail halvings), and per refill / scoring batch
size R (powers of two) one chunk and one scoring function; the prefix length, chunk index and slot
indices are traced values (the first call of a run compiles ~10 forwards of the model).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rd_jax import drafts
from rd_jax.models.decoder import Decoder, DecoderConfig, cast_matmul_params, init_cache

ROUND = 16          # P0 is rounded down to a multiple of this (fewer distinct compiles)
CHUNK = 32          # refills prefill their suffixes in [R, CHUNK] passes (Ls: a multiple)
NEVER = -2          # a token id no window ever holds (empty stop cue / window fill)
MIN_TAIL = 4        # the tail's decode batch is halved while it is >= 2 x this (one compile each)
TABLE_PROMPT = 32   # an ended row gives the guess table its text and its prompt's last 32 tokens


@dataclasses.dataclass
class Result:
  tokens: np.ndarray     # [N, max_new] int32, pad after a row's end (EOS / the cue included)
  lengths: np.ndarray    # [N] tokens generated, counting the EOS or the cue
  finished: np.ndarray   # [N] bool: ended by EOS or the stop cue (False = cut at max_new)
  stopped: np.ndarray    # [N] bool: ended by the stop cue
  scores: np.ndarray | None  # [N, K] fp32 log p(candidate k | ...), None without candidates
  prefix_len: int        # P0: tokens prefilled once and shared
  steps: int = 0         # decode calls (plain or speculative)
  accepted: int = 0      # draft guesses kept (tokens that cost no step of their own)
  seconds: dict = dataclasses.field(default_factory=dict)  # wall time per phase (host-measured)


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
  """Length of the longest token prefix every row shares."""
  first, n = rows[0], min(len(r) for r in rows)
  for r in rows[1:]:
    k = 0
    while k < n and r[k] == first[k]:
      k += 1
    n = k
  return n


def _forward(config, params, tokens, positions, mask, cache, index, prefix):
  """Hidden states and the row cache; `prefix` (or None) is attended by every row, read only."""
  if prefix is not None:
    cache = dict(cache, prefix_k=prefix["k"], prefix_v=prefix["v"])
  h, cache = Decoder(config).apply({"params": params}, tokens, positions, attention_mask=mask,
                                   cache=cache, cache_index=index, method=Decoder.hidden_states)
  return h, {"k": cache["k"], "v": cache["v"]}


def _valid(s, start, end):
  """[R, S] row-cache slots a row may attend: [start, end) (the shared prefix always)."""
  slot = jnp.arange(s)[None]
  return ((slot >= start[:, None]) & (slot < end[:, None])).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("config",))
def _prefix(params, prefix, *, config: DecoderConfig):
  """The P0 prefix tokens' keys and values {"k", "v"}: [layers, K, P0, hd], shared by all slots."""
  p0 = prefix.shape[0]
  cache = init_cache(config, 1, p0)
  _, cache = _forward(config, params, prefix[None], jnp.arange(p0)[None], None, cache, 0, None)
  return jax.tree.map(lambda x: x[:, 0], cache)


def _pick(config, params, h, key, temperature, greedy):
  """h [R, D] -> next token [R]: argmax, or a sample at `temperature`."""
  logits = Decoder(config).apply({"params": params}, h, method=Decoder.head)      # [R, V] fp32
  if greedy:
    return jnp.argmax(logits, -1).astype(jnp.int32)
  return jax.random.categorical(key, logits / temperature, -1).astype(jnp.int32)


# A row's slot (in its own cache, after the shared prefix) = its position - p0 + start: the suffix
# sits at [start, start + len) with positions [p0, p0 + len), generated tokens follow it. So
# (pos, start) locate every token of a row.

@functools.partial(jax.jit, static_argnames=("config", "greedy"), donate_argnums=(1,))
def _decode(params, cache, prefix, last, pos, start, key, temperature, p0, *,
            config: DecoderConfig, greedy: bool):
  """One step for all B slots: `last` [B] (not yet in the cache) at `pos` [B] -> next [B]."""
  w = pos + start - p0                                                       # [B] write slot
  mask = _valid(cache["k"].shape[3], start, w + 1)                           # [B, S]
  h, cache = _forward(config, params, last[:, None], pos[:, None], mask, cache, w, prefix)
  return _pick(config, params, h[:, 0], key, temperature, greedy), cache


@functools.partial(jax.jit, static_argnames=("config",), donate_argnums=(1,))
def _verify(params, cache, prefix, toks, pos, start, p0, *, config: DecoderConfig):
  """Greedy speculative step: `toks` [B, 1 + D] (each slot's last token and D guesses, none yet
  in the cache) at positions pos .. pos + D -> the argmax after each [B, 1 + D] (`drafts.accept`).
  Written slots beyond what a slot keeps are rewritten by its next step (and masked until then:
  a query attends only to slots <= its own)."""
  l = toks.shape[1]
  w = pos + start - p0                                                       # [B] first write slot
  mask = _valid(cache["k"].shape[3], start, w + l)                           # [B, S]
  h, cache = _forward(config, params, toks, pos[:, None] + jnp.arange(l)[None], mask, cache, w,
                      prefix)
  logits = Decoder(config).apply({"params": params}, h, method=Decoder.head)  # [B, 1+D, V] fp32
  return jnp.argmax(logits, -1).astype(jnp.int32), cache


@jax.jit
def _gather(cache, rows):
  return jax.tree.map(lambda x: x[:, rows], cache)                           # [layers, R, ...]


@functools.partial(jax.jit, donate_argnums=(0,))
def _scatter(cache, rows, sub):
  return jax.tree.map(lambda x, r: x.at[:, rows].set(r), cache, sub)


@functools.partial(jax.jit, static_argnames=("config",), donate_argnums=(1,))
def _chunk(params, sub, prefix, tokens, positions, start, gen0, index, *, config: DecoderConfig):
  """[R, CHUNK] suffix tokens written at slot `index` of R rows' caches -> last hidden [R, D]."""
  mask = _valid(sub["k"].shape[3], start, gen0)
  h, sub = _forward(config, params, tokens, positions, mask, sub, index, prefix)
  return h[:, -1], sub


@functools.partial(jax.jit, static_argnames=("config", "greedy"))
def _first(params, h, key, temperature, *, config: DecoderConfig, greedy: bool):
  return _pick(config, params, h, key, temperature, greedy)


@dataclasses.dataclass(frozen=True)
class Packing:
  """The K candidates (cue + label_k tokens) packed into one row of T tokens per ended slot.

  Row: the cue, then each label's tokens but its last ([cue | l1[:-1] | l2[:-1] | ...]): the
  hidden state after the cue predicts every label's first token, the one after l_k[j] predicts
  l_k[j+1]. Label k's tokens see the context, the cue and their own earlier tokens only (a
  per-query mask), at the positions they would have alone (cue end + j). T = C + sum(m_k - 1)
  rows of work instead of K x (C + max m_k), and the slot's cache is read once, not copied K times.
  """
  tokens: np.ndarray     # [T] int32
  offset: np.ndarray     # [T] position of each token after the cue's first (q)
  visible: np.ndarray    # [T, T] bool: token i attends to packed token i'
  source: np.ndarray     # [N] packed index whose hidden predicts target n
  target: np.ndarray     # [N] the label token predicted
  owner: np.ndarray      # [N, K] one-hot: candidate of target n

  @classmethod
  def build(cls, cue: Sequence[int], labels: Sequence[Sequence[int]]) -> "Packing":
    c_ = len(cue)
    tokens, offset, group = list(cue), list(range(c_)), [0] * c_
    source, target, owner = [], [], []
    for k, lab in enumerate(labels):
      first = len(tokens)
      for j, tok in enumerate(lab):
        source.append(c_ - 1 if j == 0 else first + j - 1)
        target.append(tok)
        owner.append(k)
      tokens += list(lab[:-1])
      offset += [c_ + j for j in range(len(lab) - 1)]
      group += [k + 1] * (len(lab) - 1)
    g = np.asarray(group)
    t = len(tokens)
    visible = (np.arange(t)[None] <= np.arange(t)[:, None]) & ((g[None] == 0) | (g[None] == g[:, None]))
    return cls(np.asarray(tokens, np.int32), np.asarray(offset, np.int32), visible,
               np.asarray(source, np.int32), np.asarray(target, np.int32),
               np.eye(len(labels), dtype=np.float32)[owner])


@functools.partial(jax.jit, static_argnames=("config",))
def _score(params, cache, prefix, rows, start, q, p0, tokens, offset, visible, source, target,
           owner, *, config: DecoderConfig):
  """Scores [R, K]: the packed candidates (`Packing`) fed from position q [R] (slot
  e = q + start - p0) on, each row's cache gathered once."""
  sub = jax.tree.map(lambda x: x[:, rows], cache)                            # [layers, R, ...]
  r_, t_ = rows.shape[0], tokens.shape[0]
  e = q + start - p0                                                         # [R] the cue's slot
  s_ = sub["k"].shape[3]
  slot = jnp.arange(s_)[None, None]                                          # [1, 1, S]
  context = (slot >= start[:, None, None]) & (slot < e[:, None, None])       # [R, 1, S]
  rel = slot - e[:, None, None]                                              # packed index
  packed = jnp.take_along_axis(jnp.broadcast_to(visible, (r_, t_, t_)),
                               jnp.broadcast_to(jnp.clip(rel, 0, t_ - 1), (r_, t_, s_)), 2)
  mask = context | ((rel >= 0) & (rel < t_) & packed)                        # [R, T, S]
  h, _ = _forward(config, params, jnp.broadcast_to(tokens, (r_, t_)), q[:, None] + offset[None],
                  mask.astype(jnp.int32), sub, e, prefix)
  logits = Decoder(config).apply({"params": params}, h[:, source], method=Decoder.head)  # [R, N, V]
  lp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), jnp.broadcast_to(
      target[None, :, None], (r_, target.shape[0], 1)), -1)[..., 0]          # [R, N] fp32
  return lp @ owner                                                          # [R, K]


def _pow2_groups(idx: np.ndarray) -> list[np.ndarray]:
  """Splits idx into groups of power-of-two sizes, largest first (few distinct compiles)."""
  out = []
  while len(idx):
    n = 1 << (len(idx).bit_length() - 1)
    out.append(idx[:n])
    idx = idx[n:]
  return out


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def run(config: DecoderConfig, params, prompts: Sequence[Sequence[int]], *, slots: int,
        max_new_tokens: int, eos_ids: Sequence[int], pad_id: int, temperature: float = 0.0,
        rng: jax.Array | None = None, stop_ids: Sequence[int] = (),
        candidates: Sequence[Sequence[int]] = (), prefix_len: int | None = None,
        refill_at: int | None = None, draft_tokens: int = 0, draft_ngram: int = 3) -> Result:
  """Generates for token-id `prompts` (no padding) with `slots` rows decoding at a time.

  stop_ids: a token sequence that ends a row (the cue before the label; kept in its tokens).
  candidates: K token sequences, each the cue followed by one label's tokens; with them, `scores`
  holds log p(label tokens | prompt, the row's text up to the cue, the cue) per prompt.
  prefix_len: tokens to share (default: the prompts' common prefix, rounded down to 16).
  refill_at: free slots that trigger a batched refill (default slots // 8, at least 1; fewer
  when fewer prompts remain, and always when no row is active).
  draft_tokens: D > 0 with greedy decoding: each step also feeds up to D n-gram guesses per slot
  (`rd_jax/drafts.py`, n-grams of up to `draft_ngram` tokens) and keeps those the model agrees
  with; the tokens are the same as with D = 0 (sampling ignores D).
  """
  params = cast_matmul_params(config, params)       # once per call, not per step
  prompts = [list(map(int, p)) for p in prompts]
  if not prompts or min(map(len, prompts)) < 1:
    raise ValueError("refill.run needs at least one non-empty prompt")
  lcp = common_prefix(prompts) if prefix_len is None else int(prefix_len)
  p0 = max(0, min(lcp, min(map(len, prompts)) - 1))      # every row keeps >= 1 token of its own
  if prefix_len is None:
    p0 -= p0 % ROUND
  # no more slots than prompts: an empty slot still costs its cache's attention every step
  n, b_, max_new = len(prompts), min(int(slots), len(prompts)), int(max_new_tokens)
  tails = [p[p0:] for p in prompts]
  ls = _round_up(max(map(len, tails)), CHUNK)
  stop = np.asarray(list(stop_ids) or [NEVER], np.int32)
  c_, k = len(stop), len(candidates)
  a = max((len(c) for c in candidates), default=0)
  cue = len(stop_ids)
  if k and not cue:
    raise ValueError("scoring candidates needs a non-empty stop cue (stop_ids)")
  for j, c in enumerate(candidates):
    if list(c[:cue]) != list(stop_ids) or len(c) <= cue:
      raise ValueError(f"candidate {j} {list(c)} must be the stop cue {list(stop_ids)} + >= 1 "
                       "label token")
  packing = Packing.build(stop_ids, [list(c[cue:]) for c in candidates]) if k else None
  a = max(a, len(packing.tokens)) if k else a       # slots the scoring pass writes
  greedy = temperature <= 0.0
  if int(draft_tokens) < 0 or int(draft_ngram) < 1:
    raise ValueError(f"draft_tokens {draft_tokens} must be >= 0 and draft_ngram {draft_ngram} >= 1")
  d_ = int(draft_tokens) if greedy else 0
  # row-cache slots (after the shared prefix): a step writes up to D slots past a row's last token
  s_ = ls + max_new + max(a, d_ + 1)
  if p0 + s_ > config.max_position:
    raise ValueError(f"prompt {p0 + ls} + {max_new} new + {a} scored tokens > max_position "
                     f"{config.max_position}")
  temp, jp0 = np.float32(max(temperature, 1e-6)), np.int32(p0)
  eos = set(int(e) for e in eos_ids)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  refill_at = max(1, b_ // 8) if refill_at is None else int(refill_at)

  def key():
    nonlocal rng
    if greedy:
      return rng
    rng, sub = jax.random.split(rng)
    return sub

  # Host state: per slot, and per prompt (the outputs).
  out = np.full((n, max_new), pad_id, np.int32)
  lengths, finished, stopped = np.zeros(n, np.int32), np.zeros(n, bool), np.zeros(n, bool)
  scores = np.zeros((n, max(k, 1)), np.float32)
  prompt = np.full(b_, -1)                          # prompt held by the slot (-1: none)
  t = np.zeros(b_, np.int32)                        # tokens generated for it
  last = np.zeros(b_, np.int32)                     # last picked token (not yet in the cache)
  pos = np.full(b_, p0, np.int32)                   # its position (an empty slot writes at P0)
  start = np.zeros(b_, np.int32)                    # first suffix slot (see _decode)
  active = np.zeros(b_, bool)
  window = np.full((b_, c_), NEVER, np.int32)       # last C tokens, for the stop cue
  queue = sorted(range(n), key=lambda i: -len(tails[i]))   # longest suffix first: less padding
  ctx: list = [None] * b_                           # per slot: drafts.Context (with D > 0)
  table = drafts.Table(int(draft_ngram), d_)        # continuations seen in rows that ended
  steps = accepted = 0
  seconds = dict.fromkeys(("prefix", "refill", "decode", "score", "tail"), 0.0)

  def take(b, tok):
    """Records token `tok` as slot b's next; ends the row on EOS, the cue or max_new."""
    i = prompt[b]
    out[i, t[b]] = tok
    t[b] += 1
    window[b] = np.append(window[b, 1:], tok)
    eos_hit, stop_hit = tok in eos, bool((window[b] == stop).all())
    lengths[i], finished[i], stopped[i] = t[b], eos_hit or stop_hit, stop_hit
    last[b] = tok
    active[b] = not (eos_hit or stop_hit or t[b] >= max_new)
    if d_:
      ctx[b].append(tok)
      if not active[b]:
        table.add(tails[i][-TABLE_PROMPT:] + out[i, :t[b]].tolist())

  def score(held):
    if k == 0:
      return
    t0 = time.perf_counter()
    for g in _pow2_groups(held):
      back = (c_ - 1) * stopped[prompt[g]]          # a cue-stopped row is rewound to the cue
      s = _score(params, cache, prefix, g.astype(np.int32), start[g], pos[g] - back, jp0,
                 packing.tokens, packing.offset, packing.visible, packing.source, packing.target,
                 packing.owner, config=config)
      scores[prompt[g]] = np.asarray(s)
    seconds["score"] += time.perf_counter() - t0

  def refill(free):
    nonlocal cache
    t0 = time.perf_counter()
    ids = [queue.pop(0) for _ in free]
    # rows grouped by their count of CHUNKs (a group pays for its longest row), each group split
    # into power-of-two batches: no [R, CHUNK] pass runs on rows that are all padding there
    chunks = [-(-len(tails[i]) // CHUNK) for i in ids]
    batches = []
    for c in sorted(set(chunks), reverse=True):
      mine = [i for i, ci in zip(ids, chunks) if ci == c]
      batches += [[mine.pop(0) for _ in g] for g in _pow2_groups(np.arange(len(mine)))]
    for ids in batches:
      g, free = free[:len(ids)], free[len(ids):]
      lens = np.asarray([len(tails[i]) for i in ids], np.int32)
      lb = _round_up(int(lens.max()), CHUNK)
      toks = np.full((len(g), lb), pad_id, np.int32)
      for r, i in enumerate(ids):
        toks[r, lb - lens[r]:] = tails[i]
      st = lb - lens                                                      # [R] first suffix slot
      positions = p0 + np.maximum(np.arange(lb)[None] - (lb - lens)[:, None], 0)
      sub = _gather(cache, g.astype(np.int32))
      for j in range(0, lb, CHUNK):
        h, sub = _chunk(params, sub, prefix, toks[:, j:j + CHUNK], positions[:, j:j + CHUNK], st,
                        np.full(len(g), lb, np.int32), np.int32(j), config=config)
      cache = _scatter(cache, g.astype(np.int32), sub)
      first = np.asarray(_first(params, h, key(), temp, config=config, greedy=greedy))
      for r, b in enumerate(g):
        prompt[b], t[b], start[b], pos[b] = ids[r], 0, st[r], p0 + lens[r]
        window[b] = NEVER
        if d_:
          ctx[b] = drafts.Context(prompts[ids[r]], int(draft_ngram))
        take(b, int(first[r]))
    seconds["refill"] += time.perf_counter() - t0

  t0 = time.perf_counter()
  prefix = _prefix(params, np.asarray(prompts[0][:p0], np.int32), config=config) if p0 else None
  jax.block_until_ready(prefix)
  seconds["prefix"] = time.perf_counter() - t0
  cache = init_cache(config, b_, s_)                # [layers, B, K, S, hd] each, after the prefix
  while True:
    if not active.any() or (queue and (~active).sum() >= min(refill_at, len(queue))):
      held = np.flatnonzero(~active & (prompt >= 0))
      score(held)
      prompt[held] = -1
      if not queue and not active.any():
        break
      refill(np.flatnonzero(~active)[:len(queue)])
      continue
    if not queue and b_ >= 2 * MIN_TAIL and active.sum() <= b_ // 2:
      # the tail: no prompt left and half the slots idle, yet every slot's cache is read each
      # step. Score the ended rows and keep the active ones in a half-size batch (one copy).
      held = np.flatnonzero(~active & (prompt >= 0))
      score(held)
      prompt[held] = -1
      b_ //= 2
      t0 = time.perf_counter()
      keep = np.concatenate([np.flatnonzero(active), np.flatnonzero(~active)])[:b_]
      cache = jax.block_until_ready(_gather(cache, keep.astype(np.int32)))
      seconds["tail"] += time.perf_counter() - t0
      prompt, t, last, pos = prompt[keep], t[keep], last[keep], pos[keep]
      start, active, window = start[keep], active[keep], window[keep]
      ctx = [ctx[j] for j in keep]
    t0 = time.perf_counter()
    guesses = {b: ctx[b].draft(d_, table) for b in np.flatnonzero(active)} if d_ else {}
    if any(guesses.values()):
      toks = np.repeat(last[:, None], 1 + d_, 1)    # a slot without guesses feeds filler
      for b, g in guesses.items():
        toks[b, 1:1 + len(g)] = g
      pred, cache = _verify(params, cache, prefix, toks, pos, start, jp0, config=config)
      pred, steps = np.asarray(pred), steps + 1
      for b, g in guesses.items():
        emit = drafts.accept(g, pred[b])
        accepted += len(emit) - 1
        for tok in emit:
          pos[b] += 1                               # the token before `tok` is now in the cache
          take(b, tok)
          if not active[b]:
            break
      seconds["decode"] += time.perf_counter() - t0
      continue
    nxt, cache = _decode(params, cache, prefix, last, pos, start, key(), temp, jp0, config=config,
                         greedy=greedy)
    nxt, steps = np.asarray(nxt), steps + 1
    pos += active                                   # `last` of an active row is now in the cache
    for b in np.flatnonzero(active):
      take(b, int(nxt[b]))
    seconds["decode"] += time.perf_counter() - t0
  return Result(out, lengths, finished, stopped, scores if k else None, p0, steps, accepted,
                seconds)
