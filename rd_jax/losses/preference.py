"""Preference-optimisation losses for the teacher: DPO, IPO, SimPO (config `dpo.loss`).

Inputs are per-response log-probs [B] of the chosen (c) and rejected (r) response under the
policy (pi) and, for DPO/IPO, the frozen reference (ref), precomputed once (`losses.lm`).
Every loss returns (loss_sum, count, metrics): loss_sum = sum_i w_i * loss_i, count = sum_i w_i,
with `weights` w [B] (default 1; 0 for padding rows). Metrics are w-weighted means over the batch.

    DPO    loss_i = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))     sum log-probs
    IPO    loss_i = (h_i - 1/(2 beta))^2,  h_i = (pi_c - ref_c) - (pi_r - ref_r)  mean log-probs
    SimPO  loss_i = -log sigmoid(beta * (pi_c - pi_r) - gamma)                 mean log-probs

Which log-prob to pass is `LENGTH_NORMALISED[name]`: sum over response tokens
(`lm.sequence_log_prob`) or per-token mean (`lm.sequence_mean_log_prob`). IPO with per-token
means is our choice, following common practice (TRL, the IPO authors' suggestion): the squared
loss regresses h to a fixed target, and with sequence sums that target would depend on length.

Everything is cast to fp32 first: two sequence log-probs of ~-300 in bf16 are spaced 2 apart, so
their difference (the margin) would be noise. `jax.nn.log_sigmoid` (= -softplus(-x)) keeps the
loss and its gradient finite for margins of any size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LOSSES = ("dpo", "ipo", "simpo")
# True: pass per-token mean log-probs; False: pass sums over the response tokens.
LENGTH_NORMALISED = {"dpo": False, "ipo": True, "simpo": True}


def _f32(*xs):
  return [jnp.asarray(x, jnp.float32) for x in xs]


def _weights(weights, like):
  return jnp.ones_like(like) if weights is None else jnp.asarray(weights, jnp.float32)


def _mean(x, w, count):
  return jnp.sum(x * w) / jnp.where(count > 0, count, 1.0)


def _metrics(reward_c, reward_r, pi_c, pi_r, w, count, kl=None):
  """Implicit rewards, their margin and accuracy, policy log-probs (w-weighted means)."""
  m = {
      "reward_accuracy": _mean((reward_c > reward_r).astype(jnp.float32), w, count),
      "reward_margin": _mean(reward_c - reward_r, w, count),
      "reward_chosen": _mean(reward_c, w, count),
      "reward_rejected": _mean(reward_r, w, count),
      "logp_chosen": _mean(pi_c, w, count),
      "logp_rejected": _mean(pi_r, w, count),
  }
  if kl is not None:
    m["kl_estimate"] = _mean(kl, w, count)
  return m


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta, weights=None):
  """DPO (Rafailov et al. 2023). All inputs [B] (sequence log-prob sums) -> (sum, count, metrics).

  Implicit reward r = beta * (pi - ref). `kl_estimate` = mean(pi_c - ref_c): a one-sample
  Monte-Carlo estimate of KL(pi || ref) on the chosen responses. It is unbiased only while the
  chosen responses are samples of pi (they were drawn from the teacher before training), so read
  it as a drift monitor, not an exact KL; it can go negative.
  """
  pi_c, pi_r, ref_c, ref_r = _f32(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
  w = _weights(weights, pi_c)
  reward_c, reward_r = beta * (pi_c - ref_c), beta * (pi_r - ref_r)        # [B]
  losses = -jax.nn.log_sigmoid(reward_c - reward_r)                          # [B]
  count = jnp.sum(w)
  return jnp.sum(losses * w), count, _metrics(reward_c, reward_r, pi_c, pi_r, w, count,
                                              kl=pi_c - ref_c)


def ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta, weights=None):
  """IPO (Azar et al. 2023). Inputs [B] per-token mean log-probs -> (sum, count, metrics).

  loss = (h - 1/(2 beta))^2: h is pulled to the target margin 1/(2 beta), not pushed to infinity,
  which is IPO's guard against over-fitting deterministic preferences. Metrics as in `dpo_loss`
  (rewards beta * (pi - ref), kl_estimate per token).
  """
  pi_c, pi_r, ref_c, ref_r = _f32(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
  w = _weights(weights, pi_c)
  h = (pi_c - ref_c) - (pi_r - ref_r)                                        # [B]
  losses = (h - 1.0 / (2.0 * beta)) ** 2
  count = jnp.sum(w)
  return jnp.sum(losses * w), count, _metrics(beta * (pi_c - ref_c), beta * (pi_r - ref_r),
                                              pi_c, pi_r, w, count, kl=pi_c - ref_c)


def simpo_loss(policy_chosen, policy_rejected, *, beta, gamma, weights=None):
  """SimPO (Meng et al. 2024), no reference. Inputs [B] mean log-probs -> (sum, count, metrics).

  Implicit reward r = beta * mean log-prob; gamma is the target reward margin. No kl_estimate
  (there is no reference model).
  """
  pi_c, pi_r = _f32(policy_chosen, policy_rejected)
  w = _weights(weights, pi_c)
  reward_c, reward_r = beta * pi_c, beta * pi_r
  losses = -jax.nn.log_sigmoid(reward_c - reward_r - gamma)
  count = jnp.sum(w)
  return jnp.sum(losses * w), count, _metrics(reward_c, reward_r, pi_c, pi_r, w, count)


def preference_loss(name, policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *,
                    beta, gamma=0.0, weights=None):
  """Dispatch on `dpo.loss` in LOSSES; `gamma` (`dpo.simpo_gamma`) is used by SimPO only."""
  if name not in LOSSES:
    raise ValueError(f"dpo.loss must be one of {LOSSES}, got {name!r}")
  if name == "simpo":
    return simpo_loss(policy_chosen, policy_rejected, beta=beta, gamma=gamma, weights=weights)
  if ref_chosen is None or ref_rejected is None:
    raise ValueError(f"dpo.loss={name!r} needs reference log-probs (ref_chosen, ref_rejected)")
  fn = dpo_loss if name == "dpo" else ipo_loss
  return fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta, weights=weights)
