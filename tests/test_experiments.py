"""The experiment table on the tiny config: two variants x two seeds, Markdown + JSON + PNG."""

import json
import subprocess
import sys

from conftest import REPO


def test_table_runs_and_reports_mean_and_std(tmp_path):
  cmd = [sys.executable, "-m", "rd_jax.experiments.table", "--config=configs/tiny.py",
         f"--workdir={tmp_path}", "--seeds=0,1", "--variants=baseline_gold,crsd_shuffled_reasoning",
         "--config.train.num_steps=2"]
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  table = json.load(open(tmp_path / "table.json"))
  assert set(table["students"]) == {"baseline_gold", "crsd_shuffled_reasoning"}
  row = table["students"]["baseline_gold"]
  f1s = [run["test_macro_f1"] for run in table["runs"]["baseline_gold"].values()]
  assert row["seeds"] == 2 and abs(row["test_macro_f1_mean"] - sum(f1s) / 2) < 1e-9
  assert "| baseline_gold | 2 |" in (tmp_path / "table.md").read_text()
  assert (tmp_path / "table.png").read_bytes()[:4] == b"\x89PNG"
  # resumable: a rerun reuses the complete runs (no summary is rewritten)
  summaries = sorted(tmp_path.glob("*/seed*/*/summary.json"))
  stamps = [p.stat().st_mtime_ns for p in summaries]
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  assert len(summaries) == 8 and [p.stat().st_mtime_ns for p in summaries] == stamps


def test_teacher_rows_are_kept_and_recomputed_when_the_checkpoint_changes(tmp_path, tiny_config,
                                                                          monkeypatch):
  import os
  import types

  from rd_jax.experiments import table
  from rd_jax.stages import teacher_common, teacher_eval
  cfg = tiny_config()
  teacher_dir = tmp_path / "teacher"
  (teacher_dir / "sft" / "final").mkdir(parents=True)
  marker = teacher_dir / "sft" / "final" / "COMPLETE"
  marker.write_text("")
  evaluated = []
  monkeypatch.setattr(teacher_common, "mesh_for", lambda cfg: None)
  monkeypatch.setattr(teacher_common, "load_teacher",
                      lambda cfg, wd, mesh, upstream, explicit: types.SimpleNamespace(
                          config=None, params=explicit, tokenizer=None))

  def fake_eval(config, params, tokenizer, pairs, cfg):
    evaluated.append(params)
    return {"macro_f1": 0.5 if params else 0.0, "accuracy": 0.5, "parse_rate": 1.0,
            "per_class": {"Exact": {"f1": 0.5}}}
  monkeypatch.setattr(teacher_eval, "evaluate_teacher", fake_eval)

  work = str(tmp_path / "table")
  first = table.run_teacher_rows(cfg, str(teacher_dir), 8, work)
  assert list(first) == ["base", "sft"] and len(evaluated) == 2
  assert table.run_teacher_rows(cfg, str(teacher_dir), 8, work) == first
  assert len(evaluated) == 2                        # both rows reused
  table.run_teacher_rows(cfg, str(teacher_dir), 16, work)
  assert len(evaluated) == 4                        # other pairs: both recomputed
  stat = marker.stat()
  os.utime(marker, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))   # sft retrained
  table.run_teacher_rows(cfg, str(teacher_dir), 16, work)
  assert evaluated[4:] == [str(teacher_dir / "sft" / "final")]
