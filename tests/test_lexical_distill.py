"""student.lexical_distill: out-of-fold lexical probabilities (no pair predicted by a model that saw
its query), the soft CE targets (golden, NumPy), alpha 0 = the gold path, the config checks."""

import pytest

from rd_jax import config_check

@pytest.mark.parametrize("key,value,message", [
    ("lexical_distill", 1.5, "student.lexical_distill = 1.5"),
    ("lexical_distill", -0.1, "student.lexical_distill = -0.1"),
    ("lexical_distill_folds", 1, "student.lexical_distill_folds = 1"),
])
def test_bad_values_name_their_key(tiny_config, key, value, message):
  cfg = tiny_config()
  cfg.student[key] = value
  with pytest.raises(config_check.ConfigError, match=message):
    config_check.validate(cfg)


def test_teacher_soft_labels_are_refused(tiny_config):
  cfg = tiny_config()
  cfg.student.lexical_distill = 0.5
  cfg.crsd.label_source = "teacher_soft"
  with pytest.raises(config_check.ConfigError, match="teacher_soft"):
    config_check.validate(cfg)
  cfg.crsd.label_source = "gold"
  config_check.validate(cfg)
