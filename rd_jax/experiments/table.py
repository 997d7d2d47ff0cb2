"""The paper's experiment table on our data: teacher steps, student variants, retention.

  python -m rd_jax.experiments.table --config=configs/demo.py --workdir=runs/table \
      --teacher_workdir=runs/pipeline --seeds=0,1,2

Every student variant is trained on the same query-disjoint split (config folds) with each seed,
then evaluated on the test folds; valid-fold macro-F1 is reported next to it because choices are
made on valid, never on test. Each (variant, seed) run lives in <workdir>/<variant>/seed<k>/ and
is skipped when complete, so an interrupted table resumes; a complete run is only reused with the
config it was trained with (its run_config.json): other values stop the table naming the keys.
--only_complete trains nothing and assembles the complete runs (the missing ones listed): runs of
different variants can then be made by separate invocations with their own --seeds.
A variant that would train the config's crsd row again (same_as_crsd: a value the config already
has, or an InfoNCE-only key under lambda 0) is left out and named, or refused when asked for.
Teacher rows evaluate, on the same test folds, the base model and each of cpt/sft/dpo final/
found in --teacher_workdir, the way the config annotates (`annotate.reasoning`: the teacher writes
its reasoning, or labels after the given rule rationale).
retention = student macro-F1 / teacher macro-F1 (the last teacher step found), both on the SAME
test pairs: the teacher's (all test pairs, or the seeded --teacher_pairs sample, since generation
is slow); the student's macro-F1 on those pairs comes from its eval/predictions.jsonl.
Teacher rows are kept in <workdir>/teacher_rows/ and reused while their checkpoint is unchanged.
The table refuses a --teacher_workdir whose teacher did not write the annotations the students
read (experiments/provenance.py): retention divides by the teacher the students distilled from.
Reference rows (rd_jax/references.py, fitted on the students' train split): the label prior and
the lexical model, valid and test. Each student row also gets `test_vs_lexical`: its seeds' mean
test macro-F1 minus the lexical reference's, with a 95% interval from a paired bootstrap over the
test queries (rd_jax/bootstrap.py; eval.bootstrap_resamples, 0 = off), listed under the table.
Writes table.md, table.json and table.png under <workdir>.
"""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from rd_jax import bootstrap, metrics as metrics_lib
from rd_jax import storage
from rd_jax.experiments import provenance
from rd_jax.train import run_config
from rd_jax import errors

# variant -> (stage, config overrides). Teacher-label variants need annotations with labels.
# The paper trains its student on the teacher's labels + reasoning (crsd_teacher_labels); our data
# also has gold labels, so `crsd` and its ablations use gold labels + the teacher's reasoning.
VARIANTS = {
    "baseline_gold": ("baseline", {"crsd.label_source": "gold"}),
    "student_teacher_labels": ("baseline", {"crsd.label_source": "teacher"}),
    "crsd": ("crsd", {}),                                          # gold labels + reasoning
    "crsd_teacher_labels": ("crsd", {"crsd.label_source": "teacher"}),   # the paper's setting
    # ours (#19): the teacher's label_probs (offset-adjusted, annotate/offsets.json) as soft targets
    "crsd_teacher_soft": ("crsd", {"crsd.label_source": "teacher_soft"}),
    "crsd_ce_only": ("crsd", {"crsd.lambda_infonce": 0.0}),
    "crsd_stop_grad": ("crsd", {"crsd.stop_grad_aug": True}),
    "crsd_tau_0.02": ("crsd", {"crsd.temperature": 0.02}),
    "crsd_tau_0.1": ("crsd", {"crsd.temperature": 0.1}),
    "crsd_lambda_0.1": ("crsd", {"crsd.lambda_infonce": 0.1}),
    "crsd_lambda_0.5": ("crsd", {"crsd.lambda_infonce": 0.5}),   # the demo trains lambda 0
    "crsd_lambda_1.0": ("crsd", {"crsd.lambda_infonce": 1.0}),
    "crsd_shuffled_reasoning": ("crsd", {"crsd.shuffle_reasoning": True}),
}
# Asked for by name only: soft targets need annotations with scored labels (label_probs), which
# the demo's bundled_v1 reasoning lacks.
OPT_IN_VARIANTS = ("crsd_teacher_soft",)
TEACHER_STEPS = ("base", "cpt", "sft", "dpo")
# Keys that act only through the InfoNCE term: with lambda 0 (the demo) they change nothing.
INFONCE_ONLY_KEYS = frozenset({"crsd.temperature", "crsd.stop_grad_aug", "crsd.symmetric",
                               "crsd.projection_dim", "crsd.lambda_scale",
                               "crsd.lambda_warmup_steps", "crsd.mask_duplicates",
                               "crsd.gather_negatives"})


