"""The wide term of a trained student (`student.wide_features`), fitted after training.

What it adds (models/overlap.py): logits = z_deep + β · (((f - mean) / scale) @ W + b), f the
pair's wordpiece-overlap features (9 for "overlap", 12 for "overlap_accessory"). Fitted in two
steps, after the encoder is trained and before the decision rule, so the encoder's training is
exactly the recipe's without it:
  1. W, b: a class-balanced multinomial logistic regression of the training label (gold, or
     the teacher's under crsd.label_source) on the standardised features of the train pairs
     (without drawn cross-query negatives) (scikit-learn, lbfgs), its inverse regularisation
     C chosen on the valid split's macro-F1 from references.C_GRID (first of equals wins) — the
     lexical reference's recipe on the features a model can compute from its own input.
  2. β from `student.wide_betas` (0 included: "no wide term" is a candidate), chosen on valid
     macro-F1 with the student's decision rule refitted for each β (first of equals wins).
β·log softmax(x W + b) and β·(x W + b) differ by a per-row constant, so the product of experts
softmax(z_deep) · p_wide^β is this sum of logits: β is folded into W and b.
Because β and the rule are both fitted on valid, the valid figure under them is in-sample; the
cross-fitted figure re-chooses β and the rule on the other query folds for each fold
(`student.offsets_crossfit_folds`), as decision.crossfit_macro_f1 does for the rule alone.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
from absl import logging

from rd_jax import errors
from rd_jax import decision, references
from rd_jax.data import pipeline
from rd_jax.models import overlap
from rd_jax.student import negatives


def real_pairs(train: list) -> list:
  """The train pairs without the drawn cross-query negatives (student/negatives.py): the wide
  term is fitted on pairs a search log holds."""
  return [p for p in train if not negatives.is_drawn_negative(p)]


def accessory_markers(cfg, vocab: dict[str, int]) -> tuple[str, ...]:
  """student.wide_accessory_markers, each checked to be a whole-word piece of `vocab` (a marker
  the tokenizer splits could never match: an error naming it, not a silently dead feature)."""
  markers = tuple(cfg.student.get("wide_accessory_markers",
                                  tuple(sorted(overlap.ACCESSORY_MARKERS))))
  if cfg.student.get("wide_features", "") != "overlap_accessory":
    return markers
  missing = [m for m in markers if m.lower() not in vocab]
  if missing:
    raise errors.ConfigError(f"config key student.wide_accessory_markers: {missing} are not whole-word "
                             "pieces of the student tokenizer's vocabulary (the tokenizer would split "
                             "them); use single words it knows")
  return markers


def pair_features(pairs, tokenizer, cfg, token_class: np.ndarray) -> np.ndarray:
  """[N, F] overlap features of `pairs` (input order) on the standard view the student reads
  (with its match hint, if any: the item is what follows the hint)."""
  after_hint = bool(cfg.student.get("match_hint", ""))
  fn = jax.jit(lambda ids, types, mask: overlap.features(ids, types, mask, token_class, after_hint))
  out = []
  for batch in pipeline.eval_batches(pairs, tokenizer, cfg, batch_size=cfg.eval.batch_size):
    f = np.asarray(fn(batch["std_input_ids"], batch["std_token_type_ids"],
                      batch["std_attention_mask"]), np.float64)
    out.append(f[batch["weights"] > 0])
  return np.concatenate(out)


def fit_linear(x_train, y_train, x_valid, y_valid, num_classes: int,
               c_grid=references.C_GRID) -> tuple[dict, dict]:
  """(wide params without token_class, info): step 1 of the module docstring. A class absent
  from train gets kernel 0 and bias -20 (p ≈ 2e-9 against the others), as the lexical
  reference gives it probability 0."""
  from sklearn.linear_model import LogisticRegression
  if len(set(np.asarray(y_train).tolist())) < 2:
    raise errors.DataError("student.wide_features needs at least 2 labels among the train pairs")
  mean = x_train.mean(0)
  scale = x_train.std(0)
  scale = np.where(scale > 1e-12, scale, 1.0)       # a constant feature: left unscaled (0 after centring)
  z_train, z_valid = (x_train - mean) / scale, (x_valid - mean) / scale
  by_c, best = {}, None
  for c in c_grid:
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=3000).fit(z_train, y_train)
    f1 = decision.macro_f1(np.asarray(y_valid), model.predict(z_valid), num_classes)
    by_c[str(c)] = f1
    if best is None or f1 > best[0] + 1e-12:
      best = (f1, c, model)
  f1, c, model = best
  kernel = np.zeros((x_train.shape[1], num_classes))
  bias = np.full(num_classes, -20.0)
  coef, intercept = model.coef_, model.intercept_
  if len(model.classes_) == 2:   # sklearn's binary form: one row for classes_[1]
    coef, intercept = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
  kernel[:, model.classes_] = coef.T
  bias[model.classes_] = intercept
  params = {"mean": mean, "scale": scale, "kernel": kernel, "bias": bias}
  return params, {"C": c, "valid_macro_f1_by_C": by_c, "valid_macro_f1_alone": f1}


def choose_beta(deep, wide, gold, betas, fit_rule) -> tuple[float, np.ndarray, dict]:
  """(β, offsets [C], {β: valid macro-F1}): step 2 on logits deep [N, C] and wide [N, C]."""
  gold = np.asarray(gold, int)
  num_classes = deep.shape[1]
  by_beta, best = {}, None
  for beta in betas:
    logits = deep + beta * wide
    offsets = fit_rule(logits, gold) if fit_rule else np.zeros(num_classes)
    f1 = decision.macro_f1(gold, decision.predict(logits, offsets), num_classes)
    by_beta[str(float(beta))] = f1
    if best is None or f1 > best[2] + 1e-12:
      best = (float(beta), np.asarray(offsets, np.float64), f1)
  return best[0], best[1], by_beta


def crossfit_macro_f1(deep, wide, gold, groups, folds: int, betas, fit_rule) -> float | None:
  """Valid macro-F1 with each query fold decided by β and the rule chosen on the other folds
  (None when folds is 0 or valid has fewer queries than folds)."""
  if not folds or len(set(map(str, groups))) < folds:
    return None
  gold = np.asarray(gold, int)
  fold = decision.group_folds(groups, folds)
  preds = np.empty(len(gold), int)
  for k in range(folds):
    held = fold == k
    beta, offsets, _ = choose_beta(deep[~held], wide[~held], gold[~held], betas, fit_rule)
    preds[held] = decision.predict(deep[held] + beta * wide[held], offsets)
  return decision.macro_f1(gold, preds, deep.shape[1])


def with_wide_term(cfg, model_cfg, params: dict, data, deep_valid_logits: np.ndarray,
                   fit_rule) -> tuple[dict, object, dict]:
  """(params + "wide", model config with wide_features, info) of a trained student.

  data: the stage's StudentData (train / valid pairs, tokenizer); deep_valid_logits [N_valid, C]:
  the trained student's raw valid logits without the wide term; fit_rule: the decision rule's
  fitter (None when student.fit_offsets is off)."""
  t0 = time.perf_counter()
  vocab = data.tokenizer.get_vocab()
  token_class = overlap.token_classes(vocab, cfg.student.wide_features,
                                      accessory_markers(cfg, vocab))
  if token_class.shape[0] > model_cfg.vocab_size:
    raise errors.ConfigError(f"the tokenizer has ids up to {token_class.shape[0] - 1}, the student's "
                             f"vocab_size is {model_cfg.vocab_size}")
  token_class = np.pad(token_class, ((0, model_cfg.vocab_size - token_class.shape[0]), (0, 0)))
  pairs = {"train": real_pairs(data.train), "valid": data.valid}
  x = {s: pair_features(pairs[s], data.tokenizer, cfg, token_class) for s in pairs}
  y = {s: np.asarray([p.label_id for p in pairs[s]]) for s in pairs}   # the labels it trains on
  num_classes = len(cfg.labels)
  linear, info = fit_linear(x["train"], y["train"], x["valid"], y["valid"], num_classes)
  wide_valid = ((x["valid"] - linear["mean"]) / linear["scale"]) @ linear["kernel"] + linear["bias"]
  betas = [float(b) for b in cfg.student.wide_betas]
  beta, _, by_beta = choose_beta(deep_valid_logits, wide_valid, y["valid"], betas, fit_rule)
  crossfit = crossfit_macro_f1(deep_valid_logits, wide_valid, y["valid"],
                               [p.query_id for p in data.valid],
                               int(cfg.student.get("offsets_crossfit_folds", 0)), betas, fit_rule)
  wide = {"token_class": token_class, "mean": linear["mean"], "scale": linear["scale"],
          "kernel": beta * linear["kernel"], "bias": beta * linear["bias"]}
  wide = {k: np.asarray(v, np.float32) for k, v in wide.items()}
  info.update(beta=beta, valid_macro_f1_by_beta=by_beta, valid_macro_f1_crossfit=crossfit,
              train_pairs=len(y["train"]), seconds=round(time.perf_counter() - t0, 1))
  logging.info("wide term: C %s (valid macro-F1 alone %.4f), beta %s (valid macro-F1 by beta %s)",
               info["C"], info["valid_macro_f1_alone"], beta, by_beta)
  model_cfg = dataclasses.replace(model_cfg, wide_features=cfg.student.wide_features,
                                  wide_after_hint=bool(cfg.student.get("match_hint", "")))
  return dict(params, wide=wide), model_cfg, info
