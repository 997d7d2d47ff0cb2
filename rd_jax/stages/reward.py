"""`--stage=reward`: a K-head reward model on the teacher's backbone, trained on ranked samples.

Data. `reward.prompts` TRAIN-fold (query, item) pairs with a gold label are drawn in a seeded
order (prompts over `teacher.max_prompt_len` tokens are skipped and counted). The backbone teacher
(sft > cpt > base) samples `reward.samples_per_prompt` responses to each at `reward.temperature`;
each is parsed and scored by `reward_scorers.score_all` against the gold label: K values in [0, 1].
Every unordered pair (i, j) of one prompt's responses is a training pair with, per dimension k,

    y_k = pair_preferences(s_i, s_j)_k in {1, 0, 0.5},   mask_k = [y_k != 0.5]   (ties MASKED:
    a tie says nothing about the order, and training it would pull both heads together).

Pairs tied on every dimension carry no signal and are dropped (counted in summary.json); a
dimension no pair decides keeps a random head (warned; `decided_pairs` in meta.json). The same
is done for `reward.valid_prompts` VALID-fold prompts (held-out queries). All of it is written to
`<workdir>/reward/samples.jsonl` (one prompt per line: responses, parses, scores) and reused when
a rerun selects the same prompts with the same teacher and temperature (scores are recomputed).

Model. params = {"backbone": decoder params, "heads": RewardHeads params}; a row is prompt tokens +
response tokens (+ EOS when the response finished), right-padded:
    h = Decoder.hidden_states(row) [B, L, D],   s = RewardHeads(h, mask) [B, K]  (last real token)
Loss (`reward.loss`), one forward over the stacked [2B, L] rows of a batch of B pairs:
    bradley_terry (default): sum_{pairs, k} mask * BT-NLL(s_a - s_b; y) / sum mask
    regression: mean over both responses and all k of (s - scorer value)^2
Bradley-Terry is the default: only the within-prompt order of the scores is learnt, which is all
DPO uses (best vs worst of one prompt's samples) and is robust to the scorers' uncalibrated
scales; regression keeps their scale (to threshold or compare rewards across prompts).

Metric. Pairwise accuracy on the valid prompts, per dimension: among pairs whose scorer values
differ on k, the share whose head scores are ordered the same way; `combined` does the same for
w . s vs w . scorer (w = `reward.weights`). Reported before and after training.
Single-process sampling and scoring (as `generate.generate_texts`).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from rd_jax import errors
from rd_jax import metrics as metrics_lib, reward_scorers
from rd_jax import storage
from rd_jax.data import readers
from rd_jax.losses import reward as reward_losses
from rd_jax.teacher import eval as te, model as teacher_model, rows as rows_lib, sampling
from rd_jax.teacher.reward_model import encode, init_heads, reward_scores, round_up, score_responses
from rd_jax.train import fit

LOSSES = ("bradley_terry", "regression")
TIE_TOL = 1e-6


# ------------------------------------------------------------------------------ pairs
def build_pairs(records: list[dict], dimensions) -> tuple[list[dict], int]:
  """All i < j response pairs per record -> ([{"record", "a", "b", "prefer" [K], "mask" [K]}],
  number dropped because every dimension ties)."""
  pairs, all_tie = [], 0
  for ri, rec in enumerate(records):
    rs = rec["responses"]
    for i in range(len(rs)):
      for j in range(i + 1, len(rs)):
        y = reward_scorers.pair_preferences(rs[i]["scores"], rs[j]["scores"], dimensions, TIE_TOL)
        mask = [float(v != 0.5) for v in y]
        if not any(mask):
          all_tie += 1
          continue
        pairs.append({"record": ri, "a": i, "b": j, "prefer": y, "mask": mask})
  return pairs, all_tie


def reusable(path: str, selected: list[dict], num_samples: int) -> list[dict] | None:
  """The records in `path` when they are exactly `selected` (same prompts in order, same teacher
  and temperature, `num_samples` responses each), else None (with a log line)."""
  if not storage.exists(path):
    return None
  old = sampling.read_jsonl(path)
  key = lambda r: [r.get(k) for k in ("split", "query_id", "product_id", "query", "sampled_by",
                                  "temperature")]
  if [key(r) for r in old] == [key(r) for r in selected] and all(
      len(r["responses"]) == num_samples for r in old):
    return old
  logging.warning("%s holds other prompts, teacher or sample counts: sampling again", path)
  return None


# ------------------------------------------------------------------------------ rows + loss
def pair_rows(records, pairs, tokenizer, dimensions) -> dict[str, np.ndarray]:
  """Training rows: tokens/mask of both responses [N, L], prefer/pair_mask/targets [N, K]."""
  enc = {}
  for p in pairs:
    rec = records[p["record"]]
    for side in ("a", "b"):
      r = rec["responses"][p[side]]
      enc[(p["record"], p[side])] = encode(tokenizer, rec["prompt"], r["text"], r["finished"])[0]
  length = round_up(max(map(len, enc.values())))
  pad = tokenizer.pad_token_id or 0
  out = {}
  for side in ("a", "b"):
    seqs = [enc[(p["record"], p[side])] for p in pairs]
    padded = rows_lib.right_pad(seqs, [[0]] * len(seqs), length, pad)
    out[f"tokens_{side}"], out[f"mask_{side}"] = padded["tokens"], padded["attention_mask"]
    out[f"target_{side}"] = np.asarray(
        [[records[p["record"]]["responses"][p[side]]["scores"][d] for d in dimensions]
         for p in pairs],
        np.float32)
  out["prefer"] = np.asarray([p["prefer"] for p in pairs], np.float32)
  out["pair_mask"] = np.asarray([p["mask"] for p in pairs], np.float32)
  return out


def reward_loss(config, dimensions, loss_name: str):
  """`loss_fn(params, batch) -> (loss, metrics)`; the batch's a and b rows share one forward."""
  if loss_name not in LOSSES:
    raise errors.ConfigError(f"reward.loss must be one of {LOSSES}, got {loss_name!r}")

  def loss_fn(params, batch):
    tokens = jnp.concatenate([batch["tokens_a"], batch["tokens_b"]])            # [2B, L]
    mask = jnp.concatenate([batch["mask_a"], batch["mask_b"]])
    s_a, s_b = jnp.split(reward_scores(params, config, tokens, mask), 2)        # [B, K] each
    total, count, per = reward_losses.bradley_terry_loss(s_a, s_b, batch["prefer"],
                                                         batch["pair_mask"])
    if loss_name == "regression":
      pred = jnp.concatenate([s_a, s_b])
      target = jnp.concatenate([batch["target_a"], batch["target_b"]])
      total, count = reward_losses.reward_regression_loss(pred, target, jnp.ones_like(pred))
    loss = total / jnp.maximum(count, 1.0)
    metrics = {"loss": loss, **{f"accuracy/{d}": per["accuracy"][k]
                                for k, d in enumerate(dimensions)}}
    return loss, metrics

  return loss_fn


