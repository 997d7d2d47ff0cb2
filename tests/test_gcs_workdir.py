"""`--workdir=gs://...` end to end on a local GCS emulator (tests/gcs_emulator.py, `gcs` fixture):
the stage lease, every stage of `--stage=all`, two processes sharing the workdir, kill-and-resume.
Every file must land in the bucket and none in the local working directory."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

from rd_jax import checkpoint, errors, storage
from rd_jax.stage_lock import StageLock

from conftest import REPO

TINY = [f"--config={REPO / 'configs' / 'tiny.py'}", "--config.train.log_every=1"]


def objects(gcs, prefix: str) -> set[str]:
  """Object names under gs://<bucket>/<prefix>/, relative to it."""
  root = f"{gcs.bucket}/{prefix}/"
  return {name[len(root):] for name in gcs.fs.find(root)}


def read_json(url: str):
  return json.loads(storage.read_text(url))


def rd_main(workdir: str, *args, env: dict, cwd, log) -> subprocess.Popen:
  """`python -m rd_jax.main` in `cwd`; its stderr goes to file `log` (a pipe left unread could
  fill and stall it)."""
  with open(log, "w") as err:
    return subprocess.Popen([sys.executable, "-m", "rd_jax.main", f"--workdir={workdir}", *TINY,
                             *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)


def finished(p: subprocess.Popen, log) -> None:
  assert p.wait(timeout=900) == 0, open(log).read()[-3000:]


def child_env(gcs, tmp_path) -> dict:
  # rd_jax from this checkout, whatever the cwd; a fresh XLA cache (see test_multiprocess.py)
  return dict(os.environ, **gcs.env, JAX_PLATFORMS="cpu", XLA_FLAGS="",
              PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
              JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla_cache"))


def test_stage_lease_on_gcs(gcs):
  stage = f"gs://{gcs.bucket}/lease/crsd"
  lock_path = f"{stage}/LOCK"
  with StageLock(stage):
    holder = read_json(lock_path)
    assert holder["pid"] == os.getpid() and holder["expires"] > time.time()
    with StageLock(stage, reentrant=True):       # stages.run inside rd_jax.main: the same holder
      pass
    assert storage.exists(lock_path)
    with pytest.raises(errors.StageLockHeld, match="held by") as held:
      StageLock(stage).__enter__()               # a second run of the stage
    assert errors.classify(held.value) == "conflict"
  assert not storage.exists(lock_path)           # released

  # a live lease of another host is refused; an expired one (its run was killed) is taken over
  storage.write_text_atomic(lock_path, json.dumps({"host": "other", "pid": 1,
                                                   "expires": time.time() + 60}))
  with pytest.raises(errors.StageLockHeld, match="other"):
    StageLock(stage).__enter__()
  storage.write_text_atomic(lock_path, json.dumps({"host": "other", "pid": 1,
                                                   "expires": time.time() - 1}))
  with StageLock(stage):
    assert read_json(lock_path)["pid"] == os.getpid()
  # a lease of this host whose pid is gone is taken over at once, as on local disk
  dead = subprocess.Popen(["true"])
  dead.wait()
  storage.write_text_atomic(lock_path, json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                                   "expires": time.time() + 60}))
  with StageLock(stage):
    assert read_json(lock_path)["pid"] == os.getpid()


def test_lease_is_one_compare_and_swap(gcs):
  """Of two runs that both saw no lease (or the same stale one), exactly one gets it."""
  from rd_jax.stage_lock import _Lease
  path = f"gs://{gcs.bucket}/cas/LOCK"
  a, b = _Lease(path), _Lease(path)
  assert a._swap({"host": "a", "pid": 1}, "0")
  assert not b._swap({"host": "b", "pid": 2}, "0")          # created meanwhile: 412
  seen = a.generation
  assert b._swap({"host": "b", "pid": 2}, seen)             # b takes over what it saw
  assert not a._swap({"host": "a", "pid": 1}, seen)         # a's renewal now fails: it lost it
  assert read_json(path)["host"] == "b"


