"""Programmatic scorers: the reward model's training signal on labelled pairs (no JAX import).

Each scorer maps one teacher response to a float in [0, 1] on one dimension of DIMENSIONS. They
share one keyword context (query, item_text, gold_label, labels, parsed_label, reasoning, budgets)
and each reads the keys it needs, so `score_all` can call them alike. Parsing the final
`Label: X` line is the caller's job (`rd_jax.data.prompts.parse_response`); pass its label as
`parsed_label` (None = unparseable) and its reasoning as `reasoning` (None = everything before a
final `Label:` line). `labels` is the class list, ordered from most to least relevant (ESCI:
Exact, Substitute, Complement, Irrelevant); correctness and consistency use that order.

consistency and grounding are transparent lexical heuristics, not judgements of meaning: they
are cheap, deterministic and auditable, and the reward model learns only their ordering.
"""

from __future__ import annotations

import re

from rd_jax import errors

DIMENSIONS = ("correctness", "consistency", "grounding", "form")


def _label_index(label, labels):
  low = [l.lower() for l in labels]
  return low.index(label.strip().lower()) if label and label.strip().lower() in low else None


def split_reasoning(response_text: str) -> str:
  """The response without its last non-empty line when that line is `Label: ...`."""
  lines = [l for l in response_text.strip().splitlines()]
  while lines and not lines[-1].strip():
    lines.pop()
  if lines and re.match(r"\s*label\s*:", lines[-1], re.I):
    lines.pop()
  return "\n".join(lines).strip()


# ------------------------------------------------------------------------------------ correctness
def correctness(response_text, *, parsed_label, gold_label, labels, graded=True, **_):
  """1 if parsed == gold; graded: 1 - d/(C-1) with d the distance in `labels` order; 0 if none.

  ESCI: gold Exact, parsed Substitute -> 2/3; parsed Irrelevant -> 0. graded=False: 0/1.
  """
  g = _label_index(gold_label, labels)
  if g is None:
    raise ValueError(f"gold_label {gold_label!r} is not one of the labels {list(labels)}")
  p = _label_index(parsed_label, labels)
  if p is None:
    return 0.0
  if p == g:
    return 1.0
  return 1.0 - abs(p - g) / (len(labels) - 1) if graded else 0.0


# ------------------------------------------------------------------------------------ consistency
_POS_WORDS = (r"match\w*|exact\w*|satisf\w*|meets?|same|fits?|identical|correspond\w*|"
              r"relevant|related")
_NEGATED = re.compile(
    r"\b(?:does\s+not|doesn'?t|do\s+not|don'?t|is\s+not|isn'?t|are\s+not|aren'?t|not|never|no)"
    r"\s+(?:\w+\s+){0,2}?(?:" + _POS_WORDS + r")\b(?:\s+(?:" + _POS_WORDS + r")\b)*", re.I)
_NEG = re.compile(r"\b(?:unrelated|irrelevant|different|differs?|violat\w*|mismatch\w*|wrong|"
                  r"incompatible|contradict\w*|fails?\s+to)\b", re.I)
_POS = re.compile(r"\b(?:" + _POS_WORDS + r")\b", re.I)
_STATED = (r"\b(?:label|answer|relevance|grade|verdict)\s*(?:is|:|=|would\s+be|should\s+be)\s*\W*"
           r"({})\b|\b(?:classif\w*|rated?|judged?|mark(?:ed)?)\s+(?:it\s+|this\s+)?as\s+\W*({})\b")


def reasoning_polarity(reasoning: str):
  """(pos - neg) / (pos + neg) in [-1, 1] from cue words; None when there is no cue.

  Negated positives ("does not match", "isn't exactly matching") count as negative and are removed
  before positives are counted, so they are not counted twice.
  """
  negated = len(_NEGATED.findall(reasoning))
  rest = _NEGATED.sub(" ", reasoning)
  neg = negated + len(_NEG.findall(rest))
  pos = len(_POS.findall(rest))
  return None if pos + neg == 0 else (pos - neg) / (pos + neg)


