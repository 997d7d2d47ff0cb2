"""The students' data: labelled pairs per the data section, with reasoning (rules or the teacher's
annotations) and labels (gold or the teacher's); the BERT tokenizer; the pairs eval scores."""

from __future__ import annotations

import dataclasses
import os
import tempfile

import jax
import numpy as np
from absl import logging

from rd_jax import errors
from rd_jax import metrics as metrics_lib
from rd_jax import storage
from rd_jax.data import rationale, readers
from rd_jax.data import degenerate
from rd_jax.data import split as split_lib
from rd_jax.student import lexical_targets, negatives


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
  """data.reasoning_path: "" = this workdir's annotate output; "bundled" / "bundled_v2" / "bundled_v1" = teacher
  annotations shipped with the bundled data (readers.bundled_annotations_path); else a file."""
  return readers.resolve_annotations(cfg.data.reasoning_path,
                                     os.path.join(workdir, "annotate", "annotations.jsonl"))


def _with_reasoning(pairs, cfg, report: dict, split: str, workdir: str):
  """Attaches reasoning per cfg.data.reasoning_source; a pair left without one is an error."""
  if cfg.data.reasoning_source == "rules":
    report[f"{split}_reasoning"] = "rules (data/rationale.py, lexical, no label)"
    return rationale.with_rule_rationales(pairs)
  path = annotations_path(cfg, workdir)
  if not storage.exists(path):
    raise FileNotFoundError(f"annotations {path} do not exist (data.reasoning_source="
                            "'annotations'): run --stage=annotate first, set "
                            "data.reasoning_path, or use data.reasoning_source=rules")
  pairs, ann_report = readers.attach_reasoning(pairs, path, cfg)
  report[f"{split}_reasoning_file"] = path
  report[f"{split}_reasoning"] = ann_report
  missing = [p for p in pairs if not p.reasoning]
  if missing and len(missing) == len(pairs):
    raise errors.DataError(f"none of the {len(pairs)} {split} pairs has an annotation in {path}: "
                           "they annotate another file; use data.reasoning_source=rules, or "
                           "annotate this file (--stage=annotate) and set data.reasoning_path")
  if missing:
    if cfg.data.on_missing_reasoning == "error":
      raise errors.DataError(f"{len(missing)} {split} pairs have no reasoning in "
                             f"{path} (e.g. query_id={missing[0].query_id} "
                             f"product_id={missing[0].product_id}); set "
                             "data.on_missing_reasoning=skip to drop them")
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
      raise errors.DataError(
          f"crsd.label_source=teacher but {len(without)} train pairs have no teacher label in "
          f"{annotations_path(cfg, workdir)} (e.g. query_id={without[0].query_id} product_id="
          f"{without[0].product_id}); set data.on_missing_reasoning=skip to drop them")
    pairs = [p for p in pairs if p.teacher_label_id is not None]
    report["train_dropped_without_teacher_label"] = len(without)
  report["labels"] = cfg.crsd.label_source
  if cfg.crsd.label_source == "teacher_soft":   # the teacher's label_probs as soft CE targets
    without = [p for p in pairs if p.teacher_label_probs is None]
    if without:
      raise errors.DataError(
          f"crsd.label_source=teacher_soft but {len(without)} train pairs' annotations in "
          f"{annotations_path(cfg, workdir)} have no label_probs (annotations made with "
          "teacher.score_labels); use crsd.label_source=teacher")
    return [dataclasses.replace(p, label_id=p.teacher_label_id, soft_label=p.teacher_label_probs)
            for p in pairs]
  return [dataclasses.replace(p, label_id=p.teacher_label_id) for p in pairs]