def same_as_crsd(cfg, variant: str) -> str | None:
  """Why `variant` would train exactly the `crsd` row under `cfg`, or None if it differs.

  An ablation is a change to the config's crsd row; a change to the value the config already has,
  or to an InfoNCE-only key while the config trains lambda 0, leaves the row unchanged: training
  it again would cost a run per seed and report the crsd row under another name.
  """
  stage, overrides = VARIANTS[variant]
  if stage != "crsd" or variant == "crsd" or not overrides:
    return None
  lambda_infonce = overrides.get("crsd.lambda_infonce", cfg.crsd.lambda_infonce)
  reasons = []
  for dotted, value in overrides.items():
    section, key = dotted.split(".")
    if cfg[section][key] == value:
      reasons.append(f"the config already has {dotted}={value!r}")
    elif dotted in INFONCE_ONLY_KEYS and lambda_infonce == 0:
      reasons.append(f"{dotted} acts only through InfoNCE and the config trains "
                     "crsd.lambda_infonce=0")
    else:
      return None
  return "; ".join(reasons)

_FLAGS = {}


def _define_flags() -> None:
  """Flags only when run as a program: importing this module (tests) defines none."""
  _FLAGS.update(
      config=config_flags.DEFINE_config_file("config", None, "Pipeline config (configs/*.py).",
                                             lock_config=True),
      workdir=flags.DEFINE_string("workdir", None, "Where the table's runs and outputs go."),
      teacher_workdir=flags.DEFINE_string(
          "teacher_workdir", "", "Pipeline workdir holding cpt/sft/dpo final/ (teacher rows); "
          "'' = no teacher rows, no retention."),
      seeds=flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds per variant."),
      variants=flags.DEFINE_list(
          "variants", [v for v in VARIANTS if v not in OPT_IN_VARIANTS],
          "Variants to run (default: all but crsd_teacher_soft, which needs annotations with "
          "label_probs, and those that would train the config's crsd row again, which are named "
          "under the table; asked for by name, such a variant stops the table with exit code 2)."),
      teacher_pairs=flags.DEFINE_integer("teacher_pairs", 0, "Cap on test pairs for teacher "
                                         "rows (0 = all test pairs)."),
      teacher_valid_pairs=flags.DEFINE_integer(
          "teacher_valid_pairs", 256, "Valid-fold pairs (seeded sample; 0 = none) each teacher "
          "step is scored on first: its label offsets are fitted there (rd_jax/decision.py) and "
          "applied on test."),
      only_complete=flags.DEFINE_bool(
          "only_complete", False, "Train nothing: assemble the table from the (variant, seed) "
          "runs already complete under --workdir; the missing ones are listed in table.md and "
          "table.json (`missing_runs`), and a variant with none is left out."))


def _override(cfg, overrides: dict, seed: int):
  cfg = cfg.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.seed = seed
    for dotted, value in overrides.items():
      section, key = dotted.split(".")
      cfg[section][key] = value
  return cfg


def run_is_complete(workdir: str, variant: str, seed: int) -> bool:
  """True once run_student has evaluated (variant, seed) under `workdir`."""
  return storage.exists(os.path.join(workdir, variant, f"seed{seed}", "eval", "summary.json"))


