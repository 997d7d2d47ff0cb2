"""`--stage=eval`: metrics.json + confusion.png for any student checkpoint on any labelled file.

  checkpoint: cfg.eval.checkpoint, or <workdir>/crsd/final (a stage folder or its final/)
  data:       cfg.eval.path (any labelled pairs file), or the cfg.eval.split folds of data.path
Writes <workdir>/eval/metrics.json (accuracy, macro_f1, per_class, confusion, ...),
<workdir>/eval/predictions.jsonl (query_id, product_id, label, prediction, scores {label: p} and
expected_gain per pair, input order: what rd_jax.score writes for the exported student)
and <workdir>/eval/confusion.png; with eval.checkpoint "" and a finished <workdir>/baseline/, the
baseline too (baseline_metrics.json, baseline_predictions.jsonl, baseline_confusion.png), so a
pipeline run ends with both.
Only the standard (query, item) view is used: no reasoning needed.

Decision rule: the student's meta.json `decision_offsets` (C floats, absent = 0) are added to the
logits before the argmax: `macro_f1` is that rule's, `macro_f1_argmax` the raw argmax's. Each
metrics.json also has log_loss (and log_loss_adjusted, prior_log_loss: the train label
frequencies' on the same pairs) and ndcg@10 (rd_jax/ranking.py). With eval.path "", the valid
split is scored too (`valid`: the same headline figures; with offsets fitted on valid, its
figures are in-sample). With eval.references, metrics.json has `references` (the majority and
lexical references, rd_jax/references.py, fitted on the students' train split, scored on the same
pairs) and `delta_vs_references` (student - reference); the stage prints the comparison table.
With eval.path, `train_overlap` counts the file's queries and pairs that the training split of
data.path holds (a warning when any query is shared: those figures are not on unseen queries).
With eval.bootstrap_resamples > 0, `paired_bootstrap` adds how sure each eval-split difference is:
a 95% interval from resampling the split's queries, both models scored on the same resamples
(rd_jax/bootstrap.py); the printed table ends with one line per reference and metric.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import jax
import numpy as np
from absl import logging

from rd_jax import bootstrap, checkpoint, metrics as metrics_lib, ranking, references
from rd_jax import storage
from rd_jax.student import data as data_lib, predict as predict_lib
from rd_jax.student.restore import restore_student   # experiments: eval_stage.restore_student


def _evaluate(cfg, ckpt: str, out_dir: str, prefix: str, refs: dict | None) -> dict:
  """metrics of the student in `ckpt`, written to <out_dir>/<prefix>metrics.json (+ confusion)."""
  meta, model, params, mesh = restore_student(cfg, ckpt)
  match_hint = meta.get("match_hint", "")   # the input format the student was trained on
  if match_hint != cfg.student.match_hint:
    logging.warning("%s was trained with student.match_hint = %r (its meta.json), the config says "
                    "%r: scoring it on the inputs it was trained on", ckpt, match_hint,
                    cfg.student.match_hint)
  pairs, source, report = data_lib.load_eval_pairs(cfg, out_dir, meta.get("item_template"))
  tokenizer = data_lib.load_tokenizer(meta["tokenizer"])
  predict = predict_lib.make_predict_fn(model, mesh)
  def run(on):
    out = predict_lib.evaluate(predict, params, on, tokenizer, cfg,
                               max_len_std=meta.get("max_len_std"),
                               logit_offsets=meta.get("decision_offsets"),
                               match_hint=match_hint)
    logits = out.pop("logits")
    out["prior_log_loss"] = prior_log_loss(meta, refs, np.asarray([p.label_id for p in on]))
    return out, logits

  result, logits = run(pairs)
  predicted = result.pop("predictions")
  # the logits as served (the export folds the offsets into its bias): bootstrap and predictions
  served_logits = logits + np.asarray(result.get("decision_offsets", np.zeros(logits.shape[1])))
  by_split = {_split_name(cfg): headline(result)}
  if not cfg.eval.path and cfg.eval.split != "valid":   # valid too: the table shows both
    valid, _ = run(pairs_of(cfg, "valid", out_dir, meta.get("item_template")))
    by_split["valid"] = result["valid"] = headline(valid)
  if refs:
    result["references"] = refs
    result["delta_vs_references"] = references.deltas(by_split, refs)
    if cfg.eval.get("bootstrap_resamples", 0):
      result["paired_bootstrap"] = reference_bootstrap(cfg, pairs, predicted, served_logits,
                                                       meta.get("item_template"))
  if cfg.eval.path:
    result["train_overlap"] = data_lib.train_overlap(cfg, pairs, meta.get("item_template"),
                                                   "eval.path", cfg.eval.path)
  result.update(checkpoint=storage.abspath(checkpoint.resolve_final(ckpt)), data=source,
                data_report=report)
  if jax.process_index() == 0:
    predict_lib.write_predictions(pairs, predicted, cfg.labels,
                                  os.path.join(out_dir, f"{prefix}predictions.jsonl"),
                                  probs=ranking.softmax(served_logits),
                                  gains=ranking.label_gains(cfg.labels, cfg.eval.get("gains")))
    metrics_lib.write_json_atomic(result, os.path.join(out_dir, f"{prefix}metrics.json"))
    metrics_lib.save_confusion_png(result, os.path.join(out_dir, f"{prefix}confusion.png"),
                                   title=f"{source}: macro-F1 {result['macro_f1']:.4f}")
  logging.info("eval of %s on %s: macro-F1 %.4f (argmax %.4f) accuracy %.4f nDCG@10 %.4f "
               "(%d pairs)", ckpt, source, result["macro_f1"], result["macro_f1_argmax"],
               result["accuracy"], result["ndcg@10"], result["num_examples"])
  result["by_split"] = by_split
  return result


def reference_bootstrap(cfg, pairs, predicted, adjusted_logits, item_template) -> dict:
  """{reference: bootstrap.paired_query_bootstrap(student, reference)} on the eval pairs: the
  student's predictions and E[gain] ranking (softmax of its offset logits, as served) against each
  reference's (fitted as eval's references are), on the same query resamples."""
  gains = ranking.label_gains(cfg.labels, cfg.eval.get("gains"))
  gold = np.asarray([p.label_id for p in pairs])
  keys = ranking.query_keys(pairs)
  student_ndcg = ranking.pair_ndcg_per_query(pairs, ranking.softmax(adjusted_logits), gains)
  fitted, _ = references.fit_for_config(cfg, item_template)
  out = {}
  for name, ref in fitted.items():
    probs = ref.predict_proba(pairs)
    out[name] = bootstrap.paired_query_bootstrap(
        keys, gold, predicted, probs.argmax(-1), len(cfg.labels),
        ndcg_a=student_ndcg, ndcg_b=ranking.pair_ndcg_per_query(pairs, probs, gains),
        resamples=cfg.eval.bootstrap_resamples, seed=cfg.eval.get("bootstrap_seed", 0))
  return out


def _split_name(cfg) -> str:
  return "eval" if cfg.eval.path else cfg.eval.split


@contextlib.contextmanager
def report_dir(out: str | None):
  """Where eval's data loader writes its report of rejected rows: the folder of `out` (an output
  file), or, without one, a temporary folder removed on exit."""
  if out:
    folder = os.path.dirname(storage.abspath(out))
    storage.makedirs(folder)
    yield folder
  else:
    with tempfile.TemporaryDirectory(prefix="rd_jax_report_") as tmp:
      yield tmp


def pairs_of(cfg, split: str, out_dir: str, item_template):
  split_cfg = cfg.copy_and_resolve_references()
  with split_cfg.unlocked():
    split_cfg.eval.split = split
  return data_lib.load_eval_pairs(split_cfg, out_dir, item_template)[0]


def headline(m: dict) -> dict:
  keys = ("macro_f1", "macro_f1_argmax", "accuracy", "ndcg@10", "log_loss", "log_loss_adjusted",
          "prior_log_loss", "num_examples")
  return {k: m[k] for k in keys if k in m}


def prior_log_loss(meta: dict, refs: dict | None, gold) -> float | None:
  """Log-loss of predicting the train label frequencies (meta's train_label_counts, else the
  majority reference's) on these pairs; None when neither is known."""
  counts = meta.get("train_label_counts") or (refs or {}).get("majority", {}).get(
      "info", {}).get("train_label_counts")
  if not counts:
    return None
  prior = np.asarray(counts, float) / max(sum(counts), 1)
  return references.log_loss(np.tile(prior, (len(gold), 1)), gold)


def _references(cfg, out_dir: str, ckpt: str) -> dict | None:
  """The references (fitted on data.path's train split, as the students were) scored on valid and
  on the pairs eval scores (the eval split, or the eval.path file); None with eval.references off."""
  meta = checkpoint.read_meta(ckpt)
  if not cfg.eval.get("references", True) or list(meta.get("labels", ())) != list(cfg.labels):
    return None   # (a label mismatch is _evaluate's error to name)
  template = meta.get("item_template")
  _, splits = references.fit_for_config(cfg, template)
  sets = {"valid": splits["valid"]}
  sets[_split_name(cfg)] = (data_lib.load_eval_pairs(cfg, out_dir, template)[0]
                            if cfg.eval.path else splits[cfg.eval.split])
  return references.reference_metrics(cfg, sets, template)


def run(cfg, workdir: str) -> dict:
  out_dir = os.path.join(workdir, "eval")
  storage.makedirs(out_dir)
  ckpt = cfg.eval.checkpoint or os.path.join(workdir, "crsd")
  refs = _references(cfg, out_dir, ckpt)
  result = _evaluate(cfg, ckpt, out_dir, "", refs)
  summary = {"stage": "eval", "macro_f1": result["macro_f1"], "accuracy": result["accuracy"],
             "macro_f1_argmax": result["macro_f1_argmax"], "ndcg@10": result["ndcg@10"],
             "data": result["data"], "output": os.path.join(out_dir, "metrics.json"),
             "data_report": result["data_report"]}  # rows read/skipped, split, degenerate flags
  rows = {f"student ({checkpoint.read_meta(ckpt).get('stage', 'student')})": result["by_split"]}
  baseline_dir = os.path.join(workdir, "baseline")
  if not cfg.eval.checkpoint and storage.exists(os.path.join(baseline_dir, "summary.json")):
    # The pipeline's comparison on the same pairs: CRSD vs the student without reasoning.
    base = _evaluate(cfg, baseline_dir, out_dir, "baseline_", refs)
    summary.update(baseline_macro_f1=base["macro_f1"], baseline_accuracy=base["accuracy"],
                   baseline_output=os.path.join(out_dir, "baseline_metrics.json"))
    rows["baseline (no reasoning)"] = base["by_split"]
  for name, ref in (refs or {}).items():
    rows[f"{name} reference"] = {s: m for s, m in ref.items() if s != "info"}
    summary[f"{name}_reference_macro_f1"] = ref[_split_name(cfg)]["macro_f1"]
  splits = (["valid"] if "valid" in result["by_split"] else []) + [_split_name(cfg)]
  summary["table"] = references.format_table(rows, list(dict.fromkeys(splits)))
  lines = [f"{_split_name(cfg)}: " + bootstrap.describe(b, metric, "student", f"{name} reference")
           for name, b in result.get("paired_bootstrap", {}).items()
           for metric in ("macro_f1", "ndcg@10") if metric in b]
  if lines:
    summary["paired_bootstrap"] = lines
    summary["table"] += "\n\n" + "\n".join(lines)
  if jax.process_index() == 0:
    metrics_lib.write_json_atomic(summary, os.path.join(out_dir, "summary.json"))
    print(summary["table"], flush=True)
  return summary
