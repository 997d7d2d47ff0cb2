"""`--stage=sft`: supervised fine-tuning of the teacher on prompt -> reasoning + final label.

Starts from <workdir>/cpt/final when complete, else the base model (`teacher.init`).

Prompt: `data/prompts.build_prompt` through the tokenizer's chat template (system turn; user turn
with the query, the item text, the label definitions and the answer format). The teacher learns
to answer (`prompts.build_sft_target`, parsed back by `prompts.parse_response`):

    <reasoning: two or three short sentences>
    Label: <one of cfg.labels><EOS>

Loss: token-mean next-token CE on the response tokens and the EOS only; prompt and padding are
masked (`loss_mask`). `sft.label_loss_weight` (ours; default 1) weighs the label's tokens w and
the rest 1, and the loss is the weighted mean (`target_weights`). A response longer than
`teacher.max_response_len` tokens (EOS included) has its reasoning cut at the end so that the
label line survives; cut targets are counted.

With `sft.shared_prefix` the prompt tokens every row shares (chat template, instructions,
definitions: ~170 of the demo's ~250) are cut off the rows and run once per batch
(`shared_prefix_rows`, `teacher/model.shared_prefix_logits`): the same loss and gradients for
P + B L token passes instead of B (P + L). The definitions' order is then drawn per batch (one of
the orders' prefixes, `rows.row_batches(prefixes=...)`), not fixed per chain.

Chains (a reasoning + label per TRAIN pair) come from:
- `sft.chains_path`: a user JSONL, one object per line: `query_id` + `product_id` (or `query` +
  `product_id`), `reasoning` (non-empty string), `label` (one of cfg.labels). Each line is matched
  to a pair of `data.path`; an unmatched or malformed line raises DataError "file:line: reason".
  Chains of valid/test pairs are not trained on (counted as `outside_train_folds`).
- `sft.chains_from=rules` (ours): every train pair, its rule rationale + its gold label
  (`rule_chains`; no generation), rebuilt on every start and written to
  <workdir>/sft/rule_chains.jsonl to inspect (never over a bootstrap's chains.jsonl). With
  `sft.cross_query_negatives = k` each train query also gets k items of other train queries,
  labelled Irrelevant, with their rule rationales (`drawn_negatives`).
- otherwise a STaR bootstrap (rejection sampling + rationalisation) from the starting teacher on up
  to `sft.bootstrap_pairs` train pairs: `sft.bootstrap_samples` samples per prompt at
  `sft.bootstrap_temperature`; the first that parses to the GOLD label with non-empty reasoning is
  kept ("sample"). For the rest the prompt gets `prompts.RATIONALIZATION_HINT` (the gold label),
  the same number of samples is drawn, and the first that parses to gold and does not mention the
  hint is kept ("rationalized") — trained under the PLAIN prompt. Others are dropped and counted.
  With `sft.answer_extraction` (ours; zero-shot-CoT's second step, Kojima et al. 2022) a finished
  sample that has reasoning but no label line — what a small base model writes — is fed back with
  "\nLabel:" appended and the label read from 4 greedy tokens; its source gets "+extracted".
  Without it SmolLM2-135M kept 0 of 64 pairs (it never wrote the label line, even with the hint).
Chains go to <workdir>/sft/chains.jsonl (user format + "source"; atomic) and are reused on restart.

Evaluation: greedy macro-F1 on up to `sft.eval_pairs` VALID pairs before (cached in
eval_before.json) and after training; outputs that do not parse count as wrong.
Writes <workdir>/sft/: chains.jsonl, chains_report.json (bootstrap; rules: rule_chains.jsonl),
eval_before.json, checkpoints/, final/, metrics.jsonl, tb/, summary.json (last).
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import time

import jax
import numpy as np
from absl import logging

from rd_jax import errors
from rd_jax import metrics as metrics_lib
from rd_jax import refill, storage
from rd_jax.data import prompts, rationale, readers
from rd_jax.data.schema import DataError, match_label
from rd_jax.models import decoder
from rd_jax.student import negatives as negatives_lib
from rd_jax.teacher import eval as te, model as teacher_model, rows as rows_lib
from rd_jax.train import fit


# ------------------------------------------------------------------------------------ chains
def read_chains(path: str, cfg) -> list[tuple[int, dict]]:
  """(line number, {query_id, product_id, query, reasoning, label[, source]}) per line."""
  if not storage.exists(path):
    raise FileNotFoundError(f"sft.chains_path: {path} does not exist")
  out = []
  for lineno, _, row in readers._jsonl_rows(path):
    def fail(reason):
      raise DataError(path, lineno, reason, "bad_chain")
    if isinstance(row, DataError):
      raise row
    if not isinstance(row, dict):
      fail(f"expected a JSON object, got {type(row).__name__}")
    if not row.get("product_id") or not (row.get("query_id") or row.get("query")):
      fail("a chain needs 'product_id' and 'query_id' or 'query'")
    reasoning, label = row.get("reasoning"), row.get("label")
    if not isinstance(reasoning, str) or not reasoning.strip():
      fail("'reasoning' must be a non-empty string")
    label_id = match_label(label, cfg.labels) if isinstance(label, str) else None
    if label_id is None:
      fail(f"'label' {label!r} is not one of {list(cfg.labels)}")
    out.append((lineno, {"query_id": str(row.get("query_id") or ""), "product_id": str(row["product_id"]),
                         "query": row.get("query") or "", "reasoning": reasoning.strip(),
                         "label": cfg.labels[label_id], "source": row.get("source", "user")}))
  return out


def match_chains(chains: list[tuple[int, dict]], path: str, pairs, cfg) -> tuple[list, dict]:
  """[(Pair, chain)] for the chains of TRAIN-fold pairs, and counts."""
  by_id = {(p.query_id, p.product_id): p for p in pairs if p.query_id}
  by_query = {(p.query, p.product_id): p for p in pairs}
  train = set(int(f) for f in cfg.data.train_folds)
  seen, out, counts = set(), [], collections.Counter()
  for lineno, c in chains:
    pair = (by_id.get((c["query_id"], c["product_id"])) if c["query_id"]
            else by_query.get((c["query"], c["product_id"])))
    if pair is None:
      key = f"query_id={c['query_id']!r}" if c["query_id"] else f"query={c['query']!r}"
      raise DataError(path, lineno, f"no pair of data.path has {key}, product_id="
                      f"{c['product_id']!r}", "unmatched_chain")
    counts["read"] += 1
    if id(pair) in seen:
      counts["duplicates"] += 1  # the first chain of a pair wins
    elif pair.fold not in train:
      counts["outside_train_folds"] += 1
    else:
      seen.add(id(pair))
      counts["label_differs_from_gold"] += int(cfg.labels.index(c["label"]) != pair.label_id)
      out.append((pair, c))
  counts["used"] = len(out)
  return out, dict(counts)


def _keep_first(samples, pairs, index: list[int], cfg, chosen: dict, source: str,
                rejections: collections.Counter, extracted: dict) -> None:
  """chosen[i] = the first sample of pair i = index[prompt_index] whose label is gold.

  extracted: {sample position: label} from answer extraction for samples with no label line.
  """
  for j, s in enumerate(samples):
    i = index[s.prompt_index]
    pair = pairs[i]
    label, reasoning, error = prompts.parse_response(s.text, cfg.labels, s.finished)
    how = source
    if error == "no label line" and extracted.get(j):
      label, error, how = extracted[j], None, source + "+extracted"
    if error:
      rejections[te.reason_key(error)] += 1
    elif cfg.labels.index(label) != pair.label_id:
      rejections["wrong label"] += 1
    elif not reasoning:
      rejections["empty reasoning"] += 1
    elif source == "rationalized" and "hint" in reasoning.lower():
      rejections["mentions the hint"] += 1
    elif i not in chosen:
      chosen[i] = {"query_id": pair.query_id, "product_id": pair.product_id, "query": pair.query,
                   "reasoning": reasoning, "label": label, "source": how}


def _generate_and_keep(teacher, cfg, pairs, index, ids, seed, chosen, source, rejections):
  samples = te.sample(teacher.config, teacher.params, teacher.tokenizer, ids, cfg,
                      batch_size=cfg.sft.gen_batch_size, temperature=cfg.sft.bootstrap_temperature,
                      num_samples=cfg.sft.bootstrap_samples, seed=seed)
  extracted = {}
  if cfg.sft.answer_extraction:
    extracted = te.extract_answers(teacher.config, teacher.params, teacher.tokenizer, ids, samples,
                                   cfg, batch_size=cfg.sft.gen_batch_size)
  _keep_first(samples, pairs, index, cfg, chosen, source, rejections, extracted)
  return sum(1 for v in extracted.values() if v)


def bootstrap_chains(teacher: teacher_model.Teacher, train_pairs, cfg) -> tuple[list[dict], dict]:
  """STaR on up to sft.bootstrap_pairs train pairs (module docstring); (chains, counts)."""
  n = min(int(cfg.sft.bootstrap_pairs), len(train_pairs))
  order = np.sort(np.random.default_rng(cfg.seed).permutation(len(train_pairs))[:n])
  pairs = [train_pairs[i] for i in order]
  ids, cut = te.prompt_ids(teacher.tokenizer, pairs, cfg)
  logging.info("STaR bootstrap: %d samples for each of %d train prompts", cfg.sft.bootstrap_samples, n)
  chosen, rejected = {}, [collections.Counter(), collections.Counter()]
  extracted = [_generate_and_keep(teacher, cfg, pairs, list(range(n)), ids, cfg.seed, chosen,
                                  "sample", rejected[0])]
  by_sampling = len(chosen)
  rest, hint_ids = [], []
  for i in (i for i in range(n) if i not in chosen):
    try:  # the hint adds ~45 tokens: a prompt may not fit even with its item text cut
      hint_ids.append(te.fit_prompt(teacher.tokenizer, pairs[i], cfg, cfg.labels[pairs[i].label_id])[0])
      rest.append(i)
    except ValueError:
      rejected[1]["hint prompt too long"] += 1
  extracted.append(_generate_and_keep(teacher, cfg, pairs, rest, hint_ids, cfg.seed + 1, chosen,
                                      "rationalized", rejected[1]))
  logging.info("STaR bootstrap: kept %d by sampling, %d by rationalisation, dropped %d of %d",
               by_sampling, len(chosen) - by_sampling, n - len(chosen), n)
  report = {"source": "bootstrap", "pairs": n, "kept_by_sampling": by_sampling,
            "kept_by_rationalization": len(chosen) - by_sampling, "dropped": n - len(chosen),
            "sample_rejections": dict(rejected[0]), "rationalization_rejections": dict(rejected[1]),
            "answers_extracted": {"sampling": extracted[0], "rationalization": extracted[1]},
            "prompts_cut": cut}
  return [chosen[i] for i in sorted(chosen)], report


# ------------------------------------------------------------------------------------ rows
def target_ids(tokenizer, reasoning: str, label: str, budget: int) -> tuple[list[int], bool]:
  """Token ids of build_sft_target(reasoning, label) + EOS in at most `budget` tokens."""
  eos = tokenizer.eos_token_id
  ids = tokenizer(prompts.build_sft_target(reasoning, label), add_special_tokens=False)["input_ids"]
  cut = False
  while len(ids) + 1 > budget:
    r_ids = tokenizer(reasoning, add_special_tokens=False)["input_ids"]
    if not r_ids:
      raise errors.ConfigError(f"'Label: {label}' alone exceeds teacher.max_response_len={budget}")
    reasoning, cut = tokenizer.decode(r_ids[:max(0, len(r_ids) - (len(ids) + 1 - budget) - 1)],
                                      skip_special_tokens=True).rstrip(), True
    ids = tokenizer(prompts.build_sft_target(reasoning, label), add_special_tokens=False)["input_ids"]
  return ids + [eos], cut


def label_token_count(tokenizer, target: list[int], label: str) -> int:
  """How many tokens at the end of `target` (EOS last) spell the label: the shortest tail before
  the EOS that decodes to the label. Found by decoding, not by tokenising the label alone, because
  a BPE merges the space before it (" Exact" is one token, "Exact" another)."""
  for n in range(1, len(target)):
    if tokenizer.decode(target[-1 - n:-1], skip_special_tokens=True).strip() == label:
      return n
  raise errors.ConfigError(f"sft.label_loss_weight: the target {tokenizer.decode(target)!r} does not end "
                           f"in the label {label!r} followed by EOS")


def target_weights(tokenizer, target: list[int], label: str, label_weight: float) -> list[float]:
  """Per-token loss weights of a target (reasoning, "Label: X", EOS): `label_weight` on the label's
  tokens, 1 elsewhere. The loss is their weighted mean (teacher/model.lm_loss divides by the sum
  of the weights), so label_weight = w gives the label w / (w + rest) of a row's loss."""
  if label_weight == 1.0:
    return [1.0] * len(target)
  n = label_token_count(tokenizer, target, label)
  return [1.0] * (len(target) - 1 - n) + [float(label_weight)] * n + [1.0]


