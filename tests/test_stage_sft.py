"""`--stage=sft` on the tiny config: the response-only loss mask, the masked loss against PyTorch,
STaR bootstrap bookkeeping, user chain files, and the stage end to end (train, resume, final/).

Scripted generation (a fake `generate.generate_texts` answering per prompt) drives the
bootstrap; the end-to-end run with a user chains file uses the real KV-cache generation of the
random tiny decoder for the before/after evaluation (nothing parses: failures counted, F1 0).
"""

import collections
import functools
import json
import os
import re

import jax
import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rd_jax import checkpoint, generate
from rd_jax.convert import hf_decoder
from rd_jax.data import prompts, readers
from rd_jax.data.schema import DataError
from rd_jax.models.decoder import Decoder, DecoderConfig, init_params
from rd_jax.stages import sft
from rd_jax.teacher import eval as te, model as teacher_model, rows as rows_lib

# prompt v2: the item ends the user turn (or precedes the rationalisation hint)
_PROMPT = re.compile(r"Query: (.*?)\n\nProduct:\n(.*?)(?:\n\nHint:|<\|im_end\|>)", re.S)
_HINT = re.compile(r"Hint: the correct label is (\w+)")


@pytest.fixture(scope="module", autouse=True)
def cached_tokenizer():
  """Parsing the SmolLM2 GGUF tokenizer takes ~12 s: once per module."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(hf_decoder, "resolve_teacher_tokenizer",
               functools.cache(hf_decoder.resolve_teacher_tokenizer))
    yield


@pytest.fixture(scope="module")
def tokenizer():
  return hf_decoder.resolve_teacher_tokenizer("smollm2")


@pytest.fixture(scope="module")
def data(tiny_config):
  cfg = tiny_config()
  pairs, _ = readers.load_pairs("", cfg)
  return pairs, readers.train_valid_test(pairs, cfg)


def find(text: str, pairs) -> int:
  """Index of the pair whose prompt `text` is (the item text may have been cut at its end)."""
  query, item = _PROMPT.search(text).groups()
  return next(i for i, p in enumerate(pairs) if p.query == query and p.item_text.startswith(item))


class Script:
  """A fake generate_texts: answer(prompt text, hint label or None, sample index) -> text."""

  def __init__(self, answer):
    self.answer, self.calls = answer, []

  def __call__(self, config, params, tokenizer, prompts_, *, num_samples=1, temperature=0.0, **_):
    self.calls.append(temperature)
    out = []
    for i, ids in enumerate(prompts_):
      text = tokenizer.decode(ids)
      hint = _HINT.search(text)
      for k in range(num_samples):
        answer = self.answer(text, hint and hint.group(1), k)
        token_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append(generate.Sample(i, k, answer, token_ids, True))
    return out


def test_loss_mask_is_exactly_the_response_and_eos(tiny_config, tokenizer, data):
  cfg = tiny_config()
  pair = data[1]["train"][0]
  chain = {"reasoning": "The title names the queried item.", "label": "Exact"}
  rows, report = sft.sft_rows([(pair, chain)], tokenizer, cfg)
  tokens, attn, loss = rows["tokens"][0], rows["attention_mask"][0], rows["loss_mask"][0]
  n = int(attn.sum())
  assert tokens.shape == (sft.row_length(cfg),) and (attn[:n] == 1).all() and (attn[n:] == 0).all()
  target = tokenizer(prompts.build_sft_target(chain["reasoning"], "Exact"),
                     add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
  start = n - len(target)
  assert (loss[:start] == 0).all() and (loss[start:n] == 1).all() and (loss[n:] == 0).all()
  assert tokens[start:n].tolist() == target
  assert tokenizer.decode(tokens[:start]).endswith("<|im_start|>assistant\n")
  assert tokenizer.decode(tokens[start:n]) == "The title names the queried item.\nLabel: Exact<|im_end|>"
  assert report["response_tokens"] == len(target) and report["rows"] == 1


def test_long_reasoning_is_cut_but_keeps_the_label_line(tokenizer):
  ids, cut = sft.target_ids(tokenizer, "word " * 200, "Complement", 16)
  assert cut and len(ids) <= 16 and ids[-1] == tokenizer.eos_token_id
  assert prompts.parse_response(tokenizer.decode(ids[:-1]), ["Complement"]).label == "Complement"


def _random_llama(seed: int):
  """(DecoderConfig, a transformers Llama with N(0, 0.3) weights, the same weights as Flax params)."""
  config = DecoderConfig(vocab_size=61, hidden_size=16, num_layers=2, num_heads=4, num_kv_heads=2,
                         intermediate_size=24, max_position=32)
  torch.manual_seed(seed)
  model = LlamaForCausalLM(LlamaConfig(**hf_decoder.hf_config_dict(config), attn_implementation="eager"))
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.3)
  return config, model, hf_decoder.from_hf_state_dict(config, model.eval().state_dict())


def test_masked_sft_loss_equals_pytorch():
  """teacher_model.lm_loss == transformers' CE with labels=-100 off the response (right-padded)."""
  config, model, params = _random_llama(seed=0)
  rng = np.random.RandomState(0)
  seqs = [rng.randint(3, 61, 9).tolist(), rng.randint(3, 61, 6).tolist()]
  masks = [[0] * 5 + [1] * 4, [0] * 2 + [1] * 4]           # prompt 5 / 2 tokens, response 4 / 4
  batch = rows_lib.right_pad(seqs, masks, 11, pad_id=0)
  _, metrics = teacher_model.lm_loss(Decoder(config))(params, batch)
  labels = np.where(batch["loss_mask"] == 1, batch["tokens"], -100)
  with torch.no_grad():
    want = model(torch.tensor(batch["tokens"], dtype=torch.long), attention_mask=torch.tensor(batch["attention_mask"]),
                 labels=torch.tensor(labels, dtype=torch.long)).loss.item()
  np.testing.assert_allclose(float(metrics["loss"]), want, rtol=1e-5)
  assert float(metrics["tokens"]) == 8  # the first response token is predicted from the prompt


