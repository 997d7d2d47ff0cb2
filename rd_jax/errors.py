"""User errors: one short message and a documented exit code, never a traceback.

A user error is a mistake the user can fix — a bad data file, config key or value, path,
checkpoint, or a run that conflicts with one already in the workdir. The command-line programs
(`rd_jax.main`, `rd_jax.convert`) run through `run_cli`, which prints such an error as one
paragraph on stderr — what is wrong, where (file:line, config key, path) and what to do — and
exits with its code. Internal errors (bugs) keep their traceback and exit 1. `--debug` (or
RD_JAX_DEBUG=1) shows the traceback of user errors too.

Exit codes:
  0  success
  1  internal error (a bug: please report it with the traceback)
  2  config or command-line mistake (unknown key, bad value, missing flag)
  3  data: a malformed, empty or unusable input file, or splits that cannot train / evaluate
  4  path or checkpoint: a file or folder that is missing, of the wrong kind, or unreadable
  5  conflict with the workdir: another run holds the stage, or it was trained with other values
"""

from __future__ import annotations

import os
import sys
from typing import Callable

EXIT_CODES = {"internal": 1, "config": 2, "data": 3, "path": 4, "conflict": 5}


class UserError(ValueError):
  """A mistake the user can fix; `kind` picks the exit code (EXIT_CODES)."""
  kind = "config"

  @property
  def exit_code(self) -> int:
    return EXIT_CODES[self.kind]


class ConfigError(UserError):
  kind = "config"


class DataError(UserError):
  kind = "data"


class PathError(UserError):
  kind = "path"


class ConflictError(UserError):
  kind = "conflict"


class StageLockHeld(RuntimeError):
  """Another live run holds `<stage>/LOCK` (rd_jax/stage_lock.py)."""
  kind = "conflict"


# Errors raised by code we do not own (or standard library calls on user-given paths) that are
# the user's to fix: (class name, kind). Matched by name so this module imports nothing heavy.
_FOREIGN = {"CheckpointError": "path", "RunConfigMismatch": "conflict", "BadRowError": "data",
            "FileNotFoundError": "path", "FileExistsError": "path",
            "NotADirectoryError": "path", "IsADirectoryError": "path",
            "PermissionError": "path", "StageLockHeld": "conflict"}


def classify(exc: BaseException) -> str | None:
  """The user-error kind of `exc`, or None for an internal error."""
  if isinstance(exc, UserError):
    return exc.kind
  for cls in type(exc).__mro__:
    if cls.__name__ in _FOREIGN:
      return _FOREIGN[cls.__name__]
  if isinstance(exc, (KeyError, AttributeError, OSError)) and _is_config_override_error(exc):
    return "config"   # an unknown --config.<key>, or a --config file that cannot be loaded
  return None


def _is_config_override_error(exc: BaseException) -> bool:
  """ml_collections' config_flags raises KeyError/AttributeError for an unknown override key and
  OSError for a --config file it cannot load (missing, or raising when run)."""
  tb = exc.__traceback__
  while tb is not None:
    if "config_flags" in tb.tb_frame.f_code.co_filename:
      return True
    tb = tb.tb_next
  return False


def message(exc: BaseException, kind: str) -> str:
  """The one paragraph shown for a user error."""
  text = str(exc).strip()
  if isinstance(exc, KeyError):  # str(KeyError("x")) is "'x'"; other messages may open with a repr
    text = text.strip('"').strip("'")
  if kind == "config" and isinstance(exc, (KeyError, AttributeError)):
    key = _override_key(text)
    return (f"unknown config key {key!r}{' (in --config.' + key + ')' if key else ''}: it is not "
            "in the config; rd_jax/config.py lists every key (or run with --help)")
  if kind == "config" and isinstance(exc, OSError):  # config_flags: "... Attempted [Relative path]: ..."
    return f"--config could not be loaded: {' '.join(text.split())}"
  if isinstance(exc, OSError) and getattr(exc, "filename", None):
    what = {"FileNotFoundError": "does not exist", "FileExistsError": "already exists",
            "NotADirectoryError": "is not a folder (a file is in the way)",
            "IsADirectoryError": "is a folder, a file was expected",
            "PermissionError": "is not writable/readable (permission denied)"}.get(
                type(exc).__name__, exc.strerror or "cannot be used")
    return f"path {exc.filename} {what}"
  return text


def _override_key(text: str) -> str:
  """The full dotted key of an unknown --config.<key> override, from sys.argv."""
  name = text.strip("'\" ")
  for arg in sys.argv[1:]:
    if arg.startswith("--config.") and "=" in arg:
      key = arg[len("--config."):].split("=", 1)[0]
      if key.split(".")[-1] == name or name in key.split("."):
        return key
  return name


def debug_requested(argv=None) -> bool:
  argv = sys.argv if argv is None else argv
  return os.environ.get("RD_JAX_DEBUG", "") not in ("", "0") or any(
      a in ("--debug", "--debug=true", "--debug=True", "--debug=1") for a in argv)


def _from_flag_parsing(exc: BaseException) -> bool:
  tb = exc.__traceback__
  while tb is not None:
    if tb.tb_frame.f_code.co_name in ("parse_flags_with_usage", "usage"):
      return True
    tb = tb.tb_next
  return False


def run_cli(entry: Callable[[], object], program: str) -> None:
  """Runs `entry` (which calls absl's app.run) and turns a user error into message + exit code."""
  try:
    entry()
  except SystemExit as exit_:
    if exit_.code == 1 and _from_flag_parsing(exit_):  # absl's flag errors and usage exit 1
      sys.exit(EXIT_CODES["config"])
    raise
  except KeyboardInterrupt:
    print(f"{program}: interrupted", file=sys.stderr)
    sys.exit(130)
  except BaseException as exc:  # noqa: BLE001 - classify, else re-raise with its traceback
    kind = classify(exc)
    if kind is None or debug_requested():
      raise
    print(f"{program}: error: {message(exc, kind)}", file=sys.stderr)
    print(f"({kind} error, exit code {EXIT_CODES[kind]}; --debug shows the traceback)",
          file=sys.stderr)
    sys.exit(EXIT_CODES[kind])
