"""Process set-up shared by the command-line programs (rd_jax.main, rd_jax.experiments.*)."""

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