@pytest.mark.parametrize("label", ["Exact", "Substitute", "Complement", "Irrelevant"])
def test_label_loss_weight_falls_on_the_label_tokens_only(tiny_config, tokenizer, data, label):
  cfg = tiny_config()
  cfg.sft.label_loss_weight = 8.0
  chain = {"reasoning": "The title names the queried item.", "label": label}
  rows, report = sft.sft_rows([(data[1]["train"][0], chain)], tokenizer, cfg)
  tokens, weights = rows["tokens"][0], rows["loss_mask"][0]
  heavy = np.flatnonzero(weights == 8.0)
  assert heavy.size and (np.diff(heavy) == 1).all()          # one run of tokens ...
  assert tokenizer.decode(tokens[heavy]).strip() == label    # ... spelling the label, no more
  assert tokens[heavy[-1] + 1] == tokenizer.eos_token_id and weights[heavy[-1] + 1] == 1.0
  assert tokenizer.decode(tokens[:heavy[0]]).endswith("\nLabel:")
  assert set(np.unique(weights).tolist()) == {0.0, 1.0, 8.0}
  plain, _ = sft.sft_rows([(data[1]["train"][0], chain)], tokenizer, tiny_config())
  assert ((plain["loss_mask"] > 0) == (weights > 0)).all()   # same tokens count, only weights move
  assert report["response_tokens"] == int((plain["loss_mask"][0] > 0).sum())


def test_label_weighted_sft_loss_equals_a_pytorch_weighted_mean():
  """lm_loss with float weights == sum_t w_t CE_t / sum_t w_t from PyTorch's per-token CE."""
  config, model, params = _random_llama(seed=1)
  rng = np.random.RandomState(1)
  seqs = [rng.randint(3, 61, 9).tolist(), rng.randint(3, 61, 7).tolist()]
  masks = [[0] * 5 + [1, 1, 5, 1], [0] * 2 + [1, 1, 1, 5, 1]]   # "label" tokens weigh 5
  batch = rows_lib.right_pad(seqs, masks, 11, pad_id=0)
  _, metrics = teacher_model.lm_loss(Decoder(config))(params, batch)
  with torch.no_grad():
    logits = model(torch.tensor(batch["tokens"], dtype=torch.long),
                   attention_mask=torch.tensor(batch["attention_mask"])).logits
  ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 61),
                                         torch.tensor(batch["tokens"][:, 1:], dtype=torch.long).reshape(-1),
                                         reduction="none").numpy().reshape(2, 10)
  w = batch["loss_mask"][:, 1:]
  np.testing.assert_allclose(float(metrics["loss"]), (ce * w).sum() / w.sum(), rtol=1e-5)
  assert float(metrics["tokens"]) == 8 + 9   # the weights' sum


