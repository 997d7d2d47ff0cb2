"""Teacher prompts, batched generation from token ids and scoring (sft and annotate; dpo scores with
`score`).

- `prompt_ids`: pairs -> chat-prompt token ids (`data/prompts.py` template) of at most
  `teacher.max_prompt_len` tokens. A prompt that is too long has its ITEM text cut (token-wise, at
  the end) until it fits; the query, the label definitions and the answer format are never cut.
  Cut prompts are counted.
- `sample`: `generate.generate_texts` with the config's lengths (`teacher.max_response_len` new
  tokens) and prompt buckets (64, 128, ... up to `teacher.max_prompt_len`), so a run compiles a
  handful of shapes. sft and annotate generate through it; reward and dpo sample from prompt
  strings with `teacher/sampling.sample_responses`; both end in `generate.generate_texts`, which
  tests monkeypatch to script the outputs.
- `score`: accuracy and macro-F1 where an output that does not parse counts as WRONG for its gold
  class (a false negative) and is never mapped to a label: the confusion matrix gets an extra
  "<unparsed>" column, and macro-F1 averages the real classes only.
- `evaluate_teacher`: greedy generation + parse + `score` on labelled pairs; with
  `reasoning="rules"` the reasoning is not generated but given: each pair's rule rationale (the
  text `sft.chains_from=rules` trains on) follows the prompt, and the teacher's label is scored
  after it.
"""

from __future__ import annotations

import collections
import time
from typing import Callable, Sequence

import numpy as np

from rd_jax import errors
from rd_jax import decision, generate as gen
from rd_jax.data import prompts, rationale
from rd_jax.data.schema import Pair
from rd_jax.metrics import classification_metrics

UNPARSED = "<unparsed>"


def reason_key(error: str) -> str:
  """A parse error grouped for counting: "unknown label 'foo'" -> "unknown label"."""
  return error.split(" '", 1)[0]


def fit_prompt(tokenizer, pair: Pair, cfg, hint: str | None = None,
               order: Sequence[int] | None = None) -> tuple[list[int], bool]:
  """Token ids of the pair's prompt (with the STaR rationalisation hint when `hint` is a label),
  in `teacher.prompt_version`; `order` permutes the label definitions (SFT).

  Returns (ids, item_was_cut). Raises ValueError naming `teacher.max_prompt_len` when even an
  empty item text would not fit.
  """
  version = int(cfg.teacher.prompt_version)

  def render(item: str) -> str:
    if hint is None:
      return prompts.build_prompt(tokenizer, pair.query, item, cfg.labels, version=version, order=order)
    return prompts.build_rationalization_prompt(tokenizer, pair.query, item, cfg.labels, hint,
                                                version=version, order=order)

  limit, item = int(cfg.teacher.max_prompt_len), pair.item_text
  for _ in range(6):  # re-tokenising the cut item can merge tokens differently: a few rounds
    ids = tokenizer(render(item), add_special_tokens=False)["input_ids"]
    if len(ids) <= limit:
      return ids, item != pair.item_text
    item_ids = tokenizer(item, add_special_tokens=False)["input_ids"]
    keep = len(item_ids) - (len(ids) - limit) - 2
    if keep < 1:
      break
    item = tokenizer.decode(item_ids[:keep], skip_special_tokens=True).rstrip()
  raise errors.ConfigError(f"the prompt for query {pair.query!r} does not fit teacher.max_prompt_len="
                           f"{limit} tokens even with its item text cut; raise teacher.max_prompt_len")


def prompt_ids(tokenizer, pairs: Sequence[Pair], cfg,
               hints: Sequence[str] | None = None) -> tuple[list[list[int]], int]:
  """(prompt ids per pair, number of prompts whose item text was cut)."""
  out, cut = [], 0
  for i, pair in enumerate(pairs):
    ids, was_cut = fit_prompt(tokenizer, pair, cfg, None if hints is None else hints[i])
    out.append(ids)
    cut += int(was_cut)
  return out, cut


def buckets(max_prompt_len: int) -> tuple[int, ...]:
  """Prompt lengths generation pads to: the default buckets below `teacher.max_prompt_len`, and it."""
  limit = int(max_prompt_len)
  return tuple(sorted({b for b in gen.DEFAULT_BUCKETS if b < limit} | {limit}))


