"""A student recipe against the references on every query of the data: rotating query folds.

  python -m rd_jax.experiments.crossval --config=configs/demo.py --workdir=runs/cv \
      --stage=baseline --seeds=0 [--rotations=0,1,2,3]

One test fold of a small dataset holds few queries (the bundled split: 26), and a query's pairs
share its text and label mix, so a single fold decides little: the eval's query bootstrap gives
the demo student - lexical reference on test an interval 13 points wide. Rotating the folds makes
every query a test query once. ROTATIONS (train | valid | test folds of the bundled 1-4):

  0: 1,3 | 2 | 4    the demo's split
  1: 1,4 | 3 | 2
  2: 2,4 | 1 | 3
  3: 2,3 | 4 | 1

each fold is test once and valid once. Per rotation and seed, `<workdir>/r<k>/seed<s>/` holds the
stage (trained as `--stage=<stage>` would, with that rotation's folds; its decision rule fitted on
that rotation's valid fold) and its `--stage=eval` on the test fold; a complete run is reused if
its run_config.json matches. The lexical and majority references are fitted per rotation exactly
as eval fits them (train folds; the lexical C on the valid fold). Nothing here chooses a recipe.

Reported (`<workdir>/crossval.json`, `crossval.md`):
  per rotation: test macro-F1 and nDCG@10 of the student (mean over seeds) and the references;
  pooled: macro-F1 over all rotations' test pairs at once (each pair predicted by the model of its
    rotation; the seed mean of the pooled figures), and the mean of the per-rotation figures;
  student - lexical, pooled, with a paired query bootstrap over all the test queries
    (rd_jax/bootstrap.py; the student's seeds averaged on each resample);
  one-label queries: the share of test queries whose items get one label (>= 90% of them) from
    the student, the lexical reference and gold: a student that labels the query instead of each
    item shows here.
The students' pairs are read from eval/predictions.jsonl, matched by (query_id, product_id).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from rd_jax import bootstrap, metrics as metrics_lib, storage
from rd_jax.train import run_config
from rd_jax import errors

# (train folds, valid folds, test folds); rotation 0 is configs/base's default split
ROTATIONS = (((1, 3), (2,), (4,)),
             ((1, 4), (3,), (2,)),
             ((2, 4), (1,), (3,)),
             ((2, 3), (4,), (1,)))
_FLAGS = {}


def _define_flags() -> None:
  """Flags only when run as a program: importing this module (tests) defines none."""
  _FLAGS.update(
      config=config_flags.DEFINE_config_file("config", None, "Pipeline config (configs/*.py).",
                                             lock_config=True),
      workdir=flags.DEFINE_string("workdir", None, "Where the rotations' runs and results go."),
      stage=flags.DEFINE_enum("stage", "baseline", ["baseline", "crsd"],
                              "The student stage each rotation trains (crsd needs reasoning for "
                              "every rotation's train folds)."),
      seeds=flags.DEFINE_list("seeds", ["0"], "Seeds per rotation."),
      rotations=flags.DEFINE_list("rotations", [str(k) for k in range(len(ROTATIONS))],
                                  "Which of ROTATIONS to run (indices)."),
      only_complete=flags.DEFINE_bool("only_complete", False,
                                      "Pool the complete runs only; train nothing."))


def rotation_config(cfg, rotation: int, seed: int, stage: str, run_dir: str):
  """cfg with the rotation's folds, the seed, and eval of `run_dir/<stage>` on the test folds."""
  if not 0 <= rotation < len(ROTATIONS):
    raise errors.ConfigError(f"rotation {rotation} is not one of 0..{len(ROTATIONS) - 1}")
  train, valid, test = ROTATIONS[rotation]
  out = cfg.copy_and_resolve_references()
  with out.unlocked():
    out.data.train_folds, out.data.valid_folds, out.data.test_folds = train, valid, test
    out.seed = int(seed)
    out.eval.split = "test"
    out.eval.path = ""
    out.eval.checkpoint = os.path.join(run_dir, stage)
  return out


def run_dir_of(workdir: str, rotation: int, seed: int) -> str:
  return os.path.join(workdir, f"r{rotation}", f"seed{seed}")


def is_complete(workdir: str, rotation: int, seed: int) -> bool:
  return storage.exists(os.path.join(run_dir_of(workdir, rotation, seed), "eval", "summary.json"))


def check_trained_alike(cfg, workdir: str, rotation: int, seed: int, stage: str, what: str) -> None:
  """RunConfigMismatch naming the keys if the run was trained otherwise than cfg + rotation say."""
  run_dir = run_dir_of(workdir, rotation, seed)
  run_config.check(os.path.join(run_dir, stage),
                   run_config.for_stage(rotation_config(cfg, rotation, seed, stage, run_dir), stage),
                   what=what, folder=run_dir)


