"""What the student stages (crsd, baseline, eval) share: data, batches, prediction, meta."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from rd_jax import metrics as metrics_lib
from rd_jax.data import pipeline, rationale, readers
from rd_jax.parallel import mesh as mesh_lib


@dataclasses.dataclass
class StudentData:
  train: list
  valid: list
  tokenizer: object
  tokenizer_dir: str
  report: dict


def load_tokenizer(spec: str):
  from transformers import AutoTokenizer
  from rd_jax.convert import hf_bert
  return AutoTokenizer.from_pretrained(hf_bert.resolve_bert_folder(spec))


def annotations_path(cfg, workdir: str) -> str:
  """data.reasoning_path: "" = this workdir's annotate output; "bundled" = the teacher annotations
  shipped with the bundled data (readers.bundled_annotations_path); else a file."""
  if cfg.data.reasoning_path == "bundled":
    return readers.bundled_annotations_path()
  return cfg.data.reasoning_path or os.path.join(workdir, "annotate", "annotations.jsonl")


def _with_reasoning(pairs, cfg, report: dict, split: str, workdir: str):
  """Attaches reasoning per cfg.data.reasoning_source; a pair left without one is an error."""
  if cfg.data.reasoning_source == "rules":
    report[f"{split}_reasoning"] = "rules (data/rationale.py, lexical, no label)"
    return rationale.with_rule_rationales(pairs)
  path = annotations_path(cfg, workdir)
  if not os.path.exists(path):
    raise FileNotFoundError(f"annotations {path} do not exist (data.reasoning_source="
                            "'annotations'): run --stage=annotate first, set "
                            "data.reasoning_path, or use data.reasoning_source=rules")
  pairs, ann_report = readers.attach_reasoning(pairs, path, cfg)
  report[f"{split}_reasoning_file"] = path
  report[f"{split}_reasoning"] = ann_report
  missing = [p for p in pairs if not p.reasoning]
  if missing:
    if cfg.data.on_missing_reasoning == "error":
      raise ValueError(f"{len(missing)} {split} pairs have no reasoning in "
                       f"{path} (e.g. query_id={missing[0].query_id} "
                       f"product_id={missing[0].product_id}); set data.on_missing_reasoning=skip to drop them")
    pairs = [p for p in pairs if p.reasoning]
    report[f"{split}_dropped_without_reasoning"] = len(missing)
  return pairs


def shuffle_reasoning(pairs, seed: int):
  """The control of the ablation table: each pair gets another pair's reasoning (a derangement
  of a random permutation), so the text is real but says nothing about this pair."""
  order = np.random.default_rng(seed).permutation(len(pairs))
  donors = np.roll(order, 1)   # order[i] receives the reasoning of order[i-1]: nobody keeps its own
  out = list(pairs)
  for receiver, donor in zip(order, donors):
    out[receiver] = dataclasses.replace(pairs[receiver], reasoning=pairs[donor].reasoning)
  return out


def _label_source(pairs, cfg, report: dict, workdir: str):
  if cfg.crsd.label_source == "gold":
    return pairs
  without = [p for p in pairs if p.teacher_label_id is None]
  if without:
    # the same policy as a missing reasoning: the teacher failed on these pairs
    if cfg.data.on_missing_reasoning == "error":
      raise ValueError(f"crsd.label_source=teacher but {len(without)} train pairs have no teacher "
                       f"label in {annotations_path(cfg, workdir)} (e.g. query_id="
                       f"{without[0].query_id} product_id={without[0].product_id}); set "
                       "data.on_missing_reasoning=skip to drop them")
    pairs = [p for p in pairs if p.teacher_label_id is not None]
    report["train_dropped_without_teacher_label"] = len(without)
  report["labels"] = "teacher"
  return [dataclasses.replace(p, label_id=p.teacher_label_id) for p in pairs]


def load_student_data(cfg, stage_dir: str, *, use_reasoning: bool) -> StudentData:
  pairs, report = readers.load_pairs(cfg.data.path, cfg, require_label=True,
                                     rejects_path=os.path.join(stage_dir, "rejects.jsonl"))
  splits = readers.train_valid_test(pairs, cfg)
  train, valid = splits["train"], splits["valid"]
  if not train:
    raise ValueError(f"no training pairs in folds data.train_folds={list(cfg.data.train_folds)} "
                     f"of {report['path']}")
  if cfg.data.max_train_pairs and cfg.data.max_train_pairs < len(train):
    report["train_pairs_sampled"] = {"from": len(train), "max_train_pairs": cfg.data.max_train_pairs,
                                     "seed": cfg.seed}
    train = readers.seeded_subset(train, cfg.data.max_train_pairs, cfg.seed)
  workdir = os.path.dirname(os.path.abspath(stage_dir))
  if use_reasoning:
    train = _with_reasoning(train, cfg, report, "train", workdir)
    if cfg.crsd.shuffle_reasoning:
      train = shuffle_reasoning(train, cfg.seed)
      report["reasoning_shuffled"] = True
  elif cfg.crsd.label_source == "teacher":  # the "teacher labels only" student needs them too
    train, _ = readers.attach_reasoning(train, annotations_path(cfg, workdir), cfg)
  train = _label_source(train, cfg, report, workdir)
  report.update(train_pairs=len(train), valid_pairs=len(valid))
  if jax.process_index() == 0:
    metrics_lib.write_json_atomic(report, os.path.join(stage_dir, "data_report.json"))
  folder = _tokenizer_dir(cfg.student.tokenizer)
  return StudentData(train, valid, load_tokenizer(folder), folder, report)


def _tokenizer_dir(spec: str) -> str:
  from rd_jax.convert import hf_bert
  return os.path.abspath(hf_bert.resolve_bert_folder(spec))


class _WithoutAugView:
  """The baseline's batches: the aug_* arrays removed, so its jitted step neither copies them nor
  recompiles for each new augmented length. Delegates the checkpointable iterator state."""

  def __init__(self, iterator):
    self._it = iterator

  def __iter__(self):
    return self

  def __next__(self):
    return {k: v for k, v in next(self._it).items() if not k.startswith("aug_")}

  def get_state(self):
    return self._it.get_state()

  def set_state(self, state):
    self._it.set_state(state)


def train_batches(pairs, tokenizer, cfg, *, use_reasoning: bool = True):
  it = pipeline.train_batches(pairs, tokenizer, cfg, seed=cfg.seed,
                              batch_size=cfg.train.batch_size,
                              process_index=jax.process_index(),
                              process_count=jax.process_count(), with_aug=use_reasoning)
  return it if use_reasoning else _WithoutAugView(it)


def make_predict_fn(model, mesh) -> Callable:
  """jit(params, batch) -> logits [B, C] on the standard view (the serving path: no reasoning)."""
  batch_sharding = mesh_lib.batch_sharding(mesh)

  @jax.jit
  def logits_fn(params, batch):
    out = model.apply({"params": params}, batch["std_input_ids"], batch["std_attention_mask"],
                      batch["std_token_type_ids"], deterministic=True)
    return jax.lax.with_sharding_constraint(out["logits"], batch_sharding)

  def predict(params, host_batch: dict) -> np.ndarray:
    p, n = jax.process_index(), jax.process_count()
    rows = len(host_batch["weights"]) // n
    local = {k: v[p * rows:(p + 1) * rows] for k, v in host_batch.items()
             if k.startswith("std_") or k == "weights"}
    logits = logits_fn(params, mesh_lib.put_batch(local, mesh))
    return np.asarray(multihost_utils.process_allgather(logits, tiled=True))

  return predict


def evaluate(predict: Callable, params, pairs, tokenizer, cfg, *, max_len_std=None,
             logit_offsets=None) -> dict:
  """Metrics of the standard-view predictions on labelled `pairs` (input order).

  logit_offsets: the decision rule, C floats added to the logits before the argmax (None = 0);
  macro_f1 etc. are the offset predictions', macro_f1_argmax the raw argmax's. Also: log_loss
  (mean NLL of softmax(raw logits)), log_loss_adjusted (of softmax(logits + offsets)), and
  ndcg@10 (ranking.py) with each query's items ranked by the expected gain under
  softmax(logits + offsets): what the export, whose bias holds the offsets, serves.
  "predictions" (class ids) and "logits" (raw, [N, C] float32) are for the caller to pop.
  """
  from rd_jax import ranking, references
  if not pairs:
    raise ValueError("no pairs to evaluate")
  eval_cfg = cfg
  if max_len_std and max_len_std != cfg.student.max_len_std:
    eval_cfg = cfg.copy_and_resolve_references()
    with eval_cfg.unlocked():
      eval_cfg.student.max_len_std = int(max_len_std)
  batch_size = cfg.eval.batch_size + (-cfg.eval.batch_size) % jax.device_count()  # divisible
  all_logits, labels = [], []
  for batch in pipeline.eval_batches(pairs, tokenizer, eval_cfg, batch_size=batch_size):
    logits = predict(params, batch)
    keep = batch["weights"] > 0
    all_logits.append(np.asarray(logits, np.float32)[keep])
    labels.append(batch["labels"][keep])
  logits, gold = np.concatenate(all_logits), np.concatenate(labels)       # [N, C], [N]
  offsets = np.zeros(logits.shape[1]) if logit_offsets is None else np.asarray(logit_offsets, float)
  if offsets.shape != (logits.shape[1],):
    raise ValueError(f"logit_offsets has shape {offsets.shape}; expected ({logits.shape[1]},)")
  adjusted = logits + offsets
  preds = np.argmax(adjusted, -1)
  result = metrics_lib.classification_metrics(gold, preds, list(cfg.labels))
  result["macro_f1_argmax"] = (result["macro_f1"] if logit_offsets is None else
                               metrics_lib.classification_metrics(gold, np.argmax(logits, -1),
                                                                  list(cfg.labels))["macro_f1"])
  result["log_loss"] = references.log_loss(ranking.softmax(logits), gold)
  if logit_offsets is not None:
    result["log_loss_adjusted"] = references.log_loss(ranking.softmax(adjusted), gold)
    result["decision_offsets"] = offsets.tolist()
  gains = ranking.label_gains(cfg.labels, cfg.eval.get("gains"))
  ndcg = ranking.pair_ndcg(pairs, ranking.softmax(adjusted), gains)
  result.update({"ndcg@10": ndcg["ndcg"], "ndcg_queries": ndcg["queries"],
                 "ndcg_queries_skipped": ndcg["queries_skipped"]})
  result["predictions"] = preds.tolist()   # class ids, one per pair, input order
  result["logits"] = logits                # raw [N, C]
  return result


def write_predictions(pairs, predictions, labels, path: str) -> None:
  """<path>: one JSON line per evaluated pair (input order): ids, gold and predicted label.
  predictions: evaluate()'s "predictions" (class ids, one per pair)."""
  metrics_lib.write_jsonl_atomic(
      [{"query_id": p.query_id, "product_id": p.product_id, "label": labels[p.label_id],
        "prediction": labels[k]} for p, k in zip(pairs, predictions, strict=True)], path)


