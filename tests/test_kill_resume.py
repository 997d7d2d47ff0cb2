"""A CRSD run killed with SIGKILL mid-training and restarted ends with the params of a run that
never stopped, and its metrics.jsonl has each step once."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from rd_jax import checkpoint

from conftest import REPO

ARGS = ["--stage=crsd", "--config=configs/tiny.py", "--config.train.num_steps=8",
        "--config.train.checkpoint_every=1", "--config.train.log_every=1"]


def run_stage(workdir, **popen):
  return subprocess.Popen([sys.executable, "-m", "rd_jax.main", f"--workdir={workdir}", *ARGS],
                          cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)


def test_sigkill_then_restart_equals_uninterrupted(tmp_path):
  straight = tmp_path / "straight"
  p = run_stage(straight)
  assert p.wait(timeout=900) == 0, p.stderr.read()[-3000:]

  killed = tmp_path / "killed"
  p = run_stage(killed)
  ckpts = killed / "crsd" / "checkpoints"
  deadline = time.time() + 600
  while time.time() < deadline:
    steps = [d for d in (os.listdir(ckpts) if ckpts.exists() else []) if d.isdigit()]
    if steps and max(map(int, steps)) >= 3:
      break
    time.sleep(0.05)
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert not (killed / "crsd" / "final").exists()    # killed before the end
  p = run_stage(killed)
  assert p.wait(timeout=900) == 0, p.stderr.read()[-3000:]

  a, _ = checkpoint.load_final(str(straight / "crsd"))
  b, _ = checkpoint.load_final(str(killed / "crsd"))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  steps = [json.loads(l)["step"] for l in open(killed / "crsd" / "metrics.jsonl")]
  assert steps == list(range(1, 9))
  assert json.load(open(killed / "crsd" / "summary.json"))["resumed_from"] >= 3