def row_length(cfg) -> int:
  return int(cfg.teacher.max_prompt_len) + int(cfg.teacher.max_response_len)


def length_buckets(cfg, prefix_len: int = 0) -> list[int]:
  """Padded row lengths: multiples of 64 below the longest possible row (after a shared prefix
  of `prefix_len` tokens), and that row."""
  longest = row_length(cfg) - prefix_len
  return sorted(set(range(64, longest, 64)) | {longest})


def sft_rows(matched: list, tokenizer, cfg) -> tuple[dict, dict]:
  """[(Pair, chain)] -> right-padded {"tokens", "attention_mask", "loss_mask"} [N, row_length].

  loss_mask is > 0 exactly on the response tokens and the EOS (next_token_targets shifts it):
  1, and `sft.label_loss_weight` on the label's tokens (`target_weights`).
  """
  rng = np.random.default_rng([cfg.seed, 7])
  shuffle = cfg.sft.shuffle_definitions and cfg.teacher.prompt_version >= 2
  # prompt v2: each chain under its own order of the definitions, so no position is the answer
  orders = [rng.permutation(len(cfg.labels)).tolist() if shuffle else None for _ in matched]
  _, seqs, masks, counts = _sequences(matched, tokenizer, cfg, orders)
  rows = rows_lib.right_pad(seqs, masks, row_length(cfg), _pad_id(tokenizer))
  return rows, {"rows": len(seqs), "tokens": int(rows["attention_mask"].sum()),
                "response_tokens": int((rows["loss_mask"] > 0).sum()), **counts}


