"""The teacher's prompt, its SFT target and the parser of its responses (no JAX here).

Prompt versions (`teacher.prompt_version`, recorded in annotation manifests and provenance):
  1  the query and item first, then one-line definitions ("Exact: the item matches the query"),
     then `Label: <Exact | Substitute | Complement | Irrelevant>` (Exact first everywhere). No
     two prompts share more than the system turn. Kept to re-read and re-evaluate old teachers.
  2  (default) the instructions and the ESCI guideline's definitions first (Exact = satisfies ALL
     the query's specifications), the answer format `Label: <label>` naming no label, and the
     query and item LAST, so every prompt shares one token prefix (prefilled once:
     `rd_jax/refill.py`). `order` permutes the definitions (SFT trains on shuffled orders, so no
     position is the answer); the label itself is scored, not parsed (`generate.generate_texts`
     `score_labels`).

Response format: free-text reasoning, then a last non-empty line `Label: <label>` with <label>
one of `cfg.labels` (case-insensitive, optional trailing period). Anything else is a parse
failure with a named reason, so annotation counts failures instead of guessing:
  "empty"                 nothing but whitespace
  "truncated"             generation hit max tokens without an EOS (the text may be cut anywhere)
  "no label line"         the last non-empty line is not `Label: ...`
  "unknown label 'foo'"   `Label: foo` with foo not among the labels
"""

from __future__ import annotations

import re
from typing import NamedTuple, Sequence

from rd_jax import errors

# ours: one-line definitions of the ESCI grades (Amazon's ESCI annotation guidelines, shortened).
ESCI_DEFINITIONS = {
    "Exact": "the item matches the query.",
    "Substitute": "somewhat relevant: it does not fully match but could stand in for it.",
    "Complement": "does not fit the query but could be used together with an item that does.",
    "Irrelevant": "unrelated to the query, or violates a key constraint of it.",
}

SYSTEM_PROMPT = ("You are an expert annotator of product search results. You judge how well a "
                 "product matches a shopper's search query.")

USER_TEMPLATE = """Query: {query}

Product:
{item}

Grade the product for this query with one of these labels:
{definitions}

Explain your reasoning in two or three short sentences, then end with a final line of the form
Label: <{label_names}>"""

# The ESCI guideline (Reddy et al., 2022, "Shopping Queries Dataset", section 3), shortened.
ESCI_DEFINITIONS_V2 = {
    "Exact": ("relevant, and satisfies ALL the query's specifications (type, brand, size, "
              "quantity, colour, any 'without')."),
    "Substitute": "somewhat relevant: fails some aspect of the query but can serve as a functional substitute.",
    "Complement": "does not fulfil the query but can be used together with an item that does.",
    "Irrelevant": "irrelevant, or fails a central aspect of the query.",
}

USER_TEMPLATE_V2 = """Grade the product for the search query with one label:
{definitions}
Say in two or three short sentences which specifications of the query the product satisfies or
fails, then end with the line
Label: <label>

Query: {query}

Product:
{item}"""

PROMPT_VERSIONS = (1, 2)
CURRENT_VERSION = 2

_LABEL_LINE = re.compile(r"^\s*label\s*:\s*(.*?)\s*\.?\s*$", re.IGNORECASE)


class Parsed(NamedTuple):
  label: str | None       # one of `labels` (canonical spelling), None on failure
  reasoning: str          # text before the label line (the whole text on failure)
  error: str | None       # None, or the failure reason above


def build_messages(query: str, item_text: str, labels: Sequence[str], definitions: dict | None = None,
                   version: int = CURRENT_VERSION, order: Sequence[int] | None = None) -> list[dict]:
  """Chat messages [system, user]. item_text: the row rendered by `cfg.data.item_template`.

  Labels without a definition (a non-ESCI label set) are listed by name only. order: a
  permutation of range(len(labels)) listing the definitions (version 2; default: labels' order).
  """
  if version not in PROMPT_VERSIONS:
    raise errors.ConfigError(f"prompt version {version!r} not one of {PROMPT_VERSIONS}")
  if definitions is None:
    definitions = ESCI_DEFINITIONS_V2 if version == 2 else ESCI_DEFINITIONS
  listed = [labels[i] for i in order] if order is not None else list(labels)
  if sorted(listed) != sorted(labels):
    raise ValueError(f"order {order} is not a permutation of the {len(labels)} labels")
  lines = "\n".join(f"- {l}: {definitions[l]}" if l in definitions else f"- {l}" for l in listed)
  if version == 1:
    user = USER_TEMPLATE.format(query=query.strip(), item=item_text.strip(), definitions=lines,
                                label_names=" | ".join(labels))
  else:
    user = USER_TEMPLATE_V2.format(query=query.strip(), item=item_text.strip(), definitions=lines)
  return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def build_prompt(tokenizer, query: str, item_text: str, labels: Sequence[str],
                 definitions: dict | None = None, version: int = CURRENT_VERSION,
                 order: Sequence[int] | None = None) -> str:
  """The prompt string through the tokenizer's chat template, ending where the answer starts.

  Tokenise it with `add_special_tokens=False`: the template already holds the special tokens.
  """
  if not getattr(tokenizer, "chat_template", None):
    raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no chat template")
  return tokenizer.apply_chat_template(build_messages(query, item_text, labels, definitions, version, order),
                                       tokenize=False, add_generation_prompt=True)


def build_sft_target(reasoning: str, label: str) -> str:
  """The assistant text SFT trains on: reasoning, newline, `Label: X` (the stage appends EOS)."""
  reasoning = reasoning.strip()
  return f"{reasoning}\nLabel: {label}" if reasoning else f"Label: {label}"


def parse_response(text: str, labels: Sequence[str], finished: bool = True) -> Parsed:
  """(label | None, reasoning, error). finished=False: generation stopped at max tokens."""
  if not text or not text.strip():
    return Parsed(None, "", "empty")
  if not finished:
    return Parsed(None, text.strip(), "truncated")
  lines = text.rstrip().splitlines()
  match = _LABEL_LINE.match(lines[-1])
  if match is None:
    return Parsed(None, text.strip(), "no label line")
  by_lower = {l.lower(): l for l in labels}
  label = by_lower.get(match.group(1).strip().lower())
  if label is None:
    return Parsed(None, text.strip(), f"unknown label {match.group(1).strip()!r}")
  return Parsed(label, "\n".join(lines[:-1]).strip(), None)


# STaR "rationalisation" (Zelikman et al., 2022): for a pair the teacher got wrong, ask again with
# the gold label given as a hint. The kept chain is then trained under the PLAIN prompt, as if the
# teacher had found the label itself; rationales that mention the hint are rejected by the caller.
RATIONALIZATION_HINT = """

Hint: the correct label is {gold}. Write the reasoning that leads to this label as if you had
reached it yourself (do not mention the hint), then end with the final line
Label: {gold}"""


def build_rationalization_prompt(tokenizer, query: str, item_text: str, labels: Sequence[str],
                                 gold: str, definitions: dict | None = None,
                                 version: int = CURRENT_VERSION, order: Sequence[int] | None = None) -> str:
  """`build_prompt` with `RATIONALIZATION_HINT` (naming the gold label) appended to the user turn."""
  if not getattr(tokenizer, "chat_template", None):
    raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no chat template")
  messages = build_messages(query, item_text, labels, definitions, version, order)
  messages[-1]["content"] += RATIONALIZATION_HINT.format(gold=gold)
  return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
