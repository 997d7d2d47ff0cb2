"""Learning curves of a student: valid macro-F1 (argmax and fitted offsets), log-loss, per epoch.

  python -m rd_jax.experiments.curves --config=configs/demo.py --workdir=runs/curves/base \
      --stage=baseline --epochs=4

Trains the student exactly as `--stage=crsd|baseline` does (same data, step, optimiser; the
schedule spans `--epochs` epochs) and after every epoch scores the valid split: macro-F1 of the
argmax, macro-F1 with decision offsets fitted on valid (optimistic: fitted and scored on the same
pairs; it says how much signal the argmax throws away), log-loss beside the train prior's. The
test split's logits are written per epoch to `<workdir>/test_logits_e<k>.npy` and never scored
here: recipes are chosen on valid (`curves.jsonl`), test is read once, by `--stage=eval`.
"""

from __future__ import annotations

import io
import json
import os
import time

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from rd_jax import decision, ranking, references
from rd_jax import storage
from rd_jax.data import readers
from rd_jax.losses.crsd import CrsdLossConfig
from rd_jax.models import bert
from rd_jax.parallel import mesh as mesh_lib
from rd_jax.parallel import sharding
from rd_jax.stages import crsd
from rd_jax.student import batches as batches_lib, data as data_lib, predict as predict_lib
from rd_jax.student import similarity
from rd_jax.student.model import initial_student
from rd_jax.train import fit
from rd_jax import errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder.")
_STAGE = flags.DEFINE_enum("stage", "baseline", ["baseline", "crsd"], "Which student.")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs to train (the LR schedule spans them).")


def logits_of(predict, params, pairs, tokenizer, cfg) -> np.ndarray:
  return predict_lib.predict_logits(predict, params, pairs, tokenizer, cfg)[0]


def _save_npy(path: str, array) -> None:
  buffer = io.BytesIO()
  np.save(buffer, np.asarray(array))
  storage.write_bytes_atomic(path, buffer.getvalue())


def main(argv):
  del argv
  cfg = _CONFIG.value
  stage, workdir = _STAGE.value, _WORKDIR.value
  storage.makedirs(workdir)
  use_reasoning = stage == "crsd"
  mesh = fit.make_mesh(cfg)
  data = data_lib.load_student_data(cfg, workdir, use_reasoning=use_reasoning)
  pairs, _ = readers.load_pairs(cfg.data.path, cfg)
  test = readers.train_valid_test(pairs, cfg)["test"]
  c = len(cfg.labels)
  objective = crsd.objective_of(cfg, data.train)
  counts = np.array(objective["train_label_counts"])
  steps_per_epoch = len(data.train) // cfg.train.batch_size
  num_steps = steps_per_epoch * _EPOCHS.value
  with cfg.unlocked():
    cfg.train.num_steps = num_steps
  model_cfg, params, _ = initial_student(cfg, jax.random.PRNGKey(cfg.seed))
  model = bert.BertClassifier(model_cfg)
  params, sim_targets = crsd.with_similarity(cfg, model, params, model_cfg, data, objective)
  params, overlap_kwargs = crsd.with_overlap(cfg, params, model_cfg, data, objective)
  loss_fn = crsd.make_loss_fn(model, CrsdLossConfig.from_config(cfg.crsd),
                              use_reasoning=use_reasoning, local_block=cfg.train.batch_size,
                              seed=cfg.seed, class_weights=objective["class_weights"],
                              logit_adjustment=objective["logit_adjustment"],
                              query_log_prior=objective["query_log_prior"],
                              pair_weights=objective["pair_weights"],
                              similarity_targets=sim_targets,
                              similarity_weight=cfg.student.similarity_weight,
                              similarity_from=crsd.similarity_source(cfg),
                              **crsd.rank_kwargs(cfg), **overlap_kwargs)
  state, _, step_fn = fit.compile_step(loss_fn, params, cfg.student.optim, num_steps,
                                       rules=sharding.BERT_RULES, mesh=mesh,
                                       optim_key="student.optim", with_step=True)
  batches = batches_lib.train_batches(data.train, data.tokenizer, cfg,
                                      use_reasoning=use_reasoning)
  predict = predict_lib.make_predict_fn(model, mesh)
  valid_y = np.array([p.label_id for p in data.valid])
  gains = ranking.label_gains(cfg.labels, cfg.eval.get("gains"))
  prior = counts / counts.sum()
  prior_ll = float(-np.log(prior[valid_y]).mean())
  rows, t0, sums = [], time.perf_counter(), {}
  for step in range(1, num_steps + 1):
    state, m = step_fn(state, mesh_lib.put_batch(next(batches), mesh))
    for k, v in m.items():
      sums[k] = sums.get(k, 0.0) + float(v)
    if step % steps_per_epoch:
      continue
    epoch = step // steps_per_epoch
    student_params = similarity.without_head(state["params"])
    z = logits_of(predict, student_params, data.valid, data.tokenizer, cfg)
    offsets = decision.fit_offsets(z, valid_y)
    row = {"epoch": epoch, "step": step, "seconds": round(time.perf_counter() - t0, 1),
           "train": {k: round(v / steps_per_epoch, 4) for k, v in sums.items()},
           "valid_macro_f1_argmax": decision.macro_f1(valid_y, decision.predict(z), c),
           "valid_macro_f1_prior_corrected": decision.macro_f1(
               valid_y, decision.predict(z, -np.log(prior)), c),
           "valid_macro_f1_fitted_offsets": decision.macro_f1(valid_y, decision.predict(z, offsets), c),
           "offsets": offsets.round(2).tolist(),
           "valid_log_loss": round(references.log_loss(ranking.softmax(z), valid_y), 4), "valid_prior_log_loss": round(prior_ll, 4),
           "valid_pred_share": np.bincount(decision.predict(z), minlength=c).round(0).tolist(),
           "valid_ndcg@10": round(ranking.pair_ndcg(data.valid, ranking.softmax(z + offsets),
                                                    gains)["ndcg"], 4)}
    sums = {}
    _save_npy(os.path.join(workdir, f"test_logits_e{epoch}.npy"),
              logits_of(predict, student_params, test, data.tokenizer, cfg))
    _save_npy(os.path.join(workdir, f"valid_logits_e{epoch}.npy"), z)
    rows.append(row)
    logging.info("epoch %d: %s", epoch, json.dumps(row))
    # rewritten whole each epoch: object storage cannot append (rd_jax/storage.py)
    storage.write_text_atomic(os.path.join(workdir, "curves.jsonl"),
                              "".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  errors.run_cli(lambda: app.run(main), "python -m rd_jax.experiments.curves")
