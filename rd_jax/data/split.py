"""Splits of a user's file: folds as given, or a deterministic query-disjoint split when it has none.

A file whose rows carry `data.fold_key` (`query_fold`) is split by `data.{train,valid,test}_folds`
as before. A file where NO row carries one gets `data.split` = (train, valid, test) shares of its
pairs (default 0.8, 0.1, 0.1), query-disjoint and deterministic:

    queries (query_id or query) in md5 order; each query goes, whole, to the split whose share of
    the pairs is not yet filled (train, then valid, then test); a split with a positive share that
    comes out empty takes one query from the largest split.

Each pair's `fold` is then set to the first fold of its split (`train_folds[0]`, ...), so every
stage that selects pairs by fold (readers.train_valid_test, sft's chains) sees the same split.
Rows in folds that no split uses are counted and reported (never silently dropped).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging

SPLITS = ("train", "valid", "test")


def _has_own_fold(pair, fold_key: str) -> bool:
  raw = pair.raw if isinstance(pair.raw, dict) or hasattr(pair.raw, "get") else {}
  value = raw.get(fold_key)
  return not (value is None or value == "" or (isinstance(value, float) and value != value))


def _query_key(pair) -> str:
  return pair.query_id or pair.query


def assign(pairs: list, cfg) -> tuple[list, dict]:
  """(pairs with folds set when the file has none, the split record for the report)."""
  d = cfg.data
  folds = {name: [int(f) for f in d.get(f"{name}_folds")] for name in SPLITS}
  if not pairs or any(_has_own_fold(p, d.fold_key) for p in pairs):
    return pairs, _fold_record(pairs, folds, d.fold_key, auto=False)
  shares = [float(x) for x in d.get("split", (0.8, 0.1, 0.1))]
  missing = [name for name in SPLITS if shares[SPLITS.index(name)] > 0 and not folds[name]]
  if missing:
    from rd_jax import errors
    raise errors.ConfigError(f"data.split gives {missing[0]} a share but data.{missing[0]}_folds "
                             "is empty; give it a fold (e.g. --config.data.valid_folds=(2,))")
  by_query = collections.OrderedDict()
  for p in pairs:
    by_query.setdefault(_query_key(p), []).append(p)
  order = sorted(by_query, key=lambda q: hashlib.md5(q.encode("utf-8")).hexdigest())
  total = float(sum(shares))
  bounds = [shares[0] / total * len(pairs), (shares[0] + shares[1]) / total * len(pairs)]
  chosen: dict[str, list[str]] = {name: [] for name in SPLITS}
  filled = 0
  for q in order:
    name = "train" if filled < bounds[0] else "valid" if filled < bounds[1] else "test"
    chosen[name].append(q)
    filled += len(by_query[q])
  for i, name in enumerate(SPLITS):  # a split with a share that came out empty takes a query
    if shares[i] > 0 and not chosen[name]:
      donor = max(SPLITS, key=lambda n: len(chosen[n]))
      if len(chosen[donor]) > 1:
        chosen[name].append(chosen[donor].pop())
  fold_of = {q: folds[name][0] for name in SPLITS for q in chosen[name]}
  out = [dataclasses.replace(p, fold=fold_of[_query_key(p)]) for p in pairs]
  record = _fold_record(out, folds, d.fold_key, auto=True)
  record["shares"] = shares
  record["queries"] = {name: len(chosen[name]) for name in SPLITS}
  logging.info("no %s column in the file: query-disjoint split by data.split=%s -> %s pairs "
               "(%s queries)", d.fold_key, tuple(shares), record["pairs"], record["queries"])
  return out, record


def _fold_record(pairs, folds: dict, fold_key: str, *, auto: bool) -> dict:
  counts = collections.Counter(p.fold for p in pairs)
  used = {f for name in SPLITS for f in folds[name]}
  unused = {int(f): n for f, n in sorted(counts.items()) if f not in used}
  record = {"how": f"data.split (the file has no {fold_key})" if auto else
                   f"{fold_key} -> data.train/valid/test_folds",
            "pairs": {name: sum(counts[f] for f in folds[name]) for name in SPLITS},
            "unused_folds": unused, "unused_pairs": sum(unused.values()),
            "present_folds": sorted(int(f) for f in counts)}
  if unused:
    logging.warning("%d pairs are in folds %s that no split uses (data.train_folds=%s, "
                    "valid_folds=%s, test_folds=%s): they are left out of every split; add the "
                    "folds to a split to use them", record["unused_pairs"], sorted(unused),
                    tuple(folds["train"]), tuple(folds["valid"]), tuple(folds["test"]))
  return record


def check_trainable(record: dict, cfg, path: str, names=("train", "valid")) -> None:
  """Stops, naming the fix, when one of the `names` splits is empty."""
  from rd_jax import errors
  pairs = record["pairs"]
  for name in names:
    if pairs[name]:
      continue
    if record["how"].startswith("data.split"):
      fix = (f"the file has too few queries for data.split={tuple(record.get('shares', ()))}; "
             "add queries or raise that split's share")
    else:
      fix = (f"give data.{name}_folds folds that hold rows (the file's folds: "
             f"{_present(record)}), or drop the {cfg.data.fold_key} column to get a "
             "query-disjoint split by data.split")
    raise errors.DataError(f"{path}: the {name} split is empty (data.{name}_folds="
                           f"{tuple(cfg.data.get(f'{name}_folds'))}); {fix}")


def _present(record: dict) -> str:
  folds = sorted(set(record.get("present_folds", [])) | set(record["unused_folds"]))
  return ", ".join(map(str, folds)) or "none"
