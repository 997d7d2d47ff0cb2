"""Config files and value checks: every shipped config validates; a bad value names its key."""

import pytest

from conftest import REPO
from rd_jax import config_check
from rd_jax.config import load_config_file


def _load(name):
  return load_config_file(str(REPO / "configs" / f"{name}.py"))


@pytest.mark.parametrize("name", ["tiny", "demo", "demo_pipeline", "pod", "teacher_rules"])
def test_shipped_configs_validate(name):
  config_check.validate(_load(name))


@pytest.mark.parametrize("key,value,message", [
    ("reward.loss", "hinge", "reward.loss"),
    ("annotate.split", "dev", "annotate.split"),
    ("dpo.loss", "kto", "dpo.loss"),
    ("sft.num_steps", 0, "sft.num_steps"),
    ("dpo.beta", -0.1, "dpo.beta"),
    ("annotate.max_retries", -1, "annotate.max_retries"),
    ("dpo.samples_per_prompt", 1, "dpo.samples_per_prompt"),
    ("reward.dimensions", ("correctness", "fluency"), "fluency"),
    ("reward.weights", (0.5, 0.5), "reward.weights"),
    ("data.valid_folds", (1,), "share folds"),
    ("student.similarity_normalisation", "pair", "student.similarity_normalisation"),
    ("student.similarity_from", "pooled", "student.similarity_from"),
    ("student.rank_weight", 1.0, "train.query_group_size"),
    ("train.query_group_size", -1, "train.query_group_size"),
])
def test_bad_value_names_its_key(tiny_config, key, value, message):
  cfg = tiny_config()
  section, name = key.split(".")
  cfg[section][name] = value
  with pytest.raises(config_check.ConfigError, match=message):
    config_check.validate(cfg)


def test_sequences_are_tuples_so_the_command_line_can_override_them(tiny_config):
  """absl's config flags override tuples ("--config.all.stages=('crsd','eval')"), not lists."""
  cfg = tiny_config()
  for key in ("labels", "data.train_folds", "data.valid_folds", "data.test_folds",
              "student.length_buckets", "cpt.corpus_paths", "reward.dimensions",
              "reward.weights", "all.stages"):
    node = cfg
    for part in key.split("."):
      node = node[part]
    assert isinstance(node, tuple), key


def test_teacher_rules_config_is_the_demo_with_its_teacher_changes():
  """configs/teacher_rules.py (the bundled annotations' teacher) differs from the demo in the SFT
  and annotate keys its docstring names, and nowhere else."""
  import json
  from rd_jax.train import run_config
  flat = lambda cfg: run_config._flatten(json.loads(cfg.to_json()), "")
  demo, rules = flat(_load("demo")), flat(_load("teacher_rules"))
  changed = sorted(k for k in demo if demo[k] != rules[k])
  assert set(demo) == set(rules)
  assert changed == ["annotate.offset_pairs", "annotate.reasoning", "sft.batch_size",
                     "sft.chains_from", "sft.eval_pairs", "sft.num_steps",
                     "sft.optim.learning_rate", "sft.optim.warmup_steps", "sft.shared_prefix"]
