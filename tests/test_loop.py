"""The training skeleton (train/fit.py) and its loop (train/loop.py), on a toy regression and on
the tiny student: schedule in the logs, interruption and resume, NaN guard, stage lock."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from rd_jax.stages import crsd
from rd_jax.teacher import rows as rows_lib
from rd_jax.train import fit


def _toy(tiny_config, steps=6, stop_after=0, ema_decay=0.0):
  """fit() on y = x @ w_true with the cpt stage's name, section and folder (nothing else of it)."""
  cfg = tiny_config()
  cfg.cpt.num_steps, cfg.cpt.optim.warmup_steps = steps, 2
  cfg.cpt.optim.ema_decay = ema_decay
  cfg.cpt.optim.learning_rate, cfg.cpt.optim.weight_decay = 0.1, 0.0
  cfg.train.log_every, cfg.train.checkpoint_every = 1, 2
  cfg.train.stop_after_step = stop_after
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 3)).astype(np.float32)
  rows = {"x": x, "y": x @ np.asarray([1.0, -2.0, 0.5], np.float32)}

  def loss_fn(params, batch):
    loss = jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)
    return loss, {"loss": loss}

  return cfg, dict(params={"w": jnp.zeros(3)}, loss_fn=loss_fn,
                   batches=rows_lib.row_batches(rows, batch_size=8, seed=0),
                   mesh=fit.make_mesh(cfg), rules=((r".*", None),))


def test_fit_trains_logs_the_schedule_and_records_its_section(tmp_path, tiny_config):
  cfg, parts = _toy(tiny_config)
  trained = fit.fit(cfg, "cpt", str(tmp_path), **parts)
  assert not trained.interrupted and trained.step == 6
  logged = [json.loads(l) for l in open(tmp_path / "cpt" / "metrics.jsonl")]
  lrs = [r["learning_rate"] for r in logged]
  np.testing.assert_allclose(lrs[:3], [0.1 / 3, 0.2 / 3, 0.1], rtol=1e-5)   # no zero first step
  assert logged[-1]["loss"] < logged[0]["loss"]
  recorded = json.load(open(tmp_path / "cpt" / "run_config.json"))
  assert recorded["cpt.optim.learning_rate"] == 0.1 and "student.optim.learning_rate" not in recorded


@pytest.mark.parametrize("ema_decay", [0.0, 0.5])
def test_fit_interrupted_then_resumed_equals_straight(tmp_path, tiny_config, ema_decay):
  """Also with a weight average: it lives in the checkpointed optimiser state."""
  cfg, parts = _toy(tiny_config, stop_after=2, ema_decay=ema_decay)
  stopped = fit.fit(cfg, "cpt", str(tmp_path / "a"), **parts)
  assert stopped.interrupted and fit.interrupted(cfg, "cpt") == {"stage": "cpt",
                                                                 "interrupted_at": 2}
  cfg, parts = _toy(tiny_config, ema_decay=ema_decay)
  resumed = fit.fit(cfg, "cpt", str(tmp_path / "a"), **parts)
  cfg, parts = _toy(tiny_config, ema_decay=ema_decay)
  straight = fit.fit(cfg, "cpt", str(tmp_path / "b"), **parts)
  assert resumed.stats["resumed_from"] == 2
  np.testing.assert_array_equal(np.asarray(resumed.params["w"]), np.asarray(straight.params["w"]))
  last = np.asarray(straight.state["params"]["w"])
  if ema_decay:      # the hand-off is the average, not the last update's parameters
    assert not np.allclose(np.asarray(straight.params["w"]), last)
  else:
    np.testing.assert_array_equal(np.asarray(straight.params["w"]), last)


def test_warmup_as_long_as_the_run_stops_before_training(tmp_path, tiny_config):
  cfg, parts = _toy(tiny_config)
  cfg.cpt.optim.warmup_steps = cfg.cpt.num_steps
  with pytest.raises(ValueError, match=r"cpt\.optim\.warmup_steps"):
    fit.fit(cfg, "cpt", str(tmp_path), **parts)
  assert not os.path.exists(tmp_path / "cpt" / "checkpoints")


