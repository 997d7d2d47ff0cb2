"""The student stages end to end on the tiny config: train, resume exactly, evaluate, errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from rd_jax import checkpoint
from rd_jax.stages import crsd, eval as eval_stage
from rd_jax.student import batches as batches_lib, data as data_lib

from conftest import REPO


def small_data(cfg):
  """The tiny config, 4 steps with a checkpoint every 2 (the resume test stops at 2)."""
  cfg.train.num_steps = 4
  cfg.train.checkpoint_every = 2
  return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config):
  workdir = str(tmp_path_factory.mktemp("crsd"))
  cfg = small_data(tiny_config())
  summary = crsd.run(cfg, workdir)
  return cfg, workdir, summary


def test_crsd_writes_the_contract(trained):
  cfg, workdir, summary = trained
  stage = os.path.join(workdir, "crsd")
  for name in ("summary.json", "metrics.jsonl", "valid_metrics.json", "data_report.json",
               "final/COMPLETE", "final/meta.json"):
    assert os.path.exists(os.path.join(stage, name)), name
  assert os.listdir(os.path.join(stage, "tb"))
  logged = [json.loads(l) for l in open(os.path.join(stage, "metrics.jsonl"))]
  assert [r["step"] for r in logged] == [2, 4]
  assert {"loss", "ce_std", "ce_aug", "infonce", "steps_per_s"} <= set(logged[-1])
  assert all(np.isfinite(r["loss"]) for r in logged)
  meta = checkpoint.read_meta(stage)
  assert meta["model"] == "bert" and meta["labels"] == list(cfg.labels)
  assert (meta["max_query_chars"], meta["max_item_chars"]) == (cfg.data.max_query_chars,
                                                               cfg.data.max_item_chars)
  assert 0.0 <= summary["valid_macro_f1"] <= 1.0
  # the decision rule fitted on valid travels with the checkpoint (eval and export apply it)
  assert len(meta["decision_offsets"]) == len(cfg.labels) and meta["decision_offsets"][0] == 0.0
  assert sum(meta["train_label_counts"]) == summary["data"]["train_pairs"]
  assert summary["valid_macro_f1"] >= summary["valid_macro_f1_argmax"]   # fitted to be no worse
  # the honest valid figure: each query fold decided by offsets fitted on the other folds
  valid = json.load(open(os.path.join(stage, "valid_metrics.json")))
  assert valid["macro_f1_crossfit"] == summary["valid_macro_f1_crossfit"]
  assert 0.0 <= summary["valid_macro_f1_crossfit"] <= 1.0


def test_resume_reaches_the_same_params(trained, tmp_path, tiny_config):
  """Stop after 2 steps, restart to 4: params equal the uninterrupted run's bit for bit."""
  cfg, workdir, _ = trained
  first = small_data(tiny_config())
  first.train.stop_after_step = 2                      # as if killed after step 2's checkpoint
  assert crsd.run(first, str(tmp_path)) == {"stage": "crsd", "interrupted_at": 2}
  assert not os.path.exists(tmp_path / "crsd" / "final")
  crsd.run(small_data(tiny_config()), str(tmp_path))   # resumes from step 2's checkpoint
  resumed, _ = checkpoint.load_final(str(tmp_path / "crsd"))
  straight, _ = checkpoint.load_final(os.path.join(workdir, "crsd"))
  summary = json.load(open(tmp_path / "crsd" / "summary.json"))
  assert summary["resumed_from"] == 2
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_eval_writes_metrics_and_png(trained):
  cfg, workdir, _ = trained
  out = eval_stage.run(cfg, workdir)
  m = json.load(open(os.path.join(workdir, "eval", "metrics.json")))
  assert {"accuracy", "macro_f1", "per_class", "confusion"} <= set(m)
  assert sum(map(sum, m["confusion"])) == m["num_examples"] > 0
  assert set(m["per_class"]) == set(cfg.labels)
  assert out["macro_f1"] == m["macro_f1"]
  png = open(os.path.join(workdir, "eval", "confusion.png"), "rb").read(8)
  assert png == b"\x89PNG\r\n\x1a\n"
  # per-pair predictions, input order, consistent with the confusion matrix they came from
  rows = [json.loads(line) for line in open(os.path.join(workdir, "eval", "predictions.jsonl"))]
  assert len(rows) == m["num_examples"]
  index = {c: i for i, c in enumerate(cfg.labels)}
  confusion = np.zeros_like(np.asarray(m["confusion"]))
  for r in rows:
    confusion[index[r["label"]], index[r["prediction"]]] += 1
  np.testing.assert_array_equal(confusion, m["confusion"])
  pairs, _, _ = data_lib.load_eval_pairs(cfg, os.path.join(workdir, "eval"))
  assert [(r["query_id"], r["product_id"]) for r in rows] == [(p.query_id, p.product_id)
                                                               for p in pairs]
  # each pair's served probabilities (logits + decision offsets) and the E[gain] nDCG ranks by
  from rd_jax import ranking
  gains = ranking.label_gains(cfg.labels, cfg.eval.get("gains"))
  for r in rows:
    probs = np.asarray([r["scores"][c] for c in cfg.labels])
    assert abs(probs.sum() - 1) < 1e-6 and cfg.labels[int(probs.argmax())] == r["prediction"]
    assert abs(r["expected_gain"] - probs @ gains) < 1e-9
  valid = [json.loads(line) for line in open(os.path.join(workdir, "crsd",
                                                           "valid_predictions.jsonl"))]
  assert len(valid) == json.load(open(os.path.join(workdir, "crsd",
                                                   "valid_metrics.json")))["num_examples"]


