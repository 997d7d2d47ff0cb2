"""The initial checkpoint's bi-encoder similarity of each training pair, kept while fine-tuning.

`student.similarity_weight` > 0 (ours). all-MiniLM-L6-v2, our default initialisation, is a
sentence-embedding (bi-encoder) model: sentence-transformers trained it on mean-pooled token
states of ONE text at a time. Zero-shot, the cosine of its query and item embeddings already ranks
the bundled valid/test items better than the lexical reference (nDCG@10 0.723 / 0.683 vs 0.703 /
0.643; README "Choices"), but a cross-encoder fine-tuned from it on ~3k pairs ranks at the prior:
its [CLS] over (query, item) never learnt that skill, and the few labels teach query identities
first. So, while the student trains, a linear head on the standard view's [CLS] regresses this
similarity (z-scored over the train split):

    L_sim = sum_i w_i (v . cls_i + b - s_i)^2 / sum_i w_i,   s_i = (cos(e_q, e_i) - mu) / sigma

with e = mean over tokens of the INITIAL encoder's last hidden states of the text alone, [CLS] and
[SEP] included (sentence-transformers' pooling). The targets are fixed before training; the head
(`SIMILARITY_HEAD`: v [D], b []) lives in the training params only and is dropped from final/ and
the export (`without_head`): serving is the unchanged BertForSequenceClassification.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rd_jax import errors

SIMILARITY_HEAD = "similarity_head"
OVERLAP_HEAD = "overlap_head"          # student/overlap_targets.py: the same kind of head, K = 9
AUX_HEADS = (SIMILARITY_HEAD, OVERLAP_HEAD)
_BUCKETS = (16, 32, 64, 128, 256, 512)
_BATCH = 64


def _embed(apply_fn, params, tokenizer, texts: list[str], max_len: int) -> np.ndarray:
  """Mean-pooled last hidden states [N, D] of each text encoded alone (texts batched in order of
  length and padded to the smallest bucket that fits: little padding, few compiled shapes)."""
  encoded = tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]
  order = np.argsort([len(e) for e in encoded], kind="stable")
  out = []
  for start in range(0, len(texts), _BATCH):
    enc = [encoded[i] for i in order[start:start + _BATCH]]
    longest = max(len(e) for e in enc)                          # <= max_len: truncated above
    length = next((b for b in _BUCKETS if b >= longest), longest)
    ids = np.zeros((_BATCH, length), np.int32)
    mask = np.zeros((_BATCH, length), np.int32)
    for row, e in enumerate(enc):
      ids[row, :len(e)], mask[row, :len(e)] = e, 1
    hidden = np.asarray(apply_fn(params, ids, mask))                       # [64, L, D]
    pooled = (hidden * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
    out.append(pooled[:len(enc)])
  if not out:
    return np.zeros((0, 0), np.float32)
  pooled = np.empty((len(texts), out[0].shape[1]), np.float32)
  pooled[order] = np.concatenate(out)                                       # back to input order
  return pooled


def pair_embeddings(model, params, pairs, tokenizer, max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """(e_query, e_item), each [N, D] float32 unit rows: the mean-pooled embedding of each pair's
  query and item under `params`, each text encoded alone (a distinct text once)."""
  @jax.jit
  def hidden_of(p, ids, mask):
    return model.apply({"params": p}, ids, mask, jnp.zeros_like(ids), deterministic=True)["hidden"]

  queries = list(dict.fromkeys(p.query for p in pairs))
  items = list(dict.fromkeys(p.item_text for p in pairs))
  unit = lambda e: e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
  q_emb = dict(zip(queries, unit(_embed(hidden_of, params, tokenizer, queries, max_len))))
  i_emb = dict(zip(items, unit(_embed(hidden_of, params, tokenizer, items, max_len))))
  if not pairs:
    return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
  return (np.stack([q_emb[p.query] for p in pairs]).astype(np.float32),
          np.stack([i_emb[p.item_text] for p in pairs]).astype(np.float32))


def pair_cosines(model, params, pairs, tokenizer, max_len: int) -> np.ndarray:
  """cos(e_query, e_item) [N] float64 of each pair under `params`, each text encoded alone."""
  q, i = pair_embeddings(model, params, pairs, tokenizer, max_len)
  return np.sum(q.astype(np.float64) * i.astype(np.float64), axis=1)


def query_keys(pairs) -> list[str]:
  """Each pair's query id (its text when it has none): the groups of the within-query features."""
  return [getattr(p, "query_id", None) or p.query for p in pairs]


