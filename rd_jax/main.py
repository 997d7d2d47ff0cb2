"""rd_jax command line: one pipeline config, one stage per call.

  python -m rd_jax.main --stage=crsd --config=configs/demo.py --workdir=runs/demo
  python -m rd_jax.main --stage=eval --config=configs/demo.py --workdir=runs/demo --config.eval.split=valid
  python -m rd_jax.main --stage=all --config=configs/pod.py --workdir=gs://BUCKET/run1   (pods)
Rerunning a training stage in the same workdir resumes its checkpoint only with the config values
it was trained with (<workdir>/<stage>/run_config.json); other values stop it naming the keys.
Stages (each writes under <workdir>/<stage>/):
"""

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rd_jax import cli_help, cli_setup, errors, stages

__doc__ += "\n".join(f"  {name:9s} {doc}" for name, doc in stages.available().items())

_STAGE = flags.DEFINE_enum("stage", None, list(stages.available()), "Stage to run (see module doc).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Pipeline work directory, local or gs://bucket/path (pods: every worker must "
    "see it); stages write <workdir>/<stage>/.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Pipeline config file (configs/*.py); override keys with --config.a.b=value.",
    lock_config=True)
flags.DEFINE_bool("debug", False, "Show the Python traceback of user errors too (see rd_jax/errors.py).")
flags.mark_flags_as_required(["stage", "workdir", "config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli_setup.quiet_library_logs()
  cli_setup.compilation_cache()
  warning = cli_setup.max_map_count_warning()
  if warning:
    logging.warning(warning)
  cfg = _CONFIG.value
  from rd_jax import config_check
  config_check.validate(cfg)
  from rd_jax import storage
  if storage.isfile(_WORKDIR.value):
    raise errors.PathError(f"--workdir={_WORKDIR.value} is a file; give a folder (new or existing)")
  storage.makedirs(_WORKDIR.value)
  logging.info("stage %s, workdir %s", _STAGE.value, _WORKDIR.value)
  summary = _run_locked(cfg, _STAGE.value, _WORKDIR.value)
  print(json.dumps({"stage": _STAGE.value, **_headline(summary)}, sort_keys=True))


def _run_locked(cfg, stage: str, workdir: str) -> dict:
  """The stage under its lock (<stage>/LOCK, for the whole stage: data, training, validation,
  final/, summary); config.json is written by the lock holder and put back as it was when the
  run stops on a user error (e.g. trained with other values, bad data), so it never describes a
  run that did not happen."""
  if stage == "all":   # each stage takes its own lock (stages.run)
    _record_config(cfg, stage, workdir)
    return stages.run(stage, cfg, workdir)
  from rd_jax import storage
  from rd_jax.parallel import mesh as mesh_lib
  from rd_jax.stage_lock import StageLock
  mesh_lib.maybe_initialize_distributed(cfg.mesh)  # before StageLock asks for the process index
  stage_dir = os.path.join(workdir, stage)
  storage.makedirs(stage_dir)
  path = os.path.join(stage_dir, "config.json")
  import jax
  with StageLock(stage_dir):
    previous = None
    if storage.exists(path):
      previous = storage.read_bytes(path)
    _record_config(cfg, stage, workdir)
    try:
      return stages.run(stage, cfg, workdir)
    except Exception as e:
      refused = errors.classify(e) is not None  # a user error: nothing ran
      if refused and jax.process_index() == 0 and storage.exists(path):
        if previous is None:
          storage.remove(path)
        else:
          storage.write_bytes_atomic(path, previous)
      raise


def _record_config(cfg, stage: str, workdir: str) -> None:
  """The resolved config of this call: <workdir>/<stage>/config.json (all: all_config.json)."""
  import jax
  from rd_jax import metrics as metrics_lib
  from rd_jax import storage
  from rd_jax.parallel import mesh as mesh_lib
  mesh_lib.maybe_initialize_distributed(cfg.mesh)  # before any backend use; stages re-call: no-op
  if jax.process_index() != 0:
    return
  if stage == "all":
    path = os.path.join(workdir, "all_config.json")
  else:
    storage.makedirs(os.path.join(workdir, stage))
    path = os.path.join(workdir, stage, "config.json")
  metrics_lib.write_json_atomic(json.loads(cfg.to_json()), path)


def _headline(summary: dict) -> dict:
  """The few numbers worth a line on stdout (the full summary is in summary.json)."""
  summary = summary or {}
  keys = ("macro_f1", "accuracy", "baseline_macro_f1", "valid_macro_f1", "test_macro_f1", "seconds",
          "output", "seconds_per_stage", "interrupted_in")
  out = {k: summary[k] for k in keys if k in summary}
  evaluated = summary.get("results", {}).get("eval", {})   # --stage=all: the final comparison
  out.update({f"test_{k}": evaluated[k] for k in ("macro_f1", "baseline_macro_f1") if k in evaluated})
  return out


if __name__ == "__main__":
  cli_help.maybe_print_help(__doc__, "rd_jax.main")
  errors.run_cli(lambda: app.run(main), "rd_jax.main")
