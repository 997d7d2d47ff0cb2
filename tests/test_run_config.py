"""A stage folder is resumed or reused only with the config it was trained with."""

import json
import os

import pytest

from rd_jax.experiments import table
from rd_jax.stages import all as all_stage, crsd
from rd_jax.train import run_config


def test_each_stage_records_only_what_its_training_reads(tiny_config):
  cfg = tiny_config()
  student, plain, teacher = (run_config.for_stage(cfg, s) for s in ("crsd", "baseline", "dpo"))
  assert student["crsd.lambda_infonce"] == cfg.crsd.lambda_infonce
  assert student["train.num_steps"] == cfg.train.num_steps     # the LR schedule is built from it
  assert "crsd.lambda_infonce" not in plain and plain["crsd.label_source"] == "gold"
  assert "data.reasoning_path" in student and "data.reasoning_path" not in teacher
  assert teacher["dpo.beta"] == cfg.dpo.beta and "crsd.temperature" not in teacher
  for free in ("train.log_every", "train.checkpoint_every", "train.stop_after_step"):
    assert free not in student
  assert not any(k.startswith("mesh.") for k in student)          # another mesh may resume
  with pytest.raises(ValueError, match="eval"):
    run_config.for_stage(cfg, "eval")


def test_remat_is_free_to_change_even_against_an_older_record(tmp_path, tiny_config):
  """Remat changes how activations are kept, not what is trained: not recorded, and a record
  written when the remat keys were still recorded resumes under another remat."""
  cfg = tiny_config()
  for stage, section in (("dpo", "teacher"), ("crsd", "student")):
    wanted = run_config.for_stage(cfg, stage)
    assert f"{section}.remat" not in wanted and f"{section}.remat_policy" not in wanted
    folder = tmp_path / stage
    folder.mkdir()
    run_config.write(str(folder), {**wanted, f"{section}.remat": "none",   # recorded before 12-06
                                   f"{section}.remat_policy": "nothing_saveable"})
    cfg[section].remat = "scan" if section == "teacher" else "per_layer"
    assert run_config.check(str(folder), run_config.for_stage(cfg, stage)) is not None
  cfg.dpo.beta = cfg.dpo.beta * 2                        # a recorded key still refuses
  with pytest.raises(run_config.RunConfigMismatch, match="dpo.beta"):
    run_config.check(str(tmp_path / "dpo"), run_config.for_stage(cfg, "dpo"))


def test_differences_name_each_key_with_both_values():
  assert run_config.differences({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 2]}) == []
  assert run_config.differences({"a": 0.5, "b": 1}, {"a": 0.1, "c": "x"}) == [
      "a: 0.5 -> 0.1", "b: 1 -> (absent)", 'c: (absent) -> "x"']


def test_a_record_from_before_an_added_key_reads_as_its_old_value(tmp_path, tiny_config):
  cfg = tiny_config()
  wanted = run_config.for_stage(cfg, "crsd")
  assert wanted["student.attention_dropout"] == 0.1 == run_config.ADDED_KEYS[
      "student.attention_dropout"]
  old = {k: v for k, v in wanted.items() if k != "student.attention_dropout"}
  run_config.write(str(tmp_path), old)                  # a run recorded before the key existed
  assert run_config.check(str(tmp_path), wanted)["student.attention_dropout"] == 0.1
  cfg.student.attention_dropout = 0.0                   # it trained with 0.1: a new value differs
  with pytest.raises(run_config.RunConfigMismatch, match=r"student.attention_dropout: 0.1 -> 0.0"):
    run_config.check(str(tmp_path), run_config.for_stage(cfg, "crsd"))


def test_resume_with_a_changed_key_is_refused_and_cadence_may_change(tmp_path, tiny_config):
  first = tiny_config()
  first.train.num_steps, first.train.checkpoint_every = 4, 2
  first.train.stop_after_step = 2                       # as if killed after step 2's checkpoint
  assert crsd.run(first, str(tmp_path))["interrupted_at"] == 2
  recorded = json.load(open(tmp_path / "crsd" / "run_config.json"))
  assert recorded == run_config.for_stage(first, "crsd")

  changed = tiny_config()
  changed.train.num_steps, changed.train.checkpoint_every = 4, 2
  changed.crsd.lambda_infonce = first.crsd.lambda_infonce + 0.25
  with pytest.raises(run_config.RunConfigMismatch) as error:
    crsd.run(changed, str(tmp_path))
  message = str(error.value)
  assert "crsd.lambda_infonce" in message and str(tmp_path / "crsd") in message
  assert "train.num_steps" not in message                # only what differs is named

  same = tiny_config()
  same.train.num_steps, same.train.checkpoint_every, same.train.log_every = 4, 2, 1
  summary = crsd.run(same, str(tmp_path))                # other logging cadence: resumes
  assert summary["resumed_from"] == 2 and summary["steps"] == 4

  shorter = tiny_config()
  shorter.train.num_steps = 2                            # the checkpoint is at step 4
  with pytest.raises(run_config.RunConfigMismatch, match="step 4, past train.num_steps = 2"):
    crsd.run(shorter, str(tmp_path))
  longer = tiny_config()
  longer.train.num_steps, longer.train.checkpoint_every = 6, 2
  summary = crsd.run(longer, str(tmp_path))              # "train longer" continues from step 4
  assert summary["resumed_from"] == 4 and summary["steps"] == 6
  assert run_config.read(str(tmp_path / "crsd"))["train.num_steps"] == 6   # the record follows


