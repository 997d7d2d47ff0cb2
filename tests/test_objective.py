"""The objective and decision rule that serve macro-F1: class weights, logit adjustment, offsets.

Golden values are computed by hand or with NumPy, independently of the JAX code.
"""

import numpy as np
import jax.numpy as jnp
import pytest

from rd_jax import decision
from rd_jax.losses import classification


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_balanced_class_weights_by_hand():
  # 6 rows of class 0, 2 of class 1, 0 of class 2: n / (C n_c) = 8/(3*6), 8/(3*2), absent -> 0.
  w = classification.class_weights_for([6, 2, 0], "balanced")
  np.testing.assert_allclose(w, [8 / 18, 8 / 6, 0.0])
  # mean over the training rows is 1 when every class is present: the loss keeps its scale
  w2 = classification.class_weights_for([6, 2], "balanced")
  assert abs((6 * w2[0] + 2 * w2[1]) / 8 - 1.0) < 1e-12
  assert classification.class_weights_for([6, 2], "none") is None
  assert classification.class_weights_for([6, 2], "given", (1.0, 3.0)) == [1.0, 3.0]
  with pytest.raises(ValueError, match="class_weights"):
    classification.class_weights_for([6, 2], "given", (1.0,))
  with pytest.raises(ValueError, match="none\\|balanced\\|given"):
    classification.class_weights_for([6, 2], "inverse")


def test_weighted_and_adjusted_cross_entropy_golden():
  logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [5.0, -5.0, 0.0]], np.float32)
  labels = np.array([0, 2, 1])
  w = np.array([1.0, 1.0, 0.0], np.float32)            # third row is padding
  cw = np.array([0.5, 1.0, 2.0], np.float32)
  adj = np.log(np.array([0.6, 0.3, 0.1])) * 1.0
  s, n = classification.weighted_cross_entropy(jnp.array(logits), jnp.array(labels), jnp.array(w),
                                               cw, adj)
  logp = np_log_softmax(logits + adj)
  ref = -(0.5 * logp[0, 0] + 2.0 * logp[1, 2])
  np.testing.assert_allclose(float(s), ref, rtol=1e-6)
  assert float(n) == 2.0   # the normaliser counts rows, not class weights


def test_log_prior():
  np.testing.assert_allclose(classification.log_prior([3, 1], 1.0), np.log([0.75, 0.25]))
  np.testing.assert_allclose(classification.log_prior([3, 1], 2.0), 2 * np.log([0.75, 0.25]))
  assert classification.log_prior([3, 1], 0.0) is None
  assert np.isfinite(classification.log_prior([3, 0], 1.0)).all()


def test_fitted_offsets_recover_a_shifted_decision_rule():
  # Logits that are right up to a per-class shift: argmax predicts the frequent class; the offsets
  # that undo the shift make it perfect, and the fit finds them (macro-F1 1.0 on these pairs).
  rng = np.random.default_rng(0)
  y = rng.choice(3, size=300, p=[0.6, 0.3, 0.1])
  z = np.eye(3)[y] * 1.0 + np.array([0.0, -1.5, -2.5])  # class 1, 2 pushed down
  assert decision.macro_f1(y, decision.predict(z), 3) < 0.5
  b = decision.fit_offsets(z, y)
  assert b[0] == 0.0
  assert decision.macro_f1(y, decision.predict(z, b), 3) == 1.0
  # applying the offsets is the same as shifting the classifier's bias (what export folds in)
  np.testing.assert_array_equal(decision.predict(z, b), np.argmax(z + b, -1))


def test_offsets_stay_zero_when_argmax_is_already_best():
  y = np.array([0, 1, 2, 0, 1, 2])
  z = np.eye(3)[y] * 5.0
  np.testing.assert_array_equal(decision.fit_offsets(z, y), np.zeros(3))
  with pytest.raises(ValueError, match="empty"):
    decision.fit_offsets(np.zeros((0, 3)), np.zeros(0, int))
