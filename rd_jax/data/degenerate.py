"""Degenerate data, flagged: splits that train or evaluate but whose numbers would mean little.

    flags = degenerate.check({"train": train, "valid": valid}, cfg, stage="crsd")

Each flag is {"split", "kind", "message"}, logged as a warning and written to the stage's
data_report.json / summary.json (`data.degenerate`). Kinds:
- `one_class`: every labelled pair of the split has the same label (macro-F1 there is 1.0 for a
  constant predictor of that label, or 0: it measures nothing).
- `duplicates`: more than DUPLICATE_SHARE of the split's pairs repeat another (query, item) pair.
- `infonce_masked` (crsd): fewer than 2 distinct items or reasonings in train, so every in-batch
  InfoNCE negative is masked (crsd.mask_duplicates) and the term is 0 at every step.
- `too_small`: the train split is smaller than one batch (train.batch_size): training stops.
"""

from __future__ import annotations

import collections
import logging

DUPLICATE_SHARE = 0.5


def check(splits: dict, cfg, *, stage: str = "") -> list[dict]:
  flags = []

  def flag(split, kind, message):
    flags.append({"split": split, "kind": kind, "message": message})
    logging.warning("degenerate data (%s split): %s", split, message)

  for name, pairs in splits.items():
    if not pairs:
      continue
    labels = collections.Counter(p.label_id for p in pairs if p.label_id is not None)
    if len(labels) == 1:
      only = next(iter(labels))
      flag(name, "one_class", f"all {len(pairs)} pairs have label {cfg.labels[only]!r}: "
           "classification metrics on it measure nothing (a constant predictor scores macro-F1 "
           "1.0 on it); use a file with more than one label in each split")
    keys = collections.Counter((p.query, p.item_text) for p in pairs)
    repeated = sum(n - 1 for n in keys.values())
    if repeated > DUPLICATE_SHARE * len(pairs):
      flag(name, "duplicates", f"{repeated} of {len(pairs)} pairs repeat another (query, item) "
           f"pair ({len(keys)} distinct): de-duplicate the file")
  train = splits.get("train") or []
  if train and stage == "crsd" and cfg.crsd.lambda_infonce > 0 and cfg.crsd.mask_duplicates:
    items = len({p.item_text for p in train})
    reasons = len({p.reasoning for p in train if p.reasoning})
    if items < 2 or (reasons and reasons < 2):
      flag("train", "infonce_masked", f"{items} distinct items and {reasons} distinct reasonings "
           "in train: every in-batch InfoNCE negative is masked (crsd.mask_duplicates), so the "
           "InfoNCE term is 0 at every step")
  batch = cfg.train.batch_size
  if train and len(train) < batch:
    flag("train", "too_small", f"{len(train)} train pairs are fewer than one batch of "
         f"train.batch_size={batch}: lower it (e.g. --config.train.batch_size={_pow2(len(train))})"
         " or add pairs")
  return flags


def _pow2(n: int) -> int:
  """The largest power of two <= n (>= 2)."""
  p = 2
  while p * 2 <= n:
    p *= 2
  return p


def stop_if_untrainable(flags: list[dict], path: str) -> None:
  """A `too_small` train split stops the stage before any model is built, naming the fix."""
  from rd_jax import errors
  for f in flags:
    if f["kind"] == "too_small":
      raise errors.DataError(f"{path}: {f['message']}")
