"""Losses of the multi-dimensional reward model (config `reward`) and the reward it yields.

The reward model has K scalar heads, one per dimension of `reward.dimensions`
(correctness, consistency, grounding, form). Its training signal comes from the programmatic
scorers in `rd_jax.reward_scorers`, used in one of two ways:

- `bradley_terry_loss` (pairs): two responses a, b to the same prompt, y = 1 if a scores higher
  on a dimension, 0 if lower, 0.5 on a tie. Only the order of the scores is learnt, so the heads
  are free of the scorers' scale and their heuristics' absolute calibration; this is the default
  and the classic reward-model objective.
- `reward_regression_loss` (single responses): MSE to the scorers' values in [0, 1]. Use it when
  the heads must reproduce the scorers' scale (e.g. to threshold a reward or to compare rewards
  across prompts), or when a prompt has a single sampled response.

`combine_rewards` turns the K heads into the scalar reward used to build preference pairs:
a weighted sum with `reward.weights`. With Bradley-Terry heads each dimension has an arbitrary
offset, which cancels in the within-prompt comparisons the DPO stage makes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def bradley_terry_loss(scores_a, scores_b, prefer_a, mask):
  """Per-dimension Bradley-Terry NLL: [B, K] x4 -> (loss_sum, count, per_dim_metrics).

      d = s_a - s_b,   loss = -[y log sigmoid(d) + (1 - y) log sigmoid(-d)],  y in {1, 0, 0.5}

  `mask` [B, K] (1 = counts) marks valid pairs per dimension; whether ties (y = 0.5, which pull
  d towards 0) are trained on or masked out is the caller's choice through this mask.
  per_dim_metrics, each [K]: `loss` (masked mean), `count` (masked pairs), `accuracy` (share of
  masked non-tie pairs ordered correctly, sign(d) = sign(y - 0.5); 0 where there are none) and
  `decided` (that share's denominator). Scores are cast to fp32 (differences of large scores).
  """
  d = jnp.asarray(scores_a, jnp.float32) - jnp.asarray(scores_b, jnp.float32)  # [B, K]
  y = jnp.asarray(prefer_a, jnp.float32)
  m = jnp.asarray(mask, jnp.float32)
  losses = -(y * jax.nn.log_sigmoid(d) + (1.0 - y) * jax.nn.log_sigmoid(-d))  # [B, K]
  count_k = jnp.sum(m, axis=0)                                               # [K]
  decided = m * (y != 0.5)
  correct = ((d > 0) == (y > 0.5)).astype(jnp.float32) * decided
  decided_k = jnp.sum(decided, axis=0)
  safe = lambda n: jnp.where(n > 0, n, 1.0)
  metrics = {
      "loss": jnp.sum(losses * m, axis=0) / safe(count_k),
      "count": count_k,
      "accuracy": jnp.sum(correct, axis=0) / safe(decided_k),
      "decided": decided_k,
  }
  return jnp.sum(losses * m), jnp.sum(m), metrics


def reward_regression_loss(pred, target, mask):
  """Masked squared error: [B, K] x3 -> (loss_sum, count); loss_sum = sum m * (pred - target)^2."""
  m = jnp.asarray(mask, jnp.float32)
  err = jnp.asarray(pred, jnp.float32) - jnp.asarray(target, jnp.float32)
  return jnp.sum(m * err * err), jnp.sum(m)


def validate_reward_weights(weights, num_dimensions: int) -> np.ndarray:
  """Check `reward.weights` (concrete values from the config) -> float32 array [K].

  Length must equal the number of dimensions; each weight finite and >= 0; at least one > 0.
  Weights are not renormalised: the scale of the combined reward is the user's choice.
  """
  try:
    w = np.asarray([float(x) for x in weights], np.float32)
  except (TypeError, ValueError) as e:
    raise ValueError(f"reward.weights must be a list of numbers, got {weights!r}") from e
  if w.shape != (num_dimensions,):
    raise ValueError(f"reward.weights has {w.size} values but there are {num_dimensions} "
                     f"reward dimensions (reward.dimensions); give one weight per dimension")
  if not all(math.isfinite(x) for x in w.tolist()):
    raise ValueError(f"reward.weights must be finite, got {list(weights)}")
  if (w < 0).any():
    raise ValueError(f"reward.weights must be non-negative, got {list(weights)}")
  if not (w > 0).any():
    raise ValueError(f"reward.weights must have at least one positive weight, got {list(weights)}")
  return w


def combine_rewards(scores, weights):
  """Weighted sum of the K dimension scores: scores [..., K], weights [K] -> [...] fp32.

  `weights` must be concrete (the config's list), validated by `validate_reward_weights`.
  """
  w = validate_reward_weights(weights, scores.shape[-1])
  return jnp.asarray(scores, jnp.float32) @ jnp.asarray(w)
