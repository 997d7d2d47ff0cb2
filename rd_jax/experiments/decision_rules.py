"""Decision rules compared on finished students, by what they give on queries they were not fitted on.

  python -m rd_jax.experiments.decision_rules --config=configs/demo.py \
      --checkpoints=runs/s0/crsd,runs/s1/crsd,runs/s2/crsd --out=runs/rules.json [--test]

Each rule turns a student's logits z [N, C] into labels argmax_c (z + b)_c with offsets b [C]
fitted on valid (rd_jax/decision.py):
  argmax       b = 0: nothing fitted
  offsets      C - 1 free offsets by coordinate ascent on valid macro-F1 (decision.fit_offsets:
               the rule the stages shipped until session 22)
  prior_scale  b = tau * (-log p_train), one strength tau on valid macro-F1 (decision.fit_prior_scale:
               student.decision_rule's default since session 22)
The in-sample valid figure favours the rule with more parameters, so it cannot choose between
rules; the cross-fitted one (each query-disjoint fold of valid decided by the rule fitted on the
other folds, `student.offsets_crossfit_folds` of them) can. With --test, test is scored with each
rule fitted on all of valid: read afterwards, never used to choose. An experiment: it writes no
checkpoint and changes no student.
"""

from __future__ import annotations

import json

import jax
import numpy as np
from absl import app, flags

from ml_collections import config_flags

from rd_jax import decision, metrics as metrics_lib, storage
from rd_jax.experiments import interpolate
from rd_jax.stages import eval as eval_stage
from rd_jax.student import data as data_lib, predict as predict_lib
from rd_jax import errors

RULES = ("argmax",) + decision.RULES
_FLAGS = {}


def _define_flags() -> None:
  """Flags only when run as a program: importing this module (tests) defines none."""
  _FLAGS["config"] = config_flags.DEFINE_config_file(
      "config", None, "The config the students were trained with.", lock_config=True)
  _FLAGS["checkpoints"] = flags.DEFINE_list(
      "checkpoints", None, "Student stage folders (<workdir>/crsd, <workdir>/baseline) or final/.")
  _FLAGS["out"] = flags.DEFINE_string("out", None, "JSON result (written atomically).")
  _FLAGS["test"] = flags.DEFINE_bool("test", False, "Also score test, each rule fitted on valid.")


def fitters(train_label_counts) -> dict:
  """{rule: fit(logits [N, C], labels [N]) -> offsets [C]}: the argmax and decision.fitter's."""
  return {"argmax": lambda z, y: np.zeros(np.shape(z)[1]),
          **{rule: decision.fitter(rule, train_label_counts) for rule in decision.RULES}}


def compare(logits: dict, gold: dict, groups, train_label_counts, folds: int) -> dict:
  """{rule: figures} for one student. logits/gold: {"valid": [N, C] / [N], optionally "test"};
  groups: valid's query ids [N]; train_label_counts [C]."""
  if folds < 2:
    raise errors.ConfigError(f"student.offsets_crossfit_folds = {folds}: comparing rules needs >= 2 folds")
  c = np.shape(logits["valid"])[1]
  out = {}
  for rule, fit in fitters(train_label_counts).items():
    offsets = fit(logits["valid"], gold["valid"])
    crossfit = decision.cross_fitted_predictions(logits["valid"], gold["valid"], groups, folds,
                                                 fit=fit)
    figures = {"offsets": np.round(offsets, 4).tolist(),
               "valid_macro_f1": decision.macro_f1(gold["valid"],
                                                   decision.predict(logits["valid"], offsets), c),
               "valid_macro_f1_crossfit": decision.macro_f1(gold["valid"], crossfit, c)}
    if "test" in logits:
      figures["test_macro_f1"] = decision.macro_f1(gold["test"],
                                                   decision.predict(logits["test"], offsets), c)
    out[rule] = figures
  return out


def run(cfg, checkpoints: list[str], out: str | None = None, test: bool = False) -> dict:
  if not checkpoints:
    raise errors.ConfigError("--checkpoints needs at least one student")
  splits = ("valid", "test") if test else ("valid",)
  folds = int(cfg.student.get("offsets_crossfit_folds", 0))
  result = {"checkpoints": [storage.abspath(c) for c in checkpoints], "rules": list(RULES),
            "crossfit_folds": folds, "students": {}}
  for ckpt in checkpoints:
    meta, model, params, mesh = eval_stage.restore_student(cfg, ckpt)
    counts = meta.get("train_label_counts")
    if not counts:
      raise errors.ConfigError(f"{ckpt}: its final/meta.json has no train_label_counts (the prior_scale "
                               "rule needs the train label frequencies)")
    predict = predict_lib.make_predict_fn(model, mesh)
    tokenizer = data_lib.load_tokenizer(meta["tokenizer"])
    with eval_stage.report_dir(out) as out_dir:   # beside --out, else a temporary folder
      pairs = {s: eval_stage.pairs_of(cfg, s, out_dir, meta.get("item_template")) for s in splits}
    scored = {s: interpolate.student_logits(predict, params, pairs[s], tokenizer, cfg, meta)
              for s in splits}
    logits = {s: z for s, (z, _) in scored.items()}
    gold = {s: np.asarray(y) for s, (_, y) in scored.items()}
    result["students"][storage.abspath(ckpt)] = compare(
        logits, gold, [p.query_id for p in pairs["valid"]], counts, folds)
  students = list(result["students"].values())
  result["mean"] = {rule: {k: float(np.mean([s[rule][k] for s in students]))
                           for k in students[0][rule] if k != "offsets"}
                    for rule in RULES}
  result = json.loads(json.dumps(result))
  if out and jax.process_index() == 0:
    metrics_lib.write_json_atomic(result, out)
  return result


def main(argv):
  del argv
  result = run(_FLAGS["config"].value, _FLAGS["checkpoints"].value, _FLAGS["out"].value,
               _FLAGS["test"].value)
  print(json.dumps({"mean": {r: {k: round(v, 4) for k, v in m.items()}
                             for r, m in result["mean"].items()},
                    "out": _FLAGS["out"].value}, indent=1))


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["config", "checkpoints", "out"])
  errors.run_cli(lambda: app.run(main), "python -m rd_jax.experiments.decision_rules")
