"""AdamW with warm-up + decay, global-norm clipping, and no weight decay on biases/LayerNorms.

Every training stage has its own optimiser section with the same keys (`config.OPTIM_KEYS`):
`cpt.optim`, `sft.optim`, `reward.optim`, `dpo.optim` and `student.optim` (crsd and baseline).

The schedule, for `warmup_steps` = W over a run of T updates (update s = 0 .. T-1):

    lr(s) = peak * (s + 1) / (W + 1)        s < W   (the first update is never 0)
          = decay(s - W) from peak          s >= W  (cosine | linear to 0 | constant over T - W)

W >= T is an error (a run that never reaches its peak), never a silent clamp.

Layer-wise learning-rate decay (`layer_decay` = d, 1.0 = off; Clark et al. 2020, ELECTRA; the
usual small-data fine-tuning recipe): with L transformer layers, a parameter at depth k gets
lr(s) * d^(L + 1 - k), where the embeddings are depth 0, layer i (`layer_i` / `layers_i` in its
path) depth i + 1, and everything above the last layer (pooler, classifier, heads, final norm)
depth L + 1 (the full rate). The lower layers -- general language knowledge a few thousand pairs
cannot improve -- then move little.

A learning-rate multiplier for the output head (`head_lr_multiplier` = m, 1.0 = off): the
update of every parameter under a top-level scope in OUTPUT_HEADS (the students' `classifier`,
the reward model's `heads`) is multiplied by m, weight decay included, as a per-parameter learning
rate would be. Why: a freshly initialised head under Adam moves at most ~lr per update, so after
T updates |w| <~ lr * T (6e-5 x 192 ~ 0.012 in the demo), a bound the imported encoder does not
feel but a head starting from N(0, 0.02) or zero does; a larger rate for the new head is the usual
fine-tuning remedy (detectron2's / timm's head lr factors).

Polyak / exponential averaging of the weights (`ema_decay` = a, 0 = off; Polyak & Juditsky 1992,
and the usual "EMA of the weights" of fine-tuning recipes): after every update t the optimiser
state also holds

    m_t = a m_{t-1} + (1 - a) theta_t,    w_t = a w_{t-1} + (1 - a) = 1 - a^t,    m_0 = w_0 = 0

and the stage hands on m_t / w_t (the debiased average, `averaged_params`) instead of theta_t. It
lives in the optimiser state, so it is checkpointed, sharded like its parameters (the paths hold
the parameter paths) and resumed exactly, with no change to the train step.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rd_jax import errors

SCHEDULES = ("cosine", "linear", "constant")


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int, kind: str,
                           key: str = "optim"):
  """optax schedule of update index -> learning rate (module docstring); `key` names the config
  section in errors."""
  warmup_steps, total_steps = int(warmup_steps), int(total_steps)
  if warmup_steps < 0 or warmup_steps >= total_steps:
    raise errors.ConfigError(f"config key {key}.warmup_steps = {warmup_steps} must be in [0, "
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
    raise errors.ConfigError(f"config key {key}.schedule must be {'|'.join(SCHEDULES)}, got {kind!r}")
  if warmup_steps == 0:
    return decay
  warm = optax.linear_schedule(peak / (warmup_steps + 1), peak, warmup_steps)
  return optax.join_schedules([warm, decay], [warmup_steps])


def decay_mask(params):
  """Weight decay only on matrices (kernels/embeddings), as BERT's recipe does."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


_LAYER = re.compile(r"^layers?_(\d+)$")
_EMBEDDING_SCOPES = ("embeddings", "embed_tokens")


def layer_depths(params) -> tuple[dict, int]:
  """(pytree of int depths like params, L): 0 for embeddings, i + 1 inside layer i, L + 1 above."""
  def index(path):
    names = [getattr(k, "key", str(k)) for k in path]
    for n in names:
      m = _LAYER.match(str(n))
      if m:
        return int(m.group(1)) + 1
    return 0 if any(n in _EMBEDDING_SCOPES for n in names) else None
  indexed = jax.tree_util.tree_map_with_path(lambda path, _: index(path), params)
  num_layers = max([d for d in jax.tree.leaves(indexed) if d is not None] + [0])
  depths = jax.tree.map(lambda d: num_layers + 1 if d is None else d, indexed,
                        is_leaf=lambda d: d is None)
  return depths, num_layers


def scale_by_layer_decay(decay: float) -> optax.GradientTransformation:
  """Multiplies each update by decay^(L + 1 - depth) (module docstring); decay 1 = identity."""
  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    depths, num_layers = layer_depths(updates)
    scaled = jax.tree.map(lambda u, d: u * (decay ** (num_layers + 1 - d)), updates, depths)
    return scaled, state
  return optax.GradientTransformation(init, update)


# Top-level parameter scopes of the output heads (head_lr_multiplier): the students' classifier
# (models/bert.py) and the reward model's heads (teacher/reward_model.py).
OUTPUT_HEADS = ("classifier", "heads")


def _top_scope(path) -> str:
  return str(getattr(path[0], "key", path[0])) if path else ""


