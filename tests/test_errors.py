"""User errors end with one message and a documented exit code, no traceback (rd_jax/errors.py)."""

import os
import subprocess
import sys

import pytest

from rd_jax import config_check, errors
from rd_jax.config import default_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, cwd=REPO):
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "rd_jax.main", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def _exit_of(exc):
  with pytest.raises(SystemExit) as out:
    errors.run_cli(lambda: (_ for _ in ()).throw(exc), "prog")
  return out.value.code


def test_run_cli_maps_kinds_to_exit_codes(capsys):
  assert _exit_of(config_check.ConfigError("config key x = 1; must be > 1")) == 2
  assert _exit_of(errors.DataError("f.jsonl:3: bad")) == 3
  assert _exit_of(FileNotFoundError(2, "No such file or directory", "/nope")) == 4
  assert _exit_of(errors.StageLockHeld("LOCK is held")) == 5
  assert _exit_of(errors.PathError("'runs/a/crsd' was trained with labels ['1']")) == 4
  err = capsys.readouterr().err
  assert "prog: error: f.jsonl:3: bad" in err and "path /nope does not exist" in err
  assert "prog: error: 'runs/a/crsd' was trained with labels ['1']\n" in err  # quotes kept
  assert "Traceback" not in err
  with pytest.raises(ZeroDivisionError):  # an internal error keeps its traceback
    errors.run_cli(lambda: 1 / 0, "prog")


def test_debug_flag_shows_the_traceback(monkeypatch):
  monkeypatch.setattr(sys, "argv", ["prog", "--debug"])
  with pytest.raises(errors.DataError):
    errors.run_cli(lambda: (_ for _ in ()).throw(errors.DataError("x")), "prog")


@pytest.mark.parametrize("value,expected", [
    ((1, 2, 3, 4), ("1", "2", "3", "4")), (("a,b,c",), ("a", "b", "c")),
    (("good", "bad"), ("good", "bad"))])
def test_labels_as_a_plain_list(value, expected):
  cfg = default_config()
  cfg.labels = value
  config_check.validate(cfg)
  assert cfg.labels == expected


def test_labels_from_a_file(tmp_path):
  (tmp_path / "labels.txt").write_text("1\n2\n\n3\n4\n")
  cfg = default_config()
  cfg.labels = (str(tmp_path / "labels.txt"),)
  config_check.validate(cfg)
  assert cfg.labels == ("1", "2", "3", "4")


@pytest.mark.parametrize("key,value", [
    ("data.max_item_chars", -1), ("student.dropout", 1.5), ("student.dropout", -0.1),
    ("data.max_query_chars", 0), ("student.num_layers", 0), ("data.split", (0.0, 0.5, 0.5)),
    ("data.split", (0.8, 0.0, 0.0)), ("student.optim.b2", 1.0)])
def test_meaningless_values_are_refused_naming_the_key(key, value):
  cfg = default_config()
  *path, name = key.split(".")
  node = cfg
  for part in path:
    node = node[part]
  node[name] = value
  with pytest.raises(config_check.ConfigError, match=rf"config key {key} ="):
    config_check.validate(cfg)


def test_cli_user_errors_have_no_traceback(tmp_path):
  (tmp_path / "afile").write_text("x")
  bad = tmp_path / "latin1.jsonl"
  bad.write_bytes(b'{"query": "caf\xe9", "product_title": "x", "label": "Exact"}\n')
  common = ["--stage=crsd", "--config=configs/tiny.py"]
  cases = [
      ([*common, f"--workdir={tmp_path}/w", "--config.crsd.tau=1"], 2, "unknown config key 'crsd.tau'"),
      ([*common, f"--workdir={tmp_path}/afile"], 4, "is a file"),
      ([*common, f"--workdir={tmp_path}/w", f"--config.data.path={bad}"], 3,
       "latin1.jsonl:1: not UTF-8: byte 0xe9 at byte offset 14"),
      (["--stage=crsd", "--config=configs/tinny.py", f"--workdir={tmp_path}/w"], 2,
       "--config could not be loaded: "),
  ]
  for args, code, text in cases:
    r = _main(*args)
    assert (r.returncode, "Traceback" in r.stderr) == (code, False), r.stderr[-2000:]
    assert text in r.stderr
  assert "configs/tinny.py [Errno 2] No such file" in r.stderr   # the last case names the file
  assert not os.path.exists(tmp_path / "w" / "crsd" / "config.json")  # refused: no record


def test_help_exits_0_and_names_the_common_overrides():
  r = _main("--help")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "--config.data.path=" in r.stdout and "--config.labels=1,2,3,4" in r.stdout
  assert "--config.student.cross_query_negative_label=1" in r.stdout
  assert "Exit codes" in r.stdout


def test_a_stage_is_locked_as_a_whole_annotate_included(tmp_path):
  import json
  import socket
  from configs import tiny
  from rd_jax import stages
  lock = tmp_path / "annotate" / "LOCK"
  lock.parent.mkdir()
  lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid()}))  # alive
  with pytest.raises(errors.StageLockHeld, match="held by"):
    stages.run("annotate", tiny.get_config(), str(tmp_path))
  assert lock.exists() and not (tmp_path / "annotate" / "shards").exists()


def test_convert_refuses_a_non_empty_output_without_overwrite(tmp_path):
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep.txt").write_text("mine")
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
  r = subprocess.run([sys.executable, "-m", "rd_jax.convert", f"--checkpoint={tmp_path}/none",
                      f"--output={tmp_path}/out"], cwd=REPO, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 4 and "pass --overwrite" in r.stderr and "Traceback" not in r.stderr
  assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_stage_refusals_are_user_errors_not_internal_ones():
  """Stages and libraries refuse what the user can fix (a config value, too little data, a workdir
  made with other settings) with errors.UserError subclasses: one message and the kind's exit
  code, no traceback. Before session 38 these were plain ValueErrors: exit 1, "a bug"."""
  import numpy as np
  from rd_jax.student import negatives, similarity
  from rd_jax.teacher import rows
  from rd_jax.train import optim
  cases = [
      (lambda: optim.learning_rate_schedule(1e-4, 10, 5, "cosine", key="student.optim"), "config"),
      (lambda: rows.row_batches({"x": np.zeros((1, 4))}, batch_size=2, seed=0), "data"),
      (lambda: negatives.draw([], 1, "Unrelated", ["a", "b"], 0), "config"),
      (lambda: similarity.similarity_targets(None, None, [], None, 8, normalisation="rows"), "config"),
  ]
  for call, kind in cases:
    with pytest.raises(errors.UserError) as raised:
      call()
    assert errors.classify(raised.value) == kind, raised.value
