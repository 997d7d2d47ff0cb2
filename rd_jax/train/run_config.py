"""What a trained stage was trained with, and the check that a resume or a reuse matches it.

A stage folder resumes from its latest checkpoint, and `--stage=all` / the experiment table reuse
a complete one. Without a check, changing a config value (say `crsd.lambda_infonce`) and rerunning
in the same workdir would continue, or keep, a model trained with the old value under the new
config's name. So the training loop records `<stage>/run_config.json` (the keys this stage's
training depends on, flattened to dotted names) when it starts fresh, and refuses to resume — or
reuse a complete stage — when any of them differs, naming each key with its old and new value.

Never recorded (free to change at any time): the logging/checkpoint cadence and the preemption
drill (`train.log_every`, `train.checkpoint_every`, `train.keep_checkpoints`,
`train.stop_after_step`), rematerialisation (`student.remat`, `teacher.remat` and their policies:
the same loss and gradients) and the whole `mesh` section (a checkpoint restores onto another
mesh). Records written before a key became free still hold it: it is ignored when comparing.
The stage's step count (`STEPS_KEY`) may grow on a resume — "train longer" continues from the
checkpoint, with a warning, since the learning-rate schedule is rebuilt for the new total — but a
complete run is only reused with the step count it was trained for.
"""

from __future__ import annotations

import json
import os

from rd_jax import metrics as metrics_lib
from rd_jax import storage
from rd_jax.config import OPTIM_SECTIONS, TRAINING

FILENAME = "run_config.json"

# The config sections (or single dotted keys) each training stage reads.
_TEACHER = ("seed", "labels", "data", "teacher")
STAGE_KEYS = {
    "cpt": _TEACHER + ("cpt",),
    "sft": _TEACHER + ("sft",),
    "reward": _TEACHER + ("reward",),
    "dpo": _TEACHER + ("reward", "dpo"),
    "crsd": ("seed", "labels", "data", "student", "train", "crsd"),
    # The plain student never sees reasoning: of the crsd section only its label source counts.
    "baseline": ("seed", "labels", "data", "student", "train", "crsd.label_source"),
}
STEPS_KEY = {stage: steps for stage, (_, steps) in TRAINING.items()}
FREE_KEYS = frozenset({"train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                       "train.stop_after_step",
                       # how activations are kept for the backward pass, not what is trained:
                       # the same loss and gradients with or without remat (tests/test_remat.py)
                       "student.remat", "student.remat_policy",
                       "teacher.remat", "teacher.remat_policy"})
# data keys only the students read (which reasoning, how many train pairs): not a teacher's.
_STUDENT_DATA_KEYS = frozenset({"data.reasoning_path", "data.reasoning_source",
                                "data.on_missing_reasoning", "data.max_reasoning_chars",
                                "data.max_train_pairs"})

# Keys added after runs were recorded, each with the value every run before it trained with: a
# record without the key reads as that value, so adding a key does not orphan older runs.
ADDED_KEYS = {"student.attention_dropout": 0.1,   # 2026-12-04; the one rate was student.dropout's
              # 2026-12-04: no stage averaged its weights before the key existed
              **{f"{section}.optim.ema_decay": 0.0 for section in OPTIM_SECTIONS},
              # 2026-12-04: every output head trained at its section's learning rate
              **{f"{section}.optim.head_lr_multiplier": 1.0 for section in OPTIM_SECTIONS},
              "sft.shared_prefix": False,    # 2026-12-04: every SFT row ran its whole prompt
              "student.head_init": "normal",  # 2026-12-04: the classifier was always N(0, 0.02)
              "student.decision_rule": "offsets",  # 2026-12-04: C - 1 free offsets before
              "student.pooling": "cls",  # 2026-12-05: the pooler always read token 0
              # 2026-12-05: the key came with head_init="probe"; other heads never read it
              "student.probe_c_grid": [0.01, 0.03, 0.1, 0.3, 1.0],
              # 2026-12-05: no drawn negatives before the keys existed
              "student.cross_query_negatives": 0,
              "student.cross_query_negative_label": "Irrelevant",
              # 2026-12-05: read only with class_weighting=query_balanced, new with it
              "student.query_balance_power": 0.5,
              # 2026-12-05: drawn negatives counted and weighed as real pairs before the keys
              "student.cross_query_negatives_counted": True,
              "student.cross_query_negative_weight": 1.0,
              # 2026-12-05: SFT chains came from sft.chains_path or the STaR bootstrap
              "sft.chains_from": "bootstrap",
              # 2026-12-05: every response token weighed 1 in the SFT loss
              "sft.label_loss_weight": 1.0,
              # 2026-12-05: SFT trained on the data's pairs only
              "sft.cross_query_negatives": 0,
              # 2026-12-05 (session 32): no student had a wide term before the keys existed
              "student.wide_features": "",
              "student.wide_betas": [0.0, 0.25, 0.5, 1.0, 2.0],
              # 2026-12-06 (session 33): overlap_accessory's markers were fixed in the code
              "student.wide_accessory_markers": ["for", "compatible", "compatibility", "fit",
                                                 "fits", "replacement", "replacing"]}


