"""CRSD as 2 JAX processes on this machine (CPU collectives over gloo) == the 1-process run."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def crsd_command(workdir, *extra):
  return [sys.executable, "-m", "rd_jax.main", "--stage=crsd", "--config=configs/tiny.py",
          f"--workdir={workdir}", "--config.train.num_steps=4", "--config.train.log_every=1",
          *extra]


def losses(workdir):
  with open(os.path.join(workdir, "crsd", "metrics.jsonl")) as f:
    return [json.loads(l)["loss"] for l in f]


def run_two_processes(workdir, env):
  port = free_port()
  procs = [subprocess.Popen(
      crsd_command(workdir, "--config.mesh.multihost=explicit",
                   f"--config.mesh.coordinator=127.0.0.1:{port}",
                   "--config.mesh.num_processes=2", f"--config.mesh.process_id={i}"),
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return outs


def test_two_processes_match_one(tmp_path):
  """And its rerun. With the persistent XLA cache on, rank 0 writes the first 2-process run's
  programs and the rerun reads them back; on XLA:CPU those break gloo's collectives ("Received
  data size doesn't match expected size", session 38), so parallel/mesh.py turns the cache off for
  multi-process CPU runs. The rerun aborted before that."""
  cache = tmp_path / "xla_cache"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", JAX_COMPILATION_CACHE_DIR=str(cache))
  single = tmp_path / "single"
  r = subprocess.run(crsd_command(single), cwd=REPO, env=env, capture_output=True, text=True,
                     timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  cached = set(os.listdir(cache))
  assert any(name.startswith("jit_train_step") for name in cached)  # the cache is in use

  multi = tmp_path / "multi"
  outs = run_two_processes(multi, env)
  assert all("the persistent XLA cache is off" in err for _, err in outs)
  one, two = losses(single), losses(multi)
  assert len(one) == len(two) == 4
  np.testing.assert_allclose(two, one, rtol=1e-4)
  summary = json.load(open(multi / "crsd" / "summary.json"))
  assert summary["devices"] == 2
  assert os.path.exists(multi / "crsd" / "final" / "COMPLETE")

  # the rerun of the same job: with the cache on, rank 0 wrote the first run's programs and both
  # processes read them back here (gloo aborted at step 1); with it off both compile again
  rerun = tmp_path / "rerun"
  run_two_processes(rerun, env)
  np.testing.assert_allclose(losses(rerun), one, rtol=1e-4)
