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

from rd_jax import errors
from rd_jax import decision, metrics as metrics_lib, ranking
from rd_jax import storage
from rd_jax.data import tokenize
from rd_jax.losses import classification, pairwise_rank
from rd_jax.losses.crsd import CrsdLossConfig, crsd_loss
from rd_jax.models import bert, remat
from rd_jax.parallel import mesh as mesh_lib
from rd_jax.parallel import sharding
from rd_jax.student import batches as batches_lib, data as data_lib, predict as predict_lib
from rd_jax.student import negatives, overlap_targets, probe_head, similarity, wide_head
from rd_jax.student.model import initial_student, student_meta
from rd_jax.train import fit


def make_loss_fn(model: bert.BertClassifier, settings: CrsdLossConfig, *, use_reasoning: bool,
                 local_block: int, seed: int, class_weights=None, logit_adjustment=None,
                 query_log_prior=None, pair_weights=None, similarity_targets=None,
                 similarity_weight: float = 0.0,
                 similarity_from: str = "cls", rank_weight: float = 0.0, gains=None,
                 overlap_targets=None, overlap_weight: float = 0.0):
  """Returns `loss_fn(params, batch, step) -> (loss, metrics)`, the objective the step descends.

  Both views run through the SAME params (one encoder, one classifier); each view gets its own
  dropout key, derived from (seed, step) so a resumed run reproduces the masks exactly.
  class_weights / logit_adjustment [C]: the CE terms' (losses/classification.py);
  query_log_prior [Q, C]: beta * log p(y | query), added per row by batch["query_index"] (the
  product-of-experts objective, classification.query_log_prior); pair_weights [N]: each train
  pair's CE weight in place of class_weights, looked up by batch["pair_index"] (objective_of:
  class_weighting=query_balanced, or drawn negatives weighed apart); similarity_targets [N] with
  similarity_weight > 0: + weight * L_sim on the standard view's [CLS], looked up by
  batch["pair_index"] (student/similarity.py; params then hold its head), read from the
  [CLS] vector or from the classifier's logits (similarity_from "cls" | "logits"); rank_weight
  > 0: + weight * the pairwise ranking loss within each query of the batch on the standard view's
  logits with label gains `gains` [C] (losses/pairwise_rank.py); overlap_targets [N, 9] with
  overlap_weight > 0: + weight * L_ovl, the standard view's [CLS] regressed onto each pair's
  z-scored lexical overlap features (student/overlap_targets.py; params hold its head). lambda is
  ramped linearly from 0 over `settings.lambda_warmup_steps` and, with
  lambda_scale=gradient_ratio, rescaled every step (cls_gradient_ratio below).
  """
  warmup = settings.lambda_warmup_steps
  base_key = jax.random.PRNGKey(seed)
  table = None if query_log_prior is None else jnp.asarray(query_log_prior, jnp.float32)
  pair_table = None if pair_weights is None else jnp.asarray(pair_weights, jnp.float32)   # [N]
  sim_targets = (jnp.asarray(similarity_targets, jnp.float32)
                 if similarity_weight and similarity_targets is not None else None)
  ovl_targets = (jnp.asarray(overlap_targets, jnp.float32)
                 if overlap_weight and overlap_targets is not None else None)

  def ce_kwargs(batch):
    adjustment = None if logit_adjustment is None else jnp.asarray(logit_adjustment, jnp.float32)
    if table is not None:                                  # [C] + [B, C] -> [B, C]
      per_row = table[batch["query_index"]]
      adjustment = per_row if adjustment is None else adjustment + per_row
    rows = None if pair_table is None else pair_table[batch["pair_index"]]   # [B]
    return dict(local_block=local_block, class_weights=class_weights,
                logit_adjustment=adjustment, row_weights=rows)

  def forward(params, batch, prefix, key):
    return model.apply({"params": similarity.without_head(params)}, batch[f"{prefix}_input_ids"],
                       batch[f"{prefix}_attention_mask"], batch[f"{prefix}_token_type_ids"],
                       deterministic=False, rngs={"dropout": key})

  def loss_fn(params, batch, step):
    key_std, key_aug = jax.random.split(jax.random.fold_in(base_key, step))
    std_out = forward(params, batch, "std", key_std)        # logits [B, C], cls [B, D]
    aug_out = forward(params, batch, "aug", key_aug) if use_reasoning else None
    multiplier = jnp.minimum(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if use_reasoning and settings.lambda_scale == "gradient_ratio":
      multiplier = multiplier * cls_gradient_ratio(params, std_out["cls"], aug_out["cls"], batch)
    loss, metrics = crsd_loss(std_out, aug_out, batch, settings, lambda_multiplier=multiplier,
                              **ce_kwargs(batch))
    for targets, weight, head, x, metric in (
        (sim_targets, similarity_weight, similarity.SIMILARITY_HEAD, std_out[similarity_from],
         "similarity_mse"),
        (ovl_targets, overlap_weight, similarity.OVERLAP_HEAD, std_out["cls"], "overlap_mse")):
      if targets is not None:   # a training-only regression head: the weighted mean squared error
        total, n = similarity.similarity_loss(params, x, targets[batch["pair_index"]],
                                              batch["weights"], name=head)
        mse = total / jnp.maximum(n, 1.0)
        loss = loss + weight * mse
        metrics = {**metrics, metric: mse, "loss": loss}
    if rank_weight:
      rank_sum, pairs = pairwise_rank.pairwise_rank_loss(
          std_out["logits"], batch["labels"], batch["query_index"], batch["weights"], gains)
      rank = rank_sum / jnp.maximum(pairs, 1.0)
      loss = loss + rank_weight * rank
      metrics = {**metrics, "rank_loss": rank, "rank_pairs": pairs, "loss": loss}
    return loss, metrics

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
      _, m = crsd_loss(outs[0], outs[1], batch, settings, **ce_kwargs(batch))
      return m["ce_std"] + settings.weight_aug_ce * m["ce_aug"], m["infonce"]

    g_ce = jax.grad(lambda c: terms(c)[0])(cls)
    g_nce = jax.grad(lambda c: terms(c)[1])(cls)
    norm = lambda g: jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in g))
    return jax.lax.stop_gradient(norm(g_ce) / jnp.maximum(norm(g_nce), 1e-12))

  return loss_fn


