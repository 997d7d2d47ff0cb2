"""Golden-value tests: teacher LM losses, preference losses, reward-model losses and heads.

Each loss is checked against an independent float64 NumPy (or PyTorch) computation written from
the formula, plus hand-computed constants.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rd_jax.losses import lm, preference, reward
from rd_jax.models.reward_heads import RewardHeads, last_token_index

RTOL, ATOL = 1e-5, 1e-5


def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def np_neg_log_sigmoid(x):
  return np.logaddexp(0.0, -np.asarray(x, np.float64))


@pytest.fixture
def lm_batch():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32) * 3
  targets = rng.integers(0, 7, size=(2, 5)).astype(np.int32)
  mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]], np.float32)
  return logits, targets, mask


# ------------------------------------------------------------------------------------ lm
def test_token_log_probs_matches_numpy(lm_batch):
  logits, targets, _ = lm_batch
  want = np.take_along_axis(np_log_softmax(logits), targets[..., None], -1)[..., 0]
  got = lm.token_log_probs(jnp.asarray(logits), jnp.asarray(targets))
  assert got.dtype == jnp.float32 and got.shape == (2, 5)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_token_log_probs_is_fp32_for_bf16_logits():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(1, 3, 50_000)) * 4, jnp.bfloat16)
  targets = jnp.asarray([[0, 17, 49_999]], jnp.int32)
  got = lm.token_log_probs(logits, targets)
  assert got.dtype == jnp.float32
  # Same as fp64 on the bf16-rounded logits: the upcast happens before the log-sum-exp.
  z = np.asarray(logits.astype(jnp.float32), np.float64)
  want = np.take_along_axis(np_log_softmax(z), np.asarray(targets)[..., None], -1)[..., 0]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
  # The why: a bf16 log-softmax over a 50k vocabulary is off by far more than that.
  bf16 = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None], -1)[..., 0]
  assert np.max(np.abs(np.asarray(bf16, np.float64) - want)) > 1e-2


def test_masked_lm_loss_matches_torch_cross_entropy(lm_batch):
  logits, targets, mask = lm_batch
  ce = torch.nn.functional.cross_entropy(torch.tensor(logits, dtype=torch.float64).reshape(-1, 7),
                                         torch.tensor(targets, dtype=torch.long).reshape(-1),
                                         reduction="none").numpy().reshape(2, 5)
  loss_sum, count = lm.masked_lm_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
  assert float(count) == 6.0
  np.testing.assert_allclose(loss_sum, (ce * mask).sum(), rtol=RTOL)


def test_masked_lm_loss_uniform_logits_is_log_vocab():
  # Hand value: uniform logits over V=8 give -log(1/8) = 2.0794415 per counted token.
  loss_sum, count = lm.masked_lm_loss(jnp.zeros((1, 4, 8)), jnp.zeros((1, 4), jnp.int32),
                                      jnp.asarray([[1, 1, 0, 1]]))
  np.testing.assert_allclose(loss_sum / count, 2.0794415, rtol=1e-6)


def test_next_token_targets_shift_convention():
  tokens = jnp.asarray([[5, 6, 7, 8, 0]], jnp.int32)
  resp = jnp.asarray([[0, 0, 1, 1, 0]], jnp.float32)  # prompt 5 6 | response 7 8 | pad
  targets, tmask = lm.next_token_targets(tokens, resp)
  np.testing.assert_array_equal(targets, [[6, 7, 8, 0, 0]])
  np.testing.assert_array_equal(tmask, [[0, 1, 1, 0, 0]])  # positions 1, 2 predict 7, 8
  # A "model" whose logits at position t put all mass on tokens[t + 1] has zero response loss.
  logits = 100.0 * jax.nn.one_hot(targets, 10)
  loss_sum, count = lm.masked_lm_loss(logits, targets, tmask)
  assert float(count) == 2.0 and float(loss_sum) < 1e-6


def test_sequence_log_prob_sum_and_mean(lm_batch):
  logits, targets, mask = lm_batch
  tok = np.take_along_axis(np_log_softmax(logits), targets[..., None], -1)[..., 0]
  args = (jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
  np.testing.assert_allclose(lm.sequence_log_prob(*args), (tok * mask).sum(-1), rtol=RTOL)
  np.testing.assert_allclose(lm.sequence_mean_log_prob(*args),
                             (tok * mask).sum(-1) / mask.sum(-1), rtol=RTOL)
  empty = lm.sequence_mean_log_prob(args[0], args[1], jnp.zeros((2, 5)))
  np.testing.assert_array_equal(empty, [0.0, 0.0])


# ------------------------------------------------------------------------------------ preference
@pytest.fixture
def pref_batch():
  rng = np.random.default_rng(2)
  pc, pr, rc, rr = (rng.normal(size=4) * 5 - 40 for _ in range(4))
  w = np.array([1.0, 1.0, 0.5, 0.0])  # a half-weight row and a padding row
  return [x.astype(np.float32) for x in (pc, pr, rc, rr, w)]


def np_weighted_mean(x, w):
  return float((x * w).sum() / w.sum())


def test_dpo_matches_numpy(pref_batch):
  pc, pr, rc, rr, w = pref_batch
  beta = 0.1
  x = beta * ((pc - rc) - (pr - rr))
  loss_sum, count, m = preference.dpo_loss(pc, pr, rc, rr, beta=beta, weights=w)
  np.testing.assert_allclose(loss_sum, (np_neg_log_sigmoid(x) * w).sum(), rtol=RTOL)
  assert float(count) == 2.5
  rew_c, rew_r = beta * (pc - rc), beta * (pr - rr)
  want = {
      "reward_accuracy": np_weighted_mean((rew_c > rew_r).astype(np.float64), w),
      "reward_margin": np_weighted_mean(rew_c - rew_r, w),
      "reward_chosen": np_weighted_mean(rew_c, w),
      "reward_rejected": np_weighted_mean(rew_r, w),
      "logp_chosen": np_weighted_mean(pc, w),
      "logp_rejected": np_weighted_mean(pr, w),
      "kl_estimate": np_weighted_mean(pc - rc, w),
  }
  assert set(m) == set(want)
  for k, v in want.items():
    np.testing.assert_allclose(m[k], v, rtol=RTOL, atol=ATOL, err_msg=k)


def test_preference_hand_values():
  z = jnp.zeros(3)
  s, n, m = preference.dpo_loss(z, z, z, z, beta=0.1)
  np.testing.assert_allclose(s / n, 0.693147, atol=1e-6)          # -log sigmoid(0) = log 2
  assert float(m["reward_accuracy"]) == 0.0                       # ties are not "correct"
  s, n, _ = preference.ipo_loss(z, z, z, z, beta=0.1)
  np.testing.assert_allclose(s / n, 25.0, rtol=1e-6)              # (0 - 1/0.2)^2
  s, n, _ = preference.simpo_loss(z, z, beta=2.0, gamma=0.5)
  np.testing.assert_allclose(s / n, 0.974077, atol=1e-6)          # log(1 + e^0.5)
  # DPO with one clear win: x = 0.5 * ((-1 - -2) - (-3 - -1)) = 1.5 -> log(1 + e^-1.5) = 0.201413
  s, n, m = preference.dpo_loss(jnp.array([-1.0]), jnp.array([-3.0]), jnp.array([-2.0]),
                                jnp.array([-1.0]), beta=0.5)
  np.testing.assert_allclose(s, 0.201413, atol=1e-6)
  np.testing.assert_allclose(m["reward_margin"], 1.5, rtol=1e-6)
  assert float(m["reward_accuracy"]) == 1.0


def test_ipo_matches_numpy(pref_batch):
  pc, pr, rc, rr, w = pref_batch
  beta = 0.5
  h = (pc - rc) - (pr - rr)
  loss_sum, count, m = preference.ipo_loss(pc, pr, rc, rr, beta=beta, weights=w)
  np.testing.assert_allclose(loss_sum, (((h - 1 / (2 * beta)) ** 2) * w).sum(), rtol=RTOL)
  np.testing.assert_allclose(m["reward_margin"], np_weighted_mean(beta * h, w), rtol=RTOL)
  np.testing.assert_allclose(m["kl_estimate"], np_weighted_mean(pc - rc, w), rtol=RTOL)


def test_simpo_matches_numpy(pref_batch):
  pc, pr, _, _, w = pref_batch
  beta, gamma = 2.0, 0.7
  pc, pr = pc / 20, pr / 20  # per-token means are O(1)
  loss_sum, count, m = preference.simpo_loss(pc, pr, beta=beta, gamma=gamma, weights=w)
  np.testing.assert_allclose(loss_sum, (np_neg_log_sigmoid(beta * (pc - pr) - gamma) * w).sum(),
                             rtol=RTOL)
  np.testing.assert_allclose(m["reward_margin"], np_weighted_mean(beta * (pc - pr), w), rtol=RTOL)
  assert "kl_estimate" not in m


def test_preference_gradients_match_analytic(pref_batch):
  pc, pr, rc, rr, w = pref_batch
  beta = 0.1
  f = lambda a, b: preference.dpo_loss(a, b, rc, rr, beta=beta, weights=w)[0]
  g_c, g_r = jax.grad(f, argnums=(0, 1))(jnp.asarray(pc), jnp.asarray(pr))
  s = 1.0 / (1.0 + np.exp(beta * ((pc - rc) - (pr - rr))))  # sigmoid(-x)
  np.testing.assert_allclose(g_c, -beta * s * w, rtol=RTOL, atol=1e-7)
  np.testing.assert_allclose(g_r, beta * s * w, rtol=RTOL, atol=1e-7)
  f = lambda a: preference.ipo_loss(a, pr, rc, rr, beta=beta, weights=w)[0]
  h = (pc - rc) - (pr - rr)
  np.testing.assert_allclose(jax.grad(f)(jnp.asarray(pc)), 2 * (h - 5.0) * w, rtol=1e-4)


@pytest.mark.parametrize("gap", [1e4, -1e4])
@pytest.mark.parametrize("name", preference.LOSSES)
def test_extreme_gaps_finite(name, gap):
  beta, gamma = 0.1, 0.5
  pc, pr = jnp.array([gap, 0.0]), jnp.array([0.0, -gap])
  ref = jnp.zeros(2)
  f = lambda a, b: preference.preference_loss(name, a, b, ref, ref, beta=beta, gamma=gamma)[0]
  loss, (g_c, g_r) = jax.value_and_grad(f, argnums=(0, 1))(pc, pr)
  assert np.isfinite(loss) and np.isfinite(g_c).all() and np.isfinite(g_r).all()
  if name == "dpo":  # saturated: gradient -> 0 (win) or -> -beta (loss), never NaN
    np.testing.assert_allclose(g_c, [-beta, -beta] if gap < 0 else [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(loss, 2 * beta * 1e4 if gap < 0 else 0.0, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", preference.LOSSES)
def test_bf16_inputs_computed_in_fp32(name):
  rng = np.random.default_rng(3)
  xs32 = [jnp.asarray(rng.normal(size=4) * 3 - 300, jnp.float32) for _ in range(4)]
  xs16 = [x.astype(jnp.bfloat16) for x in xs32]
  rounded = [x.astype(jnp.float32) for x in xs16]
  kw = dict(beta=0.1, gamma=0.5)
  s16, _, m16 = preference.preference_loss(name, *xs16, **kw)
  s32, _, _ = preference.preference_loss(name, *rounded, **kw)
  assert s16.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in m16.values())
  np.testing.assert_allclose(s16, s32, rtol=1e-6)
  grad = jax.grad(lambda a: preference.preference_loss(name, a, *xs16[1:], **kw)[0])(xs16[0])
  assert np.isfinite(np.asarray(grad, np.float32)).all()


def test_dispatcher_and_jit(pref_batch):
  pc, pr, rc, rr, w = pref_batch
  want = preference.dpo_loss(pc, pr, rc, rr, beta=0.1, weights=w)
  f = jax.jit(lambda *a: preference.preference_loss("dpo", *a, beta=0.1, weights=w))
  got = f(pc, pr, rc, rr)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  preference.preference_loss("simpo", pc, pr, beta=2.0, gamma=0.5)  # no reference needed
  with pytest.raises(ValueError, match="dpo.loss must be one of"):
    preference.preference_loss("kto", pc, pr, rc, rr, beta=0.1)
  with pytest.raises(ValueError, match="needs reference"):
    preference.preference_loss("ipo", pc, pr, beta=0.1)
  assert preference.LENGTH_NORMALISED == {"dpo": False, "ipo": True, "simpo": True}


# ------------------------------------------------------------------------------------ reward
def test_bradley_terry_matches_torch_bce():
  rng = np.random.default_rng(4)
  sa, sb = rng.normal(size=(2, 5, 4)).astype(np.float32) * 2
  y = np.array([[1, 0, 0.5, 1]] * 5, np.float32)
  y[2] = [0, 0, 1, 0.5]
  mask = np.ones((5, 4), np.float32)
  mask[4] = [1, 0, 0, 1]
  bce = torch.nn.functional.binary_cross_entropy_with_logits(
      torch.tensor(sa - sb, dtype=torch.float64), torch.tensor(y, dtype=torch.float64),
      reduction="none").numpy()
  loss_sum, count, m = reward.bradley_terry_loss(sa, sb, y, mask)
  np.testing.assert_allclose(loss_sum, (bce * mask).sum(), rtol=RTOL)
  assert float(count) == mask.sum()
  np.testing.assert_allclose(m["loss"], (bce * mask).sum(0) / mask.sum(0), rtol=RTOL)
  decided = mask * (y != 0.5)
  correct = ((sa - sb > 0) == (y > 0.5)) * decided
  np.testing.assert_allclose(m["decided"], decided.sum(0))
  np.testing.assert_allclose(m["accuracy"], correct.sum(0) / np.maximum(decided.sum(0), 1),
                             rtol=RTOL)


def test_bradley_terry_hand_values_and_extremes():
  # d = 0 -> log 2 whatever y; y = 0.5 tie at d = 2 -> 0.5 * (softplus(-2) + softplus(2)).
  s, n, m = reward.bradley_terry_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2)),
                                      jnp.array([[1.0, 0.0]]), jnp.ones((1, 2)))
  np.testing.assert_allclose(s / n, 0.693147, atol=1e-6)
  s, _, m = reward.bradley_terry_loss(jnp.array([[2.0]]), jnp.zeros((1, 1)), jnp.array([[0.5]]),
                                      jnp.ones((1, 1)))
  np.testing.assert_allclose(s, 1.0 + 0.126928, atol=1e-5)
  assert float(m["decided"][0]) == 0.0 and float(m["accuracy"][0]) == 0.0
  big = jnp.array([[1e4, -1e4]])
  f = lambda a: reward.bradley_terry_loss(a, jnp.zeros((1, 2)), jnp.array([[0.0, 1.0]]),
                                          jnp.ones((1, 2)))[0]
  loss, g = jax.value_and_grad(f)(big)
  np.testing.assert_allclose(loss, 2e4, rtol=1e-6)
  np.testing.assert_allclose(g, [[1.0, -1.0]], atol=1e-6)


def test_reward_regression_matches_numpy():
  rng = np.random.default_rng(5)
  pred, target = rng.uniform(size=(2, 3, 4)).astype(np.float32)
  mask = (rng.uniform(size=(3, 4)) > 0.3).astype(np.float32)
  s, n = reward.reward_regression_loss(pred, target, mask)
  np.testing.assert_allclose(s, (mask * (pred - target) ** 2).sum(), rtol=RTOL)
  assert float(n) == mask.sum()


def test_combine_rewards_matches_numpy():
  scores = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 10
  w = [0.4, 0.3, 0.2, 0.1]
  got = reward.combine_rewards(jnp.asarray(scores), w)
  assert got.shape == (2, 3)
  np.testing.assert_allclose(got, scores @ np.array(w), rtol=1e-6)
  np.testing.assert_allclose(reward.combine_rewards(np.ones(4), w), 1.0, rtol=1e-6)


# ------------------------------------------------------------------------------------ heads
def test_reward_heads_pool_last_real_token():
  rng = np.random.default_rng(6)
  hidden = jnp.asarray(rng.normal(size=(3, 5, 8)), jnp.bfloat16)
  mask = jnp.asarray([[1, 1, 1, 0, 0],    # right-padded: last real token at 2
                      [0, 0, 1, 1, 1],    # left-padded: at 4
                      [1, 1, 1, 1, 1]])   # full: at 4
  np.testing.assert_array_equal(last_token_index(mask), [2, 4, 4])
  model = RewardHeads(num_dimensions=4)
  params = model.init(jax.random.PRNGKey(0), hidden, mask)
  out = model.apply(params, hidden, mask)
  assert out.shape == (3, 4) and out.dtype == jnp.float32
  k = np.asarray(params["params"]["heads"]["kernel"], np.float64)
  b = np.asarray(params["params"]["heads"]["bias"], np.float64)
  h = np.asarray(hidden.astype(jnp.float32), np.float64)[np.arange(3), [2, 4, 4]]
  np.testing.assert_allclose(out, h @ k + b, rtol=1e-5, atol=1e-5)
  # Changing a padded position must not change the score.
  out2 = model.apply(params, hidden.at[0, 4].set(9.0), mask)
  np.testing.assert_array_equal(out2, out)
