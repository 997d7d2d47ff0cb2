"""The initial student as a zero-shot bi-encoder: nDCG@10 of the cosine of query and item embeddings.

  python -m rd_jax.experiments.zero_shot --config=configs/demo.py [--probe]

No training. Each query and item is encoded alone by `student.init` (mean-pooled last hidden
states, as sentence-transformers pools all-MiniLM-L6-v2: student/similarity.py), and each query's
items are ranked by cosine. This is the relevance skill `student.similarity_weight` keeps while the
cross-encoder fine-tunes (README "Results so far"). Prints JSON: nDCG@10 per split beside a random
order's. A cosine is not a label, so `--probe` asks how much of the label it carries: class-balanced
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
from rd_jax.data.tokenize import load_tokenizer
from rd_jax.models import bert
from rd_jax.student import similarity
from rd_jax.student.model import initial_student

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


def _within_query(cos: np.ndarray, keys: list[str], mean: float, std: float) -> np.ndarray:
  """[N, 4]: split z-score (train mean/sd), centred on the query's mean, that over the query's
  sd, rank fraction among the query's candidates (share of them with a lower cosine)."""
  keys = np.asarray(keys, dtype=object).astype(str)
  centred, scaled = np.zeros_like(cos), similarity.standardise_within_queries(cos, keys)
  rank = np.zeros_like(cos)
  for key in np.unique(keys):
    rows = keys == key
    centred[rows] = cos[rows] - cos[rows].mean()
    rank[rows] = (cos[rows][None, :] < cos[rows][:, None]).mean(1)
  return np.stack([(cos - mean) / std, centred, scaled, rank], 1)


def cosine_probe(cfg) -> dict:
  """Macro-F1 (valid, test) of the module docstring's probes (a), (b), (c) and the lexical one."""
  from scipy import sparse
  from sklearn.linear_model import LogisticRegression
  from rd_jax import metrics as metrics_lib
  model_cfg, params, _ = initial_student(cfg, jax.random.PRNGKey(cfg.seed))
  model = bert.BertClassifier(model_cfg)
  tokenizer = load_tokenizer(cfg.student.tokenizer)
  pairs_of = references.config_splits(cfg)
  names = ("train", "valid", "test")
  emb = {n: similarity.pair_embeddings(model, params, pairs_of[n], tokenizer,
                                       int(cfg.student.max_len_std)) for n in names}
  cos = {n: np.sum(emb[n][0].astype(np.float64) * emb[n][1], axis=1) for n in names}
  product = {n: emb[n][0] * emb[n][1] for n in names}                         # [N, D]
  mean, std = float(cos["train"].mean()), float(cos["train"].std()) or 1.0
  feats = {n: _within_query(cos[n], similarity.query_keys(pairs_of[n]), mean, std) for n in names}
  gold = {n: np.asarray([p.label_id for p in pairs_of[n]]) for n in names}
  lexical = references.fit_lexical(pairs_of["train"], pairs_of["valid"], cfg.labels, seed=cfg.seed)
  lex = {n: lexical.features(pairs_of[n]) for n in names}
  f1 = lambda n, pred: metrics_lib.classification_metrics(gold[n], pred, list(cfg.labels))["macro_f1"]

  def probe(x):
    best = None
    for c in references.C_GRID:
      lr = LogisticRegression(C=c, class_weight="balanced", max_iter=3000, random_state=cfg.seed)
      lr.fit(x["train"], gold["train"])
      score = f1("valid", lr.predict(x["valid"]))
      if best is None or score > best[0]:
        best = (score, c, lr)
    return {"C": best[1], "valid_macro_f1": round(best[0], 4),
            "test_macro_f1": round(f1("test", best[2].predict(x["test"])), 4)}

  return {
      "init": cfg.student.init,
      "cosine_split_z": probe({n: feats[n][:, :1] for n in names}),
      "cosine_within_query": probe(feats),
      "lexical_plus_cosine_within_query": probe(
          {n: sparse.hstack([lex[n], sparse.csr_matrix(feats[n])]).tocsr() for n in names}),
      "embedding_product": probe(product),
      "embedding_product_absdiff": probe(
          {n: np.hstack([product[n], np.abs(emb[n][0] - emb[n][1])]) for n in names}),
      "lexical_plus_embedding_product": probe(
          {n: sparse.hstack([lex[n], sparse.csr_matrix(product[n])]).tocsr() for n in names}),
      "lexical_reference": {"C": lexical.info["C"],
                            "valid_macro_f1": round(f1("valid", lexical.model.predict(lex["valid"])), 4),
                            "test_macro_f1": round(f1("test", lexical.model.predict(lex["test"])), 4)},
  }


def main(argv):
  del argv
  out = cosine_ndcg(_CONFIG.value, tuple(_SPLITS.value))
  if _PROBE.value:
    out["probe_macro_f1"] = cosine_probe(_CONFIG.value)
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
