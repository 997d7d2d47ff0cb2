"""`--stage=crsd`: train the 6-layer BERT student with Contrastive Reasoning Self-Distillation.

One shared encoder + classifier see the standard view (query, item) and the reasoning-augmented
view (query, item, reasoning); the loss is CE on both + lambda * InfoNCE between the two [CLS]
vectors (losses/crsd.py). `--stage=baseline` runs the same code with the reasoning view off.

Writes <workdir>/<stage>/: checkpoints/, final/ (params + meta.json), metrics.jsonl, tb/,
valid_metrics.json, valid_predictions.jsonl, data_report.json, summary.json (last).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
from absl import logging

from rd_jax import checkpoint, metrics as metrics_lib
from rd_jax.losses.crsd import crsd_loss
from rd_jax.models import bert, remat
from rd_jax.parallel import mesh as mesh_lib
from rd_jax.parallel import sharding
from rd_jax.stages import student_common
from rd_jax.train import loop, optim, run_config
from rd_jax.train import state as state_lib


def make_train_step(model: bert.BertClassifier, tx, schedule, crsd_cfg, *, use_reasoning: bool,
                    local_block: int, seed: int):
  """Returns the pure step `(state, batch) -> (state, metrics)`.

  Both views run through the SAME params (one encoder, one classifier); each view gets its own
  dropout key, derived from (seed, step) so a resumed run reproduces the masks exactly.
  """
  base_key = jax.random.PRNGKey(seed)

  def forward(params, batch, prefix, key):
    return model.apply({"params": params}, batch[f"{prefix}_input_ids"],
                       batch[f"{prefix}_attention_mask"], batch[f"{prefix}_token_type_ids"],
                       deterministic=False, rngs={"dropout": key})

  def loss_fn(params, batch, step):
    key_std, key_aug = jax.random.split(jax.random.fold_in(base_key, step))
    std_out = forward(params, batch, "std", key_std)        # logits [B, C], cls [B, D]
    aug_out = forward(params, batch, "aug", key_aug) if use_reasoning else None
    return crsd_loss(std_out, aug_out, batch, crsd_cfg, local_block=local_block)

  return state_lib.gradient_step(loss_fn, tx, schedule, with_step=True)


def initial_student(cfg, rng) -> tuple[bert.BertConfig, dict, dict]:
  """(model config, params, info) from cfg.student.init: "minilm", "random" or a HF folder."""
  num_labels = len(cfg.labels)
  projection_dim = int(cfg.crsd.projection_dim)
  if cfg.student.init == "random":
    model_cfg = bert.BertConfig(
        vocab_size=cfg.student.vocab_size, hidden_size=cfg.student.hidden_size,
        num_layers=cfg.student.num_layers, num_heads=cfg.student.num_heads,
        intermediate_size=cfg.student.intermediate_size, max_position=cfg.student.max_position,
        dropout=cfg.student.dropout, num_labels=num_labels, dtype=cfg.student.dtype,
        projection_dim=projection_dim)
    return model_cfg, bert.init_params(model_cfg, rng), {"init": "random"}
  from rd_jax.convert import hf_bert
  # The classifier (and the projection head, ours) are not in the HF weights: freshly
  # initialised and listed in info["initialised"]; everything else is imported.
  model_cfg, params, info = hf_bert.load_hf_bert(cfg.student.init, num_labels, rng,
                                                 dropout=cfg.student.dropout,
                                                 dtype=cfg.student.dtype,
                                                 projection_dim=projection_dim)
  return model_cfg, params, dict(info, init=cfg.student.init)


def run(cfg, workdir: str, *, stage: str = "crsd") -> dict:
  use_reasoning = stage == "crsd"
  stage_dir = os.path.join(workdir, stage)
  os.makedirs(stage_dir, exist_ok=True)
  t0 = time.perf_counter()
  mesh_lib.maybe_initialize_distributed(cfg.mesh)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  dp = mesh_lib.data_parallel_size(mesh)
  if cfg.train.batch_size % dp:
    raise ValueError(f"config key train.batch_size = {cfg.train.batch_size} is not divisible by "
                     f"the {dp} data-parallel devices of the mesh")

  data = student_common.load_student_data(cfg, stage_dir, use_reasoning=use_reasoning)
  model_cfg, params, init_info = initial_student(cfg, jax.random.PRNGKey(cfg.seed))
  model = bert.BertClassifier(remat.configure(model_cfg, cfg.student))  # training only
  tx, schedule = optim.make_optimizer(cfg.optim, cfg.train.num_steps)
  state, shardings = state_lib.init_state(params, tx, sharding.BERT_RULES, mesh)
  del params

  step = make_train_step(model, tx, schedule, cfg.crsd, use_reasoning=use_reasoning,
                         local_block=cfg.train.batch_size // dp, seed=cfg.seed)
  step = jax.jit(step, in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
                 out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=(0,))
  batches = student_common.train_batches(data.train, data.tokenizer, cfg,
                                         use_reasoning=use_reasoning)
  state, stats = loop.run(stage_dir=stage_dir, state=state, shardings=shardings, step_fn=step,
                          batches=batches, mesh=mesh, num_steps=cfg.train.num_steps,
                          log_every=cfg.train.log_every,
                          checkpoint_every=cfg.train.checkpoint_every,
                          keep=cfg.train.keep_checkpoints,
                          stop_after_step=cfg.train.stop_after_step,
                          run_config=(stage, run_config.for_stage(cfg, stage)))
  if stats["interrupted"]:
    return {"stage": stage, "interrupted_at": cfg.train.stop_after_step}

  predict = student_common.make_predict_fn(model, mesh)
  valid = student_common.evaluate(predict, state["params"], data.valid, data.tokenizer, cfg)
  predicted = valid.pop("predictions")
  if jax.process_index() == 0:
    metrics_lib.write_json_atomic(valid, os.path.join(stage_dir, "valid_metrics.json"))
    student_common.write_predictions(data.valid, predicted, cfg.labels,
                                     os.path.join(stage_dir, "valid_predictions.jsonl"))
  meta = student_common.student_meta(cfg, model_cfg, data.tokenizer_dir, stage=stage,
                                     step=int(state["step"]), valid=valid)
  checkpoint.save_final(os.path.join(stage_dir, "final"), state["params"], meta)
  summary = {
      "stage": stage, "steps": stats["steps"], "resumed_from": stats["resumed_from"],
      "train_seconds": round(stats["train_seconds"], 1),
      "seconds": round(time.perf_counter() - t0, 1),
      "valid_macro_f1": valid["macro_f1"], "valid_accuracy": valid["accuracy"],
      "last_train_metrics": stats["last_metrics"], "init": init_info,
      "data": data.report, "mesh": dict(mesh.shape), "devices": jax.device_count(),
  }
  if jax.process_index() == 0:
    metrics_lib.write_json_atomic(summary, os.path.join(stage_dir, "summary.json"))
  logging.info("%s done: valid macro-F1 %.4f (%d steps, %.0f s)", stage, valid["macro_f1"],
               stats["steps"], summary["seconds"])
  return summary
