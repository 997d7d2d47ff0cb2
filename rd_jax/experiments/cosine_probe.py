"""The probes of `python -m rd_jax.experiments.zero_shot --probe` (see that module's docstring):
class-balanced logistic regressions on the initial checkpoint's cosine and embedding features,
beside the lexical reference. A library module (no flags), so tests can import it."""

from __future__ import annotations

import jax
import numpy as np

from rd_jax import references
from rd_jax.data.tokenize import load_tokenizer
from rd_jax.models import bert
from rd_jax.student import similarity
from rd_jax.student.model import initial_student


def within_query_features(cos: np.ndarray, keys: list[str], mean: float, std: float) -> np.ndarray:
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
  """Macro-F1 (valid, test) of zero_shot's probes (a)-(e) and of the lexical reference."""
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
  product = {n: emb[n][0] * emb[n][1] for n in names}                         # [N, D]
  cos = {n: np.sum(emb[n][0].astype(np.float64) * emb[n][1], axis=1) for n in names}  # [N]
  mean, std = float(cos["train"].mean()), float(cos["train"].std()) or 1.0
  feats = {n: within_query_features(cos[n], similarity.query_keys(pairs_of[n]), mean, std) for n in names}
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
