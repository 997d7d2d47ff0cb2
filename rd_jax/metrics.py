"""Classification metrics (accuracy, macro-F1, per-class P/R/F1/support, confusion) and a PNG."""

from __future__ import annotations

import io
import json
import textwrap

import numpy as np

from rd_jax import storage


def classification_metrics(y_true, y_pred, labels: list[str]) -> dict:
  """y_true, y_pred: int class ids [N]. Macro-F1 averages F1 over classes with support > 0
  in y_true OR predictions (sklearn's default over present labels); a class never seen and never
  predicted is excluded rather than counted as F1 = 0."""
  y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
  c = len(labels)
  for name, ids in (("y_true", y_true), ("y_pred", y_pred)):
    bad = (ids < 0) | (ids >= c)
    if bad.any():   # e.g. -1 = "no label": it would silently land in the last row/column
      raise ValueError(f"{name} has {int(bad.sum())} class ids outside [0, {c}) "
                       f"(first: {int(ids[bad][0])}); every evaluated pair needs a label")
  confusion = np.zeros((c, c), int)                         # [true, pred]
  np.add.at(confusion, (y_true, y_pred), 1)
  tp = np.diag(confusion).astype(float)
  support = confusion.sum(1)
  predicted = confusion.sum(0)
  precision = np.divide(tp, predicted, out=np.zeros(c), where=predicted > 0)
  recall = np.divide(tp, support, out=np.zeros(c), where=support > 0)
  f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(c),
                 where=(precision + recall) > 0)
  present = (support > 0) | (predicted > 0)
  per_class = {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                      "f1": float(f1[i]), "support": int(support[i])}
               for i, name in enumerate(labels)}
  n = max(len(y_true), 1)
  return {"accuracy": float(tp.sum() / n),
          "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
          "num_examples": int(len(y_true)),
          "per_class": per_class,
          "labels": list(labels),
          "confusion": confusion.tolist()}


def save_confusion_png(metrics: dict, path: str, title: str = "") -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cm = np.asarray(metrics["confusion"])
  labels = metrics["labels"]
  fig, ax = plt.subplots(figsize=(1.4 * len(labels) + 2, 1.2 * len(labels) + 1.5))
  ax.imshow(cm / np.maximum(cm.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
  for i in range(len(labels)):
    for j in range(len(labels)):
      ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=9)
  ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
  ax.set_yticks(range(len(labels)), labels)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  # A long title (eval's names the data file) is wrapped to the figure's width, not cut off.
  width_chars = int(fig.get_size_inches()[0] * 11)
  title = title or f"macro-F1 {metrics['macro_f1']:.4f}  acc {metrics['accuracy']:.4f}"
  ax.set_title(textwrap.fill(title, width_chars, break_long_words=True), fontsize=9)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110)
  plt.close(fig)
  storage.write_bytes_atomic(path, buffer.getvalue())


def write_json_atomic(obj, path: str) -> None:
  """Whole or not at all, locally or in a bucket (rd_jax/storage.py)."""
  storage.write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True))


def write_jsonl_atomic(rows, path: str) -> None:
  """One JSON object per line; whole or not at all (rd_jax/storage.py)."""
  storage.write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n"
                                          for row in rows))