def consistency(response_text, *, parsed_label, labels, reasoning=None, **_):
  """Does the reasoning support the final label? A lexical heuristic in [0, 1].

  - 0 if no label parsed, or the reasoning states a different label ("the label is Complement",
    "classified as Irrelevant") than the final line;
  - else 1 - |p_label - p_reasoning| / 2, with label polarity p_label = 1 - 2 i/(C-1) (first label
    +1, last -1; ESCI: +1, +1/3, -1/3, -1) and `reasoning_polarity` (0.5 when it has no cue).
  """
  i = _label_index(parsed_label, labels)
  if i is None:
    return 0.0
  text = split_reasoning(response_text) if reasoning is None else reasoning
  alt = "|".join(re.escape(l) for l in labels)
  for m in re.finditer(_STATED.format(alt, alt), text, re.I):
    if _label_index(m.group(1) or m.group(2), labels) != i:
      return 0.0
  p_reason = reasoning_polarity(text)
  if p_reason is None:
    return 0.5
  p_label = 1.0 - 2.0 * i / (len(labels) - 1) if len(labels) > 1 else 1.0
  return 1.0 - abs(p_label - p_reason) / 2.0


# ------------------------------------------------------------------------------------ grounding
_COLOURS = ("red", "blue", "green", "black", "white", "yellow", "orange", "purple", "pink",
            "brown", "grey", "gray", "silver", "gold", "beige", "navy", "teal", "maroon",
            "violet", "ivory", "turquoise", "khaki", "burgundy", "charcoal", "cream")
_UNITS = (r"oz|ounces?|fl\s?oz|lbs?|pounds?|kg|mg|g|grams?|ml|l|liters?|litres?|gal|gallons?|"
          r"inch(?:es)?|ft|feet|foot|cm|mm|m|meters?|w|watts?|v|volts?|mah|gb|tb|mb|hz|ghz|"
          r"packs?|pk|count|ct|pcs|pieces?|qt|quarts?")
_QUOTED = re.compile(r"\"([^\"\n]{2,80})\"|“([^”\n]{2,80})”|(?<!\w)'([^'\n]{2,80})'(?!\w)")
_NUM_UNIT = re.compile(r"\b(\d+(?:\.\d+)?)\s*-?\s*(" + _UNITS + r")\b", re.I)
_SIZE = re.compile(r"\b(?:size\s+\w+|X{1,3}S|X{1,3}L|\dXL)\b")
_COLOUR = re.compile(r"\b(?:" + "|".join(_COLOURS) + r")\b", re.I)
_BRANDISH = re.compile(r"(?<![.!?]\s)(?<!^)\b(?:[A-Z][a-z]*[A-Z0-9][\w&-]*|[A-Z][a-z][\w&-]*|"
                       r"[a-z]+[A-Z][\w&-]*)")
_NOT_BRANDS = {"i", "query", "item", "product", "label", "brand", "color", "colour", "category",
               "title", "user", "search", "the", "this", "it", "however", "therefore", "so"}


def extract_claims(reasoning: str, labels=()):
  """Concrete claims in the reasoning, lower-cased and de-duplicated (a sorted list).

  Quoted strings; numbers with units ("12 oz"); colour words; sizes ("XL", "size 10");
  brand-like capitalised tokens not at a sentence start ("Nike", "iPhone", "KitchenAid").
  Label names and a few words of the prompt's vocabulary are not claims.
  """
  claims = set()
  for m in _QUOTED.finditer(reasoning):
    claims.add(("q", (m.group(1) or m.group(2) or m.group(3)).strip().lower()))
  reasoning = _QUOTED.sub(" ", reasoning)  # a quoted string is one claim, not also its words
  for m in _NUM_UNIT.finditer(reasoning):
    claims.add(("u", f"{m.group(1)} {m.group(2).lower()}"))
  claims.update(("w", m.group(0).lower()) for m in _SIZE.finditer(reasoning))
  claims.update(("w", m.group(0).lower()) for m in _COLOUR.finditer(reasoning))
  skip = _NOT_BRANDS | {l.lower() for l in labels}
  for line in reasoning.splitlines():
    for m in _BRANDISH.finditer(line.strip()):
      if m.group(0).lower() not in skip:
        claims.add(("w", m.group(0).lower()))
  return sorted(claims)


