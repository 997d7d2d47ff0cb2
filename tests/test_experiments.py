"""The experiment table on the tiny config: two variants x two seeds, Markdown + JSON + PNG."""

import json
import os
import subprocess
import sys

import numpy as np

from conftest import REPO


def test_table_runs_and_reports_mean_and_std(tmp_path):
  cmd = [sys.executable, "-m", "rd_jax.experiments.table", "--config=configs/tiny.py",
         f"--workdir={tmp_path}", "--seeds=0,1", "--variants=baseline_gold,crsd_shuffled_reasoning",
         "--config.train.num_steps=2", f"--teacher_workdir={tmp_path / 'teacher'}",
         "--teacher_pairs=4", "--teacher_valid_pairs=4"]   # no cpt/sft/dpo there: the base
                                                           # (random tiny) teacher row only
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  table = json.load(open(tmp_path / "table.json"))
  assert set(table["students"]) == {"baseline_gold", "crsd_shuffled_reasoning"}
  row = table["students"]["baseline_gold"]
  f1s = [run["test_macro_f1"] for run in table["runs"]["baseline_gold"].values()]
  assert row["seeds"] == 2 and abs(row["test_macro_f1_mean"] - sum(f1s) / 2) < 1e-9
  text = (tmp_path / "table.md").read_text()
  assert "| baseline_gold | 2 |" in text and "(train prior; reference)" in text
  assert "lexical TF-IDF" in text and table["students"]["baseline_gold"]["test_ndcg@10_mean"] > 0
  assert list(table["teacher"]) == ["base"] and table["config"]["teacher_pairs"] == 4
  # each variant against the lexical reference, its seeds' mean, on the same query resamples
  versus = row["test_vs_lexical"]
  lexical_f1 = table["references"]["lexical"]["test_macro_f1"]
  assert versus["seeds_a"] == 2 and abs(versus["macro_f1"]["delta"] - (
      row["test_macro_f1_mean"] - lexical_f1)) < 1e-9
  assert versus["macro_f1"]["ci95"][0] <= versus["macro_f1"]["ci95"][1]
  assert "- baseline_gold (mean of 2 seeds) - lexical reference, macro_f1: " in text
  assert table["teacher"]["base"]["valid_pairs"] == 4 and table["teacher"]["base"]["offsets"]
  for run in table["runs"]["baseline_gold"].values():   # the student on the teacher's 4 pairs
    assert 0.0 <= run["teacher_pairs_macro_f1"] <= 1.0
  assert (tmp_path / "table.png").read_bytes()[:4] == b"\x89PNG"
  # resumable: a rerun reuses the complete runs (no summary is rewritten)
  summaries = sorted(tmp_path.glob("*/seed*/*/summary.json"))
  stamps = [p.stat().st_mtime_ns for p in summaries]
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  assert len(summaries) == 8 and [p.stat().st_mtime_ns for p in summaries] == stamps
  # --only_complete trains nothing: it assembles the complete runs and lists the missing ones
  partial = [a for a in cmd if not a.startswith(("--seeds", "--variants"))] + [
      "--seeds=0,1,2", "--variants=baseline_gold,crsd_ce_only", "--only_complete"]
  r = subprocess.run(partial, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  table = json.load(open(tmp_path / "table.json"))
  assert table["missing_runs"] == ["baseline_gold/seed2", "crsd_ce_only/seed0",
                                   "crsd_ce_only/seed1", "crsd_ce_only/seed2"]
  assert set(table["students"]) == {"baseline_gold"} and table["students"]["baseline_gold"][
      "seeds"] == 2 and not (tmp_path / "crsd_ce_only").exists()
  assert "Not run yet (--only_complete), left out: baseline_gold/seed2" in (
      tmp_path / "table.md").read_text()
  assert sorted(tmp_path.glob("*/seed*/*/summary.json")) == summaries


def test_teacher_rows_are_kept_and_recomputed_when_the_checkpoint_changes(tmp_path, tiny_config,
                                                                          monkeypatch):
  import os
  import types

  from rd_jax.experiments import table
  from rd_jax.teacher import eval as teacher_eval, model as teacher_model
  from rd_jax.train import fit
  cfg = tiny_config()
  teacher_dir = tmp_path / "teacher"
  (teacher_dir / "sft" / "final").mkdir(parents=True)
  marker = teacher_dir / "sft" / "final" / "COMPLETE"
  marker.write_text("")
  evaluated = []
  monkeypatch.setattr(fit, "make_mesh", lambda cfg: None)
  monkeypatch.setattr(teacher_model, "load_teacher",
                      lambda cfg, wd, mesh, upstream, explicit: types.SimpleNamespace(
                          config=None, params=explicit, tokenizer=None))

  modes = []

  def fake_eval(config, params, tokenizer, pairs, cfg, offsets=None, fit_offsets=False,
                reasoning="generated"):
    modes.append(reasoning)
    if fit_offsets:   # the valid pass: its offsets go to the test pass
      return {"macro_f1": 0.25, "num_pairs": len(pairs), "offsets": [0.0, 1.0],
              "adjusted": {"macro_f1": 0.3}}
    evaluated.append((params, offsets))
    m = {"macro_f1": 0.5 if params else 0.0, "accuracy": 0.5, "per_class": {"Exact": {"f1": 0.5}}}
    return {**m, "parse_rate": 1.0, "num_pairs": len(pairs), "offsets": offsets, "reasoning": reasoning,
            "adjusted": {**m, "macro_f1": 0.6, "label_distribution": {"Exact": 1.0}}}
  monkeypatch.setattr(teacher_eval, "evaluate_teacher", fake_eval)

  work = str(tmp_path / "table")
  first = table.run_teacher_rows(cfg, str(teacher_dir), 8, work, valid_pairs=4)
  assert list(first) == ["base", "sft"] and len(evaluated) == 2
  assert all(offsets == [0.0, 1.0] for _, offsets in evaluated)   # fitted on valid, used on test
  assert first["sft"]["macro_f1"] == 0.6 and first["sft"]["macro_f1_argmax"] == 0.5
  assert first["sft"]["valid_macro_f1_argmax"] == 0.25 and first["sft"]["valid_pairs"] == 4
  assert table.run_teacher_rows(cfg, str(teacher_dir), 8, work, valid_pairs=4) == first
  assert len(evaluated) == 2                        # both rows reused
  table.run_teacher_rows(cfg, str(teacher_dir), 16, work, valid_pairs=4)
  assert len(evaluated) == 4                        # other pairs: both recomputed
  stat = marker.stat()
  os.utime(marker, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))   # sft retrained
  table.run_teacher_rows(cfg, str(teacher_dir), 16, work, valid_pairs=4)
  assert [p for p, _ in evaluated[4:]] == [str(teacher_dir / "sft" / "final")]
  assert set(modes) == {"generated"} and first["sft"]["reasoning"] == "generated"
  # scored the way the config annotates: a given-rationale config recomputes both rows in that mode
  cfg.annotate.reasoning = "rules"
  rows = table.run_teacher_rows(cfg, str(teacher_dir), 16, work, valid_pairs=4)
  assert len(evaluated) == 7 and modes[-4:] == ["rules"] * 4 and rows["sft"]["reasoning"] == "rules"


