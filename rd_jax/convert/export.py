"""Student final/ -> a verified Hugging Face folder (+ ONNX), and back.

The export folder (written as `<dir>.tmp`, verified, then renamed to `<dir>`):
  config.json          BertForSequenceClassification, id2label / label2id from the labels
                       (a mean-pooled student, student.pooling=mean: its subclass
                       BertMeanPooledForSequenceClassification, with modeling_rd_jax.py beside
                       it and config.json's auto_map naming it; convert/torch_mean_pooled.py)
  model.safetensors    fp32 weights (`flax_to_hf`; the CRSD projection head is training-only)
  tokenizer files      AutoTokenizer.save_pretrained of the tokenizer the student was trained with
  rd_jax.json          labels, item_template, max_len, truncation: how `rd_jax.score` renders pairs
  README.md            model card: labels, training data, metrics
  onnx/                model.onnx, model_int8.onnx (see convert/onnx.py)

Verification (any failure raises ExportError, leaving `<dir>.tmp` for inspection):
  1. every tensor of a PyTorch BertForSequenceClassification is in model.safetensors and loads
     with exactly the value written (nothing left at its fresh initialisation);
  2. Flax and PyTorch logits agree on real pairs (`--pairs`, else a sample of the bundled data):
     max |Δlogit| <= atol (fp32), and so do their predictions (argmax agreement 1.0; a pair whose
     top two Flax logits are within 2 atol is a tie, counted in `prediction_ties`, not a failure).

Decision rule: the student's meta.json `decision_offsets` (C floats, fitted on valid after
training) are folded into the exported classifier: `classifier.bias += offsets`, so PyTorch,
CrossEncoder, ONNX and int8 serving argmax the same logits + offsets that eval reports. The Flax
side of check 2 adds the offsets to its logits; rd_jax.json records them (`folded_decision_offsets`)
and the nDCG gains per label (`gains`) that `rd_jax.score` uses for the expected gain.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import tempfile

import jax
import numpy as np
from safetensors.numpy import save_file

from rd_jax.checkpoint import CheckpointError, check_tree_matches, load_final
from rd_jax import ranking
from rd_jax import storage
from rd_jax.convert import hf_bert, torch_mean_pooled
from rd_jax.models.bert import BertClassifier, BertConfig, init_params
from rd_jax.models import overlap
from rd_jax.score import (EXPORT_META, ID_FIELDS, MIN_ITEM_TOKENS, BadRowError, pad_batch,
                          iter_pairs, render_item, template_fields, text_limits,
                          tokenize_pairs)

META_KEYS = ("model_config", "labels", "tokenizer", "item_template", "max_len_std")
SYNTHETIC_PAIRS = (
    {"query": "usb c charger 65w", "product_title": "65W USB-C GaN wall charger", "product_brand": "Anker"},
    {"query": "usb c charger 65w", "product_title": "Braided USB-C to USB-C cable, 2 m"},
    {"query": "red running shoes women", "product_title": "Women's road running shoe",
     "product_color": "Red", "category": "Shoes"},
    {"query": "red running shoes women", "product_title": "Men's leather dress boots",
     "product_color": "Brown"},
    {"query": "coffee grinder", "product_title": "Burr coffee grinder with 40 settings",
     "product_brand": "Baratza"},
    {"query": "coffee grinder", "product_title": "Paper coffee filters, 100 count"},
    {"query": "kids bike helmet", "product_title": "Toddler bike helmet, adjustable", "category": "Sports"},
    {"query": "kids bike helmet", "product_title": "Garden hose nozzle, 8 patterns"},
)


class ExportError(RuntimeError):
  """The exported folder does not reproduce the student; the message says what differs."""


def _tokenizer_folder(spec: str) -> str:
  if spec == "minilm":
    return hf_bert.resolve_bert_folder("minilm")
  if not os.path.isdir(spec):
    raise CheckpointError(f"tokenizer folder {spec!r} (meta.json 'tokenizer') does not exist")
  return spec


def serving_architecture(config: BertConfig) -> str | None:
  """The exported PyTorch class when it is not HF's own BertForSequenceClassification (both live
  in convert/torch_mean_pooled.py, copied into the folder): the wide class (a wide term, either
  pooling) or the mean-pooled one; None = HF's."""
  if config.wide_features:
    return torch_mean_pooled.WIDE_ARCHITECTURE
  return torch_mean_pooled.ARCHITECTURE if config.pooling == "mean" else None