def _grounded(claim, source: str) -> bool:
  kind, text = claim
  if kind == "q":
    return " ".join(text.split()) in " ".join(source.split())
  if kind == "u":
    num, unit = text.split(" ", 1)
    pattern = rf"(?<![\d.]){re.escape(num)}\s*-?\s*{re.escape(unit)}s?(?![a-z])"
    return re.search(pattern, source) is not None
  return re.search(rf"(?<!\w){re.escape(text)}(?!\w)", source) is not None


def grounding(response_text, *, query, item_text, labels=(), reasoning=None, no_claims=1.0, **_):
  """Share of `extract_claims` that occur (case-insensitive) in the query or the item text.

  A reasoning without concrete claims scores `no_claims` (1.0): this dimension measures whether
  stated facts are grounded (hallucination), not how specific the reasoning is. Matching is
  literal: a number's unit must be written the same way ("12 oz" does not ground "12 ounces").
  """
  text = split_reasoning(response_text) if reasoning is None else reasoning
  claims = extract_claims(text, labels)
  if not claims:
    return float(no_claims)
  source = f"{query}\n{item_text}".lower()
  return sum(_grounded(c, source) for c in claims) / len(claims)


# ------------------------------------------------------------------------------------ form
def repeated_ngram_ratio(text: str, n: int = 4) -> float:
  """Share of the word n-grams that repeat an earlier one (0 = none; -> 1 for a loop)."""
  words = text.lower().split()
  grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
  return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


def form(response_text, *, parsed_label, reasoning=None, max_chars=None, max_tokens=None,
         num_tokens=None, ngram=4, **_):
  """Mean of four checks; 0 for an empty response.

  parses (a label was parsed), within budget (len <= max_chars and tokens <= max_tokens; tokens
  are `num_tokens` from the generator, else whitespace words), has reasoning (non-empty text
  before the label line), and 1 - `repeated_ngram_ratio` (degenerate loops).
  """
  if not response_text.strip():
    return 0.0
  text = split_reasoning(response_text) if reasoning is None else reasoning
  tokens = len(response_text.split()) if num_tokens is None else num_tokens
  within = ((max_chars is None or len(response_text) <= max_chars)
            and (max_tokens is None or tokens <= max_tokens))
  checks = (parsed_label is not None, within, bool(text.strip()),
            1.0 - repeated_ngram_ratio(response_text, ngram))
  return sum(float(c) for c in checks) / len(checks)


SCORERS = {"correctness": correctness, "consistency": consistency, "grounding": grounding,
           "form": form}


def score_all(response_text, parsed, *, query, item_text, gold_label, labels,
              dimensions=DIMENSIONS, **budgets):
  """All scorers on one response -> {dimension: score}.

  `parsed` is `parse_response`'s (label | None, reasoning, error_reason); `budgets` are passed on
  (max_chars, max_tokens, num_tokens, ngram).
  """
  label, reasoning, _ = parsed
  ctx = dict(query=query, item_text=item_text, gold_label=gold_label, labels=tuple(labels),
             parsed_label=label, reasoning=reasoning, **budgets)
  unknown = [d for d in dimensions if d not in SCORERS]
  if unknown:
    raise errors.ConfigError(f"reward.dimensions has unknown {unknown}; known: {list(SCORERS)}")
  return {d: float(SCORERS[d](response_text, **ctx)) for d in dimensions}


def pair_preferences(scores_a, scores_b, dimensions=DIMENSIONS, tie_tol=1e-6):
  """Bradley-Terry targets per dimension: 1 if a > b, 0 if a < b, 0.5 within `tie_tol`."""
  out = []
  for d in dimensions:
    diff = scores_a[d] - scores_b[d]
    out.append(0.5 if abs(diff) <= tie_tol else float(diff > 0))
  return out