def objective_of(cfg, train_pairs) -> dict:
  """The CE terms' class weights and logit adjustment from the train split's label counts, the
  per-query log prior [Q, C] (None unless student.query_prior) and the per-pair weights [N]
  (None unless class_weighting=query_balanced, or drawn negatives are uncounted or weighted:
  student.cross_query_negatives_counted / _weight), queries numbered as the batches number them
  (tokenize.query_indices of the same train pairs) and pairs in the order the batches index."""
  labels = [p.label_id for p in train_pairs]
  drawn = np.array([negatives.is_drawn_negative(p) for p in train_pairs], bool)   # [N]
  # which pairs the label counts (class weights, the decision rule's prior) are taken over
  counted = (np.ones(len(labels), bool) if cfg.student.get("cross_query_negatives_counted", True)
             else ~drawn)
  counts = np.bincount(np.asarray(labels, np.int64)[counted], minlength=len(cfg.labels))   # [C]
  queries = tokenize.query_indices(train_pairs)
  table = classification.query_log_prior(labels, queries,
                                         len(cfg.labels), cfg.student.query_prior,
                                         cfg.student.query_prior_smoothing)
  pair_weights, balance = None, {}
  if cfg.student.class_weighting == "query_balanced":
    power = float(cfg.student.get("query_balance_power", 0.5))
    pair_weights = classification.query_balanced_weights(labels, queries, len(cfg.labels), power)
    balance = {"query_balanced": {   # summary.json: how uneven the weights are
        "power": power, "max_weight": round(float(pair_weights.max()), 3),
        "effective_pairs": round(float(pair_weights.sum() ** 2 / np.sum(pair_weights ** 2)), 1),
        "pairs": len(labels)}}
  class_weights = classification.class_weights_for(counts, cfg.student.class_weighting,
                                                   cfg.student.class_weights)
  negative_weight = float(cfg.student.get("cross_query_negative_weight", 1.0))
  if drawn.any() and (negative_weight != 1.0 or not counted.all()):
    # per pair: what a real pair of the label weighs (class weights from the counted pairs), the
    # drawn negatives times their own weight; the loss then reads this table, not class_weights
    if pair_weights is None:
      pair_weights = (np.ones(len(labels), np.float32) if class_weights is None
                      else np.asarray(class_weights, np.float32)[labels])
    pair_weights = np.where(drawn, pair_weights * negative_weight, pair_weights).astype(np.float32)
    class_weights = None
    balance["drawn_negatives"] = {"pairs": int(drawn.sum()), "weight": negative_weight,
                                  "counted": bool(counted.all())}
  return {"train_label_counts": counts.tolist(), **balance,
          "pair_weights": pair_weights,
          "class_weights": class_weights,
          "logit_adjustment": classification.log_prior(counts, cfg.student.logit_adjustment),
          "query_log_prior": table}


