"""Score (query, item) pairs with an exported student — PyTorch or ONNX Runtime, no JAX needed.

  python -m rd_jax.score --model=<export dir> --input=pairs.jsonl --output=scores.jsonl \
      [--batch_size=64] [--chunk_rows=65536] [--backend=torch|onnx|onnx_int8] [--on_bad_row=error|skip]

Reads the export's `rd_jax.json` (labels, item_template, max_len) so pairs render and truncate
exactly as in training (`tokenize_pairs`: the item is cut before the query). The input is what the
training stages read (rd_jax.data.readers: JSONL, CSV or Parquet, optionally .gz): each row has
`query` and the template's item fields (optional `query_id`, `product_id`). A bad row stops naming
its file and line, or with --on_bad_row=skip is counted and written with its reason to
`<output>.rejects.jsonl`. Each output line: `line` (the input row's line; Parquet: its row
number), the ids present, `label` (argmax class name), `scores` {label: softmax probability},
`logits`, and `expected_gain` = sum_c p_c gain_c (rank a query's items by it: the score eval's
nDCG@10 ranks by; gains from --gains, else rd_jax.json, e.g. ESCI 1 / 0.1 / 0.01 / 0), in input
order; rows are read, scored and written --chunk_rows at a time (bounded memory), and batched
by similar length within a chunk for speed. The export's logits already include the
student's decision offsets (folded into the classifier bias), so `label` is the class eval reports.

Item rendering rule (the same as `rd_jax.data.schema.render_item`, kept self-contained here so this
file imports nothing that needs JAX): format the template with missing or null fields as "", then
drop every line whose value — the text after its first ": ", or the whole line if it has none — is
empty after stripping whitespace; join the remaining lines with "\\n".

An export whose rd_jax.json has a "match_hint" gets the student's lexical-match line before each
item (`rd_jax.data.match_hint.hinted_item`, standard library only), as in training.

Imports only the standard library, numpy, torch/transformers (backend=torch) and onnxruntime
(and, for an export without `gains` in rd_jax.json, rd_jax.ranking: numpy only; rd_jax.data.readers:
the standard library, numpy, fsspec, and `datasets` for Parquet) — never JAX.
"""

from __future__ import annotations

import argparse
import json
import os
import string
import sys
from typing import Iterator

import numpy as np

from rd_jax.data.match_hint import hinted_item
from rd_jax.data.schema import Limits, truncate_text

ID_FIELDS = ("query_id", "product_id")
EXPORT_META = "rd_jax.json"
BACKENDS = ("torch", "onnx", "onnx_int8")
MIN_ITEM_TOKENS = 8  # as rd_jax.data.tokenize: a long query is cut so the item keeps this many
ONNX_FILES = {"onnx": "onnx/model.onnx", "onnx_int8": "onnx/model_int8.onnx"}


class BadRowError(ValueError):
  """An input row that cannot be scored; the message names the file and line, `reason_key` groups
  skipped rows (on_bad_row="skip")."""

  def __init__(self, message: str, reason_key: str = "bad_row"):
    super().__init__(message)
    self.reason_key = reason_key


class _Blank(dict):
  """format_map mapping: missing or None fields render as ""."""

  def __getitem__(self, key):
    value = super().get(key)
    return "" if value is None else value


def template_fields(template: str) -> list[str]:
  return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def render_item(row: dict, template: str) -> str:
  """The item text of a row; lines with an empty value are dropped (rule in the module docstring)."""
  rendered = template.format_map(_Blank(row))
  kept = [line for line in rendered.split("\n")
          if (line.split(": ", 1)[1] if ": " in line else line).strip()]
  return "\n".join(kept)


def _checked_row(row, template: str, where: str, max_chars: tuple[int | None, int | None]) -> dict:
  """{"query", "item", ids...} of one input row, or BadRowError naming `where` (path:line). The
  query and item are cut at `max_chars` (query, item) characters as training cut them
  (data.max_query_chars / max_item_chars, schema.truncate_text), before any token limit."""
  if not isinstance(row, dict):
    raise BadRowError(f"{where}: expected a JSON object, got {type(row).__name__}", "not_an_object")
  query = row.get("query")
  if not isinstance(query, str) or not query.strip():
    raise BadRowError(f"{where}: missing or empty 'query'", "empty_query")
  item = render_item(row, template)
  if not item:
    raise BadRowError(f"{where}: no item text (none of {template_fields(template)} is set)",
                      "empty_item")
  ids = {k: row[k] for k in ID_FIELDS if row.get(k) not in (None, "")}   # "": an empty CSV cell
  query = query.strip()
  if max_chars[0]:                       # truncate_text leaves text within the limit as it is
    query = truncate_text(query, max_chars[0])
  if max_chars[1]:
    item = truncate_text(item, max_chars[1])
  return {"query": query, "item": item, **ids}


