"""losses/pairwise_rank.py against a plain-Python reference (golden values)."""

import math

import jax.numpy as jnp
import numpy as np

from rd_jax.losses import pairwise_rank

GAINS = np.array([1.0, 0.1, 0.01, 0.0])        # ESCI: Exact, Substitute, Complement, Irrelevant


def _reference(logits, labels, queries, weights):
  def r(z):
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    return math.log(float(p @ GAINS))
  total, count = 0.0, 0
  for i in range(len(labels)):
    for j in range(len(labels)):
      if (queries[i] == queries[j] and GAINS[labels[i]] > GAINS[labels[j]]
          and weights[i] > 0 and weights[j] > 0):
        total += math.log1p(math.exp(-(r(logits[i]) - r(logits[j]))))
        count += 1
  return total, count


def test_log_expected_gain_golden():
  z = np.array([[0.0, 0.0, 0.0, 0.0], [2.0, -1.0, 0.5, 3.0]], np.float32)
  out = np.asarray(pairwise_rank.log_expected_gain(jnp.array(z), jnp.array(GAINS, jnp.float32)))
  np.testing.assert_allclose(out[0], math.log(1.11 / 4), rtol=1e-6)
  p = np.exp(z[1]) / np.exp(z[1]).sum()
  np.testing.assert_allclose(out[1], math.log(p @ GAINS), rtol=1e-5)


def test_pairwise_rank_loss_golden():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(7, 4)).astype(np.float32)
  labels = np.array([0, 1, 3, 0, 2, 3, 1])
  queries = np.array([5, 5, 5, 8, 8, 8, 5])
  weights = np.array([1, 1, 1, 1, 1, 1, 0], np.float32)      # the last row is padding
  total, count = pairwise_rank.pairwise_rank_loss(jnp.array(logits), jnp.array(labels),
                                                  jnp.array(queries), jnp.array(weights), GAINS)
  ref_total, ref_count = _reference(logits, labels, queries, weights)
  assert ref_count == 6 and float(count) == 6            # q5: 0>1, 0>3, 1>3; q8: 0>2, 0>3, 2>3
  np.testing.assert_allclose(float(total), ref_total, rtol=1e-5)


def test_no_pairs_when_queries_differ_or_labels_tie():
  logits = jnp.zeros((3, 4))
  total, count = pairwise_rank.pairwise_rank_loss(logits, jnp.array([0, 1, 0]),
                                                  jnp.array([1, 2, 3]), jnp.ones(3), GAINS)
  assert float(count) == 0 and float(total) == 0
  total, count = pairwise_rank.pairwise_rank_loss(logits[:2], jnp.array([1, 1]), jnp.array([4, 4]),
                                                  jnp.ones(2), GAINS)
  assert float(count) == 0


def test_student_trains_with_the_ranking_term_on_query_groups(tiny_config, tmp_path):
  import json
  from rd_jax.stages import crsd
  cfg = tiny_config()
  cfg.student.rank_weight = 1.0
  cfg.train.query_group_size = 4
  crsd.run(cfg, str(tmp_path), stage="crsd")
  logged = [json.loads(line) for line in open(tmp_path / "crsd" / "metrics.jsonl")]
  pairs = [m["rank_pairs"] for m in logged if "rank_pairs" in m]
  assert pairs and min(pairs) > 0                    # every logged batch had pairs to rank
  assert all(np.isfinite(m["rank_loss"]) for m in logged if "rank_loss" in m)
