"""crsd.label_source=teacher_soft: the annotations' label_probs reach the student's batch as
soft CE targets (the loss itself: tests/test_losses_crsd.py::test_soft_target_cross_entropy_golden)."""

import json

import numpy as np
import pytest

from rd_jax import errors
from rd_jax.data import pipeline, readers, tokenize
from rd_jax.student import data as student_data


def _annotations(pairs, path, labels, with_probs=True):
  rng = np.random.default_rng(0)
  rows = []
  for p in pairs:
    probs = rng.dirichlet(np.ones(len(labels)))
    row = {"query_id": p.query_id, "product_id": p.product_id, "query": p.query,
           "reasoning": f"about {p.query}", "teacher_label": labels[int(np.argmax(probs))]}
    if with_probs:
      row["label_probs"] = probs.round(5).tolist()
    rows.append(row)
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  return rows


def test_label_probs_become_soft_targets(tiny_config, tmp_path):
  cfg = tiny_config()
  cfg.crsd.label_source = "teacher_soft"
  pairs, _ = readers.load_pairs("", cfg)
  pairs = pairs[:16]
  rows = _annotations(pairs, tmp_path / "ann.jsonl", list(cfg.labels))
  attached, _ = readers.attach_reasoning(pairs, str(tmp_path / "ann.jsonl"), cfg)
  report = {}
  train = student_data._label_source(attached, cfg, report, str(tmp_path))
  assert report["labels"] == "teacher_soft"
  for p, r in zip(train, rows):
    assert p.label_id == cfg.labels.index(r["teacher_label"])
    np.testing.assert_allclose(p.soft_label, r["label_probs"])
  tok = student_data.load_tokenizer(cfg.student.tokenizer)
  tokens = tokenize.tokenize_pairs(train, tok, max_len_std=32, max_len_aug=64)
  batch = pipeline.make_batch(tokens, np.array([3, 0, 5]), std_len=32, aug_len=64)
  np.testing.assert_allclose(batch["soft_labels"], [rows[i]["label_probs"] for i in (3, 0, 5)], rtol=1e-6)
  # gold / teacher students: no soft targets in their batches
  plain = tokenize.tokenize_pairs(pairs, tok, max_len_std=32, max_len_aug=64)
  assert "soft_labels" not in pipeline.make_batch(plain, np.array([0]), std_len=32, aug_len=64)


def test_annotations_without_label_probs_are_refused(tiny_config, tmp_path):
  cfg = tiny_config()
  cfg.crsd.label_source = "teacher_soft"
  pairs, _ = readers.load_pairs("", cfg)
  _annotations(pairs[:4], tmp_path / "ann.jsonl", list(cfg.labels), with_probs=False)
  attached, _ = readers.attach_reasoning(pairs[:4], str(tmp_path / "ann.jsonl"), cfg)
  with pytest.raises(errors.DataError, match="no label_probs"):
    student_data._label_source(attached, cfg, {}, str(tmp_path))
