"""The lexical reference distilled into the student's CE targets (`student.lexical_distill`, #17).

The student (a cross-encoder fine-tuned on ~70 training queries) learns the queries; the lexical
reference (TF-IDF + overlap features, references.py) generalises better to unseen ones. So the
student trains on soft targets that mix the label with the lexical model's belief:

    t_i = (1 - alpha) * onehot(y_i) + alpha * p_i        t [N, C], rows sum to 1

p_i must come from a lexical model that never saw pair i's QUERY: one fitted on the pair itself
would mostly echo y_i (it memorises the query's terms), and the student would learn nothing new
about unseen queries. So the train queries are dealt into `folds` groups (a seeded permutation of
the sorted query ids, dealt round-robin: group sizes differ by at most one query) and each group's
pairs are predicted by `references.fit_lexical` fitted on the other groups (out-of-fold, as in
stacking). Its C is chosen on valid macro-F1, as the reference's is: a choice made on valid.

`student.lexical_distill_model` says which lexical model: "reference" (the reference itself:
class-balanced, TF-IDF + overlap, C on valid macro-F1) or "overlap" (references.fit_overlap: the
9 overlap features alone, unweighted so its probabilities are calibrated, C on valid log-loss).

The CE keeps weighting each row by its label's class weight (losses/classification.py); alpha = 0
leaves the pairs untouched: no soft targets, the plain one-hot path.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import numpy as np

from rd_jax import errors
from rd_jax import metrics as metrics_lib
from rd_jax import references


# student.lexical_distill_model -> the fit function (train, valid, labels, seed=) -> .predict_proba
DISTILL_MODELS = {"reference": references.fit_lexical, "overlap": references.fit_overlap}


def query_folds(query_ids: Sequence[str], folds: int, seed: int) -> dict[str, int]:
  """{query_id: group in 0..folds-1}: a seeded permutation of the sorted distinct ids, dealt
  round-robin (deterministic given the seed, whatever the order of `query_ids`)."""
  queries = sorted(set(query_ids))
  if len(queries) < folds:
    raise errors.DataError(f"student.lexical_distill_folds = {folds} but the train split has only "
                           f"{len(queries)} queries: use at most {len(queries)} folds")
  order = np.random.default_rng(seed).permutation(len(queries))
  return {queries[j]: rank % folds for rank, j in enumerate(order)}


def out_of_fold_probs(train_pairs, valid_pairs, labels: Sequence[str], folds: int, seed: int,
                      fit_fn: Callable | None = None) -> tuple[np.ndarray, dict]:
  """(probs [N, C] float32 in the order of `train_pairs`, stats): each pair's lexical
  probabilities from `fit_fn(other groups' pairs, valid_pairs, labels, seed=seed)`
  (default references.fit_lexical)."""
  fit_fn = fit_fn or references.fit_lexical
  t0 = time.perf_counter()
  group_of = query_folds([p.query_id for p in train_pairs], folds, seed)
  group = np.asarray([group_of[p.query_id] for p in train_pairs])            # [N]
  probs = np.zeros((len(train_pairs), len(labels)), np.float64)              # [N, C]
  per_fold = []
  for k in range(folds):
    held = np.flatnonzero(group == k)
    fitted_on = [p for p, g in zip(train_pairs, group) if g != k]
    if len({p.label_id for p in fitted_on}) < 2:
      raise errors.DataError(f"lexical distillation: the train pairs outside fold {k} of "
                             f"student.lexical_distill_folds = {folds} hold a single label; "
                             "use fewer folds or more train pairs")
    ref = fit_fn(fitted_on, valid_pairs, labels, seed=seed)
    probs[held] = ref.predict_proba([train_pairs[i] for i in held])
    per_fold.append({"fold": k, "C": ref.info.get("C"), "held_out_pairs": int(len(held)),
                     "held_out_queries": int(sum(1 for g in group_of.values() if g == k))})
  probs = (probs / probs.sum(-1, keepdims=True)).astype(np.float32)  # exact rows after the cast
  gold = np.asarray([p.label_id for p in train_pairs])
  prior = np.bincount(gold, minlength=len(labels)) / len(gold)       # [C] the train mix
  stats = {"folds": folds, "seed": seed, "per_fold": per_fold,
           "oof_macro_f1": round(metrics_lib.classification_metrics(
               gold, probs.argmax(-1), list(labels))["macro_f1"], 4),
           "oof_log_loss": round(references.log_loss(probs, gold), 4),
           "prior_log_loss": round(references.log_loss(np.tile(prior, (len(gold), 1)), gold), 4),
           "seconds": round(time.perf_counter() - t0, 1)}
  return probs, stats


def soft_targets(gold: np.ndarray, probs: np.ndarray, alpha: float) -> np.ndarray:
  """(1 - alpha) * onehot(gold) + alpha * probs: gold [N] int, probs [N, C] -> [N, C] float32."""
  onehot = np.eye(probs.shape[1], dtype=np.float64)[np.asarray(gold)]       # [N, C]
  return ((1.0 - alpha) * onehot + alpha * np.asarray(probs, np.float64)).astype(np.float32)


def with_lexical_targets(train_pairs, valid_pairs, cfg, report: dict) -> list:
  """The train pairs with `soft_label` = soft_targets(label_id, out-of-fold probs, alpha) when
  student.lexical_distill > 0 (stats in report["lexical_distill"]); else unchanged. The lexical
  model fits the labels the student trains on (label_id: gold, or the teacher's)."""
  alpha = float(cfg.student.lexical_distill)
  if not alpha:
    return train_pairs
  which = cfg.student.get("lexical_distill_model", "reference")
  probs, stats = out_of_fold_probs(train_pairs, valid_pairs, list(cfg.labels),
                                   int(cfg.student.lexical_distill_folds), int(cfg.seed),
                                   fit_fn=DISTILL_MODELS[which])
  targets = soft_targets(np.asarray([p.label_id for p in train_pairs]), probs, alpha)
  report["lexical_distill"] = {"alpha": alpha, "model": which, **stats}
  return [dataclasses.replace(p, soft_label=tuple(float(x) for x in t))
          for p, t in zip(train_pairs, targets)]