def score_labels(cfg) -> list[str] | None:
  """The labels `generate_texts` scores after the reasoning (`teacher.score_labels`), or None."""
  return list(cfg.labels) if cfg.teacher.score_labels else None


def generation_options(cfg) -> dict:
  """The `generate.generate_texts` options every teacher stage takes from the config: label
  scoring, n-gram guesses (greedy generation only) and the matmul dtype."""
  return {"score_labels": score_labels(cfg), "draft_tokens": int(cfg.teacher.draft_tokens),
          "matmul_dtype": cfg.teacher.generate_matmul_dtype}


def sample(teacher_config, params, tokenizer, ids: Sequence[Sequence[int]], cfg, *,
           batch_size: int, temperature: float = 0.0, num_samples: int = 1,
           seed: int = 0, max_prompt_len: int | None = None) -> list[gen.Sample]:
  """k samples per prompt (prompt-major), greedy when temperature == 0; with
  `teacher.score_labels`, each sample's label is scored (`Sample.label_logprobs`).
  max_prompt_len: the longest prompt (default `teacher.max_prompt_len`)."""
  if not ids:
    return []
  longest = int(cfg.teacher.max_prompt_len if max_prompt_len is None else max_prompt_len)
  return gen.generate_texts(teacher_config, params, tokenizer, ids,
                            max_new_tokens=int(cfg.teacher.max_response_len),
                            batch_size=int(batch_size), temperature=float(temperature),
                            num_samples=int(num_samples), seed=int(seed),
                            buckets=buckets(longest), **generation_options(cfg))


REASONING_SOURCES = ("generated", "rules")
CROSSFIT_FOLDS = 3   # query-disjoint folds for the cross-fitted valid figure (as the students')
CUE_ROOM = 8   # tokens of the response budget kept for "\nLabel: <label>" after a given rationale


def rule_reasoning_ids(tokenizer, pairs: Sequence[Pair], cfg) -> tuple[list[list[int]], int]:
  """Token ids of each pair's rule rationale (`data/rationale.rule_rationale`: what
  `sft.chains_from=rules` chains say before their label), tokenised as the SFT target tokenises
  it (on its own: the "\n" before "Label:" is a pre-token of its own), each cut to
  `teacher.max_response_len` - CUE_ROOM tokens. Returns (ids per pair, number cut)."""
  budget = int(cfg.teacher.max_response_len) - CUE_ROOM
  out, cut = [], 0
  for p in pairs:
    ids = tokenizer(rationale.rule_rationale(p.query, p.raw, p.item_text).strip(),
                    add_special_tokens=False)["input_ids"]
    cut += int(len(ids) > budget)
    out.append(list(ids[:budget]))
  return out, cut


def with_reasoning(tokenizer, pairs: Sequence[Pair], ids: Sequence[Sequence[int]], cfg,
                   reasoning: str) -> tuple[list[list[int]], list[str], int | None, int]:
  """The prompts to sample from for `reasoning` ("generated" | "rules"), shared by evaluation and
  annotation. "rules": each prompt is followed by its pair's rule rationale (`rule_reasoning_ids`),
  so the teacher continues from it; prompts then run up to max_prompt_len + max_response_len.
  Returns (ids, given text per pair ("" when generated; parse `given + sample.text`), the longest
  prompt for `sample` (None = teacher.max_prompt_len), rationales cut)."""
  if reasoning not in REASONING_SOURCES:
    raise errors.ConfigError(f"reasoning={reasoning!r}: expected one of {REASONING_SOURCES}")
  if reasoning == "generated":
    return [list(p) for p in ids], [""] * len(ids), None, 0
  r_ids, r_cut = rule_reasoning_ids(tokenizer, pairs, cfg)
  given = [tokenizer.decode(r, skip_special_tokens=True) for r in r_ids]
  longest = int(cfg.teacher.max_prompt_len) + int(cfg.teacher.max_response_len)
  return [list(p) + r for p, r in zip(ids, r_ids)], given, longest, r_cut


def straight_to_label(tokenizer, samples) -> int:
  """How many samples stopped on the label cue having generated nothing else (after a given
  rationale: the teacher went straight to its label)."""
  cue = tokenizer(gen.LABEL_CUE, add_special_tokens=False)["input_ids"]
  return sum(bool(s.stopped) and list(s.token_ids) == list(cue) for s in samples)