def run_student(cfg, workdir: str, variant: str, seed: int, teacher_pairs=None) -> dict:
  """Trains + evaluates one (variant, seed); reuses a complete run.

  teacher_pairs: teacher_sample()'s (test pairs, positions of the teacher's pairs); the student's
  macro-F1 on exactly those pairs is returned as teacher_pairs_macro_f1 (for retention).
  """
  from rd_jax import stages as registry
  from rd_jax.stages import eval as eval_stage
  stage, overrides = VARIANTS[variant]
  run_dir = os.path.join(workdir, variant, f"seed{seed}")
  predictions = os.path.join(run_dir, "eval", "predictions.jsonl")
  run_cfg = _override(cfg, dict(overrides, **{"eval.split": "test"}), seed)
  with run_cfg.unlocked():
    run_cfg.eval.checkpoint = os.path.join(run_dir, stage)
  # a complete run is reused only if trained with this config (raises naming the keys)
  if run_is_complete(workdir, variant, seed):
    if run_config.check(os.path.join(run_dir, stage), run_config.for_stage(run_cfg, stage),
                        what="reuse", folder=run_dir) is None:
      logging.warning("%s predates run_config.json: reused unchecked", run_dir)
    if not storage.exists(predictions):   # a run from before eval wrote predictions
      eval_stage.run(run_cfg, run_dir)
  else:
    t0 = time.perf_counter()
    registry.run(stage, run_cfg, run_dir)
    eval_stage.run(run_cfg, run_dir)
    logging.info("%s seed %d: %.0f s", variant, seed, time.perf_counter() - t0)
  test = json.loads(storage.read_text(os.path.join(run_dir, "eval", "metrics.json")))
  train = json.loads(storage.read_text(os.path.join(run_dir, stage, "summary.json")))
  row = {"test_macro_f1": test["macro_f1"], "test_accuracy": test["accuracy"],
         "valid_macro_f1": train["valid_macro_f1"],
         "valid_macro_f1_crossfit": train.get("valid_macro_f1_crossfit"),
         "test_ndcg@10": test.get("ndcg@10"),
         "per_class_f1": {k: v["f1"] for k, v in test["per_class"].items()},
         "train_seconds": train.get("train_seconds")}
  if teacher_pairs is not None:
    test_pairs, positions = teacher_pairs
    row["teacher_pairs_macro_f1"] = _macro_f1_at(predictions, positions, cfg, test_pairs)
  return row


def teacher_sample(cfg, max_pairs: int):
  """(test pairs, positions of the teacher's pairs in them): all, or a seeded max_pairs sample."""
  from rd_jax.data import readers
  pairs, _ = readers.load_pairs(cfg.data.path, cfg)
  test = readers.train_valid_test(pairs, cfg)["test"]
  positions = np.arange(len(test))
  if max_pairs:
    positions = np.random.default_rng(0).permutation(len(test))[:max_pairs]
  return test, positions


def _macro_f1_at(predictions_path: str, positions, cfg, test) -> float:
  """Student macro-F1 on the `test` pairs at `positions`; eval wrote its predictions in test
  order, checked here pair by pair (so every position is in range)."""
  rows = [json.loads(line) for line in storage.read_text(predictions_path).splitlines()]
  if [(r["query_id"], r["product_id"]) for r in rows] != [(p.query_id, p.product_id) for p in test]:
    raise errors.DataError(f"{predictions_path} is not in the order of this config's test split")
  index = {c: i for i, c in enumerate(cfg.labels)}
  picked = [rows[i] for i in positions]
  return metrics_lib.classification_metrics([index[r["label"]] for r in picked],
                                            [index[r["prediction"]] for r in picked],
                                            list(cfg.labels))["macro_f1"]


