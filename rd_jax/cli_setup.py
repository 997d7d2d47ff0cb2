"""Process set-up shared by the command-line programs (rd_jax.main, rd_jax.experiments.*)."""

from __future__ import annotations

import os

from absl import logging


def quiet_library_logs() -> None:
  """Orbax logs every save at INFO through absl; keep ours, drop theirs below WARNING."""
  import logging as py_logging

  class _DropOrbaxInfo(py_logging.Filter):
    def filter(self, record):
      return record.levelno >= py_logging.WARNING or "orbax" not in record.pathname

  for handler in py_logging.getLogger().handlers + [logging.get_absl_handler()]:
    handler.addFilter(_DropOrbaxInfo())
  _drop_backend_probe_noise()


def _drop_backend_probe_noise() -> None:
  """JAX logs "Unable to initialize backend 'tpu'" (and 'cuda', ...) at INFO on every machine
  without one while it probes; it is not an error, so drop it (real failures still raise)."""
  import logging as py_logging

  class _DropProbe(py_logging.Filter):
    def filter(self, record):
      return not str(record.msg).startswith("Unable to initialize backend")

  py_logging.getLogger("jax._src.xla_bridge").addFilter(_DropProbe())


def compilation_cache() -> None:
  """Persistent XLA cache: a rerun, a resumed run or the next stage skips recompiling.

  $JAX_COMPILATION_CACHE_DIR wins; else ~/.cache/rd_jax/xla. Only compiles over 1 s are kept.
  """
  import jax
  path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "rd_jax", "xla")
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


# Linux's default per-process limit on memory mappings. XLA:CPU maps every compiled kernel, so
# a long process that compiles many shapes (the teacher chain's generation: one program per
# batch of suffix chunks, per stage) can reach it; LLVM then fails with "Cannot allocate memory"
# and the process dies with free RAM left (measured here: `--stage=all` of configs/demo.py,
# 80 min into the run, shard 12 of 13 of annotate; it resumed from the finished shards once
# the limit was raised).
RECOMMENDED_MAX_MAP_COUNT = 262144


def max_map_count_warning(path: str = "/proc/sys/vm/max_map_count") -> str | None:
  """A warning naming the fix when the mapping limit is below RECOMMENDED_MAX_MAP_COUNT; None
  when it is enough, unreadable (not Linux) or $JAX_PLATFORMS leaves CPU out. It must not touch
  the JAX backend: multi-process runs call jax.distributed.initialize after it."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms and "cpu" not in platforms.split(","):
    return None
  try:
    with open(path) as f:
      limit = int(f.read().strip())
  except (OSError, ValueError):
    return None
  if limit >= RECOMMENDED_MAX_MAP_COUNT:
    return None
  return (f"vm.max_map_count is {limit} ({path}): a long CPU run that compiles many shapes "
          "(the teacher stages, --stage=all) can die with 'LLVM compilation error: Cannot "
          "allocate memory' with RAM free. Raise it first: sudo sysctl -w "
          f"vm.max_map_count={RECOMMENDED_MAX_MAP_COUNT} (a killed run resumes where it stopped).")