def run_one(cfg, workdir: str, rotation: int, seed: int, stage: str) -> None:
  """Trains + evaluates one (rotation, seed); a complete run is reused if trained alike."""
  from rd_jax import stages as registry
  from rd_jax.stages import eval as eval_stage
  run_dir = run_dir_of(workdir, rotation, seed)
  rcfg = rotation_config(cfg, rotation, seed, stage, run_dir)
  if is_complete(workdir, rotation, seed):
    check_trained_alike(cfg, workdir, rotation, seed, stage, "reuse")
    return
  t0 = time.perf_counter()
  registry.run(stage, rcfg, run_dir)
  eval_stage.run(rcfg, run_dir)
  logging.info("rotation %d seed %d: %.0f s", rotation, seed, time.perf_counter() - t0)


def one_label_query_share(query_ids, labels, share: float = 0.9) -> float:
  """The share of queries whose pairs carry one label for >= `share` of them: of a model's
  predictions, how often it labels the query rather than each item (gold's share for scale)."""
  by_query: dict = {}
  for q, y in zip(query_ids, labels):
    by_query.setdefault(q, []).append(int(y))
  return float(np.mean([np.bincount(ys).max() >= share * len(ys) for ys in by_query.values()]))


def pool(cfg, workdir: str, rotations, seeds, stage: str) -> dict:
  """Per-rotation and pooled figures of the complete runs (see the module docstring)."""
  from rd_jax import references
  from rd_jax.experiments import compare
  labels = list(cfg.labels)
  gold, qkeys, student, lexical, majority, per_rotation = [], [], [], [], [], {}
  for k in rotations:
    done = [s for s in seeds if is_complete(workdir, k, s)]
    if not done:
      continue
    for s in done:   # pooled only if trained as this config and rotation say (else: the keys)
      check_trained_alike(cfg, workdir, k, s, stage, "pool")
    rcfg = rotation_config(cfg, k, done[0], stage, run_dir_of(workdir, k, done[0]))
    refs, splits = references.fit_for_config(rcfg)
    test = splits["test"]
    keys = [(str(p.query_id), str(p.product_id)) for p in test]
    preds = np.asarray([compare.predictions_at(
        os.path.join(run_dir_of(workdir, k, s), "eval", "predictions.jsonl"), keys, labels,
        "it was not evaluated on this rotation's test folds") for s in done])  # [S, N]
    y = np.asarray([p.label_id for p in test])
    lex = refs["lexical"].predict_proba(test).argmax(-1)
    maj = refs["majority"].predict_proba(test).argmax(-1)
    metrics = [json.loads(storage.read_text(os.path.join(run_dir_of(workdir, k, s), "eval",
                                                         "metrics.json"))) for s in done]
    ref_test = {name: m["test"] for name, m in metrics[0].get("references", {}).items()}
    train, valid, test_folds = ROTATIONS[k]
    per_rotation[str(k)] = {
        "folds": {"train": list(train), "valid": list(valid), "test": list(test_folds)},
        "seeds": done, "queries": len(set(q for q, _ in keys)), "pairs": len(keys),
        "student_macro_f1": [round(float(metrics_lib.classification_metrics(
            y, p, labels)["macro_f1"]), 4) for p in preds],
        "student_ndcg@10": [m.get("ndcg@10") for m in metrics],
        "lexical_macro_f1": float(metrics_lib.classification_metrics(y, lex, labels)["macro_f1"]),
        "lexical_ndcg@10": ref_test.get("lexical", {}).get("ndcg@10"),
        "lexical_C": refs["lexical"].info.get("C"),
        "majority_macro_f1": float(metrics_lib.classification_metrics(y, maj, labels)["macro_f1"]),
        # queries whose items get one label (>= 90% of them): the student's seeds, lexical, gold
        "one_label_queries": {
            "student": [round(one_label_query_share([q for q, _ in keys], p), 4) for p in preds],
            "lexical": round(one_label_query_share([q for q, _ in keys], lex), 4),
            "gold": round(one_label_query_share([q for q, _ in keys], y), 4)},
    }
    gold.append(y)
    qkeys += [f"r{k}:{q}" for q, _ in keys]
    student.append(preds)
    lexical.append(lex)
    majority.append(maj)
  if not per_rotation:
    raise errors.PathError(f"no complete run under {workdir} for rotations {list(rotations)} and "
                           f"seeds {list(seeds)}")
  seeds_everywhere = sorted(set.intersection(*(set(r["seeds"]) for r in per_rotation.values())))
  # pooled: one row per seed present in every rotation (a seed missing somewhere is not pooled)
  keep = {k: [r["seeds"].index(s) for s in seeds_everywhere] for k, r in per_rotation.items()}
  pooled_student = np.concatenate([preds[keep[k]] for k, preds in zip(per_rotation, student)],
                                  axis=1)                                      # [S, N]
  y, lex, maj = np.concatenate(gold), np.concatenate(lexical), np.concatenate(majority)
  f1 = lambda p: float(metrics_lib.classification_metrics(y, p, labels)["macro_f1"])
  result = {
      "stage": stage, "rotations": per_rotation, "pooled_seeds": seeds_everywhere,
      "pooled": {
          "pairs": int(len(y)), "queries": len(set(qkeys)),
          "student_macro_f1_by_seed": [round(f1(p), 4) for p in pooled_student],
          "student_macro_f1": float(np.mean([f1(p) for p in pooled_student])),
          "lexical_macro_f1": f1(lex), "majority_macro_f1": f1(maj),
          "mean_over_rotations": {
              "student_macro_f1": float(np.mean([np.mean(r["student_macro_f1"])
                                                 for r in per_rotation.values()])),
              "lexical_macro_f1": float(np.mean([r["lexical_macro_f1"]
                                                 for r in per_rotation.values()]))}},
  }
  resamples = int(cfg.eval.get("bootstrap_resamples", 2000)) or 2000
  result["student_vs_lexical"] = bootstrap.paired_query_bootstrap(
      qkeys, y, pooled_student, lex, len(labels), resamples=resamples,
      seed=int(cfg.eval.get("bootstrap_seed", 0)))
  return result