def test_reference_rows_and_per_class_columns(tiny_config):
  from rd_jax.data import readers
  from rd_jax.experiments import table
  cfg = tiny_config()
  refs = table.reference_rows(cfg)
  ref = refs["majority"]
  # Independent count: constant prediction of the train majority. Its class has precision = its
  # test share p and recall 1 -> F1 = 2p / (1 + p); every other class present in test has F1 0.
  pairs, _ = readers.load_pairs(cfg.data.path, cfg)
  split = readers.train_valid_test(pairs, cfg)
  train_labels = [cfg.labels[p.label_id] for p in split["train"]]
  majority = max(set(train_labels), key=train_labels.count)
  test_labels = [cfg.labels[p.label_id] for p in split["test"]]
  share = test_labels.count(majority) / len(test_labels)
  present = set(test_labels) | {majority}
  assert ref["label"] == f"always {majority} (train prior; reference)"
  assert ref["test_pairs"] == len(test_labels)
  assert abs(ref["test_accuracy"] - share) < 1e-12
  assert abs(ref["test_macro_f1"] - 2 * share / (1 + share) / len(present)) < 1e-12

  teacher = {"sft": {"macro_f1": 0.4, "accuracy": 0.5, "parse_rate": 1.0,
                     "per_class_f1": {c: 0.1 * i for i, c in enumerate(cfg.labels)}}}
  runs = {s: {"test_macro_f1": 0.2 + s / 10, "test_accuracy": 0.5, "valid_macro_f1": 0.3,
              "valid_macro_f1_crossfit": 0.26 + s / 25,
              "per_class_f1": {c: 0.2 + s / 10 for c in cfg.labels},
              "teacher_pairs_macro_f1": 0.1 + s / 5} for s in (0, 1)}
  rows = table.summarise({"crsd": runs}, teacher)
  assert abs(rows["crsd"]["per_class_f1_mean"][cfg.labels[0]] - 0.25) < 1e-12
  # retention on the teacher's pairs: 0.1 / 0.4 and 0.3 / 0.4
  assert abs(rows["crsd"]["retention_mean"] - 0.5) < 1e-12
  assert abs(rows["crsd"]["retention_std"] - (0.75 - 0.25) / 2 ** 0.5) < 1e-12
  assert refs["lexical"]["test_macro_f1"] > ref["test_macro_f1"]
  assert refs["lexical"]["info"]["C"] in refs["lexical"]["info"]["C_grid"]
  text = table.markdown(rows, teacher, refs, list(cfg.labels))
  lines = text.splitlines()
  assert lines[0].endswith("".join(f" {c} F1 |" for c in cfg.labels))
  assert any(line.startswith(f"| always {majority} (train prior; reference) |") for line in lines)
  assert any(line.startswith("| lexical TF-IDF + overlap LR, C=") for line in lines)
  crsd = next(line for line in lines if line.startswith("| crsd |"))
  assert crsd.count("|") == 10 + len(cfg.labels) and "| 0.250 |" in crsd and "| 0.2000 |" in crsd
  assert "| 0.2500 ± 0.0707 | 0.3000 | 0.2800 |" in crsd   # mean ± sd, valid, cross-fitted valid
  one = table.markdown(table.summarise({"crsd": {0: runs[0]}}, teacher), teacher, refs,
                       list(cfg.labels))
  assert "| crsd | 1 | 0.2000 (one seed) | 0.3000 | 0.2600 |" in one   # no ± 0 for one seed


