"""How much of a student's shortfall on an evaluation split is its decision rule, how much its
logits: the same logits decided four ways, beside the lexical reference decided the same ways.

  python -m rd_jax.experiments.decision_gap --config=configs/demo.py \
      --checkpoints=<run>/crsd,<run2>/crsd [--split=test] [--out=gap.json]

For each student checkpoint (and the lexical reference, references.py, fitted once on the config's
train split with the config's item template) on the `--split` pairs (default test), macro-F1 of:
  argmax          the plain argmax;
  valid_offsets   the shipped rule: per-class offsets fitted on valid (the student's meta.json
                  `decision_offsets`; for the reference, fitted on its valid log-probabilities);
  crossfit        offsets fitted on the split itself, each of `--folds` query folds decided by
                  offsets fitted on the others (decision.crossfit_macro_f1): what a rule fitted
                  on these queries' neighbours would reach;
  oracle          offsets fitted on the whole split (in-sample: an upper bound of any per-class
                  offset rule on these logits).
If a student's `oracle` is under the reference's `argmax`, no decision rule closes the gap: the
logits themselves carry less signal on these queries. A DIAGNOSTIC that reads the split it scores:
it chooses nothing (RESULTS.md, #17).
"""

from __future__ import annotations

import json
import os

import numpy as np

from rd_jax import decision, references
from rd_jax.metrics import write_json_atomic
from rd_jax import errors


def decide_four_ways(logits: np.ndarray, gold: np.ndarray, query_ids, valid_offsets,
                     folds: int) -> dict:
  """{argmax, valid_offsets, crossfit, oracle} macro-F1 of logits [N, C] against gold [N]."""
  c = logits.shape[1]
  row = {"argmax": decision.macro_f1(gold, logits.argmax(-1), c),
         "valid_offsets": decision.macro_f1(gold, decision.predict(logits,
                                                                   np.asarray(valid_offsets)), c),
         "crossfit": decision.crossfit_macro_f1(logits, gold, list(query_ids), folds),
         "oracle": decision.macro_f1(gold, decision.predict(logits,
                                                            decision.fit_offsets(logits, gold)), c)}
  return {k: None if v is None else round(float(v), 4) for k, v in row.items()}


def reference_row(cfg, split: str, folds: int) -> dict:
  refs, splits = references.fit_for_config(cfg)
  if "lexical" not in refs:
    return {}
  lex, on, valid = refs["lexical"], splits[split], splits["valid"]
  log_p = lambda pairs: np.log(np.clip(lex.predict_proba(pairs), 1e-12, 1.0))    # [N, C]
  gold = lambda pairs: np.asarray([p.label_id for p in pairs])
  offsets = decision.fit_offsets(log_p(valid), gold(valid))
  return decide_four_ways(log_p(on), gold(on), [p.query_id for p in on], offsets, folds)


def student_row(cfg, ckpt: str, split: str, folds: int, scratch: str) -> dict:
  from rd_jax.stages import eval as eval_stage
  from rd_jax.student import data as data_lib, predict as predict_lib
  meta, model, params, mesh = eval_stage.restore_student(cfg, ckpt)
  pairs = eval_stage.pairs_of(cfg, split, scratch, meta.get("item_template"))
  logits, gold = predict_lib.predict_logits(
      predict_lib.make_predict_fn(model, mesh), params, pairs,
      data_lib.load_tokenizer(meta["tokenizer"]), cfg, max_len_std=meta.get("max_len_std"),
      match_hint=meta.get("match_hint", ""))
  offsets = meta.get("decision_offsets") or [0.0] * len(cfg.labels)
  return decide_four_ways(np.asarray(logits), np.asarray(gold), [p.query_id for p in pairs],
                          offsets, folds)


def run(cfg, checkpoints, split: str = "test", folds: int = 3) -> dict:
  """The lexical reference and each student, four ways (eval's data report: a temporary folder)."""
  from rd_jax.stages import eval as eval_stage
  out = {"split": split, "folds": folds, "lexical_reference": reference_row(cfg, split, folds)}
  with eval_stage.report_dir(None) as folder:
    students = {ckpt: student_row(cfg, ckpt, split, folds, folder) for ckpt in checkpoints}
  out["students"] = students
  if students:
    out["students_mean"] = {k: round(float(np.mean([r[k] for r in students.values()
                                                     if r[k] is not None])), 4)
                            for k in next(iter(students.values()))}
  return out


_FLAGS = {}


def main(argv):
  del argv
  f = _FLAGS
  ckpts = [c for c in f["checkpoints"].value.split(",") if c]
  out = run(f["config"].value, ckpts, f["split"].value, f["folds"].value)
  print(json.dumps(out, indent=1))
  if f["out"].value:
    write_json_atomic(out, os.path.abspath(f["out"].value))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  # defined only when run as a program: importing this module (tests) defines no absl flag
  _FLAGS["config"] = config_flags.DEFINE_config_file("config", None, "Config file.",
                                                     lock_config=True)
  _FLAGS["checkpoints"] = flags.DEFINE_string(
      "checkpoints", "", "Comma-separated student stage dirs (<workdir>/crsd) or final/ dirs.")
  _FLAGS["split"] = flags.DEFINE_enum("split", "test", ["valid", "test"], "Pairs to score.")
  _FLAGS["folds"] = flags.DEFINE_integer("folds", 3, "Query folds of the cross-fitted rule.")
  _FLAGS["out"] = flags.DEFINE_string("out", "", "Optional JSON output file.")
  errors.run_cli(lambda: app.run(main), "python -m rd_jax.experiments.decision_gap")
