"""`--stage=all`: stages in order in one workdir; a rerun skips the complete ones."""

import json
import os

import pytest

from rd_jax.stages import all as all_stage


def test_student_pipeline_runs_then_skips(tmp_path, tiny_config, monkeypatch):
  cfg = tiny_config()
  cfg.all.stages = ["crsd", "eval", "export"]
  cfg.train.num_steps = 2
  first = all_stage.run(cfg, str(tmp_path))
  assert list(first["seconds_per_stage"]) == ["crsd", "eval", "export"]
  for stage in ("crsd", "eval", "export"):
    assert os.path.exists(tmp_path / stage / "summary.json")
  assert json.load(open(tmp_path / "all_summary.json"))["results"]["eval"]["macro_f1"] >= 0

  calls = []
  monkeypatch.setattr(all_stage.registry, "run", lambda *a: calls.append(a) or {})
  second = all_stage.run(cfg, str(tmp_path))
  assert calls == [] and set(second["seconds_per_stage"].values()) == {"skipped (complete)"}


def test_unknown_stage_in_subset_is_named(tmp_path, tiny_config):
  cfg = tiny_config()
  cfg.all.stages = ["crsd", "distill"]
  with pytest.raises(ValueError, match="distill"):
    all_stage.run(cfg, str(tmp_path))
