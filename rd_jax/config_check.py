"""Validation of a pipeline config: bad values fail with the key's name and what is allowed.

Unknown keys are already refused by `config_flags` (the config is locked): `--config.crsd.tau=1`
fails naming `crsd.tau`. This checks the values.
"""

from __future__ import annotations

import math

from rd_jax.config import OPTIM_SECTIONS, TRAINING


class ConfigError(ValueError):
  pass


_CHOICES = {
    "data.format": ("auto", "jsonl", "csv", "parquet"),
    "data.on_bad_row": ("error", "skip"),
    "data.on_missing_reasoning": ("error", "skip"),
    "data.reasoning_source": ("annotations", "rules"),
    "student.dtype": ("float32", "bfloat16"),
    "teacher.dtype": ("float32", "bfloat16"),
    "crsd.label_source": ("gold", "teacher"),
    "crsd.lambda_scale": ("absolute", "gradient_ratio"),
    "student.class_weighting": ("none", "balanced", "given"),
    "mesh.multihost": ("auto", "off", "explicit"),
    "eval.split": ("test", "valid", "train"),
    "dpo.loss": ("dpo", "ipo", "simpo"),
    "reward.loss": ("bradley_terry", "regression"),
    "annotate.split": ("all", "train", "valid", "test"),
}
_POSITIVE = ("train.batch_size", "train.num_steps", "train.log_every", "train.checkpoint_every",
             "train.keep_checkpoints", "student.max_len_std", "student.max_len_aug",
             "crsd.temperature", "eval.batch_size", "data.num_folds",
             "teacher.max_prompt_len", "teacher.max_response_len",
             "cpt.seq_len", "cpt.batch_size", "cpt.num_steps",
             "sft.bootstrap_samples", "sft.gen_batch_size", "sft.batch_size", "sft.num_steps",
             "reward.samples_per_prompt", "reward.prompts", "reward.generate_batch_size",
             "reward.batch_size", "reward.num_steps",
             "dpo.beta", "dpo.simpo_beta", "dpo.samples_per_prompt", "dpo.prompts",
             "dpo.generate_batch_size", "dpo.batch_size", "dpo.num_steps",
             "annotate.num_samples", "annotate.batch_size", "annotate.shard_size")
_NON_NEGATIVE = ("crsd.lambda_infonce", "crsd.weight_aug_ce", "crsd.kl_weight",
                 "crsd.projection_dim", "sft.bootstrap_pairs", "sft.eval_pairs",
                 "sft.bootstrap_temperature", "reward.valid_prompts", "reward.temperature",
                 "dpo.simpo_gamma", "dpo.min_margin", "dpo.eval_prompts", "dpo.temperature",
                 "annotate.temperature", "annotate.max_retries", "annotate.max_pairs",
                 "data.max_train_pairs", "cpt.heldout_rows")

# Every stage's optimiser section (config.optim_section): the same checks under each name.
_CHOICES.update({f"{s}.optim.schedule": ("cosine", "linear", "constant") for s in OPTIM_SECTIONS})
_POSITIVE += tuple(f"{s}.optim.learning_rate" for s in OPTIM_SECTIONS)
_NON_NEGATIVE += tuple(f"{s}.optim.{k}" for s in OPTIM_SECTIONS
                       for k in ("warmup_steps", "weight_decay", "grad_clip"))


def _get(cfg, dotted: str):
  node = cfg
  for part in dotted.split("."):
    node = node[part]
  return node


def validate(cfg) -> None:
  for key, allowed in _CHOICES.items():
    value = _get(cfg, key)
    if value not in allowed:
      raise ConfigError(f"config key {key} = {value!r}; allowed: {', '.join(allowed)}")
  for key in _POSITIVE:
    value = _get(cfg, key)
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
      raise ConfigError(f"config key {key} = {value!r}; must be a positive number")
  for key in _NON_NEGATIVE:
    value = _get(cfg, key)
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
      raise ConfigError(f"config key {key} = {value!r}; must be >= 0")
  for section, steps_key in dict(TRAINING.values()).items():
    warmup, steps = _get(cfg, f"{section}.optim.warmup_steps"), _get(cfg, steps_key)
    if warmup >= steps:
      raise ConfigError(f"config key {section}.optim.warmup_steps = {warmup} must be below "
                        f"{steps_key} = {steps}: a warm-up as long as the run never reaches "
                        "its learning rate")
  labels = list(cfg.labels)
  if len(labels) < 2 or len(set(labels)) != len(labels) or not all(
      isinstance(l, str) and l.strip() for l in labels):
    raise ConfigError(f"config key labels = {labels!r}; need >= 2 distinct non-empty names")
  folds = {k: set(_get(cfg, f"data.{k}")) for k in ("train_folds", "valid_folds", "test_folds")}
  for a in folds:
    for b in folds:
      if a < b and folds[a] & folds[b]:
        raise ConfigError(f"config keys data.{a} and data.{b} share folds "
                          f"{sorted(folds[a] & folds[b])}: splits must be query-disjoint")
    bad = [f for f in folds[a] if not 0 <= f < cfg.data.num_folds]
    if bad:
      raise ConfigError(f"config key data.{a} has folds {bad} outside 0..{cfg.data.num_folds - 1}")
  buckets = list(cfg.student.length_buckets)
  if buckets != sorted(buckets) or not buckets or buckets[-1] < max(cfg.student.max_len_std,
                                                                    cfg.student.max_len_aug):
    raise ConfigError(f"config key student.length_buckets = {buckets}: must be increasing and "
                      "end at or above student.max_len_std and student.max_len_aug")
  dims, weights = list(cfg.reward.dimensions), list(cfg.reward.weights)
  if len(dims) != len(weights) or any(not math.isfinite(w) or w < 0 for w in weights):
    raise ConfigError(f"config key reward.weights = {weights}: need one finite weight >= 0 per "
                      f"dimension in reward.dimensions = {dims}")
  from rd_jax.reward_scorers import SCORERS  # pure Python: no JAX import here
  unknown = [d for d in dims if d not in SCORERS]
  if unknown or len(dims) != len(set(dims)) or not dims:
    raise ConfigError(f"config key reward.dimensions = {dims}: need distinct names from "
                      f"{list(SCORERS)}" + (f" (unknown: {unknown})" if unknown else ""))
  for key in ("reward.samples_per_prompt", "dpo.samples_per_prompt"):
    if _get(cfg, key) < 2:
      raise ConfigError(f"config key {key} = {_get(cfg, key)}: need >= 2 responses per prompt "
                        "to form a pair")
  if cfg.train.batch_size < 2 and cfg.crsd.lambda_infonce > 0:
    raise ConfigError("config key train.batch_size must be >= 2 for in-batch InfoNCE negatives")