# ------------------------------------------------------------------------------ evaluation
def pairwise_accuracy(records, predicted: list[np.ndarray], dimensions, weights) -> dict:
  """Held-out pairwise accuracy per dimension and of the combined reward (None: no pair)."""
  w = np.asarray(weights, np.float64)
  hits = {d: [0, 0] for d in list(dimensions) + ["combined"]}
  for rec, pred in zip(records, predicted):
    gold = np.asarray([[r["scores"][d] for d in dimensions] for r in rec["responses"]])
    gold, pred = np.column_stack([gold, gold @ w]), np.column_stack([pred, pred @ w])
    for i in range(len(gold)):
      for j in range(i + 1, len(gold)):
        for k, d in enumerate(hits):
          if abs(gold[i, k] - gold[j, k]) > TIE_TOL:
            hits[d][0] += int((pred[i, k] > pred[j, k]) == (gold[i, k] > gold[j, k]))
            hits[d][1] += 1
  return {d: {"accuracy": (c / n if n else None), "pairs": n} for d, (c, n) in hits.items()}


def evaluate(params, config, tokenizer, records, cfg) -> dict:
  flat = [(rec["prompt"], r["text"], r["finished"]) for rec in records for r in rec["responses"]]
  prompts, texts, finished = zip(*flat)
  scores = score_responses(params, config, tokenizer, prompts, texts, finished=finished,
                           batch_size=2 * cfg.reward.batch_size)
  sizes = np.cumsum([len(rec["responses"]) for rec in records])[:-1]
  return pairwise_accuracy(records, np.split(scores, sizes), cfg.reward.dimensions,
                           cfg.reward.weights)