def test_eval_path_counts_what_the_training_split_already_holds(trained, tmp_path):
  """eval.path: a file of 3 train-fold queries and 2 test-fold queries -> train_overlap names the 3
  shared queries and their pairs (their figures are not on unseen queries); the test-fold rows
  alone share none."""
  import gzip
  from rd_jax.data import readers
  cfg, workdir, _ = trained
  rows = [json.loads(l) for l in gzip.open(readers.bundled_pairs_path(), "rt")]
  def first_queries(fold, n):
    keep = list(dict.fromkeys(r["query_id"] for r in rows if r["query_fold"] == fold))[:n]
    return [r for r in rows if r["query_id"] in keep]
  seen, unseen = first_queries(cfg.data.train_folds[0], 3), first_queries(cfg.data.test_folds[0], 2)
  for name, chosen, want in (("mixed", seen + unseen, (3, 5, len(seen))), ("unseen", unseen, (0, 2, 0))):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    eval_cfg = cfg.copy_and_resolve_references()
    eval_cfg.eval.path = str(path)
    eval_cfg.eval.checkpoint = os.path.join(workdir, "crsd")
    eval_cfg.eval.references = False
    eval_stage.run(eval_cfg, str(tmp_path / name))
    overlap = json.load(open(tmp_path / name / "eval" / "metrics.json"))["train_overlap"]
    assert (overlap["queries_in_train"], overlap["queries"], overlap["pairs_in_train"]) == want
    assert overlap["pairs"] == len(chosen) and "train folds" in overlap["train"]


def test_eval_on_mismatched_labels_names_them(trained):
  cfg, workdir, _ = trained
  bad = cfg.copy_and_resolve_references()
  bad.labels = ["good", "bad"]
  with pytest.raises(checkpoint.CheckpointError, match="labels"):
    eval_stage.run(bad, workdir)


def test_cli_rejects_unknown_stage_and_key(tmp_path):
  base = [sys.executable, "-m", "rd_jax.main", "--config=configs/tiny.py", f"--workdir={tmp_path}"]
  r = subprocess.run(base + ["--stage=nope"], cwd=REPO, capture_output=True, text=True)
  assert r.returncode != 0 and "nope" in r.stderr
  r = subprocess.run(base + ["--stage=crsd", "--config.crsd.tau=1"], cwd=REPO,
                     capture_output=True, text=True)
  assert r.returncode != 0 and "tau" in r.stderr
  r = subprocess.run(base + ["--stage=crsd", "--config.student.optim.schedule=zigzag"], cwd=REPO,
                     capture_output=True, text=True)
  assert r.returncode != 0 and "student.optim.schedule" in r.stderr
  r = subprocess.run(base + ["--stage=crsd", "--config.optim.learning_rate=1e-4"], cwd=REPO,
                     capture_output=True, text=True)   # the old shared section is gone
  assert r.returncode != 0 and "optim" in r.stderr


