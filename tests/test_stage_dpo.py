"""DPO stage: pair selection, the reference pass, the step's golden value at step 0, end to end."""

import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

from rd_jax import checkpoint
from rd_jax.losses import preference
from rd_jax.models import decoder
from rd_jax.stages import dpo, reward
from rd_jax.teacher import sampling

from test_stage_reward import TOY, scripted

DIMS = ["a", "b"]


def _records(n):
  return [{"query": f"q{i}", "query_id": str(i), "product_id": "p", "gold_label": "Exact",
           "prompt": f"prompt {i}",
           "responses": [{"text": f"r{i}{j}", "finished": j != 1} for j in range(3)]}
          for i in range(n)]


def test_pairs_are_best_vs_worst_with_a_margin_filter():
  scores = [np.array([[0.2, 0.0], [0.9, 1.0], [0.1, 0.0]]),   # combined .1 .95 .05: kept
            np.array([[0.5, 0.5], [0.52, 0.5], [0.5, 0.5]]),  # margin .01 < .1: dropped
            np.array([[0.3, 0.3]] * 3)]                        # all equal: dropped
  every = dpo.build_preference_pairs(_records(3), scores, DIMS, [0.5, 0.5])
  assert len(every) == 3  # all written, for inspection
  pairs, dropped = dpo.keep_pairs(every, 0.1)
  assert dropped == {"below_min_margin": 1, "all_equal": 1} and len(pairs) == 1
  p = pairs[0]
  assert (p["chosen"], p["rejected"], p["chosen_finished"]) == ("r01", "r02", False)
  assert p["chosen_scores"] == pytest.approx({"a": 0.9, "b": 1.0})
  assert p["margin"] == pytest.approx(0.95 - 0.05) and len(p["all_rewards"]) == 3
  assert p["chosen_reward"] - p["rejected_reward"] == pytest.approx(p["margin"])
  kept, _ = dpo.keep_pairs(every, 0.0)
  assert len(kept) == 2  # margin 0 keeps the .01 pair, never an all-equal one