def load_student_data(cfg, stage_dir: str, *, use_reasoning: bool) -> StudentData:
  pairs, report = readers.load_pairs(cfg.data.path, cfg, require_label=True,
                                     rejects_path=os.path.join(stage_dir, "rejects.jsonl"))
  splits = readers.train_valid_test(pairs, cfg)
  train, valid = splits["train"], splits["valid"]
  split_lib.check_trainable(report["split"], cfg, report["path"])  # an empty train/valid: the fix
  if cfg.data.max_train_pairs and cfg.data.max_train_pairs < len(train):
    report["train_pairs_sampled"] = {"from": len(train), "max_train_pairs": cfg.data.max_train_pairs,
                                     "seed": cfg.seed}
    train = readers.seeded_subset(train, cfg.data.max_train_pairs, cfg.seed)
  workdir = os.path.dirname(storage.abspath(stage_dir))
  if use_reasoning:
    train = _with_reasoning(train, cfg, report, "train", workdir)
    if cfg.crsd.shuffle_reasoning:
      train = shuffle_reasoning(train, cfg.seed)
      report["reasoning_shuffled"] = True
  elif cfg.crsd.label_source in ("teacher", "teacher_soft"):  # the "teacher labels only" student too
    train, _ = readers.attach_reasoning(train, annotations_path(cfg, workdir), cfg)
  train = _label_source(train, cfg, report, workdir)
  train = negatives.with_cross_query_negatives(train, cfg, report, use_reasoning=use_reasoning)
  report.update(train_pairs=len(train), valid_pairs=len(valid))
  report["degenerate"] = degenerate.check({"train": train, "valid": valid}, cfg,
                                          stage="crsd" if use_reasoning else "baseline")
  degenerate.stop_if_untrainable(report["degenerate"], report["path"])
  train = lexical_targets.with_lexical_targets(train, valid, cfg, report)  # alpha 0: unchanged
  if jax.process_index() == 0:
    metrics_lib.write_json_atomic(report, os.path.join(stage_dir, "data_report.json"))
  folder = _tokenizer_dir(cfg.student.tokenizer)
  return StudentData(train, valid, load_tokenizer(folder), folder, report)


def _tokenizer_dir(spec: str) -> str:
  from rd_jax.convert import hf_bert
  return os.path.abspath(hf_bert.resolve_bert_folder(spec))


def load_eval_pairs(cfg, out_dir: str, item_template: str | None = None):
  """(pairs, description, report) for eval: cfg.eval.path or the cfg.eval.split folds."""
  eval_cfg = cfg
  if item_template and item_template != cfg.data.item_template:
    eval_cfg = cfg.copy_and_resolve_references()
    with eval_cfg.unlocked():
      eval_cfg.data.item_template = item_template  # render items as the student saw them
  rejects = os.path.join(out_dir, "rejects.jsonl")
  if cfg.eval.path:
    pairs, report = readers.load_pairs(cfg.eval.path, eval_cfg, rejects_path=rejects,
                                       split_rows=False)  # the whole file is evaluated
    report["degenerate"] = degenerate.check({"eval.path": pairs}, cfg)
    return pairs, cfg.eval.path, report
  pairs, report = readers.load_pairs(cfg.data.path, eval_cfg, rejects_path=rejects)
  split = readers.train_valid_test(pairs, eval_cfg)[cfg.eval.split]
  folds = list(cfg.data.get(f"{cfg.eval.split}_folds"))
  if not split:
    split_lib.check_trainable(report["split"], eval_cfg, report["path"], names=(cfg.eval.split,))
  report["degenerate"] = degenerate.check({cfg.eval.split: split}, cfg)
  if report["split"]["how"].startswith("data.split"):   # a file without folds: split by shares
    where = f"{cfg.eval.split} split by data.split={tuple(report['split']['shares'])}"
  else:
    where = f"{cfg.eval.split} folds {folds}"
  return split, f"{report['path']} {where}", report


def _normalised(text: str) -> str:
  return " ".join(text.lower().split())


def train_overlap(cfg, pairs, item_template, key: str, path: str) -> dict:
  """How much of a labelled file (config key `key` = `path`: eval.path, calibrate.path) the training
  split of data.path already holds: its distinct queries (lower-cased, whitespace collapsed) and
  its (query, item text) pairs found there. A student scored on queries it trained on reads
  higher than on unseen ones, so the caller records this and a warning says so. The check reads
  the config's data.path and splits: a checkpoint trained on other data is not known."""
  train_cfg = cfg.copy_and_resolve_references()
  with train_cfg.unlocked():
    train_cfg.eval.path, train_cfg.eval.split = "", "train"
  with tempfile.TemporaryDirectory(prefix="rd_jax_overlap_") as scratch:   # not the caller's rejects
    train, described, _ = load_eval_pairs(train_cfg, scratch, item_template)
  train_queries = {_normalised(p.query) for p in train}
  train_pairs = {(_normalised(p.query), _normalised(p.item_text)) for p in train}
  queries = {_normalised(p.query) for p in pairs}
  out = {"queries": len(queries), "queries_in_train": len(queries & train_queries),
         "pairs": len(pairs), "pairs_in_train": sum(
             (_normalised(p.query), _normalised(p.item_text)) in train_pairs for p in pairs),
         "train": described}
  if out["queries_in_train"]:
    logging.warning("%s %s shares %d of its %d queries (%d of %d pairs) with the training split "
                    "(%s): its figures are not on unseen queries", key, path,
                    out["queries_in_train"], out["queries"], out["pairs_in_train"], out["pairs"],
                    out["train"])
  return out
