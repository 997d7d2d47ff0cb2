"""student.lexical_distill: out-of-fold lexical probabilities (no pair predicted by a model that saw
its query), the soft CE targets (golden, NumPy), alpha 0 = the gold path, the config checks."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from rd_jax import config_check, references
from rd_jax.data import pipeline, readers, tokenize
from rd_jax.losses import classification
from rd_jax.student import data as student_data
from rd_jax.student import lexical_targets


def _splits(cfg, train_queries=8, valid_pairs=80):
  """A small slice of the bundled data: the pairs of the first `train_queries` train queries."""
  pairs, _ = readers.load_pairs("", cfg)
  splits = readers.train_valid_test(pairs, cfg)
  keep = sorted({p.query_id for p in splits["train"]})[:train_queries]
  return [p for p in splits["train"] if p.query_id in keep], splits["valid"][:valid_pairs]


def test_query_folds_are_seeded_balanced_and_order_free():
  ids = [f"q{i}" for i in range(11)] * 3
  a = lexical_targets.query_folds(ids, 4, seed=0)
  assert a == lexical_targets.query_folds(ids[::-1], 4, seed=0)       # order of pairs: no matter
  assert set(a) == set(ids) and sorted(np.bincount(list(a.values()))) == [2, 3, 3, 3]
  assert a != lexical_targets.query_folds(ids, 4, seed=1)
  with pytest.raises(Exception, match="lexical_distill_folds = 12"):
    lexical_targets.query_folds(ids, 12, seed=0)


def test_every_pair_is_predicted_by_a_model_that_never_saw_its_query(tiny_config):
  cfg = tiny_config()
  train, valid = _splits(cfg)
  labels = list(cfg.labels)
  calls = []   # per fit: (queries fitted on, queries predicted, pair ids predicted)

  def spy_fit(fitted_on, valid_pairs, labels, seed):
    ref = references.fit_lexical(fitted_on, valid_pairs, labels, seed=seed, c_grid=(0.3, 1.0))
    call = {"fitted": {p.query_id for p in fitted_on}, "predicted": []}
    calls.append(call)
    predict = ref.predict_proba
    ref.predict_proba = lambda pairs: call["predicted"].extend(pairs) or predict(pairs)
    return ref

  probs, stats = lexical_targets.out_of_fold_probs(train, valid, labels, 3, seed=0,
                                                   fit_fn=spy_fit)
  assert len(calls) == 3 and stats["folds"] == 3 and len(stats["per_fold"]) == 3
  predicted = [(p.query_id, p.product_id) for c in calls for p in c["predicted"]]
  assert sorted(predicted) == sorted((p.query_id, p.product_id) for p in train)  # each pair once
  groups = lexical_targets.query_folds([p.query_id for p in train], 3, seed=0)
  for k, c in enumerate(calls):
    held = {p.query_id for p in c["predicted"]}
    assert held == {q for q, g in groups.items() if g == k}
    assert not held & c["fitted"]                       # the model never saw a query it predicts
    assert c["fitted"] | held == {p.query_id for p in train}
  assert probs.shape == (len(train), len(labels)) and probs.dtype == np.float32
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
  assert 0.0 <= stats["oof_macro_f1"] <= 1.0 and stats["oof_log_loss"] > 0
  assert all(f["C"] in (0.3, 1.0) for f in stats["per_fold"])

  # fold 0's rows are exactly a lexical model fitted without fold 0's queries, in train order
  rows = [i for i, p in enumerate(train) if groups[p.query_id] == 0]
  ref = references.fit_lexical([p for p in train if groups[p.query_id] != 0], valid, labels,
                               c_grid=(0.3, 1.0))
  np.testing.assert_allclose(probs[rows], ref.predict_proba([train[i] for i in rows]), atol=1e-6)


def test_soft_targets_golden():
  gold = np.array([2, 0])
  p = np.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
  expected = np.array([[0.3 * 0.1, 0.3 * 0.2, 0.7 + 0.3 * 0.3, 0.3 * 0.4],
                       [0.7 + 0.3 * 0.25, 0.3 * 0.25, 0.3 * 0.25, 0.3 * 0.25]])
  t = lexical_targets.soft_targets(gold, p, 0.3)
  assert t.dtype == np.float32
  np.testing.assert_allclose(t, expected, atol=1e-7)
  np.testing.assert_allclose(t.sum(-1), 1.0, atol=1e-6)
  np.testing.assert_array_equal(lexical_targets.soft_targets(gold, p, 1.0), p.astype(np.float32))


def test_alpha_zero_is_the_gold_path(tiny_config):
  cfg = tiny_config()
  train, valid = _splits(cfg, train_queries=3, valid_pairs=10)
  report = {}
  assert lexical_targets.with_lexical_targets(train, valid, cfg, report) is train and not report
  # the formula at alpha 0 is the one-hot, and the CE on it is the gold CE (class weights by gold)
  rng = np.random.default_rng(0)
  gold = rng.integers(0, 4, size=6)
  t = lexical_targets.soft_targets(gold, rng.dirichlet(np.ones(4), size=6), 0.0)
  np.testing.assert_array_equal(t, np.eye(4, dtype=np.float32)[gold])
  logits, w = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32), jnp.ones(6)
  cw = [0.5, 1.0, 2.0, 4.0]
  hard = classification.weighted_cross_entropy(logits, jnp.asarray(gold), w, cw)
  soft = classification.weighted_cross_entropy(logits, jnp.asarray(gold), w, cw, targets=t)
  np.testing.assert_allclose(np.asarray(soft), np.asarray(hard), rtol=1e-6)


def test_load_student_data_trains_on_the_mixed_targets(tiny_config, tmp_path, monkeypatch):
  monkeypatch.setattr(references, "fit_lexical", functools.partial(   # one C: seconds
      references.fit_lexical, c_grid=(1.0,)))
  cfg = tiny_config()
  cfg.data.max_train_pairs = 160
  cfg.student.lexical_distill = 0.5
  cfg.student.lexical_distill_folds = 3
  data = student_data.load_student_data(cfg, str(tmp_path), use_reasoning=False)
  stats = data.report["lexical_distill"]
  assert stats["alpha"] == 0.5 and stats["folds"] == 3
  soft = np.asarray([p.soft_label for p in data.train])                 # [N, C]
  gold = np.asarray([p.label_id for p in data.train])
  np.testing.assert_allclose(soft.sum(-1), 1.0, atol=1e-6)
  assert (soft[np.arange(len(gold)), gold] >= 0.5 - 1e-6).all()        # label keeps >= 1 - alpha
  tokens = tokenize.tokenize_pairs(data.train, data.tokenizer, max_len_std=32, max_len_aug=64)
  batch = pipeline.make_batch(tokens, np.array([4, 1]), std_len=32, aug_len=64)
  np.testing.assert_allclose(batch["soft_labels"], soft[[4, 1]], rtol=1e-6)
  np.testing.assert_array_equal(batch["labels"][:2], gold[[4, 1]])     # class weights: by gold


@pytest.mark.parametrize("key,value,message", [
    ("lexical_distill", 1.5, "student.lexical_distill = 1.5"),
    ("lexical_distill", -0.1, "student.lexical_distill = -0.1"),
    ("lexical_distill_folds", 1, "student.lexical_distill_folds = 1"),
])
def test_bad_values_name_their_key(tiny_config, key, value, message):
  cfg = tiny_config()
  cfg.student[key] = value
  with pytest.raises(config_check.ConfigError, match=message):
    config_check.validate(cfg)


def test_teacher_soft_labels_are_refused(tiny_config):
  cfg = tiny_config()
  cfg.student.lexical_distill = 0.5
  cfg.crsd.label_source = "teacher_soft"
  with pytest.raises(config_check.ConfigError, match="teacher_soft"):
    config_check.validate(cfg)
  cfg.crsd.label_source = "gold"
  config_check.validate(cfg)


def test_overlap_model_is_calibrated_and_chooses_c_on_valid_log_loss(tiny_config):
  """references.fit_overlap (student.lexical_distill_model=overlap): unweighted, so at the optimum
  the intercepts' gradient vanishes and its mean train probability is the train label mix (a
  class-balanced model's is not); C is the grid's best valid log-loss, recomputed here."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.preprocessing import StandardScaler
  cfg = tiny_config()
  train, valid = _splits(cfg, train_queries=8, valid_pairs=120)
  labels = list(cfg.labels)
  grid = (0.03, 1.0)
  ref = references.fit_overlap(train, valid, labels, c_grid=grid)
  gold = np.asarray([p.label_id for p in train])
  probs = ref.predict_proba(train)                                      # [N, C]
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-9)
  np.testing.assert_allclose(probs.mean(0), np.bincount(gold, minlength=4) / len(gold), atol=2e-3)
  x = np.asarray([references.overlap_features(p.query, p.item_text) for p in train])
  xv = np.asarray([references.overlap_features(p.query, p.item_text) for p in valid])
  yv = np.asarray([p.label_id for p in valid])
  scaler = StandardScaler().fit(x)
  losses = {}
  for c in grid:
    m = LogisticRegression(C=c, max_iter=3000).fit(scaler.transform(x), gold)
    pv = np.zeros((len(valid), 4))
    pv[:, m.classes_] = m.predict_proba(scaler.transform(xv))
    losses[c] = -np.mean(np.log(np.clip(pv[np.arange(len(yv)), yv], 1e-12, None)))
  assert ref.info["C"] == min(grid, key=lambda c: losses[c])
  assert ref.info["class_weight"] is None and ref.info["features"] == {"overlap": 9}
  for c in grid:
    assert abs(ref.info["valid_log_loss_by_C"][str(c)] - losses[c]) < 1e-3


