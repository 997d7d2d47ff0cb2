"""Two recipes on one split, paired: macro-F1 of A minus B with a query-bootstrap interval.

  python -m rd_jax.experiments.compare \
      --a=runs/s0/crsd/valid_predictions.jsonl,runs/s1/crsd/valid_predictions.jsonl \
      --b=runs/b0/baseline/valid_predictions.jsonl,runs/b1/baseline/valid_predictions.jsonl \
      [--resamples=2000 --seed=0 --out=compare.json]

Each side is one or more predictions files of the same recipe (seeds): `valid_predictions.jsonl`
written by the crsd/baseline stages (valid, the decision rule fitted there: in-sample), or
`eval/predictions.jsonl` written by `--stage=eval` (its split). A side's figure is the mean of its
files' macro-F1; the interval resamples the split's queries, both sides scored on the same
resamples (rd_jax/bootstrap.py), so it says how sure "A beats B" is given which queries the split
holds; seed variance is in the per-file figures it prints. Every file must hold the same pairs
(query_id, product_id) with the same gold labels; otherwise this stops naming the file and pair.
"""

from __future__ import annotations

import json

import numpy as np
from absl import app, flags

from rd_jax import bootstrap, metrics as metrics_lib, storage
from rd_jax import errors

_FLAGS = {}


def _define_flags() -> None:
  _FLAGS.update(
      a=flags.DEFINE_list("a", None, "Predictions files of recipe A (one per seed)."),
      b=flags.DEFINE_list("b", None, "Predictions files of recipe B (one per seed)."),
      resamples=flags.DEFINE_integer("resamples", 2000, "Query resamples (>= 1)."),
      seed=flags.DEFINE_integer("seed", 0, "Seed of the resampling."),
      out=flags.DEFINE_string("out", "", "Also write the result here as JSON ('' = print only)."))


def read_predictions(path: str) -> dict:
  """{(query_id, product_id): (gold label, predicted label)} of one predictions file."""
  out = {}
  for number, line in enumerate(storage.read_text(path).splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      key = (str(row["query_id"]), str(row["product_id"]))
      out[key] = (row["label"], row["prediction"])
    except (ValueError, KeyError, TypeError) as e:
      raise errors.DataError(f"{path}:{number}: not a predictions row (query_id, product_id, label, "
                             f"prediction): {e}") from e
  if not out:
    raise errors.DataError(f"{path} holds no predictions")
  return out


def predictions_at(path: str, keys: list, labels: list, hint: str = "") -> list[int]:
  """The predicted class ids of one predictions file at `keys` [(query_id, product_id)] in that
  order; ValueError naming the file and the first missing pair (+ `hint`: what to do)."""
  by_pair = {k: labels.index(predicted) for k, (_, predicted) in read_predictions(path).items()}
  absent = [k for k in keys if k not in by_pair]
  if absent:
    raise errors.DataError(f"{path} has no prediction for {len(absent)} of the {len(keys)} pairs "
                           f"(first: query_id {absent[0][0]}, product_id {absent[0][1]})"
                           + (f": {hint}" if hint else ""))
  return [by_pair[k] for k in keys]


def compare(a_paths, b_paths, resamples: int = 2000, seed: int = 0) -> dict:
  """The paired bootstrap of A's seed-mean macro-F1 minus B's, and each file's own figure."""
  files = {p: read_predictions(p) for p in [*a_paths, *b_paths]}
  first_path = a_paths[0]
  first = files[first_path]
  keys = list(first)
  for path, rows in files.items():
    missing = [k for k in keys if k not in rows]
    extra = [k for k in rows if k not in first]
    if missing or extra:
      k = (missing or extra)[0]
      raise errors.DataError(f"{path} does not hold the pairs of {first_path}: {len(missing)} missing, "
                             f"{len(extra)} extra (first: query_id {k[0]}, product_id {k[1]})")
    wrong = [k for k in keys if rows[k][0] != first[k][0]]
    if wrong:
      raise errors.DataError(f"{path}: gold label of query_id {wrong[0][0]}, product_id {wrong[0][1]} "
                             f"is {rows[wrong[0]][0]!r}, {first_path} says {first[wrong[0]][0]!r}")
  labels = list(dict.fromkeys(label for rows in files.values() for pair in rows.values()
                              for label in pair))
  gold = np.asarray([labels.index(first[k][0]) for k in keys])
  def ids(paths):
    return np.asarray([[labels.index(files[p][k][1]) for k in keys] for p in paths])
  pred_a, pred_b = ids(a_paths), ids(b_paths)
  result = bootstrap.paired_query_bootstrap([k[0] for k in keys], gold, pred_a, pred_b,
                                            len(labels), resamples=resamples, seed=seed)
  result["per_file_macro_f1"] = {
      p: metrics_lib.classification_metrics(gold, pred, labels)["macro_f1"]
      for p, pred in zip([*a_paths, *b_paths], [*pred_a, *pred_b])}
  result["pairs"] = len(keys)
  return result


def main(argv):
  del argv
  if not _FLAGS["a"].value or not _FLAGS["b"].value:
    raise app.UsageError("--a and --b each need at least one predictions file")
  if _FLAGS["resamples"].value < 1:
    raise app.UsageError(f"--resamples must be >= 1, got {_FLAGS['resamples'].value}")
  for path in [*_FLAGS["a"].value, *_FLAGS["b"].value]:
    if not storage.exists(path):
      raise app.UsageError(f"no predictions file at {path}")
  result = compare(_FLAGS["a"].value, _FLAGS["b"].value, _FLAGS["resamples"].value,
                   _FLAGS["seed"].value)
  for path, f1 in result["per_file_macro_f1"].items():
    print(f"{f1:.4f}  {path}")
  print(bootstrap.describe(result, "macro_f1", f"A ({len(_FLAGS['a'].value)} files)",
                           f"B ({len(_FLAGS['b'].value)} files)"))
  if _FLAGS["out"].value:
    metrics_lib.write_json_atomic(result, _FLAGS["out"].value)


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["a", "b"])
  errors.run_cli(lambda: app.run(main), "python -m rd_jax.experiments.compare")
