"""bundle_annotations: a complete annotate/ stage -> the package's gzipped annotations + provenance."""

import gzip
import json

import pytest

from rd_jax.data import bundle_annotations, readers


def _workdir(tmp_path, annotate_summary=True, data_path=None):
  work = tmp_path / "work"
  for stage in ("cpt", "sft", "dpo"):
    (work / stage).mkdir(parents=True)
    (work / stage / "summary.json").write_text(json.dumps({"stage": stage, "seconds": 1.0}))
  (work / "annotate").mkdir()
  rows = [{"query_id": "q1", "product_id": "p1", "query": "mug", "teacher_label": "Exact",
           "reasoning": "A mug.", "confidence": 1.0, "label": "Exact", "fold": 1,
           "raw": "A mug.\nLabel: Exact", "votes": {"Exact": 1}, "attempts": 1},
          {"query_id": "q2", "product_id": "p2", "query": "cup", "teacher_label": "Irrelevant",
           "reasoning": "A plate.", "confidence": 1.0, "label": "Substitute", "fold": 3,
           "label_probs": [0.1, 0.2, 0.3, 0.4], "teacher_ckpt": str(tmp_path / "runs" / "teacher" / "dpo" / "final"),
           "raw": "A plate.\nLabel: Irrelevant", "votes": {"Irrelevant": 1}, "attempts": 2}]
  (work / "annotate" / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  if annotate_summary:
    summary = {"stage": "annotate", "pairs": 3, "annotated": 2, "failures": 1,
               "data": {"path": data_path or readers.bundled_pairs_path()}}
    (work / "annotate" / "summary.json").write_text(json.dumps(summary))
  return work


def test_bundle_keeps_what_the_student_needs_and_records_provenance(tmp_path):
  out = tmp_path / "assets"
  out.mkdir()
  prov = bundle_annotations.bundle(str(_workdir(tmp_path)), "python -m rd_jax.main ...",
                                   {"seed": 0}, out_dir=str(out))
  with gzip.open(out / "teacher_annotations.jsonl.gz", "rt") as f:
    rows = [json.loads(line) for line in f]
  assert [r["product_id"] for r in rows] == ["p1", "p2"]
  # raw text, votes, attempts and the machine's checkpoint path left out; label_probs kept
  assert set(rows[1]) == set(bundle_annotations.KEEP)
  saved = json.loads((out / "teacher_annotations.json").read_text())
  assert saved == prov and prov["annotations"] == 2 and prov["command"] == "python -m rd_jax.main ..."
  assert set(prov["stages"]) == {"cpt", "sft", "dpo", "annotate"} and prov["config"] == {"seed": 0}
  assert not list(out.glob("*.tmp"))
  # no machine paths in what ships: absolute paths under the repo become repo-relative
  assert prov["stages"]["annotate"]["data"]["path"] == "rd_jax/data/assets/esci_us_srw150/pairs.jsonl.gz"
  assert bundle_annotations.REPO_ROOT not in (out / "teacher_annotations.json").read_text()
  first = (out / "teacher_annotations.jsonl.gz").read_bytes()
  bundle_annotations.bundle(str(_workdir(tmp_path / "again")), out_dir=str(out))
  assert (out / "teacher_annotations.jsonl.gz").read_bytes() == first  # same run, same bytes


def test_bundle_refuses_incomplete_or_foreign_runs(tmp_path):
  with pytest.raises(FileNotFoundError, match="annotate stage is not complete"):
    bundle_annotations.bundle(str(_workdir(tmp_path, annotate_summary=False)), out_dir=str(tmp_path))
  other = tmp_path / "other"
  other.mkdir()
  with pytest.raises(ValueError, match="not the bundled data"):
    bundle_annotations.bundle(str(_workdir(other, data_path="/data/mine.jsonl")), out_dir=str(tmp_path))