def iter_pairs(path: str, template: str, *, fmt: str = "auto", on_bad_row: str = "error",
               rejects=None, report: dict | None = None, max_query_chars: int | None = None,
               max_item_chars: int | None = None) -> Iterator[dict]:
  """Rows of a JSONL / CSV / Parquet file (optionally .gz; the training stages' reader,
  rd_jax.data.readers), one at a time: {"query", "item", "line", ids...}, "line" the row's line
  (Parquet: its row number). A bad row raises BadRowError naming path:line, or with
  on_bad_row="skip" is counted in `report` {rows_read, rows_kept, rows_skipped, skipped_by_reason}
  and written with its reason to `rejects` (an open text file, JSONL); a file that cannot be read
  raises whatever on_bad_row says. `report` is complete once the iterator is exhausted."""
  from rd_jax.data import readers  # stdlib + numpy (+ `datasets` for Parquet): no JAX
  if on_bad_row not in ("error", "skip"):
    raise ValueError(f"on_bad_row={on_bad_row!r}; expected 'error' or 'skip'")
  fmt, raw_rows = readers.iter_rows(path, fmt)
  report = {} if report is None else report
  report.update(path=path, format=fmt, rows_read=0, rows_kept=0, rows_skipped=0, skipped_by_reason={})
  skipped = report["skipped_by_reason"]
  for line, raw, row in raw_rows:
    report["rows_read"] += 1
    try:
      if isinstance(row, Exception):   # readers' DataError: not JSON, not UTF-8, CSV fields ...
        raise BadRowError(str(row), getattr(row, "reason_key", "bad_row")) from None
      checked = {**_checked_row(row, template, f"{path}:{line}", (max_query_chars, max_item_chars)),
                 "line": line}
    except BadRowError as err:
      if on_bad_row == "error":
        raise
      skipped[err.reason_key] = skipped.get(err.reason_key, 0) + 1
      report["rows_skipped"] += 1
      if rejects is not None:
        raw_text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, default=str)
        rejects.write(json.dumps({"path": path, "line": line, "reason": str(err), "raw": raw_text},
                                 ensure_ascii=False) + "\n")
      continue
    report["rows_kept"] += 1
    yield checked


def _nothing_to_score(path: str, report: dict) -> BadRowError:
  what = ("it has no rows" if not report["rows_read"] else
          f"all {report['rows_read']} rows are bad ({report['skipped_by_reason']})")
  return BadRowError(f"{path}: nothing to score: {what}", "empty_file")


def read_pairs(path: str, template: str, *, fmt: str = "auto", on_bad_row: str = "error",
               report: dict | None = None, **max_chars) -> list[dict]:
  """`iter_pairs` as a list (the export's check, tests); a file with no good row raises."""
  report = {} if report is None else report
  rows = list(iter_pairs(path, template, fmt=fmt, on_bad_row=on_bad_row, report=report,
                         **max_chars))
  if not rows:
    raise _nothing_to_score(path, report)
  return rows


def text_limits(meta: dict) -> dict:
  """{max_query_chars, max_item_chars} the student was trained with (rd_jax.json; for an export
  that predates them, schema.Limits' defaults: what every earlier run used unless it changed them)."""
  defaults = Limits()
  return {k: int(meta.get(k, getattr(defaults, k))) for k in ("max_query_chars", "max_item_chars")}


def load_export_meta(model_dir: str) -> dict:
  path = os.path.join(model_dir, EXPORT_META)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{model_dir!r} has no {EXPORT_META}: not an rd_jax export "
                            "(make one with `python -m rd_jax.convert`)")
  with open(path) as f:
    meta = json.load(f)
  missing = [k for k in ("labels", "item_template", "max_len") if k not in meta]
  if missing:
    raise ValueError(f"{path}: not an rd_jax export: rd_jax.json has no {missing[0]!r} (make one "
                     "with `python -m rd_jax.convert`)")
  return meta


