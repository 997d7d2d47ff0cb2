"""AdamW with warm-up + decay, global-norm clipping, and no weight decay on biases/LayerNorms."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int, kind: str):
  warmup_steps = max(0, min(warmup_steps, total_steps - 1))
  decay_steps = max(1, total_steps - warmup_steps)
  if kind == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps)
  elif kind == "linear":
    decay = optax.linear_schedule(peak, 0.0, decay_steps)
  elif kind == "constant":
    decay = optax.constant_schedule(peak)
  else:
    raise ValueError(f"optim.schedule must be cosine|linear|constant, got {kind!r}")
  warm = optax.linear_schedule(0.0, peak, max(1, warmup_steps))
  return optax.join_schedules([warm, decay], [warmup_steps])


def decay_mask(params):
  """Weight decay only on matrices (kernels/embeddings), as BERT's recipe does."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim_cfg, total_steps: int, learning_rate: float | None = None):
  lr = learning_rate if learning_rate is not None else optim_cfg.learning_rate
  schedule = learning_rate_schedule(lr, optim_cfg.warmup_steps, total_steps, optim_cfg.schedule)
  tx = optax.chain(
      optax.clip_by_global_norm(optim_cfg.grad_clip) if optim_cfg.grad_clip else optax.identity(),
      optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2,
                  weight_decay=optim_cfg.weight_decay, mask=decay_mask))
  return tx, schedule