def test_student_f1_on_the_teachers_pairs_reads_predictions_in_test_order(tmp_path, tiny_config):
  import json

  import pytest

  from rd_jax.experiments import table
  cfg = tiny_config()
  test, positions = table.teacher_sample(cfg, 5)
  assert len(positions) == 5 == len(set(positions.tolist()))
  chosen = set(positions.tolist())
  rows = []
  for i, p in enumerate(test):   # right on the teacher's pairs, wrong everywhere else
    gold = cfg.labels[p.label_id]
    wrong = cfg.labels[(p.label_id + 1) % len(cfg.labels)]
    rows.append({"query_id": p.query_id, "product_id": p.product_id, "label": gold,
                 "prediction": gold if i in chosen else wrong})
  path = tmp_path / "predictions.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert table._macro_f1_at(str(path), positions, cfg, test) == 1.0
  everything = table.teacher_sample(cfg, 0)[1]
  assert table._macro_f1_at(str(path), everything, cfg, test) < 1.0
  path.write_text("".join(json.dumps(r) + "\n" for r in rows[::-1]))
  with pytest.raises(ValueError, match="not in the order"):
    table._macro_f1_at(str(path), positions, cfg, test)


def test_table_refuses_a_teacher_that_did_not_write_the_annotations(tmp_path, tiny_config):
  """Retention divides by the teacher the students distilled from: the bundled annotations name
  their teacher's stage summaries; a workdir whose summaries differ (or lack them) is refused,
  and so is a file whose rows name another teacher_ckpt."""
  import pytest
  from rd_jax.checkpoint import save_final
  from rd_jax.data import readers
  from rd_jax.experiments import provenance
  cfg = tiny_config()
  cfg.data.reasoning_source = "annotations"
  cfg.data.reasoning_path = "bundled_v2"   # a cpt -> sft -> dpo chain's annotations
  teacher = tmp_path / "teacher"
  save_final(str(teacher / "dpo" / "final"), {"w": np.zeros(2)}, {"model": "decoder", "stage": "dpo"})
  with pytest.raises(provenance.TeacherMismatchError, match="another teacher"):
    provenance.check_teacher_wrote_annotations(cfg, str(teacher), "dpo")
  # the same figures as the run that made them (copied from the provenance): accepted
  stages = json.load(open(readers.annotations_provenance_path(
      readers.bundled_annotations_path(cfg.data.reasoning_path))))["stages"]
  for step in ("cpt", "sft", "dpo"):
    (teacher / step).mkdir(exist_ok=True)
    (teacher / step / "summary.json").write_text(json.dumps({**stages[step], "seconds": 1.0}))
  assert provenance.check_teacher_wrote_annotations(cfg, str(teacher), "dpo")["matched_on"] == \
      "stage summaries"
  with pytest.raises(provenance.TeacherMismatchError):   # the base model wrote nothing
    provenance.check_teacher_wrote_annotations(cfg, str(teacher), None)
  # a plain annotations file: its rows' teacher_ckpt must be the table's teacher
  ann = tmp_path / "ann.jsonl"
  ann.write_text(json.dumps({"query_id": "1", "product_id": "p", "teacher_ckpt":
                             str(tmp_path / "other" / "dpo" / "final")}) + "\n")
  cfg.data.reasoning_path = str(ann)
  with pytest.raises(provenance.TeacherMismatchError, match="teacher_ckpt="):
    provenance.check_teacher_wrote_annotations(cfg, str(teacher), "dpo")
  ann.write_text(json.dumps({"teacher_ckpt": str(teacher / "dpo" / "final")}) + "\n")
  assert provenance.check_teacher_wrote_annotations(cfg, str(teacher), "dpo")["matched_on"] == \
      "teacher_ckpt"
  cfg.data.reasoning_source = "rules"
  assert "rules" in provenance.check_teacher_wrote_annotations(cfg, str(teacher), "dpo")["students_read"]