def test_bootstrap_keeps_sampled_and_rationalised_chains_and_counts_drops(
    tiny_config, tokenizer, data, monkeypatch):
  train = data[1]["train"][:4]
  cfg = tiny_config()
  cfg.sft.bootstrap_pairs, cfg.sft.bootstrap_samples = 4, 2
  cfg.teacher.max_prompt_len = 320  # room for the hint (no model runs here)
  cfg.sft.answer_extraction = False
  gold = lambda i: cfg.labels[train[i].label_id]
  wrong = lambda i: cfg.labels[(train[i].label_id + 1) % 4]

  def answer(text, hint, k):
    i = find(text, train)
    if hint is None:  # plain prompt: pair 0 right on its 2nd sample, the rest wrong or unparsable
      return (f"sampled {i}\nLabel: {gold(i)}" if (i == 0 and k == 1) else
              "no label" if k == 0 else f"w\nLabel: {wrong(i)}")
    assert hint == gold(i)
    return {1: f"rationalised {i}\nLabel: {gold(i)}", 2: f"still wrong\nLabel: {wrong(i)}",
            3: f"Given the hint, it is\nLabel: {gold(i)}"}[i]

  script = Script(answer)
  monkeypatch.setattr(generate, "generate_texts", script)
  teacher = teacher_model.Teacher(None, None, tokenizer, "smollm2", "test")
  chains, report = sft.bootstrap_chains(teacher, train, cfg)
  assert [c["reasoning"] for c in chains] == ["sampled 0", "rationalised 1"]
  assert [c["source"] for c in chains] == ["sample", "rationalized"]
  assert [c["label"] for c in chains] == [gold(0), gold(1)]
  assert chains[0]["product_id"] == train[0].product_id
  assert report["kept_by_sampling"] == 1 and report["kept_by_rationalization"] == 1
  assert report["dropped"] == 2 and report["pairs"] == 4
  assert report["sample_rejections"] == {"no label line": 4, "wrong label": 3}
  assert report["rationalization_rejections"] == {"wrong label": 2, "mentions the hint": 2}
  assert script.calls == [cfg.sft.bootstrap_temperature] * 2


def test_answer_extraction_rescues_reasoning_without_a_label_line(tiny_config, tokenizer, data,
                                                                  monkeypatch):
  train = data[1]["train"][:2]
  cfg = tiny_config()
  cfg.sft.bootstrap_pairs, cfg.sft.bootstrap_samples = 2, 1
  cfg.teacher.max_prompt_len = 320
  gold = lambda i: cfg.labels[train[i].label_id]

  def answer(text, hint, k):
    i = find(text, train)
    if text.endswith("It fits.\nLabel:"):  # the extraction call: pair 0 answers gold, pair 1 junk
      return f" {gold(0)}\nmore" if i == 0 else " Perfect"
    return "It fits." if hint is None else "Still no label."

  monkeypatch.setattr(generate, "generate_texts", Script(answer))
  teacher = teacher_model.Teacher(None, None, tokenizer, "smollm2", "test")
  chains, report = sft.bootstrap_chains(teacher, train, cfg)
  assert [(c["reasoning"], c["label"], c["source"]) for c in chains] == [
      ("It fits.", gold(0), "sample+extracted")]
  assert report["answers_extracted"] == {"sampling": 1, "rationalization": 0}
  assert report["sample_rejections"] == {"no label line": 1}       # pair 1: " Perfect" is no label
  assert report["rationalization_rejections"] == {"no label line": 1}