def test_export_stage_writes_a_verified_hf_folder(trained):
  from transformers import AutoModelForSequenceClassification
  from rd_jax.stages import export as export_stage
  cfg, workdir, _ = trained
  summary = export_stage.run(cfg, workdir)
  model = AutoModelForSequenceClassification.from_pretrained(summary["output"])
  assert model.config.id2label[0] == cfg.labels[0]
  assert summary["checks"]["max_abs_logit_diff"] <= cfg.export.atol


def test_shuffle_reasoning_is_a_derangement():
  import dataclasses as dc
  from rd_jax.data.schema import Pair
  from rd_jax.student.data import shuffle_reasoning
  pairs = [Pair(query=f"q{i}", item_text="x", label_id=0, reasoning=f"r{i}", query_id=str(i),
                product_id=str(i), fold=1, raw={}) for i in range(50)]
  out = shuffle_reasoning(pairs, seed=3)
  assert sorted(p.reasoning for p in out) == sorted(p.reasoning for p in pairs)
  assert all(a.reasoning != b.reasoning for a, b in zip(pairs, out))
  assert [p.query for p in out] == [p.query for p in pairs]


def test_eval_accepts_a_relative_checkpoint_path(trained, monkeypatch):
  """Orbax reads no metadata from relative paths; the checkpoint layer must not care."""
  cfg, workdir, _ = trained
  monkeypatch.chdir(os.path.dirname(workdir))
  rel = cfg.copy_and_resolve_references()
  rel.eval.checkpoint = os.path.join(os.path.basename(workdir), "crsd")
  assert eval_stage.run(rel, workdir)["macro_f1"] >= 0


def test_baseline_trains_without_the_reasoning_view(tmp_path, tiny_config):
  cfg = small_data(tiny_config())
  cfg.train.num_steps = 2
  data = data_lib.load_student_data(cfg, str(tmp_path), use_reasoning=False)
  batch = next(batches_lib.train_batches(data.train, data.tokenizer, cfg, use_reasoning=False))
  assert not any(k.startswith("aug_") for k in batch) and "std_input_ids" in batch
  summary = crsd.run_baseline(cfg, str(tmp_path))
  logged = [json.loads(l) for l in open(tmp_path / "baseline" / "metrics.jsonl")]
  assert "ce_aug" not in logged[-1] and summary["stage"] == "baseline"


def test_eval_reports_references_ndcg_and_log_loss(trained, capsys):
  cfg, workdir, _ = trained
  cfg = cfg.copy_and_resolve_references()
  cfg.eval.references = True
  out = eval_stage.run(cfg, workdir)
  m = json.load(open(os.path.join(workdir, "eval", "metrics.json")))
  assert "logits" not in m and "predictions" not in m
  assert 0 <= m["ndcg@10"] <= 1 and m["ndcg_queries"] > 0
  assert m["macro_f1_argmax"] == m["macro_f1"]          # no decision_offsets in this meta
  assert m["log_loss"] > 0 and m["prior_log_loss"] > 0
  assert set(m["valid"]) >= {"macro_f1", "ndcg@10", "log_loss"}
  for name in ("majority", "lexical"):
    ref = m["references"][name]
    assert set(ref) >= {"info", "valid", "test"}
    for split in ("valid", "test"):
      assert m["delta_vs_references"][name][split]["macro_f1"] == pytest.approx(
          (m if split == "test" else m["valid"])["macro_f1"] - ref[split]["macro_f1"])
  assert m["references"]["lexical"]["info"]["C"] in m["references"]["lexical"]["info"]["C_grid"]
  assert m["references"]["majority"]["test"]["log_loss"] == pytest.approx(m["prior_log_loss"])
  printed = capsys.readouterr().out
  assert "lexical reference" in printed and "valid nDCG@10" in printed
  assert "lexical reference" in out["table"]
  # the paired query bootstrap: its point estimates are the deltas above, its interval holds them
  for name in ("majority", "lexical"):
    boot = m["paired_bootstrap"][name]
    assert boot["queries"] == m["ndcg_queries"] + m["ndcg_queries_skipped"]
    for metric in ("macro_f1", "ndcg@10"):
      delta = m["delta_vs_references"][name]["test"][metric]
      assert boot[metric]["delta"] == pytest.approx(delta)
      lo, hi = boot[metric]["ci95"]
      assert lo <= hi and boot[metric]["share_a_better"] + boot[metric]["share_b_better"] <= 1
  assert "test: student - lexical reference, macro_f1: " in printed
  assert len(out["paired_bootstrap"]) == 4


