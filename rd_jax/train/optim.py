"""AdamW with warm-up + decay, global-norm clipping, and no weight decay on biases/LayerNorms.

Every training stage has its own optimiser section with the same keys (`config.OPTIM_KEYS`):
`cpt.optim`, `sft.optim`, `reward.optim`, `dpo.optim` and `student.optim` (crsd and baseline).

The schedule, for `warmup_steps` = W over a run of T updates (update s = 0 .. T-1):

    lr(s) = peak * (s + 1) / (W + 1)        s < W   (the first update is never 0)
          = decay(s - W) from peak          s >= W  (cosine | linear to 0 | constant over T - W)

W >= T is an error (a run that never reaches its peak), never a silent clamp.
"""

from __future__ import annotations

import jax
import optax

SCHEDULES = ("cosine", "linear", "constant")


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int, kind: str,
                           key: str = "optim"):
  """optax schedule of update index -> learning rate (module docstring); `key` names the config
  section in errors."""
  warmup_steps, total_steps = int(warmup_steps), int(total_steps)
  if warmup_steps < 0 or warmup_steps >= total_steps:
    raise ValueError(f"config key {key}.warmup_steps = {warmup_steps} must be in [0, "
                     f"{total_steps}): the run has {total_steps} steps and needs at least one "
                     "after warm-up")
  decay_steps = total_steps - warmup_steps
  if kind == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps)
  elif kind == "linear":
    decay = optax.linear_schedule(peak, 0.0, decay_steps)
  elif kind == "constant":
    decay = optax.constant_schedule(peak)
  else:
    raise ValueError(f"config key {key}.schedule must be {'|'.join(SCHEDULES)}, got {kind!r}")
  if warmup_steps == 0:
    return decay
  warm = optax.linear_schedule(peak / (warmup_steps + 1), peak, warmup_steps)
  return optax.join_schedules([warm, decay], [warmup_steps])


def decay_mask(params):
  """Weight decay only on matrices (kernels/embeddings), as BERT's recipe does."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim_cfg, total_steps: int, key: str = "optim"):
  """(optax transform, schedule) from one optimiser section (`key`: its dotted name, for errors)."""
  schedule = learning_rate_schedule(optim_cfg.learning_rate, optim_cfg.warmup_steps, total_steps,
                                    optim_cfg.schedule, key)
  tx = optax.chain(
      optax.clip_by_global_norm(optim_cfg.grad_clip) if optim_cfg.grad_clip else optax.identity(),
      optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2,
                  weight_decay=optim_cfg.weight_decay, mask=decay_mask))
  return tx, schedule
