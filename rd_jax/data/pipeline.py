"""Student batches: tokenised pairs -> length-bucketed numpy batches (grain, checkpointable).

Batch contract (WORKSPACE.md "Data contract"), B = host-local rows, Ls / La = padded lengths:
    std_input_ids, std_attention_mask, std_token_type_ids   [B, Ls] int32
    aug_input_ids, aug_attention_mask, aug_token_type_ids   [B, La] int32
    labels                                                   [B] int32 (-1 = unlabelled)
    item_key, reasoning_key                                  [B] int32 (tokenize.text_key)
    weights                                                  [B] float32 (0 = padding row)
    query_index                                              [B] int32 (tokenize.query_indices)
    pair_index                                               [B] int32 (row in the pairs given)
Ls (La) is the smallest of `student.length_buckets` (capped at `max_len_std` / `max_len_aug`) that
fits the longest std (aug) row of the GLOBAL batch, so every process pads alike.

Length bucketing (speed: XLA compiles once per shape, and real pairs are far shorter than the cap).
Epoch e with seed s (numpy Generator seeded with [s, e]): permute all rows; drop the last
N mod B rows of that permutation (different rows each epoch); cut the rest into windows of
`WINDOW_BATCHES` batches; sort each window by (aug length, std length); cut it into batches of B
rows; shuffle the order of all the epoch's batches. Deterministic given (seed, epoch).

Query groups (`train.query_group_size` = k > 0, for the within-query ranking term,
losses/pairwise_rank.py): epoch e permutes each query's rows and cuts them into runs of k (a
query's last run may be shorter), shuffles the runs, concatenates them, drops the last N mod B rows
and cuts the rest into batches of B in order: a batch holds ~B/k same-query runs. No length sort
(the runs would be broken up); deterministic given (seed, epoch).

Bucket choice (`student.bucket_compile_tokens` > 0): before training, `choose_buckets` looks at
the run's batches (the plan above, which does not depend on the buckets) and keeps the subset of
each view's buckets that minimises padded tokens + bucket_compile_tokens x number of distinct
(Ls, La) shapes, so a bucket that only a handful of batches would use is not compiled for them.

Grain: a `MapDataset` over batch slots, `.repeat()` over epochs, whose map builds batch
(epoch = i // batches_per_epoch, slot = i % batches_per_epoch) by random access. The iterator's
state is {"next_index": i}: JSON, tiny, and restoring it yields exactly the same next batches.
"""

from __future__ import annotations

import logging

import grain
import numpy as np

from rd_jax import errors
from rd_jax.data.schema import Pair
from rd_jax.data.tokenize import TokenizedPairs, tokenize_pairs

WINDOW_BATCHES = 50  # batches per length-sorted window: bigger = fewer shapes, less randomness
_READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)  # 2-core hosts


def effective_buckets(length_buckets, max_len: int) -> list[int]:
  """The padded lengths a view may take: buckets below `max_len`, then `max_len` itself."""
  return sorted({b for b in length_buckets if b < max_len} | {max_len})


def bucket_length(longest: int, buckets: list[int]) -> int:
  """The smallest bucket >= `longest` (buckets from `effective_buckets`, so one always fits)."""
  return buckets[int(np.searchsorted(buckets, longest))]


