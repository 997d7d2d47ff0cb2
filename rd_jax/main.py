"""rd_jax command line: one pipeline config, one stage per call.

  python -m rd_jax.main --stage=crsd --config=configs/demo.py --workdir=runs/demo
  python -m rd_jax.main --stage=eval --config=configs/demo.py --workdir=runs/demo --config.eval.split=valid
Stages (each writes under <workdir>/<stage>/):
"""

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rd_jax import stages

__doc__ += "\n".join(f"  {name:9s} {doc}" for name, doc in stages.available().items())

_STAGE = flags.DEFINE_enum("stage", None, list(stages.available()), "Stage to run (see module doc).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Pipeline work directory; stages write <workdir>/<stage>/.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Pipeline config file (configs/*.py); override keys with --config.a.b=value.",
    lock_config=True)
flags.mark_flags_as_required(["stage", "workdir", "config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg = _CONFIG.value
  from rd_jax import config_check
  config_check.validate(cfg)
  os.makedirs(_WORKDIR.value, exist_ok=True)
  logging.info("stage %s, workdir %s", _STAGE.value, _WORKDIR.value)
  summary = stages.run(_STAGE.value, cfg, _WORKDIR.value)
  print(json.dumps({"stage": _STAGE.value, **_headline(summary)}, sort_keys=True))


def _headline(summary: dict) -> dict:
  """The few numbers worth a line on stdout (the full summary is in summary.json)."""
  keys = ("macro_f1", "accuracy", "valid_macro_f1", "test_macro_f1", "seconds", "output")
  return {k: summary[k] for k in keys if k in (summary or {})}


if __name__ == "__main__":
  app.run(main)