def test_user_chains_file_is_matched_and_errors_name_the_line(tiny_config, data, tmp_path):
  cfg = tiny_config()
  pairs, splits = data
  t0, t1, v0 = splits["train"][0], splits["train"][1], splits["valid"][0]
  lines = [{"query_id": t0.query_id, "product_id": t0.product_id, "reasoning": "r0", "label": "exact"},
           {"query": t1.query, "product_id": t1.product_id, "reasoning": "r1", "label": "Irrelevant"},
           {"query_id": v0.query_id, "product_id": v0.product_id, "reasoning": "rv", "label": "Exact"}]
  path = tmp_path / "chains.jsonl"
  path.write_text("\n".join(json.dumps(l) for l in lines) + "\n")
  matched, counts = sft.match_chains(sft.read_chains(str(path), cfg), str(path), pairs, cfg)
  assert [(p, c["reasoning"], c["label"]) for p, c in matched] == [(t0, "r0", "Exact"), (t1, "r1", "Irrelevant")]
  assert counts["outside_train_folds"] == 1 and counts["used"] == 2
  for bad, message in ([{"query_id": "1", "product_id": "x", "label": "Exact"}, "reasoning"],
                       [{"query_id": "1", "product_id": "x", "reasoning": "r", "label": "Great"}, "'Great'"],
                       ["{not json", "invalid JSON"]):
    path.write_text("\n".join(json.dumps(l) for l in lines[:2]) + "\n" +
                    (bad if isinstance(bad, str) else json.dumps(bad)) + "\n")
    with pytest.raises(DataError, match=rf"chains.jsonl:3: .*{message}"):
      sft.read_chains(str(path), cfg)
  path.write_text(json.dumps({"query_id": "nope", "product_id": "x", "reasoning": "r", "label": "Exact"}))
  with pytest.raises(DataError, match=r"chains.jsonl:1: no pair of data.path has query_id='nope'"):
    sft.match_chains(sft.read_chains(str(path), cfg), str(path), pairs, cfg)


def test_sft_end_to_end_with_user_chains(tiny_config, data, tmp_path):
  _, splits = data
  path = tmp_path / "chains.jsonl"
  path.write_text("".join(json.dumps({"query_id": p.query_id, "product_id": p.product_id,
                                      "reasoning": "It matches.", "label": "Exact"}) + "\n"
                          for p in splits["train"][:4]))
  cfg = tiny_config()
  cfg.sft.chains_path = str(path)
  summary = sft.run(cfg, str(tmp_path / "w"))
  stage = tmp_path / "w" / "sft"
  for name in ("summary.json", "final/COMPLETE", "final/meta.json", "metrics.jsonl", "eval_before.json"):
    assert (stage / name).exists(), name
  meta = checkpoint.read_meta(str(stage))
  assert meta["model"] == "decoder" and meta["stage"] == "sft" and meta["step"] == 2
  assert summary["chains"]["used"] == 4 and summary["rows"]["rows"] == 4
  for when in ("before", "after"):  # the random teacher's outputs never parse: counted, scored wrong
    m = summary[f"valid_{when}"]
    assert m["num_pairs"] == 4 and m["parse_rate"] == 0.0 and m["macro_f1"] == 0.0
    assert sum(m["failures_by_reason"].values()) == 4
  assert np.isfinite(json.loads((stage / "metrics.jsonl").read_text().splitlines()[-1])["loss"])


def test_sft_bootstrap_is_reused_after_an_interruption(tiny_config, data, tmp_path, monkeypatch):
  train = data[1]["train"]
  cfg = tiny_config()
  script = Script(lambda text, hint, k: f"Because.\nLabel: {cfg.labels[train[find(text, train)].label_id]}")
  monkeypatch.setattr(generate, "generate_texts", script)
  cfg.sft.eval_pairs = 0
  cfg.train.stop_after_step = 1
  assert sft.run(cfg, str(tmp_path)) == {"stage": "sft", "interrupted_at": 1}
  chains = [json.loads(l) for l in open(tmp_path / "sft" / "chains.jsonl")]
  assert len(chains) == 8 and {c["source"] for c in chains} == {"sample"}
  assert script.calls == [cfg.sft.bootstrap_temperature]  # everything kept: no rationalisation
  cfg.train.stop_after_step = 0
  summary = sft.run(cfg, str(tmp_path))
  assert script.calls == [cfg.sft.bootstrap_temperature]  # chains.jsonl reused, nothing sampled
  assert summary["resumed_from"] == 1 and summary["chains"]["kept_by_sampling"] == 8
  assert summary["valid_before"] is None and os.path.exists(tmp_path / "sft" / "final" / "COMPLETE")
  cfg.sft.bootstrap_pairs = 16  # the chains on disk were made with 8: refuse to mix
  with pytest.raises(ValueError, match="bootstrap_pairs"):
    sft.run(cfg, str(tmp_path))


