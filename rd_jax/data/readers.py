"""Read a user's pairs file (JSONL / CSV / Parquet, optionally .gz) into validated `Pair`s.

    pairs, report = load_pairs(cfg.data.path, cfg, rejects_path=workdir / "rejects.jsonl")
    splits = train_valid_test(pairs, cfg)          # {"train": [...], "valid": [...], "test": [...]}
    pairs, joined = attach_reasoning(pairs, cfg.data.reasoning_path, cfg)

Formats. JSONL is parsed here line by line (stdlib `json`, gzip opened transparently) so that a bad
line is reported as `file:line` — `datasets`' JSON builder reports neither, and it rejects a column
whose type varies between rows before we could name the row. CSV is parsed with the stdlib `csv`
module (every cell a string, "" for an empty one; errors name the record's first physical line);
Parquet goes through `datasets.load_dataset("parquet", ...)` and its errors name the 1-based row.
Bytes are decoded per line: a line that is not UTF-8 is a bad row naming its byte offset; gzip
bytes in a file not named .gz, a broken .gz, a UTF-16 file, a CSV header without `query` and an
empty file stop with a DataError naming the file whatever `on_bad_row` says.

Bad rows follow `cfg.data.on_bad_row`: "error" raises `DataError` ("path:line: reason") on the
first; "skip" counts them per reason, writes each to `rejects_path` as a JSON line
{"path", "line", "reason", "raw"} (raw = the input line, or the row as JSON) and goes on. The report
(rows_read, rows_kept, skipped_by_reason, truncated, ...) is what the stage writes to summary.json.
"""

from __future__ import annotations

import collections
import csv
import gzip
import io
import json
import logging
import os
from typing import Any, Iterator

import numpy as np

from rd_jax import errors, storage
from rd_jax.data import split as split_lib
from rd_jax.data.schema import DataError, Limits, Pair, match_label, truncate_text, validate_row

BUNDLED_DIR = os.path.join(os.path.dirname(__file__), "assets", "esci_us_srw150")
_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
            ".parquet": "parquet", ".pq": "parquet"}


def bundled_pairs_path() -> str:
  """The bundled ESCI subset (5,176 pairs, folds 1-4): data/assets/esci_us_srw150/pairs.jsonl.gz."""
  return os.path.join(BUNDLED_DIR, "pairs.jsonl.gz")


# data.reasoning_path names of the shipped annotations -> their file stem in BUNDLED_DIR.
# "bundled" is the newest teacher's (session 31: a rule-chain SFT teacher labelling after the given
# rule rationale, annotate.reasoning=rules, scored labels with label_probs); "bundled_v2" the
# prompt-v2 chain's (cpt -> sft -> reward -> dpo, generated reasoning, label_probs); "bundled_v1"
# the first teacher's (prompt v1, parsed labels). The older sets are kept so figures measured with
# them stay reproducible.
BUNDLED_ANNOTATIONS = {"bundled": "teacher_annotations", "bundled_v2": "teacher_annotations_v2",
                       "bundled_v1": "teacher_annotations_v1"}


def is_bundled_annotations(name: str) -> bool:
  return name in BUNDLED_ANNOTATIONS


def resolve_annotations(reasoning_path: str, default: str) -> str:
  """The annotations file `data.reasoning_path` names: a shipped set (BUNDLED_ANNOTATIONS),
  a file, or `default` when empty (a workdir's annotate/annotations.jsonl)."""
  if is_bundled_annotations(reasoning_path):
    return bundled_annotations_path(reasoning_path)
  return reasoning_path or default


def bundled_annotations_path(name: str = "bundled") -> str:
  """Our SmolLM2 teacher's label + reasoning for the bundled TRAIN folds (1, 3), made by
  `--stage=annotate` after the teacher stages; how, by which stages and which commit: the JSON next
  to it (`annotations_provenance_path`). `name`: a key of BUNDLED_ANNOTATIONS."""
  if name not in BUNDLED_ANNOTATIONS:
    raise errors.ConfigError(f"data.reasoning_path={name!r}: the shipped annotations are "
                             f"{sorted(BUNDLED_ANNOTATIONS)}")
  path = os.path.join(BUNDLED_DIR, BUNDLED_ANNOTATIONS[name] + ".jsonl.gz")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: data.reasoning_path={name!r} needs the package's "
                            "bundled teacher annotations (reinstall rd_jax)")
  return path


