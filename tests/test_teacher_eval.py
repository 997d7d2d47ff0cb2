"""`teacher/eval.evaluate_teacher`: the label after generated reasoning, or after the given rule
rationale (`reasoning="rules"`), on the tiny config.

Scripted generation (a fake `generate.generate_texts` that records its prompts) checks what the
teacher is asked and how its scored labels are counted; one run uses the real KV-cache generation
of the random tiny decoder on the rules path (prompts longer than `teacher.max_prompt_len`).
"""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from rd_jax import generate
from rd_jax.convert import hf_decoder
from rd_jax.data import rationale, readers
from rd_jax.teacher import eval as teacher_eval

LABELS = ["Exact", "Substitute", "Complement", "Irrelevant"]


@pytest.fixture(scope="module")
def tokenizer():
  """The SmolLM2 tokenizer the tiny config's random teacher uses (parsed once: ~12 s)."""
  return hf_decoder.resolve_teacher_tokenizer("smollm2")


def valid_pairs(cfg, n):
  pairs, _ = readers.load_pairs(cfg.data.path, cfg)
  return readers.train_valid_test(pairs, cfg)["valid"][:n]


class Script:
  """A fake generate_texts: row r goes straight to the cue unless r is in `chatty`, and scores
  the label `picks[r]` highest."""

  def __init__(self, tokenizer, picks, chatty=()):
    self.tokenizer, self.picks, self.chatty, self.prompts = tokenizer, picks, set(chatty), None

  def __call__(self, config, params, tokenizer, prompts, *, buckets=(), **_):
    self.prompts, self.buckets = [list(p) for p in prompts], tuple(buckets)
    cue = self.tokenizer(generate.LABEL_CUE, add_special_tokens=False)["input_ids"]
    out = []
    for r, pick in enumerate(self.picks):
      logp = np.log(np.full(4, 0.1))
      logp[pick] = np.log(0.7)
      extra = " and more" if r in self.chatty else ""
      tokens = (self.tokenizer(extra, add_special_tokens=False)["input_ids"] if extra else []) + cue
      out.append(generate.Sample(r, 0, f"{extra}{generate.LABEL_CUE} {LABELS[pick]}", tokens, True,
                                 logp.tolist(), True))
    return out


@pytest.mark.parametrize("reasoning", ["generated", "rules"])
def test_what_the_teacher_is_asked_and_how_its_labels_count(tiny_config, tokenizer, monkeypatch,
                                                            reasoning):
  cfg = tiny_config()
  pairs = valid_pairs(cfg, 6)
  gold = [p.label_id for p in pairs]
  picks = [gold[0], gold[1], (gold[2] + 1) % 4, gold[3], (gold[4] + 2) % 4, gold[5]]
  script = Script(tokenizer, picks, chatty={1})
  monkeypatch.setattr(generate, "generate_texts", script)
  result = teacher_eval.evaluate_teacher(None, None, tokenizer, pairs, cfg, reasoning=reasoning)

  prompts, _ = teacher_eval.prompt_ids(tokenizer, pairs, cfg)
  budget = cfg.teacher.max_response_len - teacher_eval.CUE_ROOM
  given = [tokenizer(rationale.rule_rationale(p.query, p.raw, p.item_text).strip(),
                     add_special_tokens=False)["input_ids"] for p in pairs]
  if reasoning == "rules":   # the prompt, then the rationale (cut to the response budget)
    assert script.prompts == [p + g[:budget] for p, g in zip(prompts, given)]
    assert max(script.buckets) == cfg.teacher.max_prompt_len + cfg.teacher.max_response_len
    assert result["forced_reasoning"] == {"rows": 6, "straight_to_label": 5,
                                          "rationales_cut": sum(len(g) > budget for g in given)}
    assert result["examples"][0].startswith(tokenizer.decode(given[0][:budget]))
  else:
    assert script.prompts == prompts and "forced_reasoning" not in result
    assert max(script.buckets) == cfg.teacher.max_prompt_len
  # Independent reference: scikit-learn's macro-F1 over the classes in gold or predicted.
  assert result["macro_f1"] == pytest.approx(f1_score(gold, picks, average="macro"))
  assert result["accuracy"] == pytest.approx(np.mean(np.equal(gold, picks)))
  assert result["parse_rate"] == 1.0 and result["reasoning"] == reasoning
  assert result["label_logprobs"][2][picks[2]] == pytest.approx(np.log(0.7), abs=1e-4)


