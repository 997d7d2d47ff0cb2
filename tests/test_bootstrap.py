"""rd_jax.bootstrap: the paired query bootstrap against a brute-force NumPy reference."""

import numpy as np
import pytest

from rd_jax import bootstrap, metrics, ranking


def _data(seed=0, queries=7, per_query=6, classes=4):
  rng = np.random.default_rng(seed)
  keys = np.repeat([f"q{i}" for i in range(queries)], per_query)
  gold = rng.integers(0, classes, len(keys))
  pred_a = np.where(rng.random(len(keys)) < 0.6, gold, rng.integers(0, classes, len(keys)))
  pred_b = rng.integers(0, classes, len(keys))
  return list(keys), gold, pred_a, pred_b


def _gathered_deltas(keys, gold, weights, delta):
  """The reference: per resample, its rows gathered explicitly (a query drawn k times contributes
  its rows k times); delta(f1) with f1(pred) = metrics.classification_metrics' macro-F1 on them."""
  names = list(dict.fromkeys(keys))
  rows = {k: np.flatnonzero(np.asarray(keys) == k) for k in names}
  out = []
  for w in weights:
    idx = np.concatenate([np.tile(rows[k], int(c)) for k, c in zip(names, w)])
    out.append(delta(lambda p: metrics.classification_metrics(gold[idx], p[idx],
                                                              list("ESCI"))["macro_f1"]))
  return out


def test_vectorised_resamples_equal_gathering_the_rows_of_each_resample():
  keys, gold, pred_a, pred_b = _data()
  labels = ["E", "S", "C", "I"]
  out = bootstrap.paired_query_bootstrap(keys, gold, pred_a, pred_b, 4, resamples=50, seed=3)
  deltas = _gathered_deltas(keys, gold, bootstrap.resample_weights(7, 50, 3),
                            lambda f1: f1(pred_a) - f1(pred_b))
  point = (metrics.classification_metrics(gold, pred_a, labels)["macro_f1"]
           - metrics.classification_metrics(gold, pred_b, labels)["macro_f1"])
  assert out["macro_f1"]["delta"] == pytest.approx(point, abs=1e-12)
  assert out["macro_f1"]["ci95"] == pytest.approx(list(np.percentile(deltas, [2.5, 97.5])), abs=1e-12)
  assert out["macro_f1"]["share_a_better"] == pytest.approx(np.mean(np.asarray(deltas) > 0))
  assert out["queries"] == 7 and out["resamples"] == 50


def test_macro_f1_from_confusion_leaves_out_absent_classes_as_metrics_does():
  gold, pred = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])   # classes 2, 3 absent
  conf = np.zeros((4, 4)); np.add.at(conf, (gold, pred), 1)
  expected = metrics.classification_metrics(gold, pred, ["a", "b", "c", "d"])["macro_f1"]
  assert bootstrap.macro_f1_from_confusion(conf) == pytest.approx(expected)
  assert expected == pytest.approx((2 / 3 + 0.8) / 2)           # by hand: F1 2/3 and 4/5


def test_identical_models_differ_by_zero_and_a_perfect_one_wins_every_resample():
  keys, gold, pred_a, _ = _data(seed=1)
  same = bootstrap.paired_query_bootstrap(keys, gold, pred_a, pred_a, 4, resamples=200)
  assert same["macro_f1"]["delta"] == 0 and same["macro_f1"]["ci95"] == [0.0, 0.0]
  assert same["macro_f1"]["share_a_better"] == 0 and same["macro_f1"]["share_b_better"] == 0
  perfect = bootstrap.paired_query_bootstrap(keys, gold, gold, pred_a, 4, resamples=200)
  assert perfect["macro_f1"]["ci95"][0] > 0 and perfect["macro_f1"]["share_a_better"] == 1.0


def test_ndcg_interval_resamples_the_per_query_differences():
  keys, gold, _, _ = _data(seed=2, queries=5)
  gains = np.array([1.0, 0.1, 0.01, 0.0])[gold]
  rng = np.random.default_rng(0)
  a = ranking.ndcg_per_query(keys, rng.random(len(keys)), gains)[0]
  b = ranking.ndcg_per_query(keys, rng.random(len(keys)), gains)[0]
  out = bootstrap.paired_query_bootstrap(keys, gold, gold, gold, 4, ndcg_a=a, ndcg_b=b,
                                         resamples=100, seed=5)
  names = list(dict.fromkeys(keys))
  diff = np.asarray([a[k] - b[k] for k in names])
  weights = bootstrap.resample_weights(5, 100, 5)
  expected = [np.repeat(diff, w).mean() for w in weights]
  assert out["ndcg@10"]["delta"] == pytest.approx(diff.mean())
  assert out["ndcg@10"]["ci95"] == pytest.approx(list(np.percentile(expected, [2.5, 97.5])))
  # ndcg_at_k is the mean of ndcg_per_query
  assert ranking.ndcg_at_k(keys, np.arange(len(keys)), gains)["ndcg"] == pytest.approx(
      np.mean(list(ranking.ndcg_per_query(keys, np.arange(len(keys)), gains)[0].values())))


def test_bad_arguments_are_refused():
  with pytest.raises(ValueError, match="resamples"):
    bootstrap.paired_query_bootstrap(["q"], [0], [0], [0], 2, resamples=0)
  with pytest.raises(ValueError, match="no pairs"):
    bootstrap.paired_query_bootstrap([], [], [], [], 2)


def test_seeds_of_one_recipe_are_averaged_on_each_resample():
  keys, gold, pred_a, pred_b = _data(seed=4)
  other = np.roll(pred_a, 3)
  both = bootstrap.paired_query_bootstrap(keys, gold, np.stack([pred_a, other]), pred_b, 4,
                                          resamples=80, seed=1)
  one = bootstrap.paired_query_bootstrap(keys, gold, pred_a, pred_b, 4, resamples=80, seed=1)
  two = bootstrap.paired_query_bootstrap(keys, gold, other, pred_b, 4, resamples=80, seed=1)
  assert both["seeds_a"] == 2 and one["seeds_a"] == 1
  assert both["macro_f1"]["delta"] == pytest.approx(
      (one["macro_f1"]["delta"] + two["macro_f1"]["delta"]) / 2)
  deltas = _gathered_deltas(keys, gold, bootstrap.resample_weights(7, 80, 1),
                            lambda f1: (f1(pred_a) + f1(other)) / 2 - f1(pred_b))
  assert both["macro_f1"]["ci95"] == pytest.approx(list(np.percentile(deltas, [2.5, 97.5])))


def test_chunked_draws_are_the_same_resamples(monkeypatch):
  """Large splits draw the weights in chunks (memory); the resamples must not change."""
  keys, gold, pred_a, pred_b = _data(seed=6)
  whole = bootstrap.paired_query_bootstrap(keys, gold, pred_a, pred_b, 4, resamples=90, seed=4)
  monkeypatch.setattr(bootstrap, "_CHUNK_ENTRIES", 7 * 8)          # 8 resamples per chunk
  chunked = bootstrap.paired_query_bootstrap(keys, gold, pred_a, pred_b, 4, resamples=90, seed=4)
  assert chunked == whole
  assert len(list(bootstrap._weight_chunks(7, 90, 4))) == 12
