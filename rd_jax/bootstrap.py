"""Paired query bootstrap: how sure "model A beats model B on this split" is, with few queries.

A relevance split's independent units are its queries, not its pairs (the pairs of one query share
its text, its label mix and its difficulty), and the bundled folds hold ~25 queries each. So the
interval resamples queries (the paired bootstrap over topics of IR evaluation: Sakai 2006, Smucker
et al. 2007): R times, draw Q of the split's Q queries with replacement, and score both models on
the SAME resampled pairs; the spread of A - B over the R resamples is the uncertainty of the
comparison that comes from which queries the split happened to hold. It says nothing about seed
variance (train another seed for that).

Vectorised: with w [R, Q] the multiplicity of each query in each resample (one multinomial draw
per resample), a resample's confusion matrix is sum_q w_rq * confusion_q, with confusion_q
[Q, C, C] each query's counts, so macro-F1 needs no row gathering; nDCG@10 is a mean of per-query
values over the judged queries, so a resample's is sum_q w_rq ndcg_q / sum_q w_rq over those.
Macro-F1 follows metrics.classification_metrics: classes neither in gold nor predicted are left out.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _query_index(query_keys: Sequence) -> tuple[np.ndarray, int]:
  """Each row's query as 0 .. Q-1 (first-seen order), and Q."""
  ids: dict = {}
  index = np.asarray([ids.setdefault(k, len(ids)) for k in query_keys], int)
  return index, len(ids)


def per_query_confusion(query_index: np.ndarray, num_queries: int, gold, pred,
                        num_classes: int) -> np.ndarray:
  """[Q, C, C] counts of (true, predicted) per query."""
  out = np.zeros((num_queries, num_classes, num_classes), np.int64)
  np.add.at(out, (query_index, np.asarray(gold, int), np.asarray(pred, int)), 1)
  return out


def macro_f1_from_confusion(confusion: np.ndarray) -> np.ndarray:
  """confusion [..., C, C] (true, predicted) -> macro-F1 [...] over the present classes."""
  confusion = np.asarray(confusion, np.float64)
  tp = np.diagonal(confusion, axis1=-2, axis2=-1)
  support, predicted = confusion.sum(-1), confusion.sum(-2)
  f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp),
                 where=(support + predicted) > 0)            # = 2PR / (P + R)
  present = (support > 0) | (predicted > 0)
  count = present.sum(-1)
  return np.where(count > 0, (f1 * present).sum(-1) / np.maximum(count, 1), 0.0)


def resample_weights(num_queries: int, resamples: int, seed: int) -> np.ndarray:
  """[R, Q] multiplicities: each row one draw of Q queries with replacement."""
  return np.concatenate(list(_weight_chunks(num_queries, resamples, seed, resamples)))


# entries of [r, Q] held at once: a user's log split may hold 1e5 queries, and [2000, 1e5] int64
# weights would be 1.6 GB; chunks of <= 2^22 entries (32 MB) draw the same stream (tested)
_CHUNK_ENTRIES = 1 << 22


def _weight_chunks(num_queries: int, resamples: int, seed: int, rows: int | None = None):
  """resample_weights' rows, `rows` at a time (default: <= _CHUNK_ENTRIES entries per chunk)."""
  rng = np.random.default_rng(seed)
  p = np.full(num_queries, 1.0 / num_queries)
  rows = rows or max(1, _CHUNK_ENTRIES // max(num_queries, 1))
  for start in range(0, resamples, rows):
    yield rng.multinomial(num_queries, p, size=min(rows, resamples - start))


def _summary(point: float, resampled: np.ndarray) -> dict:
  lo, hi = np.percentile(resampled, [2.5, 97.5])
  return {"delta": float(point), "ci95": [float(lo), float(hi)],
          "share_a_better": float(np.mean(resampled > 0)),
          "share_b_better": float(np.mean(resampled < 0))}


def paired_query_bootstrap(query_keys: Sequence, gold, pred_a, pred_b, num_classes: int, *,
                           ndcg_a: dict | None = None, ndcg_b: dict | None = None,
                           resamples: int = 2000, seed: int = 0) -> dict:
  """A - B on one split, with a 95% percentile interval over query resamples.

  query_keys [N] (query_id per pair), gold / pred_b [N] class ids; pred_a [N], or [S, N] for S
  seeds of one recipe: A's figure is then the mean of its seeds' macro-F1 on each resample (and
  on the split), so the interval is that of the seed-mean row. ndcg_a / ndcg_b:
  {query key: nDCG@10} (ranking.ndcg_per_query) for the same split, optional. Returns
  {"queries", "resamples", "seed", "macro_f1": {"delta", "ci95", "share_a_better",
  "share_b_better"}, and "ndcg@10" likewise when both per-query dicts are given}.
  """
  if resamples < 1:
    raise ValueError(f"resamples must be >= 1, got {resamples}")
  if not len(gold):
    raise ValueError("no pairs to bootstrap")
  index, q = _query_index(query_keys)
  out = {"queries": q, "resamples": int(resamples), "seed": int(seed)}
  confusions = {name: [per_query_confusion(index, q, gold, pred, num_classes)   # [Q, C, C] each
                       for pred in np.atleast_2d(preds)]                        # per seed
                for name, preds in (("a", pred_a), ("b", pred_b))}
  keys = list(dict.fromkeys(query_keys))
  with_ndcg = ndcg_a is not None and ndcg_b is not None
  judged = (np.asarray([k in ndcg_a and k in ndcg_b for k in keys]) if with_ndcg
            else np.zeros(q, bool))                                             # [Q]
  diff = np.asarray([ndcg_a[k] - ndcg_b[k] if ok else 0.0 for k, ok in zip(keys, judged)])
  f1_delta, ndcg_delta = [], []
  for weights in _weight_chunks(q, resamples, seed):                            # [r, Q]
    f1 = {name: np.mean([macro_f1_from_confusion(np.einsum("rq,qij->rij", weights, conf))
                         for conf in confs], axis=0)                             # [r], seed mean
          for name, confs in confusions.items()}
    f1_delta.append(f1["a"] - f1["b"])
    w = weights * judged
    ndcg_delta.append(np.divide(w @ diff, w.sum(1), out=np.zeros(len(w)), where=w.sum(1) > 0))
  point = {name: np.mean([macro_f1_from_confusion(conf.sum(0)) for conf in confs])
           for name, confs in confusions.items()}
  out["seeds_a"] = len(confusions["a"])
  out["macro_f1"] = _summary(point["a"] - point["b"], np.concatenate(f1_delta))
  if judged.any():
    out["ndcg@10"] = _summary(diff[judged].mean(), np.concatenate(ndcg_delta))
  return out


def describe(result: dict, metric: str = "macro_f1", a: str = "student", b: str = "reference") -> str:
  """One line: 'student - reference, macro_f1: +0.0374 (95% query-bootstrap interval -0.0805 ..
  +0.1189 over 26 queries; ahead in 64%, behind in 36% of 2000 resamples)'."""
  m = result[metric]
  lo, hi = m["ci95"]
  return (f"{a} - {b}, {metric}: {m['delta']:+.4f} (95% query-bootstrap interval {lo:+.4f} .. "
          f"{hi:+.4f} over {result['queries']} queries; ahead in {100 * m['share_a_better']:.0f}%, "
          f"behind in {100 * m['share_b_better']:.0f}% of {result['resamples']} resamples)")
