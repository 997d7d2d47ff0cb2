"""The one training loop every stage uses: a pure step, batches, checkpoints, metrics, progress.

    state, metrics = step_fn(state, batch)      # jitted with explicit shardings (train/fit.py)

What the loop adds around it:
- resume: the latest Orbax checkpoint in `<stage>/checkpoints` restores the state (into the
  caller's shardings) AND the data iterator's state, so a restarted run reaches bit-identical
  parameters to one that never stopped (dropout keys derive from the step number); a fresh start
  records `<stage>/run_config.json` and a resume with other values refuses, naming the keys
  (train/run_config.py; only the step count may grow: "train longer");
- checkpoints every `checkpoint_every` steps and at the end, written by all processes (Orbax);
- a NaN/Inf guard: a non-finite loss stops the stage naming the step, writes the offending batch
  to `nan_batch_step<N>.npz`, and leaves the last good checkpoint as the latest;
- `metrics.jsonl` (one object per logged step) + TensorBoard scalars, written by process 0 only,
  and a progress line (step, loss, steps/s, ETA).
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from rd_jax import errors, storage
from rd_jax.parallel import mesh as mesh_lib
from rd_jax.stage_lock import StageLock  # noqa: F401 - re-exported: loop.StageLock
from rd_jax.train import run_config as run_config_lib
from rd_jax.train.state import abstract_with_shardings


class MetricsWriter:
  """Appends to metrics.jsonl and TensorBoard; on resume drops records past the restored step.

  Object storage cannot append: there metrics.jsonl is rewritten whole at each logged step (one
  small object: a line per logged step), and TensorBoard writes its event file to a local
  temporary folder that is copied to `<stage>/tb/` after each flush.
  """

  def __init__(self, stage_dir: str, start_step: int):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(stage_dir, "metrics.jsonl")
    self.remote = storage.is_remote(stage_dir)
    self.lines = []
    self.tb = None
    if not self.enabled:
      return
    if storage.exists(self.path):  # a killed run may have logged past its last checkpoint
      with storage.open(self.path) as f:
        self.lines = [l for l in f if l.strip() and json.loads(l).get("step", 0) <= start_step]
      storage.write_text_atomic(self.path, "".join(self.lines))
    self.tb_dir = os.path.join(stage_dir, "tb")
    self.tb_local = tempfile.mkdtemp(prefix="rd_jax_tb_") if self.remote else self.tb_dir
    try:
      from tensorboardX import SummaryWriter
      # purge_step: TensorBoard drops the points of steps a resumed run redoes (past start_step)
      self.tb = SummaryWriter(self.tb_local, purge_step=start_step + 1)
    except ImportError:  # pragma: no cover - tensorboardX is a dependency
      logging.warning("tensorboardX missing: no TensorBoard events")

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    line = json.dumps({"step": step, **scalars}) + "\n"
    if self.remote:
      self.lines.append(line)
      storage.write_text_atomic(self.path, "".join(self.lines))
    else:
      with open(self.path, "a") as f:
        f.write(line)
    if self.tb is not None:
      for k, v in scalars.items():
        self.tb.add_scalar(k, v, step)
      self.tb.flush()
      if self.remote:
        storage.upload_tree(self.tb_local, self.tb_dir)

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()
      if self.remote:
        storage.upload_tree(self.tb_local, self.tb_dir)
        shutil.rmtree(self.tb_local, ignore_errors=True)


def checkpoint_manager(stage_dir: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(os.path.join(storage.abspath(stage_dir), "checkpoints"),
                               options=options, item_names=("state", "data_iter"))


def state_bytes(state) -> int:
  """Bytes of the global arrays in `state` (params + optimizer state: what a checkpoint stores)."""
  return int(sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(state) if hasattr(x, "shape") and hasattr(x, "dtype")))


def check_disk_space(ckpt_dir: str, state, *, keep: int, existing: int, saves: int) -> None:
  """Refuses, before the first step, a run whose next checkpoint cannot fit on the local disk
  (a full disk otherwise stops it at that save, after its steps are spent); warns when the
  checkpoints it will hold at once do not fit. Orbax writes a new checkpoint before deleting the
  oldest beyond `keep`, so up to keep + 1 coexist. A bucket (gs://) is not checked.

  existing: checkpoints already in ckpt_dir; saves: checkpoints this run still writes."""
  if saves <= 0 or storage.is_remote(ckpt_dir):
    return
  one = state_bytes(state)
  more = max(0, min(keep + 1, existing + saves) - existing)   # new ones on disk at the peak
  free = shutil.disk_usage(ckpt_dir).free
  gib = lambda n: f"{n / 2**30:.2f} GiB"
  # 0.9: a checkpoint on disk measured 0.93x the state's bytes (SmolLM2 + AdamW, session 37)
  if free < 0.9 * one:
    raise errors.PathError(
        f"not enough disk space for the checkpoints in {ckpt_dir}: one checkpoint of this train "
        f"state (params + optimizer) is ~{gib(one)}, {gib(free)} free; free space or use a "
        "--workdir on a larger disk")
  if free < more * one:
    logging.warning("%s: %d checkpoint(s) of ~%s will be on disk at once (train.checkpoint_every, "
                    "keep %d), %s free: the run may stop on a full disk", ckpt_dir, more, gib(one),
                    keep, gib(free))


def _is_save_step(step: int, num_steps: int, checkpoint_every: int, stop_after_step: int) -> bool:
  """_run checkpoints after this step: every checkpoint_every, the last step, a drill's stop."""
  return step % checkpoint_every == 0 or step == num_steps or step == stop_after_step


def _saves(start: int, num_steps: int, checkpoint_every: int, stop_after_step: int) -> int:
  """Checkpoints _run writes after step `start` (it stops after stop_after_step, if earlier)."""
  last = stop_after_step if 0 < stop_after_step < num_steps else num_steps
  return sum(_is_save_step(step, num_steps, checkpoint_every, stop_after_step)
             for step in range(start + 1, last + 1))


def restore_latest(mngr, state, shardings, batches) -> tuple[Any, int]:
  step = mngr.latest_step()
  if step is None:
    return state, 0
  abstract = abstract_with_shardings(state, shardings)
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), data_iter=ocp.args.JsonRestore()))
  batches.set_state(restored["data_iter"])
  logging.info("resumed from checkpoint step %d", step)
  return restored["state"], step


