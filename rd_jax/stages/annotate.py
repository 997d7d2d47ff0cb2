"""`--stage=annotate`: the teacher labels and explains pairs, in resumable shards.

Teacher: `annotate.teacher` (a final/ or stage folder), else the newest complete of dpo > sft > cpt
in the workdir, else the base model `teacher.init` (the choice is logged and recorded as
`teacher_ckpt`). Pairs: `data.path` (labels optional), split `annotate.split` (all | train | valid |
test folds), optionally a seeded sample of `annotate.max_pairs`.

Generation (`teacher/eval.sample` -> `generate.generate_texts` -> `refill.run`): a host loop of
jitted decode / refill / scoring steps per shard; the prompt-v2 prefix (instructions, definitions)
is prefilled once and `annotate.batch_size` slots take the next prompts in batches as rows end.
num_samples == 1: greedy.
Label (`teacher.score_labels`, default): after the reasoning, every label is scored as the
continuation of "\nLabel:" from the row's KV cache; label_probs = softmax(log p + offsets), with
per-class offsets fitted on valid macro-F1 (`annotate.offset_pairs` valid-fold pairs, scored
first: annotate/offsets.json; `rd_jax/decision.py`), teacher_label = its argmax. k > 1: k
samples at `annotate.temperature`; label_probs = the mean over the samples that parse,
votes = each one's argmax, confidence = the winner's votes / k. Without scoring, the parsed labels
vote (ties: the label voted first). A sample "parses" when its reasoning is complete (not empty,
not cut at max tokens); a pair with none is retried (k samples at `annotate.temperature`) up to
`annotate.max_retries` times, then written to failures with the reason, raw text (and
label_probs) of its last attempt — never given a label.
Reasoning (`annotate.reasoning`): "generated" (the teacher writes it) or "rules": each pair's rule
rationale (`data/rationale.py`, what `sft.chains_from=rules` trains the teacher to write) is given
after the prompt and the teacher labels after it (`teacher/eval.with_reasoning`); the record's
reasoning is that rationale, the label the teacher's. For a rule-chain teacher this scores its label
after the exact rationale instead of its imitation (README "The teacher chain"). The offsets are
fitted in the same mode; manifest and offsets.json record a mode other than "generated".
Sharding: params are sharded by TEACHER_RULES (fsdp/tensor split the model); the prompt batch is
replicated over the mesh's batch axes (`generate` takes host arrays), so with several processes
every process runs the same batches and process 0 alone writes.

Layout of <workdir>/annotate/:
  shards/manifest.json          what the shards were made with (teacher, pairs, sampling); a
                                rerun with a different manifest stops rather than mix shards
  shards/shard-00000.jsonl      annotations of pairs [0, shard_size), in pair order
  shards/shard-00000.failures.jsonl
  shards/shard-00000.done       JSON counts; written LAST, so a shard is complete iff it exists
  offsets.json                  the label offsets fitted on valid (and the valid figures)
  annotations.jsonl             all shards merged (atomic); per line: query_id, product_id, query,
                                teacher_label, label_probs [K] (labels' order; scored labels),
                                reasoning, confidence, votes, attempts, raw, teacher_ckpt, fold
                                and the gold `label` when the pair has one (what
                                `data.readers.attach_reasoning` reads)
  failures.jsonl                query_id, product_id, query, reason, raw, attempts, teacher_ckpt
  summary.json                  written last
Every file is written under a .tmp name and renamed, so a killed run leaves no partial file
under a final name; a rerun skips the shards with a .done marker and redoes the first missing one.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from rd_jax import errors
from rd_jax import metrics as metrics_lib
from rd_jax import storage
from rd_jax.data import prompts, readers
from rd_jax.teacher import eval as te, model as teacher_model
from rd_jax.teacher.sampling import read_jsonl
from rd_jax.train.fit import make_mesh

SPLITS = ("all", "train", "valid", "test")


def select_pairs(cfg) -> tuple[list, dict]:
  split = cfg.annotate.split
  if split not in SPLITS:
    raise errors.ConfigError(f"annotate.split={split!r}; expected one of {SPLITS}")
  pairs, report = readers.load_pairs(cfg.data.path, cfg, require_label=False)
  if split != "all":
    pairs = readers.train_valid_test(pairs, cfg)[split]
  pairs = readers.seeded_subset(pairs, cfg.annotate.max_pairs, cfg.seed)
  if not pairs:
    raise errors.DataError(f"no pairs to annotate in split {split!r} of {report['path']}")
  return pairs, report


def label_probs(logprobs, offsets=None) -> np.ndarray:
  """softmax(log p + offsets) [K]: the scored labels after the logit adjustment fitted on valid."""
  z = np.asarray(logprobs, np.float64) + (0.0 if offsets is None else np.asarray(offsets, np.float64))
  z = np.exp(z - z.max())
  return z / z.sum()


def vote(samples, labels, k: int, offsets=None):
  """(record fields, None) from one attempt's k samples, or (None, failure fields) if none parsed.

  Scored samples (`label_logprobs`): each sample's label is argmax(label_probs), the pair's
  label_probs the mean over its parsed samples and teacher_label their argmax. Otherwise the
  parsed labels vote (ties: the label voted first).
  """
  parsed = [(s, prompts.parse_response(s.text, labels, s.finished)) for s in samples]
  good = [(s, p) for s, p in parsed if p.error is None]
  scored = all(s.label_logprobs is not None for s in samples)
  if not good:
    reasons = collections.Counter(te.reason_key(p.error) for _, p in parsed)
    reason = reasons.most_common(1)[0][0]
    s, p = next((s, p) for s, p in parsed if te.reason_key(p.error) == reason)
    fail = {"reason": p.error, "raw": s.text}
    if scored:
      fail["label_probs"] = np.round(label_probs(s.label_logprobs, offsets), 5).tolist()
    return None, fail
  extra = {}
  if scored:
    probs = [label_probs(s.label_logprobs, offsets) for s, _ in good]
    mine = [labels[int(np.argmax(q))] for q in probs]
    votes = collections.Counter(mine)
    mean = np.mean(probs, axis=0)
    winner = labels[int(np.argmax(mean))]
    s, p = next(((s, p) for (s, p), m in zip(good, mine) if m == winner), good[0])
    extra["label_probs"] = np.round(mean, 5).tolist()
  else:
    votes = collections.Counter(p.label for _, p in good)   # insertion order breaks ties
    winner = votes.most_common(1)[0][0]
    s, p = next((s, p) for s, p in good if p.label == winner)
  return {"teacher_label": winner, **extra, "reasoning": p.reasoning,
          "confidence": votes[winner] / k, "votes": dict(votes), "raw": s.text}, None


def annotate_pairs(teacher, pairs, cfg, *, seed: int, offsets=None) -> tuple[list, list, dict]:
  """(records, failures, counts) for `pairs`, in pair order. Deterministic given `seed`."""
  a = cfg.annotate
  k = int(a.num_samples)
  ids, cut = te.prompt_ids(teacher.tokenizer, pairs, cfg)
  # annotate.reasoning=rules: the rule rationale follows each prompt and the teacher labels after
  # it; the record's reasoning is that rationale (+ anything the teacher adds before "Label:").
  ids, given, longest, rationales_cut = te.with_reasoning(teacher.tokenizer, pairs, ids, cfg,
                                                          a.reasoning)
  done, last_fail, straight = {}, {}, 0
  pending, tokens, sample_errors = list(range(len(pairs))), 0, collections.Counter()
  for attempt in range(int(a.max_retries) + 1):
    if not pending:
      break
    temperature = 0.0 if (k == 1 and attempt == 0) else float(a.temperature)
    samples = te.sample(teacher.config, teacher.params, teacher.tokenizer, [ids[i] for i in pending],
                        cfg, batch_size=a.batch_size, temperature=temperature, num_samples=k,
                        seed=(seed * 31 + attempt) % (2**31 - 1), max_prompt_len=longest)
    tokens += sum(len(s.token_ids) for s in samples)
    if a.reasoning != "generated":
      straight += te.straight_to_label(teacher.tokenizer, samples)
      samples = [dataclasses.replace(s, text=given[pending[s.prompt_index]] + s.text) for s in samples]
    grouped = collections.defaultdict(list)
    for s in samples:
      grouped[pending[s.prompt_index]].append(s)
      err = prompts.parse_response(s.text, cfg.labels, s.finished).error
      sample_errors[te.reason_key(err) if err else "ok"] += 1
    for i in pending:
      record, failure = vote(grouped[i], cfg.labels, k, offsets)
      if record is None:
        last_fail[i] = failure
      else:
        done[i] = {**record, "attempts": attempt + 1}
    pending = [i for i in pending if i not in done]
  records, failures = [], []
  for i, pair in enumerate(pairs):
    base = {"query_id": pair.query_id, "product_id": pair.product_id, "query": pair.query}
    gold = {} if pair.label_id is None else {"label": cfg.labels[pair.label_id]}
    if i in done:
      records.append({**base, **done[i], "teacher_ckpt": teacher.source, "fold": pair.fold, **gold})
    else:
      failures.append({**base, **last_fail[i], "attempts": int(a.max_retries) + 1,
                       "teacher_ckpt": teacher.source, **gold})
  counts = {"pairs": len(pairs), "annotated": len(records),
            "failures_by_reason": dict(collections.Counter(te.reason_key(f["reason"]) for f in failures)),
            "samples_by_outcome": dict(sample_errors), "generated_tokens": tokens, "prompts_cut": cut}
  if a.reasoning != "generated":
    counts.update(rationales_cut=rationales_cut, samples_straight_to_label=straight)
  return records, failures, counts


def fit_offsets(cfg, teacher, stage_dir: str) -> dict | None:
  """The logit adjustment of the teacher's scored labels: offsets fitted on valid macro-F1
  (`rd_jax/decision.py`) from `annotate.offset_pairs` seeded valid-fold pairs; written to
  annotate/offsets.json and reused while the teacher and settings are the same. None = off."""
  n = int(cfg.annotate.offset_pairs)
  if not cfg.teacher.score_labels or n <= 0:
    return None
  path = os.path.join(stage_dir, "offsets.json")
  key = {"teacher_ckpt": teacher.source, "pairs": n, "seed": int(cfg.seed),
         "prompt_version": int(cfg.teacher.prompt_version), "labels": list(cfg.labels)}
  if cfg.annotate.reasoning != "generated":   # absent = generated: offsets.json files from before
    key["reasoning"] = cfg.annotate.reasoning
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if {k: old.get(k) for k in key} == key:
      return old
  pairs, _ = readers.load_pairs(cfg.data.path, cfg)
  valid = readers.seeded_subset(readers.train_valid_test(pairs, cfg)["valid"], n, cfg.seed)
  logging.info("annotate: fitting the label offsets on %d valid pairs", len(valid))
  m = te.evaluate_teacher(teacher.config, teacher.params, teacher.tokenizer, valid, cfg,
                          batch_size=cfg.annotate.batch_size, seed=cfg.seed, fit_offsets=True,
                          log=logging.info, reasoning=cfg.annotate.reasoning)
  if "offsets" not in m:   # the generation gave no label scores (a scripted test generator)
    logging.warning("annotate: no label scores on valid; the labels are not adjusted")
    return None
  out = {**key, "offsets": m["offsets"], "valid_pairs": len(valid),
         "valid_macro_f1_argmax": m["macro_f1"], "valid_macro_f1_adjusted": m["adjusted"]["macro_f1"],
         # in-sample (the offsets were fitted on these pairs) vs fitted on 2 of 3 query folds
         "valid_macro_f1_offsets_crossfit": m.get("macro_f1_offsets_crossfit"),
         "valid_label_distribution": m["label_distribution"],
         "valid_label_distribution_adjusted": m["adjusted"]["label_distribution"],
         "valid_gold_distribution": m["gold_distribution"], "seconds": m["seconds"]}
  if jax.process_index() == 0:
    metrics_lib.write_json_atomic(out, path)
  return out


def _manifest(cfg, teacher, pairs, offsets=None) -> dict:
  keys = hashlib.md5("\n".join(f"{p.query_id}\t{p.product_id}\t{p.query}" for p in pairs)
                     .encode("utf-8")).hexdigest()
  a = cfg.annotate
  return {"teacher_ckpt": teacher.source, "pairs": len(pairs), "pairs_md5": keys,
          "shard_size": int(a.shard_size), "num_samples": int(a.num_samples),
          "temperature": float(a.temperature), "max_retries": int(a.max_retries),
          "max_prompt_len": int(cfg.teacher.max_prompt_len),
          "max_response_len": int(cfg.teacher.max_response_len), "seed": int(cfg.seed),
          "labels": list(cfg.labels), "prompt_version": int(cfg.teacher.prompt_version),
          "score_labels": bool(cfg.teacher.score_labels),
          "label_offsets": None if offsets is None else [round(float(o), 4) for o in offsets],
          # recorded only when not the default, so shards made before the key still resume
          **({} if a.reasoning == "generated" else {"reasoning": a.reasoning})}


def _check_manifest(path: str, manifest: dict) -> None:
  if storage.exists(path):
    with storage.open(path) as f:
      old = json.load(f)
    diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
    if diff:
      raise errors.ConflictError(f"{path}: the existing shards were made with other settings ({', '.join(diff)}:"
                                 f" {[old.get(k) for k in diff]} now {[manifest.get(k) for k in diff]}); delete "
                                 f"{os.path.dirname(path)} to start over, or restore those settings to resume")
  elif jax.process_index() == 0:
    metrics_lib.write_json_atomic(manifest, path)


def run(cfg, workdir: str) -> dict:
  stage_dir = os.path.join(workdir, "annotate")
  shard_dir = os.path.join(stage_dir, "shards")
  storage.makedirs(shard_dir)
  t0 = time.perf_counter()
  a = cfg.annotate
  if a.reasoning not in te.REASONING_SOURCES:
    raise errors.ConfigError(f"annotate.reasoning={a.reasoning!r}; expected one of {te.REASONING_SOURCES}")
  if a.num_samples < 1 or a.shard_size < 1 or a.batch_size < 1:
    raise errors.ConfigError("annotate.num_samples, annotate.shard_size and annotate.batch_size must be >= 1")
  if (a.num_samples > 1 or a.max_retries > 0) and a.temperature <= 0:
    raise errors.ConfigError("annotate.temperature must be > 0 when annotate.num_samples > 1 or "
                             "annotate.max_retries > 0 (retries and votes sample)")
  mesh = make_mesh(cfg)
  teacher = teacher_model.load_teacher(cfg, workdir, mesh, upstream=("dpo", "sft", "cpt"), explicit=a.teacher)
  logging.info("annotate with teacher %s", teacher.source)
  pairs, data_report = select_pairs(cfg)
  fitted = fit_offsets(cfg, teacher, stage_dir)
  offsets = None if fitted is None else fitted["offsets"]
  _check_manifest(os.path.join(shard_dir, "manifest.json"), _manifest(cfg, teacher, pairs, offsets))
  n_shards = -(-len(pairs) // a.shard_size)
  name = lambda i, suffix: os.path.join(shard_dir, f"shard-{i:05d}{suffix}")
  # Process 0 decides which shards are done; every process then runs the same batches.
  finished = multihost_utils.broadcast_one_to_all(
      np.array([storage.exists(name(i, ".done")) for i in range(n_shards)]))
  newly = 0
  for i in range(n_shards):
    if finished[i]:
      continue
    if a.stop_after_shards and newly >= a.stop_after_shards:
      logging.warning("stopping after %d new shards (annotate.stop_after_shards)", newly)
      return {"stage": "annotate", "interrupted_at": int(a.stop_after_shards)}
    t_shard = time.perf_counter()
    records, failures, counts = annotate_pairs(teacher, pairs[i * a.shard_size:(i + 1) * a.shard_size],
                                               cfg, seed=(cfg.seed * 100_003 + i) % 2**31, offsets=offsets)
    counts["seconds"] = time.perf_counter() - t_shard
    if jax.process_index() == 0:
      metrics_lib.write_jsonl_atomic(records, name(i, ".jsonl"))
      metrics_lib.write_jsonl_atomic(failures, name(i, ".failures.jsonl"))
      metrics_lib.write_json_atomic(counts, name(i, ".done"))   # last: the shard is complete
    newly += 1
    logging.info("shard %d/%d: %d of %d annotated (%.1fs)", i + 1, n_shards, counts["annotated"],
                 counts["pairs"], counts["seconds"])
  if jax.process_count() > 1:  # every process reads the shards process 0 wrote
    multihost_utils.sync_global_devices("annotate:shards_written")
  return _merge(cfg, stage_dir, n_shards, name, pairs, teacher, data_report, newly, t0, fitted)


def _merge(cfg, stage_dir, n_shards, name, pairs, teacher, data_report, newly, t0, fitted) -> dict:
  records, failures, totals = [], [], collections.Counter()
  by_reason, outcomes = collections.Counter(), collections.Counter()
  for i in range(n_shards):
    with storage.open(name(i, ".done")) as f:
      counts = json.load(f)
    records += read_jsonl(name(i, ".jsonl"))
    failures += read_jsonl(name(i, ".failures.jsonl"))
    by_reason.update(counts["failures_by_reason"])
    outcomes.update(counts["samples_by_outcome"])
    totals.update({k: counts[k] for k in ("pairs", "annotated", "generated_tokens", "prompts_cut", "seconds")})
    totals.update({k: counts[k] for k in ("rationales_cut", "samples_straight_to_label") if k in counts})
  # Teacher vs gold on the labelled pairs; a failure is a wrong answer, never a label.
  scored = [(r["label"], r["teacher_label"]) for r in records if "label" in r]
  scored += [(f["label"], None) for f in failures if "label" in f]
  gold_vs_teacher = (te.score([cfg.labels.index(g) for g, _ in scored], [t for _, t in scored], cfg.labels)
                     if scored else None)
  secs = max(totals["seconds"], 1e-9)
  summary = {"stage": "annotate", "teacher_ckpt": teacher.source, "split": cfg.annotate.split,
             "pairs": len(pairs), "annotated": totals["annotated"], "failures": len(failures),
             "failures_by_reason": dict(by_reason), "samples_by_outcome": dict(outcomes),
             "parse_rate": totals["annotated"] / len(pairs), "shards": n_shards,
             "empty_reasoning": sum(not r["reasoning"] for r in records),
             "shards_run_now": newly, "prompts_cut": totals["prompts_cut"],
             "generated_tokens": totals["generated_tokens"], "generation_seconds": round(secs, 2),
             "pairs_per_s": len(pairs) / secs, "generated_tokens_per_s": totals["generated_tokens"] / secs,
             "labelled_pairs": len(scored),
             "teacher_macro_f1": gold_vs_teacher and gold_vs_teacher["macro_f1"],
             "teacher_accuracy": gold_vs_teacher and gold_vs_teacher["accuracy"],
             "teacher_vs_gold": gold_vs_teacher, "data": data_report,
             "prompt_version": int(cfg.teacher.prompt_version),
             "reasoning": cfg.annotate.reasoning,
             **({"rationales_cut": totals["rationales_cut"],
                 "samples_straight_to_label": totals["samples_straight_to_label"]}
                if cfg.annotate.reasoning != "generated" else {}),
             "label_source": "scored" if cfg.teacher.score_labels else "parsed",
             "label_offsets": fitted, "label_distribution": te.distribution(
                 [r["teacher_label"] for r in records], cfg.labels),
             "gold_distribution": te.distribution([g for g, _ in scored], cfg.labels) if scored else None,
             "seconds": round(time.perf_counter() - t0, 1)}
  if jax.process_index() == 0:
    metrics_lib.write_jsonl_atomic(records, os.path.join(stage_dir, "annotations.jsonl"))
    metrics_lib.write_jsonl_atomic(failures, os.path.join(stage_dir, "failures.jsonl"))
    metrics_lib.write_json_atomic(summary, os.path.join(stage_dir, "summary.json"))
  logging.info("annotate done: %d/%d pairs annotated, failures %s, teacher macro-F1 %s",
               totals["annotated"], len(pairs), dict(by_reason), summary["teacher_macro_f1"])
  return summary
