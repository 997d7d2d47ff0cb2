"""`--stage=calibrate`: a finished student's decision rule re-fitted on a labelled sample of the
traffic it will serve.

  python -m rd_jax.main --stage=calibrate --config=configs/demo.py --workdir=runs/demo \
      --config.calibrate.path=labelled_sample.jsonl
  python -m rd_jax.convert --checkpoint=runs/demo/calibrate --output=runs/demo/hf_calibrated

Why. The rule (C per-class logit offsets b, prediction = argmax_c (z_c + b_c); rd_jax/decision.py)
is fitted on valid, so it adopts valid's label mix. Served where the mix differs, it puts the class
boundaries in the wrong place: on the demo's test fold (38% Substitute against valid's 20%) the
rule fitted on valid gives macro-F1 0.296, one fitted on the fold's own neighbouring queries 0.343
(README "Results", session 39). Label a few hundred pairs of the traffic, re-fit the offsets there;
the encoder and the wide term are not touched.

checkpoint: calibrate.checkpoint, or <workdir>/crsd (a stage folder or its final/).
data:       calibrate.path, a labelled pairs file in any format data.path reads.
rule:       calibrate.rule: offsets (default; C - 1 free offsets: a label-mix shift from p to q
            moves the Bayes decision's offset of class c by log(q_c / p_c), one amount per class)
            or prior_scale (one tau along -log p_train, p_train the student's train label counts
            from its meta.json: what the stages fit on a small valid split; a shift need not
            follow that direction).
Writes <workdir>/calibrate/final/ (the student's params unchanged; meta.json with the re-fitted
`decision_offsets`, the student's as `decision_offsets_before`, and `calibrated_on`), which eval
(`--config.eval.checkpoint=<workdir>/calibrate`), export (`--config.export.checkpoint=...`) and
`rd_jax.convert --checkpoint=...` take like any student; and <workdir>/calibrate/metrics.json: on
the file, macro-F1 under the student's offsets (`before`), under the new ones (`after_in_sample`:
fitted on the same pairs, optimistic), and `after_crossfit` (each of calibrate.crossfit_folds
query folds decided by offsets fitted on the others: the estimate to trust for further traffic of
that mix), with the file's label mix beside the student's train mix (the labels it trained on,
drawn cross-query negatives included), and `train_overlap`: the file's queries and pairs that the
training split of data.path holds (a warning if any: offsets fitted on queries the student trained
on are fitted to its in-sample scores); summary.json last.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging

from rd_jax import checkpoint, decision, errors, metrics as metrics_lib, storage
from rd_jax.student import data as data_lib, predict as predict_lib
from rd_jax.student.restore import restore_student


def _file_config(cfg):
  """cfg whose eval.path is calibrate.path, so the eval loader reads (and reports) the file."""
  out = cfg.copy_and_resolve_references()
  with out.unlocked():
    out.eval.path = cfg.calibrate.path
  return out


def _mix(counts) -> list[float]:
  counts = np.asarray(counts, np.float64)
  return (counts / max(counts.sum(), 1.0)).round(4).tolist()


def run(cfg, workdir: str) -> dict:
  if not cfg.calibrate.path:
    raise errors.ConfigError("--stage=calibrate needs a labelled file of the traffic to calibrate "
                             "on: --config.calibrate.path=<file> (JSONL / CSV / Parquet, with "
                             "labels)")
  stage_dir = os.path.join(workdir, "calibrate")
  storage.makedirs(stage_dir)
  ckpt = cfg.calibrate.checkpoint or os.path.join(workdir, "crsd")
  meta, model, params, mesh = restore_student(cfg, ckpt)
  rule = cfg.calibrate.rule
  train_counts = meta.get("train_label_counts")
  if rule == "prior_scale" and not train_counts:
    raise checkpoint.CheckpointError(f"{ckpt!r}: its meta.json has no train_label_counts, which "
                                     "calibrate.rule=prior_scale needs (crsd and baseline write "
                                     "them); use --config.calibrate.rule=offsets")
  file_cfg = _file_config(cfg)
  pairs, source, report = data_lib.load_eval_pairs(file_cfg, stage_dir, meta.get("item_template"))
  num_classes = len(cfg.labels)
  gold_counts = np.bincount([p.label_id for p in pairs], minlength=num_classes)
  if (gold_counts > 0).sum() < 2:
    raise errors.DataError(f"{cfg.calibrate.path}: its {len(pairs)} labelled pairs hold one label "
                           f"only ({cfg.labels[int(gold_counts.argmax())]}): a decision rule "
                           "between classes cannot be fitted on it")
  tokenizer = data_lib.load_tokenizer(meta["tokenizer"])
  predict = predict_lib.make_predict_fn(model, mesh)
  logits, gold = predict_lib.predict_logits(predict, params, pairs, tokenizer, cfg,
                                            max_len_std=meta.get("max_len_std"),
                                            match_hint=meta.get("match_hint", ""))
  logits = np.asarray(logits, np.float64)                                     # [N, C] raw
  before = np.asarray(meta.get("decision_offsets") or [0.0] * num_classes, np.float64)
  fit = decision.fitter(rule, train_counts)
  after = np.asarray(fit(logits, gold), np.float64)
  f1 = lambda offsets: decision.macro_f1(gold, decision.predict(logits, offsets), num_classes)
  folds = int(cfg.calibrate.crossfit_folds)
  queries = [p.query_id for p in pairs]
  num_queries = len(set(map(str, queries)))
  crossfit = decision.crossfit_macro_f1(logits, gold, queries, folds, fit=fit)
  m = {"before": f1(before), "after_in_sample": f1(after), "after_crossfit": crossfit,
       "argmax": f1(None)}
  if crossfit is not None and crossfit < m["before"]:
    logging.warning("calibrate: on held-out queries of %s the re-fitted rule gives %.4f, the "
                    "student's own %.4f: keep the student's rule (or label more pairs)", source,
                    crossfit, m["before"])
  if crossfit is None and folds:   # folds 0: the user turned the cross-fitted figure off
    logging.warning("calibrate: %s holds %d queries, fewer than calibrate.crossfit_folds = %d: no "
                    "cross-fitted figure; the in-sample one is optimistic", source, num_queries,
                    folds)
  result = {
      "checkpoint": storage.abspath(checkpoint.resolve_final(ckpt)), "data": source,
      "data_report": report, "pairs": len(pairs), "queries": num_queries,
      "decision_rule": rule, "decision_offsets_before": before.tolist(),
      "decision_offsets": (after + 0.0).tolist(), "macro_f1": m,
      "crossfit_folds": folds,
      "label_mix": {"file": _mix(gold_counts),
                    "student_train": _mix(train_counts) if train_counts else None},
      "labels": list(cfg.labels),
      "train_overlap": data_lib.train_overlap(cfg, pairs, meta.get("item_template"),
                                              "calibrate.path", cfg.calibrate.path),
  }
  calibrated = dict(meta, decision_offsets=result["decision_offsets"],
                    decision_offsets_before=result["decision_offsets_before"],
                    calibrated_on={"path": source, "pairs": len(pairs),
                                   "label_counts": gold_counts.tolist(), "rule": rule,
                                   "from": result["checkpoint"]})
  checkpoint.save_final(os.path.join(stage_dir, "final"), params, calibrated)
  if jax.process_index() == 0:
    metrics_lib.write_json_atomic(result, os.path.join(stage_dir, "metrics.json"))
  logging.info("calibrate on %s (%d pairs, %d queries): macro-F1 %.4f with the student's offsets, "
               "%.4f re-fitted (in-sample), %s cross-fitted; offsets %s -> %s", source, len(pairs),
               num_queries, m["before"], m["after_in_sample"],
               "n/a" if crossfit is None else f"{crossfit:.4f}",
               np.round(before, 3).tolist(), np.round(after, 3).tolist())
  summary = {"stage": "calibrate", "output": os.path.join(stage_dir, "final"),
             "macro_f1_before": m["before"], "macro_f1_after_in_sample": m["after_in_sample"],
             "macro_f1_after_crossfit": crossfit, "pairs": len(pairs), "data": source}
  if jax.process_index() == 0:   # last: its presence + final/COMPLETE = the stage is done
    metrics_lib.write_json_atomic(summary, os.path.join(stage_dir, "summary.json"))
  return summary