class RunConfigMismatch(ValueError):
  """A stage folder holds a run made with a different config; the message names the keys."""


def _flatten(value, prefix: str) -> dict:
  if isinstance(value, dict):
    out = {}
    for key, sub in value.items():
      out.update(_flatten(sub, f"{prefix}.{key}" if prefix else key))
    return out
  return {prefix: value}


def for_stage(cfg, stage: str) -> dict:
  """{dotted key: JSON value} of what `stage`'s training depends on, in `cfg`."""
  if stage not in STAGE_KEYS:
    raise ValueError(f"no run-config keys for stage {stage!r}; known: {sorted(STAGE_KEYS)}")
  whole = _flatten(json.loads(cfg.to_json()), "")
  wanted = {}
  for key in STAGE_KEYS[stage]:
    wanted.update({k: v for k, v in whole.items() if k == key or k.startswith(key + ".")})
  drop = FREE_KEYS | (_STUDENT_DATA_KEYS if stage in ("cpt", "sft", "reward", "dpo") else set())
  return {k: v for k, v in sorted(wanted.items()) if k not in drop}


def read(stage_dir: str) -> dict | None:
  path = os.path.join(stage_dir, FILENAME)
  return json.loads(storage.read_text(path)) if storage.exists(path) else None


def write(stage_dir: str, run_config: dict) -> None:
  metrics_lib.write_json_atomic(run_config, os.path.join(stage_dir, FILENAME))


def differences(recorded: dict, wanted: dict) -> list[str]:
  """'key: recorded -> wanted' for every key whose value differs or that only one side has."""
  missing = object()
  lines = []
  for key in sorted(set(recorded) | set(wanted)):
    old, new = recorded.get(key, missing), wanted.get(key, missing)
    if old != new:
      show = lambda v: "(absent)" if v is missing else json.dumps(v)
      lines.append(f"{key}: {show(old)} -> {show(new)}")
  return lines


def check(stage_dir: str, wanted: dict, what: str = "resume", folder: str = "",
          may_differ: frozenset = frozenset()) -> dict | None:
  """The values `stage_dir` records, after checking them against `wanted`: raises
  RunConfigMismatch naming each key that differs, or None when the folder has no record (a run
  from before run_config.json existed; the caller decides what to do with it).

  folder: what to delete to retrain from scratch, named in the message (default: stage_dir).
  may_differ: keys allowed to differ (the loop's step count on a resume).
  """
  recorded = read(stage_dir)
  if recorded is None:
    return None
  recorded = {**{k: v for k, v in ADDED_KEYS.items() if k in wanted},
              **{k: v for k, v in recorded.items() if k not in FREE_KEYS}}
  diff = differences({k: v for k, v in recorded.items() if k not in may_differ},
                     {k: v for k, v in wanted.items() if k not in may_differ})
  if diff:
    raise RunConfigMismatch(
        f"cannot {what} {stage_dir}: it was trained with a different config "
        f"({os.path.join(stage_dir, FILENAME)}):\n  " + "\n  ".join(diff) +
        f"\nUse a new --workdir for the new values or set the keys back (or delete "
        f"{folder or stage_dir} to retrain it from scratch).")
  return recorded
