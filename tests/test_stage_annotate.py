"""`--stage=annotate` on the tiny config: parsing outcomes, votes, retries, failures, kill-resume.

Scripted generation (a fake `generate.generate_texts` answering per query) drives the happy and
failure paths; one run uses the real KV-cache generation of the random tiny decoder, whose
outputs never parse.
"""

import functools
import json
import os
import re

import numpy as np
import pytest

from rd_jax import generate, metrics as metrics_lib
from rd_jax.convert import hf_decoder
from rd_jax.data import readers
from rd_jax.stages import annotate

_QUERY = re.compile(r"Query: (.*)\n")


@pytest.fixture(scope="module", autouse=True)
def cached_tokenizer():
  """Parsing the SmolLM2 GGUF tokenizer takes ~12 s: once per module."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(hf_decoder, "resolve_teacher_tokenizer",
               functools.cache(hf_decoder.resolve_teacher_tokenizer))
    yield


class Script:
  """A fake generate_texts: answer(query, sampled, sample_index) -> (text, finished)."""

  def __init__(self, answer, fail_on_call=None):
    self.answer, self.fail_on_call, self.calls = answer, fail_on_call, 0

  def __call__(self, config, params, tokenizer, prompts, *, num_samples=1, temperature=0.0, **_):
    self.calls += 1
    if self.calls == self.fail_on_call:
      raise KeyboardInterrupt("killed")
    out = []
    for i, ids in enumerate(prompts):
      query = _QUERY.search(tokenizer.decode(ids)).group(1)
      for k in range(num_samples):
        text, finished = self.answer(query, temperature > 0, k)
        out.append(generate.Sample(i, k, text, list(range(len(text.split()))), finished))
    return out


def _kind(query: str) -> int:
  return sum(map(ord, query)) % 4


def mixed(query, sampled, k):
  """0: good; 1: malformed when greedy, good on retry; 2: truncated always; 3: unknown label."""
  kind = _kind(query)
  if kind == 0 or (kind == 1 and sampled):
    return f"Reason about {query}.\nLabel: Exact", True
  if kind == 1:
    return "I think it matches.", True
  if kind == 2:
    return f"Reason about {query} that goes on and on", False
  return "Hmm.\nLabel: Perfect", True


def config(tiny_config, **annotate_keys):
  cfg = tiny_config()
  cfg.annotate.max_pairs = 20  # 3 shards of 8
  cfg.annotate.offset_pairs = 0  # scripted generation has no label scores to fit offsets on
  for k, v in annotate_keys.items():
    cfg.annotate[k] = v
  return cfg


def test_vote_confidence_and_ties():
  labels = ["Exact", "Substitute", "Complement", "Irrelevant"]
  s = lambda text, finished=True: generate.Sample(0, 0, text, [], finished)
  record, failure = annotate.vote([s("a\nLabel: Exact"), s("b\nLabel: Substitute"),
                                   s("c\nLabel: exact"), s("no label")], labels, 4)
  assert failure is None
  assert record["teacher_label"] == "Exact" and record["confidence"] == 0.5
  assert record["reasoning"] == "a" and record["raw"] == "a\nLabel: Exact"
  assert record["votes"] == {"Exact": 2, "Substitute": 1}
  record, _ = annotate.vote([s("x\nLabel: Substitute"), s("y\nLabel: Exact")], labels, 2)
  assert record["teacher_label"] == "Substitute" and record["confidence"] == 0.5  # tie: first vote
  record, failure = annotate.vote([s("cut\nLabel: Exact", False), s("cut", False), s("Label: x")],
                                  labels, 3)
  assert record is None and failure == {"reason": "truncated", "raw": "cut\nLabel: Exact"}


def test_scored_vote_uses_label_probs_and_offsets():
  """Scored samples: the label is argmax of softmax(log p + offsets), averaged over samples."""
  labels = ["Exact", "Substitute", "Complement", "Irrelevant"]
  lp = np.log([[0.6, 0.3, 0.05, 0.05], [0.5, 0.1, 0.1, 0.3]])
  s = lambda text, row, finished=True: generate.Sample(0, 0, text, [], finished, lp[row].tolist(), True)
  record, _ = annotate.vote([s("a\nLabel: Exact", 0)], labels, 1)
  assert record["teacher_label"] == "Exact" and record["reasoning"] == "a"
  np.testing.assert_allclose(record["label_probs"], [0.6, 0.3, 0.05, 0.05], atol=1e-5)
  offsets = [0.0, np.log(3.0), 0.0, 0.0]   # Substitute x3: 0.9 vs 0.6 before normalising
  record, _ = annotate.vote([s("a\nLabel: Exact", 0)], labels, 1, offsets)
  want = np.array([0.6, 0.9, 0.05, 0.05]) / 1.6
  assert record["teacher_label"] == "Substitute"
  np.testing.assert_allclose(record["label_probs"], want, atol=1e-5)
  record, _ = annotate.vote([s("a\nLabel: Exact", 0), s("b\nLabel: Exact", 1)], labels, 2, offsets)
  mean = (want + np.array([0.5, 0.3, 0.1, 0.3]) / 1.2) / 2
  np.testing.assert_allclose(record["label_probs"], mean, atol=1e-5)
  assert record["teacher_label"] == labels[int(np.argmax(mean))]
  assert record["votes"] == {"Substitute": 1, "Exact": 1} and record["confidence"] == 0.5
  record, failure = annotate.vote([s("cut", 1, finished=False)], labels, 1)
  assert record is None and failure["reason"] == "truncated" and len(failure["label_probs"]) == 4


def test_good_malformed_truncated_retries_and_failures(tiny_config, tmp_path, monkeypatch):
  script = Script(mixed)
  monkeypatch.setattr(generate, "generate_texts", script)
  cfg = config(tiny_config)
  summary = annotate.run(cfg, str(tmp_path))
  stage = tmp_path / "annotate"
  anns = [json.loads(l) for l in open(stage / "annotations.jsonl")]
  fails = [json.loads(l) for l in open(stage / "failures.jsonl")]
  assert len(anns) + len(fails) == summary["pairs"] == 20
  for a in anns:
    assert _kind(a["query"]) in (0, 1) and a["teacher_label"] == "Exact"
    assert a["reasoning"] == f"Reason about {a['query']}." and a["confidence"] == 1.0
    assert a["attempts"] == (1 if _kind(a["query"]) == 0 else 2)  # malformed -> retried, parsed
    assert a["teacher_ckpt"] == "random" and a["label"] in cfg.labels and a["product_id"]
  want = {"truncated": sum(_kind(f["query"]) == 2 for f in fails),
          "unknown label": sum(_kind(f["query"]) == 3 for f in fails)}
  assert {f["reason"] if f["reason"] == "truncated" else "unknown label" for f in fails} <= set(want)
  assert all(f["attempts"] == 2 and f["raw"] for f in fails)
  assert summary["failures_by_reason"] == {k: v for k, v in want.items() if v}
  assert summary["annotated"] == len(anns) and summary["parse_rate"] == len(anns) / 20
  assert summary["labelled_pairs"] == 20 and 0.0 <= summary["teacher_macro_f1"] <= 1.0
  # the student's reader takes the file as it is
  pairs, _ = readers.load_pairs("", cfg)
  _, report = readers.attach_reasoning(pairs, str(stage / "annotations.jsonl"), cfg)
  assert report["attached"] == len(anns) and report["annotations_read"] == len(anns)


def test_kill_resume_redoes_nothing_and_matches_a_straight_run(tiny_config, tmp_path, monkeypatch):
  straight, two = Script(mixed), Script(mixed)
  monkeypatch.setattr(generate, "generate_texts", straight)
  annotate.run(config(tiny_config), str(tmp_path / "straight"))
  monkeypatch.setattr(generate, "generate_texts", two)  # how many calls the first 2 shards make
  annotate.run(config(tiny_config, stop_after_shards=2), str(tmp_path / "two"))

  killed = Script(mixed, fail_on_call=two.calls + 1)  # dies inside the third shard
  monkeypatch.setattr(generate, "generate_texts", killed)
  with pytest.raises(KeyboardInterrupt):
    annotate.run(config(tiny_config), str(tmp_path / "resumed"))
  stage = tmp_path / "resumed" / "annotate"
  names = sorted(os.listdir(stage / "shards"))
  assert "shard-00001.done" in names and not any(n.startswith("shard-00002") for n in names)
  assert not any(n.endswith(".tmp") for n in names)
  assert not (stage / "annotations.jsonl").exists() and not (stage / "summary.json").exists()

  again = Script(mixed)
  monkeypatch.setattr(generate, "generate_texts", again)
  summary = annotate.run(config(tiny_config), str(tmp_path / "resumed"))
  assert again.calls == straight.calls - two.calls and summary["shards_run_now"] == 1
  for name in ("annotations.jsonl", "failures.jsonl"):
    assert (stage / name).read_bytes() == (tmp_path / "straight" / "annotate" / name).read_bytes()


def test_stop_after_shards_and_manifest_guard(tiny_config, tmp_path, monkeypatch):
  monkeypatch.setattr(generate, "generate_texts", Script(mixed))
  out = annotate.run(config(tiny_config, stop_after_shards=1), str(tmp_path))
  assert out == {"stage": "annotate", "interrupted_at": 1}
  assert sorted(n for n in os.listdir(tmp_path / "annotate" / "shards") if n.endswith(".done")) == [
      "shard-00000.done"]
  with pytest.raises(ValueError, match="temperature"):
    annotate.run(config(tiny_config, temperature=0.3), str(tmp_path))


def test_interrupted_write_leaves_no_complete_looking_file(tmp_path):
  def rows():
    yield {"a": 1}
    raise RuntimeError("killed mid-write")
  path = str(tmp_path / "shard-00000.jsonl")
  with pytest.raises(RuntimeError):
    metrics_lib.write_jsonl_atomic(rows(), path)
  assert not os.path.exists(path)


def test_real_generation_of_a_random_model_fails_counted(tiny_config, tmp_path):
  """The random tiny decoder through the jitted KV-cache path: k=2 votes, nothing parses."""
  cfg = config(tiny_config, num_samples=2, max_retries=1, offset_pairs=4)
  cfg.annotate.max_pairs = 4
  summary = annotate.run(cfg, str(tmp_path))
  fitted = json.load(open(tmp_path / "annotate" / "offsets.json"))
  assert fitted["valid_pairs"] == 4 and len(fitted["offsets"]) == len(cfg.labels)
  assert summary["label_offsets"]["offsets"] == fitted["offsets"] and summary["prompt_version"] == 2
  assert summary["annotated"] == 0 and summary["failures"] == 4 and summary["parse_rate"] == 0.0
  assert sum(summary["failures_by_reason"].values()) == 4
  assert sum(summary["samples_by_outcome"].values()) == 4 * 2 * 2  # 2 samples x 2 attempts
  assert summary["generated_tokens"] > 0 and summary["pairs_per_s"] > 0
  assert summary["teacher_macro_f1"] == 0.0
  assert (tmp_path / "annotate" / "annotations.jsonl").read_text() == ""
  fails = [json.loads(l) for l in open(tmp_path / "annotate" / "failures.jsonl")]
  assert len(fails) == 4 and all(f["raw"] for f in fails)
  for f in fails:   # the label is scored even when the reasoning failed
    assert len(f["label_probs"]) == len(cfg.labels) and abs(sum(f["label_probs"]) - 1) < 1e-4


def test_given_rule_rationale_is_labelled_after_and_recorded(tiny_config, tmp_path, monkeypatch):
  """annotate.reasoning=rules: every prompt ends with its pair's rule rationale (the ids SFT's rule
  chains tokenise, cut to max_response_len - CUE_ROOM), the longest prompt bucket makes room for
  it, the record's reasoning is that rationale and its label the teacher's; the manifest records
  the mode, so a resume in the other mode refuses naming the key."""
  from rd_jax.data import rationale
  from rd_jax.teacher import eval as te
  seen = {}

  def fake(config, params, tokenizer, prompts, *, num_samples=1, buckets=(), **_):
    cue = tokenizer(generate.LABEL_CUE, add_special_tokens=False)["input_ids"]
    seen.setdefault("buckets", set()).add(max(buckets))
    out = []
    for i, ids in enumerate(prompts):
      seen.setdefault("prompts", []).append(list(ids))
      out.append(generate.Sample(i, 0, "\nLabel: Substitute", list(cue), True, None, True))
    return out

  monkeypatch.setattr(generate, "generate_texts", fake)
  cfg = config(tiny_config, reasoning="rules")
  cfg.teacher.max_response_len = 64
  summary = annotate.run(cfg, str(tmp_path))
  pairs = annotate.select_pairs(cfg)[0]
  tok = hf_decoder.resolve_teacher_tokenizer(cfg.teacher.tokenizer or "smollm2")
  plain, _ = te.prompt_ids(tok, pairs, cfg)
  anns = [json.loads(l) for l in open(tmp_path / "annotate" / "annotations.jsonl")]
  assert len(anns) == len(pairs) == summary["annotated"] == 20
  budget = 64 - te.CUE_ROOM
  cut = 0
  for pair, ids, prompt, ann in zip(pairs, plain, seen["prompts"], anns):
    full = tok(rationale.rule_rationale(pair.query, pair.raw, pair.item_text).strip(),
               add_special_tokens=False)["input_ids"]
    cut += len(full) > budget
    assert prompt == list(ids) + list(full[:budget])          # the prompt, then the rationale
    assert ann["reasoning"] == tok.decode(full[:budget], skip_special_tokens=True).strip()
    assert ann["teacher_label"] == "Substitute" and ann["reasoning"]
  assert seen["buckets"] == {cfg.teacher.max_prompt_len + 64}
  assert summary["reasoning"] == "rules" and summary["rationales_cut"] == cut
  assert summary["samples_straight_to_label"] == 20
  manifest = json.load(open(tmp_path / "annotate" / "shards" / "manifest.json"))
  assert manifest["reasoning"] == "rules"
  cfg.annotate.reasoning = "generated"
  with pytest.raises(ValueError, match="reasoning"):
    annotate.run(cfg, str(tmp_path))
  cfg.annotate.reasoning = "rulez"
  with pytest.raises(ValueError, match="annotate.reasoning"):
    annotate.run(cfg, str(tmp_path / "other"))


def test_default_manifest_has_no_reasoning_key(tiny_config, tmp_path, monkeypatch):
  """Shards made before annotate.reasoning existed resume: the default mode adds no manifest key."""
  monkeypatch.setattr(generate, "generate_texts", Script(mixed))
  summary = annotate.run(config(tiny_config), str(tmp_path))
  manifest = json.load(open(tmp_path / "annotate" / "shards" / "manifest.json"))
  assert "reasoning" not in manifest and summary["reasoning"] == "generated"
  assert "rationales_cut" not in summary
