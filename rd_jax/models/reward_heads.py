"""K scalar reward heads read from a decoder's final hidden states (config `reward`).

The decoder backbone (`models/decoder.py`) supplies `hidden` [B, L, D] (after its final norm);
this module only pools and projects, so it does not import the decoder:

    h_b      = hidden[b, last_b],   last_b = the last position with mask[b, t] = 1     # [B, D]
    score_bk = h_b . w_k + c_k                                                         # [B, K]

One Dense with K outputs is K independent scalar heads (column k only sees dimension k's loss).
The last real token is found as the largest masked position, so left- and right-padded batches
both work. The projection runs in fp32: it is tiny, and Bradley-Terry trains on differences of
scores, which bf16 would round.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


def last_token_index(mask):
  """mask [B, L] -> [B] int32: the last position with mask 1 (0 for an all-pad row)."""
  positions = jnp.arange(mask.shape[-1], dtype=jnp.int32)
  return jnp.maximum(jnp.max(jnp.where(mask > 0, positions, -1), axis=-1), 0)


class RewardHeads(nn.Module):
  """hidden [B, L, D], mask [B, L] -> scores [B, K] fp32, K = num_dimensions."""
  num_dimensions: int

  @nn.compact
  def __call__(self, hidden, mask):
    idx = last_token_index(mask)                                               # [B]
    pooled = jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]     # [B, D]
    return nn.Dense(self.num_dimensions, dtype=jnp.float32, param_dtype=jnp.float32,
                    bias_init=nn.initializers.zeros, name="heads")(pooled.astype(jnp.float32))