def run_teacher_rows(cfg, teacher_workdir: str, max_pairs: int, workdir: str = "",
                     sample=None, valid_pairs: int = 256) -> dict:
  """Test-fold metrics of the base teacher and each complete cpt/sft/dpo final/.

  With `workdir`, each row is kept in <workdir>/teacher_rows/<step>.json with what it was computed
  from (checkpoint, its COMPLETE marker's time, pairs, folds); a rerun of the table reuses a row
  whose inputs are unchanged instead of generating again (minutes per step on a CPU).
  """
  from rd_jax import checkpoint
  from rd_jax.teacher import eval as teacher_eval, model as teacher_model
  from rd_jax.train.fit import make_mesh
  test, positions = sample or teacher_sample(cfg, max_pairs)   # main passes the one it reuses
  test = [test[i] for i in positions]
  from rd_jax.data import readers
  valid = readers.seeded_subset(readers.train_valid_test(readers.load_pairs(cfg.data.path, cfg)[0],
                                                         cfg)["valid"], valid_pairs, 0) if valid_pairs else []
  mesh = None
  rows = {}
  for step in TEACHER_STEPS:
    explicit = "" if step == "base" else os.path.join(teacher_workdir, step, "final")
    if step != "base" and not checkpoint.is_complete(explicit):
      continue
    key = {"step": step, "checkpoint": storage.abspath(explicit) if explicit else cfg.teacher.init,
           "written": _complete_stamp(explicit), "pairs": len(test), "max_pairs": max_pairs,
           "test_folds": list(cfg.data.test_folds), "data": cfg.data.path,
           "valid_pairs": len(valid), "prompt_version": int(cfg.teacher.prompt_version),
           "score_labels": bool(cfg.teacher.score_labels)}
    if cfg.annotate.reasoning != "generated":   # rows kept before the key: generated
      key["reasoning"] = cfg.annotate.reasoning
    cache = os.path.join(workdir, "teacher_rows", f"{step}.json") if workdir else ""
    if cache and storage.exists(cache):
      kept = json.loads(storage.read_text(cache))
      if kept.get("key") == key:
        rows[step] = kept["row"]
        logging.info("teacher row %s reused from %s", step, cache)
        continue
    if mesh is None:
      mesh = make_mesh(cfg)
    teacher = teacher_model.load_teacher(cfg, teacher_workdir, mesh, upstream=(), explicit=explicit)
    # the teacher is scored the way it annotates (annotate.reasoning): generated or given reasoning
    how = cfg.annotate.reasoning
    on_valid = (teacher_eval.evaluate_teacher(teacher.config, teacher.params, teacher.tokenizer,
                                              valid, cfg, fit_offsets=True, reasoning=how)
                if valid else {})
    result = teacher_eval.evaluate_teacher(teacher.config, teacher.params, teacher.tokenizer,
                                           test, cfg, offsets=on_valid.get("offsets"), reasoning=how)
    rows[step] = teacher_row(result, on_valid)
    if cache:
      storage.makedirs(os.path.dirname(cache))
      metrics_lib.write_json_atomic({"key": key, "row": rows[step]}, cache)
  return rows


def teacher_row(result: dict, on_valid: dict) -> dict:
  """A teacher step's row: test metrics with the offsets fitted on valid (`macro_f1`; the raw
  argmax is `macro_f1_argmax`), label distribution vs gold, and valid figures."""
  adj = result.get("adjusted")
  row = {"macro_f1": (adj or result)["macro_f1"], "accuracy": (adj or result)["accuracy"],
         "macro_f1_argmax": result["macro_f1"], "parse_rate": result.get("parse_rate"),
         "per_class_f1": {k: v["f1"] for k, v in (adj or result).get("per_class", {}).items()},
         "label_distribution": (adj or result).get("label_distribution"),
         "gold_distribution": result.get("gold_distribution"), "offsets": result.get("offsets"),
         "test_pairs": result.get("num_pairs"), "reasoning": result.get("reasoning", "generated")}
  if on_valid:
    row.update(valid_pairs=on_valid.get("num_pairs"), valid_macro_f1_argmax=on_valid["macro_f1"],
               valid_macro_f1_fitted=(on_valid.get("adjusted") or {}).get("macro_f1"),
               valid_macro_f1_crossfit=on_valid.get("macro_f1_offsets_crossfit"))
  return row


def reference_rows(cfg) -> dict:
  """The references as rows (rd_jax/references.py, fitted on the students' train split): the
  label prior ("majority": a student at its macro-F1 learnt nothing beyond the prior) and the
  lexical model ("lexical": what words alone tell). Each: valid and test figures, `label`."""
  from rd_jax import ranking, references
  refs, splits = references.fit_for_config(cfg)
  gains = ranking.label_gains(cfg.labels, cfg.eval.get("gains"))
  rows = {}
  for name, ref in refs.items():
    valid, test = (references.score(ref, splits[s], cfg.labels, gains) for s in ("valid", "test"))
    rows[name] = {"label": (f"always {ref.info['label']} (train prior; reference)" if
                            name == "majority" else
                            f"lexical TF-IDF + overlap LR, C={ref.info['C']} (reference)"),
                  "test_macro_f1": test["macro_f1"], "test_accuracy": test["accuracy"],
                  "valid_macro_f1": valid["macro_f1"], "test_ndcg@10": test["ndcg@10"],
                  "valid_ndcg@10": valid["ndcg@10"], "test_pairs": test["num_examples"],
                  "per_class_f1": test["per_class_f1"], "info": ref.info}
  return rows


