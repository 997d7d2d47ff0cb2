"""In-batch InfoNCE between the two views' [CLS] vectors (CRSD's alignment loss).

With u_i = cls_std_i / ||cls_std_i|| and v_j = cls_aug_j / ||cls_aug_j|| (both [B, D]), the
similarity matrix is S = u v^T / tau  ([B, B]); the pair (i, i) is the positive and every other
valid j in the row is a negative:

    L_s->a = mean_i  -log( exp(S_ii) / sum_{j in N(i) + {i}} exp(S_ij) )
    L_a->s = the same on S^T            (symmetric = (L_s->a + L_a->s) / 2)

N(i) excludes (a) padding rows (weight 0), (b) in-batch duplicates of i — rows with the same item
or the same reasoning text, whose "negative" would be a false one — when `mask_duplicates`, and
(c) rows of other data shards when negatives are not gathered (`local_block` = per-shard batch).
Under jit over a Mesh the [B, B] matrix is over the GLOBAL batch, so gathering negatives across
data-parallel shards is what XLA does by default (an all-gather of v); restricting to the local
shard is the masking in (c).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG = -1e9  # finite "minus infinity": keeps softmax NaN-free even for a row with no negatives


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def negative_mask(weights, item_key=None, reasoning_key=None, local_block: int = 0):
  """[B, B] bool: True where j may be a negative (or the positive, on the diagonal) of row i."""
  b = weights.shape[0]
  valid = (weights > 0)
  keep = valid[None, :] & valid[:, None]                                     # [B, B]
  diag = jnp.eye(b, dtype=bool)
  if item_key is not None:
    keep &= ~((item_key[:, None] == item_key[None, :]) & ~diag)
  if reasoning_key is not None:
    keep &= ~((reasoning_key[:, None] == reasoning_key[None, :]) & ~diag)
  if local_block:
    shard = jnp.arange(b) // local_block
    keep &= shard[:, None] == shard[None, :]
  return keep | (diag & valid[:, None])


def info_nce(cls_std, cls_aug, weights, *, temperature: float, symmetric: bool = True,
             stop_grad_aug: bool = False, item_key=None, reasoning_key=None, local_block: int = 0):
  """cls_std, cls_aug [B, D]; weights [B] -> (loss_sum, weight_sum, metrics)."""
  u = l2_normalize(cls_std)
  v = l2_normalize(cls_aug)
  if stop_grad_aug:
    v = jax.lax.stop_gradient(v)  # the reasoning view is a fixed target; only the std view moves
  sim = (u @ v.T) / temperature                                              # [B, B] fp32
  keep = negative_mask(weights, item_key, reasoning_key, local_block)
  w = weights.astype(jnp.float32)

  def one_direction(s, k):
    s = jnp.where(k, s, _NEG)
    nll = -(jnp.diagonal(s) - jax.nn.logsumexp(s, axis=-1))                 # [B]
    hit = (jnp.argmax(s, axis=-1) == jnp.arange(s.shape[0])).astype(jnp.float32)
    return jnp.sum(nll * w), jnp.sum(hit * w)

  loss_sum, hits = one_direction(sim, keep)
  if symmetric:
    loss_t, hits_t = one_direction(sim.T, keep.T)
    loss_sum, hits = (loss_sum + loss_t) / 2, (hits + hits_t) / 2
  denom = jnp.sum(w)
  pos = jnp.sum(jnp.diagonal(sim) * w) * temperature
  return loss_sum, denom, {"infonce_top1_sum": hits, "positive_cos_sum": pos}