def annotations_provenance_path(path: str) -> str:
  """The provenance JSON shipped beside bundled annotations `<stem>.jsonl.gz`: `<stem>.json`."""
  return path[:-len(".jsonl.gz")] + ".json" if path.endswith(".jsonl.gz") else path + ".json"


def open_text(path: str) -> io.TextIOBase:
  """`path` opened as UTF-8 text; `.gz` files are decompressed transparently."""
  if str(path).endswith(".gz"):
    return gzip.open(_open_binary(path), "rt", encoding="utf-8", newline="")
  return io.TextIOWrapper(_open_binary(path), encoding="utf-8", newline="")


def _open_binary(path: str):
  """A local file, or an object in a bucket (gs://...: rd_jax/storage.py), opened for reading."""
  return storage.open(path, "rb") if storage.is_remote(path) else open(path, "rb")


def detect_format(path: str, fmt: str = "auto") -> str:
  """"jsonl" | "csv" | "parquet": `fmt` unless "auto", else from the suffix (past any .gz)."""
  if fmt != "auto":
    if fmt not in ("jsonl", "csv", "parquet"):
      raise errors.ConfigError(f"data.format={fmt!r}; expected auto, jsonl, csv or parquet")
    return fmt
  stem = str(path)[:-3] if str(path).endswith(".gz") else str(path)
  suffix = os.path.splitext(stem)[1].lower()
  if suffix not in _FORMATS:
    raise errors.ConfigError(f"{path}: cannot tell the format from suffix {suffix!r}; set data.format to "
                     "jsonl, csv or parquet")
  return _FORMATS[suffix]


_GZIP_MAGIC = b"\x1f\x8b"


def _byte_lines(path: str) -> Iterator[tuple[int, int, bytes]]:
  """(lineno, byte offset of the line in the (decompressed) file, line bytes without its newline).

  File-level problems raise DataError naming the file: gzip bytes under a name without .gz (or a
  .gz that is not gzip, or is cut short), and a UTF-16 file (which no line could be read from).
  """
  with _open_binary(path) as probe:
    head = probe.read(2)
  gz = str(path).endswith(".gz")
  if head == _GZIP_MAGIC and not gz:
    raise DataError(path, None, "the file is gzip-compressed but its name does not end in .gz; "
                    "rename it (e.g. pairs.jsonl.gz) or decompress it", "gzip_without_gz")
  if head in (b"\xff\xfe", b"\xfe\xff"):
    raise DataError(path, None, "the file is UTF-16 encoded; save it as UTF-8", "bad_encoding")
  opener = (lambda: gzip.open(_open_binary(path), "rb")) if gz else (lambda: _open_binary(path))
  lineno, offset = 0, 0
  with opener() as f:
    try:
      for lineno, line in enumerate(f, start=1):
        text = line[3:] if lineno == 1 and line.startswith(b"\xef\xbb\xbf") else line  # BOM
        yield lineno, offset, text.rstrip(b"\r\n")
        offset += len(line)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a cut stream: EOFError
      raise DataError(path, lineno + 1, f"cannot decompress ({type(e).__name__}: {e}); is it a "
                      "complete gzip file?", "bad_gzip") from None


def _decode(path: str, lineno: int, offset: int, line: bytes) -> str:
  """`line` as UTF-8, or DataError naming file, line and byte offset."""
  try:
    return line.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(path, lineno, f"not UTF-8: byte 0x{line[e.start]:02x} at byte offset "
                    f"{offset + e.start} of the file (column {e.start + 1} of the line); save the "
                    "file as UTF-8 (e.g. iconv -f latin1 -t utf-8)", "bad_encoding") from None