def lexical_comparisons(cfg, workdir: str, student: dict) -> dict:
  """{variant: bootstrap.paired_query_bootstrap of (its seeds' mean test macro-F1) - (the lexical
  reference's)}: both scored on the same resamples of the test fold's queries, the students
  through their eval/predictions.jsonl (matched to the test pairs by query_id, product_id).
  {} without a lexical reference or with eval.bootstrap_resamples 0."""
  from rd_jax import ranking, references
  from rd_jax.experiments import compare
  refs, splits = references.fit_for_config(cfg)
  resamples = cfg.eval.get("bootstrap_resamples", 0)
  if "lexical" not in refs or not resamples:
    return {}
  test, labels = splits["test"], list(cfg.labels)
  keys = [(str(p.query_id), str(p.product_id)) for p in test]
  lexical = refs["lexical"].predict_proba(test).argmax(-1)
  out = {}
  for variant, runs in student.items():
    preds = []
    for seed in runs:
      path = os.path.join(workdir, variant, f"seed{seed}", "eval", "predictions.jsonl")
      preds.append(compare.predictions_at(path, keys, labels,
                                          "re-run its eval on this config's test folds"))
    out[variant] = bootstrap.paired_query_bootstrap(
        ranking.query_keys(test), [p.label_id for p in test], np.asarray(preds), lexical,
        len(labels), resamples=resamples, seed=cfg.eval.get("bootstrap_seed", 0))
  return out


def last_teacher_step(teacher_workdir: str) -> str | None:
  """The step retention divides by: the last of cpt/sft/dpo with a complete final/ (None: base)."""
  from rd_jax import checkpoint
  done = [s for s in TEACHER_STEPS[1:]
          if checkpoint.is_complete(os.path.join(teacher_workdir, s, "final"))]
  return done[-1] if done else None


def _complete_stamp(final_dir: str) -> int | None:
  """mtime (ns) of final/COMPLETE: a retrained step invalidates its cached row."""
  marker = os.path.join(final_dir, "COMPLETE") if final_dir else ""
  return storage.mtime_ns(marker) if marker and storage.exists(marker) else None


def summarise(student: dict, teacher: dict) -> dict:
  final_teacher = next((teacher[s] for s in reversed(TEACHER_STEPS) if s in teacher), None)
  rows = {}
  for variant, seeds in student.items():
    f1 = np.array([r["test_macro_f1"] for r in seeds.values()])
    valid = np.array([r["valid_macro_f1"] for r in seeds.values()])
    row = {"seeds": len(f1), "test_macro_f1_mean": float(f1.mean()),
           "test_macro_f1_std": float(f1.std(ddof=1)) if len(f1) > 1 else 0.0,
           "valid_macro_f1_mean": float(valid.mean()),
           "valid_macro_f1_crossfit_mean": _mean_or_none(
               [r.get("valid_macro_f1_crossfit") for r in seeds.values()]),
           "test_ndcg@10_mean": _mean_or_none([r.get("test_ndcg@10") for r in seeds.values()]),
           "test_accuracy_mean": float(np.mean([r["test_accuracy"] for r in seeds.values()])),
           "per_class_f1_mean": {c: float(np.mean([r["per_class_f1"][c] for r in seeds.values()]))
                                 for c in next(iter(seeds.values()))["per_class_f1"]}}
    on_teacher_pairs = [r.get("teacher_pairs_macro_f1") for r in seeds.values()]
    if all(v is not None for v in on_teacher_pairs):
      row["teacher_pairs_macro_f1_mean"] = float(np.mean(on_teacher_pairs))
    if final_teacher and final_teacher["macro_f1"] > 0 and "teacher_pairs_macro_f1_mean" in row:
      ret = np.array(on_teacher_pairs) / final_teacher["macro_f1"]   # same pairs as the teacher
      row.update(retention_mean=float(ret.mean()),
                 retention_std=float(ret.std(ddof=1)) if len(ret) > 1 else 0.0)
    rows[variant] = row
  return rows


def _mean_or_none(values):
  return float(np.mean(values)) if values and all(v is not None for v in values) else None


def _fmt(value, digits: int = 4) -> str:
  return "—" if value is None else f"{value:.{digits}f}"


def _per_class(f1: dict, labels: list[str]) -> str:
  return " | ".join(f"{f1.get(c, 0.0):.3f}" for c in labels)


