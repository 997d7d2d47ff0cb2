"""experiments/diagnose.py: label information in the teacher's annotations, measured by probes."""

import json

import numpy as np

from rd_jax.data import readers
from rd_jax.experiments import diagnose


def test_novelty_counts_words_outside_query_and_item():
  # "is" and "cheap" are new; "red", "shoe" are restated
  assert diagnose.novelty("Red shoe is cheap, red", "red shoe", "Shoe brand") == 2 / 5
  assert diagnose.novelty("", "q", "i") == 0.0


def test_probe_learns_a_separable_rule_and_balances_classes():
  rng = np.random.default_rng(0)
  y = rng.choice(4, size=400, p=[0.7, 0.1, 0.1, 0.1])       # imbalanced, like ESCI
  texts = [f"token{label} filler{rng.integers(50)}" for label in y]
  folds = np.arange(400) % 2 + 1
  names = ["a", "b", "c", "d"]
  assert diagnose.probe(texts, y, folds, names)["macro_f1"] == 1.0
  noise = [f"filler{rng.integers(50)} filler{rng.integers(50)}" for _ in y]
  assert diagnose.probe(noise, y, folds, names)["macro_f1"] < 0.5
  permuted = [rng.permutation(y) for _ in range(3)]           # the null: labels cut from the text
  out = diagnose.probe(texts, y, folds, names, permuted)
  assert out["macro_f1"] == 1.0 and out["null"]["max"] < 0.5 and out["null"]["permutations"] == 3


def test_diagnose_separates_informative_from_shuffled_reasoning(tmp_path, tiny_config):
  cfg = tiny_config()
  labels = list(cfg.labels)
  pairs, _ = readers.load_pairs("", cfg)
  train = readers.train_valid_test(pairs, cfg)["train"]
  picked = [p for i, p in enumerate(train) if i % 8 == 0]     # a sample, both train folds
  path = tmp_path / "annotations.jsonl"
  with open(path, "w") as f:
    for p in picked:
      gold = labels[p.label_id]
      f.write(json.dumps({"query_id": p.query_id, "product_id": p.product_id, "query": p.query,
                          "reasoning": f"this looks like grade {gold.lower()} to me",
                          "teacher_label": gold}) + "\n")
  result = diagnose.diagnose(cfg, str(path))
  assert result["annotated"] == len(picked) and result["folds"] == sorted(cfg.data.train_folds)
  assert result["teacher_vs_gold"]["accuracy"] == 1.0
  assert result["reasoning_names_its_label"] == 1.0
  probes = {k: v["macro_f1"] for k, v in result["probes_macro_f1"].items()}
  assert probes["reasoning"] > 0.95 and probes["teacher_label"] > 0.95
  assert probes["reasoning_shuffled"] < probes["reasoning"] - 0.4
  null = result["probes_macro_f1"]["reasoning"]["null"]     # gold permuted: no information left
  assert null["permutations"] == 5 and null["min"] <= null["max"] < probes["reasoning"] - 0.4
  assert "null" in result["probes_macro_f1"]["query_item"]
  assert "null" not in result["probes_macro_f1"]["teacher_label"]
  assert 0 < result["always_majority_macro_f1"] < 0.3
