"""Why CRSD may not beat the baseline here: what the teacher's annotations carry about the label.

  python -m rd_jax.experiments.diagnose --config=configs/demo.py --out=runs/diagnose.json
  python -m rd_jax.experiments.diagnose --config=configs/demo.py --annotations=runs/pipeline/annotate/annotations.jsonl ...

CRSD can only transfer what the reasoning knows. On the annotated train pairs (gold labels known)
this measures, without training the student:
  teacher labels   agreement with gold: accuracy, macro-F1, confusion, label distribution
                   (label noise, and the always-majority macro-F1 to compare with);
  reasoning        length (characters, words) and how much of it is new: the share of its words
                   that appear in neither the query nor the item (a reasoning that restates the
                   pair adds nothing the standard view does not already see);
  probes           a class-balanced bag-of-words logistic regression (NumPy) predicting the GOLD
                   label from (a) the reasoning alone, (b) query + item, (c) query + item +
                   reasoning, (d) the reasoning shuffled across pairs (control), (e) the teacher's
                   label alone. Query-disjoint 2-fold: trained on one train fold, scored on the
                   other, macro-F1 averaged over both directions.
  null             the same probe with the gold labels permuted across pairs (`--null_permutations`
                   seeded permutations, for (a) and (b)): the macro-F1 range a probe reaches with
                   NO label information. A probe score inside that range shows nothing.
If (a) is no better than (d), and (c) no better than (b), the reasoning carries no label
information a student could distil, whatever the loss; if (b) itself sits inside the null, the
probe found no label information in query + item either, so it cannot tell a reasoning without
signal from a probe too weak to see it.
"""

from __future__ import annotations

import collections
import json
import re

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from rd_jax import metrics as metrics_lib
from rd_jax import storage
from rd_jax import errors

_FLAGS = {}


def _define_flags() -> None:
  """Flags only when run as a program: importing this module (tests, the table) defines none."""
  _FLAGS["config"] = config_flags.DEFINE_config_file(
      "config", None, "Pipeline config (configs/*.py).", lock_config=True)
  _FLAGS["annotations"] = flags.DEFINE_string(
      "annotations", "bundled", "Annotations JSONL: 'bundled' (or 'bundled_v2' / 'bundled_v1', "
      "earlier teachers') = our teacher's shipped annotations of the train folds; or a file.")
  _FLAGS["out"] = flags.DEFINE_string("out", "diagnose.json", "JSON result (written atomically).")
  _FLAGS["null_permutations"] = flags.DEFINE_integer(
      "null_permutations", 5, "Gold-label permutations for the probe's null (0 = none).")

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
  return _WORD.findall((text or "").lower())


def novelty(reasoning: str, query: str, item: str) -> float:
  """Share of the reasoning's words found in neither the query nor the item (0 = pure restating)."""
  said = words(reasoning)
  if not said:
    return 0.0
  seen = set(words(query)) | set(words(item))
  return sum(w not in seen for w in said) / len(said)


def featurise(texts_fit: list[str], texts_apply: list[str], min_count: int = 2):
  """Binary unigram + bigram features, vocabulary from `texts_fit` only: ([n, V], [m, V])."""
  def grams(text):
    w = words(text)
    return set(w) | {f"{a} {b}" for a, b in zip(w, w[1:])}
  counts = collections.Counter(g for t in texts_fit for g in grams(t))
  vocab = {g: i for i, g in enumerate(sorted(g for g, c in counts.items() if c >= min_count))}

  def matrix(texts):
    x = np.zeros((len(texts), max(len(vocab), 1)), np.float32)
    for row, text in enumerate(texts):
      for g in grams(text):
        if g in vocab:
          x[row, vocab[g]] = 1.0
    return x
  return matrix(texts_fit), matrix(texts_apply)


def fit_predict(x_fit, y_fit, x_apply, num_classes: int, *, l2: float = 1e-2, steps: int = 300,
                lr: float = 0.5) -> np.ndarray:
  """Class-balanced softmax regression by full-batch gradient descent; argmax on `x_apply`.

  loss = sum_i w_{y_i} CE(softmax(x_i W + b), y_i) / sum_i w_{y_i} + l2/2 |W|^2,
  w_c = n / (C n_c): each class weighs the same, so the probe cannot win by the prior alone.
  """
  n, d = x_fit.shape
  counts = np.bincount(y_fit, minlength=num_classes).astype(np.float64)
  class_w = np.where(counts > 0, n / (num_classes * np.maximum(counts, 1)), 0.0)
  w_row = class_w[y_fit]
  w_row = (w_row / w_row.sum()).astype(np.float32)[:, None]       # [n, 1]
  onehot = np.eye(num_classes, dtype=np.float32)[y_fit]           # [n, C]
  weights = np.zeros((d, num_classes), np.float32)
  bias = np.zeros(num_classes, np.float32)
  for _ in range(steps):
    logits = x_fit @ weights + bias                                # [n, C]
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    g_logits = w_row * (probs - onehot)                            # d loss / d logits, [n, C]
    weights -= lr * (x_fit.T @ g_logits + l2 * weights)
    bias -= lr * g_logits.sum(axis=0)
  return np.argmax(x_apply @ weights + bias, axis=1)


