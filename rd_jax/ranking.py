"""Ranking metrics search teams read: per-query nDCG@k with graded gains, and the expected gain.

Gains (ESCI, the Amazon KDD Cup 2022 grading): Exact 1.0, Substitute 0.1, Complement 0.01,
Irrelevant 0.0. Another label set gets `eval.gains` from the config, or gains linear in the label
order (the first label 1.0 ... the last 0.0) when none are given.

nDCG@k of one query, its items ranked by a score s (the model's expected gain
E[g] = sum_c p_c g_c):
  DCG@k  = sum_{r < k} g_(r) / log2(r + 2)      g_(r): the gold gain of the item at rank r (0-based)
  nDCG@k = DCG@k / IDCG@k                       IDCG: the same with the items sorted by gold gain
Ties in s are broken uniformly at random *in expectation*: the items of a tied block that spans
ranks [a, b) each get the mean discount of those ranks (within the top k), so a constant scorer
(the majority reference) scores the expected nDCG of a random ranking, whatever the input order.
A query whose items all have gain 0 (IDCG = 0) has no ranking to judge: it is skipped, as in the
usual ESCI practice, and counted in `queries_skipped`. The result is the mean over the others.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rd_jax import errors

ESCI_GAINS = {"Exact": 1.0, "Substitute": 0.1, "Complement": 0.01, "Irrelevant": 0.0}


def label_gains(labels: Sequence[str], given=None) -> np.ndarray:
  """Gain per class id [C]: `given` (a {label: gain} mapping or a list in label order), else the
  ESCI gains when the labels are the ESCI ones, the grades themselves for non-negative numeric
  labels ("1".."4"), else linear from 1.0 (first) to 0.0 (last)."""
  labels = list(labels)
  if given:
    if isinstance(given, (list, tuple)):
      if len(given) != len(labels):
        raise errors.ConfigError(f"eval.gains has {len(given)} values for {len(labels)} labels {labels}")
      return np.asarray(given, np.float64)
    missing = [l for l in labels if l not in given]
    if missing:
      raise errors.ConfigError(f"eval.gains lacks a gain for {missing} (labels {labels})")
    return np.asarray([float(given[l]) for l in labels], np.float64)
  if set(labels) == set(ESCI_GAINS):
    return np.asarray([ESCI_GAINS[l] for l in labels], np.float64)
  try:   # graded labels ("1".."4"): the grade itself, so the expected gain is the expected grade
    grades = np.asarray([float(l) for l in labels], np.float64)
    if (grades >= 0).all():
      return grades
  except ValueError:
    pass
  return np.linspace(1.0, 0.0, len(labels)) if len(labels) > 1 else np.ones(1)


def expected_gain(probs: np.ndarray, gains: np.ndarray) -> np.ndarray:
  """E[gain] per pair [N] from class probabilities [N, C]: the score to rank a query's items by."""
  return np.asarray(probs, np.float64) @ np.asarray(gains, np.float64)


def softmax(logits: np.ndarray) -> np.ndarray:
  z = np.asarray(logits, np.float64)
  z = np.exp(z - z.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def _dcg(scores: np.ndarray, gains: np.ndarray, k: int) -> float:
  """DCG@k of items ranked by `scores` (descending), ties averaged over their ranks' discounts."""
  order = np.argsort(-scores, kind="stable")
  s, g = scores[order], gains[order]
  discount = np.where(np.arange(len(s)) < k, 1.0 / np.log2(np.arange(len(s)) + 2), 0.0)
  total, start = 0.0, 0
  while start < len(s):
    end = start + 1
    while end < len(s) and s[end] == s[start]:
      end += 1
    total += g[start:end].sum() * discount[start:end].mean()   # each tied item: the mean discount
    start = end
  return float(total)


def ndcg_per_query(query_keys: Sequence, scores, gold_gains, k: int = 10) -> tuple[dict, int]:
  """({query key: nDCG@k} over the judged queries, number skipped: all their gains 0).
  query_keys [N] (e.g. query_id), scores [N] (higher = ranked first), gold_gains [N]."""
  scores, gold_gains = np.asarray(scores, np.float64), np.asarray(gold_gains, np.float64)
  groups: dict = {}
  for i, key in enumerate(query_keys):
    groups.setdefault(key, []).append(i)
  values, skipped = {}, 0
  for key, rows in groups.items():
    idx = np.asarray(rows)
    ideal = _dcg(gold_gains[idx], gold_gains[idx], k)
    if ideal <= 0:
      skipped += 1
      continue
    values[key] = _dcg(scores[idx], gold_gains[idx], k) / ideal
  return values, skipped


def ndcg_at_k(query_keys: Sequence, scores, gold_gains, k: int = 10) -> dict:
  """Mean per-query nDCG@k (ndcg_per_query's arguments).
  Returns {"ndcg": mean, "queries": judged, "queries_skipped": all-zero-gain}."""
  values, skipped = ndcg_per_query(query_keys, scores, gold_gains, k)
  return {"ndcg": float(np.mean(list(values.values()))) if values else 0.0,
          "queries": len(values), "queries_skipped": skipped}


def query_keys(pairs) -> list:
  """Each Pair's query key: its query_id, else the query text."""
  return [p.query_id or p.query for p in pairs]


def pair_ndcg(pairs, probs: np.ndarray, gains: np.ndarray, k: int = 10) -> dict:
  """ndcg_at_k of labelled Pairs (query key: query_keys) ranked by E[gain]."""
  gold = gains[np.asarray([p.label_id for p in pairs])]
  return ndcg_at_k(query_keys(pairs), expected_gain(probs, gains), gold, k)


def pair_ndcg_per_query(pairs, probs: np.ndarray, gains: np.ndarray, k: int = 10) -> dict:
  """{query key: nDCG@k} of labelled Pairs ranked by E[gain] (judged queries only)."""
  gold = gains[np.asarray([p.label_id for p in pairs])]
  return ndcg_per_query(query_keys(pairs), expected_gain(probs, gains), gold, k)[0]