def with_similarity(cfg, model, params, model_cfg, data, objective: dict):
  """(params, targets [N] | None): with student.similarity_weight > 0, the initial student's
  bi-encoder similarity of each train pair (student/similarity.py) and params + its head;
  the targets' stats go to objective["similarity"]."""
  if not cfg.student.similarity_weight:
    return params, None
  t0 = time.perf_counter()
  targets, stats = similarity.similarity_targets(
      model, params, data.train, data.tokenizer, int(cfg.student.max_len_std),
      cfg.student.get("similarity_normalisation", "split"))
  objective["similarity"] = dict(stats, seconds=round(time.perf_counter() - t0, 1))
  logging.info("similarity targets: %s", objective["similarity"])
  width = len(cfg.labels) if similarity_source(cfg) == "logits" else model_cfg.hidden_size
  return similarity.with_head(params, width), targets


def with_overlap(cfg, params, model_cfg, data, objective: dict) -> tuple[dict, dict]:
  """(params, make_loss_fn kwargs): with student.overlap_weight > 0, each train pair's z-scored
  overlap features (student/overlap_targets.py) and params + their head on [CLS]; the targets'
  stats go to objective["overlap"]. ({} and params unchanged when off.)"""
  weight = float(cfg.student.get("overlap_weight", 0.0))
  if not weight:
    return params, {}
  targets, stats = overlap_targets.overlap_targets(data.train)
  objective["overlap"] = stats
  logging.info("overlap targets: %s", stats)
  params = similarity.with_head(params, model_cfg.hidden_size, name=similarity.OVERLAP_HEAD,
                                outputs=targets.shape[1])
  return params, {"overlap_targets": targets, "overlap_weight": weight}


def rank_kwargs(cfg) -> dict:
  """make_loss_fn's ranking arguments: student.rank_weight and the labels' gains (eval.gains or
  the ESCI ones, ranking.label_gains: what eval ranks by)."""
  weight = float(cfg.student.get("rank_weight", 0.0))
  if not weight:
    return {}
  return {"rank_weight": weight, "gains": ranking.label_gains(cfg.labels, cfg.eval.get("gains"))}


def similarity_source(cfg) -> str:
  """The standard-view output the similarity head reads: "cls" [B, D] or "logits" [B, C]."""
  return cfg.student.get("similarity_from", "cls")


def fit_decision_rule(cfg, predict, params, data, train_label_counts) -> tuple[dict, list[float]]:
  """Valid metrics under the decision rule, and the rule: per-class logit offsets fitted on valid
  macro-F1 (rd_jax/decision.py; student.decision_rule says how, prior_scale reading the train
  split's label counts [C]) when student.fit_offsets, else zeros. The plain argmax's figure
  stays as macro_f1_argmax; macro_f1_crossfit (student.offsets_crossfit_folds > 0) is the
  rule's valid macro-F1 with each query fold decided by offsets fitted on the other folds."""
  logits, gold = predict_lib.predict_logits(predict, params, data.valid, data.tokenizer, cfg)
  fit = decision.fitter(cfg.student.get("decision_rule", "offsets"), train_label_counts)
  offsets = fit(logits, gold).tolist() if cfg.student.fit_offsets else None
  valid = predict_lib.score_logits(logits, gold, data.valid, cfg, offsets)  # + macro_f1_argmax
  valid.pop("logits")
  folds = int(cfg.student.get("offsets_crossfit_folds", 0))
  if offsets and folds:   # an honest valid figure of the rule: offsets fitted on the other queries
    valid["macro_f1_crossfit"] = decision.crossfit_macro_f1(
        logits, gold, [p.query_id for p in data.valid], folds, fit=fit)
    if valid["macro_f1_crossfit"] is None:
      logging.info("valid has fewer queries than student.offsets_crossfit_folds = %d: no "
                   "cross-fitted valid figure", folds)
  offsets = offsets or [0.0] * len(cfg.labels)
  valid["decision_offsets"] = offsets
  return valid, offsets


