"""The teacher's sampled responses, as the reward and DPO stages use them.

- `select_prompts`: up to N labelled pairs in seeded order whose prompt fits.
- `sample_responses`: N sampled (or greedy) responses per prompt, through `generate`.
- `score_record`: each response parsed, with the programmatic scorers' value per reward dimension.
- `read_jsonl`: the records a stage wrote (samples.jsonl, pairs.jsonl), read back.
"""

from __future__ import annotations

import json

import numpy as np

from rd_jax import errors
from rd_jax import generate, reward_scorers
from rd_jax import storage
from rd_jax.data import prompts as prompts_lib
from rd_jax.teacher import eval as teacher_eval


def select_prompts(pairs, tokenizer, labels, max_prompt_len: int, limit: int,
                   seed, version: int = prompts_lib.CURRENT_VERSION) -> tuple[list[dict], dict]:
  """Up to `limit` labelled pairs in seeded order whose prompt (`teacher.prompt_version`) fits
  `max_prompt_len` tokens (`teacher.max_prompt_len`)."""
  out, too_long = [], 0
  for i in np.random.default_rng(seed).permutation(len(pairs)):
    p = pairs[int(i)]
    prompt = prompts_lib.build_prompt(tokenizer, p.query, p.item_text, labels, version=version)
    if len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) > max_prompt_len:
      too_long += 1
      continue
    out.append({"query": p.query, "query_id": p.query_id, "product_id": p.product_id,
                "item_text": p.item_text, "gold_label": labels[p.label_id], "prompt": prompt})
    if len(out) == limit:
      break
  if not out:
    raise errors.ConfigError(f"no prompt fits teacher.max_prompt_len={max_prompt_len} tokens")
  return out, {"prompts": len(out), "skipped_prompt_too_long": too_long}


def sample_responses(config, params, tokenizer, prompts, *, num_samples: int, temperature: float,
                     seed: int, batch_size: int, max_new_tokens: int,
                     max_prompt_len: int, score_labels=None,
                     draft_tokens: int = 0, matmul_dtype: str = "") -> list[list[dict]]:
  """Per prompt, `num_samples` responses {"text", "finished", "num_tokens"} (temperature 0 =
  greedy; `score_labels`, `draft_tokens`, `matmul_dtype`: `teacher_eval.generation_options(cfg)`,
  passed to `generate.generate_texts`). Tests replace
  this function to script the responses."""
  samples = generate.generate_texts(config, params, tokenizer, prompts,
                                    max_new_tokens=max_new_tokens, batch_size=batch_size,
                                    temperature=temperature, num_samples=num_samples, seed=seed,
                                    buckets=teacher_eval.buckets(max_prompt_len),
                                    score_labels=score_labels, draft_tokens=draft_tokens,
                                    matmul_dtype=matmul_dtype)
  out = [[] for _ in prompts]
  for s in samples:
    out[s.prompt_index].append({"text": s.text, "finished": s.finished,
                                "num_tokens": len(s.token_ids)})
  return out


def score_record(record: dict, labels, dimensions, max_tokens: int) -> dict:
  """Parses each response of `record` and adds its scorer values {dimension: [0, 1]}
  (`dimensions`: reward.dimensions; `max_tokens`: teacher.max_response_len)."""
  for r in record["responses"]:
    parsed = prompts_lib.parse_response(r["text"], labels, r["finished"])
    r.update(parsed_label=parsed.label, parse_error=parsed.error, scores=reward_scorers.score_all(
        r["text"], parsed, query=record["query"], item_text=record["item_text"],
        gold_label=record["gold_label"], labels=labels, dimensions=tuple(dimensions),
        max_tokens=max_tokens, num_tokens=r["num_tokens"]))
  return record


def read_jsonl(path: str) -> list[dict]:
  with storage.open(path, encoding="utf-8") as f:
    return [json.loads(l) for l in f if l.strip()]