def test_an_unknown_reasoning_source_is_refused(tiny_config, tokenizer):
  cfg = tiny_config()
  with pytest.raises(ValueError, match="reasoning='rule'"):
    teacher_eval.evaluate_teacher(None, None, tokenizer, valid_pairs(cfg, 2), cfg, reasoning="rule")


def test_rules_path_with_the_real_decoder(tiny_config, tokenizer):
  """The random tiny decoder through the real generation: prompts longer than
  teacher.max_prompt_len fit, every row gets scored labels and the counts add up."""
  from rd_jax.teacher import model as teacher_model
  from rd_jax.train.fit import make_mesh
  cfg = tiny_config()
  teacher = teacher_model.load_teacher(cfg, "", make_mesh(cfg), upstream=())
  pairs = valid_pairs(cfg, 3)
  result = teacher_eval.evaluate_teacher(teacher.config, teacher.params, tokenizer, pairs, cfg,
                                         batch_size=4, reasoning="rules", fit_offsets=True)
  logp = np.asarray(result["label_logprobs"])
  assert logp.shape == (3, 4)
  np.testing.assert_allclose(np.exp(logp).sum(-1), 1.0, atol=1e-4)
  assert result["num_pairs"] == 3 and 0 <= result["forced_reasoning"]["straight_to_label"] <= 3
  assert result["label_distribution"] and len(result["offsets"]) == 4


def test_offsets_fitted_on_valid_are_also_cross_fitted(tiny_config, tokenizer, monkeypatch):
  """With fit_offsets the result holds the in-sample figure and the one with the offsets fitted
  on 2 of 3 query-disjoint folds and scored on the third; fewer than 3 queries: None."""
  from rd_jax import decision
  cfg = tiny_config()
  pairs, _ = readers.load_pairs(cfg.data.path, cfg)
  train = readers.train_valid_test(pairs, cfg)["train"]
  first = list(dict.fromkeys(p.query_id for p in train))[:4]
  pairs = [p for q in first for p in [t for t in train if t.query_id == q][:8]]
  assert len(first) == 4 and len(pairs) >= 12
  rng = np.random.default_rng(0)
  picks = [int(p.label_id) if rng.random() < 0.6 else int(rng.integers(4)) for p in pairs]
  monkeypatch.setattr(generate, "generate_texts", Script(tokenizer, picks))
  result = teacher_eval.evaluate_teacher(None, None, tokenizer, pairs, cfg, fit_offsets=True)
  gold = np.array([p.label_id for p in pairs])
  logp = np.asarray(result["label_logprobs"])
  # By hand: each query-disjoint fold decided by free offsets fitted on the other two.
  fold = decision.group_folds([p.query_id for p in pairs], 3)
  pred = np.empty(len(pairs), int)
  for k in range(3):
    held = fold == k
    pred[held] = np.argmax(logp[held] + decision.fit_offsets(logp[~held], gold[~held]), -1)
  assert result["macro_f1_offsets_crossfit"] == pytest.approx(f1_score(gold, pred, average="macro"))
  assert result["adjusted"]["macro_f1"] >= result["macro_f1"] - 1e-12   # fitted in-sample
  one_query = [p for p in pairs if p.query_id == pairs[0].query_id]
  monkeypatch.setattr(generate, "generate_texts", Script(tokenizer, picks[:len(one_query)]))
  result = teacher_eval.evaluate_teacher(None, None, tokenizer, one_query, cfg, fit_offsets=True)
  assert result["macro_f1_offsets_crossfit"] is None