def test_eval_applies_the_checkpoints_decision_offsets(trained, tmp_path):
  """meta.json decision_offsets shift the argmax: a large offset on one class predicts it always;
  the raw argmax (macro_f1_argmax) and the raw log-loss do not move."""
  import shutil
  cfg, workdir, _ = trained
  plain = json.load(open(os.path.join(workdir, "eval", "metrics.json")))  # the test above ran eval
  shutil.copytree(os.path.join(workdir, "crsd", "final"), tmp_path / "crsd" / "final")
  meta_path = tmp_path / "crsd" / "final" / "meta.json"
  meta = json.load(open(meta_path))
  meta["decision_offsets"] = [0.0, 0.0, 100.0, 0.0]
  json.dump(meta, open(meta_path, "w"))
  run_cfg = cfg.copy_and_resolve_references()
  run_cfg.eval.references = False
  eval_stage.run(run_cfg, str(tmp_path))
  m = json.load(open(tmp_path / "eval" / "metrics.json"))
  assert np.asarray(m["confusion"])[:, 2].sum() == m["num_examples"]   # all predicted class 2
  assert m["macro_f1_argmax"] == pytest.approx(plain["macro_f1_argmax"])
  assert m["log_loss"] == pytest.approx(plain["log_loss"], rel=1e-5)
  assert m["log_loss_adjusted"] > m["log_loss"] and m["decision_offsets"][2] == 100.0
  assert "references" not in m


def test_match_hint_is_recorded_and_eval_scores_the_checkpoints_inputs(tmp_path, tiny_config):
  """student.match_hint: final/meta.json records it, and eval scores the checkpoint on its own
  input format even under a config without the hint (valid figures equal the stage's own)."""
  cfg = small_data(tiny_config())
  cfg.train.num_steps = 2
  cfg.student.match_hint = "missing"
  crsd.run_baseline(cfg, str(tmp_path))
  assert checkpoint.read_meta(str(tmp_path / "baseline" / "final"))["match_hint"] == "missing"
  stage_valid = json.load(open(tmp_path / "baseline" / "valid_metrics.json"))
  import shutil
  as_crsd = tmp_path / "as_crsd"   # eval reads <workdir>/crsd/final
  shutil.copytree(tmp_path / "baseline" / "final", as_crsd / "crsd" / "final")
  plain_cfg = cfg.copy_and_resolve_references()
  plain_cfg.student.match_hint = ""
  plain_cfg.eval.references = False
  eval_stage.run(plain_cfg, str(as_crsd))
  m = json.load(open(as_crsd / "eval" / "metrics.json"))
  # the same program on the same tokens: equal to float precision (bare items move the tiny
  # model's log-loss by ~5e-6 relative and its nDCG@10 by ~0.01)
  assert m["valid"]["log_loss"] == pytest.approx(stage_valid["log_loss"], rel=1e-9)
  assert m["valid"]["ndcg@10"] == pytest.approx(stage_valid["ndcg@10"], abs=1e-9)


def _test_fold_file(cfg, path, keep_labels=None):
  """The bundled rows of the config's test folds (optionally of some labels only) as a JSONL file."""
  import gzip
  from rd_jax.data import readers
  rows = [json.loads(l) for l in gzip.open(readers.bundled_pairs_path(), "rt")]
  rows = [r for r in rows if r["query_fold"] in cfg.data.test_folds
          and (keep_labels is None or r["label"] in keep_labels)]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return rows