ANSWER_CUE = "\nLabel:"


def extract_answers(teacher_config, params, tokenizer, ids: Sequence[Sequence[int]], samples,
                    cfg, *, batch_size: int) -> dict[int, str | None]:
  """Zero-shot-CoT answer extraction (Kojima et al., 2022) for samples with no label line.

  A finished sample whose text parses with "no label line" is fed back as
  prompt + its text + ANSWER_CUE, and 4 greedy tokens are read: the first line of what follows
  must be one of cfg.labels. Returns {sample position: label, or None when that fails too}.
  Used by the SFT bootstrap only; annotation and evaluation never extract (a failure stays one).
  """
  eos = tokenizer.eos_token_id
  cue = tokenizer(ANSWER_CUE, add_special_tokens=False)["input_ids"]
  todo = [j for j, s in enumerate(samples) if s.finished and
          prompts.parse_response(s.text, cfg.labels, s.finished).error == "no label line"]
  rows = []
  for j in todo:
    answer = list(samples[j].token_ids)
    while answer and answer[-1] == eos:
      answer.pop()
    rows.append(list(ids[samples[j].prompt_index]) + answer + cue)
  if not rows:
    return {}
  longest = int(cfg.teacher.max_prompt_len) + int(cfg.teacher.max_response_len) + len(cue)
  outs = gen.generate_texts(teacher_config, params, tokenizer, rows, max_new_tokens=4,
                            batch_size=int(batch_size), temperature=0.0,
                            buckets=tuple(sorted({b for b in gen.DEFAULT_BUCKETS if b < longest} | {longest})))
  found = {}
  for j, out in zip(todo, outs):
    first = (out.text.strip().splitlines() or [""])[0]
    found[j] = prompts.parse_response(f"Label: {first}", cfg.labels).label
  return found


def score(gold: Sequence[int], predicted: Sequence[str | None], labels: Sequence[str]) -> dict:
  """gold: class ids; predicted: a label of `labels` or None (did not parse) per pair.

  Returns accuracy and macro_f1 with failures counted wrong, macro_f1_parsed on the parsed pairs
  only, per_class (real classes), and the confusion [true, pred] whose last column is UNPARSED.
  """
  labels = list(labels)
  index = {l: i for i, l in enumerate(labels)}
  pred_ids = [len(labels) if p is None else index[p] for p in predicted]
  m = classification_metrics(list(gold), pred_ids, labels + [UNPARSED])
  per_class = {l: m["per_class"][l] for l in labels}
  confusion = m["confusion"][:len(labels)]  # no true class is UNPARSED
  predicted_real = [sum(row[i] for row in confusion) for i in range(len(labels))]
  present = [per_class[l]["f1"] for i, l in enumerate(labels)
             if per_class[l]["support"] > 0 or predicted_real[i] > 0]
  parsed = [(g, p) for g, p in zip(gold, pred_ids) if p < len(labels)]
  macro_parsed = (classification_metrics([g for g, _ in parsed], [p for _, p in parsed],
                                         labels)["macro_f1"] if parsed else 0.0)
  return {"accuracy": m["accuracy"], "macro_f1": float(sum(present) / len(present)) if present else 0.0,
          "macro_f1_parsed": macro_parsed, "num_examples": len(gold), "per_class": per_class,
          "labels": labels + [UNPARSED], "confusion": confusion}


def distribution(predicted: Sequence[str | None], labels: Sequence[str]) -> dict:
  """Share of each label (and of UNPARSED when any) among `predicted`."""
  n = max(len(predicted), 1)
  counts = collections.Counter(UNPARSED if p is None else p for p in predicted)
  return {l: counts[l] / n for l in list(labels) + ([UNPARSED] if counts[UNPARSED] else [])}