def hf_config(config: BertConfig, labels: list[str]):
  """transformers.BertConfig of the exported BertForSequenceClassification (pooling "mean": of
  its mean-pooled subclass, convert/torch_mean_pooled.py, named in auto_map for remote code)."""
  import transformers
  serving = serving_architecture(config)
  extra = ({"auto_map": {"AutoModelForSequenceClassification":
                         f"{torch_mean_pooled.MODULE}.{serving}"}} if serving else {})
  if config.wide_features:
    extra.update(rd_jax_pooling=config.pooling, rd_jax_wide_after_hint=config.wide_after_hint,
                 rd_jax_wide_features=config.wide_features)
  return transformers.BertConfig(
      vocab_size=config.vocab_size, hidden_size=config.hidden_size,
      num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
      intermediate_size=config.intermediate_size, max_position_embeddings=config.max_position,
      type_vocab_size=config.type_vocab_size, layer_norm_eps=config.layer_norm_eps,
      hidden_act="gelu", hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.attention_dropout,
      architectures=[serving or "BertForSequenceClassification"],
      problem_type="single_label_classification",
      id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)}, **extra)


def check_all_weights_loaded(model, written: dict[str, np.ndarray], loading_info: dict) -> None:
  """Every PyTorch tensor came from `written`, unchanged; raises ExportError naming the first not.

  LayerNorm's fresh init (ones/zeros) can coincide with trained values, so "not at init" is
  checked as: loading reported no missing/unexpected/mismatched key, and each state-dict tensor
  equals the array we wrote under its name.
  """
  for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
    if loading_info.get(kind):
      raise ExportError(f"loading the export reported {kind}: {sorted(map(str, loading_info[kind]))[:5]}")
  state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
  not_written = sorted(set(state) - set(written))
  if not_written:
    raise ExportError(f"{len(not_written)} PyTorch tensor(s) not in model.safetensors (left at "
                      f"initialisation), e.g. {not_written[:3]}")
  unused = sorted(set(written) - set(state))
  if unused:
    raise ExportError(f"model.safetensors has tensor(s) PyTorch does not use: {unused[:3]}")
  changed = [k for k in state if not np.array_equal(state[k], written[k])]
  if changed:
    raise ExportError(f"PyTorch tensor {changed[0]} differs from the value written "
                      f"({len(changed)} differ)")


def tokenized_pairs(folder: str, rows: list[dict], template: str, max_len: int,
                    match_hint: str = "") -> dict[str, np.ndarray]:
  """Rows rendered (+ the match hint) and tokenised by the exported tokenizer -> padded [B, L]
  int64 arrays."""
  from transformers import AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
  items = [row["item"] if "item" in row else render_item(row, template) for row in rows]
  encoded = tokenize_pairs(tokenizer, [row["query"] for row in rows], items, max_len,
                           match_hint=match_hint)
  return pad_batch(encoded, tokenizer.pad_token_id)


def fold_offsets(written: dict[str, np.ndarray], offsets) -> dict[str, np.ndarray]:
  """The HF state dict with `classifier.bias += offsets` (a no-op for None): argmax of the
  exported logits = argmax(Flax logits + offsets)."""
  if offsets is None:
    return written
  bias = written["classifier.bias"]
  offsets = np.asarray(offsets, np.float64)
  if offsets.shape != bias.shape:
    raise CheckpointError(f"decision_offsets has {offsets.size} values; the classifier has "
                          f"{bias.size} classes")
  return {**written, "classifier.bias": (bias.astype(np.float64) + offsets).astype(bias.dtype)}


