"""Validation of a pipeline config: bad values fail with the key's name and what is allowed.

Unknown keys are already refused by `config_flags` (the config is locked): `--config.crsd.tau=1`
fails naming `crsd.tau`. This checks the values.
"""

from __future__ import annotations

import math
import os

from rd_jax import errors

from rd_jax.config import OPTIM_SECTIONS, TRAINING


class ConfigError(errors.ConfigError):
  pass


_CHOICES = {
    "data.format": ("auto", "jsonl", "csv", "parquet"),
    "data.on_bad_row": ("error", "skip"),
    "data.on_missing_reasoning": ("error", "skip"),
    "data.reasoning_source": ("annotations", "rules"),
    "student.dtype": ("float32", "bfloat16"),
    "teacher.dtype": ("float32", "bfloat16"),
    "teacher.generate_matmul_dtype": ("", "float32", "bfloat16"),
    "crsd.label_source": ("gold", "teacher", "teacher_soft"),
    "teacher.prompt_version": (1, 2),
    "crsd.lambda_scale": ("absolute", "gradient_ratio"),
    "student.class_weighting": ("none", "balanced", "given", "query_balanced"),
    "student.head_init": ("normal", "zeros", "probe"),
    "student.pooling": ("cls", "mean"),
    "student.decision_rule": ("offsets", "prior_scale"),
    "student.similarity_normalisation": ("split", "query"),
    "student.match_hint": ("", "missing"),
    "student.wide_features": ("", "overlap", "overlap_accessory"),
    "student.similarity_from": ("cls", "logits"),
    "student.lexical_distill_model": ("reference", "overlap"),
    "mesh.multihost": ("auto", "off", "explicit"),
    "eval.split": ("test", "valid", "train"),
    "calibrate.rule": ("offsets", "prior_scale"),
    "dpo.loss": ("dpo", "ipo", "simpo"),
    "reward.loss": ("bradley_terry", "regression"),
    "annotate.split": ("all", "train", "valid", "test"),
    "annotate.reasoning": ("generated", "rules"),
    "sft.chains_from": ("bootstrap", "rules"),
}
_POSITIVE = ("train.batch_size", "train.num_steps", "train.log_every", "train.checkpoint_every",
             "train.keep_checkpoints", "student.max_len_std", "student.max_len_aug",
             "crsd.temperature", "eval.batch_size", "data.num_folds",
             "teacher.max_prompt_len", "teacher.max_response_len",
             "cpt.seq_len", "cpt.batch_size", "cpt.num_steps",
             "sft.bootstrap_samples", "sft.gen_batch_size", "sft.label_loss_weight",
             "sft.batch_size", "sft.num_steps",
             "reward.samples_per_prompt", "reward.prompts", "reward.generate_batch_size",
             "reward.batch_size", "reward.num_steps",
             "dpo.beta", "dpo.simpo_beta", "dpo.samples_per_prompt", "dpo.prompts",
             "dpo.generate_batch_size", "dpo.batch_size", "dpo.num_steps",
             "annotate.num_samples", "annotate.batch_size", "annotate.shard_size")