def _fake_complete_stage(stage_dir, recorded):
  os.makedirs(stage_dir, exist_ok=True)
  json.dump({"stage": "crsd"}, open(os.path.join(stage_dir, "summary.json"), "w"))
  if recorded is not None:
    run_config.write(stage_dir, recorded)


def test_all_reuses_a_complete_stage_only_with_its_config(tmp_path, tiny_config, monkeypatch):
  calls = []
  monkeypatch.setattr(all_stage.registry, "run", lambda *a: calls.append(a) or {})
  cfg = tiny_config()
  cfg.all.stages = ["crsd"]
  _fake_complete_stage(str(tmp_path / "crsd"), run_config.for_stage(cfg, "crsd"))
  assert all_stage.run(cfg, str(tmp_path))["seconds_per_stage"] == {"crsd": "skipped (complete)"}
  cfg.crsd.temperature = 0.5
  with pytest.raises(run_config.RunConfigMismatch, match="crsd.temperature: 0.05 -> 0.5"):
    all_stage.run(cfg, str(tmp_path))
  os.remove(tmp_path / "crsd" / run_config.FILENAME)     # a run from before the record existed
  assert all_stage.run(cfg, str(tmp_path))["seconds_per_stage"] == {"crsd": "skipped (complete)"}
  assert calls == []


def test_table_reuses_a_run_only_with_its_config(tmp_path, tiny_config):
  cfg = tiny_config()
  run_dir = tmp_path / "crsd_lambda_0.1" / "seed0"
  trained_with = table._override(cfg, {"crsd.lambda_infonce": 0.5}, seed=0)
  _fake_complete_stage(str(run_dir / "eval"), None)
  _fake_complete_stage(str(run_dir / "crsd"), run_config.for_stage(trained_with, "crsd"))
  with pytest.raises(run_config.RunConfigMismatch, match="crsd.lambda_infonce: 0.5 -> 0.1") as error:
    table.run_student(cfg, str(tmp_path), "crsd_lambda_0.1", seed=0)
  assert f"delete {run_dir} to retrain" in str(error.value)   # the whole run, eval included

  crsd_run = tmp_path / "crsd" / "seed0"                 # reuse never accepts another step count
  _fake_complete_stage(str(crsd_run / "eval"), None)
  _fake_complete_stage(str(crsd_run / "crsd"), run_config.for_stage(
      table._override(cfg, {}, seed=0), "crsd"))
  cfg.train.num_steps += 1
  with pytest.raises(run_config.RunConfigMismatch) as error:
    table.run_student(cfg, str(tmp_path), "crsd", seed=0)
  assert "train.num_steps" in str(error.value) and "lambda" not in str(error.value)


def test_a_new_student_learning_rate_reuses_the_finished_teacher_chain(tmp_path, tiny_config,
                                                                       monkeypatch):
  """Each stage records its own optimiser section: student.optim is no teacher's business."""
  calls = []
  monkeypatch.setattr(all_stage.registry, "run", lambda stage, *a: calls.append(stage) or {})
  cfg = tiny_config()
  teachers = ("cpt", "sft", "reward", "dpo")
  cfg.all.stages = teachers + ("crsd",)
  for stage in cfg.all.stages:
    _fake_complete_stage(str(tmp_path / stage), run_config.for_stage(cfg, stage))
    assert "cpt.optim.learning_rate" not in run_config.for_stage(cfg, stage) or stage == "cpt"
  assert run_config.for_stage(cfg, "cpt")["cpt.optim.learning_rate"] == cfg.cpt.optim.learning_rate
  cfg.student.optim.learning_rate *= 2
  with pytest.raises(run_config.RunConfigMismatch, match="student.optim.learning_rate") as error:
    all_stage.run(cfg, str(tmp_path))                    # the teachers pass, the student does not
  assert str(tmp_path / "crsd") in str(error.value)
  cfg.all.stages = teachers
  assert all_stage.run(cfg, str(tmp_path))["seconds_per_stage"] == {
      s: "skipped (complete)" for s in teachers}
  assert calls == []
