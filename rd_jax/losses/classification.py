"""Weighted softmax cross-entropy for classification heads.

    CE = sum_i w_i * (-log softmax(z_i)[y_i]) / sum_i w_i

`w_i` is 0 for the padding rows of a partial batch, so they neither count nor dilute the mean.
Logits are cast to fp32 first: under bf16 compute the log-sum-exp of a few logits is still
cheap, and fp32 keeps the loss (and its golden test) exact to ~1e-7.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def weighted_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array):
  """logits [B, C], labels [B] int, weights [B] -> (loss_sum, weight_sum)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)            # [B, C]
  nll = -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]  # [B]
  w = weights.astype(jnp.float32)
  return jnp.sum(nll * w), jnp.sum(w)


def weighted_accuracy(logits: jax.Array, labels: jax.Array, weights: jax.Array):
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return jnp.sum(correct * weights), jnp.sum(weights)


def kl_divergence(target_logits: jax.Array, pred_logits: jax.Array, weights: jax.Array):
  """KL(p_target || p_pred) per row, weighted-summed -> (sum, weight_sum).

  The target distribution is taken as fixed (stop-gradient): in CRSD's optional KL term the
  reasoning view teaches the standard view, not the other way round.
  """
  t = jax.lax.stop_gradient(jax.nn.log_softmax(target_logits.astype(jnp.float32), -1))
  p = jax.nn.log_softmax(pred_logits.astype(jnp.float32), -1)
  kl = jnp.sum(jnp.exp(t) * (t - p), axis=-1)                                # [B]
  w = weights.astype(jnp.float32)
  return jnp.sum(kl * w), jnp.sum(w)