def _sequences(matched: list, tokenizer, cfg, orders: list) -> tuple[list, list, list, dict]:
  """(prompt ids, prompt + target ids, their loss masks, cut counts) of each (pair, chain), the
  i-th prompt under definition order orders[i] (None: the labels' order)."""
  prompts_, seqs, masks, cut_prompts, cut_targets = [], [], [], 0, 0
  for (pair, chain), order in zip(matched, orders):
    p_ids, p_cut = te.fit_prompt(tokenizer, pair, cfg, order=order)
    t_ids, t_cut = target_ids(tokenizer, chain["reasoning"], chain["label"],
                              int(cfg.teacher.max_response_len))
    prompts_.append(p_ids)
    seqs.append(p_ids + t_ids)
    masks.append([0.0] * len(p_ids) + target_weights(tokenizer, t_ids, chain["label"],
                                                     float(cfg.sft.label_loss_weight)))
    cut_prompts, cut_targets = cut_prompts + p_cut, cut_targets + t_cut
  return prompts_, seqs, masks, {"prompts_cut": cut_prompts, "targets_cut": cut_targets}


def _pad_id(tokenizer) -> int:
  return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def definition_orders(cfg) -> list:
  """The orders of the definitions SFT trains under: [None] (the labels' order) unless prompt v2
  shuffles them, then every permutation (at most 24, seeded, when there are more)."""
  k = len(cfg.labels)
  if not (cfg.sft.shuffle_definitions and cfg.teacher.prompt_version >= 2):
    return [None]
  perms = [list(p) for p in itertools.permutations(range(k))] if k <= 4 else [
      np.random.default_rng([cfg.seed, 8]).permutation(k).tolist() for _ in range(24)]
  return perms