_NON_NEGATIVE = ("eval.bootstrap_resamples", "student.cross_query_negatives", "crsd.lambda_infonce", "crsd.weight_aug_ce", "crsd.kl_weight",
                 "crsd.projection_dim", "sft.bootstrap_pairs", "sft.eval_pairs",
                 "sft.cross_query_negatives",
                 "sft.bootstrap_temperature", "reward.valid_prompts", "reward.temperature",
                 "dpo.simpo_gamma", "dpo.min_margin", "dpo.eval_prompts", "dpo.temperature",
                 "annotate.temperature", "annotate.max_retries", "annotate.max_pairs", "annotate.offset_pairs",
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
  normalize_labels(cfg)
  check_ranges(cfg)
  for section in OPTIM_SECTIONS:
    value = _get(cfg, f"{section}.optim").get("layer_decay", 1.0)
    if not (isinstance(value, (int, float)) and 0 < value <= 1):
      raise ConfigError(f"config key {section}.optim.layer_decay = {value!r}; must be in (0, 1] "
                        "(1 = off)")
    value = _get(cfg, f"{section}.optim").get("ema_decay", 0.0)
    if not (isinstance(value, (int, float)) and 0 <= value < 1):
      raise ConfigError(f"config key {section}.optim.ema_decay = {value!r}; must be in [0, 1) "
                        "(0 = off)")
    value = _get(cfg, f"{section}.optim").get("head_lr_multiplier", 1.0)
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
      raise ConfigError(f"config key {section}.optim.head_lr_multiplier = {value!r}; must be > 0 "
                        "(1 = the output head at the section's learning rate)")
  for key, allowed in _CHOICES.items():
    value = _get(cfg, key)
    if value not in allowed:
      raise ConfigError(f"config key {key} = {value!r}; allowed: {', '.join(allowed)}")
  if cfg.sft.cross_query_negatives > 0 and (cfg.sft.chains_from != "rules" or cfg.sft.chains_path):
    raise ConfigError(f"config key sft.cross_query_negatives = {cfg.sft.cross_query_negatives} "
                      "needs sft.chains_from = 'rules' and no sft.chains_path (a drawn pair's "
                      "chain is its rule rationale)")
  if cfg.sft.chains_from == "rules" and cfg.sft.chains_path:
    raise ConfigError(f"config keys sft.chains_path = {cfg.sft.chains_path!r} and "
                      "sft.chains_from = 'rules' both give the SFT chains; set one")
  grid = cfg.student.get("probe_c_grid", (1.0,))
  if isinstance(grid, (int, float)):
    grid = (grid,)
  if not grid or not all(isinstance(c, (int, float)) and not isinstance(c, bool)
                         and math.isfinite(c) and c > 0 for c in grid):
    raise ConfigError(f"config key student.probe_c_grid = {grid!r}; need one or more positive "
                      "inverse regularisation strengths, e.g. --config.student.probe_c_grid=0.1,1")
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
  negative_label = cfg.student.cross_query_negative_label
  for key in ("student.cross_query_negatives", "sft.cross_query_negatives"):
    if _get(cfg, key) > 0 and negative_label not in labels:
      # configs/demo.py draws them with ESCI's "Irrelevant"; a graded label set has another name
      raise ConfigError(
          f"config key student.cross_query_negative_label = {negative_label!r} is not one of the "
          f"labels {labels}, and {key} = {_get(cfg, key)} labels items of other queries with it: "
          "name your label for an unrelated item (for grades 1-4 where 1 is the worst, "
          f"--config.student.cross_query_negative_label=1) or turn them off with --config.{key}=0")
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
  if cfg.student.lexical_distill and cfg.crsd.label_source == "teacher_soft":
    # both replace the CE targets: which one the student learns from would be ambiguous
    raise ConfigError(f"config key student.lexical_distill = {cfg.student.lexical_distill} "
                      "cannot be combined with crsd.label_source=teacher_soft (both set the soft "
                      "CE targets); use crsd.label_source=gold or teacher, or "
                      "student.lexical_distill=0")
  if cfg.student.get("rank_weight", 0.0) and not cfg.train.get("query_group_size", 0):
    # random batches of 32 from ~70 queries hold almost no same-query pairs to rank
    raise ConfigError(f"config key student.rank_weight = {cfg.student.rank_weight} needs "
                      "train.query_group_size > 0 (batches of same-query runs), e.g. 8")
  if cfg.student.get("wide_features", ""):
    betas = list(cfg.student.wide_betas)
    if not betas or any(not math.isfinite(float(b)) or float(b) < 0 for b in betas):
      raise ConfigError(f"config key student.wide_betas = {betas}: need one or more finite "
                        "weights >= 0")
  if cfg.student.get("wide_features", "") == "overlap_accessory":
    markers = list(cfg.student.get("wide_accessory_markers", ()))
    if not markers or any(not isinstance(m, str) or not m or m != m.strip() or " " in m
                          for m in markers):
      raise ConfigError(f"config key student.wide_accessory_markers = {markers}: need one or "
                        "more single words (whole-word pieces of the tokenizer's vocabulary)")
  if cfg.train.batch_size < 2 and cfg.crsd.lambda_infonce > 0:
    raise ConfigError("config key train.batch_size must be >= 2 for in-batch InfoNCE negatives")


# Ranges where other values are meaningless (checked when the key exists in this config):
# key -> (low, high, low_inclusive, high_inclusive, what to write in the message).
_RANGES = {
    "data.max_query_chars": (1, None, True, True, "a positive number of characters"),
    "data.max_item_chars": (1, None, True, True, "a positive number of characters"),
    "data.max_reasoning_chars": (1, None, True, True, "a positive number of characters"),
    "student.dropout": (0.0, 1.0, True, False, "a probability in [0, 1)"),
    "student.attention_dropout": (0.0, 1.0, True, False, "a probability in [0, 1)"),
    "student.logit_adjustment": (0.0, None, True, True, ">= 0 (0 = off)"),
    "student.query_prior": (0.0, None, True, True, ">= 0 (0 = off)"),
    "student.query_balance_power": (0.0, None, True, True, ">= 0 (0 = balanced)"),
    "student.cross_query_negative_weight": (0.0, None, True, True, ">= 0"),
    "student.query_prior_smoothing": (0.0, None, False, True, "> 0"),
    "student.similarity_weight": (0.0, None, True, True, ">= 0 (0 = off)"),
    "student.overlap_weight": (0.0, None, True, True, ">= 0 (0 = off)"),
    "student.rank_weight": (0.0, None, True, True, ">= 0 (0 = off)"),
    "train.query_group_size": (0, None, True, True, "an integer >= 0 (0 = random batches)"),
    "student.lexical_distill": (0.0, 1.0, True, True, "in [0, 1] (0 = off)"),
    "student.lexical_distill_folds": (2, None, True, True, "an integer >= 2"),
    "student.offsets_crossfit_folds": (0, None, True, True, "an integer >= 0 (0 = off)"),
    "calibrate.crossfit_folds": (0, None, True, True, "an integer >= 0 (0 = none)"),
    "crsd.lambda_infonce": (0.0, None, True, True, ">= 0"),
    "crsd.lambda_warmup_steps": (0, None, True, True, ">= 0 (0 = off)"),
    "export.atol": (0.0, None, False, True, "> 0"),
    "teacher.rms_norm_eps": (0.0, None, False, True, "> 0"),
    "teacher.rope_theta": (0.0, None, False, True, "> 0"),
    "teacher.draft_tokens": (0, None, True, True, "an integer >= 0 (0 = off)"),
    "student.bucket_compile_tokens": (0, None, True, True, ">= 0"),
    "train.stop_after_step": (0, None, True, True, ">= 0 (0 = off)"),
    "annotate.stop_after_shards": (0, None, True, True, ">= 0 (0 = off)"),
    "mesh.num_processes": (1, None, True, True, ">= 1"),
    "mesh.process_id": (0, None, True, True, ">= 0"),
    "mesh.fsdp": (1, None, True, True, ">= 1"),
    "mesh.tensor": (1, None, True, True, ">= 1"),
    "seed": (0, None, True, True, ">= 0"),
}
for _section in ("student", "teacher"):
  for _key in ("hidden_size", "intermediate_size", "max_position", "num_heads", "num_layers",
               "vocab_size", "num_kv_heads"):
    _RANGES[f"{_section}.{_key}"] = (1, None, True, True, "a positive integer")
for _section in OPTIM_SECTIONS:   # every stage's optimiser section
  for _key in ("b1", "b2"):
    _RANGES[f"{_section}.optim.{_key}"] = (0.0, 1.0, True, False, "in [0, 1)")
_MISSING = object()


def _maybe_get(cfg, dotted: str):
  node = cfg
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node.keys():
      return _MISSING
    node = node[part]
  return node


def check_ranges(cfg) -> None:
  """Every numeric value where another value is meaningless: fails naming the key and range."""
  for key, (low, high, low_in, high_in, what) in _RANGES.items():
    value = _maybe_get(cfg, key)
    if value is _MISSING:
      continue
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or (value >= low if low_in else value > low))
    ok = ok and (high is None or (value <= high if high_in else value < high))
    if not ok:
      raise ConfigError(f"config key {key} = {value!r}; must be {what}")
  if "dropout" in cfg.get("teacher", {}):
    if not 0 <= cfg.teacher.dropout < 1:
      raise ConfigError(f"config key teacher.dropout = {cfg.teacher.dropout!r}; must be a "
                        "probability in [0, 1)")
  shares = _maybe_get(cfg, "data.split")
  if shares is not _MISSING:
    shares = list(shares)
    if (len(shares) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                    and math.isfinite(x) and x >= 0 for x in shares)
        or shares[0] <= 0 or sum(shares[1:]) <= 0):
      raise ConfigError(f"config key data.split = {shares!r}; need three shares "
                        "train,valid,test >= 0 with train > 0 and valid + test > 0, e.g. "
                        "--config.data.split=0.8,0.1,0.1")


