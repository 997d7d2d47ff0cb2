"""Test set-up: CPU only, 1 host device by default (multi-device tests run in a subprocess).

One persistent XLA compilation cache for the whole session, in a fresh temporary folder that the
session removes: the tiny configs compile the same programs in many tests and in the subprocesses
the kill/resume, multi-process and GCS tests start (they inherit the environment). CI starts cold,
so a test never reads a program compiled by another version of the code. Set
JAX_COMPILATION_CACHE_DIR yourself to keep or place it.
"""

import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="rd_jax_tests_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_config():
  """configs/tiny.py as a fresh (unlocked) ConfigDict per call."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("tiny_config", REPO / "configs" / "tiny.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config


@pytest.fixture(scope="session")
def gcs():
  """A local GCS emulator (tests/gcs_emulator.py) for the session; this process's gcsfs, epath and
  tensorstore (Orbax) point at it, and `gcs.env` points subprocesses at it too."""
  import socket
  import subprocess
  import sys
  import types
  from gcs_emulator import environment
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"gcs_emulator_{port}.log"), "w")
  server = subprocess.Popen([sys.executable, str(REPO / "tests" / "gcs_emulator.py"),
                             f"--port={port}", "--bucket=rd-test"],
                            stdout=subprocess.PIPE, stderr=log, text=True)
  assert server.stdout.readline().strip() == "ready", "the GCS emulator did not start"
  env = environment(port)
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  import gcsfs
  yield types.SimpleNamespace(bucket="rd-test", env=env, fs=gcsfs.GCSFileSystem(),
                              log=log.name)
  server.kill()
  server.wait()
  log.close()
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


def pytest_sessionfinish(session, exitstatus):
  if _OWN_CACHE is not None:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
