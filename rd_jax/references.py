"""References every evaluation is read against: the label prior and a lexical model (no JAX).

  majority  the train split's label frequencies as probabilities: argmax = the most frequent label
            (a student at its macro-F1 learnt nothing beyond the prior); its nDCG is a random
            ranking's (every item scores the same; ranking.py averages over ties).
  lexical   TF-IDF word 1-2-grams of the query and, separately, of the item text, plus query-item
            overlap features, into a class-balanced multinomial logistic regression (scikit-learn).
            Its inverse regularisation C is chosen on the valid split's macro-F1 from `C_GRID`
            (the first of equals wins); the grid, each C's valid macro-F1 and the chosen C are kept
            in `.info`. A student below it has not learnt what words alone tell about relevance.

Overlap features (per pair; tokens = lower-cased [a-z0-9]+ words):
  share of query tokens in the item, Jaccard(query, item), share of query bigrams in the item,
  share of the query's numbers in the item (1 when the query has none) and whether it has any,
  a negation word (without / no / not / non / free) in the query and in the item,
  log(1 + |query tokens|), log(1 + |item tokens|).
Both fit on exactly the pairs given (the students' train split, after data.max_train_pairs
sampling) and are deterministic: lbfgs, no random state reaches the result.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Callable, Sequence

import numpy as np

C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0)
_WORD = re.compile(r"[a-z0-9]+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_NEGATIONS = frozenset({"without", "no", "not", "non", "free"})


def _tokens(text: str) -> list[str]:
  return _WORD.findall(text.lower())


def overlap_features(query: str, item: str) -> list[float]:
  """The query-item features of the module docstring, in its order (9 floats)."""
  q, i = _tokens(query), _tokens(item)
  qs, its = set(q), set(i)
  q_bigrams = set(zip(q, q[1:]))
  i_bigrams = set(zip(i, i[1:]))
  numbers = set(_NUMBER.findall(query))
  item_numbers = set(_NUMBER.findall(item))
  return [len(qs & its) / max(len(qs), 1),
          len(qs & its) / max(len(qs | its), 1),
          len(q_bigrams & i_bigrams) / len(q_bigrams) if q_bigrams else 0.0,
          len(numbers & item_numbers) / len(numbers) if numbers else 1.0,
          float(bool(numbers)),
          float(bool(qs & _NEGATIONS)),
          float(bool(its & _NEGATIONS)),
          float(np.log1p(len(q))),
          float(np.log1p(len(i)))]


@dataclasses.dataclass
class MajorityReference:
  prior: np.ndarray          # [C] train label frequencies
  info: dict

  def predict_proba(self, pairs) -> np.ndarray:
    return np.tile(self.prior, (len(pairs), 1))                       # [N, C]


@dataclasses.dataclass
class LexicalReference:
  query_vec: object          # sklearn TfidfVectorizer of the query
  item_vec: object           # ... of the item text
  scaler: object             # StandardScaler of the overlap features
  model: object              # LogisticRegression
  item_text_fn: Callable
  num_classes: int
  info: dict

  def features(self, pairs):
    return _features(self, pairs, fit=False)

  def predict_proba(self, pairs) -> np.ndarray:
    """[N, C] probabilities in class-id order (a class absent from train gets 0)."""
    proba = self.model.predict_proba(self.features(pairs))
    out = np.zeros((len(pairs), self.num_classes))
    out[:, self.model.classes_] = proba
    return out


def _features(ref, pairs, fit: bool):
  from scipy import sparse
  queries = [p.query for p in pairs]
  items = [ref.item_text_fn(p) for p in pairs]
  dense = overlap_matrix(pairs, ref.item_text_fn)
  if fit:
    return sparse.hstack([ref.query_vec.fit_transform(queries), ref.item_vec.fit_transform(items),
                          ref.scaler.fit_transform(dense)]).tocsr()
  return sparse.hstack([ref.query_vec.transform(queries), ref.item_vec.transform(items),
                        ref.scaler.transform(dense)]).tocsr()


def fit_majority(train_pairs, labels: Sequence[str]) -> MajorityReference:
  counts = np.bincount([p.label_id for p in train_pairs], minlength=len(labels))
  prior = counts / max(counts.sum(), 1)
  return MajorityReference(prior, {"label": labels[int(counts.argmax())],
                                   "train_label_counts": counts.tolist()})


def fit_lexical(train_pairs, valid_pairs, labels: Sequence[str],
                item_text_fn: Callable = lambda p: p.item_text, seed: int = 0,
                c_grid: Sequence[float] = C_GRID) -> LexicalReference:
  """The lexical reference, C chosen on valid macro-F1 (see the module docstring)."""
  from sklearn.feature_extraction.text import TfidfVectorizer
  from sklearn.linear_model import LogisticRegression
  from sklearn.preprocessing import StandardScaler
  from rd_jax import metrics as metrics_lib
  t0 = time.perf_counter()
  min_df = 2 if len(train_pairs) >= 100 else 1   # a tiny train set keeps every term
  vec = lambda: TfidfVectorizer(ngram_range=(1, 2), min_df=min_df, sublinear_tf=True,
                                token_pattern=r"(?u)\b\w+\b", dtype=np.float64)
  ref = LexicalReference(vec(), vec(), StandardScaler(), None, item_text_fn, len(labels), {})
  x_train = _features(ref, train_pairs, fit=True)
  y_train = np.asarray([p.label_id for p in train_pairs])
  x_valid = ref.features(valid_pairs)
  y_valid = np.asarray([p.label_id for p in valid_pairs])
  by_c, best = {}, None
  for c in c_grid:
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=3000, random_state=seed)
    model.fit(x_train, y_train)
    f1 = metrics_lib.classification_metrics(y_valid, model.predict(x_valid), list(labels))["macro_f1"]
    by_c[str(c)] = round(f1, 4)
    if best is None or f1 > best[0]:
      best = (f1, c, model)
  ref.model = best[2]
  ref.info = {"C_grid": list(c_grid), "valid_macro_f1_by_C": by_c, "C": best[1],
              "features": {"query_tfidf": len(ref.query_vec.vocabulary_),
                           "item_tfidf": len(ref.item_vec.vocabulary_), "overlap": 9},
              "train_pairs": len(train_pairs), "valid_pairs": len(valid_pairs),
              "fit_seconds": round(time.perf_counter() - t0, 2)}
  return ref


@dataclasses.dataclass
class OverlapModel:
  """A logistic regression on the 9 overlap features alone (fit_overlap's is unweighted, so its
  probabilities are calibrated; with balanced=True, class-weighted)."""
  scaler: object             # StandardScaler of the overlap features
  model: object              # LogisticRegression
  item_text_fn: Callable
  num_classes: int
  info: dict

  def features(self, pairs) -> np.ndarray:
    return self.scaler.transform(overlap_matrix(pairs, self.item_text_fn))

  def predict_proba(self, pairs) -> np.ndarray:
    """[N, C] probabilities in class-id order (a class absent from train gets 0)."""
    out = np.zeros((len(pairs), self.num_classes))
    out[:, self.model.classes_] = self.model.predict_proba(self.features(pairs))
    return out


def overlap_matrix(pairs, item_text_fn: Callable) -> np.ndarray:
  """[N, 9] float64: overlap_features of each pair (item text from item_text_fn)."""
  return np.asarray([overlap_features(p.query, item_text_fn(p)) for p in pairs],
                    np.float64).reshape(len(pairs), 9)


def fit_overlap(train_pairs, valid_pairs, labels: Sequence[str],
                item_text_fn: Callable = lambda p: p.item_text, seed: int = 0,
                c_grid: Sequence[float] = C_GRID, balanced: bool = False) -> OverlapModel:
  """The overlap features alone in a multinomial logistic regression. Default: WITHOUT class
  weights, C chosen on the valid split's log-loss; balanced=True: class_weight="balanced", C on
  valid macro-F1 (the lexical reference minus its TF-IDF terms). The first of equals wins.

  Why (#17, RESULTS.md): on the demo split the balanced 9-feature model is as good on
  the test fold as the whole lexical reference (macro-F1 0.327 vs 0.326), so what transfers to
  unseen queries is the query-item overlap, not the TF-IDF terms; and, unweighted, its
  probabilities are calibrated (valid / test log-loss 1.06 / 1.07 vs the prior's 1.11 / 1.15),
  which is what a distillation target should be: the student's CE applies the class weights."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.preprocessing import StandardScaler
  from rd_jax import metrics as metrics_lib
  t0 = time.perf_counter()
  scaler = StandardScaler()
  x_train = scaler.fit_transform(overlap_matrix(train_pairs, item_text_fn))
  y_train = np.asarray([p.label_id for p in train_pairs])
  x_valid = scaler.transform(overlap_matrix(valid_pairs, item_text_fn))
  y_valid = np.asarray([p.label_id for p in valid_pairs])
  by_c, best = {}, None
  for c in c_grid:
    model = LogisticRegression(C=c, class_weight="balanced" if balanced else None, max_iter=3000,
                               random_state=seed).fit(x_train, y_train)
    if balanced:   # higher is better: negate so that "lower wins" below holds for both
      value = metrics_lib.classification_metrics(y_valid, model.predict(x_valid),
                                                 list(labels))["macro_f1"]
      key = -value
    else:
      proba = np.zeros((len(valid_pairs), len(labels)))
      proba[:, model.classes_] = model.predict_proba(x_valid)
      value = key = log_loss(proba, y_valid)
    by_c[str(c)] = round(value, 4)
    if best is None or key < best[0]:
      best = (key, c, model)
  criterion = "valid_macro_f1_by_C" if balanced else "valid_log_loss_by_C"
  return OverlapModel(scaler, best[2], item_text_fn, len(labels),
                      {"C_grid": list(c_grid), criterion: by_c, "C": best[1],
                       "features": {"overlap": 9}, "class_weight": "balanced" if balanced else None,
                       "train_pairs": len(train_pairs), "valid_pairs": len(valid_pairs),
                       "fit_seconds": round(time.perf_counter() - t0, 2)})


def fit_references(train_pairs, valid_pairs, labels: Sequence[str],
                   item_text_fn: Callable = lambda p: p.item_text, seed: int = 0) -> dict:
  """{"majority": MajorityReference, "lexical": LexicalReference}; each has .predict_proba(pairs)
  -> [N, C] and .info (what it was fitted with). No lexical one when train has a single class
  or valid is empty (nothing to fit, or to choose C on)."""
  refs = {"majority": fit_majority(train_pairs, labels)}
  if len({p.label_id for p in train_pairs}) > 1 and valid_pairs:
    refs["lexical"] = fit_lexical(train_pairs, valid_pairs, labels, item_text_fn, seed)
  return refs


def score(ref, pairs, labels: Sequence[str], gains: np.ndarray) -> dict:
  """macro-F1, accuracy, per-class F1, log-loss and nDCG@10 of a reference on labelled pairs."""
  from rd_jax import metrics as metrics_lib, ranking
  probs = ref.predict_proba(pairs)
  gold = np.asarray([p.label_id for p in pairs])
  m = metrics_lib.classification_metrics(gold, probs.argmax(-1), list(labels))
  ndcg = ranking.pair_ndcg(pairs, probs, gains)
  return {"macro_f1": m["macro_f1"], "accuracy": m["accuracy"], "num_examples": m["num_examples"],
          "per_class_f1": {k: v["f1"] for k, v in m["per_class"].items()},
          "log_loss": log_loss(probs, gold), "ndcg@10": ndcg["ndcg"],
          "ndcg_queries": ndcg["queries"], "ndcg_queries_skipped": ndcg["queries_skipped"]}


def log_loss(probs: np.ndarray, gold: np.ndarray, eps: float = 1e-12) -> float:
  """Mean negative log-likelihood of the gold class (nats); probabilities clipped at eps."""
  picked = np.asarray(probs, np.float64)[np.arange(len(gold)), np.asarray(gold)]
  return float(-np.log(np.maximum(picked, eps)).mean())


# ---------------------------------------------------------------- eval's use, from a config
_FITTED: dict = {}   # in-process memo: eval scores crsd and baseline against the same fit


def config_splits(cfg, item_template: str | None = None) -> dict:
  """{"train", "valid", "test"} pairs of cfg.data.path, items rendered with `item_template` (the
  student's); train sampled as the students sample it (data.max_train_pairs, seed)."""
  from rd_jax.data import readers
  if item_template and item_template != cfg.data.item_template:
    cfg = cfg.copy_and_resolve_references()
    with cfg.unlocked():
      cfg.data.item_template = item_template
  pairs, _ = readers.load_pairs(cfg.data.path, cfg, require_label=True)
  splits = readers.train_valid_test(pairs, cfg)
  n = cfg.data.max_train_pairs
  if n and n < len(splits["train"]):
    splits["train"] = readers.seeded_subset(splits["train"], n, cfg.seed)
  return splits


def fit_for_config(cfg, item_template: str | None = None):
  """(fit_references on the config's train/valid splits, those splits); memoised per process."""
  # the seed matters only through the train sample (lbfgs draws nothing): seeds share one fit
  key = (cfg.data.path, tuple(cfg.data.train_folds), tuple(cfg.data.valid_folds),
         tuple(cfg.data.test_folds), cfg.data.num_folds, cfg.data.max_train_pairs,
         cfg.seed if cfg.data.max_train_pairs else None, cfg.data.fold_key,
         item_template or cfg.data.item_template, tuple(cfg.labels))
  if key not in _FITTED:
    splits = config_splits(cfg, item_template)
    if len(_FITTED) >= 4:
      _FITTED.clear()
    _FITTED[key] = (fit_references(splits["train"], splits["valid"], list(cfg.labels),
                                   seed=cfg.seed), splits)
  return _FITTED[key]


def reference_metrics(cfg, eval_sets: dict, item_template: str | None = None) -> dict:
  """{"majority" | "lexical": {"info": ..., <set name>: score(...)}} on each of `eval_sets`
  ({name: labelled pairs}, e.g. {"valid": ..., "test": ...})."""
  from rd_jax import ranking
  refs, _ = fit_for_config(cfg, item_template)
  gains = ranking.label_gains(cfg.labels, cfg.eval.get("gains"))
  return {name: {"info": ref.info, **{s: score(ref, pairs, cfg.labels, gains)
                                      for s, pairs in eval_sets.items()}}
          for name, ref in refs.items()}


HEADLINE = ("macro_f1", "ndcg@10")


def deltas(student: dict, refs: dict) -> dict:
  """{ref: {split: {metric: student - ref}}} for the splits and HEADLINE metrics both have."""
  return {name: {split: {m: student[split][m] - ref[split][m] for m in HEADLINE}
                 for split in student if split in ref}
          for name, ref in refs.items()}


def format_table(rows: dict, splits) -> str:
  """rows: {model: {split: {macro_f1, ndcg@10}}} -> a Markdown table, one column per (split, metric)."""
  head = " | ".join(f"{s} {label}" for s in splits for label in ("macro-F1", "nDCG@10"))
  out = [f"| model | {head} |", "| --- |" + " --- |" * (2 * len(splits))]
  for model, by_split in rows.items():
    cells = [f"{by_split[s][m]:.4f}" if s in by_split else "—" for s in splits for m in HEADLINE]
    out.append(f"| {model} | " + " | ".join(cells) + " |")
  return "\n".join(out)
