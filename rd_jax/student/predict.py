"""Standard-view predictions of a student (the serving path: no reasoning), their metrics, and
predictions.jsonl."""

from __future__ import annotations

from typing import Callable

import jax
from absl import logging
import numpy as np
from jax.experimental import multihost_utils

from rd_jax import errors
from rd_jax import metrics as metrics_lib
from rd_jax.data import pipeline
from rd_jax.parallel import mesh as mesh_lib


def make_predict_fn(model, mesh, output: str = "logits") -> Callable:
  """jit(params, batch) -> logits [B, C] on the standard view (the serving path: no reasoning);
  output="pooled": the [B, D] vector the classifier reads (student/probe_head.py)."""
  batch_sharding = mesh_lib.batch_sharding(mesh)

  @jax.jit
  def logits_fn(params, batch):
    out = model.apply({"params": params}, batch["std_input_ids"], batch["std_attention_mask"],
                      batch["std_token_type_ids"], deterministic=True)
    return jax.lax.with_sharding_constraint(out[output], batch_sharding)

  def predict(params, host_batch: dict) -> np.ndarray:
    p, n = jax.process_index(), jax.process_count()
    rows = len(host_batch["weights"]) // n
    local = {k: v[p * rows:(p + 1) * rows] for k, v in host_batch.items()
             if k.startswith("std_") or k == "weights"}
    logits = logits_fn(params, mesh_lib.put_batch(local, mesh))
    return np.asarray(multihost_utils.process_allgather(logits, tiled=True))

  return predict


def evaluate(predict: Callable, params, pairs, tokenizer, cfg, *, max_len_std=None,
             logit_offsets=None, match_hint=None) -> dict:
  """Metrics of the standard-view predictions on labelled `pairs` (input order).

  logit_offsets: the decision rule, C floats added to the logits before the argmax (None = 0);
  macro_f1 etc. are the offset predictions', macro_f1_argmax the raw argmax's. Also: log_loss
  (mean NLL of softmax(raw logits)), log_loss_adjusted (of softmax(logits + offsets)), and
  ndcg@10 (ranking.py) with each query's items ranked by the expected gain under
  softmax(logits + offsets): what the export, whose bias holds the offsets, serves.
  "predictions" (class ids) and "logits" (raw, [N, C] float32) are for the caller to pop.
  """
  logits, gold = predict_logits(predict, params, pairs, tokenizer, cfg, max_len_std=max_len_std,
                                match_hint=match_hint)
  return score_logits(logits, gold, pairs, cfg, logit_offsets)


def predict_logits(predict: Callable, params, pairs, tokenizer, cfg, *,
                   max_len_std=None, match_hint=None) -> tuple[np.ndarray, np.ndarray]:
  """(raw logits [N, C] float32, gold class ids [N]) of the standard view, input order.

  max_len_std / match_hint: the student's input format as its checkpoint's meta.json records it
  (None = cfg.student's), so a checkpoint is scored on the inputs it was trained on."""
  if not pairs:
    raise errors.DataError("no pairs to evaluate")
  logging.info("validating/evaluating %d pairs (the first batch of each shape compiles) ...",
               len(pairs))
  eval_cfg = cfg
  overrides = {}
  if max_len_std and max_len_std != cfg.student.max_len_std:
    overrides["max_len_std"] = int(max_len_std)
  if match_hint is not None and match_hint != cfg.student.get("match_hint", ""):
    overrides["match_hint"] = match_hint
  if overrides:
    eval_cfg = cfg.copy_and_resolve_references()
    with eval_cfg.unlocked():
      eval_cfg.student.update(overrides)
  batch_size = cfg.eval.batch_size + (-cfg.eval.batch_size) % jax.device_count()  # divisible
  all_logits, labels = [], []
  for batch in pipeline.eval_batches(pairs, tokenizer, eval_cfg, batch_size=batch_size):
    logits = predict(params, batch)
    keep = batch["weights"] > 0
    all_logits.append(np.asarray(logits, np.float32)[keep])
    labels.append(batch["labels"][keep])
  return np.concatenate(all_logits), np.concatenate(labels)               # [N, C], [N]


def score_logits(logits: np.ndarray, gold: np.ndarray, pairs, cfg, logit_offsets=None) -> dict:
  """evaluate()'s metrics from logits already computed (no second forward pass)."""
  from rd_jax import ranking, references
  offsets = np.zeros(logits.shape[1]) if logit_offsets is None else np.asarray(logit_offsets, float)
  if offsets.shape != (logits.shape[1],):
    raise ValueError(f"logit_offsets has shape {offsets.shape}; expected ({logits.shape[1]},)")
  adjusted = logits + offsets
  preds = np.argmax(adjusted, -1)
  result = metrics_lib.classification_metrics(gold, preds, list(cfg.labels))
  result["macro_f1_argmax"] = (result["macro_f1"] if logit_offsets is None else
                               metrics_lib.classification_metrics(gold, np.argmax(logits, -1),
                                                                  list(cfg.labels))["macro_f1"])
  result["log_loss"] = references.log_loss(ranking.softmax(logits), gold)
  if logit_offsets is not None:
    result["log_loss_adjusted"] = references.log_loss(ranking.softmax(adjusted), gold)
    result["decision_offsets"] = offsets.tolist()
  gains = ranking.label_gains(cfg.labels, cfg.eval.get("gains"))
  ndcg = ranking.pair_ndcg(pairs, ranking.softmax(adjusted), gains)
  result.update({"ndcg@10": ndcg["ndcg"], "ndcg_queries": ndcg["queries"],
                 "ndcg_queries_skipped": ndcg["queries_skipped"]})
  result["predictions"] = preds.tolist()   # class ids, one per pair, input order
  result["logits"] = logits                # raw [N, C]
  return result


def write_predictions(pairs, predictions, labels, path: str, probs=None, gains=None) -> None:
  """<path>: one JSON line per evaluated pair (input order): ids, gold and predicted label.
  predictions: evaluate()'s "predictions" (class ids, one per pair). With `probs` [N, C] (softmax
  of the logits + decision offsets, as served) each line also has `scores` {label: p} and, with
  `gains` [C], `expected_gain` = probs @ gains: the score nDCG@10 ranks a query's items by."""
  rows = [{"query_id": p.query_id, "product_id": p.product_id, "label": labels[p.label_id],
           "prediction": labels[k]} for p, k in zip(pairs, predictions, strict=True)]
  if probs is not None:
    probs = np.asarray(probs, np.float64)
    for row, pr in zip(rows, probs, strict=True):
      row["scores"] = {name: float(x) for name, x in zip(labels, pr)}
      if gains is not None:
        row["expected_gain"] = float(pr @ np.asarray(gains, np.float64))
  metrics_lib.write_jsonl_atomic(rows, path)
