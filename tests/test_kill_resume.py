"""A CRSD or SFT run killed with SIGKILL mid-training and restarted ends with the params of a run
that never stopped, and its metrics.jsonl has each step once."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from rd_jax import checkpoint
from rd_jax.config import default_config
from rd_jax.data import readers

from conftest import REPO

COMMON = ["--config=configs/tiny.py", "--config.train.checkpoint_every=1",
          "--config.train.log_every=1"]


def stage_args(stage, tmp_path):
  if stage == "crsd":
    return ["--stage=crsd", "--config.train.num_steps=8"]
  # SFT on a user chains file (a random tiny teacher bootstraps nothing), no generation
  cfg = default_config()
  pairs, _ = readers.load_pairs("", cfg)
  chains = tmp_path / "chains.jsonl"
  with open(chains, "w") as f:
    for p in readers.train_valid_test(pairs, cfg)["train"][:24]:
      f.write(json.dumps({"query_id": p.query_id, "product_id": p.product_id,
                          "reasoning": f"The item is a {p.item_text.split()[0]}.",
                          "label": cfg.labels[p.label_id]}) + "\n")
  return ["--stage=sft", "--config.sft.num_steps=8", f"--config.sft.chains_path={chains}",
          "--config.sft.eval_pairs=0", "--config.teacher.max_response_len=24"]


def run_stage(workdir, args, **popen):
  return subprocess.Popen([sys.executable, "-m", "rd_jax.main", f"--workdir={workdir}", *COMMON,
                           *args], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.parametrize("stage", ["crsd", "sft"])
def test_sigkill_then_restart_equals_uninterrupted(tmp_path, stage):
  args = stage_args(stage, tmp_path)
  straight = tmp_path / "straight"
  p = run_stage(straight, args)
  assert p.wait(timeout=900) == 0, p.stderr.read()[-3000:]

  killed = tmp_path / "killed"
  p = run_stage(killed, args)
  ckpts = killed / stage / "checkpoints"
  deadline = time.time() + 600
  while time.time() < deadline:
    steps = [d for d in (os.listdir(ckpts) if ckpts.exists() else []) if d.isdigit()]
    if steps and max(map(int, steps)) >= 3:
      break
    time.sleep(0.05)
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert not (killed / stage / "final").exists()    # killed before the end
  p = run_stage(killed, args)
  assert p.wait(timeout=900) == 0, p.stderr.read()[-3000:]

  a, _ = checkpoint.load_final(str(straight / stage))
  b, _ = checkpoint.load_final(str(killed / stage))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  steps = [json.loads(l)["step"] for l in open(killed / stage / "metrics.jsonl")]
  assert steps == list(range(1, 9))
  assert json.load(open(killed / stage / "summary.json"))["resumed_from"] >= 3
