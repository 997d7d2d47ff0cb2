"""`--stage=dpo`: preference optimisation of the teacher on reward-model-ranked samples.

Pairs. The policy starts from the SFT teacher (sft > cpt > base); the reference is the same
initial params, frozen. For each of `dpo.prompts` TRAIN-fold prompts the policy samples
`dpo.samples_per_prompt` responses at `dpo.temperature`; the reward model
(`<workdir>/reward/final`) scores them [N, K] and `combine_rewards` weighs them with
`reward.weights` into r [N]. chosen = argmax r, rejected = argmin r, kept when
r_chosen - r_rejected >= `dpo.min_margin` (dropped prompts are counted). Every prompt's pair, with
both responses, their per-dimension scores and combined rewards, the margin and the reference
log-probs, is written to `<workdir>/dpo/pairs.jsonl` (the filter applies when it is read, so a
rerun with another margin reuses it, as does any rerun with the same prompts, sampler and reward
model).

Reference log-probs are computed once, BEFORE training, in a separate jitted pass over the pairs
with the initial params: the step then holds only the policy. For a response y of prompt x,
    log pi(y|x) = sum_t log p(y_t | x, y_<t)  (fp32; `lm.token_log_probs`),  mean = sum / |y|
and `preference.LENGTH_NORMALISED[dpo.loss]` picks the sum (DPO) or the per-token mean (IPO,
SimPO). The step runs one forward over the stacked [2B, L] chosen + rejected rows and calls
`preference_loss(dpo.loss, ...)` with beta = `dpo.beta` (`dpo.simpo_beta` for SimPO, whose
length-normalised rewards need a beta ~20x larger) and gamma = `dpo.simpo_gamma`.
Metrics: loss, reward_accuracy, reward_margin, logp_chosen, logp_rejected (of the loss's kind),
and kl_to_reference = mean over both responses of (log ref(y) - log pi(y)) (sequence sums): the
responses were sampled from the reference, so this estimates KL(ref || pi) (a drift monitor,
biased by the best/worst selection; it is 0 at step 0).

Evaluation, before and after training, on `dpo.eval_prompts` VALID-fold prompts: the teacher's
greedy responses -> macro-F1 of the parsed labels against gold (`teacher/eval.score`: an unparsed
response is wrong for its gold class, never mapped to a label) and parse rate, the reward model's
mean score per dimension and combined, and the scorers' mean values against gold.
final/ holds the policy (model "decoder"), which annotate picks up first. Sampling, scoring and
the reference pass run in one process (as `generate.generate_texts` does); the step is sharded.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from rd_jax import errors
from rd_jax import checkpoint, metrics as metrics_lib
from rd_jax import storage
from rd_jax.data import readers
from rd_jax.losses import lm, preference, reward as reward_losses
from rd_jax.models import decoder
from rd_jax.teacher import eval as te, model as teacher_model, rows as rows_lib, sampling
from rd_jax.teacher import reward_model
from rd_jax.train import fit

SIDES = ("chosen", "rejected")


def build_preference_pairs(records, scores, dimensions, weights) -> list[dict]:
  """records[i]["responses"] with reward-model scores[i] [n_i, K] -> one best-vs-worst pair per
  record (all of them, for inspection; `keep_pairs` applies the margin filter)."""
  pairs = []
  for rec, s in zip(records, scores):
    combined = np.asarray(reward_losses.combine_rewards(np.asarray(s), weights))   # [n_i]
    best, worst = int(np.argmax(combined)), int(np.argmin(combined))
    pair = {k: rec[k] for k in ("query", "query_id", "product_id", "gold_label", "prompt")}
    for side, i in zip(SIDES, (best, worst)):
      r = rec["responses"][i]
      pair.update({side: r["text"], f"{side}_finished": r["finished"], f"{side}_index": i,
                   f"{side}_scores": dict(zip(dimensions, map(float, s[i]))),
                   f"{side}_reward": float(combined[i])})
    pair.update(margin=float(combined[best] - combined[worst]),
                all_rewards=[float(c) for c in combined])
    pairs.append(pair)
  return pairs


def keep_pairs(pairs, min_margin: float) -> tuple[list[dict], dict]:
  """The pairs with margin >= min_margin and two distinct responses; counts of the others."""
  dropped = {"all_equal": 0, "below_min_margin": 0}
  kept = []
  for p in pairs:
    if p["chosen_index"] == p["rejected_index"]:
      dropped["all_equal"] += 1
    elif p["margin"] < min_margin:
      dropped["below_min_margin"] += 1
    else:
      kept.append(p)
  return kept, dropped


def encode_pairs(pairs, tokenizer) -> dict[str, np.ndarray]:
  """{side}_tokens / _mask / _loss_mask [N, L] (loss mask: response tokens, EOS included)."""
  enc = {side: [reward_model.encode(tokenizer, p["prompt"], p[side], p[f"{side}_finished"])
                for p in pairs] for side in SIDES}
  length = reward_model.round_up(max(len(ids) for side in SIDES for ids, _ in enc[side]))
  rows = {}
  for side in SIDES:
    seqs = [ids for ids, _ in enc[side]]
    masks = [[0] * n + [1] * (len(ids) - n) for ids, n in enc[side]]
    for k, v in rows_lib.right_pad(seqs, masks, length, tokenizer.pad_token_id or 0).items():
      rows[f"{side}_{k}"] = v
  return rows


def sequence_log_probs(params, config, tokens, mask, loss_mask):
  """[B, L] rows -> (sum, mean) of the response tokens' log-probs, each [B] fp32
  (`lm.sequence_log_prob` / `lm.sequence_mean_log_prob`)."""
  logits, _ = decoder.Decoder(config).apply({"params": params}, tokens,
                                            decoder.positions_from_mask(mask),
                                            attention_mask=mask)                     # [B, L, V]
  targets, tmask = lm.next_token_targets(tokens, loss_mask)
  return (lm.sequence_log_prob(logits, targets, tmask),                              # [B]
          lm.sequence_mean_log_prob(logits, targets, tmask))


_seq_logps = jax.jit(sequence_log_probs, static_argnames="config")


def reference_log_probs(params, config, rows, batch_size: int) -> dict[str, np.ndarray]:
  """The separate reference pass: ref_{side}_sum / ref_{side}_mean [N] fp32, batches padded."""
  n = len(rows["chosen_tokens"])
  out = {f"ref_{side}_{k}": np.zeros(n, np.float32) for side in SIDES for k in ("sum", "mean")}
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size) % n   # the last batch wraps (results dropped)
    for side in SIDES:
      total, mean = _seq_logps(params, config, *(rows[f"{side}_{k}"][idx] for k in
                                                 ("tokens", "attention_mask", "loss_mask")))
      keep = slice(0, min(batch_size, n - start))
      out[f"ref_{side}_sum"][start:start + batch_size] = np.asarray(total)[keep]
      out[f"ref_{side}_mean"][start:start + batch_size] = np.asarray(mean)[keep]
  return out


def dpo_loss(config, *, loss: str, beta: float, gamma: float):
  """`loss_fn(params, batch) -> (loss, metrics)`; the batch carries the reference log-probs."""
  kind = "mean" if preference.LENGTH_NORMALISED[loss] else "sum"

  def loss_fn(params, batch):
    cat = lambda k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]])  # [2B, L]
    total, mean = sequence_log_probs(params, config, cat("tokens"), cat("attention_mask"),
                                     cat("loss_mask"))                              # [2B] each
    pi_c, pi_r = jnp.split(mean if kind == "mean" else total, 2)
    loss_sum, count, m = preference.preference_loss(
        loss, pi_c, pi_r, batch[f"ref_chosen_{kind}"], batch[f"ref_rejected_{kind}"],
        beta=beta, gamma=gamma)
    ref_total = jnp.concatenate([batch["ref_chosen_sum"], batch["ref_rejected_sum"]])
    value = loss_sum / jnp.maximum(count, 1.0)
    return value, {"loss": value, "kl_to_reference": jnp.mean(ref_total - total),
                   **{k: m[k] for k in ("reward_accuracy", "reward_margin", "logp_chosen",
                                        "logp_rejected")}}

  return loss_fn


def teacher_quality(params, teacher, records, rm, cfg) -> dict:
  """Greedy responses on `records` -> macro-F1, parse rate, mean reward-model and scorer scores."""
  responses = [rs[0] for rs in sampling.sample_responses(
      teacher.config, params, teacher.tokenizer, [r["prompt"] for r in records], num_samples=1,
      temperature=0.0, seed=cfg.seed, batch_size=cfg.dpo.generate_batch_size,
      max_new_tokens=cfg.teacher.max_response_len, max_prompt_len=cfg.teacher.max_prompt_len,
      **te.generation_options(cfg))]
  labels = list(cfg.labels)
  scored = [sampling.score_record(dict(r, responses=[x]), labels, cfg.reward.dimensions,
                                  cfg.teacher.max_response_len)["responses"][0]
            for r, x in zip(records, responses)]
  m = te.score([labels.index(r["gold_label"]) for r in records],
               [x["parsed_label"] for x in scored], labels)
  quality = {k: m[k] for k in ("macro_f1", "macro_f1_parsed", "accuracy")}
  quality["parse_rate"] = float(np.mean([x["parse_error"] is None for x in scored]))
  rm_scores = reward_model.score_responses(
      rm.params, rm.config, rm.tokenizer, [r["prompt"] for r in records],
      [x["text"] for x in scored], finished=[x["finished"] for x in scored],
      batch_size=2 * cfg.dpo.batch_size)                                             # [N, K]
  dims = list(cfg.reward.dimensions)
  quality["reward_model_mean"] = dict(zip(dims, map(float, rm_scores.mean(0))))
  quality["reward_model_mean"]["combined"] = float(
      np.mean(reward_losses.combine_rewards(rm_scores, cfg.reward.weights)))
  quality["scorer_mean"] = {d: float(np.mean([x["scores"][d] for x in scored])) for d in dims}
  quality["prompts"] = len(records)
  return quality


def make_pairs(policy, rm, train, cfg, weights) -> list[dict]:
  """Sample, score, pick best/worst, then the reference pass with the (still initial) policy."""
  d = cfg.dpo
  responses = sampling.sample_responses(
      policy.config, policy.params, policy.tokenizer, [r["prompt"] for r in train],
      num_samples=d.samples_per_prompt, temperature=d.temperature, seed=cfg.seed + 3,
      batch_size=d.generate_batch_size, max_new_tokens=cfg.teacher.max_response_len,
      max_prompt_len=cfg.teacher.max_prompt_len, **te.generation_options(cfg))
  flat = [(r["prompt"], x["text"], x["finished"]) for r, rs in zip(train, responses) for x in rs]
  prompts, texts, finished = zip(*flat)
  scores = reward_model.score_responses(rm.params, rm.config, rm.tokenizer, prompts, texts,
                                        finished=finished, batch_size=2 * d.batch_size)  # [N, K]
  scores = np.split(scores, np.cumsum([len(rs) for rs in responses])[:-1])
  records = [dict(r, responses=rs) for r, rs in zip(train, responses)]
  pairs = build_preference_pairs(records, scores, list(cfg.reward.dimensions), weights)
  ref = reference_log_probs(policy.params, policy.config, encode_pairs(pairs, policy.tokenizer),
                            2 * d.batch_size)
  for i, p in enumerate(pairs):
    p.update({k: float(v[i]) for k, v in ref.items()})
  return pairs


def _reward_model_path(workdir: str) -> str:
  path = os.path.join(workdir, "reward", "final")
  if not checkpoint.is_complete(path):
    raise checkpoint.CheckpointError(f"dpo needs the reward model at {path} (no complete final/ "
                                     "there): run --stage=reward first")
  return path


def _reward_model(workdir: str, mesh, cfg, policy) -> reward_model.RewardModel:
  path = _reward_model_path(workdir)
  rm = reward_model.load_reward_model(path, mesh, {policy.tokenizer_spec: policy.tokenizer})
  if rm.dimensions != list(cfg.reward.dimensions):
    raise errors.ConfigError(f"the reward model at {path} has dimensions {rm.dimensions} but config key "
                             f"reward.dimensions = {list(cfg.reward.dimensions)}")
  return rm


def run(cfg, workdir: str) -> dict:
  stage_dir = os.path.join(workdir, "dpo")
  storage.makedirs(stage_dir)
  t0, d = time.perf_counter(), cfg.dpo
  dims = list(cfg.reward.dimensions)
  weights = reward_losses.validate_reward_weights(cfg.reward.weights, len(dims))
  if d.loss not in preference.LOSSES:
    raise errors.ConfigError(f"config key dpo.loss = {d.loss!r}; allowed: {', '.join(preference.LOSSES)}")
  mesh = fit.make_mesh(cfg)
  _reward_model_path(workdir)  # fails before any loading or sampling when it is missing
  policy = teacher_model.load_teacher(cfg, workdir, mesh, upstream=("sft", "cpt"))
  rm = _reward_model(workdir, mesh, cfg, policy)
  splits = readers.train_valid_test(readers.load_pairs(cfg.data.path, cfg)[0], cfg)
  select = lambda split, limit, seed: sampling.select_prompts(
      splits[split], policy.tokenizer, cfg.labels, cfg.teacher.max_prompt_len, limit,
      [cfg.seed, seed], version=cfg.teacher.prompt_version)
  train, info = select("train", d.prompts, 3)
  valid, _ = select("valid", d.eval_prompts, 4)

  # pairs.jsonl + before-training evaluation, reused by a rerun with the same prompts/settings
  pairs_path, prep_path = (os.path.join(stage_dir, n) for n in ("pairs.jsonl", "prep.json"))
  key = {"train": [[r["query_id"], r["product_id"]] for r in train], "policy": policy.source,
         "valid": [[r["query_id"], r["product_id"]] for r in valid], "weights": weights.tolist(),
         "reward_model": hashlib.md5(json.dumps(rm.meta, sort_keys=True).encode()).hexdigest(),
         **{k: d[k] for k in ("samples_per_prompt", "temperature")}}
  prep = json.loads(storage.read_text(prep_path)) if storage.exists(prep_path) else {}
  if prep.get("key") == key and storage.exists(pairs_path):
    pairs = sampling.read_jsonl(pairs_path)
  else:
    pairs = make_pairs(policy, rm, train, cfg, weights)
    prep = {"key": key, "before": teacher_quality(policy.params, policy, valid, rm, cfg)}
    if jax.process_index() == 0:
      metrics_lib.write_jsonl_atomic(pairs, pairs_path)
      metrics_lib.write_json_atomic(prep, prep_path)
  before = prep["before"]
  decided = rm.meta.get("decided_pairs", {})
  untrained = [k for k, w in zip(dims, weights) if w > 0 and not decided.get(k, 1)]
  if untrained:
    logging.warning("reward heads %s saw no training pair (their scores are noise) yet weigh in "
                    "reward.weights", untrained)
  pairs, dropped = keep_pairs(pairs, d.min_margin)
  if len(pairs) < d.batch_size:
    raise errors.DataError(f"{len(pairs)} preference pairs (prompts dropped: {dropped}) are fewer than "
                           f"dpo.batch_size={d.batch_size}: lower dpo.min_margin (the margins are in "
                           f"{pairs_path}) or raise dpo.prompts / dpo.samples_per_prompt")
  del rm  # not needed during training; reloaded for the final evaluation

  rows = encode_pairs(pairs, policy.tokenizer)
  rows.update({k: np.asarray([p[k] for p in pairs], np.float32)
               for k in pairs[0] if k.startswith("ref_")})
  beta = d.simpo_beta if d.loss == "simpo" else d.beta
  batches = rows_lib.row_batches(rows, batch_size=d.batch_size, seed=cfg.seed)
  trained = fit.fit(cfg, "dpo", workdir, params=policy.params,
                    loss_fn=dpo_loss(policy.config, loss=d.loss, beta=beta, gamma=d.simpo_gamma),
                    batches=batches, mesh=mesh, rules=teacher_model.TEACHER_RULES)
  if trained.interrupted:
    return fit.interrupted(cfg, "dpo")
  after = teacher_quality(trained.params, policy, valid, _reward_model(workdir, mesh, cfg, policy),
                          cfg)
  summary = {"stage": "dpo", "loss": d.loss, "beta": beta, "pairs": len(pairs),
             "prompts": info, "dropped_prompts": dropped, "before": before, "after": after,
             "untrained_reward_dimensions": untrained,
             "steps": trained.stats["steps"], "resumed_from": trained.stats["resumed_from"],
             "last_metrics": trained.stats["last_metrics"], "started_from": policy.source,
             "seconds": round(time.perf_counter() - t0, 1)}
  fit.finish(stage_dir, trained.params,
             teacher_model.teacher_meta(cfg, policy, stage="dpo", step=trained.step, loss=d.loss,
                                        beta=beta, valid=after), summary)
  logging.info("dpo done: valid macro-F1 %.4f -> %.4f, combined reward %.4f -> %.4f",
               before["macro_f1"], after["macro_f1"], before["reward_model_mean"]["combined"],
               after["reward_model_mean"]["combined"])
  return summary
