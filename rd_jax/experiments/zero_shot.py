"""The initial student as a zero-shot bi-encoder: nDCG@10 of the cosine of query and item embeddings.

  python -m rd_jax.experiments.zero_shot --config=configs/demo.py [--probe]

No training. Each query and item is encoded alone by `student.init` (mean-pooled last hidden
states, as sentence-transformers pools all-MiniLM-L6-v2: student/similarity.py), and each query's
items are ranked by cosine. This is the relevance skill `student.similarity_weight` keeps while the
cross-encoder fine-tunes (RESULTS.md). Prints JSON: nDCG@10 per split beside a random
order's. A cosine is not a label, so `--probe` asks how much of the label it carries (experiments/cosine_probe.py): class-balanced
logistic regressions (C chosen on valid macro-F1, test read for the chosen C) fitted on the train
split's cosine features -- (a) the cosine z-scored with the train split's mean and sd; (b) (a) plus
where the item stands among its query's candidates (cosine minus the query's mean, that over the
query's sd, its rank fraction within the query); (c) the lexical reference's features plus (b)'s;
(d) the pointwise interaction of the two embeddings, e_q * e_i [D], and that with |e_q - e_i| [2D];
(e) the lexical reference's features plus e_q * e_i -- beside the lexical reference itself. (b) and (c) use each query's other candidates, which a
pointwise model does not see: they bound what the cosine can add, they are not a servable model.
"""

from __future__ import annotations

import json

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from rd_jax import ranking, references
from rd_jax.experiments import cosine_probe
from rd_jax.data.tokenize import load_tokenizer
from rd_jax.models import bert
from rd_jax.student import similarity
from rd_jax.student.model import initial_student
from rd_jax import errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_SPLITS = flags.DEFINE_list("splits", ["valid", "test"], "Splits of data.path to score.")
_PROBE = flags.DEFINE_bool("probe", False, "Also fit the module docstring's logistic-regression "
                           "probes of the cosine (macro-F1 on valid and test; about 2 min).")


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
  out = cosine_ndcg(_CONFIG.value, tuple(_SPLITS.value))
  if _PROBE.value:
    out["probe_macro_f1"] = cosine_probe.cosine_probe(_CONFIG.value)
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  errors.run_cli(lambda: app.run(main), "python -m rd_jax.experiments.zero_shot")
