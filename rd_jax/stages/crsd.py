"""`--stage=crsd`: train the 6-layer BERT student with Contrastive Reasoning Self-Distillation.

One shared encoder + classifier see the standard view (query, item) and the reasoning-augmented
view (query, item, reasoning); the loss is CE on both + lambda * InfoNCE between the two [CLS]
vectors (losses/crsd.py). `--stage=baseline` (`run_baseline`) runs the same code with the reasoning view off.

Writes <workdir>/<stage>/: checkpoints/, final/ (params + meta.json), metrics.jsonl, tb/,
valid_metrics.json, valid_predictions.jsonl, data_report.json, summary.json (last).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from rd_jax import decision, metrics as metrics_lib
from rd_jax import storage
from rd_jax.losses import classification
from rd_jax.losses.crsd import CrsdLossConfig, crsd_loss
from rd_jax.models import bert, remat
from rd_jax.parallel import mesh as mesh_lib
from rd_jax.parallel import sharding
from rd_jax.student import batches as batches_lib, data as data_lib, predict as predict_lib
from rd_jax.student.model import initial_student, student_meta
from rd_jax.train import fit


def make_loss_fn(model: bert.BertClassifier, settings: CrsdLossConfig, *, use_reasoning: bool,
                 local_block: int, seed: int, class_weights=None, logit_adjustment=None):
  """Returns `loss_fn(params, batch, step) -> (loss, metrics)`, the objective the step descends.

  Both views run through the SAME params (one encoder, one classifier); each view gets its own
  dropout key, derived from (seed, step) so a resumed run reproduces the masks exactly.
  class_weights / logit_adjustment [C]: the CE terms' (losses/classification.py). lambda is
  ramped linearly from 0 over `settings.lambda_warmup_steps` and, with
  lambda_scale=gradient_ratio, rescaled every step (cls_gradient_ratio below).
  """
  warmup = settings.lambda_warmup_steps
  ce_kw = dict(local_block=local_block, class_weights=class_weights,
               logit_adjustment=logit_adjustment)
  base_key = jax.random.PRNGKey(seed)

  def forward(params, batch, prefix, key):
    return model.apply({"params": params}, batch[f"{prefix}_input_ids"],
                       batch[f"{prefix}_attention_mask"], batch[f"{prefix}_token_type_ids"],
                       deterministic=False, rngs={"dropout": key})

  def loss_fn(params, batch, step):
    key_std, key_aug = jax.random.split(jax.random.fold_in(base_key, step))
    std_out = forward(params, batch, "std", key_std)        # logits [B, C], cls [B, D]
    aug_out = forward(params, batch, "aug", key_aug) if use_reasoning else None
    multiplier = jnp.minimum(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if use_reasoning and settings.lambda_scale == "gradient_ratio":
      multiplier = multiplier * cls_gradient_ratio(params, std_out["cls"], aug_out["cls"], batch)
    return crsd_loss(std_out, aug_out, batch, settings, lambda_multiplier=multiplier, **ce_kw)

  def cls_gradient_ratio(params, cls_s, cls_t, batch):
    """lambda_scale=gradient_ratio: r = ||d CE / d cls|| / ||d InfoNCE / d cls||, taken at the
    two views' [CLS] vectors [B, D] (where both terms enter the shared encoder), held constant
    (stop-gradient). lambda * r * InfoNCE then pulls on the encoder with lambda times the CE
    terms' strength at every step, whatever tau, head or encoder: lambda becomes a ratio,
    comparable across models. Cost: head-sized gradients only ([B, D], no encoder pass)."""
    cls = jax.lax.stop_gradient((cls_s, cls_t))

    def terms(c):
      outs = [{"logits": bert.head_logits(params, x), "cls": x} for x in c]
      if "crsd_projection" in params:
        for o, x in zip(outs, c):
          o["proj"] = bert.head_projection(params, x)
      _, m = crsd_loss(outs[0], outs[1], batch, settings, **ce_kw)
      return m["ce_std"] + settings.weight_aug_ce * m["ce_aug"], m["infonce"]

    g_ce = jax.grad(lambda c: terms(c)[0])(cls)
    g_nce = jax.grad(lambda c: terms(c)[1])(cls)
    norm = lambda g: jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in g))
    return jax.lax.stop_gradient(norm(g_ce) / jnp.maximum(norm(g_nce), 1e-12))

  return loss_fn


def objective_of(cfg, train_pairs) -> dict:
  """The CE terms' class weights and logit adjustment from the train split's label counts."""
  counts = np.bincount([p.label_id for p in train_pairs], minlength=len(cfg.labels))   # [C]
  return {"train_label_counts": counts.tolist(),
          "class_weights": classification.class_weights_for(counts, cfg.student.class_weighting,
                                                            cfg.student.class_weights),
          "logit_adjustment": classification.log_prior(counts, cfg.student.logit_adjustment)}


def fit_decision_rule(cfg, predict, params, data) -> tuple[dict, list[float]]:
  """Valid metrics under the decision rule, and the rule: per-class logit offsets fitted on valid
  macro-F1 (rd_jax/decision.py) when student.fit_offsets, else zeros. The plain argmax's figure
  stays as macro_f1_argmax."""
  logits, gold = predict_lib.predict_logits(predict, params, data.valid, data.tokenizer, cfg)
  offsets = decision.fit_offsets(logits, gold).tolist() if cfg.student.fit_offsets else None
  valid = predict_lib.score_logits(logits, gold, data.valid, cfg, offsets)  # + macro_f1_argmax
  valid.pop("logits")
  offsets = offsets or [0.0] * len(cfg.labels)
  valid["decision_offsets"] = offsets
  return valid, offsets


def run(cfg, workdir: str, *, stage: str = "crsd") -> dict:
  use_reasoning = stage == "crsd"
  stage_dir = os.path.join(workdir, stage)
  storage.makedirs(stage_dir)
  t0 = time.perf_counter()
  mesh = fit.make_mesh(cfg)
  dp = mesh_lib.data_parallel_size(mesh)
  if cfg.train.batch_size % dp:
    raise ValueError(f"config key train.batch_size = {cfg.train.batch_size} is not divisible by "
                     f"the {dp} data-parallel devices of the mesh")

  data = data_lib.load_student_data(cfg, stage_dir, use_reasoning=use_reasoning)
  model_cfg, params, init_info = initial_student(cfg, jax.random.PRNGKey(cfg.seed))
  model = bert.BertClassifier(remat.configure(model_cfg, cfg.student))  # remat: training only
  objective = objective_of(cfg, data.train)
  loss_fn = make_loss_fn(model, CrsdLossConfig.from_config(cfg.crsd), use_reasoning=use_reasoning,
                         local_block=cfg.train.batch_size // dp, seed=cfg.seed,
                         class_weights=objective["class_weights"],
                         logit_adjustment=objective["logit_adjustment"])
  batches = batches_lib.train_batches(data.train, data.tokenizer, cfg,
                                         use_reasoning=use_reasoning)
  trained = fit.fit(cfg, stage, workdir, params=params, loss_fn=loss_fn, batches=batches,
                    mesh=mesh, rules=sharding.BERT_RULES, with_step=True)
  if trained.interrupted:
    return fit.interrupted(cfg, stage)

  predict = predict_lib.make_predict_fn(model, mesh)
  valid, offsets = fit_decision_rule(cfg, predict, trained.params, data)
  predicted = valid.pop("predictions")
  if jax.process_index() == 0:
    metrics_lib.write_json_atomic(valid, os.path.join(stage_dir, "valid_metrics.json"))
    predict_lib.write_predictions(data.valid, predicted, cfg.labels,
                                  os.path.join(stage_dir, "valid_predictions.jsonl"))
  meta = student_meta(cfg, model_cfg, data.tokenizer_dir, stage=stage, step=trained.step,
                      valid=valid)
  meta.update(decision_offsets=offsets, train_label_counts=objective["train_label_counts"])
  stats = trained.stats
  summary = {
      "stage": stage, "steps": stats["steps"], "resumed_from": stats["resumed_from"],
      "train_seconds": round(stats["train_seconds"], 1),
      "seconds": round(time.perf_counter() - t0, 1),
      "valid_macro_f1": valid["macro_f1"], "valid_accuracy": valid["accuracy"],
      "valid_macro_f1_argmax": valid.get("macro_f1_argmax", valid["macro_f1"]),
      "objective": objective,
      "last_train_metrics": stats["last_metrics"], "init": init_info,
      "data": data.report, "mesh": dict(mesh.shape), "devices": jax.device_count(),
  }
  fit.finish(stage_dir, trained.params, meta, summary)
  logging.info("%s done: valid macro-F1 %.4f (%d steps, %.0f s)", stage, valid["macro_f1"],
               stats["steps"], summary["seconds"])
  return summary


def run_baseline(cfg, workdir: str) -> dict:
  """`--stage=baseline`: the same student and data, cross-entropy on the standard view only —
  the ablation the paper reports (no reasoning, no InfoNCE). Writes <workdir>/baseline/."""
  return run(cfg, workdir, stage="baseline")