def normalize_labels(cfg) -> None:
  """`labels` as the user means them: `--config.labels=1,2,3,4` (numbers -> "1".."4"),
  `--config.labels=a,b,c` (one comma-separated string) or `--config.labels=labels.txt` (a file,
  one label per line) become a tuple of names."""
  labels = cfg.labels
  if isinstance(labels, str):
    labels = (labels,)
  labels = list(labels)
  if len(labels) == 1 and isinstance(labels[0], str):
    only = labels[0].strip()
    if "," not in only and os.path.isfile(only):
      with open(only, encoding="utf-8") as f:
        labels = [line.strip() for line in f if line.strip()]
      if not labels:
        raise ConfigError(f"config key labels = {only!r}: the labels file is empty "
                          "(write one label per line)")
    elif "," in only:
      labels = [part.strip() for part in only.split(",")]
    elif only.endswith((".txt", ".labels")):
      raise ConfigError(f"config key labels = {only!r}: no such labels file")
  names = []
  for label in labels:
    if isinstance(label, bool) or not isinstance(label, (str, int, float)):
      raise ConfigError(f"config key labels = {list(cfg.labels)!r}: labels are names or numbers, "
                        "e.g. --config.labels=1,2,3,4 or --config.labels=good,bad")
    names.append(label if isinstance(label, str) else
                 str(int(label)) if float(label).is_integer() else str(label))
  if tuple(names) != tuple(cfg.labels):
    with cfg.unlocked() if hasattr(cfg, "unlocked") else _nullcontext():
      cfg.labels = tuple(names)


class _nullcontext:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False