def test_calibrate_refits_the_rule_and_hands_it_to_eval(trained, tmp_path):
  """--stage=calibrate: the student's params unchanged under final/, the rule re-fitted on the
  file (offsets[0] = 0, no worse than the argmax in-sample), the old offsets kept beside it; eval of
  the calibrated checkpoint on the same file reads the in-sample figure calibrate reported."""
  from rd_jax.stages import calibrate
  cfg, workdir, _ = trained
  rows = _test_fold_file(cfg, tmp_path / "traffic.jsonl")
  run_cfg = cfg.copy_and_resolve_references()
  run_cfg.calibrate.path = str(tmp_path / "traffic.jsonl")
  run_cfg.calibrate.checkpoint = os.path.join(workdir, "crsd")
  summary = calibrate.run(run_cfg, str(tmp_path))
  m = json.load(open(tmp_path / "calibrate" / "metrics.json"))
  student, calibrated = (checkpoint.read_meta(d) for d in (os.path.join(workdir, "crsd"),
                                                           str(tmp_path / "calibrate")))
  assert calibrated["decision_offsets"] == m["decision_offsets"] and m["decision_offsets"][0] == 0.0
  assert calibrated["decision_offsets_before"] == student["decision_offsets"] == m["decision_offsets_before"]
  assert calibrated["calibrated_on"]["pairs"] == m["pairs"] == len(rows)
  counts = [sum(r["label"] == l for r in rows) for l in cfg.labels]
  assert calibrated["calibrated_on"]["label_counts"] == counts
  assert m["label_mix"]["file"] == pytest.approx([c / len(rows) for c in counts], abs=1e-4)
  assert m["macro_f1"]["after_in_sample"] >= m["macro_f1"]["argmax"]   # the fit starts at 0
  assert m["train_overlap"]["queries_in_train"] == 0 and m["train_overlap"]["pairs"] == len(rows)
  assert m["macro_f1"]["after_crossfit"] is not None and summary["pairs"] == len(rows)
  assert json.load(open(tmp_path / "calibrate" / "summary.json")) == json.loads(json.dumps(summary))
  params = [checkpoint.load_final(d)[0] for d in (os.path.join(workdir, "crsd", "final"),
                                                  str(tmp_path / "calibrate" / "final"))]
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), *params))
  eval_cfg = run_cfg.copy_and_resolve_references()
  eval_cfg.eval.path, eval_cfg.eval.references = str(tmp_path / "traffic.jsonl"), False
  eval_cfg.eval.checkpoint = str(tmp_path / "calibrate")   # the calibrated student, not crsd's
  eval_stage.run(eval_cfg, str(tmp_path / "e"))
  evaluated = json.load(open(tmp_path / "e" / "eval" / "metrics.json"))
  assert evaluated["decision_offsets"] == m["decision_offsets"]
  assert evaluated["macro_f1"] == pytest.approx(m["macro_f1"]["after_in_sample"], abs=1e-12)
  assert evaluated["macro_f1_argmax"] == pytest.approx(m["macro_f1"]["argmax"], abs=1e-12)


def test_calibrate_refuses_what_it_cannot_fit(trained, tmp_path):
  from rd_jax import errors
  from rd_jax.stages import calibrate
  cfg, workdir, _ = trained
  run_cfg = cfg.copy_and_resolve_references()
  with pytest.raises(errors.ConfigError, match="calibrate.path"):
    calibrate.run(run_cfg, str(tmp_path))
  _test_fold_file(cfg, tmp_path / "one.jsonl", keep_labels={cfg.labels[0]})
  run_cfg.calibrate.path = str(tmp_path / "one.jsonl")
  run_cfg.calibrate.checkpoint = os.path.join(workdir, "crsd")
  with pytest.raises(errors.DataError, match="one.jsonl.*one label"):
    calibrate.run(run_cfg, str(tmp_path))
  assert not os.path.exists(tmp_path / "calibrate" / "final")   # nothing half-written
  run_cfg.calibrate.checkpoint = str(tmp_path / "nowhere")
  with pytest.raises(checkpoint.CheckpointError, match="nowhere"):
    calibrate.run(run_cfg, str(tmp_path))
  r = subprocess.run([sys.executable, "-m", "rd_jax.main", "--stage=calibrate",
                      "--config=configs/tiny.py", f"--workdir={tmp_path}",
                      "--config.calibrate.rule=median"], cwd=REPO, capture_output=True, text=True)
  assert r.returncode == 2 and "calibrate.rule" in r.stderr
