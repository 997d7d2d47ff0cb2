"""experiments.interpolate (WiSE-FT) on the tiny config: alpha 1 is the student the eval stage
scores, figure for figure and logit for logit; alpha 0 is the initial encoder under the trained
head; test is scored only with --test, for the chosen alpha and alpha 1."""

import json
import os

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