def test_nan_stops_naming_step_and_keeps_last_good_checkpoint(tmp_path, tiny_config):
  """lr=1e30 blows the params up after step 1, so step 2's loss is non-finite."""
  cfg = tiny_config()
  cfg.train.num_steps = 4
  cfg.student.optim.learning_rate = 1e30
  cfg.student.optim.warmup_steps = 0
  cfg.student.optim.grad_clip = 0.0
  cfg.train.checkpoint_every = 1
  with pytest.raises(FloatingPointError, match="at step 2") as err:
    crsd.run(cfg, str(tmp_path))
  assert "last good checkpoint (step 1)" in str(err.value)
  stage = tmp_path / "crsd"
  assert (stage / "nan_batch_step2.npz").exists()
  assert sorted(os.listdir(stage / "checkpoints")) == ["1"]
  assert not (stage / "final").exists() and not (stage / "summary.json").exists()


def test_stage_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
  import json as js
  import subprocess as sp
  import socket
  from rd_jax.train.loop import StageLock
  dead = sp.Popen(["true"])
  dead.wait()
  (tmp_path / "LOCK").write_text(js.dumps({"host": socket.gethostname(), "pid": dead.pid}))
  with StageLock(str(tmp_path)):        # stale lock of a finished process: taken over
    assert js.loads((tmp_path / "LOCK").read_text())["pid"] == os.getpid()
    with pytest.raises(RuntimeError, match="held by"):
      StageLock(str(tmp_path)).__enter__()
  assert not (tmp_path / "LOCK").exists()


def test_a_disk_too_small_for_one_checkpoint_stops_before_the_first_step(tmp_path, tiny_config,
                                                                         monkeypatch):
  """A full disk would stop the run at its first save, after its steps: refused up front, naming
  the folder (exit code 4), nothing trained or written into the checkpoints folder."""
  import shutil
  from rd_jax import errors
  from rd_jax.train import loop
  real = shutil.disk_usage
  monkeypatch.setattr(loop.shutil, "disk_usage",
                      lambda p: real(p)._replace(free=0))
  cfg, parts = _toy(tiny_config)
  with pytest.raises(errors.PathError, match=r"not enough disk space .*cpt/checkpoints") as err:
    fit.fit(cfg, "cpt", str(tmp_path), **parts)
  assert err.value.exit_code == 4
  assert os.listdir(tmp_path / "cpt" / "checkpoints") == []
  assert not (tmp_path / "cpt" / "metrics.jsonl").exists()


def test_disk_space_arithmetic(tmp_path, monkeypatch):
  """Up to keep + 1 checkpoints coexist (Orbax deletes the oldest after the new one is written):
  warned when they do not fit, refused when one does not; the saves counted as the loop saves."""
  import shutil
  from rd_jax import errors
  from rd_jax.train import loop
  state = {"w": np.zeros((1000,), np.float32), "mu": np.zeros((1000,), np.float32)}  # 8,000 B
  assert loop.state_bytes(state) == 8000
  warned = []
  monkeypatch.setattr(loop.logging, "warning", lambda *a: warned.append(a))
  real = shutil.disk_usage

  def check(free, **kw):
    monkeypatch.setattr(loop.shutil, "disk_usage", lambda p: real(p)._replace(free=free))
    loop.check_disk_space(str(tmp_path), state, **kw)

  check(24_000, keep=2, existing=0, saves=5)           # 3 coexist: fits
  check(16_000, keep=2, existing=0, saves=2)           # 2 saves only: fits
  assert not warned
  check(16_000, keep=2, existing=0, saves=5)           # 3 needed: warned, not refused
  assert len(warned) == 1 and warned[0][2] == 3
  check(9_000, keep=2, existing=2, saves=5)            # 2 on disk already: one more fits
  assert len(warned) == 1
  with pytest.raises(errors.PathError, match="one checkpoint of this train state"):
    check(7_000, keep=2, existing=0, saves=1)
  check(0, keep=2, existing=0, saves=0)                 # nothing left to save: not checked
  assert loop._saves(0, 6, 2, 0) == 3 and loop._saves(4, 6, 2, 0) == 1
  assert loop._saves(0, 6, 4, 0) == 2 and loop._saves(0, 6, 2, 3) == 2   # 2, then the stop at 3
