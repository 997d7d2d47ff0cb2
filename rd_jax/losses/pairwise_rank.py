"""Pairwise ranking loss within each query of a batch (RankNet on the log expected gain; ours, #17).

A pointwise CE on ~70 training queries first learns which query a pair belongs to (each query's
label mix), which does not transfer to unseen queries. A pairwise term is blind to that: it only
asks that, within one query, an item with the higher label gain scores higher, so query-level
effects cancel. Its score is the model's log expected gain under the softmax over the C classes,

    r_i = log sum_c softmax(z_i)_c g_c                          z [B, C], g [C] (ESCI: 1, .1, .01, 0)

the quantity eval ranks items by (ranking.py, in log scale), so no extra head is needed and the
decision stays the classifier's. Over the ordered pairs P = {(i, j): q_i = q_j, g_{y_i} > g_{y_j},
w_i w_j > 0} of the batch:

    L_rank = sum_{(i,j) in P} log(1 + exp(-(r_i - r_j))) / |P|            (0 when P is empty)

With random batches P is nearly empty (69 queries, 32 rows); `train.query_group_size` > 0 builds
batches of same-query runs (data/pipeline.py) so that every batch has pairs to rank.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def log_expected_gain(logits: jax.Array, gains: jax.Array) -> jax.Array:
  """r [B] = log sum_c softmax(z)_c g_c; logits [B, C], gains [C] (some > 0). Classes of gain 0
  drop out of the sum (log 0 = -inf inside a logsumexp contributes nothing)."""
  z = logits.astype(jnp.float32)
  log_g = jnp.where(gains > 0, jnp.log(jnp.maximum(gains, 1e-30)), -jnp.inf)      # [C]
  return jax.nn.logsumexp(z + log_g, axis=-1) - jax.nn.logsumexp(z, axis=-1)


def pairwise_rank_loss(logits: jax.Array, labels: jax.Array, query_index: jax.Array,
                       weights: jax.Array, gains) -> tuple[jax.Array, jax.Array]:
  """(sum over P of log(1 + exp(-(r_i - r_j))), |P|) -- module docstring; logits [B, C],
  labels [B] int, query_index [B] int, weights [B] (0 = padding row), gains [C]."""
  gains = jnp.asarray(gains, jnp.float32)
  r = log_expected_gain(logits, gains)                                          # [B]
  g = gains[labels]                                                             # [B]
  valid = weights > 0
  ordered = ((query_index[:, None] == query_index[None, :]) & (g[:, None] > g[None, :])
             & valid[:, None] & valid[None, :])                                 # [B, B] i above j
  pair_loss = jax.nn.softplus(-(r[:, None] - r[None, :]))                       # [B, B]
  return jnp.sum(jnp.where(ordered, pair_loss, 0.0)), jnp.sum(ordered.astype(jnp.float32))
