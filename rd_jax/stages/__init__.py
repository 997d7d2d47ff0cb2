"""Stage registry: `--stage=<name>` runs `run(cfg, workdir)` of the module `STAGES[name]` names.

A stage module never imports another stage: what two stages share lives in a library
(`rd_jax/teacher/`, `rd_jax/student/`, `rd_jax/train/`). A module that serves two stages names
its function after a colon: baseline is `crsd.run_baseline` (the same student, reasoning off).

Modules are imported lazily so `--help` and a typo'd stage answer instantly, and a stage's heavy
dependencies (torch for export, the teacher for annotate) load only when it runs.
"""

from __future__ import annotations

import importlib
from rd_jax import errors

# name -> (module, one-line description shown by --help)
STAGES = {
    "cpt": ("rd_jax.stages.cpt", "teacher: continued pre-training on the domain corpus"),
    "sft": ("rd_jax.stages.sft", "teacher: SFT on prompt -> reasoning + label (STaR bootstrap)"),
    "reward": ("rd_jax.stages.reward", "teacher: multi-dimensional reward model (K BT heads)"),
    "dpo": ("rd_jax.stages.dpo", "teacher: preference optimisation (DPO / IPO / SimPO)"),
    "annotate": ("rd_jax.stages.annotate", "teacher: label + reason pairs with KV-cache generation"),
    "crsd": ("rd_jax.stages.crsd", "student: CRSD (CE on both views + InfoNCE)  [main job]"),
    "baseline": ("rd_jax.stages.crsd:run_baseline", "student: CE on the standard view only (ablation)"),
    "eval": ("rd_jax.stages.eval", "student: metrics.json + confusion.png on a labelled split"),
    "export": ("rd_jax.stages.export", "student: Hugging Face / PyTorch folder, verified"),
    "calibrate": ("rd_jax.stages.calibrate",
                  "student: decision rule re-fitted on a labelled sample of your traffic"),
    "all": ("rd_jax.stages.all", "cpt ... export in order (not calibrate), skipping completed ones"),
}


def available() -> dict[str, str]:
  """Stages whose module exists in this installation."""
  return {name: doc for name, (target, doc) in STAGES.items()
          if importlib.util.find_spec(target.split(":")[0]) is not None}


def run(name: str, cfg, workdir: str) -> dict:
  if name not in STAGES:
    raise errors.ConfigError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
  module_name, _, function = STAGES[name][0].partition(":")
  if importlib.util.find_spec(module_name) is None:
    raise ValueError(f"stage {name!r} is not implemented in this version ({module_name} missing)")
  module = importlib.import_module(module_name)
  run_stage = getattr(module, function or "run")
  if name == "all":
    return run_stage(cfg, workdir)
  import os
  from rd_jax import storage
  from rd_jax.stage_lock import StageLock  # the whole stage, annotate included (re-entrant)
  storage.makedirs(os.path.join(workdir, name))
  with StageLock(os.path.join(workdir, name), reentrant=True):
    return run_stage(cfg, workdir)