def test_variants_that_would_train_the_crsd_row_again_are_named(tiny_config):
  """With lambda 0 (the demo) the InfoNCE ablations and ce_only are the crsd row: named, not run."""
  from rd_jax.experiments import table
  cfg = tiny_config()
  cfg.crsd.lambda_infonce = 0.5
  assert table.same_as_crsd(cfg, "crsd_lambda_0.5") == (
      "the config already has crsd.lambda_infonce=0.5")
  changed = [v for v in table.VARIANTS if table.same_as_crsd(cfg, v) is None]
  assert "crsd_tau_0.1" in changed and "crsd_stop_grad" in changed and "crsd_ce_only" in changed
  cfg.crsd.lambda_infonce = 0.0
  same = {v: table.same_as_crsd(cfg, v) for v in table.VARIANTS}
  assert sorted(v for v, why in same.items() if why) == [
      "crsd_ce_only", "crsd_stop_grad", "crsd_tau_0.02", "crsd_tau_0.1"]
  assert "acts only through InfoNCE" in same["crsd_tau_0.02"]
  # a variant that sets lambda itself still differs, as do the non-InfoNCE ones
  assert same["crsd_lambda_0.1"] is None and same["crsd_shuffled_reasoning"] is None
  assert same["baseline_gold"] is None and same["crsd"] is None


def test_the_table_refuses_a_requested_variant_that_is_the_crsd_row(tmp_path):
  cmd = [sys.executable, "-m", "rd_jax.experiments.table", "--config=configs/tiny.py",
         f"--workdir={tmp_path}", "--seeds=0", "--variants=crsd,crsd_stop_grad",
         "--config.crsd.lambda_infonce=0.0"]
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2   # a flag mistake (rd_jax/errors.py)
  assert "crsd_stop_grad: crsd.stop_grad_aug acts only through InfoNCE" in r.stderr
  assert not (tmp_path / "crsd").exists()
