"""Token-level language-model losses for the teacher (CPT, SFT) and sequence log-probs (DPO).

Shift convention (ours): the caller shifts. `logits[:, t]` is the model's prediction after reading
tokens 0..t, and `targets[:, t]` must be the token at position t + 1; `loss_mask[:, t]` says
whether that target counts. `next_token_targets(tokens, mask)` builds the pair from an unshifted
batch (the last position has no next token and is masked out). Keeping the shift out of the loss
means logits, targets and mask always share one length L, and no function here guesses.

    loss_mask = response tokens only        (SFT: the prompt is context, not a target)
              = all non-pad tokens          (CPT: every token is a target)

All log-probs are fp32: a bf16 log-softmax over a ~50k vocabulary keeps only ~2-3 significant
digits of the log-sum-exp, and a sequence log-prob (a sum of ~100 of them) or a DPO margin (a
difference of two such sums) would be mostly rounding error.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def next_token_targets(tokens: jax.Array, mask: jax.Array):
  """tokens [B, L] int, mask [B, L] -> (targets [B, L], target_mask [B, L]).

  targets[:, t] = tokens[:, t + 1] and target_mask[:, t] = mask[:, t + 1]; the last position
  gets target 0 with mask 0. `mask` marks the tokens that should be predicted (response tokens
  for SFT, non-pad tokens for CPT).
  """
  targets = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))
  target_mask = jnp.pad(mask[:, 1:], ((0, 0), (0, 1)))
  return targets, target_mask


def token_log_probs(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """log p(targets[b, t] | prefix) for logits [B, L, V], targets [B, L] -> [B, L] fp32.

  Computed as z[target] - logsumexp(z) on the fp32 upcast (see the module docstring for why),
  without materialising the full [B, L, V] log-softmax a second time.
  """
  z = logits.astype(jnp.float32)                                             # [B, L, V]
  picked = jnp.take_along_axis(z, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return picked - jax.nn.logsumexp(z, axis=-1)                               # [B, L]


def masked_lm_loss(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array):
  """Next-token cross-entropy -> (loss_sum, token_count), both fp32 scalars.

      loss_sum = sum_{b,t} -log p(targets[b,t]) * loss_mask[b,t],  token_count = sum loss_mask

  Targets are already shifted (module docstring). Returning the pair, not the mean, keeps
  gradient accumulation and multi-host averaging exact: divide the global sums once.
  """
  m = loss_mask.astype(jnp.float32)
  nll = -token_log_probs(logits, targets)                                    # [B, L]
  return jnp.sum(nll * m), jnp.sum(m)


def sequence_log_prob(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
  """Sum of the masked (response) token log-probs: [B, L, V], [B, L], [B, L] -> [B] fp32.

  This is log pi(response | prompt), the quantity DPO compares.
  """
  return jnp.sum(token_log_probs(logits, targets) * mask.astype(jnp.float32), axis=-1)


def sequence_mean_log_prob(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
  """Length-normalised variant: sequence_log_prob / number of masked tokens -> [B] fp32.

  Used by SimPO and (our choice) IPO so that long responses are not favoured or penalised by
  length alone. A row with no masked token gives 0 (its count is clamped to 1).
  """
  count = jnp.sum(mask.astype(jnp.float32), axis=-1)
  return sequence_log_prob(logits, targets, mask) / jnp.maximum(count, 1.0)
