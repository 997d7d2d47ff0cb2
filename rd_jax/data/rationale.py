"""Rule-based stand-in rationales: a LEXICAL HEURISTIC, not an LLM and not a teacher.

Until the teacher LLM has annotated the pairs (`data.reasoning_source = "annotations"`), the demo
still needs reasoning text for the augmented view; `data.reasoning_source = "rules"` uses this.
It writes 1-4 short sentences from string matching only:
1. which query terms appear in the item's title / brand / color / category (`found`),
2. which do not (`missing`),
3. negations in the query ("not X", "without X", "no X", "non X", "non-X") and whether the
   negated term X appears in the item anyway,
4. numbers and sizes in the query ("10.1 oz", "24 pack") and whether the item states them.

It never reads the label (nor `esci_label`, `gain`): the text depends on the query and the item
fields only, so it cannot leak the answer. Matching is lower-case word overlap with a crude plural
rule ("sealants" ~ "sealant"); it knows nothing of synonyms, so its sentences are hints, not
judgements. Deterministic: the same pair always gives the same text.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import Mapping

from rd_jax.data.schema import Pair

FIELDS = (("title", "product_title"), ("brand", "product_brand"), ("color", "product_color"),
          ("category", "category"))
NEGATIONS = {"not", "without", "no", "non"}
STOPWORDS = {"a", "an", "the", "for", "with", "and", "or", "of", "to", "in", "on", "by", "at",
             "from", "is", "are", "be", "it", "its", "my", "me", "i", "you", "your", "that", "this",
             "as", "s", "w", "set", "&"}
_WORD = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")
_NUMBER = re.compile(r"(\d+(?:\.\d+)?)\s*(oz|ounces?|fl|inch(?:es)?|in|ft|feet|foot|pack|pk|count|"
                     r"ct|pcs|pieces?|gb|tb|mm|cm|m|ml|l|liters?|lbs?|pounds?|qt|gal(?:lons?)?|"
                     r"w|watts?|v|volts?|mah|x|\")?(?![a-z0-9])")
_MAX_LISTED = 5


def _stem(word: str) -> str:
  """A crude singular: batteries -> battery, boxes -> box, sealants -> sealant, glass -> glass."""
  if len(word) > 4 and word.endswith("ies"):
    return word[:-3] + "y"
  if len(word) > 3 and word.endswith(("ses", "xes", "ches", "shes")):
    return word[:-2]
  if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
    return word[:-1]
  return word


def _words(text: str) -> list[str]:
  """Lower-case words with accents removed ("TRESemmé" -> "tresemme")."""
  plain = unicodedata.normalize("NFKD", text.lower())
  return _WORD.findall("".join(c for c in plain if not unicodedata.combining(c)))


def _is_number(word: str) -> bool:
  return word[0].isdigit()


def _split_query(query: str) -> tuple[list[str], list[str]]:
  """(content terms, negated terms) of the query; numbers are left to `_numbers`."""
  words = _words(query.replace("non-", "non "))
  terms, negated = [], []
  i = 0
  while i < len(words):
    if words[i] in NEGATIONS and i + 1 < len(words):
      negated.append(words[i + 1])
      i += 2
      continue
    if words[i] not in STOPWORDS and words[i] not in NEGATIONS and not _is_number(words[i]):
      terms.append(words[i])
    i += 1
  return list(dict.fromkeys(terms)), list(dict.fromkeys(negated))


def _numbers(text: str) -> list[tuple[float, str]]:
  """(value, "10.1 oz") for each number in `text`, units normalised to their first letters."""
  found = []
  for value, unit in _NUMBER.findall(text.lower()):
    found.append((float(value), f"{value} {unit}".strip()))
  return found


def _join(words: list[str]) -> str:
  """'"a"', '"a" and "b"', '"a", "b" and "c"', '"a", ..., "e" and 2 more'."""
  shown = [f'"{w}"' for w in words[:_MAX_LISTED]]
  if len(words) > _MAX_LISTED:
    return ", ".join(shown) + f" and {len(words) - _MAX_LISTED} more"
  return ", ".join(shown[:-1]) + " and " + shown[-1] if len(shown) > 1 else shown[0]


def rule_rationale(query: str, row: Mapping[str, object], item_text: str = "") -> str:
  """1-4 sentences on how `query` lexically matches the item in `row` (label never read).

  `row` supplies product_title / product_brand / product_color / category; when none is set,
  `item_text` is searched as a whole.
  """
  fields = {name: str(row.get(key) or "") for name, key in FIELDS}
  fields = {name: text for name, text in fields.items() if text.strip()} or {"item": item_text}
  field_stems = {name: {_stem(w) for w in _words(text)} for name, text in fields.items()}
  everything = " \n ".join(fields.values())

  terms, negated = _split_query(query)
  found = {t: [n for n, stems in field_stems.items() if _stem(t) in stems] for t in terms}
  sentences = []
  hits = [t for t in terms if found[t]]
  if hits:
    where = {}
    for t in hits:
      where.setdefault(found[t][0], []).append(t)
    parts = [f"{_join(ws)} in the {name}" for name, ws in where.items()]
    noun = "term" if len(hits) == 1 else "terms"
    sentences.append(f"The item matches the query {noun} " + "; ".join(parts) + ".")
  missing = [t for t in terms if not found[t]]
  if missing:
    if hits:
      sentences.append(f"It does not mention {_join(missing)}.")
    else:
      sentences.append(f"None of the query terms appear in the item ({_join(missing)}).")

  for term in negated[:1]:
    places = [n for n, stems in field_stems.items() if _stem(term) in stems]
    if places:
      sentences.append(f'The query excludes "{term}", but the item\'s {places[0]} mentions it.')
    else:
      sentences.append(f'The query excludes "{term}", and the item does not mention it.')

  query_numbers = _numbers(query)
  if query_numbers:
    item_values = {value for value, _ in _numbers(everything)}
    matched = [text for value, text in query_numbers if value in item_values]
    unmatched = [text for value, text in query_numbers if value not in item_values]
    if unmatched:
      sentences.append(f"The item does not state the query's {_join(unmatched)}.")
    else:
      sentences.append(f"The item states the query's {_join(matched)}.")
  return " ".join(sentences[:4]) or "The query has no content terms to compare with the item."


def with_rule_rationales(pairs: list[Pair]) -> list[Pair]:
  """`pairs` with `reasoning` set to `rule_rationale` wherever it is None (others kept as given)."""
  return [p if p.reasoning else dataclasses.replace(
      p, reasoning=rule_rationale(p.query, p.raw, p.item_text)) for p in pairs]