def with_wide_term(cfg, model_cfg, predict, params, data, train_label_counts):
  """(params + "wide", model config with it, info): student/wide_head.py on the trained student's
  raw valid logits, with the stage's decision rule."""
  deep, _ = predict_lib.predict_logits(predict, params, data.valid, data.tokenizer, cfg)
  fit_rule = (decision.fitter(cfg.student.get("decision_rule", "offsets"), train_label_counts)
              if cfg.student.fit_offsets else None)
  return wide_head.with_wide_term(cfg, model_cfg, params, data, np.asarray(deep, np.float64),
                                  fit_rule)


def run(cfg, workdir: str, *, stage: str = "crsd") -> dict:
  use_reasoning = stage == "crsd"
  stage_dir = os.path.join(workdir, stage)
  storage.makedirs(stage_dir)
  t0 = time.perf_counter()
  mesh = fit.make_mesh(cfg)
  dp = mesh_lib.data_parallel_size(mesh)
  if cfg.train.batch_size % dp:
    raise errors.ConfigError(f"config key train.batch_size = {cfg.train.batch_size} is not divisible by "
                             f"the {dp} data-parallel devices of the mesh")

  data = data_lib.load_student_data(cfg, stage_dir, use_reasoning=use_reasoning)
  model_cfg, params, init_info = initial_student(cfg, jax.random.PRNGKey(cfg.seed))
  model = bert.BertClassifier(remat.configure(model_cfg, cfg.student))  # remat: training only
  objective = objective_of(cfg, data.train)
  if (cfg.student.get("head_init", "normal") == "probe"
      and "classifier/kernel" in init_info["initialised"]):   # LP-FT; an imported head is kept
    params = probe_head.with_probe_head(cfg, model, params, mesh, data, objective["class_weights"],
                                        objective)
  params, sim_targets = with_similarity(cfg, model, params, model_cfg, data, objective)
  params, overlap_kwargs = with_overlap(cfg, params, model_cfg, data, objective)
  loss_fn = make_loss_fn(model, CrsdLossConfig.from_config(cfg.crsd), use_reasoning=use_reasoning,
                         local_block=cfg.train.batch_size // dp, seed=cfg.seed,
                         class_weights=objective["class_weights"],
                         logit_adjustment=objective["logit_adjustment"],
                         query_log_prior=objective.pop("query_log_prior"),
                         pair_weights=objective.pop("pair_weights"),
                         similarity_targets=sim_targets,
                         similarity_weight=cfg.student.similarity_weight,
                         similarity_from=similarity_source(cfg),
                         **rank_kwargs(cfg), **overlap_kwargs)
  batches = batches_lib.train_batches(data.train, data.tokenizer, cfg,
                                         use_reasoning=use_reasoning)
  trained = fit.fit(cfg, stage, workdir, params=params, loss_fn=loss_fn, batches=batches,
                    mesh=mesh, rules=sharding.BERT_RULES, with_step=True)
  if trained.interrupted:
    return fit.interrupted(cfg, stage)

  predict = predict_lib.make_predict_fn(model, mesh)
  trained_params = similarity.without_head(trained.params)   # the student itself: no aux head
  wide_info = None
  if cfg.student.get("wide_features", ""):   # the wide term: fitted now, not trained (wide_head.py)
    trained_params, model_cfg, wide_info = with_wide_term(cfg, model_cfg, predict, trained_params,
                                                          data, objective["train_label_counts"])
    predict = predict_lib.make_predict_fn(bert.BertClassifier(model_cfg), mesh)
  valid, offsets = fit_decision_rule(cfg, predict, trained_params, data,
                                     objective["train_label_counts"])
  if wide_info is not None:   # beta and the rule re-chosen per fold: the honest valid figure
    valid["macro_f1_crossfit"] = wide_info["valid_macro_f1_crossfit"]
    valid["wide"] = wide_info
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
      "valid_macro_f1_crossfit": valid.get("macro_f1_crossfit"),
      **({"wide": wide_info} if wide_info is not None else {}),
      "objective": objective,
      "last_train_metrics": stats["last_metrics"], "init": init_info,
      "data": data.report, "mesh": dict(mesh.shape), "devices": jax.device_count(),
  }
  fit.finish(stage_dir, trained_params, meta, summary)
  logging.info("%s done: valid macro-F1 %.4f (%d steps, %.0f s)", stage, valid["macro_f1"],
               stats["steps"], summary["seconds"])
  return summary


def run_baseline(cfg, workdir: str) -> dict:
  """`--stage=baseline`: the same student and data, cross-entropy on the standard view only —
  the ablation the paper reports (no reasoning, no InfoNCE). Writes <workdir>/baseline/."""
  return run(cfg, workdir, stage="baseline")
