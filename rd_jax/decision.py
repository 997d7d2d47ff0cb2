"""The decision rule of a student: argmax over logits + per-class offsets, fitted on valid.

A classifier trained with CE on skewed labels (bundled train folds: Exact 51%, Complement 5%)
puts its argmax on the frequent classes, while the metric we ship on, macro-F1, weighs every class
alike. The probabilities still carry the signal; the argmax throws it away. So after training we
fit one additive offset per class, b [C] with b_0 = 0 (only differences matter),

    prediction_i = argmax_c (z_ic + b_c)            z [N, C]: valid logits

`student.decision_rule` says how b is fitted on valid macro-F1:
  offsets      C - 1 free offsets by coordinate ascent over a fixed grid (fit_offsets;
               deterministic; ties keep the offset closest to 0, so a class whose offset does not
               matter keeps 0): the rule until session 22;
  prior_scale  b = tau * (-log p_train) - (its first entry), one strength tau on a grid
               (fit_prior_scale): the default since session 22, chosen by cross-fitted valid
               macro-F1 (experiments/decision_rules.py), where the free offsets fitted valid's noise.
Because either rule is "add a constant to each logit", it folds exactly into the classifier's
bias: an exported model predicts what eval reports with no code at serving time.
"""

from __future__ import annotations

import numpy as np

from rd_jax import metrics as metrics_lib
from rd_jax import errors

GRID = np.round(np.arange(-4.0, 4.0001, 0.1), 4)   # offsets tried per class (logit units)
TAU_GRID = np.round(np.arange(-2.0, 2.0001, 0.1), 4)  # fit_prior_scale's strengths


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
  return metrics_lib.classification_metrics(labels, predictions,
                                            [str(c) for c in range(num_classes)])["macro_f1"]


def fit_offsets(logits, labels, *, rounds: int = 3, grid=GRID) -> np.ndarray:
  """logits [N, C], labels [N] int -> offsets [C] (float64, offsets[0] == 0)."""
  logits, labels = np.asarray(logits, np.float64), np.asarray(labels, int)
  n, c = logits.shape
  if n == 0:
    raise ValueError("cannot fit decision offsets on an empty split")
  offsets = np.zeros(c)
  best = macro_f1(labels, np.argmax(logits, -1), c)
  order = np.argsort(np.abs(grid), kind="stable")        # try small offsets first: ties keep them
  for _ in range(rounds):
    changed = False
    for k in range(1, c):
      for value in grid[order]:
        trial = offsets.copy()
        trial[k] = value
        score = macro_f1(labels, np.argmax(logits + trial, -1), c)
        if score > best + 1e-12:
          best, offsets, changed = score, trial, True
    if not changed:
      break
  return offsets


def fit_prior_scale(logits, labels, log_prior, *, grid=TAU_GRID) -> np.ndarray:
  """One parameter instead of C - 1: offsets b = tau * (-log p) - (its first entry), so b_0 = 0,
  with tau the grid value of best macro-F1 on (logits [N, C], labels [N]); ties keep the smallest
  |tau|. Logit adjustment (Menon et al. 2021) with its strength fitted: fewer degrees of freedom
  to spend on the noise of a small valid split. log_prior [C]: log train label frequencies."""
  logits, labels = np.asarray(logits, np.float64), np.asarray(labels, int)
  if len(labels) == 0:
    raise ValueError("cannot fit a decision rule on an empty split")
  direction = -np.asarray(log_prior, np.float64)
  direction = direction - direction[0]
  c = logits.shape[1]
  best_tau, best = 0.0, macro_f1(labels, np.argmax(logits, -1), c)
  for tau in grid[np.argsort(np.abs(grid), kind="stable")]:
    score = macro_f1(labels, np.argmax(logits + tau * direction, -1), c)
    if score > best + 1e-12:
      best_tau, best = float(tau), score
  return best_tau * direction + 0.0     # + 0.0: no -0.0 entries in what meta.json records


RULES = ("offsets", "prior_scale")


def fitter(rule: str, train_label_counts):
  """fit(logits [N, C], labels [N]) -> offsets [C] of `student.decision_rule`: "offsets" (C - 1
  free offsets, fit_offsets) or "prior_scale" (one tau of -log p_train, fit_prior_scale)."""
  if rule == "offsets":
    return fit_offsets
  if rule == "prior_scale":
    counts = np.asarray(train_label_counts, np.float64)
    log_prior = np.log(np.maximum(counts, 1.0) / max(counts.sum(), 1.0))
    return lambda logits, labels: fit_prior_scale(logits, labels, log_prior)
  raise errors.ConfigError(f"config key student.decision_rule = {rule!r}; allowed: {', '.join(RULES)}")


def predict(logits, offsets=None) -> np.ndarray:
  logits = np.asarray(logits, np.float64)
  return np.argmax(logits if offsets is None else logits + np.asarray(offsets), -1)


def group_folds(groups, folds: int) -> np.ndarray:
  """fold id [N] in 0..folds-1 per row: the distinct groups (query ids), sorted, dealt
  round-robin (deterministic; fold sizes in groups differ by at most one)."""
  keys = np.asarray([str(g) for g in groups], dtype=object)
  distinct = sorted(set(keys))
  if len(distinct) < folds:
    raise ValueError(f"cross-fitting the decision offsets in {folds} folds needs >= {folds} "
                     f"queries; the split has {len(distinct)}")
  fold_of = {g: i % folds for i, g in enumerate(distinct)}
  return np.asarray([fold_of[g] for g in keys], int)


def cross_fitted_predictions(logits, labels, groups, folds: int = 3, fit=None) -> np.ndarray:
  """predictions [N]: each query-disjoint fold's rows decided by offsets fitted (fit_offsets) on
  the OTHER folds' rows. Why: the offsets are parameters fitted on valid, so valid macro-F1 under
  offsets fitted on the same pairs is optimistic, the more so the more the decision rests on the
  offsets (a student whose argmax is the prior: all of it). The pooled cross-fitted macro-F1 is an
  honest valid estimate of the rule the student ships with (offsets fitted on all of valid).
  `fit(logits, labels) -> offsets [C]`: the rule's fitter (default fit_offsets)."""
  logits, labels = np.asarray(logits, np.float64), np.asarray(labels, int)
  fit = fit or fit_offsets
  fold = group_folds(groups, folds)
  preds = np.empty(len(labels), int)
  for k in range(folds):
    held = fold == k
    offsets = fit(logits[~held], labels[~held])
    preds[held] = predict(logits[held], offsets)
  return preds


def crossfit_macro_f1(logits, labels, groups, folds: int, fit=None) -> float | None:
  """Macro-F1 of cross_fitted_predictions, or None when folds is 0 (off) or the split has fewer
  distinct groups than folds (the stages and experiments.interpolate report it so)."""
  if not folds or len(set(map(str, groups))) < folds:
    return None
  labels = np.asarray(labels, int)
  return macro_f1(labels, cross_fitted_predictions(logits, labels, groups, folds, fit=fit),
                  np.asarray(logits).shape[1])