def test_rule_chains_cover_every_train_pair_with_its_gold_label(tiny_config, data, tmp_path,
                                                                 monkeypatch):
  """sft.chains_from=rules: one chain per labelled train pair, the rule rationale + gold label,
  nothing generated; written to sft/rule_chains.jsonl, not to the bootstrap's chains.jsonl; and
  it cannot be combined with a chains file."""
  from rd_jax import config_check
  from rd_jax.data import rationale
  pairs, splits = data
  train = splits["train"]
  cfg = tiny_config()
  cfg.sft.chains_from, cfg.sft.eval_pairs, cfg.train.stop_after_step = "rules", 0, 1

  def no_generation(*args, **kwargs):
    raise AssertionError("chains_from=rules must not generate")
  monkeypatch.setattr(generate, "generate_texts", no_generation)
  assert sft.run(cfg, str(tmp_path)) == {"stage": "sft", "interrupted_at": 1}
  written = [json.loads(l) for l in open(tmp_path / "sft" / "rule_chains.jsonl")]
  assert not (tmp_path / "sft" / "chains.jsonl").exists()
  assert len(written) == len(train) > 0
  for pair, chain in zip(train, written):
    assert chain["product_id"] == pair.product_id and chain["source"] == "rules+gold"
    assert chain["label"] == cfg.labels[pair.label_id]  # gold, every pair
    assert chain["reasoning"] == rationale.rule_rationale(pair.query, pair.raw, pair.item_text)
  matched, counts = sft.match_chains(list(enumerate(written, 1)), "x", pairs, cfg)
  assert counts["used"] == len(train) and counts["label_differs_from_gold"] == 0
  cfg.sft.chains_path = str(tmp_path / "sft" / "rule_chains.jsonl")
  with pytest.raises(config_check.ConfigError, match="sft.chains_path .* sft.chains_from"):
    config_check.validate(cfg)


def test_rule_chains_with_cross_query_negatives(tiny_config, data, tmp_path):
  """sft.cross_query_negatives = k: each train query also gets k items of other train queries,
  labelled Irrelevant, with the rule rationale of (this query, that item); the real chains are
  untouched; the key needs chains_from=rules."""
  from rd_jax import config_check
  from rd_jax.data import rationale
  pairs, splits = data
  train = splits["train"]
  cfg = tiny_config()
  cfg.sft.chains_from, cfg.sft.cross_query_negatives = "rules", 2
  matched, report = sft.load_or_bootstrap(cfg, None, pairs, train, str(tmp_path))
  queries = {p.query_id for p in train}
  real, drawn = matched[:len(train)], matched[len(train):]
  assert [p for p, _ in real] == list(train) and report["used"] == len(train)
  assert len(drawn) == report["cross_query_negatives"] == 2 * len(queries) > 0
  own_items = {q: {p.product_id for p in train if p.query_id == q} for q in queries}
  per_query = collections.Counter()
  for pair, chain in drawn:
    per_query[pair.query_id] += 1
    assert pair.product_id not in own_items[pair.query_id]       # another query's item
    assert chain["label"] == "Irrelevant" and chain["source"] == "rules+cross_query_negative"
    assert chain["query_id"] == pair.query_id and chain["product_id"] == pair.product_id
    assert chain["reasoning"] == rationale.rule_rationale(pair.query, pair.raw, pair.item_text)
  assert set(per_query.values()) == {2}
  written = [json.loads(l) for l in open(tmp_path / "rule_chains.jsonl")]
  assert len(written) == len(train) + len(drawn)
  # the same draw on a restart (seeded), so a resumed run trains on the same rows
  again, _ = sft.load_or_bootstrap(cfg, None, pairs, train, str(tmp_path))
  assert [c for _, c in again] == [c for _, c in matched]
  cfg.sft.chains_from = "bootstrap"
  with pytest.raises(config_check.ConfigError, match="sft.cross_query_negatives = 2 needs sft.chains_from"):
    config_check.validate(cfg)


