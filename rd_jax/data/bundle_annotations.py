"""Ship a teacher run's annotations with the package (maintainers; what `reasoning_path=bundled` reads).

  python -m rd_jax.data.bundle_annotations --workdir=runs/teacher --config=configs/demo.py \
      --command="<the command that made runs/teacher>"

Copies <workdir>/annotate/annotations.jsonl (gzipped, keys sorted, only what the student needs:
ids, query, teacher_label, label_probs (scored labels), reasoning, confidence, gold label) to
`data/assets/esci_us_srw150/teacher_annotations.jsonl.gz` (what `data.reasoning_path=bundled`
reads) and writes `teacher_annotations.json` next to it: the commit, the command, the config and
every teacher stage's summary figures, so a reader can tell which teacher wrote the reasoning.
Earlier teachers' files are kept beside them: `teacher_annotations_v1.*` ("bundled_v1", prompt v1)
and `teacher_annotations_v2.*` ("bundled_v2", the prompt-v2 cpt -> sft -> reward -> dpo chain).
Refuses a run whose annotate stage is not complete (no summary.json) or whose annotations are not
of the bundled data.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess

from absl import app, flags
from ml_collections import config_flags

from rd_jax import metrics as metrics_lib
from rd_jax.data import readers
from rd_jax import errors

_WORKDIR = flags.DEFINE_string("workdir", None, "Pipeline workdir with a complete annotate/ stage.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "The config the run used (recorded).")
_COMMAND = flags.DEFINE_string("command", "", "The command that produced the workdir (recorded).")
KEEP = ("query_id", "product_id", "query", "teacher_label", "label_probs", "reasoning",
        "confidence", "label", "fold")
STAGES = ("cpt", "sft", "reward", "dpo", "annotate")


def _commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=os.path.dirname(__file__), check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _relative_paths(value, root: str = REPO_ROOT):
  """`value` with every string that is an absolute path under `root` made relative to it: the
  provenance ships with the package and must not carry this machine's folders."""
  if isinstance(value, dict):
    return {k: _relative_paths(v, root) for k, v in value.items()}
  if isinstance(value, list):
    return [_relative_paths(v, root) for v in value]
  if isinstance(value, str) and os.path.isabs(value) and value.startswith(root + os.sep):
    return os.path.relpath(value, root)
  return value


def bundle(workdir: str, command: str = "", config: dict | None = None,
           out_dir: str = readers.BUNDLED_DIR) -> dict:
  annotate = os.path.join(workdir, "annotate")
  if not os.path.exists(os.path.join(annotate, "summary.json")):
    raise FileNotFoundError(f"{annotate}/summary.json missing: the annotate stage is not complete")
  summaries = {}
  for stage in STAGES:
    path = os.path.join(workdir, stage, "summary.json")
    if os.path.exists(path):
      with open(path) as f:
        summaries[stage] = json.load(f)
  if summaries["annotate"].get("data", {}).get("path", readers.bundled_pairs_path()) != \
      readers.bundled_pairs_path():
    raise errors.ConfigError(f"{annotate} annotated {summaries['annotate']['data']['path']}, "
                             "not the bundled data")
  records = []
  with open(os.path.join(annotate, "annotations.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      records.append({k: row[k] for k in KEEP if k in row})
  data_path = os.path.join(out_dir, "teacher_annotations.jsonl.gz")
  tmp = data_path + ".tmp"
  # mtime 0 in the gzip header: the same run gives the same bytes
  with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
      io.TextIOWrapper(gz, encoding="utf-8") as f:
    for row in records:
      f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
  os.replace(tmp, data_path)
  provenance = {
      "what": "SmolLM2-135M-Instruct teacher (" + " -> ".join(
          s for s in STAGES if s in summaries and s != "annotate") + ") annotations of the "
              "bundled ESCI train folds: teacher_label, label_probs (when its labels were "
              "scored), reasoning (" + ("the given rule rationale" if summaries["annotate"].get(
                  "reasoning") == "rules" else "the teacher's") + "), confidence per pair",
      "annotations": len(records), "commit": _commit(), "command": command,
      "config": config,
      "stages": summaries,
  }
  provenance = _relative_paths(provenance)
  metrics_lib.write_json_atomic(provenance, os.path.join(out_dir, "teacher_annotations.json"))
  return provenance


def main(argv):
  del argv
  config = json.loads(_CONFIG.value.to_json()) if _CONFIG.value is not None else None
  provenance = bundle(_WORKDIR.value, _COMMAND.value, config)
  print(f"bundled {provenance['annotations']} annotations (commit {provenance['commit']})")


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  errors.run_cli(lambda: app.run(main), "python -m rd_jax.data.bundle_annotations")