def run(*, stage_dir: str, state: Any, shardings: Any, step_fn: Callable, batches: Iterator,
        mesh, num_steps: int, log_every: int, checkpoint_every: int, keep: int = 2,
        stop_after_step: int = 0, run_config: tuple[str, dict] | None = None,
        extra_scalars: Callable[[int], dict] | None = None) -> tuple[Any, dict]:
  """Trains to `num_steps`; returns (state, stats). `batches` needs get_state/set_state.

  stop_after_step > 0 stops once that step is checkpointed, as a preemption would (a drill for
  resume; stats["interrupted"] is True and the caller must not treat the stage as done).
  run_config: (stage, run_config.for_stage(cfg, stage)); checked against the folder's record on
  resume, where only the stage's step count (run_config.STEPS_KEY) may differ.
  """
  storage.makedirs(stage_dir)
  with StageLock(stage_dir, reentrant=True):
    return _run(stage_dir=stage_dir, state=state, shardings=shardings, step_fn=step_fn,
                batches=batches, mesh=mesh, num_steps=num_steps, log_every=log_every,
                checkpoint_every=checkpoint_every, keep=keep, stop_after_step=stop_after_step,
                run_config=run_config, extra_scalars=extra_scalars)


def _run(*, stage_dir, state, shardings, step_fn, batches, mesh, num_steps, log_every,
         checkpoint_every, keep, stop_after_step, run_config, extra_scalars):
  mngr = checkpoint_manager(stage_dir, keep)
  if run_config is not None:
    try:
      _check_or_record(stage_dir, *run_config, latest_step=mngr.latest_step(),
                       num_steps=num_steps)
    except run_config_lib.RunConfigMismatch:
      mngr.close()
      raise
  state, start = restore_latest(mngr, state, shardings, batches)
  try:
    check_disk_space(str(mngr.directory), state, keep=keep, existing=len(mngr.all_steps()),
                     saves=_saves(start, num_steps, checkpoint_every, stop_after_step))
  except errors.PathError:
    mngr.close()
    raise
  writer = MetricsWriter(stage_dir, start)
  window_t, window_n, last = time.perf_counter(), 0, {}
  t_begin = time.perf_counter()
  interrupted = False
  try:
    for step in range(start + 1, num_steps + 1):
      host_batch = next(batches)
      if step == start + 1:
        logging.info("step %d: compiling the train step (the first call of each batch shape "
                     "compiles; can take minutes on CPU) ...", step)
      state, metrics = step_fn(state, mesh_lib.put_batch(host_batch, mesh))
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not math.isfinite(metrics["loss"]):
        _stop_on_nan(stage_dir, step, metrics, host_batch, mngr)
      window_n += 1
      if step % log_every == 0 or step == num_steps:
        now = time.perf_counter()
        rate = window_n / max(now - window_t, 1e-9)
        scalars = dict(metrics, steps_per_s=rate)
        if extra_scalars is not None:
          scalars.update(extra_scalars(step))
        writer.write(step, scalars)
        logging.info("step %d/%d  loss %.4f  %.2f steps/s  ETA %s", step, num_steps,
                     metrics["loss"], rate, _eta((num_steps - step) / max(rate, 1e-9)))
        window_t, window_n, last = now, 0, scalars
      if _is_save_step(step, num_steps, checkpoint_every, stop_after_step):
        mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                data_iter=ocp.args.JsonSave(batches.get_state())))
      if step == stop_after_step and step < num_steps:
        interrupted = True
        logging.warning("stopping after step %d (train.stop_after_step)", step)
        break
  finally:
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
  stats = {"steps": num_steps, "resumed_from": start, "last_metrics": last,
           "interrupted": interrupted,
           "train_seconds": time.perf_counter() - t_begin}
  return state, stats


