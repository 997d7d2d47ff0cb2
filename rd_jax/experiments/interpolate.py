"""WiSE-FT: a finished student's encoder interpolated back towards its initial checkpoint, on valid.

  python -m rd_jax.experiments.interpolate --config=configs/demo.py --workdir=runs/demo \
      --stage=crsd --alphas=0.5,0.6,0.7,0.8,0.9,1.0 --out=runs/demo/wise_crsd.json [--test]

Wortsman et al. 2022 ("Robust fine-tuning of zero-shot models"): fine-tuning on a few labels can
trade away what the checkpoint already knew; averaging the weights of the fine-tuned and the
initial model keeps some of both. For every encoder parameter (embeddings, layers, pooler)

    theta(alpha) = alpha * theta_ft + (1 - alpha) * theta_init

theta_ft: `<workdir>/<stage>/final`, restored as `--stage=eval` restores it; theta_init: the
config's `student.init` built as the training stage builds it (`initial_student`, seed
cfg.seed: pass the seed the student was trained with). The heads (`classifier`, and
`crsd_projection` when present) are new in every init, so each theta(alpha) keeps the fine-tuned
head. alpha = 1 is the student itself, alpha = 0 the checkpoint's encoder under the trained head.

Each alpha is scored on valid as the stages score a student (rd_jax/student/predict.py): macro-F1
of the argmax, macro-F1 with per-class offsets fitted on valid (rd_jax/decision.py; in-sample,
as the stage's valid figure is), log-loss beside the train prior's, nDCG@10 (rd_jax/ranking.py).
alpha is chosen on valid only: the best macro-F1 with offsets (ties: the larger alpha). With
--test, the test split is scored for the chosen alpha and for alpha = 1, each with its own
offsets fitted on valid: read once, after the choice. Writes every figure to --out (JSON).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from rd_jax import decision, metrics as metrics_lib, storage
from rd_jax.stages import eval as eval_stage
from rd_jax.student import data as data_lib, predict as predict_lib
from rd_jax.student.model import initial_student
from rd_jax import errors

# freshly initialised in every init, or fitted after training (the wide term): kept fine-tuned
HEADS = ("classifier", "crsd_projection", "wide")
_FLAGS = {}


def _define_flags() -> None:
  """Flags only when run as a program: importing this module (tests) defines none."""
  _FLAGS["config"] = config_flags.DEFINE_config_file(
      "config", None, "The config the student was trained with.", lock_config=True)
  _FLAGS["workdir"] = flags.DEFINE_string("workdir", None, "Workdir holding <stage>/final.")
  _FLAGS["stage"] = flags.DEFINE_enum("stage", "crsd", ["crsd", "baseline"], "Which student.")
  _FLAGS["alphas"] = flags.DEFINE_list("alphas", ["0.5", "0.6", "0.7", "0.8", "0.9", "1.0"],
                                       "Weights of the fine-tuned params.")
  _FLAGS["out"] = flags.DEFINE_string("out", None, "JSON result (written atomically).")
  _FLAGS["test"] = flags.DEFINE_bool("test", False, "Also score test: chosen alpha and alpha=1.")


def interpolate(finetuned: dict, init: dict, alpha: float) -> dict:
  """theta(alpha) for every top-level params entry but HEADS, which stay `finetuned`'s."""
  mix = lambda f, i: alpha * f + (1.0 - alpha) * i    # fp32; alpha 1 / 0 give f / i exactly
  return {k: v if k in HEADS else jax.tree.map(mix, v, init[k]) for k, v in finetuned.items()}


def initial_params(cfg, meta: dict, like: dict) -> tuple[dict, dict]:
  """(theta_init placed as `like`, init info): the training stage's starting point."""
  if meta.get("init") not in (None, cfg.student.init):
    raise errors.ConfigError(f"the student was initialised from {meta['init']!r}, the config says "
                             f"student.init={cfg.student.init!r}")
  _, params, info = initial_student(cfg, jax.random.PRNGKey(cfg.seed))
  fresh = {p.split("/")[0] for p in info.get("initialised", ())} - set(HEADS)
  if fresh:   # interpolating towards a random tensor would be meaningless
    raise errors.ConfigError(f"init {cfg.student.init!r} freshly initialises {sorted(fresh)}")
  params = {k: params[k] if k in params else like[k] for k in like}   # a head the init lacks: unused
  return jax.tree.map(lambda i, f: jax.device_put(np.asarray(i, f.dtype), f.sharding),
                      params, like), info


def student_logits(predict, params, pairs, tokenizer, cfg, meta) -> tuple[np.ndarray, np.ndarray]:
  """(raw logits [N, C], gold [N]) of a restored student, fed as its final/meta.json says (its
  standard-view length and match hint), as eval feeds it. The experiments' one forward pass."""
  return predict_lib.predict_logits(predict, params, pairs, tokenizer, cfg,
                                    max_len_std=meta.get("max_len_std"),
                                    match_hint=meta.get("match_hint", ""))


def score(predict, params, pairs, tokenizer, cfg, meta, offsets=None) -> tuple[dict, np.ndarray]:
  """(figures, raw logits [N, C]) of `params` on `pairs` as the stages score a student: offsets
  None = fitted on these pairs (student.fit_offsets, as stages/crsd.fit_decision_rule fits them),
  and then also macro_f1_crossfit (student.offsets_crossfit_folds: each query fold decided by
  offsets fitted on the other folds)."""
  logits, gold = student_logits(predict, params, pairs, tokenizer, cfg, meta)
  return figures_of_logits(logits, gold, pairs, cfg, meta, offsets), logits


