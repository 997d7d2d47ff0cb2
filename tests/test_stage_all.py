"""`--stage=all`: stages in order in one workdir; a rerun skips the complete ones."""

import json
import os
import re

import pytest

from rd_jax import generate
from rd_jax.data import readers
from rd_jax.stages import all as all_stage


def test_student_pipeline_runs_then_skips(tmp_path, tiny_config, monkeypatch):
  cfg = tiny_config()
  cfg.all.stages = ["crsd", "eval", "export"]
  cfg.train.num_steps = 2
  first = all_stage.run(cfg, str(tmp_path))
  assert list(first["seconds_per_stage"]) == ["crsd", "eval", "export"]
  for stage in ("crsd", "eval", "export"):
    assert os.path.exists(tmp_path / stage / "summary.json")
  assert json.load(open(tmp_path / "all_summary.json"))["results"]["eval"]["macro_f1"] >= 0

  calls = []
  monkeypatch.setattr(all_stage.registry, "run", lambda *a: calls.append(a) or {})
  second = all_stage.run(cfg, str(tmp_path))
  assert calls == [] and set(second["seconds_per_stage"].values()) == {"skipped (complete)"}
  assert second["peak_rss_gib_after"] == {}   # skipped stages ran nothing to measure


def test_unknown_stage_in_subset_is_named(tmp_path, tiny_config):
  cfg = tiny_config()
  cfg.all.stages = ["crsd", "distill"]
  with pytest.raises(ValueError, match="distill"):
    all_stage.run(cfg, str(tmp_path))


# prompt v2: the item ends the user turn (or precedes the rationalisation hint)
_PROMPT = re.compile(r"Query: (.*?)\n\nProduct:\n(.*?)(?:\n\nHint:|<\|im_end\|>)", re.S)
_HINT = re.compile(r"Hint: the correct label is (\w+)")


def scripted_pipeline(cfg, monkeypatch):
  """`cfg` (tiny) set for every stage with a scripted teacher (also tests/test_gcs_workdir.py).

  The random tiny decoder writes nothing that parses, so generation is scripted: sample k of a
  prompt answers with label (gold + k) mod 4 (greedy = gold), a hinted prompt with the hint. All
  the rest (training, checkpoints, hand-offs through the workdir, annotations read by crsd) is real.
  """
  labels = list(cfg.labels)
  pairs, _ = readers.load_pairs("", cfg)
  gold = {(p.query, p.item_text): labels[p.label_id] for p in pairs}

  def scripted_generate(config, params, tokenizer, prompts_, *, num_samples=1, **_):
    out = []
    for i, ids in enumerate(prompts_):
      text = ids if isinstance(ids, str) else tokenizer.decode(ids)
      query, item = _PROMPT.search(text).groups()
      label = next(v for (q, t), v in gold.items() if q == query and t.startswith(item))
      hint = _HINT.search(text)
      for k in range(num_samples):
        said = hint.group(1) if hint else labels[(labels.index(label) + k) % len(labels)]
        answer = f"The title and the query share the product type.\nLabel: {said}"
        token_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append(generate.Sample(i, k, answer, token_ids, True))
    return out

  monkeypatch.setattr(generate, "generate_texts", scripted_generate)
  cfg.data.reasoning_source = "annotations"
  cfg.annotate.split = "train"
  cfg.annotate.shard_size = 1024
  # a pipeline that annotates a sample trains both students on exactly that sample: with
  # on_missing_reasoning="error", any train pair outside the annotated draw would stop crsd
  cfg.annotate.max_pairs = cfg.data.max_train_pairs = 24
  cfg.data.on_missing_reasoning = "error"
  cfg.teacher.max_prompt_len = 320  # room for the rationalisation hint
  cfg.train.num_steps = 2
  return cfg