def evaluate_teacher(teacher_config, params, tokenizer, pairs: Sequence[Pair], cfg, *,
                     batch_size: int = 16, seed: int = 0, offsets=None, fit_offsets: bool = False,
                     log: Callable[[str], None] | None = None, reasoning: str = "generated") -> dict:
  """Greedy-generate, parse and score labelled `pairs`.

  reasoning: "generated" (the teacher writes its reasoning, then its label is scored) or "rules"
  (the pair's rule rationale is given after the prompt and the teacher continues from it: for a
  teacher trained on rule chains this asks for its label after the exact rationale instead of
  after its own imitation of it; `forced_reasoning` then counts the rows whose continuation was
  the cue and nothing else, and the rationales cut). Parsing reads rationale + continuation.

  With `teacher.score_labels` every pair gets the label its scores rank first (a parse failure
  then concerns the reasoning only: counted in parse_rate, not in the label metrics); without,
  the parsed label (a failure counts wrong). `offsets` [K] (or `fit_offsets`: fitted here, on
  these pairs, so optimistic) add `adjusted`: the same metrics for argmax(log p + offsets).
  Returns {macro_f1, accuracy, macro_f1_parsed, parse_rate, failures_by_reason, num_pairs,
  per_class, confusion, label_distribution, gold_distribution, prompts_cut, generated_tokens,
  seconds, examples (2 raw outputs)[, label_logprobs, adjusted, offsets,
  macro_f1_offsets_crossfit (when the offsets are fitted here)]}.
  """
  if any(p.label_id is None for p in pairs):
    raise errors.DataError("evaluate_teacher needs labelled pairs (a pair has no label)")
  t0 = time.perf_counter()
  labels, gold = list(cfg.labels), [p.label_id for p in pairs]
  ids, cut = prompt_ids(tokenizer, pairs, cfg)
  ids, given, longest, r_cut = with_reasoning(tokenizer, pairs, ids, cfg, reasoning)
  samples = sample(teacher_config, params, tokenizer, ids, cfg, batch_size=batch_size, seed=seed,
                   max_prompt_len=longest)
  parsed = [prompts.parse_response(g + s.text, cfg.labels, s.finished)
            for g, s in zip(given, samples)]
  logp = None
  if samples and all(s.label_logprobs is not None for s in samples):
    logp = np.asarray([s.label_logprobs for s in samples], np.float64)          # [N, K]
    predicted = [labels[i] for i in logp.argmax(-1)]
  else:
    predicted = [p.label for p in parsed]
  result = score(gold, predicted, labels)
  failures = collections.Counter(reason_key(p.error) for p in parsed if p.error)
  result.update(num_pairs=len(pairs), parse_rate=(len(pairs) - sum(failures.values())) / max(len(pairs), 1),
                failures_by_reason=dict(failures), prompts_cut=cut, label_source=(
                    "scored" if logp is not None else "parsed"),
                label_distribution=distribution(predicted, labels),
                gold_distribution=distribution([labels[g] for g in gold], labels),
                generated_tokens=sum(len(s.token_ids) for s in samples),
                seconds=round(time.perf_counter() - t0, 2),
                examples=[(g + s.text)[:300] for g, s in zip(given, samples[:2])], reasoning=reasoning)
  if reasoning == "rules":
    result["forced_reasoning"] = {"rows": len(samples), "rationales_cut": r_cut,
                                  "straight_to_label": straight_to_label(tokenizer, samples)}
  if logp is not None:
    result["label_logprobs"] = np.round(logp, 5).tolist()
    if fit_offsets and offsets is None:
      offsets = decision.fit_offsets(logp, gold)
      result["offsets_fitted_on_these_pairs"] = True
      # The in-sample figure is optimistic (3 free offsets fitted on the pairs they score); the
      # honest one fits them on 2 of 3 query-disjoint folds and scores the third (None: < 3 queries).
      result["macro_f1_offsets_crossfit"] = decision.crossfit_macro_f1(
          logp, gold, [p.query_id for p in pairs], CROSSFIT_FOLDS)
    if offsets is not None:
      adj = [labels[i] for i in decision.predict(logp, offsets)]
      m = score(gold, adj, labels)
      result["offsets"] = [float(o) for o in offsets]
      result["adjusted"] = {"macro_f1": m["macro_f1"], "accuracy": m["accuracy"],
                            "per_class": m["per_class"], "confusion": m["confusion"],
                            "label_distribution": distribution(adj, labels)}
  if log:
    extra = f", with offsets {result['adjusted']['macro_f1']:.4f}" if "adjusted" in result else ""
    log(f"teacher eval on {len(pairs)} pairs: macro-F1 {result['macro_f1']:.4f}{extra}, "
        f"parse rate {result['parse_rate']:.3f}, failures {dict(failures)}, labels "
        f"{ {k: round(v, 3) for k, v in result['label_distribution'].items()} }")
  return result

