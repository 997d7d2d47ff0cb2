"""A learnable synthetic relevance task: the label is written in the item title as a cue word.

Each row: a random query of filler words, an item whose title holds the cue word of its label
among filler words (so a student that reads the item can reach macro-F1 1.0, and one that does
not stays at the prior). Label shares follow the bundled data's skew (51/28/5/17 %), queries are
assigned to folds 1-4 so the default split (train 1+3, valid 2, test 4) is query-disjoint.
"""

import json

import numpy as np

CUES = {"Exact": "identical", "Substitute": "alternative", "Complement": "accessory",
        "Irrelevant": "unrelated"}
FILLER = ("red blue green small large steel cotton pack set classic home office garden kitchen "
          "travel light heavy soft round square").split()


def write_cue_pairs(path, *, queries: int = 64, items_per_query: int = 12, seed: int = 0) -> str:
  rng = np.random.default_rng(seed)
  labels = list(CUES)
  rows = []
  for q in range(queries):
    query = " ".join(rng.choice(FILLER, 3))
    for i in range(items_per_query):
      label = labels[rng.choice(4, p=[0.51, 0.28, 0.05, 0.16])]
      words = list(rng.choice(FILLER, 4)) + [CUES[label]]
      rng.shuffle(words)
      rows.append({"query_id": f"q{q}", "query": query, "product_id": f"p{q}_{i}",
                   "product_title": " ".join(words), "label": label,
                   "query_fold": 1 + q % 4})
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return str(path)


if __name__ == "__main__":   # python tests/cue_data.py /tmp/cue.jsonl  (README "Choices")
  import sys
  print(write_cue_pairs(sys.argv[1]))


def cue_config(tiny_config, path):
  """The tiny config training on the cue pairs at `path`: 100 steps of 16 rows."""
  cfg = tiny_config()
  cfg.data.path = path
  cfg.train.num_steps = 100
  cfg.train.batch_size = 16
  cfg.train.log_every = 50
  cfg.train.checkpoint_every = 100
  return cfg
