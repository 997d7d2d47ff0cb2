"""Greedy speculative decoding with n-gram drafts (rd_jax/drafts.py, refill.run(draft_tokens=D)).

The lookup and the acceptance rule by hand; then refill.run with guesses must give exactly the
tokens, ends and label scores it gives without them, while keeping some guesses (fewer steps).
"""

import jax
import numpy as np
import pytest

from rd_jax import drafts, refill
from test_refill import PAD, PREFIX, TAILS, TINY, _eos_for, params  # noqa: F401 (fixture)


def test_context_drafts_from_the_latest_earlier_occurrence():
  c = drafts.Context([1, 2, 3, 9, 1, 2, 4, 5, 6, 1, 2], max_n=3)
  # ends with (1, 2): its latest earlier occurrence is at 4 -> followed by 4 5 6 1 2
  assert c.draft(3) == [4, 5, 6]
  c.append(7)                                     # (2, 7) and (7,) never seen before
  assert c.draft(3) == []
  c = drafts.Context([5, 6, 7, 8, 6], max_n=3)    # (8, 6), (7, 8, 6) unseen; (6,) at 1
  assert c.draft(2) == [7, 8]
  assert c.draft(9) == [7, 8, 6]                  # only what the context holds


def test_shared_table_fills_a_short_own_draft():
  table = drafts.Table(max_n=2, keep=4)
  table.add([3, 4, 10, 11, 12, 13, 14])
  c = drafts.Context([4, 10, 99, 3, 4], max_n=2)  # own: (3, 4) unseen, (4,) -> [10, 99, 3, 4]
  assert c.draft(4) == [10, 99, 3, 4]
  assert c.draft(4, table) == [10, 11, 12, 13]    # the table's (3, 4) is the longer n-gram
  c = drafts.Context([7, 8], max_n=2)
  assert c.draft(2, table) == [] and table.get((3, 4), 2) == [10, 11]


def test_accept_keeps_guesses_while_they_equal_the_argmax():
  assert drafts.accept([5, 6, 7], [5, 6, 9, 1]) == [5, 6, 9]   # 7 != 9: two kept, then 9
  assert drafts.accept([5, 6, 7], [5, 6, 7, 1]) == [5, 6, 7, 1]
  assert drafts.accept([4], [5, 6]) == [5]
  assert drafts.accept([], [8]) == [8]


@pytest.mark.parametrize("slots,d", [(1, 1), (3, 3), (4, 6), (8, 4)])
def test_guesses_do_not_change_tokens_or_scores(params, slots, d):
  prompts = [PREFIX + t for t in TAILS] + [PREFIX + [t[0] + 1] + t for t in TAILS]
  cue = [14, 15]
  cands = [cue + [24], cue + [25, 26]]
  eos = [_eos_for(params, prompts, 16)]
  kw = dict(slots=slots, max_new_tokens=16, eos_ids=eos, pad_id=PAD, stop_ids=cue,
            candidates=cands)
  want = refill.run(TINY, params, prompts, **kw)
  got = refill.run(TINY, params, prompts, draft_tokens=d, **kw)
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_array_equal(got.lengths, want.lengths)
  np.testing.assert_array_equal(got.finished, want.finished)
  np.testing.assert_array_equal(got.stopped, want.stopped)
  np.testing.assert_allclose(got.scores, want.scores, atol=2e-4, rtol=1e-4)
  # some guesses kept; a batch runs until its slowest row, so only one slot must save steps
  assert got.accepted > 0 and got.steps <= want.steps, (got.accepted, got.steps, want.steps)
  if slots == 1:
    assert got.steps == want.steps - got.accepted


def test_sampling_ignores_drafts(params):
  prompts = [PREFIX + t for t in TAILS]
  kw = dict(slots=4, max_new_tokens=6, eos_ids=[], pad_id=PAD, temperature=1.0,
            rng=jax.random.PRNGKey(1))
  a = refill.run(TINY, params, prompts, **kw)
  b = refill.run(TINY, params, prompts, draft_tokens=4, **kw)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert b.accepted == 0


def test_negative_draft_tokens_is_refused(params):
  with pytest.raises(ValueError, match="draft_tokens"):
    refill.run(TINY, params, [PREFIX + [1]], slots=1, max_new_tokens=2, eos_ids=[], pad_id=PAD,
               draft_tokens=-1)


@pytest.mark.parametrize("key,value", [("draft_tokens", -1), ("generate_matmul_dtype", "int8")])
def test_config_refuses_bad_generation_keys(key, value):
  from rd_jax import config as config_lib, config_check
  cfg = config_lib.default_config()
  cfg.teacher[key] = value
  with pytest.raises(config_check.ConfigError, match=f"teacher.{key}"):
    config_check.validate(cfg)


def test_default_generation_keeps_the_teacher_dtype(params, monkeypatch):
  """teacher.generate_matmul_dtype "" (the default) leaves a bf16 teacher (configs/pod.py) in bf16
  and an fp32 one in fp32; "bfloat16" turns an fp32 teacher's matmuls mixed. What reaches
  refill.run is the config generate_texts decides with."""
  import dataclasses
  from rd_jax import config as config_lib, generate as gen
  from rd_jax.teacher import eval as te
  seen = []
  monkeypatch.setattr(refill, "run", lambda config, *a, **k: seen.append(config) or refill.Result(
      np.zeros((1, 1), np.int32), np.ones(1, np.int32), np.ones(1, bool), np.zeros(1, bool), None, 0))

  class Tok:
    eos_token_id, pad_token_id = 3, PAD

    def decode(self, ids, skip_special_tokens=True):
      return ""

  cfg = config_lib.default_config()
  opts = te.generation_options(cfg)
  assert opts["matmul_dtype"] == "" and opts["draft_tokens"] == cfg.teacher.draft_tokens
  bf16 = dataclasses.replace(TINY, dtype="bfloat16")
  for config, dtype, mixed in [(bf16, "", False), (TINY, "", False), (TINY, "bfloat16", True)]:
    gen.generate_texts(config, params, Tok(), [PREFIX], max_new_tokens=1, buckets=(64,),
                       matmul_dtype=dtype)
    assert seen[-1].mixed_matmuls == mixed and seen[-1].dtype == config.dtype
