"""HF <-> Flax BERT conversion, the export CLI (HF folder + ONNX), CrossEncoder and rd_jax.score."""

import functools
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from rd_jax.checkpoint import CheckpointError, save_final
from rd_jax.config import ESCI_LABELS, ITEM_TEMPLATE
from rd_jax.convert import hf_bert
from rd_jax.convert.export import (ExportError, check_all_weights_loaded, export_student,
                                   import_hf_folder, tokenized_pairs)
from rd_jax.models.bert import BertClassifier, BertConfig, init_params
from rd_jax import score

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
# vocab 30522: the student reads the real MiniLM tokenizer; everything else is tiny.
STUDENT = BertConfig(vocab_size=30522, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                     max_position=64, num_labels=4, projection_dim=8)
PAIRS = [
    {"query": "usb c charger", "product_title": "65W USB-C charger", "product_brand": "Anker",
     "query_id": "q1", "product_id": "p1"},
    {"query": "usb c charger", "product_title": "HDMI cable", "query_id": "q1", "product_id": "p2"},
    {"query": "red shoes", "product_title": "Running shoe", "product_color": "Red", "category": "Shoes",
     "query_id": "q2", "product_id": "p3"},
    {"query": "red shoes", "product_title": "A very long item title " * 20, "query_id": "q2", "product_id": "p4"},
    {"query": "coffee grinder", "product_title": "Burr grinder", "product_brand": None, "product_id": "p5"},
    {"query": "tent", "product_title": "Two person tent", "category": "Outdoors"},
]


def _rbg(seed):
  return jax.random.key(seed, impl="rbg")  # compiles far faster than threefry on CPU


def _run(*args, env=ENV):
  return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
  """A tiny trained-looking student final/ (scaled-up head so the classes are well separated)."""
  root = tmp_path_factory.mktemp("run")
  params = init_params(STUDENT, _rbg(0))
  params["pooler"]["kernel"] = params["pooler"]["kernel"] * 30
  params["classifier"]["kernel"] = params["classifier"]["kernel"] * 50
  meta = {"model": "bert", "model_config": STUDENT.to_dict(), "labels": list(ESCI_LABELS),
          "tokenizer": "minilm", "item_template": ITEM_TEMPLATE, "max_len_std": 32, "stage": "crsd",
          "step": 7, "metrics": {"accuracy": 0.61, "macro_f1": 0.42}}
  save_final(str(root / "crsd" / "final"), params, meta)
  pairs = root / "pairs.jsonl"
  pairs.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
  return {"root": root, "checkpoint": str(root / "crsd"), "params": params, "pairs": str(pairs)}


@pytest.fixture(scope="module")
def exported(student):
  out = str(student["root"] / "export")
  result = _run("-m", "rd_jax.convert", f"--checkpoint={student['checkpoint']}", f"--output={out}",
                f"--pairs={student['pairs']}")
  assert result.returncode == 0, result.stderr[-3000:]
  return out


TINY = BertConfig(vocab_size=40, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16, max_position=16)


@functools.cache
def _tiny_state(config=TINY):
  params = init_params(config, _rbg(1))
  return params, hf_bert.flax_to_hf(params, config)


def test_base_model_names_and_missing_classifier_are_reported():
  params, state = _tiny_state()
  base = {k.removeprefix("bert."): v for k, v in state.items() if not k.startswith("classifier.")}
  base["embeddings.position_ids"] = np.arange(16)[None]  # an HF buffer: ignored, and reported
  converted, info = hf_bert.convert_hf_state_dict(base, TINY, _rbg(2))
  assert info == {"initialised": ["classifier/bias", "classifier/kernel"],
                  "ignored": ["bert.embeddings.position_ids"]}
  np.testing.assert_array_equal(converted["encoder"]["layer_0"]["attention"]["query"]["kernel"],
                                params["encoder"]["layer_0"]["attention"]["query"]["kernel"])
  with pytest.raises(CheckpointError, match="classifier.*no rng"):
    hf_bert.hf_to_flax(base, TINY)


def test_conversion_errors_name_the_key_and_shape():
  _, state = _tiny_state()
  dropped = {k: v for k, v in state.items() if k != "bert.encoder.layer.0.output.LayerNorm.bias"}
  with pytest.raises(CheckpointError, match=r"lacks bert.encoder.layer.0.output.LayerNorm.bias .*mlp/layer_norm/bias"):
    hf_bert.hf_to_flax(dropped, TINY)
  bad = {**state, "bert.pooler.dense.weight": np.zeros((8, 9), np.float32)}
  with pytest.raises(CheckpointError, match=r"bert.pooler.dense.weight has shape \(8, 9\).*\(8, 8\)"):
    hf_bert.hf_to_flax(bad, TINY)
  with pytest.raises(CheckpointError, match="no Flax counterpart.*bert.encoder.layer.1"):
    hf_bert.hf_to_flax({**state, "bert.encoder.layer.1.output.dense.bias": np.zeros(8)}, TINY)
  params = {**_tiny_state()[0]}
  params["extra"] = {"kernel": np.zeros(2)}
  with pytest.raises(CheckpointError, match="no HF name, e.g. extra/kernel"):
    hf_bert.flax_to_hf(params, TINY)


