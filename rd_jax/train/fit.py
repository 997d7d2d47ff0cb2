"""`fit()`: the training skeleton every training stage runs, written once.

A stage brings what is its own — the initial params, a loss `loss_fn(params, batch) -> (loss,
metrics)`, the batches, the sharding rules — and `fit` does the rest:

    optimiser  <stage's optimiser section>   (cpt.optim, sft.optim, reward.optim, dpo.optim;
                                              student.optim for crsd and baseline)
    state      params + AdamW state, born in the mesh's shardings     (train/state.py)
    step       state.gradient_step(loss_fn), jitted with explicit shardings, state donated
    loop       loop.run to the stage's step count, cadence from `train.*`, run_config.json
               (train/loop.py, train/run_config.py)

A stage then writes its hand-off with `finish` (final/ + summary.json), or, when the loop stopped
early (`train.stop_after_step`, a resume drill), returns `interrupted(...)` and writes nothing.
`compile_step` is the first half alone (optimiser, state, jitted step): what the benchmarks and
the sharding tests time and check, so they measure exactly the stages' step.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Iterator

import jax

from rd_jax import checkpoint, metrics as metrics_lib
from rd_jax.config import TRAINING
from rd_jax.parallel import mesh as mesh_lib
from rd_jax.train import loop, optim, run_config, state as state_lib

def make_mesh(cfg):
  """The mesh of `cfg.mesh` (initialising multi-host JAX first when the config asks for it)."""
  mesh_lib.maybe_initialize_distributed(cfg.mesh)
  return mesh_lib.make_mesh(cfg.mesh)


def steps_of(cfg, stage: str) -> int:
  """The stage's number of updates (`config.TRAINING`: the span of its optimiser's schedule)."""
  section, key = TRAINING[stage][1].split(".")
  return int(cfg[section][key])


def compile_step(loss_fn: Callable, params: Any, optim_cfg, num_steps: int, *, rules, mesh,
                 optim_key: str = "optim", with_step: bool = False):
  """(state, state shardings, jitted step) for `loss_fn` trained with one optimiser section.

  The step is `state.gradient_step(loss_fn)` (`with_step`: the loss also takes the step number),
  jitted with the state's and the batch's shardings and the state donated.
  """
  tx, schedule = optim.make_optimizer(optim_cfg, num_steps, optim_key)
  state, shardings = state_lib.init_state(params, tx, rules, mesh)
  step = jax.jit(state_lib.gradient_step(loss_fn, tx, schedule, with_step=with_step),
                 in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
                 out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=(0,))
  return state, shardings, step


@dataclasses.dataclass
class Fitted:
  state: dict              # {"params", "opt_state", "step"}
  stats: dict              # loop.run's: steps, resumed_from, last_metrics, interrupted, ...

  @functools.cached_property
  def params(self):
    """What the stage hands on: the weight average when its optimiser keeps one (`ema_decay`),
    else the last update's parameters. Computed once (stages read it more than once)."""
    return optim.averaged_params(self.state["opt_state"], self.state["params"])

  @property
  def step(self) -> int:
    return int(self.state["step"])

  @property
  def interrupted(self) -> bool:
    return bool(self.stats["interrupted"])


def fit(cfg, stage: str, workdir: str, *, params: Any, loss_fn: Callable, batches: Iterator,
        mesh, rules, with_step: bool = False) -> Fitted:
  """Trains `params` on `batches` for the stage's step count; resumes `<workdir>/<stage>`."""
  section = TRAINING[stage][0]
  num_steps = steps_of(cfg, stage)
  state, shardings, step = compile_step(loss_fn, params, cfg[section].optim, num_steps,
                                        rules=rules, mesh=mesh, optim_key=f"{section}.optim",
                                        with_step=with_step)
  t = cfg.train
  state, stats = loop.run(stage_dir=os.path.join(workdir, stage), state=state,
                          shardings=shardings, step_fn=step, batches=batches, mesh=mesh,
                          num_steps=num_steps, log_every=t.log_every,
                          checkpoint_every=t.checkpoint_every, keep=t.keep_checkpoints,
                          stop_after_step=t.stop_after_step,
                          run_config=(stage, run_config.for_stage(cfg, stage)))
  return Fitted(state, stats)


def interrupted(cfg, stage: str) -> dict:
  """The summary a stage returns (and does not write) when the loop stopped early."""
  return {"stage": stage, "interrupted_at": cfg.train.stop_after_step}


def finish(stage_dir: str, params: Any, meta: dict, summary: dict) -> dict:
  """The hand-off: `final/` (params + meta.json + COMPLETE), then summary.json (process 0)."""
  checkpoint.save_final(os.path.join(stage_dir, "final"), params, meta)
  if jax.process_index() == 0:
    metrics_lib.write_json_atomic(summary, os.path.join(stage_dir, "summary.json"))
  return summary
