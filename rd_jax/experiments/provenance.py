"""Did this teacher write the annotations the students read? (The experiment table's retention
divides a student's macro-F1 by a teacher's: only meaningful for the teacher it distilled from.)

The students' annotations are `data.reasoning_path` ("bundled", "" = <teacher_workdir>/annotate/
annotations.jsonl, or a file). Their teacher is named by
  - a file: the `teacher_ckpt` of its rows (annotate writes the absolute final/ it loaded);
  - the bundled annotations: their provenance (`teacher_annotations.json`): `stages.annotate.
    teacher_ckpt` (a path on the machine that made them) and each teacher stage's summary.
The table's teacher is the last of cpt/sft/dpo with a complete final/ in --teacher_workdir.
They match when the annotating checkpoint's real path is that final/, or (bundled) when it is the
same step and every teacher stage summary in the provenance equals the workdir's <step>/summary.json
on its numeric figures (losses, metrics, counts; timings excluded): a rerun elsewhere that
reproduces them is the same teacher, another run is not.
"""

from __future__ import annotations

import json
import os

from rd_jax import storage

TEACHER_STEPS = ("cpt", "sft", "dpo")


class TeacherMismatchError(ValueError):
  """The teacher rows would come from a teacher the students did not distil from."""


def annotations_file(cfg, teacher_workdir: str) -> str:
  from rd_jax.data import readers
  return readers.resolve_annotations(cfg.data.reasoning_path,
                                     os.path.join(teacher_workdir, "annotate", "annotations.jsonl"))


def _figures(summary, prefix: str = "") -> dict:
  """Numeric leaves of a summary, by dotted key, without timings (seconds, rates)."""
  if isinstance(summary, dict):
    out = {}
    for k, v in summary.items():
      if "second" not in k and not k.endswith("_per_s"):
        out.update(_figures(v, f"{prefix}{k}."))
    return out
  if isinstance(summary, (int, float)) and not isinstance(summary, bool):
    return {prefix.rstrip("."): float(summary)}
  return {}


def _annotating_ckpt(path: str) -> str | None:
  from rd_jax.data import readers
  with readers.open_text(path) as f:
    for line in f:
      if line.strip():
        return json.loads(line).get("teacher_ckpt")
  return None


def check_teacher_wrote_annotations(cfg, teacher_workdir: str, final_step: str | None) -> dict:
  """Raises TeacherMismatchError unless `final_step` of `teacher_workdir` (the table's teacher)
  wrote the annotations the students read; returns what was compared. Students on rule-based
  reasoning read no teacher annotations: nothing to compare (`{"students_read": "rules"}`)."""
  if cfg.data.reasoning_source != "annotations":
    return {"students_read": "rules (no teacher annotations)"}
  path = annotations_file(cfg, teacher_workdir)
  table_teacher = (storage.realpath(os.path.join(teacher_workdir, final_step, "final"))
                   if final_step else f"the base model {cfg.teacher.init!r}")
  from rd_jax.data import readers
  provenance_path = readers.annotations_provenance_path(path)
  if path.endswith(".jsonl.gz") and storage.exists(provenance_path):   # bundled, with provenance
    provenance = json.loads(storage.read_text(provenance_path))
    wrote = provenance.get("stages", {}).get("annotate", {}).get("teacher_ckpt", "")
    step = os.path.basename(os.path.dirname(wrote.rstrip("/"))) if wrote.endswith("final") else ""
    differing = []
    for s in TEACHER_STEPS:
      theirs = provenance.get("stages", {}).get(s)
      mine = os.path.join(teacher_workdir, s, "summary.json")
      if theirs is None:
        continue
      if not storage.exists(mine) or _figures(json.loads(storage.read_text(mine))) != _figures(theirs):
        differing.append(s)
    if step == final_step and not differing:
      return {"annotations": path, "teacher_ckpt": wrote, "matched_on": "stage summaries"}
    raise TeacherMismatchError(
        f"the students read annotations {path} written by {wrote!r} (commit "
        f"{provenance.get('commit', '?')[:10]}), but --teacher_workdir={teacher_workdir} is "
        f"another teacher ({table_teacher}; stage summaries differ or are missing: "
        f"{differing or [final_step]}). Retention must divide by the teacher the students "
        "distilled from: pass the workdir that wrote these annotations, point "
        "data.reasoning_path at this teacher's annotate/annotations.jsonl, or omit "
        "--teacher_workdir.")
  if not storage.exists(path):
    raise TeacherMismatchError(f"the students' annotations {path} do not exist; cannot tell "
                               f"whether {table_teacher} wrote them")
  wrote = _annotating_ckpt(path)
  if wrote and final_step and storage.realpath(wrote) == table_teacher:
    return {"annotations": path, "teacher_ckpt": wrote, "matched_on": "teacher_ckpt"}
  raise TeacherMismatchError(
      f"the students read annotations {path} written by teacher_ckpt={wrote!r}, but the table's "
      f"teacher is {table_teacher} (--teacher_workdir={teacher_workdir}). Retention must divide "
      "by the teacher the students distilled from.")