def markdown(result: dict) -> str:
  rows = ["| rotation (train \\| valid \\| test folds) | test queries / pairs | student macro-F1 "
          "(seeds) | lexical | majority | student nDCG@10 | lexical nDCG@10 | one-label queries: "
          "student / lexical / gold |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  fmt = lambda x: "—" if x is None else f"{x:.4f}"
  for k, r in result["rotations"].items():
    folds = " \\| ".join(",".join(map(str, r["folds"][s])) for s in ("train", "valid", "test"))
    nd = [x for x in r["student_ndcg@10"] if x is not None]
    one = r["one_label_queries"]
    rows.append(f"| {k}: {folds} | {r['queries']} / {r['pairs']} | "
                f"{np.mean(r['student_macro_f1']):.4f} ({', '.join(map(str, r['student_macro_f1']))}) | "
                f"{r['lexical_macro_f1']:.4f} | {r['majority_macro_f1']:.4f} | "
                f"{fmt(np.mean(nd) if nd else None)} | {fmt(r['lexical_ndcg@10'])} | "
                f"{np.mean(one['student']):.2f} / {one['lexical']:.2f} / {one['gold']:.2f} |")
  p = result["pooled"]
  rows.append(f"| **pooled** (seeds {result['pooled_seeds']}) | {p['queries']} / {p['pairs']} | "
              f"**{p['student_macro_f1']:.4f}** ({', '.join(map(str, p['student_macro_f1_by_seed']))}) | "
              f"**{p['lexical_macro_f1']:.4f}** | {p['majority_macro_f1']:.4f} | | | |")
  line = bootstrap.describe(result["student_vs_lexical"], "macro_f1",
                            f"{result['stage']} student (pooled)", "lexical reference")
  return "\n".join(rows) + "\n\n" + line + "\n"


def main(argv):
  del argv
  from rd_jax import cli_setup
  cli_setup.quiet_library_logs()
  cli_setup.compilation_cache()
  cfg, workdir, stage = _FLAGS["config"].value, _FLAGS["workdir"].value, _FLAGS["stage"].value
  rotations = [int(k) for k in _FLAGS["rotations"].value]
  seeds = [int(s) for s in _FLAGS["seeds"].value]
  for k in rotations:
    if not 0 <= k < len(ROTATIONS):
      raise app.UsageError(f"--rotations: {k} is not one of 0..{len(ROTATIONS) - 1}")
  storage.makedirs(workdir)
  if not _FLAGS["only_complete"].value:
    for k in rotations:
      for s in seeds:
        run_one(cfg, workdir, k, s, stage)
  result = pool(cfg, workdir, rotations, seeds, stage)
  metrics_lib.write_json_atomic(result, os.path.join(workdir, "crossval.json"))
  table = markdown(result)
  storage.write_text_atomic(os.path.join(workdir, "crossval.md"), table)
  print(table)


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["config", "workdir"])
  errors.run_cli(lambda: app.run(main), "python -m rd_jax.experiments.crossval")