def scale_output_heads(multiplier: float) -> optax.GradientTransformation:
  """Multiplies the updates under OUTPUT_HEADS by `multiplier` (module docstring)."""
  def init(params):
    if not any(_top_scope(path) in OUTPUT_HEADS
               for path, _ in jax.tree_util.tree_leaves_with_path(params)):
      raise errors.ConfigError(f"head_lr_multiplier = {multiplier}, but the model has no output head "
                               f"(no top-level {' or '.join(OUTPUT_HEADS)} parameters): set it to 1")
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    scaled = jax.tree_util.tree_map_with_path(
        lambda path, u: u * multiplier if _top_scope(path) in OUTPUT_HEADS else u, updates)
    return scaled, state
  return optax.GradientTransformation(init, update)


def _per_parameter_scale(layer_decay: float, head_lr_multiplier: float):
  """One stateless slot of the chain for both per-parameter factors, so the optimiser state keeps
  the structure its checkpoints were written with before either key existed."""
  scales = [t for t, on in ((scale_by_layer_decay(layer_decay), layer_decay != 1.0),
                            (scale_output_heads(head_lr_multiplier), head_lr_multiplier != 1.0))
            if on]
  if not scales:
    return optax.identity()
  if len(scales) == 1:
    return scales[0]

  def init(params):
    for t in scales:
      t.init(params)     # validation only: both states are EmptyState
    return optax.EmptyState()

  def update(updates, state, params=None):
    for t in scales:
      updates, _ = t.update(updates, optax.EmptyState(), params)
    return updates, state
  return optax.GradientTransformation(init, update)


class ParamsEmaState(NamedTuple):
  weight: jax.Array   # [] float32: 1 - a^t, the average's total weight (its debiasing divisor)
  ema: Any            # like params, float32: the running sum m_t (module docstring)


def track_params_ema(decay: float) -> optax.GradientTransformation:
  """Leaves the updates as they are and folds the updated parameters into an exponential average.

  Last in the chain, so `params + updates` are the parameters the step produces.
  """
  def init(params):
    # float32 whatever the parameters' dtype: in bf16, (1 - a) * theta below ~1/256 of m is lost
    return ParamsEmaState(weight=jnp.zeros((), jnp.float32),
                          ema=jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("track_params_ema needs the parameters: "
                       "call tx.update(grads, state, params)")
    new_params = optax.apply_updates(params, updates)
    ema = jax.tree.map(lambda m, p: decay * m + (1.0 - decay) * p.astype(jnp.float32), state.ema,
                       new_params)
    return updates, ParamsEmaState(weight=decay * state.weight + (1.0 - decay), ema=ema)
  return optax.GradientTransformation(init, update)


def averaged_params(opt_state, params):
  """The debiased weight average m_t / w_t if `opt_state` tracks one (and has been updated at
  least once), else `params` unchanged."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, ParamsEmaState))
           if isinstance(s, ParamsEmaState)]
  if not found:
    return params
  state = found[0]
  weight = float(state.weight)
  if weight <= 0.0:
    return params
  return jax.tree.map(lambda m, p: (m / weight).astype(p.dtype), state.ema, params)


def make_optimizer(optim_cfg, total_steps: int, key: str = "optim"):
  """(optax transform, schedule) from one optimiser section (`key`: its dotted name, for errors)."""
  schedule = learning_rate_schedule(optim_cfg.learning_rate, optim_cfg.warmup_steps, total_steps,
                                    optim_cfg.schedule, key)
  layer_decay = float(optim_cfg.get("layer_decay", 1.0))
  if not 0.0 < layer_decay <= 1.0:
    raise errors.ConfigError(f"config key {key}.layer_decay = {layer_decay} must be in (0, 1] "
                             "(1 = every layer at the full learning rate)")
  ema_decay = float(optim_cfg.get("ema_decay", 0.0))
  if not 0.0 <= ema_decay < 1.0:
    raise errors.ConfigError(f"config key {key}.ema_decay = {ema_decay} must be in [0, 1) "
                             "(0 = no weight average)")
  head_lr_multiplier = float(optim_cfg.get("head_lr_multiplier", 1.0))
  if not head_lr_multiplier > 0.0:
    raise errors.ConfigError(f"config key {key}.head_lr_multiplier = {head_lr_multiplier} must be > 0 "
                             "(1 = the head at the encoder's rate)")
  parts = [
      optax.clip_by_global_norm(optim_cfg.grad_clip) if optim_cfg.grad_clip else optax.identity(),
      optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2,
                  weight_decay=optim_cfg.weight_decay, mask=decay_mask),
      # after AdamW (whose update already holds -lr * ...): the per-depth factor scales the step,
      # weight decay included, exactly as a per-layer learning rate would
      _per_parameter_scale(layer_decay, head_lr_multiplier)]
  if ema_decay:
    # last: it needs the final updates to know the parameters this step produces. Only when on,
    # so the optimiser state of a run without it keeps the structure its checkpoints were
    # written with before the key existed (a resume restores into that structure).
    parts.append(track_params_ema(ema_decay))
  return optax.chain(*parts), schedule