def prediction_agreement(reference_logits: np.ndarray, other_logits: np.ndarray,
                         tie_margin: float) -> dict:
  """Argmax agreement of two [N, C] logit arrays; a pair whose reference top-2 margin is below
  `tie_margin` may flip within the logit tolerance: counted as a tie, not as a disagreement."""
  top2 = np.sort(reference_logits, -1)[:, -2:]
  tie = (top2[:, 1] - top2[:, 0]) < tie_margin
  same = reference_logits.argmax(-1) == other_logits.argmax(-1)
  return {"agreement": float(same.mean()), "ties": int(tie.sum()),
          "disagreements_beyond_ties": int((~same & ~tie).sum())}


def verify_export(folder: str, params: dict, config: BertConfig, batch: dict[str, np.ndarray],
                  written: dict[str, np.ndarray], atol: float, offsets=None) -> dict:
  """Checks 1 and 2 of the module docstring: {"max_abs_logit_diff" (Flax fp32 + offsets vs
  PyTorch), "prediction_agreement", "prediction_ties"}."""
  import torch
  model, info = torch_mean_pooled.load_torch_classifier(folder, output_loading_info=True)
  model.eval()
  check_all_weights_loaded(model, written, info)
  fp32 = dataclasses.replace(config, dtype="float32")
  ids, mask, types = (batch[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids"))
  flax_out = jax.jit(BertClassifier(fp32).apply)({"params": params}, ids, mask, types)
  flax_logits = np.asarray(flax_out["logits"], np.float64)
  if offsets is not None:
    flax_logits = flax_logits + np.asarray(offsets, np.float64)   # what eval argmaxes
  with torch.inference_mode():
    torch_logits = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
  diff = float(np.abs(flax_logits - torch_logits).max())
  if not diff <= atol:
    raise ExportError(f"Flax vs PyTorch logits: max |Δ| = {diff:.3g} > atol {atol:g} on "
                      f"{len(torch_logits)} pairs ({folder})")
  agree = prediction_agreement(flax_logits, torch_logits, 2 * atol)
  if agree["disagreements_beyond_ties"]:
    raise ExportError(f"Flax (+ decision offsets) and PyTorch predict different classes on "
                      f"{agree['disagreements_beyond_ties']} of {len(torch_logits)} pairs ({folder})")
  return {"max_abs_logit_diff": diff, "prediction_agreement": agree["agreement"],
          "prediction_ties": agree["ties"]}


def _pooling_line(pooling: str, wide: str = "") -> str:
  if wide:
    features = overlap.feature_shape(wide)[0]
    return (f"**Pooling**: {'the mean of the last hidden states' if pooling == 'mean' else 'token 0'}, "
            f"plus a **wide term**: a linear map of {features} query-item overlap features computed from "
            f"the input ids (`{torch_mean_pooled.MODULE}.py`, tensors `wide.*`): load with "
            f"`trust_remote_code=True`, or with `rd_jax.convert.torch_mean_pooled."
            f"load_torch_classifier`; pass token_type_ids (segment A query, B item).")
  if pooling == "cls":
    return "**Pooling**: token 0 ([CLS]), as `BertForSequenceClassification`."
  return (f"**Pooling**: the mean of the last hidden states over the real tokens "
          f"(`{torch_mean_pooled.MODULE}.py`): load with `trust_remote_code=True`, or with "
          f"`rd_jax.convert.torch_mean_pooled.load_torch_classifier`.")


def _model_card(meta: dict, report: dict, pooling: str, wide: str = "") -> str:
  offsets = meta.get("decision_offsets") or "none"
  labels = ", ".join(f"{i}: {name}" for i, name in enumerate(meta["labels"]))
  metrics = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, (int, float)) else f"| {k} | {v} |"
                      for k, v in sorted((meta.get("metrics") or {}).items())) or "| (none recorded) | |"
  return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [rd_jax, crsd, search-relevance, cross-encoder]
---
# rd_jax CRSD student (BERT cross-encoder)

Scores a (query, item) pair into the relevance classes {labels}.
Distilled with CRSD (arXiv 2510.11056) by rd_jax, stage `{meta.get('stage')}`, step {meta.get('step')}.

**Input**: `[CLS] query [SEP] item [SEP]`, item text rendered from the template in `rd_jax.json`
(lines with an empty field dropped), cut to {meta['max_len_std']} tokens item first, then query.
Match hint before the item (`rd_jax.data.match_hint.hinted_item`): {meta.get('match_hint') or 'none'}.
{_pooling_line(pooling, wide)}
**Training data**: {meta.get('data', 'see the rd_jax run configuration')}.