def test_every_stage_on_gcs(gcs, tiny_config, monkeypatch, tmp_path):
  """`--stage=all` (cpt ... export, scripted teacher: tests/test_stage_all.py) into the bucket."""
  from test_stage_all import scripted_pipeline
  from rd_jax.stages import all as all_stage
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  scratch = tmp_path / "tmp"       # the process's temporary folder: local copies for the checks
  scratch.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))
  workdir = f"gs://{gcs.bucket}/all"
  summary = all_stage.run(scripted_pipeline(tiny_config(), monkeypatch), workdir)
  assert list(summary["seconds_per_stage"]) == list(all_stage.ORDER)
  names = objects(gcs, "all")
  for stage in all_stage.ORDER:
    assert f"{stage}/summary.json" in names, stage
    assert f"{stage}/LOCK" not in names, stage           # every lease released
  for stage in ("cpt", "sft", "reward", "dpo", "crsd", "baseline"):
    assert {f"{stage}/final/COMPLETE", f"{stage}/final/meta.json", f"{stage}/metrics.jsonl",
            f"{stage}/run_config.json"} <= names, stage
    assert any(n.startswith(f"{stage}/checkpoints/") for n in names), stage
    assert any(n.startswith(f"{stage}/tb/events.out.tfevents") for n in names), stage
  assert {"sft/chains.jsonl", "reward/samples.jsonl", "dpo/pairs.jsonl", "dpo/prep.json",
          "annotate/annotations.jsonl", "annotate/shards/manifest.json",
          "annotate/shards/shard-00000.done", "crsd/data_report.json",
          "crsd/valid_predictions.jsonl", "eval/metrics.json", "eval/baseline_metrics.json",
          "eval/predictions.jsonl", "eval/confusion.png", "export/hf/model.safetensors",
          "export/hf/config.json", "export/verify_pairs.jsonl", "all_summary.json"} <= names
  assert not any(n.endswith(".tmp") or "final.tmp" in n for n in names)
  assert list(cwd.iterdir()) == []                      # nothing written locally
  # nor left in the temporary folder (torch keeps its own cache there: torchinductor_<user>)
  assert [p.name for p in scratch.iterdir() if p.name.startswith("rd_jax")] == []
  steps = [json.loads(l)["step"] for l in storage.read_text(f"{workdir}/crsd/metrics.jsonl")
           .splitlines()]
  assert steps == [2]                                   # tiny: log_every 2
  crsd = read_json(f"{workdir}/crsd/summary.json")
  assert crsd["data"]["train_reasoning_file"] == f"{workdir}/annotate/annotations.jsonl"
  assert read_json(f"{workdir}/eval/metrics.json")["checkpoint"] == f"{workdir}/crsd/final"
  params, meta = checkpoint.load_final(f"{workdir}/crsd")
  assert meta["stage"] == "crsd" and jax.tree.leaves(params)
  # --stage=calibrate on the bucket: a local labelled sample, the calibrated student in the bucket
  from rd_jax.stages import calibrate
  from test_stage_crsd import _test_fold_file
  cfg = tiny_config()
  cfg.calibrate.path = str(tmp_path / "sample.jsonl")
  _test_fold_file(cfg, tmp_path / "sample.jsonl")
  calibrate.run(cfg, workdir)
  names = objects(gcs, "all")
  assert {"calibrate/final/COMPLETE", "calibrate/final/meta.json", "calibrate/metrics.json",
          "calibrate/summary.json"} <= names
  assert read_json(f"{workdir}/calibrate/metrics.json")["checkpoint"] == f"{workdir}/crsd/final"
  assert checkpoint.read_meta(f"{workdir}/calibrate")["calibrated_on"]["from"] == f"{workdir}/crsd/final"
  assert list(cwd.iterdir()) == []
  assert [p.name for p in scratch.iterdir() if p.name.startswith("rd_jax")] == []

  again = all_stage.run(scripted_pipeline(tiny_config(), monkeypatch), workdir)
  assert set(again["seconds_per_stage"].values()) == {"skipped (complete)"}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow   # 114 s / 83 s of CI; its local twin (test_multiprocess.py /