def _jsonl_rows(path: str) -> Iterator[tuple[int, str, Any]]:
  """(lineno, raw line, parsed object or DataError) per non-blank line."""
  for lineno, offset, data in _byte_lines(path):
    try:
      text = _decode(path, lineno, offset, data)
    except DataError as err:
      yield lineno, data.decode("utf-8", "replace"), err
      continue
    if not text.strip():
      continue
    try:
      row = json.loads(text)
    except json.JSONDecodeError as e:
      hint = " (the file looks like a JSON array; write one object per line)" if (
          lineno == 1 and text.lstrip().startswith("[")) else ""
      row = DataError(path, lineno, f"invalid JSON: {e.msg} at column {e.colno}{hint}",
                      "invalid_json")
    if lineno == 1 and isinstance(row, list) and row and isinstance(row[0], dict):
      row = DataError(path, lineno, "the file is one JSON array; write one JSON object per line "
                      "(JSONL)", "json_array")
    yield lineno, text, row


def _csv_rows(path: str) -> Iterator[tuple[int, str, Any]]:
  """(first physical line, raw record, row dict or DataError) per non-blank CSV data record.

  Parsed with the stdlib `csv` module (every cell a string; "" for an empty cell). A record that
  is not UTF-8, or whose number of fields differs from the header's, is a bad row (named by its
  first line; `on_bad_row=skip` skips it); a header without a `query` column stops the file.
  """
  bad_lines: dict[int, DataError] = {}

  def text_lines():
    for lineno, offset, data in _byte_lines(path):
      try:
        text = _decode(path, lineno, offset, data)
      except DataError as err:
        bad_lines[lineno] = err
        text = data.decode("utf-8", "replace")
      yield text + "\n"

  reader = csv.reader(text_lines())
  header = None
  previous_end = 0
  while True:
    try:
      record = next(reader)
    except StopIteration:
      break
    except csv.Error as e:
      start, previous_end = previous_end + 1, reader.line_num
      yield start, "", DataError(path, start, f"CSV structure: {e}", "csv_structure")
      continue
    start, end, previous_end = previous_end + 1, reader.line_num, reader.line_num
    if header is None:
      if start in bad_lines:
        raise bad_lines[start]
      header = [h.strip() for h in record]
      if "query" not in header:
        raise DataError(path, start, f"the header has no 'query' column (columns: "
                        f"{', '.join(header) or 'none'}); the first line must name the columns",
                        "csv_header")
      continue
    if not record or (len(record) == 1 and not record[0].strip() and len(header) > 1):
      continue  # blank line
    raw = ",".join(record)
    bad = next((bad_lines[n] for n in range(start, end + 1) if n in bad_lines), None)
    if bad is not None:
      yield start, raw, bad
    elif len(record) != len(header):
      yield start, raw, DataError(
          path, start, f"CSV record has {len(record)} fields, the header has {len(header)} (an "
          "unquoted comma or quote in a value? quote values that contain commas)", "csv_fields")
    else:
      yield start, raw, dict(zip(header, record))
  if header is None:
    raise DataError(path, None, "the file is empty (no header, no rows)", "empty_file")


def _table_rows(path: str, fmt: str) -> Iterator[tuple[int, str, Any]]:
  """(lineno, raw row, row dict or DataError): CSV via `_csv_rows`, Parquet via `datasets`."""
  if fmt == "csv":
    yield from _csv_rows(path)
    return
  import datasets  # heavy import, only for Parquet
  try:
    table = datasets.load_dataset("parquet", data_files=str(path), split="train")
  except Exception as e:  # noqa: BLE001 - pyarrow/datasets raise many types for a bad file
    raise DataError(path, None, f"cannot read as Parquet ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); is it a Parquet file?",
                    "bad_parquet") from None
  for lineno, row in enumerate(table, start=1):
    yield lineno, row, row


