"""student.match_hint: the lexical-match line written before the item (rd_jax/data/match_hint.py)."""

import pytest

from rd_jax.data import match_hint


def test_hint_lists_the_uncovered_query_words_in_query_order():
  # red: absent; 64gb: "64 GB" joined; cases -> case; for: a stopword; iphone repeated once
  item = "Apple iPhone 13 Case, 64 GB\nColor: Blue"
  assert (match_hint.hint("red iphone 64gb cases for iphone magsafe", item)
          == "match: 3 of 5 query words; missing: red, magsafe.")
  assert match_hint.hint("shoes for men", "Running shoe, men") == "match: all 2 query words."
  assert match_hint.hint("glasses", "Drinking glass") == "match: all 1 query words."
  assert match_hint.hint("boss", "bos") == "match: 0 of 1 query words; missing: boss."  # "ss" kept


def test_long_lists_are_capped_and_modes():
  query = " ".join(f"w{k}" for k in range(12))
  assert match_hint.hint(query, "nothing") == (
      "match: 0 of 12 query words; missing: w0, w1, w2, w3, w4, w5, w6, w7, ....")
  assert match_hint.hinted_item("q", "item text", "") == "item text"
  assert match_hint.hinted_item("red q", "q item", "missing") == (
      "match: 1 of 2 query words; missing: red.\nq item")
  with pytest.raises(ValueError, match="student.match_hint"):
    match_hint.hinted_item("q", "i", "bm25")


def test_unknown_mode_is_refused_by_the_config_check():
  from rd_jax import config as config_lib
  from rd_jax.config_check import ConfigError, validate
  cfg = config_lib.default_config()
  cfg.student.match_hint = "bm25"
  with pytest.raises(ConfigError, match="student.match_hint"):
    validate(cfg)