def test_resolve_and_load_errors(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    hf_bert.resolve_bert_folder(str(tmp_path / "nope"))
  with pytest.raises(ValueError, match="no config.json"):
    hf_bert.resolve_bert_folder(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
  (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
  with pytest.raises(CheckpointError, match=re.escape(f"{str(tmp_path)!r} has no model.safetensors: only")):
    hf_bert.read_safetensors(str(tmp_path))
  assert os.path.isfile(os.path.join(hf_bert.resolve_bert_folder("minilm"), "model.safetensors"))


def test_real_minilm_matches_pytorch_bert_model():
  import torch
  import transformers
  config, params, info = hf_bert.load_hf_bert("minilm", num_labels=4, rng=_rbg(0))
  assert config.num_layers == 6 and config.hidden_size == 384
  assert info["initialised"] == ["classifier/bias", "classifier/kernel"]
  tokenizer = transformers.AutoTokenizer.from_pretrained(info["folder"])
  enc = tokenizer(["red running shoes for women", "usb c charger 65w"],
                  ["Women's road running shoe\nColor: Red", "65W GaN wall charger\nBrand: Anker"],
                  padding=True, return_tensors="np")
  out = jax.jit(BertClassifier(config).apply)({"params": params}, enc["input_ids"], enc["attention_mask"],
                                             enc["token_type_ids"])
  model = transformers.BertModel.from_pretrained(info["folder"], use_safetensors=True).eval()
  with torch.no_grad():
    ref = model(**{k: torch.from_numpy(v) for k, v in enc.items()})
  real = enc["attention_mask"] > 0
  assert np.abs(out["hidden"] - ref.last_hidden_state.numpy())[real].max() <= 1e-4
  assert np.abs(out["pooled"] - ref.pooler_output.numpy()).max() <= 1e-4


def test_cli_export_is_complete_and_verified(exported, student):
  files = set(os.listdir(exported))
  assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
          "rd_jax.json", "onnx"} <= files
  assert not os.path.exists(exported + ".tmp")
  meta = json.load(open(os.path.join(exported, "rd_jax.json")))
  assert meta["labels"] == list(ESCI_LABELS) and meta["item_template"] == ITEM_TEMPLATE and meta["max_len"] == 32
  assert (meta["max_query_chars"], meta["max_item_chars"]) == (256, 2048)  # the fixture's meta predates them
  checks = meta["checks"]
  assert checks["num_pairs"] == len(PAIRS) and checks["max_abs_logit_diff"] <= 1e-4
  assert checks["onnx_max_abs_diff"] <= 1e-4 and checks["int8_argmax_agreement"] >= 0.9
  assert set(os.listdir(os.path.join(exported, "onnx"))) == {"model.onnx", "model_int8.onnx"}
  hf = json.load(open(os.path.join(exported, "config.json")))
  assert hf["architectures"] == ["BertForSequenceClassification"] and hf["id2label"]["3"] == "Irrelevant"
  assert not any("crsd" in k for k in load_file(os.path.join(exported, "model.safetensors")))
  assert "macro_f1" in open(os.path.join(exported, "README.md")).read()


def test_cli_default_pairs_leave_nothing_behind(student, tmp_path):
  """Without --pairs the check reads --max_pairs rows spread over the bundled data (several
  queries, not the first query's rows) and writes no temporary file; a failed check (an int8
  floor no export can meet) exits 1 and leaves neither the folder nor <output>.tmp."""
  scratch = tmp_path / "tmp"
  scratch.mkdir()
  env = {**ENV, "TMPDIR": str(scratch)}
  run = lambda *a, checkpoint=student["checkpoint"]: _run(
      "-m", "rd_jax.convert", f"--checkpoint={checkpoint}", *a, env=env)
  out = str(tmp_path / "bundled")
  ok = run(f"--output={out}", "--noonnx", "--max_pairs=12")
  assert ok.returncode == 0, ok.stderr[-3000:]
  checks = json.load(open(os.path.join(out, "rd_jax.json")))["checks"]
  assert checks["pairs"] == "bundled" and checks["num_pairs"] == 12
  from rd_jax.convert.export import bundled_rows
  assert len({r["query_id"] for r in bundled_rows(12)}) >= 6          # spread over the queries
  failed_out = str(tmp_path / "failed")
  failed = run(f"--output={failed_out}", "--min_int8_agreement=1.01", "--max_pairs=12")
  assert failed.returncode == 1 and "int8" in failed.stderr, failed.stderr[-3000:]
  assert not os.path.exists(failed_out) and not os.path.exists(failed_out + ".tmp")
  assert [p.name for p in scratch.iterdir() if p.name.startswith("rd_jax")] == []
  # a student whose template reads fields the bundled data lacks: verified on synthetic pairs
  other = tmp_path / "other" / "crsd"
  shutil.copytree(student["checkpoint"], other)
  meta = json.load(open(other / "final" / "meta.json"))
  (other / "final" / "meta.json").write_text(json.dumps({**meta, "item_template": "Text: {sku}"}))
  fallback = run(f"--output={tmp_path / 'synthetic'}", "--noonnx", checkpoint=str(other))
  assert fallback.returncode == 0, fallback.stderr[-3000:]
  assert "verifying on synthetic pairs" in fallback.stderr
  assert json.load(open(tmp_path / "synthetic" / "rd_jax.json"))["checks"]["pairs"] == "synthetic"


def test_bundled_rows_refuse_a_template_they_cannot_render():
  from rd_jax.convert.export import bundled_rows
  from rd_jax.score import BadRowError
  rows = bundled_rows(4, ITEM_TEMPLATE)
  assert all(r["item"] for r in rows)
  with pytest.raises(BadRowError, match=r"renders no item text.*\['sku_text'\]"):
    bundled_rows(4, "Text: {sku_text}")


def test_flax_hf_flax_round_trip_is_identity(exported, student):
  config, params = import_hf_folder(exported)
  assert config.num_labels == 4 and config.num_layers == 2
  want = {k: v for k, v in student["params"].items() if k != "crsd_projection"}
  flat_got, flat_want = jax.tree_util.tree_flatten_with_path(params)[0], jax.tree_util.tree_flatten_with_path(want)[0]
  assert [k for k, _ in flat_got] == [k for k, _ in flat_want]
  assert all(np.array_equal(a, np.asarray(b)) for (_, a), (_, b) in zip(flat_got, flat_want))


def test_unwritten_parameter_is_caught(exported, tmp_path):
  import transformers
  folder = str(tmp_path / "broken")
  shutil.copytree(exported, folder)
  written = load_file(os.path.join(folder, "model.safetensors"))
  dropped = {k: v for k, v in written.items() if k != "bert.encoder.layer.1.output.LayerNorm.weight"}
  save_file(dropped, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
  model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
      folder, use_safetensors=True, output_loading_info=True)
  with pytest.raises(ExportError, match="missing_keys.*layer.1.output.LayerNorm.weight"):
    check_all_weights_loaded(model, dropped, info)
  with pytest.raises(ExportError, match="not in model.safetensors.*layer.1.output.LayerNorm.weight"):
    check_all_weights_loaded(model, dropped, {})  # even if the loader had not said so
  altered = {**written, "classifier.bias": written["classifier.bias"] + 1}
  with pytest.raises(ExportError, match="classifier.bias differs"):
    check_all_weights_loaded(model, altered, {})


def test_bad_checkpoints_and_mismatches_fail_clearly(student, tmp_path):
  def broken(name, damage):
    final = tmp_path / name / "final"
    shutil.copytree(os.path.join(student["checkpoint"], "final"), final)
    damage(final)
    return str(final.parent)

  cases = {
      "no COMPLETE": (lambda f: os.remove(f / "COMPLETE"), "incomplete"),
      "truncated meta": (lambda f: (f / "meta.json").write_text('{"model": "be'), "meta.json: unreadable or not valid JSON"),
      "params file gone": (lambda f: os.remove(f / "params" / "_METADATA"), "cannot restore params"),
      "config mismatch": (lambda f: (f / "meta.json").write_text(json.dumps(
          {**json.load(open(f / "meta.json")),
           "model_config": {**STUDENT.to_dict(), "intermediate_size": 48}})), r"\['intermediate'\]\['bias'\]: shape \(32,\) != expected \(48,\)"),
  }
  for name, (damage, message) in cases.items():
    with pytest.raises(CheckpointError, match=message):
      export_student(broken(name, damage), str(tmp_path / "out"), onnx=False)
  with pytest.raises(ExportError, match=r"max \|Δ\| = .* > atol 1e-12"):
    export_student(student["checkpoint"], str(tmp_path / "strict"), atol=1e-12, onnx=False)
  assert not os.path.exists(tmp_path / "strict")  # nothing unverified is published
  result = _run("-m", "rd_jax.convert", f"--checkpoint={tmp_path / 'no COMPLETE'}", f"--output={tmp_path / 'x'}")
  assert result.returncode != 0 and "incomplete" in result.stderr


def test_a_mean_pooled_student_exports_and_serves_with_the_same_logits(student, tmp_path):
  """student.pooling=mean: the folder's class is BertMeanPooledForSequenceClassification, its
  modeling file travels with it, and Flax, PyTorch (ours and remote code), ONNX, CrossEncoder and
  rd_jax.score give the logits eval scores; the folder imports back as a mean-pooled student."""
  import dataclasses
  import torch
  from sentence_transformers import CrossEncoder
  from transformers import AutoModelForSequenceClassification
  mean = dataclasses.replace(STUDENT, pooling="mean")
  params = student["params"]
  meta = {"model": "bert", "model_config": mean.to_dict(), "labels": list(ESCI_LABELS),
          "tokenizer": "minilm", "item_template": ITEM_TEMPLATE, "max_len_std": 32, "stage": "crsd",
          "step": 7, "metrics": {"macro_f1": 0.42}, "decision_offsets": [0.0, 0.5, -0.25, 0.1]}
  save_final(str(tmp_path / "run" / "crsd" / "final"), params, meta)
  out = str(tmp_path / "export")
  report = export_student(str(tmp_path / "run" / "crsd"), out, pairs=student["pairs"])
  assert report["max_abs_logit_diff"] <= 1e-4 and report["onnx_max_abs_diff"] <= 1e-4
  hf = json.load(open(os.path.join(out, "config.json")))
  assert hf["architectures"] == ["BertMeanPooledForSequenceClassification"]
  assert hf["auto_map"]["AutoModelForSequenceClassification"] == (
      "modeling_rd_jax.BertMeanPooledForSequenceClassification")
  assert os.path.isfile(os.path.join(out, "modeling_rd_jax.py"))
  assert json.load(open(os.path.join(out, "rd_jax.json")))["pooling"] == "mean"
  assert "trust_remote_code=True" in open(os.path.join(out, "README.md")).read()
  # Flax + offsets, what eval argmaxes, against a serving stack that only has transformers
  batch = tokenized_pairs(out, PAIRS, ITEM_TEMPLATE, 32)
  ids, mask, types = (batch[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids"))
  flax = np.asarray(BertClassifier(mean).apply({"params": params}, ids, mask, types)["logits"])
  flax = flax + np.asarray(meta["decision_offsets"], np.float32)
  remote = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
  assert type(remote).__name__ == "BertMeanPooledForSequenceClassification"
  with torch.inference_mode():
    torch_logits = remote(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
  np.testing.assert_allclose(torch_logits, flax, atol=1e-4)
  # the same weights read through token 0 would score differently: the parity is not vacuous
  cls = np.asarray(BertClassifier(STUDENT).apply({"params": params}, ids, mask, types)["logits"])
  assert np.abs(cls + np.asarray(meta["decision_offsets"]) - flax).max() > 1e-2
  rows = [{"query": p["query"], "item": score.render_item(p, ITEM_TEMPLATE)} for p in PAIRS[:3]]
  scored = np.array([r["logits"] for r in score.score_pairs(out, rows)])
  onnx = np.array([r["logits"] for r in score.score_pairs(out, rows, backend="onnx")])
  cross = CrossEncoder(out, device="cpu", trust_remote_code=True).predict(
      [(r["query"], r["item"]) for r in rows])
  np.testing.assert_allclose(onnx, scored, atol=1e-4)
  np.testing.assert_allclose(cross, scored, atol=1e-4)
  config, imported = import_hf_folder(out)
  assert config.pooling == "mean"


def test_cross_encoder_loads_and_scores(exported):
  from sentence_transformers import CrossEncoder
  model = CrossEncoder(exported, device="cpu")
  pairs = [(PAIRS[0]["query"], "65W USB-C charger\nBrand: Anker"), ("tent", "Two person tent\nCategory: Outdoors")]
  logits = model.predict(pairs)
  assert logits.shape == (2, 4) and np.isfinite(logits).all()
  rows = [{"query": q, "item": i} for q, i in pairs]
  np.testing.assert_allclose(logits, [r["logits"] for r in score.score_pairs(exported, rows)], atol=1e-4)


def test_int8_agreement_floor(exported, tmp_path):
  from rd_jax.convert.onnx import OnnxCheckError, export_onnx
  folder = str(tmp_path / "copy")
  shutil.copytree(exported, folder, ignore=shutil.ignore_patterns("onnx"))
  batch = tokenized_pairs(folder, PAIRS, ITEM_TEMPLATE, 32)
  with pytest.raises(OnnxCheckError, match="int8 ONNX agrees .* floor 101.0%"):
    export_onnx(folder, batch, min_int8_agreement=1.01)


def test_score_cli_runs_without_jax_and_matches_flax(exported, student, tmp_path):
  out = str(tmp_path / "scores.jsonl")
  block_jax = ("import runpy, sys; sys.modules['jax'] = sys.modules['flax'] = None; "
               f"sys.argv = ['score', '--model={exported}', '--input={student['pairs']}', '--output={out}', "
               "'--batch_size=4']; runpy.run_module('rd_jax.score', run_name='__main__')")
  result = _run("-c", block_jax)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in open(out)]
  assert [r.get("product_id") for r in rows] == [p.get("product_id") for p in PAIRS]  # input order
  assert rows[0]["query_id"] == "q1" and "query_id" not in rows[4]
  assert set(rows[0]["scores"]) == set(ESCI_LABELS) and abs(sum(rows[0]["scores"].values()) - 1) < 1e-6
  batch = tokenized_pairs(exported, PAIRS, ITEM_TEMPLATE, 32)
  flax_logits = jax.jit(BertClassifier(STUDENT).apply)(
      {"params": student["params"]}, *(batch[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")))["logits"]
  np.testing.assert_allclose([r["logits"] for r in rows], flax_logits, atol=1e-4)
  assert [r["label"] for r in rows] == [ESCI_LABELS[i] for i in np.argmax(flax_logits, -1)]
  rendered = [{"query": p["query"], "item": score.render_item(p, ITEM_TEMPLATE)} for p in PAIRS]
  got = score.score_pairs(exported, rendered, batch_size=2, backend="onnx")
  np.testing.assert_allclose([r["logits"] for r in got], flax_logits, atol=1e-4)
  # int8: dynamic quantisation's error depends on the CPU's int8 kernels (0.59 on this head,
  # scaled x50, on an AMX machine; < 0.5 elsewhere), so the check is the class, where the
  # fp32 margin leaves room for that error, plus a loose bound on the logits.
  int8 = np.asarray([r["logits"] for r in score.score_pairs(exported, rendered, batch_size=2,
                                                            backend="onnx_int8")])
  np.testing.assert_allclose(int8, flax_logits, atol=1.0)
  assert (int8.argmax(-1) == np.asarray(flax_logits).argmax(-1)).mean() >= 0.9  # the export's floor


def test_render_item_and_bad_rows(tmp_path, capsys):
  row = {"product_title": "Shoe", "product_brand": "", "product_color": None, "category": "Sport: Run"}
  assert score.render_item(row, ITEM_TEMPLATE) == "Shoe\nCategory: Sport: Run"
  assert score.render_item({"product_brand": "  "}, ITEM_TEMPLATE) == ""
  bad = tmp_path / "bad.jsonl"
  for lines, message in ((['{"query": "a", "product_title": "b"}', "", "{not json"], r"bad.jsonl:3: invalid JSON"),
                         (['{"query": "", "product_title": "b"}'], r"bad.jsonl:1: missing or empty 'query'"),
                         (['{"query": "a", "product_id": "p"}'], r"bad.jsonl:1: no item text")):
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(score.BadRowError, match=message):
      score.read_pairs(str(bad), ITEM_TEMPLATE)
  (tmp_path / "m").mkdir()
  (tmp_path / "m" / "rd_jax.json").write_text(json.dumps({"item_template": ITEM_TEMPLATE}))
  assert score.main([f"--model={tmp_path / 'm'}", f"--input={bad}", f"--output={tmp_path / 'o'}"]) == 2
  assert "rd_jax.json has no 'labels'" in capsys.readouterr().err


def _write_pairs(path, rows, fmt):
  """`rows` as JSONL, gzipped JSONL, CSV (None -> empty cell) or Parquet."""
  import csv
  import gzip
  if fmt == "parquet":
    import datasets
    columns = sorted({k for r in rows for k in r})
    datasets.Dataset.from_dict({c: [None if r.get(c) is None else str(r[c]) for r in rows]
                                for c in columns}).to_parquet(str(path))
  elif fmt == "csv":
    columns = sorted({k for r in rows for k in r}, key=lambda c: (c != "query", c))
    with open(path, "w", newline="", encoding="utf-8") as f:
      writer = csv.writer(f)
      writer.writerow(columns)
      writer.writerows([["" if r.get(c) is None else r[c] for c in columns] for r in rows])
  else:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if fmt == "jsonl.gz":
      with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)
    else:
      path.write_text(text)
  return str(path)


@pytest.mark.parametrize("fmt", ["jsonl.gz", "csv", "parquet"])
def test_score_reads_the_formats_training_reads(exported, tmp_path, fmt):
  """rd_jax.score takes the training stages' formats: each gives the JSONL file's logits, ids and
  row numbers."""
  reference = score.score_pairs(exported, score.read_pairs(
      _write_pairs(tmp_path / "p.jsonl", PAIRS, "jsonl"), ITEM_TEMPLATE))
  rows = score.read_pairs(_write_pairs(tmp_path / f"p.{fmt}", PAIRS, fmt), ITEM_TEMPLATE)
  got = score.score_pairs(exported, rows)
  assert [r["line"] for r in got] == ([2, 3, 4, 5, 6, 7] if fmt == "csv" else [1, 2, 3, 4, 5, 6])
  assert [r.get("product_id") for r in got] == [p.get("product_id") for p in PAIRS]
  assert "query_id" not in got[4]   # an empty cell is no id
  np.testing.assert_allclose([r["logits"] for r in got], [r["logits"] for r in reference], atol=1e-6)


def test_score_bad_rows_stop_or_are_counted_and_written(exported, tmp_path, capsys):
  """--on_bad_row: error names the file and line; skip scores the rest, counts each reason and
  writes every skipped row to <output>.rejects.jsonl."""
  good = [json.dumps(p) for p in PAIRS[:2]]
  lines = [good[0], "{not json", json.dumps({"query": "", "product_title": "x"}), good[1],
           json.dumps({"query": "a", "product_id": "p9"}), json.dumps(["a list"])]
  path = tmp_path / "mixed.jsonl"
  path.write_text("\n".join(lines) + "\n")
  out = str(tmp_path / "o.jsonl")
  args = [f"--model={exported}", f"--input={path}", f"--output={out}"]
  assert score.main(args) == 2
  assert re.search(r"mixed.jsonl:2: invalid JSON", capsys.readouterr().err)
  assert not os.path.exists(out) and not os.path.exists(out + ".rejects.jsonl")
  assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # nothing half-written
  assert score.main(args + ["--on_bad_row=skip"]) == 0
  printed = capsys.readouterr().out
  assert "scored 2 pairs" in printed and "skipped 4 bad rows" in printed
  assert [json.loads(l)["line"] for l in open(out)] == [1, 4]
  whole = [json.loads(l) for l in open(out)]
  assert score.main(args + ["--on_bad_row=skip", "--chunk_rows=1"]) == 0   # one row at a time
  one_by_one = [json.loads(l) for l in open(out)]
  assert [(r["line"], r["label"]) for r in one_by_one] == [(r["line"], r["label"]) for r in whole]
  np.testing.assert_allclose([r["logits"] for r in one_by_one], [r["logits"] for r in whole],
                             atol=1e-5)   # batch padding moves fp32 sums by ~1e-7
  rejects = [json.loads(l) for l in open(out + ".rejects.jsonl")]
  assert [r["line"] for r in rejects] == [2, 3, 5, 6]
  assert [r["reason"].split(": ", 1)[1][:20] for r in rejects] == [
      "invalid JSON: Expect", "missing or empty 'qu", "no item text (none o", "expected a JSON obje"]
  report = {}
  score.read_pairs(str(path), ITEM_TEMPLATE, on_bad_row="skip", report=report)
  assert report["skipped_by_reason"] == {"invalid_json": 1, "empty_query": 1, "empty_item": 1,
                                         "not_an_object": 1}
  (tmp_path / "bad.csv").write_text("query,product_title\na,b,c\n")   # every row bad: always an error
  with pytest.raises(score.BadRowError, match=r"bad.csv: nothing to score: all 1 rows are bad"):
    score.read_pairs(str(tmp_path / "bad.csv"), ITEM_TEMPLATE, on_bad_row="skip")
  with pytest.raises(score.BadRowError, match=r"bad.csv:2: CSV record has 3 fields"):
    score.read_pairs(str(tmp_path / "bad.csv"), ITEM_TEMPLATE)


@pytest.mark.parametrize("match_hint", ["", "missing"])
def test_score_tokenisation_matches_the_training_pipeline(match_hint):
  from rd_jax.data import tokenize as data_tokenize
  from rd_jax.data.schema import Pair
  tokenizer = data_tokenize.load_tokenizer("minilm")
  texts = [("usb c charger", "65W USB-C charger"), ("red shoes", "A very long item title " * 20),
           ("a query that is much longer than the item budget allows " * 3, "short item text here"),
           ("x " * 100, "y " * 100)]
  pairs = [Pair(query=q, item_text=i, label_id=None, reasoning=None, query_id="", product_id="", fold=0, raw={})
           for q, i in texts]
  std = data_tokenize.tokenize_pairs(pairs, tokenizer, max_len_std=24, max_len_aug=48,
                                     match_hint=match_hint).std
  ids, mask, types = std.pad(np.arange(len(texts)), 24)
  mine = score.pad_batch(score.tokenize_pairs(tokenizer, *map(list, zip(*texts)), 24,
                                              match_hint=match_hint), tokenizer.pad_token_id)
  width = mine["input_ids"].shape[1]
  np.testing.assert_array_equal(mine["input_ids"], ids[:, :width])
  np.testing.assert_array_equal(mine["attention_mask"], mask[:, :width])
  np.testing.assert_array_equal(mine["token_type_ids"], types[:, :width])


@pytest.mark.parametrize("match_hint", ["", "missing"])
def test_over_long_text_is_cut_for_serving_as_for_training(tmp_path, match_hint):
  """A query over data.max_query_chars (and an item over max_item_chars) reaches the student cut
  at the same characters in rd_jax.score as in training and eval (schema.truncate_text before
  tokenising); without the cut the served query kept more words than the student ever saw."""
  from rd_jax.config import default_config
  from rd_jax.data import readers, tokenize as data_tokenize
  cfg = default_config()
  cfg.data.max_query_chars, cfg.data.max_item_chars = 60, 90
  rows = [{"query": " ".join(f"word{i}" for i in range(40)), "product_title": "red shoe " * 30,
           "label": "Exact"},
          {"query": "short query", "product_title": "Short item", "label": "Exact"}]
  path = tmp_path / "long.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  trained, _ = readers.load_pairs(str(path), cfg, split_rows=False)
  assert trained[0].truncated == ("query", "item")
  tokenizer = data_tokenize.load_tokenizer("minilm")
  std = data_tokenize.tokenize_pairs(trained, tokenizer, max_len_std=128, max_len_aug=192,
                                     match_hint=match_hint).std
  ids, mask, _ = std.pad(np.arange(len(rows)), 128)
  limits = score.text_limits({"max_query_chars": 60, "max_item_chars": 90})
  served = score.read_pairs(str(path), ITEM_TEMPLATE, **limits)
  assert [r["query"] for r in served] == [p.query for p in trained]
  mine = score.pad_batch(score.tokenize_pairs(tokenizer, [r["query"] for r in served],
                                              [r["item"] for r in served], 128,
                                              match_hint=match_hint), tokenizer.pad_token_id)
  width = mine["input_ids"].shape[1]
  np.testing.assert_array_equal(mine["input_ids"], ids[:, :width])
  np.testing.assert_array_equal(mine["attention_mask"], mask[:, :width])
  defaults = default_config().data   # an export from before rd_jax.json recorded the limits
  assert score.text_limits({}) == {k: defaults[k] for k in ("max_query_chars", "max_item_chars")}


def test_decision_offsets_are_folded_into_the_exported_bias(student, tmp_path):
  """meta.json decision_offsets: the export's classifier.bias is shifted by them, and PyTorch /
  ONNX / rd_jax.score predict argmax(Flax logits + offsets) on every pair, as eval does."""
  final = tmp_path / "offset" / "final"
  shutil.copytree(os.path.join(student["checkpoint"], "final"), final)
  offsets = [0.0, 3.0, -1.0, 0.5]
  meta = json.load(open(final / "meta.json"))
  json.dump({**meta, "decision_offsets": offsets}, open(final / "meta.json", "w"))
  out = str(tmp_path / "export")
  report = export_student(str(final.parent), out, int8=False, pairs=student["pairs"])
  assert report["prediction_agreement"] == 1.0 and report["onnx_prediction_agreement"] == 1.0
  bias = load_file(os.path.join(out, "model.safetensors"))["classifier.bias"]
  np.testing.assert_allclose(bias, np.asarray(student["params"]["classifier"]["bias"]) + offsets,
                             atol=1e-6)
  batch = tokenized_pairs(out, PAIRS, ITEM_TEMPLATE, 32)
  flax_logits = np.asarray(jax.jit(BertClassifier(STUDENT).apply)(
      {"params": student["params"]},
      *(batch[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")))["logits"])
  adjusted = flax_logits + offsets
  assert (adjusted.argmax(-1) != flax_logits.argmax(-1)).any()   # the offsets matter here
  rows = [{"query": p["query"], "item": score.render_item(p, ITEM_TEMPLATE)} for p in PAIRS]
  for backend in ("torch", "onnx"):
    got = score.score_pairs(out, rows, backend=backend)
    assert [r["label"] for r in got] == [ESCI_LABELS[i] for i in adjusted.argmax(-1)]
    np.testing.assert_allclose([r["logits"] for r in got], adjusted, atol=1e-4)
  gains = json.load(open(os.path.join(out, "rd_jax.json")))["gains"]
  assert gains == [1.0, 0.1, 0.01, 0.0]
  np.testing.assert_allclose([r["expected_gain"] for r in got],
                             [sum(r["scores"][c] * g for c, g in zip(ESCI_LABELS, gains)) for r in got])


def test_match_hint_travels_with_the_export(student, tmp_path):
  """A student trained with student.match_hint: the export records it and rd_jax.score renders the
  hint before each item, so its logits equal Flax's on the training pipeline's hinted tokens."""
  from rd_jax.data import tokenize as data_tokenize
  from rd_jax.data.schema import Pair
  final = tmp_path / "hinted" / "final"
  shutil.copytree(os.path.join(student["checkpoint"], "final"), final)
  meta = json.load(open(final / "meta.json"))
  json.dump({**meta, "match_hint": "missing"}, open(final / "meta.json", "w"))
  out = str(tmp_path / "export")
  report = export_student(str(final.parent), out, onnx=False, pairs=student["pairs"])
  assert report["prediction_agreement"] == 1.0
  assert json.load(open(os.path.join(out, "rd_jax.json")))["match_hint"] == "missing"
  rows = [{"query": p["query"], "item": score.render_item(p, ITEM_TEMPLATE)} for p in PAIRS]
  pairs = [Pair(query=r["query"], item_text=r["item"], label_id=None, reasoning=None, query_id="",
                product_id="", fold=0, raw={}) for r in rows]
  tokenizer = data_tokenize.load_tokenizer("minilm")
  hinted = data_tokenize.tokenize_pairs(pairs, tokenizer, max_len_std=32, max_len_aug=32,
                                        match_hint="missing").std
  bare = data_tokenize.tokenize_pairs(pairs, tokenizer, max_len_std=32, max_len_aug=32).std
  apply = jax.jit(BertClassifier(STUDENT).apply)
  logits = lambda std: np.asarray(apply({"params": student["params"]}, *std.pad(np.arange(len(rows)), 32))["logits"])
  got = [r["logits"] for r in score.score_pairs(out, rows, backend="torch")]
  np.testing.assert_allclose(got, logits(hinted), atol=1e-4)
  assert np.abs(logits(bare) - logits(hinted)).max() > 1e-3   # the hint changed the inputs


@pytest.mark.parametrize("pooling, hint, feature_set", [("mean", "missing", "overlap"),
                                                        ("cls", "", "overlap"),
                                                        ("mean", "missing", "overlap_accessory")])
def test_a_wide_student_exports_and_serves_with_the_same_logits(student, tmp_path, pooling, hint,
                                                               feature_set):
  """student.wide_features=overlap|overlap_accessory: the folder's class is
  BertWideForSequenceClassification with the wide term's tensors; Flax (+ offsets), PyTorch (ours
  and remote code), ONNX, CrossEncoder and rd_jax.score agree; the folder imports back as a wide
  student with the same logits."""
  import dataclasses
  import torch
  from sentence_transformers import CrossEncoder
  from transformers import AutoModelForSequenceClassification
  from rd_jax.convert.hf_bert import resolve_bert_folder
  from rd_jax.models import overlap
  from transformers import AutoTokenizer
  from rd_jax.data.match_hint import hinted_item
  wide_cfg = dataclasses.replace(STUDENT, pooling=pooling, wide_features=feature_set,
                                 wide_after_hint=bool(hint))
  vocab = AutoTokenizer.from_pretrained(resolve_bert_folder("minilm")).get_vocab()
  rng = np.random.default_rng(0)
  n = overlap.feature_shape(feature_set)[0]
  wide = {"token_class": overlap.token_classes(vocab, feature_set), "mean": rng.normal(size=n),
          "scale": rng.uniform(0.5, 2.0, size=n), "kernel": 3.0 * rng.normal(size=(n, 4)),
          "bias": rng.normal(size=4)}
  # an accessory title, so the accessory features are not all zero
  pairs = PAIRS + [{"query": "coffee grinder", "product_title": "Cleaning brush for coffee grinder",
                    "query_id": "q3", "product_id": "p7"}]
  params = dict(student["params"], wide={k: np.asarray(v, np.float32) for k, v in wide.items()})
  meta = {"model": "bert", "model_config": wide_cfg.to_dict(), "labels": list(ESCI_LABELS),
          "tokenizer": "minilm", "item_template": ITEM_TEMPLATE, "max_len_std": 32, "stage": "crsd",
          "step": 7, "metrics": {"macro_f1": 0.42}, "decision_offsets": [0.0, 0.5, -0.25, 0.1],
          "match_hint": hint}
  save_final(str(tmp_path / "run" / "crsd" / "final"), params, meta)
  out = str(tmp_path / "export")
  report = export_student(str(tmp_path / "run" / "crsd"), out, pairs=student["pairs"])
  assert report["max_abs_logit_diff"] <= 1e-4 and report["onnx_max_abs_diff"] <= 1e-4
  hf = json.load(open(os.path.join(out, "config.json")))
  assert hf["architectures"] == ["BertWideForSequenceClassification"]
  assert hf["rd_jax_pooling"] == pooling and hf["rd_jax_wide_after_hint"] == bool(hint)
  assert hf["rd_jax_wide_features"] == feature_set
  assert hf["auto_map"]["AutoModelForSequenceClassification"] == (
      "modeling_rd_jax.BertWideForSequenceClassification")
  assert json.load(open(os.path.join(out, "rd_jax.json")))["wide_features"] == feature_set
  batch = tokenized_pairs(out, pairs, ITEM_TEMPLATE, 32, hint)
  ids, mask, types = (batch[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids"))
  f = np.asarray(overlap.features(ids, types, mask, wide["token_class"], bool(hint)))
  assert f.shape == (len(pairs), n)
  if feature_set == "overlap_accessory":   # the last pair's marker: has 1, query after it 1.0
    np.testing.assert_allclose(f[-1, 9:11], [1.0, 1.0])
  flax = np.asarray(BertClassifier(wide_cfg).apply({"params": params}, ids, mask, types)["logits"])
  flax = flax + np.asarray(meta["decision_offsets"], np.float32)
  remote = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
  assert type(remote).__name__ == "BertWideForSequenceClassification"
  assert remote.wide.after_hint == bool(hint)
  with torch.inference_mode():
    torch_logits = remote(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
  np.testing.assert_allclose(torch_logits, flax, atol=1e-4)
  # without the wide term the logits differ by far more than the tolerance: the parity is not vacuous
  deep = dataclasses.replace(wide_cfg, wide_features="")
  no_wide = np.asarray(BertClassifier(deep).apply({"params": student["params"]}, ids, mask, types)["logits"])
  assert np.abs(no_wide + np.asarray(meta["decision_offsets"]) - flax).max() > 0.5
  rows = [{"query": p["query"], "item": score.render_item(p, ITEM_TEMPLATE)} for p in pairs[:3] + pairs[-1:]]
  scored = np.array([r["logits"] for r in score.score_pairs(out, rows)])
  onnx = np.array([r["logits"] for r in score.score_pairs(out, rows, backend="onnx")])
  cross = CrossEncoder(out, device="cpu", trust_remote_code=True).predict(
      [(r["query"], hinted_item(r["query"], r["item"], hint)) for r in rows])
  np.testing.assert_allclose(onnx, scored, atol=1e-4)
  np.testing.assert_allclose(cross, scored, atol=1e-4)
  config, imported = import_hf_folder(out)
  assert config.wide_features == feature_set and config.pooling == pooling
  assert config.wide_after_hint == bool(hint)
  back = np.asarray(BertClassifier(config).apply({"params": imported}, ids, mask, types)["logits"])
  np.testing.assert_allclose(back, flax, atol=1e-4)   # the offsets are in the imported bias
