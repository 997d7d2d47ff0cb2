"""Golden-value tests: CE, InfoNCE and the CRSD objective against independent NumPy code."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from rd_jax.losses import classification, crsd, infonce


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_infonce(u, v, tau, keep, w, symmetric):
  """Loop-based reference: row i's softmax over the kept columns, diagonal as positive."""
  u = u / np.linalg.norm(u, axis=1, keepdims=True)
  v = v / np.linalg.norm(v, axis=1, keepdims=True)
  s = u @ v.T / tau

  def direction(s, keep):
    total = 0.0
    for i in range(len(s)):
      if w[i] == 0:
        continue
      cols = [j for j in range(len(s)) if keep[i, j]]
      logits = s[i, cols]
      lse = np.log(np.exp(logits - logits.max()).sum()) + logits.max()
      total += w[i] * (lse - s[i, i])
    return total
  out = direction(s, keep)
  if symmetric:
    out = (out + direction(s.T, keep.T)) / 2
  return out


def test_cross_entropy_golden():
  logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [5.0, -5.0, 0.0]], np.float32)
  labels = np.array([0, 2, 1])
  w = np.array([1.0, 1.0, 0.0], np.float32)  # third row is padding and must not count
  s, n = classification.weighted_cross_entropy(jnp.array(logits), jnp.array(labels), jnp.array(w))
  ref = -(np_log_softmax(logits)[[0, 1], [0, 2]]).sum()
  np.testing.assert_allclose(float(s), ref, rtol=1e-6)
  assert float(n) == 2.0
  # Hand value: uniform logits over 4 classes -> log 4.
  s, n = classification.weighted_cross_entropy(jnp.zeros((1, 4)), jnp.array([3]), jnp.ones(1))
  np.testing.assert_allclose(float(s), np.log(4.0), rtol=1e-6)


def test_soft_target_cross_entropy_golden():
  """teacher_soft: -sum_c q_c log softmax(z + t)_c per row, weighted by w_i * a_{y_i}."""
  logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [5.0, -5.0, 0.0]], np.float32)
  q = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.0, 1.0, 0.0]], np.float32)
  labels = np.array([0, 2, 1])
  w = np.array([1.0, 0.5, 0.0], np.float32)
  a = np.array([1.0, 2.0, 3.0], np.float32)
  t = np.array([0.0, -0.5, 0.25], np.float32)
  s, n = classification.weighted_cross_entropy(jnp.array(logits), jnp.array(labels), jnp.array(w),
                                               a, t, targets=jnp.array(q))
  lp = np_log_softmax(logits.astype(np.float64) + t)
  ref = sum(w[i] * a[labels[i]] * -(q[i] * lp[i]).sum() for i in range(3))
  np.testing.assert_allclose(float(s), ref, rtol=1e-6)
  assert float(n) == 1.5
  # one-hot targets are the hard-label loss
  hard, _ = classification.weighted_cross_entropy(jnp.array(logits), jnp.array(labels), jnp.array(w))
  onehot, _ = classification.weighted_cross_entropy(jnp.array(logits), jnp.array(labels), jnp.array(w),
                                                    targets=jnp.eye(3)[labels])
  np.testing.assert_allclose(float(onehot), float(hard), rtol=1e-6)


def test_kl_golden_and_stop_gradient():
  t = np.array([[1.0, 0.0, -1.0]], np.float32)
  p = np.array([[0.0, 0.5, 0.0]], np.float32)
  s, _ = classification.kl_divergence(jnp.array(t), jnp.array(p), jnp.ones(1))
  lt, lp = np_log_softmax(t), np_log_softmax(p)
  np.testing.assert_allclose(float(s), (np.exp(lt) * (lt - lp)).sum(), rtol=1e-6)
  g = jax.grad(lambda a: classification.kl_divergence(a, jnp.array(p), jnp.ones(1))[0])(jnp.array(t))
  assert np.all(np.asarray(g) == 0)