def similarity_targets(model, params, pairs, tokenizer, max_len: int,
                       normalisation: str = "split") -> tuple[np.ndarray, dict]:
  """(targets [N] float32 in the order of `pairs`, stats) -- the z-scored cosine of each pair's
  query and item embeddings under `params` (the initial student, before any update); z-scored
  over all `pairs` (normalisation "split") or within each query's pairs ("query": see
  `standardise_within_queries`)."""
  if normalisation not in ("split", "query"):
    raise errors.ConfigError(f"config key student.similarity_normalisation = {normalisation!r}: "
                             "expected 'split' or 'query'")
  cos = pair_cosines(model, params, pairs, tokenizer, max_len)
  mean, std = float(cos.mean()), float(cos.std()) or 1.0
  stats = {"pairs": len(pairs), "cos_mean": round(mean, 4), "cos_std": round(std, 4),
           "normalisation": normalisation}
  if normalisation == "query":
    return standardise_within_queries(cos, query_keys(pairs)), stats
  return ((cos - mean) / std).astype(np.float32), stats


def standardise_within_queries(values: np.ndarray, keys) -> np.ndarray:
  """(v_i - mean_q) / std_q over the pairs of i's query q [N] float32; 0 for a query whose pairs
  all share one value (a single pair included).

  Why: relevance is relative to the query's other candidates. On the demo split a class-balanced
  logistic regression on the split-z-scored cosine alone scores valid/test macro-F1 0.263/0.202,
  and on the within-query features (centred, standardised, rank) 0.336/0.291 (README "Choices").
  A cross-encoder sees one pair, so this target asks it to infer the query's spread from the
  query text: a pointwise target, no query-grouped batches needed."""
  values = np.asarray(values, np.float64)
  _, group = np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)
  count = np.bincount(group)
  mean = np.bincount(group, values) / count
  var = np.maximum(np.bincount(group, values ** 2) / count - mean ** 2, 0.0)
  std = np.sqrt(var)[group]
  centred = values - mean[group]
  return np.where(std > 1e-8, centred / np.where(std > 1e-8, std, 1.0), 0.0).astype(np.float32)


def with_head(params: dict, hidden_size: int, name: str = SIMILARITY_HEAD,
              outputs: int | None = None) -> dict:
  """params plus a zero-initialised regression head `name`: v [D], b [] (outputs None: one
  scalar target, the similarity) or V [D, K], b [K] (outputs K: K targets, the overlap head);
  D = the width of what the head reads: the hidden size for [CLS], the number of classes for the
  logits (student.similarity_from)."""
  shape = () if outputs is None else (int(outputs),)
  return {**params, name: {"kernel": jnp.zeros((hidden_size, *shape), jnp.float32),
                           "bias": jnp.zeros(shape, jnp.float32)}}


def without_head(params: dict) -> dict:
  """The student's own params (every training-only head in AUX_HEADS dropped): what predicts, is
  saved to final/ and exported."""
  return {k: v for k, v in params.items() if k not in AUX_HEADS}


def similarity_loss(params: dict, cls: jax.Array, targets: jax.Array, weights: jax.Array,
                    name: str = SIMILARITY_HEAD):
  """(sum_i w_i (v . cls_i + b - s_i)^2, sum_i w_i); cls [B, D] ([CLS], or the logits [B, C] with
  student.similarity_from = "logits"), targets [B], weights [B]. A head with K outputs
  (targets [B, K]) takes the mean of the K squared errors per row."""
  head = params[name]
  pred = cls.astype(jnp.float32) @ head["kernel"] + head["bias"]          # [B] or [B, K]
  err = jnp.square(pred - targets)
  if err.ndim == 2:
    err = err.mean(axis=1)                                                 # [B]
  w = weights.astype(jnp.float32)
  return jnp.sum(w * err), jnp.sum(w)