| metric (valid) | value |
|---|---|
{metrics}

Export check: max |Δlogit| Flax vs PyTorch = {report['max_abs_logit_diff']:.2e}, prediction
agreement {report['prediction_agreement']:.3f}, on {report['num_pairs']} pairs ({report['pairs']}).
Decision offsets folded into `classifier.bias` (argmax = the eval's predictions): {offsets}.

```
python -m rd_jax.score --model=<this folder> --input=pairs.jsonl --output=scores.jsonl
```
"""


def bundled_rows(n: int, template: str | None = None) -> list[dict]:
  """n rows spread evenly over the bundled ESCI pairs (many queries, every label): real text for
  the parity check. With `template`, each row's item is rendered by it, and a row it renders
  empty raises BadRowError (a student whose template reads fields the bundled data lacks)."""
  import gzip
  from rd_jax.data import readers
  path = readers.bundled_pairs_path()
  with gzip.open(path, "rt", encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  rows = [rows[i] for i in np.linspace(0, len(rows) - 1, min(n, len(rows))).astype(int)]
  if template is None:
    return rows
  rendered = [dict(row, item=render_item(row, template)) for row in rows]
  if not all(row["item"] for row in rendered):
    raise BadRowError(f"{path}: the item template renders no item text for the bundled pairs "
                      f"(it reads {template_fields(template)})")
  return rendered


def load_student(checkpoint: str) -> tuple[dict, dict]:
  """load_final(expect_model="bert"); every failure is a CheckpointError naming the file.
  This process alone reads: the export is a process-0 job (stages/export.py)."""
  return load_final(checkpoint, expect_model="bert", collective=False)


def export_student(checkpoint: str, output: str, *, atol: float = 1e-4, onnx: bool = True,
                   int8: bool = True, pairs: str | None = None, max_pairs: int = 64,
                   min_int8_agreement: float = 0.9) -> dict:
  """Writes the verified export of a student `final/` to `output`; returns the check report."""
  params, meta = load_student(checkpoint)
  missing = [k for k in META_KEYS if k not in meta]
  if missing:
    raise CheckpointError(f"{checkpoint!r}: meta.json lacks {missing} (needed for the export)")
  config = BertConfig.from_dict(meta["model_config"])
  expected = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
  check_tree_matches(params, expected, where=checkpoint)  # names the first key/shape that differs
  labels = list(meta["labels"])
  if len(labels) != config.num_labels:
    raise CheckpointError(f"{checkpoint!r}: {len(labels)} labels but model_config.num_labels = "
                          f"{config.num_labels}")
  # A bucket's folder is built locally (safetensors, the tokenizer and the PyTorch check need
  # files), then uploaded; a local one is built beside `output` and renamed into place.
  remote = storage.is_remote(output)
  output = storage.abspath(output)
  tmp = os.path.join(tempfile.mkdtemp(prefix="rd_jax_export_"), "hf") if remote else output + ".tmp"
  if os.path.exists(tmp):
    shutil.rmtree(tmp)
  os.makedirs(tmp)
  try:
    report = _write_verified(tmp, checkpoint, params, meta, config, labels, output, atol=atol,
                             onnx=onnx, int8=int8, pairs=pairs, max_pairs=max_pairs,
                             min_int8_agreement=min_int8_agreement)
  except BaseException:   # a failed check leaves no half-written folder behind
    shutil.rmtree(os.path.dirname(tmp) if remote else tmp, ignore_errors=True)
    raise
  storage.rmtree(output)
  if remote:
    try:
      storage.upload_tree(tmp, output)
    finally:   # the local build folder goes whether or not the upload went through
      shutil.rmtree(os.path.dirname(tmp), ignore_errors=True)
  else:
    os.replace(tmp, output)
  return report


def _write_verified(tmp: str, checkpoint: str, params, meta: dict, config: BertConfig,
                    labels: list, output: str, *, atol: float, onnx: bool, int8: bool,
                    pairs: str | None, max_pairs: int, min_int8_agreement: float) -> dict:
  """Writes the HF folder into `tmp` and checks it against the Flax student -> the report."""
  from transformers import AutoTokenizer
  hf_config(config, labels).save_pretrained(tmp)
  if serving_architecture(config):   # the serving class, for AutoModel... with trust_remote_code=True
    shutil.copyfile(torch_mean_pooled.__file__, os.path.join(tmp, torch_mean_pooled.MODULE + ".py"))
  offsets = meta.get("decision_offsets")
  written = fold_offsets(hf_bert.flax_to_hf(params, config), offsets)
  save_file(written, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
  os.chmod(os.path.join(tmp, "model.safetensors"), 0o644)  # safetensors writes 0600
  tokenizer = AutoTokenizer.from_pretrained(_tokenizer_folder(meta["tokenizer"]), trust_remote_code=False)
  tokenizer.save_pretrained(tmp)
  export_meta = {"labels": labels, "item_template": meta["item_template"], "max_len": meta["max_len_std"],
                 "truncation": "item_first", "min_item_tokens": MIN_ITEM_TOKENS,
                 "match_hint": meta.get("match_hint", ""), "pooling": config.pooling,
                 **text_limits(meta),   # training cut query and item text here (characters)
                 "wide_features": config.wide_features,
                 "pair": ["query", "item"], "id_fields": list(ID_FIELDS),
                 "source": storage.abspath(checkpoint), "step": meta.get("step"),
                 "folded_decision_offsets": offsets,
                 "gains": ranking.label_gains(labels, meta.get("gains")).tolist()}

  if pairs == "synthetic":
    rows = list(SYNTHETIC_PAIRS)
  elif pairs:
    rows = list(itertools.islice(iter_pairs(pairs, meta["item_template"],
                                            **text_limits(export_meta)), max_pairs))
    if not rows:
      raise BadRowError(f"{pairs}: no pair to verify the export on")
  else:
    rows, pairs = bundled_rows(max_pairs, meta["item_template"]), "bundled"
  batch = tokenized_pairs(tmp, rows, meta["item_template"], meta["max_len_std"],
                          meta.get("match_hint", ""))
  report = {"output": output, "num_pairs": len(rows), "pairs": pairs,
            **verify_export(tmp, params, config, batch, written, atol, offsets)}
  if onnx:
    from rd_jax.convert.onnx import export_onnx
    report.update(export_onnx(tmp, batch, int8=int8, atol=atol, min_int8_agreement=min_int8_agreement))
  with open(os.path.join(tmp, EXPORT_META), "w") as f:
    json.dump({**export_meta, "checks": report}, f, indent=2)
  with open(os.path.join(tmp, "README.md"), "w") as f:
    f.write(_model_card(meta, report, config.pooling, config.wide_features))
  return report


def import_hf_folder(folder: str) -> tuple[BertConfig, dict]:
  """An exported (or any HF BertForSequenceClassification) folder -> (BertConfig, Flax params).

  The classifier must be present (no fresh initialisation here: this reads a finished model).
  """
  folder = hf_bert.resolve_bert_folder(folder)
  hf = hf_bert.read_hf_config(folder)
  num_labels = len(hf.get("id2label") or {}) or hf.get("num_labels", 2)
  config = hf_bert.config_from_hf(hf, num_labels=num_labels, dropout=hf.get("hidden_dropout_prob", 0.1),
                                  attention_dropout=hf.get("attention_probs_dropout_prob"),
                                  where=os.path.join(folder, "config.json"))
  architectures = hf.get("architectures") or []
  if torch_mean_pooled.ARCHITECTURE in architectures:
    config = dataclasses.replace(config, pooling="mean")
  if torch_mean_pooled.WIDE_ARCHITECTURE in architectures:
    config = dataclasses.replace(config, pooling=hf.get("rd_jax_pooling", "cls"),
                                 wide_features=hf.get("rd_jax_wide_features", "overlap"),
                                 wide_after_hint=bool(hf.get("rd_jax_wide_after_hint", False)))
  params, _ = hf_bert.convert_hf_state_dict(hf_bert.read_safetensors(folder), config, rng=None)
  return config, params