def shared_prefix_rows(matched: list, tokenizer, cfg) -> tuple[dict, np.ndarray, dict]:
  """`sft.shared_prefix`: (rows after the shared prefix [N, row_length - P], prefixes [O, P] (one
  per definition order), report).

  P = the prompts' common token prefix under the labels' order, less one token if a prompt would
  be left empty (a row must start inside its prompt, so every loss target stays in the row:
  teacher/model.shared_prefix_logits). Each other order o must render every prompt as its own
  P-token prefix followed by the same tokens; this is checked on up to 64 rows per order and a
  mismatch stops naming `sft.shared_prefix`.
  """
  prompts_, seqs, masks, counts = _sequences(matched, tokenizer, cfg, [None] * len(matched))
  p = min(refill.common_prefix(prompts_), min(len(x) for x in prompts_) - 1)
  prefixes = []
  check = np.random.default_rng([cfg.seed, 9]).permutation(len(matched))[:64]
  for order in definition_orders(cfg):
    prefix = None
    for i in check:
      ids = te.fit_prompt(tokenizer, matched[i][0], cfg, order=order)[0]
      prefix = ids[:p] if prefix is None else prefix
      if ids[:p] != prefix or ids[p:] != prompts_[i][p:]:
        raise errors.ConfigError(
            f"sft.shared_prefix: under definition order {order} the prompt of query "
            f"{matched[i][0].query!r} is not the shared {p}-token prefix followed by the tokens it "
            "has under the labels' order; set sft.shared_prefix=False")
    prefixes.append(prefix)
  rows = rows_lib.right_pad([x[p:] for x in seqs], [m[p:] for m in masks], row_length(cfg) - p,
                            _pad_id(tokenizer))
  report = {"rows": len(seqs), "tokens": int(rows["attention_mask"].sum()) + p * len(seqs),
            "response_tokens": int((rows["loss_mask"] > 0).sum()), **counts, "shared_prefix_tokens": p,
            "definition_orders": len(prefixes),
            "row_tokens_after_prefix": int(rows["attention_mask"].sum())}
  return rows, np.asarray(prefixes, np.int32).reshape(len(prefixes), p), report