def make_batch(tokens: TokenizedPairs, rows: np.ndarray, *, std_len: int, aug_len: int,
               weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """The batch dict (module docstring) of `rows` [B] padded to [B, std_len] / [B, aug_len]."""
  batch = {}
  for view, ragged, length in (("std", tokens.std, std_len), ("aug", tokens.aug, aug_len)):
    ids, mask, types = ragged.pad(rows, length)
    batch.update({f"{view}_input_ids": ids, f"{view}_attention_mask": mask,
                  f"{view}_token_type_ids": types})
  batch["labels"] = tokens.labels[rows]
  batch["item_key"] = tokens.item_key[rows]
  batch["reasoning_key"] = tokens.reasoning_key[rows]
  if tokens.soft_labels is not None:   # crsd.label_source=teacher_soft: [B, C] targets
    batch["soft_labels"] = tokens.soft_labels[rows]
  batch["weights"] = np.ones(len(rows), np.float32) if weights is None else weights
  batch["query_index"] = tokens.query_index[rows]
  batch["pair_index"] = np.asarray(rows, np.int32)
  return batch


def epoch_plan(std_lengths: np.ndarray, aug_lengths: np.ndarray, batch_size: int, seed: int,
               epoch: int, window_batches: int = WINDOW_BATCHES) -> np.ndarray:
  """Row indices of every batch of `epoch`: [N // batch_size, batch_size] int64 (docstring rule)."""
  rng = np.random.default_rng([seed, epoch])
  num_batches = len(std_lengths) // batch_size
  order = rng.permutation(len(std_lengths))[:num_batches * batch_size]
  window = window_batches * batch_size
  for start in range(0, len(order), window):
    part = order[start:start + window]
    order[start:start + window] = part[np.lexsort((std_lengths[part], aug_lengths[part]))]
  batches = order.reshape(num_batches, batch_size)
  return batches[rng.permutation(num_batches)]


def grouped_epoch_plan(query_index: np.ndarray, batch_size: int, group_size: int, seed: int,
                       epoch: int) -> np.ndarray:
  """Row indices of every batch of `epoch` in query runs of `group_size` (docstring rule):
  [N // batch_size, batch_size] int64."""
  rng = np.random.default_rng([seed, epoch, group_size])
  runs = []
  for query in np.unique(query_index):
    rows = rng.permutation(np.flatnonzero(query_index == query))
    runs.extend(rows[start:start + group_size] for start in range(0, len(rows), group_size))
  order = np.concatenate([runs[i] for i in rng.permutation(len(runs))])
  num_batches = len(order) // batch_size
  return order[:num_batches * batch_size].reshape(num_batches, batch_size).astype(np.int64)


def _tokens_for(pairs, tokenizer, cfg) -> TokenizedPairs:
  if isinstance(pairs, TokenizedPairs):
    return pairs
  tokens = tokenize_pairs(pairs, tokenizer, max_len_std=cfg.student.max_len_std,
                          max_len_aug=cfg.student.max_len_aug,
                          match_hint=cfg.student.get("match_hint", ""))
  logging.info("tokenised %d pairs: %s", len(tokens), tokens.stats)
  return tokens


def _view_buckets(cfg) -> tuple[list[int], list[int]]:
  """(std, aug) padded lengths allowed by `student.length_buckets` and the views' max lengths."""
  std = effective_buckets(cfg.student.length_buckets, cfg.student.max_len_std)
  aug = effective_buckets(cfg.student.length_buckets, cfg.student.max_len_aug)
  return std, aug


def _subsets_ending_in_max(buckets: list[int]) -> list[list[int]]:
  """Every subset of `buckets` that keeps the last (the cap, so every row fits)."""
  head, cap = buckets[:-1], buckets[-1]
  return [[b for k, b in enumerate(head) if mask >> k & 1] + [cap] for mask in range(2 ** len(head))]


def choose_buckets(std_max: np.ndarray, aug_max: np.ndarray | None, std_buckets: list[int],
                   aug_buckets: list[int], *, batch_size: int, compile_tokens: float,
                   scale: float = 1.0) -> tuple[list[int], list[int], dict]:
  """The bucket subsets that minimise padded tokens + compile_tokens x distinct batch shapes.

  std_max / aug_max: [S] longest row of each of the run's first S global batches (aug_max None =
  the baseline: no reasoning view). One XLA compile of the step costs about as much wall time
  as training on `compile_tokens` padded tokens, so a bucket used by a few batches costs more
  than the padding it saves. `scale` = run steps / S (the token term grows with the run; the
  number of shapes does not). Exhaustive over subsets (<= 2^(n-1) per view; n is small).
  """
  best = None
  for std in _subsets_ending_in_max(std_buckets):
    ls = np.asarray(std)[np.searchsorted(std, std_max)]
    aug_options = _subsets_ending_in_max(aug_buckets) if aug_max is not None else [aug_buckets]
    for aug in aug_options:
      la = np.asarray(aug)[np.searchsorted(aug, aug_max)] if aug_max is not None else 0 * ls
      shapes = len(set(zip(ls.tolist(), la.tolist())))
      tokens = float(batch_size * (ls.sum() + la.sum())) * scale
      cost = tokens + compile_tokens * shapes
      if best is None or cost < best[0]:
        best = (cost, std, aug, {"shapes": shapes, "padded_tokens": tokens})
  return best[1], best[2], best[3]


class _BatchBuilder:
  """Builds host `process_index`'s slice of global batch (epoch, slot); picklable, deterministic."""

  SIMULATED_STEPS = 2000  # batches examined by choose_buckets (the shape mix is stationary)

  def __init__(self, tokens: TokenizedPairs, cfg, seed: int, batch_size: int, process_index: int,
               process_count: int, with_aug: bool = True):
    self.tokens, self.seed, self.batch_size = tokens, seed, batch_size
    self.group_size = int(cfg.train.get("query_group_size", 0))
    self.std_buckets, self.aug_buckets = _view_buckets(cfg)
    self.std_lengths, self.aug_lengths = tokens.std.lengths, tokens.aug.lengths
    per_host = batch_size // process_count
    self.host_rows = slice(process_index * per_host, (process_index + 1) * per_host)
    self.batches_per_epoch = len(tokens) // batch_size
    self._plans: dict[int, np.ndarray] = {}
    compile_tokens = float(cfg.student.get("bucket_compile_tokens", 0))
    self.bucket_choice = None
    if compile_tokens > 0:  # every host computes the same choice from the global lengths
      steps = int(cfg.train.num_steps)
      simulated = min(steps, self.SIMULATED_STEPS)
      rows = np.concatenate([self.plan(e) for e in
                             range(-(-simulated // self.batches_per_epoch))])[:simulated]
      self._plans = {}
      self.std_buckets, self.aug_buckets, self.bucket_choice = choose_buckets(
          self.std_lengths[rows].max(1), self.aug_lengths[rows].max(1) if with_aug else None,
          self.std_buckets, self.aug_buckets, batch_size=batch_size,
          compile_tokens=compile_tokens, scale=steps / simulated)
      self.bucket_choice.update(std=self.std_buckets, aug=self.aug_buckets if with_aug else None)
      logging.info("length buckets for %d steps: %s", steps, self.bucket_choice)

  def plan(self, epoch: int) -> np.ndarray:
    """epoch_plan of `epoch`, cached for it and the epoch before (swapped whole: thread-safe)."""
    plans = self._plans
    if epoch not in plans:
      if self.group_size > 0:
        plan = grouped_epoch_plan(self.tokens.query_index, self.batch_size, self.group_size,
                                  self.seed, epoch)
      else:
        plan = epoch_plan(self.std_lengths, self.aug_lengths, self.batch_size, self.seed, epoch)
      self._plans = {**{e: p for e, p in plans.items() if e == epoch - 1}, epoch: plan}
      return plan
    return plans[epoch]

  def __call__(self, index: int, slot: int) -> dict[str, np.ndarray]:
    rows = self.plan(index // self.batches_per_epoch)[slot]  # [batch_size]: the global batch
    std_len = bucket_length(int(self.std_lengths[rows].max()), self.std_buckets)
    aug_len = bucket_length(int(self.aug_lengths[rows].max()), self.aug_buckets)
    return make_batch(self.tokens, rows[self.host_rows], std_len=std_len, aug_len=aug_len)


def train_batches(pairs: list[Pair] | TokenizedPairs, tokenizer, cfg, *, seed: int, batch_size: int,
                  process_index: int = 0, process_count: int = 1,
                  with_aug: bool = True) -> grain.DatasetIterator:
  """An endless, checkpointable iterator of this host's training batches (module docstring).

  `batch_size` is the GLOBAL batch; host p gets rows [p*B/P, (p+1)*B/P) of each global batch, so
  the P hosts' slices concatenated are the single-process batch. `pairs` may be pre-tokenised
  (`tokenize.tokenize_pairs`, e.g. to put its stats in summary.json). Save/restore the position
  with `it.get_state()` (JSON-serialisable dict) / `it.set_state(state)`.
  """
  if batch_size % process_count:
    raise errors.ConfigError(f"global batch {batch_size} is not divisible by {process_count} processes")
  tokens = _tokens_for(pairs, tokenizer, cfg)
  if len(tokens) < batch_size:
    raise errors.DataError(f"{len(tokens)} training pairs are fewer than one batch of "
                           f"{batch_size}: lower train.batch_size or add pairs")
  if (tokens.labels < 0).any():
    raise errors.DataError(f"{int((tokens.labels < 0).sum())} training pairs have no label")
  builder = _BatchBuilder(tokens, cfg, seed, batch_size, process_index, process_count, with_aug)
  dataset = (grain.MapDataset.range(builder.batches_per_epoch).repeat()
             .map_with_index(builder))
  return iter(dataset.to_iter_dataset(_READ_OPTIONS))


def eval_batches(pairs: list[Pair] | TokenizedPairs, tokenizer, cfg,
                 batch_size: int) -> list[dict[str, np.ndarray]]:
  """All pairs in input order, `batch_size` rows per batch, each padded to its own buckets.

  The last batch is filled up to `batch_size` by repeating its last row with weights 0, so
  `sum(weights)` over all batches == len(pairs) and metrics must be weighted.
  """
  tokens = _tokens_for(pairs, tokenizer, cfg)
  std_buckets, aug_buckets = _view_buckets(cfg)
  batches = []
  for start in range(0, len(tokens), batch_size):
    real = np.arange(start, min(start + batch_size, len(tokens)))
    rows = np.concatenate([real, np.full(batch_size - len(real), real[-1])])
    weights = (np.arange(batch_size) < len(real)).astype(np.float32)
    batches.append(make_batch(
        tokens, rows, weights=weights,
        std_len=bucket_length(int(tokens.std.lengths[real].max()), std_buckets),
        aug_len=bucket_length(int(tokens.aug.lengths[real].max()), aug_buckets)))
  return batches
