"""Several finished students as one: a logit ensemble and a uniform weight soup, on valid.

  python -m rd_jax.experiments.ensemble --config=configs/demo.py \
      --checkpoints=runs/s0/crsd,runs/s1/crsd,runs/s2/crsd --out=runs/ensemble.json [--test]

What a team gets from training the recipe k times (k seeds), and at what serving cost:
  members   each student alone, as `--stage=eval` scores it (figures_of_logits of interpolate.py).
  ensemble  the mean of the members' raw logits, z = (1/k) sum_j z_j [N, C] (a geometric mean of
            their probabilities, renormalised by the softmax); k forward passes per pair when
            served. Decision offsets are fitted on valid for the ensemble itself.
  soup      the uniform average of the members' weights, theta = (1/k) sum_j theta_j (Wortsman et
            al. 2022, "Model soups"): one forward pass per pair, the serving cost of one student.
            It averages every entry, the classifier head included, so members whose heads started
            from different random inits (different seeds) average heads that need not agree.
Offsets are fitted on valid for every model (in-sample, as the stages do) and also cross-fitted
over query folds (`student.offsets_crossfit_folds`). With --test the test split is scored for
every model with its valid-fitted offsets: read after the valid figures, not used to choose.

The members must be fed alike: the same labels, model shape, tokenizer, item template, match hint
and standard-view length (their final/meta.json); otherwise this stops naming the checkpoint and
the key. It is an experiment, not a stage: nothing it writes is a checkpoint.
"""

from __future__ import annotations

import json

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from rd_jax import metrics as metrics_lib, storage
from rd_jax.experiments import interpolate
from rd_jax.stages import eval as eval_stage
from rd_jax.student import data as data_lib, predict as predict_lib
from rd_jax import errors

# meta.json keys that decide how a student reads a pair; members must agree on all of them
INPUT_KEYS = ("labels", "model_config", "tokenizer", "item_template", "match_hint", "max_len_std")
_FLAGS = {}


def _define_flags() -> None:
  """Flags only when run as a program: importing this module (tests) defines none."""
  _FLAGS["config"] = config_flags.DEFINE_config_file(
      "config", None, "The config the students were trained with.", lock_config=True)
  _FLAGS["checkpoints"] = flags.DEFINE_list(
      "checkpoints", None, "Student stage folders (<workdir>/crsd, <workdir>/baseline) or final/.")
  _FLAGS["soup"] = flags.DEFINE_bool("soup", True, "Also score the uniform weight soup.")
  _FLAGS["out"] = flags.DEFINE_string("out", None, "JSON result (written atomically).")
  _FLAGS["test"] = flags.DEFINE_bool("test", False, "Also score test, offsets fitted on valid.")


def check_compatible(metas: list[dict], checkpoints: list[str]) -> None:
  """ValueError naming the first checkpoint (and key) fed differently from the first one."""
  for ckpt, meta in zip(checkpoints[1:], metas[1:]):
    for key in INPUT_KEYS:
      if meta.get(key) != metas[0].get(key):
        raise errors.ConfigError(f"{ckpt} has {key} = {meta.get(key)!r} in its final/meta.json, "
                                 f"{checkpoints[0]} has {metas[0].get(key)!r}: an ensemble needs students "
                                 "fed alike")


def soup(params_list: list) -> dict:
  """The uniform average of every parameter (fp32 sum, then / k), in the first member's dtypes."""
  k = float(len(params_list))
  mean = lambda *xs: (sum(np.asarray(x, np.float32) for x in xs) / k).astype(xs[0].dtype)
  return jax.tree.map(mean, *params_list)


def run(cfg, checkpoints: list[str], out: str | None = None, with_soup: bool = True,
        test: bool = False) -> dict:
  if len(checkpoints) < 2:
    raise errors.ConfigError(f"--checkpoints needs at least 2 students, got {checkpoints}")
  restored = [eval_stage.restore_student(cfg, c) for c in checkpoints]
  metas = [r[0] for r in restored]
  check_compatible(metas, checkpoints)
  meta, model, _, mesh = restored[0]
  predict = predict_lib.make_predict_fn(model, mesh)
  tokenizer = data_lib.load_tokenizer(meta["tokenizer"])
  splits = ("valid", "test") if test else ("valid",)
  with eval_stage.report_dir(out) as out_dir:   # beside --out, else a temporary folder
    pairs = {s: eval_stage.pairs_of(cfg, s, out_dir, meta.get("item_template")) for s in splits}
  gold = {s: np.asarray([p.label_id for p in pairs[s]]) for s in splits}

  def logits_of(params, split):
    return interpolate.student_logits(predict, params, pairs[split], tokenizer, cfg, meta)[0]

  models = {f"member_{i}": r[2] for i, r in enumerate(restored)}
  if with_soup:
    models["soup"] = soup([r[2] for r in restored])
  logits = {name: {s: logits_of(params, s) for s in splits} for name, params in models.items()}
  members = [f"member_{i}" for i in range(len(restored))]
  logits["ensemble"] = {s: np.mean([logits[m][s] for m in members], axis=0) for s in splits}
  result = {"checkpoints": [storage.abspath(c) for c in checkpoints], "valid": {}}
  for name in members + ["ensemble"] + (["soup"] if with_soup else []):
    valid = interpolate.figures_of_logits(logits[name]["valid"], gold["valid"], pairs["valid"],
                                          cfg, meta)
    result["valid"][name] = valid
    logging.info("%s valid: %s", name, json.dumps(valid))
    if test:
      result.setdefault("test", {})[name] = interpolate.figures_of_logits(
          logits[name]["test"], gold["test"], pairs["test"], cfg, meta,
          offsets=valid["decision_offsets"])
  keys = ("macro_f1", "macro_f1_crossfit", "ndcg@10", "log_loss")
  result["members_mean"] = {s: {k: float(np.mean([result[s][m][k] for m in members]))
                                for k in keys if k in result[s][members[0]]}
                            for s in splits}
  result = json.loads(json.dumps(result))
  if out and jax.process_index() == 0:
    metrics_lib.write_json_atomic(result, out)
  return result


def main(argv):
  del argv
  result = run(_FLAGS["config"].value, _FLAGS["checkpoints"].value, _FLAGS["out"].value,
               _FLAGS["soup"].value, _FLAGS["test"].value)
  table = interpolate.headline_table(result)
  print(json.dumps({**table, "members_mean": result["members_mean"], "out": _FLAGS["out"].value},
                   indent=1))


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["config", "checkpoints", "out"])
  errors.run_cli(lambda: app.run(main), "python -m rd_jax.experiments.ensemble")
