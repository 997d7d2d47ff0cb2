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