# ------------------------------------------------------------------------------ stage
def prepare_samples(cfg, teacher, path: str) -> tuple[list[dict], dict]:
  """Selects, samples (or reuses `path`), scores and writes the train + valid records."""
  r, chosen, info = cfg.reward, [], {}
  splits = readers.train_valid_test(readers.load_pairs(cfg.data.path, cfg)[0], cfg)
  for split, limit, seed in (("train", r.prompts, 1), ("valid", r.valid_prompts, 2)):
    part, info[split] = sampling.select_prompts(splits[split], teacher.tokenizer, cfg.labels,
                                                cfg.teacher.max_prompt_len, limit, [cfg.seed, seed],
                                                version=cfg.teacher.prompt_version)
    chosen += [dict(x, split=split, sampled_by=teacher.source, temperature=r.temperature)
               for x in part]
  records = reusable(path, chosen, r.samples_per_prompt)
  info["samples_reused"] = records is not None
  if records is None:
    records = []
    for split, seed in (("train", 1), ("valid", 2)):
      part = [x for x in chosen if x["split"] == split]
      responses = sampling.sample_responses(
          teacher.config, teacher.params, teacher.tokenizer, [x["prompt"] for x in part],
          num_samples=r.samples_per_prompt, temperature=r.temperature, seed=cfg.seed + seed,
          batch_size=r.generate_batch_size, max_new_tokens=cfg.teacher.max_response_len,
          max_prompt_len=cfg.teacher.max_prompt_len, **te.generation_options(cfg))
      records += [dict(x, responses=rs) for x, rs in zip(part, responses)]
  records = [sampling.score_record(x, cfg.labels, r.dimensions, cfg.teacher.max_response_len)
             for x in records]  # scorers are cheap: rescored on reuse too
  if jax.process_index() == 0:
    metrics_lib.write_jsonl_atomic(records, path)
  for split in ("train", "valid"):
    resp = [x for rec in records if rec["split"] == split for x in rec["responses"]]
    info[split].update(responses=len(resp), parsed=sum(x["parse_error"] is None for x in resp),
                       mean_scores={d: float(np.mean([x["scores"][d] for x in resp]))
                                    for d in r.dimensions})
  return records, info


def run(cfg, workdir: str) -> dict:
  stage_dir = os.path.join(workdir, "reward")
  storage.makedirs(stage_dir)
  t0, r = time.perf_counter(), cfg.reward
  dims = list(r.dimensions)
  weights = reward_losses.validate_reward_weights(r.weights, len(dims))
  if r.loss not in LOSSES:
    raise errors.ConfigError(f"config key reward.loss = {r.loss!r}; allowed: {', '.join(LOSSES)}")
  mesh = fit.make_mesh(cfg)
  teacher = teacher_model.load_teacher(cfg, workdir, mesh, upstream=("sft", "cpt"))
  records, info = prepare_samples(cfg, teacher, os.path.join(stage_dir, "samples.jsonl"))
  train = [x for x in records if x["split"] == "train"]
  valid = [x for x in records if x["split"] == "valid"]
  pairs, all_tie = build_pairs(train, dims)
  decided = dict(zip(dims, np.sum([p["mask"] for p in pairs], 0).astype(int).tolist()
                      if pairs else [0] * len(dims)))
  info["train"].update(pairs=len(pairs), dropped_all_tie_pairs=all_tie, decided_pairs=decided)
  if not all(decided.values()):  # its head would stay at its random init
    logging.warning("no training pair differs on %s: those heads are untrained",
                    [d for d, n in decided.items() if not n])
  if len(pairs) < r.batch_size:
    raise errors.DataError(f"{len(pairs)} training pairs with a scorer difference ({all_tie} all-tie "
                           f"pairs dropped) are fewer than reward.batch_size={r.batch_size}: raise "
                           "reward.prompts, reward.samples_per_prompt or reward.temperature")

  config = teacher.config
  params = {"backbone": teacher.params, "heads": init_heads(config, len(dims), cfg.seed)}
  before = evaluate(params, config, teacher.tokenizer, valid, cfg)
  batches = rows_lib.row_batches(pair_rows(train, pairs, teacher.tokenizer, dims),
                                 batch_size=r.batch_size, seed=cfg.seed)
  trained = fit.fit(cfg, "reward", workdir, params=params, loss_fn=reward_loss(config, dims, r.loss),
                    batches=batches, mesh=mesh, rules=teacher_model.TEACHER_RULES)
  if trained.interrupted:
    return fit.interrupted(cfg, "reward")
  after = evaluate(trained.params, config, teacher.tokenizer, valid, cfg)
  meta = {"model": "reward", "model_config": config.to_dict(), "dimensions": dims,
          "weights": weights.tolist(), "loss": r.loss, "tokenizer": teacher.tokenizer_spec,
          "labels": list(cfg.labels), "stage": "reward", "step": trained.step,
          "started_from": teacher.source, "metrics": after, "decided_pairs": decided}
  summary = {"stage": "reward", "loss": r.loss, "dimensions": dims, "weights": weights.tolist(),
             "data": info, "valid_accuracy_before": before,
             "valid_accuracy": after, "steps": trained.stats["steps"],
             "resumed_from": trained.stats["resumed_from"],
             "last_metrics": trained.stats["last_metrics"],
             "started_from": teacher.source, "seconds": round(time.perf_counter() - t0, 1)}
  fit.finish(stage_dir, trained.params, meta, summary)
  logging.info("reward done: valid pairwise accuracy %s",
               {d: v["accuracy"] for d, v in after.items()})
  return summary
