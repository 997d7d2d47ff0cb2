"""experiments.interpolate (WiSE-FT) on the tiny config: alpha 1 is the student the eval stage
scores, figure for figure and logit for logit; alpha 0 is the initial encoder under the trained
head; test is scored only with --test, for the chosen alpha and alpha 1."""

import json
import os
import tempfile

import jax
import numpy as np
import pytest

from rd_jax.experiments import interpolate
from rd_jax.stages import crsd, eval as eval_stage
from rd_jax.student import data as data_lib, predict as predict_lib
from rd_jax.student.model import initial_student


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config):
  workdir = str(tmp_path_factory.mktemp("wise"))
  cfg = tiny_config()
  cfg.train.num_steps = 4
  crsd.run(cfg, workdir)
  eval_stage.run(cfg, workdir)            # eval/metrics.json: valid and test figures at alpha 1
  return cfg, workdir


def test_alpha_one_is_the_evaluated_student(trained):
  cfg, workdir = trained
  out = os.path.join(workdir, "wise", "crsd.json")
  result = interpolate.run(cfg, workdir, "crsd", ["0", "0.5", "1.0"], out, test=True)
  assert json.load(open(out)) == result
  evaluated = json.load(open(os.path.join(workdir, "eval", "metrics.json")))
  ours = result["valid"]["1.0"]
  # offsets refitted on valid at alpha 1 are the checkpoint's, so every figure is eval's
  assert ours["decision_offsets"] == result["checkpoint_decision_offsets"]
  for key, value in evaluated["valid"].items():
    assert ours[key] == value, key
  # the honest valid figure of the rule (offsets cross-fitted over query folds), as crsd reports it
  summary = json.load(open(os.path.join(workdir, "crsd", "summary.json")))
  assert ours["macro_f1_crossfit"] == summary["valid_macro_f1_crossfit"]
  for key in ("macro_f1", "macro_f1_argmax", "accuracy", "ndcg@10", "log_loss", "prior_log_loss"):
    assert result["test"]["1.0"][key] == evaluated[key], key
  assert set(result["valid"]) == {"0.0", "0.5", "1.0"}
  assert set(result["test"]) == {str(result["chosen_alpha"]), "1.0"}
  assert result["interpolated"] == ["embeddings", "encoder", "pooler"]
  assert result["kept_finetuned"] == ["classifier"] and result["relative_distance"] > 0


def test_interpolated_params_at_the_ends(trained):
  cfg, workdir = trained
  meta, model, finetuned, mesh = eval_stage.restore_student(cfg, os.path.join(workdir, "crsd"))
  init, _ = interpolate.initial_params(cfg, meta, finetuned)
  same = lambda a, b: jax.tree.map(lambda x, y: np.testing.assert_array_equal(
      np.asarray(x), np.asarray(y)), a, b)
  same(interpolate.interpolate(finetuned, init, 1.0), finetuned)
  start = interpolate.interpolate(finetuned, init, 0.0)
  _, first, _ = initial_student(cfg, jax.random.PRNGKey(cfg.seed))   # what training started from
  for key in ("embeddings", "encoder", "pooler"):
    same(start[key], first[key])
  same(start["classifier"], finetuned["classifier"])                # the head stays fine-tuned
  assert not np.array_equal(np.asarray(first["classifier"]["kernel"]),
                            np.asarray(finetuned["classifier"]["kernel"]))
  # alpha 1's valid logits are the eval stage's (same restore, same forward)
  predict = predict_lib.make_predict_fn(model, mesh)
  pairs = eval_stage.pairs_of(cfg, "valid", os.path.join(workdir, "eval"), meta["item_template"])
  tokenizer = data_lib.load_tokenizer(meta["tokenizer"])
  _, ours = interpolate.score(predict, interpolate.interpolate(finetuned, init, 1.0), pairs,
                              tokenizer, cfg, meta)
  theirs, _ = predict_lib.predict_logits(predict, finetuned, pairs, tokenizer, cfg,
                                         max_len_std=meta["max_len_std"])
  np.testing.assert_array_equal(ours, theirs)


def test_choose_prefers_the_larger_alpha_on_ties():
  valid = {0.5: {"macro_f1": 0.3}, 0.8: {"macro_f1": 0.4}, 1.0: {"macro_f1": 0.4}}
  assert interpolate.choose(valid) == 1.0
  assert interpolate.choose({0.5: {"macro_f1": 0.5}, 1.0: {"macro_f1": 0.4}}) == 0.5


def test_decision_gap_reproduces_eval_and_bounds_the_rule(trained, tmp_path, monkeypatch):
  """experiments.decision_gap: its shipped-rule and argmax figures are eval's test figures for
  the student and the lexical reference; the in-sample (oracle) offsets are never below them."""
  from rd_jax.experiments import decision_gap
  cfg, workdir = trained
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  out = decision_gap.run(cfg, [os.path.join(workdir, "crsd")], "test", folds=2)
  assert list(tmp_path.iterdir()) == []           # its scratch folder is removed on return
  evaluated = json.load(open(os.path.join(workdir, "eval", "metrics.json")))
  row = out["students"][os.path.join(workdir, "crsd")]
  assert row["valid_offsets"] == round(evaluated["macro_f1"], 4)
  assert row["argmax"] == round(evaluated["macro_f1_argmax"], 4)
  assert row["oracle"] >= max(row["argmax"], row["valid_offsets"])
  from rd_jax import ranking, references
  refs, splits = references.fit_for_config(cfg)          # as eval fits it (off in tiny's eval)
  lexical = references.score(refs["lexical"], splits["test"], list(cfg.labels),
                             ranking.label_gains(cfg.labels))["macro_f1"]
  assert out["lexical_reference"]["argmax"] == round(lexical, 4)
  assert out["lexical_reference"]["oracle"] >= out["lexical_reference"]["argmax"]


def test_decide_four_ways_golden():
  from rd_jax.experiments import decision_gap
  # class 0 dominates every row by 1.0; the true class is the runner-up in rows 2-5. An offset of
  # +1.1..+1.5 on class 1 decides every row right (the oracle); the given offsets [0, 0] = argmax.
  logits = np.array([[2.0, 0.0], [2.0, 0.5], [2.0, 1.0], [2.0, 1.0], [2.0, 1.2], [2.0, 1.1]])
  gold = np.array([0, 0, 1, 1, 1, 1])
  row = decision_gap.decide_four_ways(logits, gold, ["a", "a", "b", "b", "c", "c"], [0.0, 0.0], 3)
  # argmax: all 0 -> F1(0) = 2*2/(2+6) = 0.5, F1(1) = 0 -> macro 0.25
  assert row["argmax"] == row["valid_offsets"] == 0.25
  assert row["oracle"] == 1.0          # 1.0 + o > 2.0 >= 0.5 + o for o in (1.0, 1.5]
  assert row["crossfit"] is not None and row["crossfit"] <= row["oracle"]