def _matched(data, n):
  chains = ["The title names the queried item.", "Wrong colour.", "A case for it, not it."]
  train = data[1]["train"]
  return [(p, {"reasoning": chains[i % 3], "label": ("Exact", "Irrelevant", "Complement")[i % 3]})
          for i, p in enumerate(train[:n])]


@pytest.mark.parametrize("shuffle", [False, True])
def test_shared_prefix_rows_are_the_plain_rows_split(tiny_config, tokenizer, data, shuffle):
  cfg = tiny_config()
  cfg.sft.shuffle_definitions = shuffle
  matched = _matched(data, 6)
  rows, prefixes, report = sft.shared_prefix_rows(matched, tokenizer, cfg)
  p = report["shared_prefix_tokens"]
  # the chat template, the instructions and the definitions
  assert prefixes.shape == (24 if shuffle else 1, p) and p > 100
  assert report["definition_orders"] == len(prefixes)
  orders = sft.definition_orders(cfg)
  for (pair, chain), tokens, attn, loss in zip(matched, rows["tokens"], rows["attention_mask"],
                                               rows["loss_mask"]):
    n = int(attn.sum())
    target, _ = sft.target_ids(tokenizer, chain["reasoning"], chain["label"],
                               cfg.teacher.max_response_len)
    assert loss[0] == 0 and loss[:n].sum() == len(target)
    assert tokens[n - len(target):n].tolist() == target
    for order, prefix in zip(orders, prefixes):   # every order: its prefix, then the same row
      prompt = te.fit_prompt(tokenizer, pair, cfg, order=order)[0]
      assert prefix.tolist() + tokens[:n].tolist() == prompt + target
  plain, plain_report = sft.sft_rows(matched, tokenizer, in_labels_order(cfg))
  assert report["tokens"] == plain_report["tokens"]
  assert report["response_tokens"] == plain_report["response_tokens"]
  assert report["row_tokens_after_prefix"] == plain_report["tokens"] - p * len(matched)


def in_labels_order(cfg):
  """The same config with the definitions in the labels' order (sft_rows shuffles per chain)."""
  cfg = cfg.copy_and_resolve_references()
  cfg.sft.shuffle_definitions = False
  return cfg


def test_sft_shared_prefix_trains_as_the_plain_rows(tiny_config, data, tmp_path):
  """The stage end to end both ways (definitions in one order, so the batches hold the same rows):
  the same losses step by step and the same final weights, to float rounding."""
  _, splits = data
  path = tmp_path / "chains.jsonl"
  path.write_text("".join(json.dumps({"query_id": p.query_id, "product_id": p.product_id,
                                      "reasoning": "It matches.", "label": "Exact"}) + "\n"
                          for p in splits["train"][:8]))
  finals, losses = [], []
  for shared in (False, True):
    cfg = tiny_config()
    cfg.sft.chains_path, cfg.sft.eval_pairs = str(path), 0
    cfg.sft.shuffle_definitions, cfg.sft.shared_prefix = False, shared
    cfg.sft.num_steps, cfg.train.log_every = 3, 1
    workdir = str(tmp_path / f"shared_{shared}")
    summary = sft.run(cfg, workdir)
    assert ("shared_prefix_tokens" in summary["rows"]) == shared
    losses.append([json.loads(line)["loss"] for line in
                   open(os.path.join(workdir, "sft", "metrics.jsonl")) if '"loss"' in line])
    meta = checkpoint.read_meta(os.path.join(workdir, "sft"))
    config = DecoderConfig.from_dict(meta["model_config"])
    abstract = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
    finals.append(checkpoint.load_final(os.path.join(workdir, "sft"), abstract,
                                        expect_model="decoder")[0])
  assert len(losses[0]) == 3
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5),
               finals[1], finals[0])
