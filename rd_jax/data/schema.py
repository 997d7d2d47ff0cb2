"""The pair schema: one validated (query, item) judgement, the item-text template, the fold rule.

No JAX (nor TensorFlow, nor torch) here. The PyTorch-only scorer (`rd_jax/score.py`) does not
import it: it repeats `render_item`'s rule so that it stays a single self-contained file.

A row is a mapping (a JSON object, a CSV record, a Parquet row). `validate_row` turns it into a
`Pair` or raises `DataError("{path}:{lineno}: {reason}")`. Rules, in order:
- `query`: required, a non-empty string.
- item text: `render_item(row, template)` must be non-empty (at least one template field set).
- text fields (`query`, `label`, `reasoning`, the template's fields) must be strings or missing
  (None); template fields may also be numbers (rendered with `str`). Ids (`query_id`,
  `product_id`) may be strings or integers (kept as strings).
- `label`: required unless `require_label=False`. Matched exactly, then case-insensitively; when the
  label set is the ESCI one (Exact/Substitute/Complement/Irrelevant, any order) the ESCI letters
  E/S/C/I are accepted too.
- over-long query / item text / reasoning are cut to `Limits.max_*_chars` (at a whitespace when one
  falls in the last fifth of the allowed span), and the cut is recorded in `Pair.truncated`.
- fold: the row's `fold_key` column (`query_fold`) when present (an int in [0, num_folds)), else
  `int(md5(query_id or query).hexdigest(), 16) % num_folds`, so a query never crosses splits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import string
from typing import Any, Mapping

from rd_jax import errors

ESCI_LETTERS = {"E": "Exact", "S": "Substitute", "C": "Complement", "I": "Irrelevant"}
TEXT_FIELDS = ("query", "label", "reasoning")
ID_FIELDS = ("query_id", "product_id")


class DataError(errors.DataError):
  """A bad input row. `str(err)` is "{path}:{lineno}: {reason}" ("{path}: {reason}" for the whole
  file: lineno None); `reason_key` groups skips."""

  def __init__(self, path: str, lineno: int | None, reason: str, reason_key: str):
    super().__init__(f"{path}:{lineno}: {reason}" if lineno is not None else f"{path}: {reason}")
    self.path, self.lineno, self.reason, self.reason_key = path, lineno, reason, reason_key


@dataclasses.dataclass(frozen=True)
class Limits:
  """Per-row rules from `cfg.data`: character caps and the fold rule."""
  max_query_chars: int = 256
  max_item_chars: int = 2048
  max_reasoning_chars: int = 2048
  num_folds: int = 5
  fold_key: str = "query_fold"

  @classmethod
  def from_config(cls, data_cfg) -> "Limits":
    return cls(max_query_chars=data_cfg.max_query_chars, max_item_chars=data_cfg.max_item_chars,
               max_reasoning_chars=data_cfg.max_reasoning_chars, num_folds=data_cfg.num_folds,
               fold_key=data_cfg.fold_key)


@dataclasses.dataclass(frozen=True)
class Pair:
  """One validated judgement. `label_id` indexes `cfg.labels` (None: unlabelled row)."""
  query: str
  item_text: str
  label_id: int | None
  reasoning: str | None
  query_id: str
  product_id: str
  fold: int
  raw: Mapping[str, Any] = dataclasses.field(repr=False, compare=False)
  teacher_label_id: int | None = None  # set by readers.attach_reasoning
  teacher_label_probs: tuple[float, ...] | None = None  # the annotation's label_probs, if any
  soft_label: tuple[float, ...] | None = None  # training target (crsd.label_source=teacher_soft)
  truncated: tuple[str, ...] = ()      # which of "query"/"item"/"reasoning" were cut


class _Blank(dict):
  """format_map mapping: missing fields and None values render as ""."""

  def __missing__(self, key):
    return ""


def template_fields(template: str) -> list[str]:
  """The field names `template` reads, in order (e.g. ["product_title", "product_brand", ...])."""
  return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def render_item(row: Mapping[str, Any], template: str) -> str:
  """The item text: `template` filled from `row`, with the lines of absent fields dropped.

  Rule (score.py repeats it without importing this module): `template.format_map(row)` with
  missing or None fields as ""; then split on "\n" and drop every line whose value part is blank
  after stripping — the text after its first ": " (e.g. "Brand: " for an empty brand), or the whole
  line when it has no ": "; join the kept lines with "\n". (A multi-line value is split like the
  template: its blank lines are dropped too.)
  """
  rendered = template.format_map(_Blank({k: ("" if v is None else v) for k, v in row.items()}))
  kept = [line for line in rendered.split("\n")
          if (line.split(": ", 1)[1] if ": " in line else line).strip()]
  return "\n".join(kept)


def truncate_text(text: str, max_chars: int) -> str:
  """`text` cut to at most `max_chars` characters, at a whitespace if one is in the last fifth."""
  if len(text) <= max_chars:
    return text
  cut = text[:max_chars]
  space = max(cut.rfind(" "), cut.rfind("\n"))
  if space >= max_chars * 4 // 5:
    cut = cut[:space]
  return cut.rstrip()


def query_fold(query_id: str, query: str, num_folds: int) -> int:
  """The hashed fold of a query: md5(query_id or query) % num_folds."""
  return int(hashlib.md5((query_id or query).encode("utf-8")).hexdigest(), 16) % num_folds


def match_label(value: str, labels: list[str] | tuple[str, ...]) -> int | None:
  """Index of `value` in `labels` (exact, case-insensitive, ESCI letter), or None if unknown."""
  if value in labels:
    return list(labels).index(value)
  lowered = [l.lower() for l in labels]
  if value.strip().lower() in lowered:
    return lowered.index(value.strip().lower())
  esci = {l.lower() for l in ESCI_LETTERS.values()}
  if set(lowered) == esci and value.strip().upper() in ESCI_LETTERS:
    return lowered.index(ESCI_LETTERS[value.strip().upper()].lower())
  return None


def validate_row(row: Mapping[str, Any], *, labels, template: str, path: str, lineno: int,
                 limits: Limits, require_label: bool = True) -> Pair:
  """The `Pair` for one input row, or `DataError` naming `path:lineno` and what is wrong."""
  def fail(reason_key: str, reason: str):
    raise DataError(path, lineno, reason, reason_key)

  if not isinstance(row, Mapping):
    fail("not_an_object", f"expected a JSON object, got {type(row).__name__}")
  for key in (*TEXT_FIELDS, *template_fields(template)):
    value = row.get(key)
    allowed = ((str, int) if key == "label" else  # graded labels may be JSON numbers: 4 -> "4"
               (str,) if key in TEXT_FIELDS else (str, int, float))  # template fields: numbers too
    if value is not None and (isinstance(value, bool) or not isinstance(value, allowed)):
      fail("non_string_field",
           f"field {key!r} must be a string, got {type(value).__name__} {value!r:.60}")
  for key in ID_FIELDS:
    value = row.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
      fail("non_string_field",
           f"field {key!r} must be a string or an integer, got {type(value).__name__}")

  query = (row.get("query") or "").strip()
  if not query:
    fail("missing_query", "missing or empty 'query'")
  item_text = render_item(row, template)
  if not item_text.strip():
    fields = ", ".join(template_fields(template))
    fail("empty_item", f"empty item text: none of the template fields ({fields}) is set")

  label_id = None
  label = row.get("label")
  label = str(label) if isinstance(label, int) else label
  if label is None or not label.strip():
    if require_label:
      fail("missing_label", "missing or empty 'label'")
  else:
    label_id = match_label(label, labels)
    if label_id is None:
      fail("unknown_label", f"unknown label {label!r}; allowed: {', '.join(labels)} (your file's label "
                           "set goes in --config.labels, e.g. --config.labels=1,2,3,4, in "
                           "class-id order)")

  reasoning = (row.get("reasoning") or "").strip() or None
  truncated = []
  for name, text, cap in (("query", query, limits.max_query_chars),
                          ("item", item_text, limits.max_item_chars),
                          ("reasoning", reasoning, limits.max_reasoning_chars)):
    if text is not None and len(text) > cap:
      truncated.append(name)
  if truncated:
    query = truncate_text(query, limits.max_query_chars)
    item_text = truncate_text(item_text, limits.max_item_chars)
    reasoning = reasoning and truncate_text(reasoning, limits.max_reasoning_chars)

  query_id = "" if row.get("query_id") is None else str(row["query_id"])
  product_id = "" if row.get("product_id") is None else str(row["product_id"])
  fold = _row_fold(row.get(limits.fold_key), limits.num_folds, fail)
  if fold is None:
    fold = query_fold(query_id, query, limits.num_folds)
  return Pair(query=query, item_text=item_text, label_id=label_id, reasoning=reasoning,
              query_id=query_id, product_id=product_id, fold=fold, raw=row,
              truncated=tuple(truncated))


def _row_fold(value, num_folds: int, fail) -> int | None:
  """The row's own fold: an integer, or a string/float holding one ("3", 3.0 as pandas writes it),
  in [0, num_folds); None when absent, "" or NaN."""
  if value is None or value == "" or (isinstance(value, float) and value != value):
    return None
  try:
    number = float(value) if isinstance(value, (str, float)) else value
    if isinstance(number, bool) or not isinstance(number, (int, float)) or number != int(number):
      raise ValueError
    fold = int(number)
  except (TypeError, ValueError, OverflowError):
    fail("bad_fold", f"fold {value!r} is not an integer")
  if not 0 <= fold < num_folds:
    fail("bad_fold", f"fold {fold} is outside [0, {num_folds}) (data.num_folds)")
  return fold
