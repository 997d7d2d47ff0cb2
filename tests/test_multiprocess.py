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


def test_two_processes_match_one(tmp_path):
  # A fresh persistent XLA cache: with one shared across earlier runs (other code versions), the
  # two processes once loaded different executables for one step and gloo aborted on a
  # collective-size mismatch (2026-12-02; README "Reliability").
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla_cache"))
  single = tmp_path / "single"
  r = subprocess.run(crsd_command(single), cwd=REPO, env=env, capture_output=True, text=True,
                     timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]

  multi = tmp_path / "multi"
  port = free_port()
  procs = [subprocess.Popen(
      crsd_command(multi, "--config.mesh.multihost=explicit",
                   f"--config.mesh.coordinator=127.0.0.1:{port}",
                   "--config.mesh.num_processes=2", f"--config.mesh.process_id={i}"),
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]

  one, two = losses(single), losses(multi)
  assert len(one) == len(two) == 4
  np.testing.assert_allclose(two, one, rtol=1e-4)
  summary = json.load(open(multi / "crsd" / "summary.json"))
  assert summary["devices"] == 2
  assert os.path.exists(multi / "crsd" / "final" / "COMPLETE")