def probe(texts: list[str], labels: np.ndarray, folds: np.ndarray, label_names: list[str],
          null_labels: list[np.ndarray] = ()) -> dict:
  """Macro-F1 of the probe trained on one fold and scored on the other, both ways; with
  `null_labels` (permutations of `labels`), the same probe on each of them: `null` (min, max)."""
  fold_ids = np.unique(folds)
  scores, nulls = {}, np.zeros((len(null_labels), len(fold_ids)))   # [permutation, fit fold]
  for f, fit_fold in enumerate(fold_ids):
    fit, apply = folds == fit_fold, folds != fit_fold
    x_fit, x_apply = featurise([t for t, m in zip(texts, fit) if m],
                               [t for t, m in zip(texts, apply) if m])
    f1 = lambda y: metrics_lib.classification_metrics(
        y[apply], fit_predict(x_fit, y[fit], x_apply, len(label_names)), label_names)["macro_f1"]
    scores[int(fit_fold)] = f1(labels)
    for k, permuted in enumerate(null_labels):
      nulls[k, f] = f1(permuted)
  out = {"macro_f1": float(np.mean(list(scores.values()))), "by_fit_fold": scores}
  if len(null_labels):
    means = nulls.mean(1)                              # one macro-F1 per permutation
    out["null"] = {"permutations": len(null_labels), "min": float(means.min()),
                   "max": float(means.max()), "mean": float(means.mean())}
  return out


def diagnose(cfg, annotations: str, null_permutations: int = 5) -> dict:
  from rd_jax.data import readers
  label_names = list(cfg.labels)
  path = readers.resolve_annotations(annotations, annotations)
  pairs, _ = readers.load_pairs(cfg.data.path, cfg, require_label=True)
  train = readers.train_valid_test(pairs, cfg)["train"]
  train, report = readers.attach_reasoning(train, path, cfg)
  done = [p for p in train if p.reasoning and p.teacher_label_id is not None]
  if len(done) < 10:
    raise errors.DataError(f"only {len(done)} train pairs of data.train_folds have an annotation in {path}")
  gold = np.array([p.label_id for p in done])
  teacher = np.array([p.teacher_label_id for p in done])
  folds = np.array([p.fold for p in done])
  majority = int(np.bincount(gold, minlength=len(label_names)).argmax())
  chars = np.array([len(p.reasoning) for p in done])
  n_words = np.array([len(words(p.reasoning)) for p in done])
  new = np.array([novelty(p.reasoning, p.query, p.item_text) for p in done])
  mentions_label = np.mean([label_names[t].lower() in p.reasoning.lower()
                            for p, t in zip(done, teacher)])
  rng = np.random.default_rng(cfg.seed)
  shuffled = [done[i].reasoning for i in rng.permutation(len(done))]
  pair_text = [f"{p.query} || {p.item_text}" for p in done]
  texts = {
      "reasoning": [p.reasoning for p in done],
      "query_item": pair_text,
      "query_item_reasoning": [f"{t} || {p.reasoning}" for t, p in zip(pair_text, done)],
      "reasoning_shuffled": shuffled,
      "teacher_label": [f"teacherlabel{label_names[t]}" for t in teacher],
  }
  perm_rng = np.random.default_rng(cfg.seed + 1)
  null = [gold[perm_rng.permutation(len(gold))] for _ in range(null_permutations)]
  with_null = ("reasoning", "query_item")   # the null is the probe's, not the text's: two suffice
  result = {
      "annotations": path, "train_pairs": len(train), "annotated": len(done),
      "folds": sorted(int(f) for f in np.unique(folds)),
      "gold_distribution": _distribution(gold, label_names),
      "teacher_distribution": _distribution(teacher, label_names),
      "teacher_vs_gold": metrics_lib.classification_metrics(gold, teacher, label_names),
      "always_majority_macro_f1": metrics_lib.classification_metrics(
          gold, np.full_like(gold, majority), label_names)["macro_f1"],
      "reasoning_chars": _quantiles(chars), "reasoning_words": _quantiles(n_words),
      "reasoning_new_word_share": _quantiles(new),
      "reasoning_names_its_label": float(mentions_label),
      "probes_macro_f1": {name: probe(t, gold, folds, label_names,
                                      null if name in with_null else ())
                          for name, t in texts.items()},
      "annotation_report": report,
  }
  return result


def _distribution(ids: np.ndarray, names: list[str]) -> dict:
  counts = np.bincount(ids, minlength=len(names))
  return {n: round(float(c) / max(len(ids), 1), 4) for n, c in zip(names, counts)}


def _quantiles(values: np.ndarray) -> dict:
  q = np.quantile(values, [0.1, 0.5, 0.9])
  return {"mean": float(values.mean()), "p10": float(q[0]), "p50": float(q[1]), "p90": float(q[2])}


def main(argv):
  del argv
  out = _FLAGS["out"].value
  result = diagnose(_FLAGS["config"].value, _FLAGS["annotations"].value,
                    _FLAGS["null_permutations"].value)
  metrics_lib.write_json_atomic(result, out)
  probes = {k: round(v["macro_f1"], 4) for k, v in result["probes_macro_f1"].items()}
  nulls = {k: [round(v["null"]["min"], 4), round(v["null"]["max"], 4)]
           for k, v in result["probes_macro_f1"].items() if "null" in v}
  print(json.dumps({"annotated": result["annotated"],
                    "teacher_vs_gold_macro_f1": round(result["teacher_vs_gold"]["macro_f1"], 4),
                    "always_majority_macro_f1": round(result["always_majority_macro_f1"], 4),
                    "teacher_distribution": result["teacher_distribution"],
                    "reasoning_words_p50": result["reasoning_words"]["p50"],
                    "reasoning_new_word_share_p50": round(result["reasoning_new_word_share"]["p50"], 3),
                    "probes_macro_f1": probes, "probe_null_range_permuted_gold": nulls,
                    "out": storage.abspath(out)}, indent=1))


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["config"])
  errors.run_cli(lambda: app.run(main), "python -m rd_jax.experiments.diagnose")