def load_eval_pairs(cfg, out_dir: str, item_template: str | None = None):
  """(pairs, description, report) for eval: cfg.eval.path or the cfg.eval.split folds."""
  eval_cfg = cfg
  if item_template and item_template != cfg.data.item_template:
    eval_cfg = cfg.copy_and_resolve_references()
    with eval_cfg.unlocked():
      eval_cfg.data.item_template = item_template  # render items as the student saw them
  rejects = os.path.join(out_dir, "rejects.jsonl")
  if cfg.eval.path:
    pairs, report = readers.load_pairs(cfg.eval.path, eval_cfg, rejects_path=rejects)
    return pairs, cfg.eval.path, report
  pairs, report = readers.load_pairs(cfg.data.path, eval_cfg, rejects_path=rejects)
  split = readers.train_valid_test(pairs, eval_cfg)[cfg.eval.split]
  folds = list(cfg.data.get(f"{cfg.eval.split}_folds"))
  return split, f"{report['path']} {cfg.eval.split} folds {folds}", report


def student_meta(cfg, model_cfg, tokenizer_dir: str, *, stage: str, step: int, valid: dict) -> dict:
  return {"model": "bert", "model_config": model_cfg.to_dict(), "labels": list(cfg.labels),
          "tokenizer": tokenizer_dir, "item_template": cfg.data.item_template,
          "max_len_std": int(cfg.student.max_len_std), "stage": stage, "step": step,
          "init": cfg.student.init, "data": cfg.data.path or "bundled esci_us_srw150",
          "train_folds": list(cfg.data.train_folds),
          "metrics": {"valid_macro_f1": valid["macro_f1"], "valid_accuracy": valid["accuracy"]}}
