"""Batches of fixed token rows for the teacher stages (packed CPT rows, SFT rows, reward and DPO
pairs): a checkpointable grain iterator reshuffled every epoch from (seed, epoch), each host
taking its slice of the global batch; and right padding of token lists into such rows.
"""

from __future__ import annotations

from typing import Sequence

import grain
import jax
import numpy as np

from rd_jax import errors


class _RowBatch:
  """index -> this host's slice of global batch `index` (epoch-wise reshuffled rows)."""

  def __init__(self, rows: dict[str, np.ndarray], batch_size: int, seed: int,
               process_index: int, process_count: int, trim_to: Sequence[int] = (),
               prefixes: np.ndarray | None = None):
    self.rows, self.batch_size, self.seed = rows, batch_size, seed
    self.prefixes = prefixes
    self.n = len(next(iter(rows.values())))
    self.per_epoch = self.n // batch_size
    if self.per_epoch == 0:
      raise errors.DataError(f"{self.n} rows are fewer than one batch of {batch_size}")
    if batch_size % process_count:
      raise errors.ConfigError(f"batch {batch_size} is not divisible by {process_count} processes")
    local = batch_size // process_count
    self.local = slice(process_index * local, (process_index + 1) * local)
    self.trim_to = sorted(trim_to)

  def __call__(self, index: int, _slot=None) -> dict[str, np.ndarray]:
    epoch, slot = divmod(int(index), self.per_epoch)
    order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
    rows = order[slot * self.batch_size:(slot + 1) * self.batch_size]
    batch = {k: v[rows] for k, v in self.rows.items()}
    if self.trim_to:  # cut right padding to the smallest bucket the GLOBAL batch fits
      longest = int(batch["attention_mask"].sum(1).max())
      length = next((b for b in self.trim_to if b >= longest), batch["tokens"].shape[1])
      batch = {k: v[:, :length] if v.ndim == 2 else v for k, v in batch.items()}
    if self.prefixes is not None:  # one of the shared prefixes for the whole global batch
      pick = np.random.default_rng([self.seed, epoch, slot, 1]).integers(len(self.prefixes))
      batch["prefix"] = np.repeat(self.prefixes[pick][None], self.batch_size, axis=0)
    return {k: v[self.local] for k, v in batch.items()}


def row_batches(rows: dict[str, np.ndarray], *, batch_size: int, seed: int,
                length_buckets: Sequence[int] = (),
                prefixes: np.ndarray | None = None) -> grain.DatasetIterator:
  """Endless checkpointable iterator (get_state/set_state) of host-local batches of `rows`.

  prefixes: [O, P] token rows, or None. When given, every batch also holds "prefix" [b, P]: one
  of the O rows, drawn per global batch from (seed, epoch, slot) and repeated on every row (a
  batch-sized array so each host slices it as it slices the rows), the prompt prefix the rows
  follow (stages/sft.py, `sft.shared_prefix`).
  """
  fn = _RowBatch(rows, batch_size, seed, jax.process_index(), jax.process_count(), length_buckets,
                 prefixes)
  dataset = grain.MapDataset.range(fn.per_epoch).repeat().map_with_index(lambda i, _: fn(i))
  return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))


def right_pad(sequences: Sequence[Sequence[int]], masks: Sequence[Sequence[int]], length: int,
              pad_id: int) -> dict[str, np.ndarray]:
  """Token lists + per-token loss masks -> {"tokens", "attention_mask", "loss_mask"} [N, length].

  The loss mask is float32: 0/1, or per-token weights (sft.label_loss_weight).
  """
  n = len(sequences)
  tokens = np.full((n, length), pad_id, np.int32)
  attention = np.zeros((n, length), np.int32)
  loss = np.zeros((n, length), np.float32)
  for i, (seq, m) in enumerate(zip(sequences, masks)):
    seq, m = list(seq)[:length], list(m)[:length]
    tokens[i, :len(seq)], attention[i, :len(seq)], loss[i, :len(seq)] = seq, 1, m
  return {"tokens": tokens, "attention_mask": attention, "loss_mask": loss}
