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


def test_query_log_prior_by_hand():
  # Two queries, two classes. Rows: q0 -> labels 0,0,1; q1 -> label 1.
  # Global prior with half-count smoothing: ((2+.5)/(4+1), (2+.5)/(4+1)) = (0.5, 0.5).
  # smoothing 1 -> pseudo-counts C * p_y = (1, 1): q0 = (2+1, 1+1)/(3+2) = (0.6, 0.4);
  # q1 = (0+1, 1+1)/(1+2) = (1/3, 2/3).
  table = classification.query_log_prior([0, 0, 1, 1], [0, 0, 0, 1], 2, beta=1.0)
  np.testing.assert_allclose(table, np.log([[0.6, 0.4], [1 / 3, 2 / 3]]), rtol=1e-6)
  np.testing.assert_allclose(classification.query_log_prior([0, 0, 1, 1], [0, 0, 0, 1], 2, 0.5),
                             0.5 * np.log([[0.6, 0.4], [1 / 3, 2 / 3]]), rtol=1e-6)
  assert classification.query_log_prior([0, 1], [0, 1], 2, beta=0.0) is None


def test_query_prior_moves_the_query_mix_out_of_the_logits():
  # The product-of-experts objective: with the query's own label mix added to the logits, the
  # CE is minimised by logits that carry only what differs from that mix. A query whose rows are
  # 3:1 class 0 is fitted by z = 0 (the prior expert says it all); without it, z must learn 3:1.
  from rd_jax.stages import crsd  # noqa: F401  (the stage composes the same pieces)
  from rd_jax.data import tokenize
  labels, qidx = np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0])
  table = classification.query_log_prior(labels, qidx, 2, beta=1.0, smoothing=1e-9)
  w = jnp.ones(4)
  zero = jnp.zeros((4, 2))
  with_prior, _ = classification.weighted_cross_entropy(zero, jnp.array(labels), w, None,
                                                        jnp.array(table[qidx]))
  without, _ = classification.weighted_cross_entropy(zero, jnp.array(labels), w)
  entropy = -(3 * np.log(0.75) + np.log(0.25))   # the query's own label entropy x 4 rows
  np.testing.assert_allclose(float(with_prior), entropy, rtol=1e-5)
  np.testing.assert_allclose(float(without), 4 * np.log(2), rtol=1e-6)
  # query_indices numbers queries by first appearance, as the table does
  class P:   # the two attributes query_indices reads
    def __init__(self, q):
      self.query_id = q
  assert tokenize.query_indices([P("b"), P("a"), P("b"), P("c")]).tolist() == [0, 1, 0, 2]


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


def test_group_folds_deal_sorted_queries_round_robin():
  from rd_jax import decision
  fold = decision.group_folds(["b", "a", "c", "a", "d", "b"], 3)
  # sorted distinct: a -> 0, b -> 1, c -> 2, d -> 0
  np.testing.assert_array_equal(fold, [1, 0, 2, 0, 0, 1])
  with pytest.raises(ValueError, match="needs >= 3 queries"):
    decision.group_folds(["a", "b", "a"], 3)


def test_cross_fitted_offsets_decide_each_fold_with_the_other_folds_offsets():
  """Golden: the loop written out by hand; and on logits with no signal the in-sample figure is
  optimistic while the cross-fitted one is not (what student.offsets_crossfit_folds reports)."""
  from rd_jax import decision
  rng = np.random.default_rng(0)
  n, c = 240, 4
  groups = [f"q{i % 12}" for i in range(n)]
  labels = rng.integers(0, c, size=n)
  logits = rng.normal(size=(n, c))
  preds = decision.cross_fitted_predictions(logits, labels, groups, folds=3)
  fold = decision.group_folds(groups, 3)
  for k in range(3):
    held = fold == k
    want = np.argmax(logits[held] + decision.fit_offsets(logits[~held], labels[~held]), -1)
    np.testing.assert_array_equal(preds[held], want)
  in_sample = decision.macro_f1(labels, decision.predict(
      logits, decision.fit_offsets(logits, labels)), c)
  crossfit = decision.macro_f1(labels, preds, c)
  assert in_sample > crossfit + 0.01          # noise fitted in-sample (0.295 vs 0.278 here)