def test_every_stage_on_tiny_with_a_scripted_teacher(tmp_path, tiny_config, monkeypatch):
  """cpt -> sft -> reward -> dpo -> annotate -> crsd -> baseline -> eval -> export in one workdir."""
  cfg = scripted_pipeline(tiny_config(), monkeypatch)
  summary = all_stage.run(cfg, str(tmp_path))
  assert list(summary["seconds_per_stage"]) == list(all_stage.ORDER)
  # the process's peak memory after each stage that ran: positive, never falling (a running max)
  peaks = [summary["peak_rss_gib_after"][s] for s in all_stage.ORDER]
  assert peaks[0] > 0 and peaks == sorted(peaks), peaks
  assert json.load(open(tmp_path / "all_summary.json"))["peak_rss_gib_after"] == summary["peak_rss_gib_after"]
  after = summary["rss_gib_after_release"]   # resident after each stage's release: under its peak
  assert list(after) == list(all_stage.ORDER)
  assert all(0 < after[s] <= summary["peak_rss_gib_after"][s] + 0.01 for s in after), after
  for stage in all_stage.ORDER:
    assert os.path.exists(tmp_path / stage / "summary.json"), stage
  # each teacher stage started from its predecessor's final/, annotate from dpo's
  started = {s: json.load(open(tmp_path / s / "summary.json")).get("started_from")
             for s in ("sft", "dpo")}
  assert started["sft"].endswith(os.path.join("cpt", "final")), started
  assert started["dpo"].endswith(os.path.join("sft", "final")), started
  annotate = json.load(open(tmp_path / "annotate" / "summary.json"))
  assert annotate["teacher_ckpt"].endswith(os.path.join("dpo", "final"))
  crsd = json.load(open(tmp_path / "crsd" / "summary.json"))
  assert crsd["data"]["train_reasoning_file"] == str(tmp_path / "annotate" / "annotations.jsonl")
  baseline = json.load(open(tmp_path / "baseline" / "summary.json"))
  assert annotate["pairs"] == crsd["data"]["train_pairs"] == baseline["data"]["train_pairs"] == 24
  assert crsd["data"]["train_pairs_sampled"]["from"] > 24
  # eval ends the pipeline with both students on the same test pairs
  evaluated = summary["results"]["eval"]
  assert 0.0 <= evaluated["macro_f1"] <= 1.0 and 0.0 <= evaluated["baseline_macro_f1"] <= 1.0
  both = [json.load(open(tmp_path / "eval" / f)) for f in ("metrics.json", "baseline_metrics.json")]
  assert both[0]["num_examples"] == both[1]["num_examples"] > 0
  assert both[0]["checkpoint"].startswith(str(tmp_path / "crsd"))
  assert both[1]["checkpoint"].startswith(str(tmp_path / "baseline"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's /proc")
def test_release_memory_returns_freed_heap_pages():
  """What --stage=all does between stages: freed arrays' pages go back to the kernel (glibc
  keeps them otherwise), so the next stage does not start from the last one's leftovers."""
  import numpy as np
  before = all_stage.rss_gib()
  blocks, survivors = [], []
  for _ in range(16384):   # 1 GiB in 64 KiB heap blocks, each pinned by a small survivor after it
    blocks.append(np.ones(8192))
    survivors.append(bytearray(64))
  del blocks               # freed, but the survivors keep glibc from shrinking its heap by itself
  freed = all_stage.rss_gib()
  if freed < before + 0.8:
    pytest.skip(f"this C library returned the pages by itself ({before} -> {freed} GiB)")
  all_stage.release_memory()
  released = all_stage.rss_gib()
  assert released < before + 0.2, (before, freed, released)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's /proc")
def test_peak_rss_is_the_kernels_high_water_mark_in_gib():
  """ru_maxrss's unit differs by platform; on Linux it must agree with /proc's VmHWM (kB)."""
  status = open("/proc/self/status").read()
  hwm_gib = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 2 ** 20
  assert all_stage.peak_rss_gib() == pytest.approx(hwm_gib, abs=0.02)