def rule_chains(train, cfg) -> list[dict]:
  """`sft.chains_from=rules`: a chain for every train pair (labelled: loaded with labels required),
  without generation.

  Reasoning = `data/rationale.rule_rationale` (which query terms the item states or lacks,
  negations, numbers; it never reads the label), label = the gold label. The teacher then learns
  the label from every train pair at the cost of its prompt and ~40 response tokens, where a STaR
  chain costs a sampled generation first (~0.5 rows/s on 2 cores).
  """
  return [{"query_id": p.query_id, "product_id": p.product_id, "query": p.query,
           "reasoning": rationale.rule_rationale(p.query, p.raw, p.item_text),
           "label": cfg.labels[p.label_id],
           "source": "rules+cross_query_negative" if negatives_lib.is_drawn_negative(p)
                     else "rules+gold"}
          for p in train]


def drawn_negatives(train, cfg) -> list:
  """`sft.cross_query_negatives = k` (ours; with sft.chains_from=rules): k items of OTHER train
  queries per train query, labelled `student.cross_query_negative_label` (the student's key: one
  meaning for both models), as the student draws them (student/negatives.py). Why: with ~70 train
  queries a model can lower its loss by learning each query's label mix; a query that also comes
  with items it does not match makes the item, not the query, tell the label."""
  k = int(cfg.sft.get("cross_query_negatives", 0))
  if k <= 0:
    return []
  label = cfg.student.get("cross_query_negative_label", "Irrelevant")
  return negatives_lib.draw(train, k, label, list(cfg.labels), int(cfg.seed),
                            key="sft.cross_query_negatives")


