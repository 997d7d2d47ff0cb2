"""nDCG@10 (golden values by hand) and the majority / lexical references."""

import numpy as np
import pytest

from rd_jax import ranking, references
from rd_jax.data.schema import Pair

LOG2_3 = np.log2(3.0)


def test_ndcg_golden_by_hand():
  keys = ["a", "a", "a", "b", "b", "c", "c"]
  gold = [1.0, 0.0, 0.1, 0.0, 0.0, 1.0, 0.0]
  scores = [0.2, 0.9, 0.5, 0.3, 0.1, 0.7, 0.7]
  out = ranking.ndcg_at_k(keys, scores, gold, k=10)
  # a: ranked gains (0, 0.1, 1.0): DCG = 0.1/log2(3) + 1/log2(4); IDCG = 1 + 0.1/log2(3)
  ndcg_a = (0.1 / LOG2_3 + 0.5) / (1.0 + 0.1 / LOG2_3)
  # b: all gains 0 -> skipped. c: a tie; each item gets the mean of the discounts 1 and 1/log2(3)
  ndcg_c = 0.5 * (1.0 + 1.0 / LOG2_3)
  np.testing.assert_allclose(out["ndcg"], (ndcg_a + ndcg_c) / 2, rtol=1e-12)
  np.testing.assert_allclose(out["ndcg"], 0.6725696, atol=1e-7)
  assert (out["queries"], out["queries_skipped"]) == (2, 1)
  # k cuts the list: at k=1 query a's top item has gain 0; query c's tie shares rank 0 only
  out1 = ranking.ndcg_at_k(keys, scores, gold, k=1)
  np.testing.assert_allclose(out1["ndcg"], (0.0 + 0.5) / 2)


def test_ndcg_ties_do_not_depend_on_input_order():
  gold = np.array([1.0, 0.1, 0.0, 0.01, 0.0])
  flat = ranking.ndcg_at_k(["q"] * 5, np.zeros(5), gold)["ndcg"]
  flipped = ranking.ndcg_at_k(["q"] * 5, np.zeros(5), gold[::-1])["ndcg"]
  assert flat == pytest.approx(flipped, abs=1e-12)
  assert ranking.ndcg_at_k(["q"] * 5, gold, gold)["ndcg"] == pytest.approx(1.0)


def test_gains():
  np.testing.assert_allclose(ranking.label_gains(["Exact", "Substitute", "Complement", "Irrelevant"]),
                             [1.0, 0.1, 0.01, 0.0])
  np.testing.assert_allclose(ranking.label_gains(["Irrelevant", "Exact", "Complement", "Substitute"]),
                             [0.0, 1.0, 0.01, 0.1])
  np.testing.assert_allclose(ranking.label_gains(["good", "ok", "bad"]), [1.0, 0.5, 0.0])
  np.testing.assert_allclose(ranking.label_gains(["good", "bad"], {"good": 3, "bad": 1}), [3, 1])
  with pytest.raises(ValueError, match="lacks a gain"):
    ranking.label_gains(["good", "bad"], {"good": 1})
  probs = np.array([[0.5, 0.5], [0.0, 1.0]])
  np.testing.assert_allclose(ranking.expected_gain(probs, np.array([1.0, 0.0])), [0.5, 0.0])


def _synthetic(n, seed):
  """Item text carries the label cue (plus noise words); queries repeat across labels."""
  rng = np.random.default_rng(seed)
  cues = ["genuine original", "alternative similar", "accessory for", "unrelated garden"]
  noise = ["red", "blue", "large", "small", "pack", "set", "new", "pro"]
  pairs = []
  for i in range(n):
    y = int(rng.integers(4)) if i % 3 else 0    # class 0 is the majority
    q = f"item{i % 7} {rng.choice(noise)}"
    item = f"{cues[y]} {' '.join(rng.choice(noise, 3))} item{i % 7}"
    pairs.append(Pair(query=q, item_text=item, label_id=y, reasoning=None, query_id=f"q{i % 7}",
                      product_id=f"p{i}", fold=0, raw={}))
  return pairs


def test_references_deterministic_and_lexical_beats_majority():
  labels = ["Exact", "Substitute", "Complement", "Irrelevant"]
  train, valid, test = _synthetic(240, 0), _synthetic(80, 1), _synthetic(80, 2)
  refs = references.fit_references(train, valid, labels, seed=0)
  again = references.fit_references(train, valid, labels, seed=0)
  np.testing.assert_array_equal(refs["lexical"].predict_proba(test),
                                again["lexical"].predict_proba(test))
  assert refs["lexical"].info["C"] in references.C_GRID
  assert set(refs["lexical"].info["valid_macro_f1_by_C"]) == {str(c) for c in references.C_GRID}
  gains = ranking.label_gains(labels)
  lex = references.score(refs["lexical"], test, labels, gains)
  maj = references.score(refs["majority"], test, labels, gains)
  assert refs["majority"].info["label"] == "Exact"
  assert maj["per_class_f1"]["Exact"] > 0 and maj["per_class_f1"]["Irrelevant"] == 0
  assert lex["macro_f1"] > 0.9 > maj["macro_f1"]
  assert lex["ndcg@10"] > maj["ndcg@10"]
  assert lex["log_loss"] < maj["log_loss"]


def test_overlap_features():
  f = references.overlap_features("usb c charger 65w without cable", "65W USB-C charger")
  assert f[0] == pytest.approx(4 / 6)          # usb, c, charger, 65w of 6 query tokens
  assert f[3] == 1.0 and f[4] == 1.0 and f[5] == 1.0 and f[6] == 0.0   # "65" matched; negation
  assert len(f) == 9


def test_no_lexical_reference_without_two_classes_or_a_valid_split():
  labels = ["Exact", "Substitute", "Complement", "Irrelevant"]
  one_class = [p for p in _synthetic(60, 0) if p.label_id == 0]
  assert set(references.fit_references(one_class, _synthetic(20, 1), labels)) == {"majority"}
  assert set(references.fit_references(_synthetic(60, 0), [], labels)) == {"majority"}
