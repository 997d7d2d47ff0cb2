"""A lexical-match hint written into the student's item segment (`student.match_hint`).

    "missing":  "match: 2 of 4 query words; missing: red, 64gb.\n<item text>"
                "match: all 4 query words.\n<item text>"

Why: on this split what carries a relevance model to unseen queries is how much of the query the
item covers (README, session 13's overlap probe: 9 overlap features alone match the whole lexical
reference on test), and a cross-encoder fine-tuned on 69 queries learns the queries instead. Writing
the exact-match signal into the text is the move of "Injecting the BM25 Score as Text Improves
BERT-Based Re-rankers" (Askari et al., ECIR 2023), here as words the tokenizer already knows (the
query's own uncovered words) rather than a number. The hint leads the item so that truncation, which
cuts the item's tail, never cuts it.

The hint is part of the model's input format: the student trains and is evaluated on it, and an
export records it (`rd_jax.json` "match_hint"), so `rd_jax.score` and the export's parity check
render pairs the same way. A serving stack that feeds the exported model must call `hinted_item`
(pure Python, no dependencies beyond `re`) on each (query, item) pair, as it renders
`item_template`.

Matching rule (lowercased [a-z0-9]+ words): a query word is covered when it or its singular (a
trailing "s" or "es" dropped from words of 4+ letters) equals an item word or that word's singular,
or it equals two adjacent item words joined ("64gb" in "64 GB"). Stopwords are neither counted nor
listed. The list keeps query order, without repeats, at most MAX_LISTED words.
"""

from __future__ import annotations

import re

from rd_jax import errors

MODES = ("", "missing")
MAX_LISTED = 8
_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    "a an and the of for with to in on at by or from as is are be this that it its".split())


def _forms(word: str) -> set[str]:
  """The word and its candidate singulars: "shoes" -> {shoes, shoe, sho}; "glass" -> {glass}."""
  forms = {word}
  if len(word) >= 4 and word.endswith("s") and not word.endswith("ss"):
    forms.add(word[:-1])
    if word.endswith("es"):
      forms.add(word[:-2])
  return forms


def missing_words(query: str, item_text: str) -> tuple[list[str], int]:
  """(query words the item does not cover, in query order; number of counted query words)."""
  item = _WORD.findall(item_text.lower())
  covered = {f for w in item for f in _forms(w)} | {a + b for a, b in zip(item, item[1:])}
  counted, missing = [], []
  for word in dict.fromkeys(_WORD.findall(query.lower())):
    if word in STOPWORDS:
      continue
    counted.append(word)
    if not _forms(word) & covered:
      missing.append(word)
  return missing, len(counted)


def hint(query: str, item_text: str) -> str:
  """The hint line for one pair (no trailing newline)."""
  missing, counted = missing_words(query, item_text)
  if not missing:
    return f"match: all {counted} query words."
  listed = ", ".join(missing[:MAX_LISTED]) + (", ..." if len(missing) > MAX_LISTED else "")
  return f"match: {counted - len(missing)} of {counted} query words; missing: {listed}."


def hinted_item(query: str, item_text: str, mode: str) -> str:
  """The item segment the student reads: `item_text` for mode "", else hint, newline, item."""
  if mode == "":
    return item_text
  if mode == "missing":
    return f"{hint(query, item_text)}\n{item_text}"
  raise errors.ConfigError(f"student.match_hint must be one of {MODES}, got {mode!r}")