def markdown(rows: dict, teacher: dict, references: dict | None = None,
             labels: list[str] = (), caption: str = "") -> str:
  """Teacher rows, then reference rows (reference_rows) and student rows (means over seeds),
  each with per-class test F1."""
  labels = list(labels) or sorted(next(iter(teacher.values()), {}).get("per_class_f1", {}))
  head = "".join(f" {c} F1 |" for c in labels)
  rule = " --- |" * len(labels)
  out = [caption, ""] if caption else []
  out += [f"| teacher step | test macro-F1 | argmax | valid macro-F1 argmax (pairs) | accuracy | "
          f"parse rate | labels (gold) |{head}", f"| --- | --- | --- | --- | --- | --- | --- |{rule}"]
  out += [f"| {s} | {r['macro_f1']:.4f} | {_fmt(r.get('macro_f1_argmax'))} | "
          f"{_fmt(r.get('valid_macro_f1_argmax'))} ({r.get('valid_pairs', 0)}) | {r['accuracy']:.4f} | "
          f"{_fmt(r.get('parse_rate'), 3)} | {_shares(r.get('label_distribution'), r.get('gold_distribution'))} | "
          f"{_per_class(r.get('per_class_f1', {}), labels)} |"
          for s, r in teacher.items()] or ["| (no teacher rows) | | | | | | |" + " |" * len(labels)]
  out += ["", "| student variant | seeds | test macro-F1 (mean ± std) | valid macro-F1 | "
          "valid cross-fitted | test accuracy | test nDCG@10 | macro-F1 on the teacher's pairs | "
          "retention (same pairs) |" + head,
          f"| --- | --- | --- | --- | --- | --- | --- | --- | --- |{rule}"]
  for ref in (references or {}).values():
    out.append(f"| {ref['label']} | — | {ref['test_macro_f1']:.4f} | "
               f"{_fmt(ref.get('valid_macro_f1'))} | — | "   # no cross-fitted offsets: no offsets
               f"{ref['test_accuracy']:.4f} | {_fmt(ref.get('test_ndcg@10'))} | — | — | "
               f"{_per_class(ref['per_class_f1'], labels)} |")
  for v, r in rows.items():
    ret = (f"{r['retention_mean']:.3f} ± {r['retention_std']:.3f}" if "retention_mean" in r
           else "—")
    on_teacher = (f"{r['teacher_pairs_macro_f1_mean']:.4f}" if "teacher_pairs_macro_f1_mean" in r
                  else "—")
    spread = f" ± {r['test_macro_f1_std']:.4f}" if r["seeds"] > 1 else " (one seed)"
    out.append(f"| {v} | {r['seeds']} | {r['test_macro_f1_mean']:.4f}{spread} | "
               f"{r['valid_macro_f1_mean']:.4f} | "
               f"{_fmt(r.get('valid_macro_f1_crossfit_mean'))} | "
               f"{r['test_accuracy_mean']:.4f} | {_fmt(r.get('test_ndcg@10_mean'))} | "
               f"{on_teacher} | {ret} | "
               f"{_per_class(r.get('per_class_f1_mean', {}), labels)} |")
  versus = ["- " + bootstrap.describe(r["test_vs_lexical"], "macro_f1",
                                     f"{v} (mean of {r['seeds']} seeds)", "lexical reference")
            for v, r in rows.items() if "test_vs_lexical" in r]
  if versus:
    out += ["", "Each student row against the lexical reference on the test fold (the interval "
            "resamples the test queries; it does not include seed variance):"] + versus
  return "\n".join(out) + "\n"


def _shares(predicted: dict | None, gold: dict | None) -> str:
  """"E 0.62 (0.51), S 0.20 (0.27), ...": the teacher's label shares, gold's in brackets."""
  if not predicted:
    return "—"
  return ", ".join(f"{l[:1]} {v:.2f}" + (f" ({gold[l]:.2f})" if gold and l in gold else "")
                   for l, v in predicted.items())


def plot(rows: dict, path: str, references: dict | None = None) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(rows)
  fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names)), 4))
  ax.bar(range(len(names)), [rows[n]["test_macro_f1_mean"] for n in names],
         yerr=[rows[n]["test_macro_f1_std"] for n in names], capsize=3)
  ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
  for (name, ref), style in zip((references or {}).items(), ("--", ":")):
    # the prior (bars at it learnt nothing beyond it) and the lexical model
    ax.axhline(ref["test_macro_f1"], color="grey", linestyle=style, linewidth=1,
               label=f"{name} reference ({ref['test_macro_f1']:.3f})")
  if references:
    ax.legend(loc="lower right", fontsize=8)
  ax.set_ylabel("test macro-F1")
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110)
  plt.close(fig)
  storage.write_bytes_atomic(path, buffer.getvalue())


