"""What the lexical reference's 9 overlap features alone know: logistic regressions on them.

  python -m rd_jax.experiments.overlap_probe --config=configs/demo.py

No JAX, seconds. On the config's train split (references.config_splits) it fits the 9 query-item
overlap features of references.py (no TF-IDF terms: nothing that can name a query or an item) in
two logistic regressions, C chosen on valid from references.C_GRID, test read for that C:
  balanced    class_weight="balanced", C on valid macro-F1 (references.fit_overlap, balanced=True)
              -- the lexical reference minus its TF-IDF features, decided by the argmax as it is;
  calibrated  unweighted, C on valid log-loss (references.fit_overlap) -- the model
              `student.lexical_distill_model=overlap` distils into the student.
Beside them, in the same run, the lexical reference and the train prior. Prints JSON: macro-F1 and
log-loss per split, and each probe's C. Why (#17, RESULTS.md): if the 9 features
match the whole reference on unseen queries, then what transfers is the overlap, and that is what
a student trained on ~70 queries must learn instead of the queries' own label mixes.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from rd_jax import metrics as metrics_lib
from rd_jax import references
from rd_jax import errors


def _figures(probs: np.ndarray, gold: np.ndarray, labels: Sequence[str]) -> dict:
  return {"macro_f1": round(metrics_lib.classification_metrics(
              gold, probs.argmax(-1), list(labels))["macro_f1"], 4),
          "log_loss": round(references.log_loss(probs, gold), 4)}


def run(cfg) -> dict:
  splits = references.config_splits(cfg)
  labels = list(cfg.labels)
  train, valid = splits["train"], splits["valid"]
  refs = references.fit_references(train, valid, labels)
  models = {"overlap_balanced": references.fit_overlap(train, valid, labels, balanced=True),
            "overlap_calibrated": references.fit_overlap(train, valid, labels),
            **refs}
  out = {}
  for name, model in models.items():
    row = {s: _figures(model.predict_proba(splits[s]),
                       np.asarray([p.label_id for p in splits[s]]), labels)
           for s in ("valid", "test") if splits.get(s)}
    row["C"] = model.info.get("C")
    out[name] = row
  return out


_FLAGS = {}


def main(argv):
  del argv
  print(json.dumps(run(_FLAGS["config"].value), indent=1))


if __name__ == "__main__":
  from absl import app
  from ml_collections import config_flags
  # defined only when run as a program: importing the probe (tests) defines no absl flag
  _FLAGS["config"] = config_flags.DEFINE_config_file("config", None, "Config file.",
                                                     lock_config=True)
  errors.run_cli(lambda: app.run(main), "python -m rd_jax.experiments.overlap_probe")