# ------------------------------------------------------------------------------------ stage
def load_or_bootstrap(cfg, teacher, pairs, train, stage_dir) -> tuple[list, dict]:
  """[(Pair, chain)] and the chains report; bootstraps once, then reuses chains.jsonl."""
  path = cfg.sft.chains_path
  if path:
    report, chains = {"source": path}, read_chains(path, cfg)
  elif cfg.sft.chains_from == "rules":  # deterministic: rebuilt on restart, written to inspect
    path = os.path.join(stage_dir, "rule_chains.jsonl")
    made, negatives = rule_chains(train, cfg), drawn_negatives(train, cfg)
    negative_chains = rule_chains(negatives, cfg)
    if jax.process_index() == 0:
      metrics_lib.write_jsonl_atomic(made + negative_chains, path)
    # the drawn pairs are in no data file, so they join after matching the real ones
    matched, counts = match_chains(list(enumerate(made, start=1)), path, pairs, cfg)
    return matched + list(zip(negatives, negative_chains)), {
        "source": "rules", "pairs": len(made), **counts,
        "cross_query_negatives": len(negatives)}
  else:
    path = os.path.join(stage_dir, "chains.jsonl")
    report_path = os.path.join(stage_dir, "chains_report.json")
    settings = {"teacher": teacher.source, "seed": int(cfg.seed),
                "max_prompt_len": int(cfg.teacher.max_prompt_len),
                "max_response_len": int(cfg.teacher.max_response_len),
                **{k: cfg.sft[k] for k in ("bootstrap_pairs", "bootstrap_samples", "bootstrap_temperature",
                                            "answer_extraction")}}
    if storage.exists(path):  # written last, so the bootstrap finished: reuse it
      with storage.open(report_path) as f:
        report, chains = json.load(f), read_chains(path, cfg)
      old = report.get("settings", {})
      diff = sorted(k for k in settings if old.get(k) != settings[k])
      if diff:
        raise errors.ConflictError(f"{path} was bootstrapped with other settings ({', '.join(diff)}: "
                                   f"{[old.get(k) for k in diff]} now {[settings[k] for k in diff]});"
                                   f" delete {stage_dir} to start over, or restore those settings to resume")
    else:
      bootstrapped, report = bootstrap_chains(teacher, train, cfg)
      report["settings"] = settings
      if jax.process_index() == 0:
        metrics_lib.write_json_atomic(report, report_path)
        metrics_lib.write_jsonl_atomic(bootstrapped, path)
      chains = list(enumerate(bootstrapped, start=1))
  matched, counts = match_chains(chains, path, pairs, cfg)
  return matched, {**report, **counts}