@pytest.mark.parametrize("symmetric", [True, False])
def test_infonce_golden_with_masks(symmetric):
  rng = np.random.default_rng(0)
  b, d, tau = 6, 5, 0.07
  u, v = rng.normal(size=(b, d)).astype(np.float32), rng.normal(size=(b, d)).astype(np.float32)
  w = np.array([1, 1, 1, 1, 1, 0], np.float32)
  item = np.array([10, 11, 10, 12, 13, 14])   # rows 0 and 2 share an item
  reason = np.array([1, 2, 3, 4, 2, 5])       # rows 1 and 4 share a reasoning
  keep = np.ones((b, b), bool)
  for i in range(b):
    for j in range(b):
      if i != j and (item[i] == item[j] or reason[i] == reason[j]):
        keep[i, j] = False
      if w[i] == 0 or w[j] == 0:
        keep[i, j] = False
  got, n, _ = infonce.info_nce(jnp.array(u), jnp.array(v), jnp.array(w), temperature=tau,
                               symmetric=symmetric, item_key=jnp.array(item),
                               reasoning_key=jnp.array(reason))
  np.testing.assert_allclose(float(got), np_infonce(u, v, tau, keep, w, symmetric), rtol=1e-5)
  assert float(n) == 5.0


def test_infonce_local_block_restricts_negatives():
  rng = np.random.default_rng(1)
  u, v = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
  w = np.ones(4, np.float32)
  keep = np.kron(np.eye(2), np.ones((2, 2))).astype(bool)   # two shards of 2 rows
  got, _, _ = infonce.info_nce(jnp.array(u), jnp.array(v), jnp.array(w), temperature=0.1,
                               local_block=2)
  np.testing.assert_allclose(float(got), np_infonce(u, v, 0.1, keep, w, True), rtol=1e-5)


def test_infonce_hand_value_orthogonal():
  # Two orthonormal pairs aligned with themselves: S = I / tau; loss per row = log(1 + e^{-1/tau}).
  u = jnp.eye(2)
  got, n, m = infonce.info_nce(u, u, jnp.ones(2), temperature=0.5)
  np.testing.assert_allclose(float(got) / float(n), np.log1p(np.exp(-2.0)), rtol=1e-6)
  assert float(m["infonce_top1_sum"]) == 2.0


def test_infonce_stop_gradient_on_aug():
  rng = np.random.default_rng(2)
  u, v = jnp.array(rng.normal(size=(3, 4))), jnp.array(rng.normal(size=(3, 4)))
  f = lambda a, b: infonce.info_nce(a, b, jnp.ones(3), temperature=0.1, stop_grad_aug=True)[0]
  gu, gv = jax.grad(f, argnums=(0, 1))(u, v)
  assert np.abs(np.asarray(gu)).sum() > 0 and np.all(np.asarray(gv) == 0)


def crsd_cfg(**kw):
  return crsd.CrsdLossConfig(**dict(dict(lambda_infonce=0.3, weight_aug_ce=0.7, temperature=0.1,
                                         mask_duplicates=False), **kw))


def test_loss_config_reads_its_keys_from_the_crsd_section():
  from rd_jax.config import default_config
  section = default_config().crsd
  section.lambda_infonce = 0.25
  settings = crsd.CrsdLossConfig.from_config(section)
  assert settings.lambda_infonce == 0.25 and settings == crsd.CrsdLossConfig(lambda_infonce=0.25)


def test_crsd_total_is_weighted_sum():
  rng = np.random.default_rng(3)
  b, c, d = 4, 3, 5
  std = {"logits": rng.normal(size=(b, c)), "cls": rng.normal(size=(b, d))}
  aug = {"logits": rng.normal(size=(b, c)), "cls": rng.normal(size=(b, d))}
  y = np.array([0, 1, 2, 1])
  batch = {"labels": jnp.array(y), "weights": jnp.ones(b)}
  j = lambda o: {k: jnp.array(v, jnp.float32) for k, v in o.items()}
  cfg = crsd_cfg(kl_weight=0.2)
  loss, m = crsd.crsd_loss(j(std), j(aug), batch, cfg)
  ce_s = -np_log_softmax(std["logits"])[np.arange(b), y].mean()
  ce_t = -np_log_softmax(aug["logits"])[np.arange(b), y].mean()
  nce = np_infonce(std["cls"], aug["cls"], 0.1, np.ones((b, b), bool), np.ones(b), True) / b
  lt, ls = np_log_softmax(aug["logits"]), np_log_softmax(std["logits"])
  kl = (np.exp(lt) * (lt - ls)).sum(-1).mean()
  np.testing.assert_allclose(float(loss), ce_s + 0.7 * ce_t + 0.3 * nce + 0.2 * kl, rtol=1e-5)
  np.testing.assert_allclose(float(m["ce_std"]), ce_s, rtol=1e-5)
  base, bm = crsd.crsd_loss(j(std), None, batch, cfg)
  np.testing.assert_allclose(float(base), ce_s, rtol=1e-5)
  assert set(bm) == {"ce_std", "acc_std", "loss"}