def figures_of_logits(logits, gold, pairs, cfg, meta, offsets=None) -> dict:
  """score()'s figures from logits [N, C] already computed (experiments/ensemble.py reuses it)."""
  crossfit = None
  if offsets is None:
    rule = cfg.student.get("decision_rule", "offsets")
    if rule != "offsets" and not meta.get("train_label_counts"):
      raise errors.ConfigError(f"student.decision_rule = {rule!r} needs the train label counts, and this "
                               "student's final/meta.json has no train_label_counts")
    fit = decision.fitter(rule, meta.get("train_label_counts"))
    offsets = fit(logits, gold) if cfg.student.fit_offsets else np.zeros(logits.shape[1])
    if cfg.student.fit_offsets:   # as stages/crsd.fit_decision_rule reports it
      crossfit = decision.crossfit_macro_f1(logits, gold, [p.query_id for p in pairs],
                                            int(cfg.student.get("offsets_crossfit_folds", 0)),
                                            fit=fit)
  m = predict_lib.score_logits(logits, gold, pairs, cfg, np.asarray(offsets).tolist())
  m["prior_log_loss"] = eval_stage.prior_log_loss(meta, None, gold)
  out = eval_stage.headline(m)
  if crossfit is not None:
    out["macro_f1_crossfit"] = crossfit
  out.update(decision_offsets=m["decision_offsets"],
             per_class_f1={k: v["f1"] for k, v in m["per_class"].items()},
             predicted=np.bincount(m["predictions"], minlength=len(cfg.labels)).tolist())
  return out


def headline_table(result: dict) -> dict:
  """{split: {model: {figure: rounded}}} of a result's "valid" / "test" (what main prints)."""
  keys = ("macro_f1", "macro_f1_crossfit", "macro_f1_argmax", "ndcg@10", "log_loss")
  return {split: {name: {k: round(m[k], 4) for k in keys if k in m}
                  for name, m in result[split].items()}
          for split in ("valid", "test") if split in result}


def choose(valid: dict) -> float:
  """The alpha with the best valid macro-F1 (offsets fitted on valid); ties: the larger alpha."""
  return max(valid, key=lambda a: (round(valid[a]["macro_f1"], 12), a))


def run(cfg, workdir: str, stage: str, alphas, out: str | None = None, test: bool = False) -> dict:
  ckpt = os.path.join(workdir, stage)
  meta, model, finetuned, mesh = eval_stage.restore_student(cfg, ckpt)
  init, info = initial_params(cfg, meta, finetuned)
  out_dir = os.path.dirname(storage.abspath(out)) if out else os.path.join(workdir, "eval")
  storage.makedirs(out_dir)
  pairs = lambda split: eval_stage.pairs_of(cfg, split, out_dir, meta.get("item_template"))
  tokenizer = data_lib.load_tokenizer(meta["tokenizer"])
  predict = predict_lib.make_predict_fn(model, mesh)
  valid_pairs = pairs("valid")
  norm = lambda t: float(np.sqrt(sum(np.sum(np.square(np.asarray(x))) for x in jax.tree.leaves(t))))
  moved = {k: v for k, v in finetuned.items() if k not in HEADS}
  moved_init = {k: init[k] for k in moved}
  result = {"checkpoint": storage.abspath(ckpt), "stage": stage, "init": cfg.student.init,
            "seed": cfg.seed, "interpolated": sorted(moved), "kept_finetuned": sorted(
                set(finetuned) & set(HEADS)), "init_freshly_initialised": info.get("initialised"),
            "checkpoint_decision_offsets": meta.get("decision_offsets"),
            # how far fine-tuning moved the interpolated weights: |theta_ft - theta_init| / |theta_init|
            "relative_distance": norm(jax.tree.map(np.subtract, moved, moved_init)) / norm(moved_init),
            "valid": {}}
  for alpha in sorted(float(a) for a in alphas):
    figures, _ = score(predict, interpolate(finetuned, init, alpha), valid_pairs, tokenizer,
                       cfg, meta)
    result["valid"][alpha] = figures
    logging.info("alpha %.2f valid: %s", alpha, json.dumps(figures))
  chosen = choose(result["valid"])
  result["chosen_alpha"] = chosen
  # for information only (not a second choice: test is read for chosen_alpha and 1 alone)
  result["best_valid_ndcg_alpha"] = max(result["valid"],
                                        key=lambda a: (result["valid"][a]["ndcg@10"], a))
  if test:   # read once: the chosen alpha and the student itself, offsets fitted on valid
    test_pairs = pairs("test")
    result["test"] = {}
    for alpha in sorted({chosen, 1.0}):
      params = interpolate(finetuned, init, alpha)
      if alpha not in result["valid"]:
        result["valid"][alpha], _ = score(predict, params, valid_pairs, tokenizer, cfg, meta)
      result["test"][alpha], _ = score(predict, params, test_pairs, tokenizer, cfg, meta,
                                       offsets=result["valid"][alpha]["decision_offsets"])
  result = json.loads(json.dumps(result))            # alpha keys as strings, as the file holds them
  if out and jax.process_index() == 0:
    metrics_lib.write_json_atomic(result, out)
  return result


def main(argv):
  del argv
  result = run(_FLAGS["config"].value, _FLAGS["workdir"].value, _FLAGS["stage"].value,
               _FLAGS["alphas"].value, _FLAGS["out"].value, _FLAGS["test"].value)
  table = headline_table(result)
  print(json.dumps({"chosen_alpha": result["chosen_alpha"], **table, "out": _FLAGS["out"].value},
                   indent=1))


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["config", "workdir", "out"])
  errors.run_cli(lambda: app.run(main), "python -m rd_jax.experiments.interpolate")
