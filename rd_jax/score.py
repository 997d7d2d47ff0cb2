"""Score (query, item) pairs with an exported student — PyTorch or ONNX Runtime, no JAX needed.

  python -m rd_jax.score --model=<export dir> --input=pairs.jsonl --output=scores.jsonl \
      [--batch_size=64] [--backend=torch|onnx|onnx_int8]

Reads the export's `rd_jax.json` (labels, item_template, max_len) so pairs render and truncate
exactly as in training (`tokenize_pairs`: the item is cut before the query). Each input line is a
JSON object with `query` and the template's item fields (optional `query_id`, `product_id`). Each
output line: the ids present, `label` (argmax class name), `scores` {label: softmax probability},
`logits`, and `expected_gain` = sum_c p_c gain_c (rank a query's items by it: the score eval's
nDCG@10 ranks by; gains from --gains, else rd_jax.json, e.g. ESCI 1 / 0.1 / 0.01 / 0), in input
order; rows are batched by similar length for speed. The export's logits already include the
student's decision offsets (folded into the classifier bias), so `label` is the class eval reports.

Item rendering rule (the same as `rd_jax.data.schema.render_item`, kept self-contained here so this
file imports nothing that needs JAX): format the template with missing or null fields as "", then
drop every line whose value — the text after its first ": ", or the whole line if it has none — is
empty after stripping whitespace; join the remaining lines with "\\n".

An export whose rd_jax.json has a "match_hint" gets the student's lexical-match line before each
item (`rd_jax.data.match_hint.hinted_item`, standard library only), as in training.

Imports only the standard library, numpy, torch/transformers (backend=torch) and onnxruntime
(and, for an export without `gains` in rd_jax.json, rd_jax.ranking: numpy only).
"""

from __future__ import annotations

import argparse
import json
import os
import string
import sys

import numpy as np

from rd_jax.data.match_hint import hinted_item

ID_FIELDS = ("query_id", "product_id")
EXPORT_META = "rd_jax.json"
BACKENDS = ("torch", "onnx", "onnx_int8")
MIN_ITEM_TOKENS = 8  # as rd_jax.data.tokenize: a long query is cut so the item keeps this many
ONNX_FILES = {"onnx": "onnx/model.onnx", "onnx_int8": "onnx/model_int8.onnx"}


class BadRowError(ValueError):
  """An input row that cannot be scored; the message names the file and line."""


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


def read_pairs(path: str, template: str) -> list[dict]:
  """JSONL rows -> [{"query", "item", ids...}]; a bad row raises BadRowError naming path:line."""
  rows = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path}:{line_no}"
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise BadRowError(f"{where}: not valid JSON ({e})") from None
      if not isinstance(row, dict):
        raise BadRowError(f"{where}: expected a JSON object, got {type(row).__name__}")
      query = row.get("query")
      if not isinstance(query, str) or not query.strip():
        raise BadRowError(f"{where}: missing or empty 'query'")
      item = render_item(row, template)
      if not item:
        raise BadRowError(f"{where}: no item text (none of {template_fields(template)} is set)")
      rows.append({"query": query, "item": item, **{k: row[k] for k in ID_FIELDS if k in row}})
  return rows


def load_export_meta(model_dir: str) -> dict:
  path = os.path.join(model_dir, EXPORT_META)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{model_dir!r} has no {EXPORT_META}: not an rd_jax export "
                            "(make one with `python -m rd_jax.convert`)")
  with open(path) as f:
    return json.load(f)


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


def score_pairs(model_dir: str, rows: list[dict], batch_size: int = 64,
                backend: str = "torch", gains: list[float] | None = None) -> list[dict]:
  """Scores rows ({"query", "item", ids...}) in length-sorted batches; results in input order."""
  from transformers import AutoTokenizer
  meta = load_export_meta(model_dir)
  labels = meta["labels"]
  tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
  encoded = tokenize_pairs(tokenizer, [r["query"] for r in rows], [r["item"] for r in rows], meta["max_len"],
                           meta.get("min_item_tokens", MIN_ITEM_TOKENS), meta.get("match_hint", ""))
  run = make_backend(model_dir, backend)
  order = sorted(range(len(rows)), key=lambda i: len(encoded[i][0]))  # similar lengths batch together
  logits = np.zeros((len(rows), len(labels)), np.float32)
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    logits[idx] = run(pad_batch([encoded[i] for i in idx], tokenizer.pad_token_id))
  z = logits.astype(np.float64)
  probs = np.exp(z - z.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  if gains is None:
    gains = meta.get("gains")
  if gains is None:   # an export from before rd_jax.json recorded them
    from rd_jax.ranking import label_gains
    gains = label_gains(labels)
  expected = probs @ np.asarray(gains, np.float64)
  return [{**{k: row[k] for k in ID_FIELDS if k in row}, "label": labels[int(np.argmax(lg))],
           "scores": {name: float(p) for name, p in zip(labels, pr)}, "logits": [float(x) for x in lg],
           "expected_gain": float(g)}
          for row, lg, pr, g in zip(rows, logits, probs, expected)]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m rd_jax.score", description=__doc__.split("\n")[0])
  parser.add_argument("--model", required=True, help="export folder (python -m rd_jax.convert)")
  parser.add_argument("--input", required=True, help="JSONL of pairs: query + item fields")
  parser.add_argument("--output", required=True, help="JSONL of scores, one per input row")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--backend", choices=BACKENDS, default="torch")
  parser.add_argument("--gains", default="", help="gain per class, comma-separated in label order, "
                      "for `expected_gain` (the score to rank by); default: rd_jax.json, else rd_jax.ranking.label_gains")
  args = parser.parse_args(argv)
  try:
    rows = read_pairs(args.input, load_export_meta(args.model)["item_template"])
    gains = [float(g) for g in args.gains.split(",")] if args.gains else None
    if gains is not None and len(gains) != len(load_export_meta(args.model)["labels"]):
      raise BadRowError(f"--gains has {len(gains)} values; the model has "
                        f"{len(load_export_meta(args.model)['labels'])} labels")
    results = score_pairs(args.model, rows, args.batch_size, args.backend, gains=gains)
  except (BadRowError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  tmp = args.output + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for result in results:
      f.write(json.dumps(result) + "\n")
  os.replace(tmp, args.output)
  print(f"scored {len(results)} pairs with {args.backend} -> {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
