"""The training state: a plain dict pytree {"params", "opt_state", "step"} (big_vision style).

Dropout randomness is `fold_in(PRNGKey(seed), step)` inside the step, so it needs no state and a
resumed run draws exactly the masks an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from rd_jax.parallel import sharding


def create_state(params: Any, tx) -> dict:
  return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def gradient_step(loss_fn: Callable, tx, schedule, *, with_step: bool = False) -> Callable:
  """The pure train step of every training stage: `(state, batch) -> (state, metrics)`
  (`train/fit.py` builds and jits it).

  loss_fn(params, batch) -> (loss, metrics), or loss_fn(params, batch, step) with `with_step`
  (CRSD derives its dropout keys from the step). Adds grad_norm and the learning rate to metrics.
  Stages differ only in their loss_fn (and in what they close over: model, config).
  """
  def train_step(state, batch):
    args = (state["params"], batch) + ((state["step"],) if with_step else ())
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(*args)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads),
                   learning_rate=schedule(state["step"]))
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

  return train_step


def state_shardings(abstract_state: Any, rules, mesh: Mesh) -> Any:
  return sharding.tree_shardings(abstract_state, rules, mesh)


def init_state(params: Any, tx, rules, mesh: Mesh):
  """Places params (host arrays or device arrays) in their shardings and builds the state there.

  Returns (state, state_shardings). The optimizer state is created under jit with the same
  rules, so Adam moments are born sharded like their parameters.
  """
  abstract = jax.eval_shape(lambda p: create_state(p, tx), params)
  shardings = state_shardings(abstract, rules, mesh)
  params = jax.device_put(params, shardings["params"])
  state = jax.jit(lambda p: create_state(p, tx), out_shardings=shardings)(params)
  return state, shardings


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)
