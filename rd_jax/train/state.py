"""The training state: a plain dict pytree {"params", "opt_state", "step"} (big_vision style).

Dropout randomness is `fold_in(PRNGKey(seed), step)` inside the step, so it needs no state and a
resumed run draws exactly the masks an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from rd_jax.parallel import sharding


def create_state(params: Any, tx) -> dict:
  return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


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
