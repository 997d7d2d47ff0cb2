"""The students' training batches: length-bucketed, checkpointable (data/pipeline.py), each host
reading its slice of the global batch; the baseline's without the augmented view."""

from __future__ import annotations

import jax

from rd_jax.data import pipeline


class _WithoutAugView:
  """The baseline's batches: the aug_* arrays removed, so its jitted step neither copies them nor
  recompiles for each new augmented length. Delegates the checkpointable iterator state."""

  def __init__(self, iterator):
    self._it = iterator

  def __iter__(self):
    return self

  def __next__(self):
    return {k: v for k, v in next(self._it).items() if not k.startswith("aug_")}

  def get_state(self):
    return self._it.get_state()

  def set_state(self, state):
    self._it.set_state(state)


def train_batches(pairs, tokenizer, cfg, *, use_reasoning: bool = True):
  it = pipeline.train_batches(pairs, tokenizer, cfg, seed=cfg.seed,
                              batch_size=cfg.train.batch_size,
                              process_index=jax.process_index(),
                              process_count=jax.process_count(), with_aug=use_reasoning)
  return it if use_reasoning else _WithoutAugView(it)