def _rows(rng, n=3, length=12):
  """Right-padded chosen/rejected rows with a 4-token prompt and responses of varied length."""
  rows = {}
  for side, lengths in (("chosen", [10, 7, 12]), ("rejected", [6, 12, 9])):
    tokens = rng.integers(1, TOY.vocab_size, size=(n, length)).astype(np.int32)
    mask = (np.arange(length)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    loss = mask * (np.arange(length)[None] >= 4)
    rows.update({f"{side}_tokens": tokens * mask, f"{side}_attention_mask": mask,
                 f"{side}_loss_mask": loss.astype(np.int32)})
  return rows


_init = jax.jit(lambda key: decoder.init_params(TOY, key))
_logits = jax.jit(lambda p, t: decoder.Decoder(TOY).apply({"params": p}, t, decoder.positions_from_mask(
    np.ones(t.shape, np.int32)))[0])


def _direct(params, tokens, mask, loss_mask):
  """log pi(response) of ONE unpadded row from a float64 log-softmax of its logits."""
  n = int(mask.sum())
  logits = _logits(params, tokens[None, :n])
  z = np.asarray(logits[0], np.float64)
  logp = z - z.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  picked = [logp[i, tokens[i + 1]] for i in range(n - 1) if loss_mask[i + 1]]
  return sum(picked), sum(picked) / len(picked)


def test_reference_log_probs_equal_a_direct_computation():
  rng = np.random.default_rng(0)
  params = _init(jax.random.PRNGKey(1))
  rows = _rows(rng)
  ref = dpo.reference_log_probs(params, TOY, rows, batch_size=2)  # 3 rows: the last batch wraps
  for side in dpo.SIDES:
    for i in range(3):
      total, mean = _direct(params, *(rows[f"{side}_{k}"][i] for k in
                                      ("tokens", "attention_mask", "loss_mask")))
      np.testing.assert_allclose(ref[f"ref_{side}_sum"][i], total, rtol=1e-5, atol=1e-4)
      np.testing.assert_allclose(ref[f"ref_{side}_mean"][i], mean, rtol=1e-5, atol=1e-5)
      assert ref[f"ref_{side}_sum"][i].dtype == np.float32


@pytest.mark.parametrize("loss", preference.LOSSES)
def test_step_zero_golden_values(loss):
  """policy == reference: DPO gives log 2, IPO (1 / (2 beta))^2, SimPO -log sigmoid(beta d - g)."""
  rng = np.random.default_rng(0)
  params = _init(jax.random.PRNGKey(1))
  rows = _rows(rng)
  rows.update(dpo.reference_log_probs(params, TOY, rows, batch_size=3))
  beta, gamma = (2.0, 0.5) if loss == "simpo" else (0.1, 0.0)
  _, m = jax.jit(dpo.dpo_loss(TOY, loss=loss, beta=beta, gamma=gamma))(params, rows)
  if loss == "dpo":
    want = math.log(2.0)
  elif loss == "ipo":
    want = (1.0 / (2.0 * beta)) ** 2
  else:
    d = rows["ref_chosen_mean"] - rows["ref_rejected_mean"]
    want = float(np.mean(np.logaddexp(0.0, -(beta * d.astype(np.float64) - gamma))))
  np.testing.assert_allclose(float(m["loss"]), want, rtol=1e-5)
  assert abs(float(m["kl_to_reference"])) < 1e-4
  if loss != "simpo":
    assert float(m["reward_margin"]) == pytest.approx(0.0, abs=1e-5)
  kind = "mean" if preference.LENGTH_NORMALISED[loss] else "sum"
  np.testing.assert_allclose(float(m["logp_chosen"]), rows[f"ref_chosen_{kind}"].mean(),
                             rtol=1e-5)


def test_missing_reward_model_names_the_path(tiny_config, tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match=str(tmp_path / "reward" / "final")):
    dpo.run(tiny_config(), str(tmp_path))


@pytest.fixture(scope="module")
def tiny_dpo(tmp_path_factory, tiny_config):
  mp = pytest.MonkeyPatch()
  mp.setattr(sampling, "sample_responses", scripted)
  workdir = str(tmp_path_factory.mktemp("dpo"))
  try:
    reward.run(tiny_config(), workdir)
    cfg = tiny_config()
    cfg.dpo.optim.learning_rate = 1e-3  # tiny and few steps: let the policy move
    yield cfg, workdir, dpo.run(cfg, workdir)
  finally:
    mp.undo()


def test_dpo_end_to_end_on_tiny(tiny_dpo):
  cfg, workdir, summary = tiny_dpo
  stage = os.path.join(workdir, "dpo")
  for name in ("summary.json", "pairs.jsonl", "prep.json", "metrics.jsonl", "final/COMPLETE"):
    assert os.path.exists(os.path.join(stage, name)), name
  pairs = [json.loads(l) for l in open(os.path.join(stage, "pairs.jsonl"))]
  assert len(pairs) == cfg.dpo.prompts and summary["pairs"] >= cfg.dpo.batch_size
  for key in ("prompt", "chosen", "rejected", "chosen_scores", "rejected_reward", "margin",
              "ref_chosen_sum", "ref_rejected_mean"):
    assert key in pairs[0], key
  assert summary["pairs"] + sum(summary["dropped_prompts"].values()) == len(pairs)
  logged = [json.loads(l) for l in open(os.path.join(stage, "metrics.jsonl"))]
  assert {"loss", "reward_accuracy", "reward_margin", "logp_chosen", "logp_rejected",
          "kl_to_reference"} <= set(logged[-1])
  for when in ("before", "after"):
    q = summary[when]
    assert 0.0 <= q["macro_f1"] <= 1.0 and q["prompts"] == cfg.dpo.eval_prompts
    assert q["parse_rate"] == 1.0  # the scripted greedy answers end with a label line
    assert set(q["reward_model_mean"]) == set(cfg.reward.dimensions) | {"combined"}
  meta = checkpoint.read_meta(stage)
  assert meta["model"] == "decoder" and meta["stage"] == "dpo"
  assert summary["started_from"] == "random"  # no sft/cpt in this workdir: the base model
  assert summary["untrained_reward_dimensions"] == ["grounding"]  # see test_stage_reward


def test_simpo_runs_on_the_pairs_already_built(tiny_dpo, monkeypatch):
  """A fresh dpo/ holding only pairs.jsonl + prep.json reuses them (no sampling at T > 0)."""
  cfg, workdir, first = tiny_dpo
  calls = []
  monkeypatch.setattr(sampling, "sample_responses",
                      lambda *a, **k: calls.append(k["temperature"]) or scripted(*a, **k))
  cfg = cfg.copy_and_resolve_references()
  cfg.dpo.loss = "simpo"
  out = os.path.join(workdir, "simpo")
  os.makedirs(os.path.join(out, "dpo"))
  os.symlink(os.path.join(workdir, "reward"), os.path.join(out, "reward"))
  for name in ("pairs.jsonl", "prep.json"):
    shutil.copy(os.path.join(workdir, "dpo", name), os.path.join(out, "dpo", name))
  summary = dpo.run(cfg, out)
  assert calls == [0.0]  # the after-training greedy evaluation only
  assert summary["loss"] == "simpo" and summary["beta"] == cfg.dpo.simpo_beta
  assert summary["pairs"] == first["pairs"] and summary["before"] == first["before"]