# test_kill_resume.py) and test_every_stage_on_gcs run by default
def test_two_processes_share_a_gcs_workdir(gcs, tmp_path):
  """crsd, baseline, eval and export of `--stage=all` as 2 JAX processes writing one gs://
  workdir. The export is process 0's alone: its restore must not wait for process 1, which has
  already finished (a collective Orbax restore hung here; checkpoint.load_final collective=)."""
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  workdir = f"gs://{gcs.bucket}/two"
  port = free_port()
  logs = [tmp_path / f"process{i}.log" for i in range(2)]
  stages = "--config.all.stages=('crsd','baseline','eval','export')"
  procs = [rd_main(workdir, "--stage=all", stages,
                   "--config.train.num_steps=2", "--config.mesh.multihost=explicit",
                   f"--config.mesh.coordinator=127.0.0.1:{port}", "--config.mesh.num_processes=2",
                   f"--config.mesh.process_id={i}", env=child_env(gcs, tmp_path), cwd=cwd,
                   log=logs[i]) for i in range(2)]
  for p, log in zip(procs, logs):
    finished(p, log)
  names = objects(gcs, "two")
  for stage in ("crsd", "baseline", "eval", "export"):
    assert f"{stage}/summary.json" in names and f"{stage}/LOCK" not in names, stage
  assert {"all_config.json", "all_summary.json", "crsd/final/COMPLETE",
          "eval/metrics.json", "export/hf/model.safetensors"} <= names
  assert read_json(f"{workdir}/crsd/summary.json")["devices"] == 2
  steps = [json.loads(l)["step"] for l in storage.read_text(f"{workdir}/crsd/metrics.jsonl")
           .splitlines()]
  assert steps == [1, 2]                                # process 0 alone logs
  assert list(cwd.iterdir()) == []


@pytest.mark.slow   # 114 s / 83 s of CI; its local twin (test_multiprocess.py /
# test_kill_resume.py) and test_every_stage_on_gcs run by default
def test_sigkill_then_restart_on_gcs_equals_uninterrupted(gcs, tmp_path):
  """CRSD killed mid-training on a gs:// workdir resumes from the bucket's checkpoint and its
  lease, and ends with the params of an uninterrupted local run."""
  env, cwd = child_env(gcs, tmp_path), tmp_path / "cwd"
  cwd.mkdir()
  args = ["--stage=crsd", "--config.train.num_steps=8", "--config.train.checkpoint_every=1"]
  straight, log = tmp_path / "straight", tmp_path / "run.log"
  finished(rd_main(str(straight), *args, env=env, cwd=cwd, log=log), log)

  workdir = f"gs://{gcs.bucket}/killed"
  p = rd_main(workdir, *args, env=env, cwd=cwd, log=log)
  deadline = time.time() + 600
  while time.time() < deadline and p.poll() is None:
    # a step is committed once its own marker is there (its items' markers come first)
    done = [int(parts[2]) for parts in (n.split("/") for n in objects(gcs, "killed"))
            if parts[:2] == ["crsd", "checkpoints"] and parts[3:] == ["commit_success.txt"]]
    if done and max(done) >= 3:
      break
    time.sleep(0.2)
  p.send_signal(signal.SIGKILL)
  p.wait()
  names = objects(gcs, "killed")
  assert "crsd/final/COMPLETE" not in names and "crsd/LOCK" in names   # killed before the end
  finished(rd_main(workdir, *args, env=env, cwd=cwd, log=log), log)

  a, _ = checkpoint.load_final(str(straight / "crsd"))
  b, _ = checkpoint.load_final(f"{workdir}/crsd")
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  steps = [json.loads(l)["step"] for l in storage.read_text(f"{workdir}/crsd/metrics.jsonl")
           .splitlines()]
  assert steps == list(range(1, 9))
  assert read_json(f"{workdir}/crsd/summary.json")["resumed_from"] >= 3
  assert "crsd/LOCK" not in objects(gcs, "killed")
  assert list(cwd.iterdir()) == []
