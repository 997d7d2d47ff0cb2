"""Programmatic reward scorers on crafted good/bad responses, and reward-weight validation."""

import math
import subprocess
import sys

import numpy as np
import pytest

from rd_jax import reward_scorers as rs
from rd_jax.losses.reward import combine_rewards, validate_reward_weights

LABELS = ("Exact", "Substitute", "Complement", "Irrelevant")
QUERY = "nike running shoes red size 10"
ITEM = "Nike Air Zoom Pegasus Running Shoe\nBrand: Nike\nColor: Red\nWeight: 9.5 oz"
GOOD = ("The query asks for Nike running shoes in red, size 10. The item is a Nike running shoe, "
        "color Red, 9.5 oz, and it matches the request.\nLabel: Exact")
BAD = ("The item is an Adidas bag in blue with 2 liters of space. It does not match the query "
       "and is unrelated.\nLabel: Exact")


def ctx(parsed_label="Exact", **kw):
  return dict(query=QUERY, item_text=ITEM, gold_label="Exact", labels=LABELS,
              parsed_label=parsed_label, **kw)


def test_scorers_import_no_jax():
  code = "import sys, rd_jax.reward_scorers; print('jax' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------- correctness
@pytest.mark.parametrize("parsed,gold,want", [
    ("Exact", "Exact", 1.0), ("Substitute", "Exact", 2 / 3), ("Complement", "Exact", 1 / 3),
    ("Irrelevant", "Exact", 0.0), ("Complement", "Substitute", 2 / 3),
    ("exact", "Exact", 1.0), (None, "Exact", 0.0), ("Maybe", "Exact", 0.0)])
def test_correctness_graded_by_ordinal_distance(parsed, gold, want):
  got = rs.correctness("...", parsed_label=parsed, gold_label=gold, labels=LABELS)
  assert math.isclose(got, want, abs_tol=1e-12)


def test_correctness_ungraded_and_bad_gold():
  assert rs.correctness("", parsed_label="Substitute", gold_label="Exact", labels=LABELS,
                        graded=False) == 0.0
  with pytest.raises(ValueError, match="gold_label"):
    rs.correctness("", parsed_label="Exact", gold_label="Relevant", labels=LABELS)


# ---------------------------------------------------------------------------------- consistency
def test_consistency_polarity_agreement():
  assert rs.consistency(GOOD, **ctx()) == 1.0
  assert rs.consistency(BAD, **ctx()) == 0.0                  # negative reasoning, Exact label
  assert rs.consistency(BAD, **ctx("Irrelevant")) == 1.0      # same reasoning, Irrelevant label
  assert rs.consistency(GOOD, **ctx(None)) == 0.0
  no_cue = "The item is a shoe.\nLabel: Exact"
  assert rs.consistency(no_cue, **ctx()) == 0.5
  # Mixed cues (different brand, same function) sit closest to Substitute (+1/3) ...
  mixed = "A different brand, but it serves the same purpose.\nLabel: Substitute"
  assert math.isclose(rs.consistency(mixed, **ctx("Substitute")), 1 - (1 / 3) / 2)
  assert rs.consistency(mixed, **ctx("Substitute")) > rs.consistency(mixed, **ctx("Exact"))


def test_consistency_negation_not_double_counted():
  assert rs.reasoning_polarity("It is not relevant to the query.") == -1.0
  assert rs.reasoning_polarity("It doesn't exactly match.") == -1.0
  assert rs.reasoning_polarity("The colour matches and the size fits.") == 1.0


def test_consistency_stated_label_conflict_is_zero():
  text = "The item matches exactly, so the label is Complement.\nLabel: Exact"
  assert rs.consistency(text, **ctx()) == 0.0
  text = "It matches; I would classify it as Exact.\nLabel: Exact"
  assert rs.consistency(text, **ctx()) == 1.0
  # Mentioning another label in passing is not stating it.
  text = "It matches exactly; it is not merely a substitute.\nLabel: Exact"
  assert rs.consistency(text, **ctx()) > 0.5


# ---------------------------------------------------------------------------------- grounding
def test_grounding_good_bad_and_no_claims():
  assert rs.grounding(GOOD, **ctx()) == 1.0
  assert rs.grounding(BAD, **ctx()) == 0.0                    # Adidas, blue, 2 liters: none in text
  assert rs.grounding("It is a good fit for the query.\nLabel: Exact", **ctx()) == 1.0
  half = 'The item is a Nike shoe in "Ocean Blue".\nLabel: Exact'
  assert rs.grounding(half, **ctx()) == 0.5


def test_extract_claims_kinds():
  text = ('The user wants "trail runners" in XL; the KitchenAid mixer and an iPhone case are '
          'black, 12 oz and size 9. Nike starts this sentence.')
  claims = dict((c, k) for k, c in rs.extract_claims(text, LABELS))
  for c in ("trail runners", "xl", "kitchenaid", "iphone", "black", "12 oz", "size 9"):
    assert c in claims, c
  assert "the" not in claims and "nike" not in claims          # sentence-initial words skipped
  assert rs.extract_claims("It is Exact.", LABELS) == []          # label names are not claims


