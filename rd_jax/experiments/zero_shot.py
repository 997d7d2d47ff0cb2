"""The initial student as a zero-shot bi-encoder: nDCG@10 of the cosine of query and item embeddings.

  python -m rd_jax.experiments.zero_shot --config=configs/demo.py

No training. Each query and item is encoded alone by `student.init` (mean-pooled last hidden
states, as sentence-transformers pools all-MiniLM-L6-v2: student/similarity.py), and each query's
items are ranked by cosine. This is the relevance skill `student.similarity_weight` keeps while the
cross-encoder fine-tunes (README "Results so far"). Prints JSON: nDCG@10 per split beside a random
order's; macro-F1 is not defined here (a cosine is not a label).
"""

from __future__ import annotations

import json

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from rd_jax import ranking, references
from rd_jax.data.tokenize import load_tokenizer
from rd_jax.models import bert
from rd_jax.student import similarity
from rd_jax.student.model import initial_student

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_SPLITS = flags.DEFINE_list("splits", ["valid", "test"], "Splits of data.path to score.")


def cosine_ndcg(cfg, splits=("valid", "test")) -> dict:
  model_cfg, params, _ = initial_student(cfg, jax.random.PRNGKey(cfg.seed))
  model = bert.BertClassifier(model_cfg)
  tokenizer = load_tokenizer(cfg.student.tokenizer)
  pairs_of = references.config_splits(cfg)
  gains = ranking.label_gains(cfg.labels, cfg.eval.get("gains"))
  out = {"init": cfg.student.init}
  for name in splits:
    pairs = pairs_of[name]
    z, _ = similarity.similarity_targets(model, params, pairs, tokenizer,
                                         int(cfg.student.max_len_std))  # z-scored: same order
    keys = [p.query_id or p.query for p in pairs]
    gold = gains[np.asarray([p.label_id for p in pairs])]
    rand = np.random.default_rng(cfg.seed).random(len(pairs))
    out[name] = {"ndcg@10": round(ranking.ndcg_at_k(keys, z, gold)["ndcg"], 4),
                 "random_order_ndcg@10": round(ranking.ndcg_at_k(keys, rand, gold)["ndcg"], 4),
                 "pairs": len(pairs)}
  return out


def main(argv):
  del argv
  print(json.dumps(cosine_ndcg(_CONFIG.value, tuple(_SPLITS.value)), indent=1))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
