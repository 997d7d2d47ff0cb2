"""Reward stage: pairs from scored samples, Bradley-Terry training, the stage end to end on tiny.

Sampling is replaced by scripted responses (a random tiny decoder writes nothing that parses), so
the scorer values, and hence the pairs, are known.
"""

import json
import os

import jax
import numpy as np
import optax
import pytest

from rd_jax import checkpoint, reward_scorers
from rd_jax.models import decoder
from rd_jax.stages import reward
from rd_jax.teacher import reward_model, sampling
from rd_jax.train import fit, state as state_lib

LABELS = ["Exact", "Substitute", "Complement", "Irrelevant"]
DIMS = list(reward_scorers.DIMENSIONS)
SCRIPT = ["The product matches the query exactly.\nLabel: Exact",
          "The item is unrelated to the query.\nLabel: Irrelevant",
          "It could stand in for it.\nLabel: Substitute",
          "blah blah blah blah blah blah blah blah"]


def scripted(config, params, tokenizer, prompts, *, num_samples, temperature, **_):
  """Stands in for `sampling.sample_responses`: SCRIPT in rotation, every response finished."""
  return [[{"text": SCRIPT[(i + j) % len(SCRIPT)], "finished": True, "num_tokens": 10}
           for j in range(num_samples)] for i in range(len(prompts))]


def test_pairs_from_scripted_responses(tiny_config):
  cfg = tiny_config()
  texts = SCRIPT[:3] + [SCRIPT[0]]  # the duplicate of response 0 ties it on every dimension
  record = {"query": "red shoes", "item_text": "Nike running shoe\nColor: red",
            "gold_label": "Exact",
            "responses": [{"text": t, "finished": True, "num_tokens": 10} for t in texts]}
  sampling.score_record(record, cfg.labels, cfg.reward.dimensions, cfg.teacher.max_response_len)
  scores = [r["scores"] for r in record["responses"]]
  assert [s["correctness"] for s in scores] == pytest.approx([1.0, 0.0, 2 / 3, 1.0])
  assert [r["parsed_label"] for r in record["responses"]] == ["Exact", "Irrelevant",
                                                             "Substitute", "Exact"]
  pairs, all_tie = reward.build_pairs([record], DIMS)
  assert all_tie == 1 and [(p["a"], p["b"]) for p in pairs] == [(0, 1), (0, 2), (1, 2), (1, 3),
                                                                (2, 3)]
  for p in pairs:
    a, b = scores[p["a"]], scores[p["b"]]
    for k, d in enumerate(DIMS):
      tie = abs(a[d] - b[d]) <= reward.TIE_TOL
      assert p["mask"][k] == (0.0 if tie else 1.0), (p, d)
      if not tie:
        assert p["prefer"][k] == float(a[d] > b[d])
  assert pairs[0]["prefer"][0] == 1.0 and pairs[2]["prefer"][0] == 0.0  # Exact > Irr < Subst


TOY = decoder.DecoderConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4,
                            num_kv_heads=2, intermediate_size=48, max_position=64)


def _toy_rows(rng, n):
  """Rows of 8 random tokens ending in 5 ("good") or 7 ("bad"); dimension 0 prefers good,
  dimension 1 prefers bad (independent heads), a half of the pairs put the good one second."""
  good_first = rng.random(n) < 0.5
  tokens = rng.integers(10, 64, size=(2, n, 8)).astype(np.int32)
  tokens[0, :, -1] = np.where(good_first, 5, 7)
  tokens[1, :, -1] = np.where(good_first, 7, 5)
  y = good_first.astype(np.float32)
  ones = np.ones((n, 8), np.int32)
  return {"tokens_a": tokens[0], "mask_a": ones, "tokens_b": tokens[1], "mask_b": ones,
          "prefer": np.stack([y, 1 - y], 1), "pair_mask": np.ones((n, 2), np.float32),
          "target_a": np.zeros((n, 2), np.float32), "target_b": np.zeros((n, 2), np.float32)}


def test_bradley_terry_learns_a_separable_toy():
  rng = np.random.default_rng(0)
  params = {"backbone": jax.jit(lambda k: decoder.init_params(TOY, k))(jax.random.PRNGKey(0)),
            "heads": reward_model.init_heads(TOY, 2, 0)}
  tx = optax.adam(3e-3)
  step = jax.jit(state_lib.gradient_step(reward.reward_loss(TOY, ["good", "bad"], "bradley_terry"),
                                         tx, optax.constant_schedule(3e-3)))
  state = {"params": params, "opt_state": tx.init(params), "step": np.int32(0)}
  held = _toy_rows(rng, 64)
  _, first = step(state, held)
  for _ in range(40):
    state, _ = step(state, _toy_rows(rng, 16))
  _, last = step(state, held)  # metrics of the held-out rows (the returned state is dropped)
  assert float(last["loss"]) < 0.5 * float(first["loss"])
  assert float(last["accuracy/good"]) == 1.0 and float(last["accuracy/bad"]) == 1.0