def iter_rows(path: str, fmt: str = "auto") -> tuple[str, Iterator[tuple[int, Any, Any]]]:
  """(format, rows) of a JSONL / CSV / Parquet file (optionally .gz): each row is (line, raw row,
  dict or DataError) — the line (JSONL, CSV: its first physical line; Parquet: the 1-based row)
  that error messages name. A file that cannot be read at all raises DataError while iterating.
  The one reader of pairs files: training (`load_pairs`), eval, `rd_jax.score` and the export."""
  if not storage.exists(path):
    raise errors.PathError(f"pairs file {path} does not exist")
  if storage.isdir(path):
    raise errors.PathError(f"pairs file {path} is a folder; give a JSONL, CSV or Parquet file")
  fmt = detect_format(path, fmt)
  return fmt, (_jsonl_rows(path) if fmt == "jsonl" else _table_rows(path, fmt))


def load_pairs(path: str, cfg, *, require_label: bool = True, rejects_path: str | None = None,
               split_rows: bool = True) -> tuple[list[Pair], dict]:
  """Validated pairs of `path` ("" = the bundled ESCI subset) and a report for summary.json.

  Returns (pairs in file order, report) where report = {path, format, rows_read, rows_kept,
  rows_skipped, skipped_by_reason: {reason_key: n}, truncated: {query|item|reasoning: n},
  rejects_path, split}. `split_rows`: a file without folds gets data.split's query-disjoint split
  (data/split.py; report["split"] records it and any rows in folds no split uses). Raises DataError ("path:line: reason") on the first bad row when
  `cfg.data.on_bad_row == "error"`.
  """
  path = str(path) if path else bundled_pairs_path()
  mode = cfg.data.on_bad_row
  if mode not in ("error", "skip"):
    raise errors.ConfigError(f"data.on_bad_row={mode!r}; expected 'error' or 'skip'")
  if not storage.exists(path):
    raise errors.PathError(f"pairs file {path} does not exist (data.path / eval.path)")
  fmt, rows = iter_rows(path, cfg.data.get("format", "auto"))
  limits = Limits.from_config(cfg.data)

  pairs, skipped, truncated = [], collections.Counter(), collections.Counter()
  rows_read = 0
  rejects = storage.open(rejects_path, "w", encoding="utf-8") if (mode == "skip" and rejects_path) else None
  try:
    for lineno, raw, row in rows:
      rows_read += 1
      try:
        if isinstance(row, DataError):
          raise row
        pair = validate_row(row, labels=cfg.labels, template=cfg.data.item_template, path=path,
                            lineno=lineno, limits=limits, require_label=require_label)
      except DataError as err:
        if mode == "error":
          raise err from None
        skipped[err.reason_key] += 1
        if rejects:
          raw_text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False,
                                                                 default=str)
          rejects.write(json.dumps({"path": path, "line": err.lineno, "reason": err.reason,
                                    "raw": raw_text}, ensure_ascii=False) + "\n")
        continue
      truncated.update(pair.truncated)
      pairs.append(pair)
  finally:
    if rejects:
      rejects.close()
  if not pairs:
    what = ("the file is empty (no rows)" if not rows_read else
            f"all {rows_read} rows were rejected ({dict(skipped)}; see {rejects_path})")
    raise DataError(path, None, f"no usable pairs: {what}", "empty_file")
  if skipped:
    logging.warning("%s: skipped %d of %d rows: %s (rejects: %s)", path, sum(skipped.values()),
                    rows_read, dict(skipped), rejects_path)
  if split_rows:
    pairs, split_record = split_lib.assign(pairs, cfg)
  report = {"path": path, "format": fmt, "rows_read": rows_read, "rows_kept": len(pairs),
            "rows_skipped": sum(skipped.values()), "skipped_by_reason": dict(skipped),
            "truncated": {k: truncated.get(k, 0) for k in ("query", "item", "reasoning")},
            "rejects_path": str(rejects_path) if rejects else None}
  if split_rows:
    report["split"] = split_record
  return pairs, report


def split(pairs: list[Pair], folds) -> list[Pair]:
  """The pairs whose fold is in `folds`, in input order."""
  wanted = set(int(f) for f in folds)
  return [p for p in pairs if p.fold in wanted]