def test_distilling_the_overlap_model(tiny_config, tmp_path):
  cfg = tiny_config()
  cfg.data.max_train_pairs = 160
  cfg.student.lexical_distill = 0.5
  cfg.student.lexical_distill_folds = 3
  cfg.student.lexical_distill_model = "overlap"
  data = student_data.load_student_data(cfg, str(tmp_path), use_reasoning=False)
  stats = data.report["lexical_distill"]
  assert stats["model"] == "overlap" and all(f["C"] in references.C_GRID for f in stats["per_fold"])
  soft = np.asarray([p.soft_label for p in data.train])
  gold = np.asarray([p.label_id for p in data.train])
  assert (soft[np.arange(len(gold)), gold] >= 0.5 - 1e-6).all()
  off_gold = soft.copy()
  off_gold[np.arange(len(gold)), gold] -= 0.5                      # = 0.5 * p_overlap
  np.testing.assert_allclose(off_gold.sum(-1), 0.5, atol=1e-6)
  cfg.student.lexical_distill_model = "tfidf"
  with pytest.raises(config_check.ConfigError, match="student.lexical_distill_model"):
    config_check.validate(cfg)


def test_overlap_probe_scores_both_overlap_models_beside_the_references(tiny_config):
  from rd_jax.experiments import overlap_probe
  cfg = tiny_config()
  cfg.data.max_train_pairs = 300
  out = overlap_probe.run(cfg)
  assert set(out) == {"overlap_balanced", "overlap_calibrated", "majority", "lexical"}
  splits = references.config_splits(cfg)
  labels = list(cfg.labels)
  calibrated = references.fit_overlap(splits["train"], splits["valid"], labels)
  gold = np.asarray([p.label_id for p in splits["test"]])
  assert out["overlap_calibrated"]["C"] == calibrated.info["C"]
  assert out["overlap_calibrated"]["test"]["log_loss"] == round(
      references.log_loss(calibrated.predict_proba(splits["test"]), gold), 4)
  balanced = references.fit_overlap(splits["train"], splits["valid"], labels, balanced=True)
  by_c = balanced.info["valid_macro_f1_by_C"]
  assert by_c[str(balanced.info["C"])] == max(by_c.values())
  assert out["overlap_balanced"]["valid"]["macro_f1"] == by_c[str(balanced.info["C"])]