def main(argv):
  del argv
  from rd_jax import cli_setup
  cli_setup.quiet_library_logs()
  cli_setup.compilation_cache()   # every seed and variant reuses the compiled steps
  cfg, workdir = _FLAGS["config"].value, _FLAGS["workdir"].value
  seeds, variants = _FLAGS["seeds"].value, _FLAGS["variants"].value
  teacher_workdir = _FLAGS["teacher_workdir"].value
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown:
    raise app.UsageError(f"unknown variants {unknown}; known: {list(VARIANTS)}", exitcode=2)
  same = {v: why for v in variants if (why := same_as_crsd(cfg, v))}
  if same and _FLAGS["variants"].present:
    raise app.UsageError(
        "these variants would train the crsd row again: " + "; ".join(
            f"{v}: {why}" for v, why in same.items()) + ". Leave them out, or measure the "
        "InfoNCE ablations around a crsd row that trains InfoNCE, in another --workdir: "
        "--config.crsd.lambda_infonce=0.5", exitcode=2)
  for variant, why in same.items():
    logging.warning("%s left out: it would train the crsd row again (%s)", variant, why)
  variants = [v for v in variants if v not in same]
  storage.makedirs(workdir)
  t0 = time.perf_counter()
  max_pairs = _FLAGS["teacher_pairs"].value
  teacher_check = (provenance.check_teacher_wrote_annotations(
      cfg, teacher_workdir, last_teacher_step(teacher_workdir)) if teacher_workdir else None)
  sample = teacher_sample(cfg, max_pairs) if teacher_workdir else None
  teacher = (run_teacher_rows(cfg, teacher_workdir, max_pairs, workdir, sample,
                              _FLAGS["teacher_valid_pairs"].value) if sample else {})
  student, missing = {}, []
  for variant in variants:
    if (VARIANTS[variant][1].get("crsd.label_source") in ("teacher", "teacher_soft")
        and cfg.data.reasoning_source != "annotations"):
      logging.warning("%s skipped: it needs teacher annotations (data.reasoning_source)", variant)
      continue
    runs = {}
    for s in map(int, seeds):
      if _FLAGS["only_complete"].value and not run_is_complete(workdir, variant, s):
        missing.append(f"{variant}/seed{s}")
        continue
      runs[s] = run_student(cfg, workdir, variant, s, sample)
    if runs:
      student[variant] = runs
  if missing:
    logging.warning("--only_complete: %d runs not complete, left out: %s", len(missing), missing)
  rows = summarise(student, teacher)
  references = reference_rows(cfg)
  for variant, boot in lexical_comparisons(cfg, workdir, student).items():
    rows[variant]["test_vs_lexical"] = boot
  result = {"teacher": teacher, "students": rows, "runs": student, "references": references,
            "missing_runs": missing,
            "same_as_crsd": same,
            "teacher_check": teacher_check,
            "config": {"seeds": seeds, "reasoning_source": cfg.data.reasoning_source,
                       "teacher_pairs": int(len(sample[1])) if sample else 0,
                       "teacher_valid_pairs": _FLAGS["teacher_valid_pairs"].value if sample else 0,
                       "train_steps": cfg.train.num_steps, "batch_size": cfg.train.batch_size},
            "seconds": round(time.perf_counter() - t0, 1)}
  metrics_lib.write_json_atomic(result, os.path.join(workdir, "table.json"))
  caption = (f"Teacher rows: {len(sample[1])} of the {len(sample[0])} test pairs. Students: all "
             f"{references['majority']['test_pairs']} test pairs, {len(seeds)} seeds, "
             f"{cfg.train.num_steps} steps; retention = the student's macro-F1 on the teacher's "
             "pairs / the last teacher step's." if sample else "")
  if missing:
    caption += (" " if caption else "") + (f"Not run yet (--only_complete), left out: "
                                           f"{', '.join(missing)}.")
  if same:
    caption += (" " if caption else "") + (
        "Left out, the same training as the crsd row under this config: "
        + "; ".join(f"{v} ({why})" for v, why in same.items()) + ".")
  text = markdown(rows, teacher, references, list(cfg.labels), caption)
  storage.write_text_atomic(os.path.join(workdir, "table.md"), text)
  if rows:
    plot(rows, os.path.join(workdir, "table.png"), references)
  print(text)


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["config", "workdir"])
  errors.run_cli(lambda: app.run(main), "python -m rd_jax.experiments.table")