def tokenize_pairs(tokenizer, queries: list[str], items: list[str], max_len: int,
                   min_item_tokens: int = MIN_ITEM_TOKENS,
                   match_hint: str = "") -> list[tuple[list[int], list[int]]]:
  """[CLS] query [SEP] item [SEP] in at most max_len tokens -> [(input_ids, token_type_ids)].

  match_hint: the export's rd_jax.json "match_hint" (the student's `student.match_hint`): the item
  segment is `match_hint.hinted_item(query, item, match_hint)`, as in training.

  Truncation is training's standard view (rd_jax.data.tokenize): with over = |q| + |i| + 3 - max_len,
  the item is cut first (to |i| - over, but never below min(|i|, min_item_tokens)), then the query.
  Token types: 0 for [CLS] query [SEP], 1 for item [SEP].
  """
  cut = lambda texts: tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_len,
                                return_attention_mask=False, return_token_type_ids=False)["input_ids"]
  cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
  items = [hinted_item(q, i, match_hint) for q, i in zip(queries, items)]
  out = []
  for q, i in zip(cut(queries), cut(items)):
    over = len(q) + len(i) + 3 - max_len
    if over > 0:
      i = i[:max(len(i) - over, min(len(i), min_item_tokens))]
      q = q[:len(q) - max(0, len(q) + len(i) + 3 - max_len)]
    out.append(([cls, *q, sep, *i, sep], [0] * (len(q) + 2) + [1] * (len(i) + 1)))
  return out


def pad_batch(encoded: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, np.ndarray]:
  """Right-pads to the longest row -> input_ids / attention_mask / token_type_ids [B, L] int64."""
  length = max(len(ids) for ids, _ in encoded)
  out = {k: np.zeros((len(encoded), length), np.int64)
         for k in ("input_ids", "attention_mask", "token_type_ids")}
  out["input_ids"][:] = pad_id
  for i, (ids, types) in enumerate(encoded):
    out["input_ids"][i, :len(ids)] = ids
    out["attention_mask"][i, :len(ids)] = 1
    out["token_type_ids"][i, :len(ids)] = types
  return out


def make_backend(model_dir: str, backend: str):
  """A function batch (dict of [B, L] int64) -> logits [B, C] float32."""
  if backend == "torch":
    import torch
    from rd_jax.convert.torch_mean_pooled import load_torch_classifier
    model = load_torch_classifier(model_dir).eval()

    def run(batch):
      with torch.inference_mode():
        return model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.float().numpy()
    return run
  if backend in ONNX_FILES:
    import onnxruntime as ort
    path = os.path.join(model_dir, ONNX_FILES[backend])
    if not os.path.isfile(path):
      flags = "--onnx --int8" if backend == "onnx_int8" else "--onnx"
      raise FileNotFoundError(f"{path!r} not found: export with {flags}")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda batch: session.run(["logits"], {n: batch[n] for n in names})[0]
  raise ValueError(f"unknown backend {backend!r}; one of {BACKENDS}")