def test_pairwise_accuracy_counts_decided_pairs_only():
  rec = {"responses": [{"scores": {"x": 1.0, "y": 0.5}}, {"scores": {"x": 0.0, "y": 0.5}},
                       {"scores": {"x": 0.5, "y": 0.0}}]}
  pred = np.array([[2.0, 0.0], [1.0, 9.0], [3.0, 0.0]])
  acc = reward.pairwise_accuracy([rec], [pred], ["x", "y"], [1.0, 0.0])
  assert acc["x"] == {"accuracy": 2 / 3, "pairs": 3}          # (0,1) right, (0,2) wrong, (1,2) right
  assert acc["y"] == {"accuracy": 0.5, "pairs": 2}            # (0,1) tie: not counted
  assert acc["combined"] == acc["x"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_config):
  mp = pytest.MonkeyPatch()
  mp.setattr(sampling, "sample_responses", scripted)
  workdir = str(tmp_path_factory.mktemp("reward"))
  cfg = tiny_config()
  try:
    yield cfg, workdir, reward.run(cfg, workdir)
  finally:
    mp.undo()


def test_stage_writes_final_samples_and_accuracy(tiny_run):
  cfg, workdir, summary = tiny_run
  stage = os.path.join(workdir, "reward")
  for name in ("summary.json", "samples.jsonl", "metrics.jsonl", "final/COMPLETE"):
    assert os.path.exists(os.path.join(stage, name)), name
  records = [json.loads(l) for l in open(os.path.join(stage, "samples.jsonl"))]
  assert [r["split"] for r in records] == ["train"] * 4 + ["valid"] * 2
  assert all(len(r["responses"]) == cfg.reward.samples_per_prompt for r in records)
  assert set(records[0]["responses"][0]["scores"]) == set(DIMS)
  written = json.load(open(os.path.join(stage, "summary.json")))
  assert set(written["valid_accuracy"]) == set(DIMS) | {"combined"}
  assert written["valid_accuracy"]["correctness"]["pairs"] > 0
  assert written["data"]["train"]["pairs"] == 4 * 3  # 3 samples: 3 pairs per prompt, none all-tie
  logged = [json.loads(l) for l in open(os.path.join(stage, "metrics.jsonl"))]
  assert {"loss", "accuracy/correctness", "grad_norm"} <= set(logged[-1])
  meta = checkpoint.read_meta(stage)
  assert meta["model"] == "reward" and meta["dimensions"] == DIMS
  assert meta["weights"] == pytest.approx(list(cfg.reward.weights))
  assert meta["model_config"]["hidden_size"] == cfg.teacher.hidden_size
  # SCRIPT makes no concrete claim: grounding is 1 everywhere, so that head gets no pair
  assert meta["decided_pairs"]["grounding"] == 0 < meta["decided_pairs"]["correctness"]


def test_score_responses_from_final_and_rerun_reuses_samples(tiny_run, monkeypatch):
  cfg, workdir, _ = tiny_run
  rm = reward_model.load_reward_model(os.path.join(workdir, "reward"), fit.make_mesh(cfg))
  records = [json.loads(l) for l in open(os.path.join(workdir, "reward", "samples.jsonl"))]
  prompts = [records[0]["prompt"]] * 3
  scores = reward_model.score_responses(rm.params, rm.config, rm.tokenizer, prompts, SCRIPT[:3],
                                        batch_size=2)
  assert scores.shape == (3, len(DIMS)) and np.isfinite(scores).all()
  one = reward_model.score_responses(rm.params, rm.config, rm.tokenizer, prompts[:1], SCRIPT[1:2])
  np.testing.assert_allclose(one[0], scores[1], atol=1e-5)  # padding does not change a score

  def no_sampling(*a, **k):
    raise AssertionError("samples.jsonl should have been reused")
  monkeypatch.setattr(sampling, "sample_responses", no_sampling)
  cfg2 = cfg.copy_and_resolve_references()
  cfg2.reward.num_steps = 3  # one more step: resumes from the step-2 checkpoint
  summary = reward.run(cfg2, workdir)
  assert summary["data"]["samples_reused"] and summary["resumed_from"] == 2


def test_bad_loss_and_weights_name_their_keys(tiny_config, tmp_path):
  cfg = tiny_config()
  cfg.reward.loss = "hinge"
  with pytest.raises(ValueError, match="reward.loss"):
    reward.run(cfg, str(tmp_path))
  cfg = tiny_config()
  cfg.reward.weights = [1.0, 1.0]
  with pytest.raises(ValueError, match="reward.weights"):
    reward.run(cfg, str(tmp_path))