def test_grounding_units_need_number_and_unit():
  item = "Water bottle 500 ml, pack of 2"
  c = dict(query="bottle", item_text=item, labels=LABELS, parsed_label="Exact")
  assert rs.grounding("It holds 500ml.\nLabel: Exact", **c) == 1.0
  assert rs.grounding("It holds 500 oz.\nLabel: Exact", **c) == 0.0
  assert rs.grounding("It holds 1500 ml.\nLabel: Exact", **c) == 0.0
  assert rs.grounding("It is 500 m long.\nLabel: Exact", **c) == 0.0  # "500 ml" is not "500 m"
  assert rs.grounding("A 2 pack.\nLabel: Exact", **c) == 0.0          # "pack of 2" is not "2 pack"


# ---------------------------------------------------------------------------------- form
def test_form_checks():
  assert rs.form(GOOD, **ctx(), max_chars=1000, max_tokens=96) == 1.0
  assert rs.form("", **ctx(None)) == 0.0
  assert rs.form("   \n", **ctx()) == 0.0
  assert rs.form("The item matches.", **ctx(None)) == 0.75      # no parseable label
  assert rs.form("Label: Exact", **ctx()) == 0.75               # no reasoning
  assert rs.form(GOOD, **ctx(), max_chars=20) == 0.75           # over the char budget
  assert rs.form(GOOD, **ctx(), max_tokens=96, num_tokens=97) == 0.75
  loop = "the item is good " * 20 + "\nLabel: Exact"
  assert rs.repeated_ngram_ratio(loop) > 0.9
  assert rs.form(loop, **ctx()) < 0.8
  assert rs.repeated_ngram_ratio("a b c") == 0.0


def test_split_reasoning():
  assert rs.split_reasoning("Because X.\n\nlabel:  Exact.\n\n") == "Because X."
  assert rs.split_reasoning("No label line here") == "No label line here"


# ---------------------------------------------------------------------------------- all + pairs
def test_score_all_and_pair_preferences():
  good = rs.score_all(GOOD, ("Exact", GOOD.rsplit("\n", 1)[0], None), query=QUERY,
                      item_text=ITEM, gold_label="Exact", labels=LABELS, max_tokens=96)
  bad = rs.score_all(BAD, ("Exact", BAD.rsplit("\n", 1)[0], None), query=QUERY, item_text=ITEM,
                     gold_label="Exact", labels=LABELS, max_tokens=96)
  assert list(good) == list(rs.DIMENSIONS)
  assert good == {"correctness": 1.0, "consistency": 1.0, "grounding": 1.0, "form": 1.0}
  assert bad["correctness"] == 1.0 and bad["consistency"] == 0.0 and bad["grounding"] == 0.0
  assert all(0.0 <= v <= 1.0 for v in (*good.values(), *bad.values()))
  assert rs.pair_preferences(good, bad) == [0.5, 1.0, 1.0, 0.5]
  assert rs.pair_preferences(bad, good) == [0.5, 0.0, 0.0, 0.5]
  with pytest.raises(ValueError, match="reward.dimensions"):
    rs.score_all(GOOD, ("Exact", "", None), query=QUERY, item_text=ITEM, gold_label="Exact",
                 labels=LABELS, dimensions=("correctness", "helpfulness"))


# ---------------------------------------------------------------------------------- weights
@pytest.mark.parametrize("weights,match", [
    ([0.5, 0.5], "has 2 values but there are 4"),
    ([0.4, 0.3, float("nan"), 0.1], "must be finite"),
    ([0.4, 0.3, float("inf"), 0.1], "must be finite"),
    ([0.4, -0.3, 0.2, 0.1], "non-negative"),
    ([0, 0, 0, 0], "at least one positive"),
    (["a", 1, 1, 1], "list of numbers"),
])
def test_reward_weights_validation(weights, match):
  with pytest.raises(ValueError, match=match) as e:
    validate_reward_weights(weights, 4)
  assert "reward.weights" in str(e.value)
  with pytest.raises(ValueError, match="reward.weights"):
    combine_rewards(np.zeros((2, 4), np.float32), weights)


def test_reward_weights_valid():
  np.testing.assert_allclose(validate_reward_weights([0.4, 0.3, 0.2, 0.1], 4), [0.4, 0.3, 0.2, 0.1])
  assert validate_reward_weights([1, 0, 0, 0], 4).dtype == np.float32


def test_score_all_with_parse_response():
  prompts = pytest.importorskip("rd_jax.data.prompts")
  for text, want_form in ((GOOD, 1.0), ("The item matches.\nLabel: Maybe", 0.75)):
    parsed = prompts.parse_response(text, LABELS)
    scores = rs.score_all(text, parsed, query=QUERY, item_text=ITEM, gold_label="Exact",
                          labels=LABELS)
    assert scores["form"] == want_form
  assert scores["correctness"] == 0.0 and scores["consistency"] == 0.0
