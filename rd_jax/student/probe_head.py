"""The classifier a fine-tuning run starts from: a linear probe on the initial encoder (LP-FT).

`student.head_init = "probe"` (ours, #17). Kumar et al. 2022 ("Fine-Tuning can Distort
Pretrained Features and Underperform Out-of-Distribution", ICLR) show that fine-tuning from a
random head first spends its largest gradients -- those of a head that knows nothing -- on the
pretrained features, and that this hurts most on inputs unlike the training set; their remedy is
LP-FT: fit the linear head on the frozen features first, then fine-tune everything from it. Our
test queries are unseen queries, which is that case.

Here: the initial student (encoder, pooler) reads every train pair's standard view once,
deterministically (no dropout), giving the vector the classifier reads, pooled [N, D]. A
multinomial logistic regression (scikit-learn, L2, the CE's class weights as sample weights) is
fitted on the standardised features, its C chosen by valid macro-F1 of the argmax over
`student.probe_c_grid`; the standardisation is folded back into the weights, so the classifier
kernel [D, C] and bias [C] reproduce the probe's decision function on the raw pooled vectors:

    z = ((x - mu) / sigma) W + b  =  x (W / sigma) + (b - (mu / sigma) W)

Costs one forward pass over the train and valid pairs (~1 min for the demo on 2 cores).
"""

from __future__ import annotations

import time

import numpy as np
from absl import logging

from rd_jax import errors
from rd_jax import decision
from rd_jax.student import predict as predict_lib


def fit_probe(train_x, train_y, valid_x, valid_y, num_classes: int, class_weights,
              c_grid, seed: int = 0) -> dict:
  """class_weights [C] or None (= 1 each). A class-weighted multinomial LR per C on standardised features, the best by valid macro-F1
  (argmax; ties keep the smallest C). Returns {"kernel" [D, C], "bias" [C]} acting on the raw
  features (standardisation folded in), "C", "valid_macro_f1_by_C"."""
  from sklearn.linear_model import LogisticRegression
  if not c_grid:
    raise errors.ConfigError("student.probe_c_grid is empty: the probe head needs at least one C")
  train_x = np.asarray(train_x, np.float64)
  valid_x = np.asarray(valid_x, np.float64)
  train_y = np.asarray(train_y)
  present = np.unique(train_y)
  if len(present) != num_classes:
    raise errors.DataError(f"the probe head needs every class in the train split; it has classes "
                           f"{present.tolist()} of {num_classes}")
  mu = train_x.mean(0)
  sigma = train_x.std(0)
  sigma = np.where(sigma > 1e-8, sigma, 1.0)
  standard = lambda x: (x - mu) / sigma
  weights = np.ones(num_classes) if class_weights is None else np.asarray(class_weights, np.float64)
  sample_weight = weights[train_y]
  best, by_c = None, {}
  for c in sorted(float(c) for c in c_grid):
    model = LogisticRegression(C=c, max_iter=3000, random_state=seed)
    model.fit(standard(train_x), train_y, sample_weight=sample_weight)
    # model.coef_ [C, D], intercept_ [C] (multinomial: one row per class, classes 0..C-1)
    pred = model.predict(standard(valid_x))
    f1 = decision.macro_f1(np.asarray(valid_y), pred, num_classes)
    by_c[str(c)] = round(float(f1), 4)
    if best is None or f1 > best[0] + 1e-12:
      best = (f1, c, model)
  _, c, model = best
  kernel = (model.coef_ / sigma[None, :]).T                                 # [D, C]
  bias = model.intercept_ - (model.coef_ * (mu / sigma)[None, :]).sum(1)   # [C]
  return {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32), "C": c,
          "valid_macro_f1_by_C": by_c}


def with_probe_head(cfg, model, params: dict, mesh, data, class_weights, objective: dict) -> dict:
  """params with the classifier replaced by the linear probe's (student.head_init="probe");
  the probe's C, valid figures and time go to objective["probe_head"]."""
  t0 = time.perf_counter()
  pooled = predict_lib.make_predict_fn(model, mesh, output="pooled")
  # the pooled vectors [N, D] the classifier reads (predict_logits returns whatever predict gives)
  train_x, train_y = predict_lib.predict_logits(pooled, params, data.train, data.tokenizer, cfg)
  valid_x, valid_y = predict_lib.predict_logits(pooled, params, data.valid, data.tokenizer, cfg)
  probe = fit_probe(train_x, train_y, valid_x, valid_y, len(cfg.labels), class_weights,
                    tuple(cfg.student.get("probe_c_grid", (0.01, 0.03, 0.1, 0.3, 1.0))),
                    seed=int(cfg.seed))
  old = params["classifier"]
  classifier = {"kernel": probe["kernel"].astype(np.asarray(old["kernel"]).dtype),
                "bias": probe["bias"].astype(np.asarray(old["bias"]).dtype)}
  objective["probe_head"] = {"C": probe["C"], "valid_macro_f1_by_C": probe["valid_macro_f1_by_C"],
                             "train_pairs": int(len(train_y)), "valid_pairs": int(len(valid_y)),
                             "seconds": round(time.perf_counter() - t0, 1)}
  logging.info("probe head (LP-FT): %s", objective["probe_head"])
  return dict(params, classifier=classifier)