class Scorer:
  """An export loaded once (tokenizer, backend, labels, gains); called on a list of rows
  ({"query", "item", ids...}) it scores them in length-sorted batches, results in input order."""

  def __init__(self, model_dir: str, batch_size: int = 64, backend: str = "torch",
               gains: list[float] | None = None):
    from transformers import AutoTokenizer
    self.meta = load_export_meta(model_dir)
    self.labels = self.meta["labels"]
    if gains is None:
      gains = self.meta.get("gains")
    if gains is None:   # an export from before rd_jax.json recorded them
      from rd_jax.ranking import label_gains
      gains = label_gains(self.labels)
    if len(gains) != len(self.labels):
      raise BadRowError(f"--gains has {len(gains)} values; the model has {len(self.labels)} labels")
    self.gains = np.asarray(gains, np.float64)
    self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    self.run = make_backend(model_dir, backend)
    self.batch_size = batch_size

  def __call__(self, rows: list[dict]) -> list[dict]:
    meta, labels = self.meta, self.labels
    encoded = tokenize_pairs(self.tokenizer, [r["query"] for r in rows], [r["item"] for r in rows],
                             meta["max_len"], meta.get("min_item_tokens", MIN_ITEM_TOKENS),
                             meta.get("match_hint", ""))
    order = sorted(range(len(rows)), key=lambda i: len(encoded[i][0]))  # similar lengths batch together
    logits = np.zeros((len(rows), len(labels)), np.float32)
    for start in range(0, len(order), self.batch_size):
      idx = order[start:start + self.batch_size]
      logits[idx] = self.run(pad_batch([encoded[i] for i in idx], self.tokenizer.pad_token_id))
    z = logits.astype(np.float64)
    probs = np.exp(z - z.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = probs @ self.gains
    return [{**{k: row[k] for k in ("line", *ID_FIELDS) if k in row}, "label": labels[int(np.argmax(lg))],
             "scores": {name: float(p) for name, p in zip(labels, pr)}, "logits": [float(x) for x in lg],
             "expected_gain": float(g)}
            for row, lg, pr, g in zip(rows, logits, probs, expected)]


def score_pairs(model_dir: str, rows: list[dict], batch_size: int = 64,
                backend: str = "torch", gains: list[float] | None = None) -> list[dict]:
  """Scores rows ({"query", "item", ids...}) in length-sorted batches; results in input order."""
  return Scorer(model_dir, batch_size, backend, gains)(rows)


def _chunks(rows: Iterator[dict], size: int) -> Iterator[list[dict]]:
  chunk = []
  for row in rows:
    chunk.append(row)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m rd_jax.score", description=__doc__.split("\n")[0])
  parser.add_argument("--model", required=True, help="export folder (python -m rd_jax.convert)")
  parser.add_argument("--input", required=True, help="pairs: JSONL, CSV or Parquet (optionally .gz), "
                      "with query + the export's item fields, as the training stages read them")
  parser.add_argument("--format", default="auto", choices=("auto", "jsonl", "csv", "parquet"),
                      help="the input's format; auto = from its suffix (past any .gz)")
  parser.add_argument("--on_bad_row", default="error", choices=("error", "skip"),
                      help="a bad input row stops naming its file and line (error), or is counted "
                      "and written with its reason to <output>.rejects.jsonl (skip)")
  parser.add_argument("--output", required=True, help="JSONL of scores, one per input row")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--chunk_rows", type=int, default=65536,
                      help="rows read, scored and written at a time (memory is bounded by one chunk)")
  parser.add_argument("--backend", choices=BACKENDS, default="torch")
  parser.add_argument("--gains", default="", help="gain per class, comma-separated in label order, "
                      "for `expected_gain` (the score to rank by); default: rd_jax.json, else rd_jax.ranking.label_gains")
  args = parser.parse_args(argv)
  if args.chunk_rows < 1 or args.batch_size < 1:
    parser.error("--chunk_rows and --batch_size must be >= 1")
  tmp, rejects_path = args.output + ".tmp", args.output + ".rejects.jsonl"
  report, written = {}, 0
  rejects = open(rejects_path + ".tmp", "w", encoding="utf-8") if args.on_bad_row == "skip" else None
  try:
    gains = [float(g) for g in args.gains.split(",")] if args.gains else None
    scorer = Scorer(args.model, args.batch_size, args.backend, gains)
    rows = iter_pairs(args.input, scorer.meta["item_template"], fmt=args.format,
                      on_bad_row=args.on_bad_row, rejects=rejects, report=report,
                      **text_limits(scorer.meta))
    with open(tmp, "w", encoding="utf-8") as f:
      for chunk in _chunks(rows, args.chunk_rows):   # memory: one chunk of rows at a time
        for result in scorer(chunk):
          f.write(json.dumps(result) + "\n")
        written += len(chunk)
    if not written:
      raise _nothing_to_score(args.input, report)
  except (BadRowError, FileNotFoundError, ValueError) as e:   # nothing half-written is left
    if rejects is not None:
      rejects.close()
    for path in (tmp, rejects_path + ".tmp"):
      if os.path.exists(path):
        os.remove(path)
    print(f"error: {e}", file=sys.stderr)
    return 2
  os.replace(tmp, args.output)
  if rejects is not None:
    rejects.close()
    os.replace(rejects_path + ".tmp", rejects_path)
  skipped = (f"; skipped {report['rows_skipped']} bad rows {report['skipped_by_reason']} -> "
             f"{rejects_path}" if report["rows_skipped"] else "")
  print(f"scored {written} pairs with {args.backend} -> {args.output}{skipped}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
