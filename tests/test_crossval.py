"""experiments.crossval: rotating query folds, each run trained and evaluated on its rotation's
folds, pooled figures equal to an independent recomputation from the predictions files."""

import json
import os

import numpy as np
import pytest
from sklearn.metrics import f1_score

from rd_jax.experiments import crossval
from rd_jax.train import run_config

from cue_data import cue_config, write_cue_pairs


def test_every_fold_is_test_once_and_valid_once_and_splits_are_disjoint():
  tests = [f for _, _, test in crossval.ROTATIONS for f in test]
  valids = [f for _, valid, _ in crossval.ROTATIONS for f in valid]
  assert sorted(tests) == sorted(valids) == [1, 2, 3, 4]
  for train, valid, test in crossval.ROTATIONS:
    assert not (set(train) & set(valid) or set(train) & set(test) or set(valid) & set(test))
    assert sorted(train + valid + test) == [1, 2, 3, 4]
  assert crossval.ROTATIONS[0] == ((1, 3), (2,), (4,))   # the library's default split


def test_a_rotation_out_of_range_is_refused(tiny_config):
  with pytest.raises(ValueError, match="rotation 4"):
    crossval.rotation_config(tiny_config(), 4, 0, "baseline", "/tmp/x")


def _read(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def test_rotations_train_on_their_folds_and_pool_as_recomputed(tiny_config, tmp_path):
  cfg = cue_config(tiny_config, write_cue_pairs(tmp_path / "cue.jsonl"))
  cfg.eval.references = True      # to check that pool refits the reference eval fitted
  workdir = str(tmp_path / "cv")
  for k in (0, 1):
    crossval.run_one(cfg, workdir, k, 0, "baseline")
  for k in (0, 1):   # each run recorded its rotation's folds and was evaluated on its test fold
    recorded = run_config.read(os.path.join(workdir, f"r{k}", "seed0", "baseline"))
    train, valid, test = crossval.ROTATIONS[k]
    assert list(recorded["data.train_folds"]) == list(train)
    rows = _read(os.path.join(workdir, f"r{k}", "seed0", "eval", "predictions.jsonl"))
    folds = {1 + int(r["query_id"][1:]) % 4 for r in rows}   # cue_data's query_fold
    assert folds == set(test)
  stamp = os.path.getmtime(os.path.join(workdir, "r0", "seed0", "eval", "summary.json"))
  crossval.run_one(cfg, workdir, 0, 0, "baseline")          # complete: reused, not retrained
  assert os.path.getmtime(os.path.join(workdir, "r0", "seed0", "eval", "summary.json")) == stamp
  changed = cfg.copy_and_resolve_references()
  changed.train.num_steps = 50
  with pytest.raises(Exception, match="num_steps"):
    crossval.run_one(changed, workdir, 0, 0, "baseline")

  result = crossval.pool(cfg, workdir, [0, 1], [0], "baseline")
  gold, pred = [], []
  for k in (0, 1):
    rows = _read(os.path.join(workdir, f"r{k}", "seed0", "eval", "predictions.jsonl"))
    gold += [r["label"] for r in rows]
    pred += [r["prediction"] for r in rows]
    metrics = json.load(open(os.path.join(workdir, f"r{k}", "seed0", "eval", "metrics.json")))
    r = result["rotations"][str(k)]
    assert r["student_macro_f1"][0] == pytest.approx(metrics["macro_f1"], abs=1e-4)
    # the refitted lexical reference is the one eval fitted for this rotation
    assert r["lexical_macro_f1"] == pytest.approx(
        metrics["references"]["lexical"]["test"]["macro_f1"], abs=1e-9)
  pooled = result["pooled"]
  assert pooled["pairs"] == len(gold)
  assert pooled["student_macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro"), abs=1e-9)
  assert pooled["queries"] == result["student_vs_lexical"]["queries"] == 32
  assert result["student_vs_lexical"]["macro_f1"]["delta"] == pytest.approx(
      pooled["student_macro_f1"] - pooled["lexical_macro_f1"], abs=1e-9)
  assert pooled["student_macro_f1"] > pooled["majority_macro_f1"]   # the cue is learnt
  one = result["rotations"]["0"]["one_label_queries"]
  assert 0 <= one["student"][0] <= 1 and 0 <= one["gold"] <= 1
  table = crossval.markdown(result)
  assert "**pooled**" in table and "lexical reference" in table
  with pytest.raises(Exception, match="num_steps"):    # never pools runs of another config
    crossval.pool(changed, workdir, [0, 1], [0], "baseline")
  with pytest.raises(ValueError, match="no complete run"):
    crossval.pool(cfg, workdir, [2, 3], [0], "baseline")


def test_one_label_query_share_by_hand():
  # q1: 10 items, 9 labelled 0 -> one-label (>= 90%); q2: 4 items 3/1 -> not; q3: 1 item -> yes
  queries = ["q1"] * 10 + ["q2"] * 4 + ["q3"]
  labels = [0] * 9 + [2] + [1, 1, 1, 3] + [3]
  assert crossval.one_label_query_share(queries, labels) == pytest.approx(2 / 3)
  assert crossval.one_label_query_share(queries, labels, share=0.7) == 1.0