def run(cfg, workdir: str) -> dict:
  stage_dir = os.path.join(workdir, "sft")
  storage.makedirs(stage_dir)
  t0 = time.perf_counter()
  mesh = fit.make_mesh(cfg)
  teacher = teacher_model.load_teacher(cfg, workdir, mesh, upstream=("cpt",))
  logging.info("sft starts from %s", teacher.source)
  pairs, data_report = readers.load_pairs(cfg.data.path, cfg)
  splits = readers.train_valid_test(pairs, cfg)
  matched, chains = load_or_bootstrap(cfg, teacher, pairs, splits["train"], stage_dir)
  if len(matched) < cfg.sft.batch_size:
    rejected = collections.Counter(chains.get("sample_rejections", {}))
    rejected.update(chains.get("rationalization_rejections", {}))
    truncated = (f"; {rejected['truncated']} of {sum(rejected.values())} responses were cut at "
                 f"teacher.max_response_len={cfg.teacher.max_response_len}: raise it"
                 if rejected.get("truncated") else "")
    raise errors.DataError(f"only {len(matched)} usable chains ({chains}), fewer than sft.batch_size="
                           f"{cfg.sft.batch_size}: raise sft.bootstrap_pairs / sft.bootstrap_samples, "
                           "give sft.chains_path, or train on rule rationales "
                           f"(--config.sft.chains_from=rules){truncated}")
  if cfg.sft.shared_prefix:
    rows, prefixes, row_report = shared_prefix_rows(matched, teacher.tokenizer, cfg)
    buckets = length_buckets(cfg, row_report["shared_prefix_tokens"])
  else:
    rows, row_report = sft_rows(matched, teacher.tokenizer, cfg)
    prefixes, buckets = None, length_buckets(cfg)
  valid = splits["valid"]
  pick = np.sort(np.random.default_rng(cfg.seed).permutation(len(valid))[:int(cfg.sft.eval_pairs)])
  eval_pairs = [valid[i] for i in pick]

  def evaluate(params):  # None when sft.eval_pairs = 0
    if not eval_pairs:
      return None
    return te.evaluate_teacher(teacher.config, params, teacher.tokenizer, eval_pairs, cfg,
                               batch_size=cfg.sft.gen_batch_size, log=logging.info)

  before_path = os.path.join(stage_dir, "eval_before.json")
  if storage.exists(before_path):
    with storage.open(before_path) as f:
      before = json.load(f)
  else:
    before = evaluate(teacher.params)
    if jax.process_index() == 0:
      metrics_lib.write_json_atomic(before, before_path)

  model = decoder.Decoder(teacher.config)
  batches = rows_lib.row_batches(rows, batch_size=cfg.sft.batch_size, seed=cfg.seed,
                                 length_buckets=buckets, prefixes=prefixes)
  trained = fit.fit(cfg, "sft", workdir, params=teacher.params,
                    loss_fn=teacher_model.lm_loss(model), batches=batches, mesh=mesh,
                    rules=teacher_model.TEACHER_RULES)
  if trained.interrupted:
    return fit.interrupted(cfg, "sft")
  after = evaluate(trained.params)
  short = lambda m: m and {k: m[k] for k in ("macro_f1", "accuracy", "macro_f1_parsed", "parse_rate",
                                              "failures_by_reason", "num_pairs")}
  summary = {"stage": "sft", "chains": chains, "rows": row_report,
             "valid_before": short(before), "valid_after": short(after),
             "valid_macro_f1_before": before and before["macro_f1"],
             "valid_macro_f1_after": after and after["macro_f1"],
             "parse_rate_before": before and before["parse_rate"],
             "parse_rate_after": after and after["parse_rate"],
             "steps": trained.stats["steps"], "resumed_from": trained.stats["resumed_from"],
             "last_metrics": trained.stats["last_metrics"], "data": data_report,
             "started_from": teacher.source, "seconds": round(time.perf_counter() - t0, 1)}
  if after and jax.process_index() == 0:
    metrics_lib.write_json_atomic(after, os.path.join(stage_dir, "eval_after.json"))
  fit.finish(stage_dir, trained.params,
             teacher_model.teacher_meta(cfg, teacher, stage="sft", step=trained.step,
                                        metrics=short(after)), summary)
  logging.info("sft done: valid macro-F1 %s -> %s", summary["valid_macro_f1_before"],
               summary["valid_macro_f1_after"])
  return summary
