"""Test set-up: CPU only, 1 host device by default (multi-device tests run in a subprocess)."""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

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
