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