def _check_or_record(stage_dir: str, stage: str, values: dict, latest_step: int | None,
                     num_steps: int) -> None:
  """Resume only a run made with these values (raises naming the keys; the step count may grow,
  never shrink below the checkpoint); record the values this run continues with."""
  steps_key = run_config_lib.STEPS_KEY[stage]
  if latest_step is not None:
    if latest_step > num_steps:
      raise run_config_lib.RunConfigMismatch(
          f"cannot resume {stage_dir}: its checkpoint is at step {latest_step}, past {steps_key} = "
          f"{num_steps}; use a new --workdir for a shorter run")
    recorded = run_config_lib.check(stage_dir, values, may_differ=frozenset({steps_key}))
    if recorded is None:   # checkpoints from before run_config.json existed
      logging.warning("%s has checkpoints but no %s: resuming unchecked and recording this run's "
                      "config", stage_dir, run_config_lib.FILENAME)
    elif recorded.get(steps_key) != values.get(steps_key):
      logging.warning("%s: %s %s -> %s: continuing from step %d; the learning-rate schedule is "
                      "rebuilt for the new total, so this is not the run a fresh %s-step run "
                      "would make", stage_dir, steps_key, recorded.get(steps_key),
                      values.get(steps_key), latest_step, num_steps)
  if jax.process_index() == 0:
    run_config_lib.write(stage_dir, values)


def _stop_on_nan(stage_dir, step, metrics, host_batch, mngr):
  mngr.wait_until_finished()
  path = os.path.join(stage_dir, f"nan_batch_step{step}.npz")
  if jax.process_index() == 0:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in host_batch.items()})
    storage.write_bytes_atomic(path, buffer.getvalue())
  raise FloatingPointError(
      f"non-finite loss {metrics['loss']} at step {step} (metrics {metrics}); the batch is in "
      f"{path}; the last good checkpoint (step {mngr.latest_step()}) is kept — fix the cause "
      "(learning rate, data) and rerun to resume from it")


def _eta(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