def seeded_subset(pairs: list, n: int, seed: int) -> list:
  """`n` of `pairs` drawn without replacement by `seed`, kept in input order; all if n is 0 or
  >= len(pairs). annotate (annotate.max_pairs) and the student stages (data.max_train_pairs) share
  it, so the same n and seed over the same train split pick the same pairs in both."""
  if not n or n >= len(pairs):
    return list(pairs)
  pick = np.sort(np.random.default_rng(seed).permutation(len(pairs))[:n])
  return [pairs[i] for i in pick]


def train_valid_test(pairs: list[Pair], cfg) -> dict[str, list[Pair]]:
  """{"train", "valid", "test"} per `cfg.data.{train,valid,test}_folds` (query-disjoint by fold)."""
  names = {"train": cfg.data.train_folds, "valid": cfg.data.valid_folds,
           "test": cfg.data.test_folds}
  seen: dict[int, str] = {}
  for name, folds in names.items():
    for fold in folds:
      if fold in seen:
        raise errors.ConfigError(f"fold {fold} is in both data.{seen[fold]}_folds and data.{name}_folds")
      seen[fold] = name
  return {name: split(pairs, folds) for name, folds in names.items()}


def attach_reasoning(pairs: list[Pair], annotations_path: str, cfg) -> tuple[list[Pair], dict]:
  """`pairs` with `reasoning` / `teacher_label_id` from an annotations JSONL (.gz ok).

  Each annotation line: {"query_id", "product_id", "query", "reasoning", "teacher_label"}. A pair
  is matched on (query_id, product_id), else on (query, product_id). Pairs without a (non-empty)
  annotation keep their own reasoning (often None) and are counted in report["missing"]; the
  caller decides whether that is an error. Raises DataError on an invalid line.
  """
  by_id, by_query = {}, {}
  counts = collections.Counter()
  for lineno, _, ann in _jsonl_rows(annotations_path):
    if isinstance(ann, DataError):
      raise ann
    if not isinstance(ann, dict) or not ann.get("product_id"):
      raise DataError(annotations_path, lineno,
                      "an annotation needs a JSON object with 'product_id'", "bad_annotation")
    if not (ann.get("query_id") or ann.get("query")):
      raise DataError(annotations_path, lineno, "an annotation needs 'query_id' or 'query'",
                      "bad_annotation")
    counts["annotations_read"] += 1
    pid = str(ann["product_id"])
    keys = [(by_id, (str(ann["query_id"]), pid))] if ann.get("query_id") else []
    keys += [(by_query, (ann["query"], pid))] if ann.get("query") else []
    if any(key in table for table, key in keys):
      counts["duplicate_annotations"] += 1  # the first one wins
      continue
    for table, key in keys:
      table[key] = ann

  out, missing_examples = [], []
  for pair in pairs:
    ann = by_id.get((pair.query_id, pair.product_id)) if pair.query_id else None
    ann = ann or by_query.get((pair.query, pair.product_id))
    reasoning = (ann or {}).get("reasoning") or None
    if reasoning is None:
      counts["missing"] += 1
      if len(missing_examples) < 5:
        missing_examples.append({"query_id": pair.query_id, "query": pair.query,
                                 "product_id": pair.product_id})
      out.append(pair)
      continue
    counts["attached"] += 1
    if len(reasoning) > cfg.data.max_reasoning_chars:
      counts["truncated_reasoning"] += 1
      reasoning = truncate_text(reasoning, cfg.data.max_reasoning_chars)
    teacher = ann.get("teacher_label")
    teacher_id = match_label(teacher, cfg.labels) if isinstance(teacher, str) else None
    counts["unknown_teacher_label"] += int(teacher is not None and teacher_id is None)
    probs = ann.get("label_probs")
    probs = tuple(float(x) for x in probs) if isinstance(probs, list) and len(probs) == len(cfg.labels) else None
    out.append(Pair(**{**pair.__dict__, "reasoning": reasoning, "teacher_label_id": teacher_id,
                       "teacher_label_probs": probs}))
  report = {k: counts.get(k, 0) for k in ("annotations_read", "attached", "missing",
                                          "duplicate_annotations", "truncated_reasoning",
                                          "unknown_teacher_label")}
  report["missing_examples"] = missing_examples
  report["annotations_path"] = str(annotations_path)
  return out, report
