"""`--stage=eval`: metrics.json + confusion.png for any student checkpoint on any labelled file.

  checkpoint: cfg.eval.checkpoint, or <workdir>/crsd/final (a stage folder or its final/)
  data:       cfg.eval.path (any labelled pairs file), or the cfg.eval.split folds of data.path
Writes <workdir>/eval/metrics.json (accuracy, macro_f1, per_class, confusion, ...),
<workdir>/eval/predictions.jsonl (query_id, product_id, label, prediction per pair, input order)
and <workdir>/eval/confusion.png; with eval.checkpoint "" and a finished <workdir>/baseline/, the
baseline too (baseline_metrics.json, baseline_predictions.jsonl, baseline_confusion.png), so a
pipeline run ends with both.
Only the standard (query, item) view is used: no reasoning needed.
"""

from __future__ import annotations

import os

import jax
from absl import logging

from rd_jax import checkpoint, metrics as metrics_lib
from rd_jax.models import bert
from rd_jax.parallel import mesh as mesh_lib
from rd_jax.student import data as data_lib, predict as predict_lib


def _evaluate(cfg, ckpt: str, out_dir: str, prefix: str) -> dict:
  """metrics of the student in `ckpt`, written to <out_dir>/<prefix>metrics.json (+ confusion)."""
  meta = checkpoint.read_meta(ckpt)
  if meta.get("model") != "bert":
    raise checkpoint.CheckpointError(f"{ckpt!r} holds a {meta.get('model')!r} model; eval needs "
                                     "a student (bert) checkpoint")
  if list(meta["labels"]) != list(cfg.labels):
    raise checkpoint.CheckpointError(f"{ckpt!r} was trained with labels {meta['labels']}, the "
                                     f"config has labels {list(cfg.labels)}")
  mesh_lib.maybe_initialize_distributed(cfg.mesh)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  model_cfg = bert.BertConfig.from_dict(meta["model_config"])
  model = bert.BertClassifier(model_cfg)
  abstract = jax.eval_shape(lambda: bert.init_params(model_cfg, jax.random.PRNGKey(0)))
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=mesh_lib.replicated(mesh)),
      abstract)
  params, _ = checkpoint.load_final(ckpt, abstract, expect_model="bert")

  pairs, source, report = data_lib.load_eval_pairs(cfg, out_dir, meta.get("item_template"))
  tokenizer = data_lib.load_tokenizer(meta["tokenizer"])
  predict = predict_lib.make_predict_fn(model, mesh)
  offsets = meta.get("decision_offsets")   # the decision rule fitted on valid (rd_jax/decision.py)
  result = predict_lib.evaluate(predict, params, pairs, tokenizer, cfg,
                                max_len_std=meta.get("max_len_std"), logit_offsets=offsets)
  result.pop("logits")
  result["decision_offsets"] = offsets
  predicted = result.pop("predictions")
  result.update(checkpoint=os.path.abspath(checkpoint.resolve_final(ckpt)), data=source,
                data_report=report)
  if jax.process_index() == 0:
    predict_lib.write_predictions(pairs, predicted, cfg.labels,
                                  os.path.join(out_dir, f"{prefix}predictions.jsonl"))
    metrics_lib.write_json_atomic(result, os.path.join(out_dir, f"{prefix}metrics.json"))
    metrics_lib.save_confusion_png(result, os.path.join(out_dir, f"{prefix}confusion.png"),
                                   title=f"{source}: macro-F1 {result['macro_f1']:.4f}")
  logging.info("eval of %s on %s: macro-F1 %.4f accuracy %.4f (%d pairs)", ckpt, source,
               result["macro_f1"], result["accuracy"], result["num_examples"])
  return result


def run(cfg, workdir: str) -> dict:
  out_dir = os.path.join(workdir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  ckpt = cfg.eval.checkpoint or os.path.join(workdir, "crsd")
  result = _evaluate(cfg, ckpt, out_dir, "")
  summary = {"stage": "eval", "macro_f1": result["macro_f1"], "accuracy": result["accuracy"],
             "data": result["data"], "output": os.path.join(out_dir, "metrics.json"),
             "data_report": result["data_report"]}  # rows read/skipped, split, degenerate flags
  baseline_dir = os.path.join(workdir, "baseline")
  if not cfg.eval.checkpoint and os.path.exists(os.path.join(baseline_dir, "summary.json")):
    # The pipeline's comparison on the same pairs: CRSD vs the student without reasoning.
    base = _evaluate(cfg, baseline_dir, out_dir, "baseline_")
    summary.update(baseline_macro_f1=base["macro_f1"], baseline_accuracy=base["accuracy"],
                   baseline_output=os.path.join(out_dir, "baseline_metrics.json"))
  if jax.process_index() == 0:
    metrics_lib.write_json_atomic(summary, os.path.join(out_dir, "summary.json"))
  return summary
