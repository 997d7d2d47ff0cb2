"""`--stage=all`: every stage in order in one workdir, skipping the ones already complete.

    cpt -> sft -> reward -> dpo -> annotate -> crsd -> baseline -> eval -> export

A stage is complete when `<workdir>/<stage>/summary.json` exists (written last, after final/),
so a rerun after a failure or a kill continues with the first incomplete stage, and a stage
interrupted mid-training resumes from its own checkpoint. A complete or interrupted training
stage is only reused with the config it was trained with (its run_config.json,
rd_jax/train/run_config.py): a changed key stops the run naming it. Each stage reads its
predecessor's output from the workdir: the teacher stages restore the newest upstream final/,
crsd reads `<workdir>/annotate/annotations.jsonl` when `data.reasoning_source = "annotations"` and
`data.reasoning_path` is empty or "bundled" (a run that annotates uses its own annotations, not
the ones shipped with the package). `all.stages` in the config chooses a subset (e.g. the student
only: ["crsd", "baseline", "eval", "export"]).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import jax
from absl import logging

from rd_jax import errors
from rd_jax import metrics as metrics_lib
from rd_jax import stages as registry
from rd_jax import storage
from rd_jax.data import readers
from rd_jax.train import run_config

ORDER = ("cpt", "sft", "reward", "dpo", "annotate", "crsd", "baseline", "eval", "export")


def peak_rss_gib() -> float:
  """This process's peak resident set so far, GiB (ru_maxrss: KiB on Linux, bytes on macOS).

  Recorded after each stage in all_summary.json (`peak_rss_gib_after`): the stages share one
  process, so the figure after stage k is the peak of stages 1..k, and where it jumps is the stage
  that sets the machine's memory need.
  """
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return round(peak / (2 ** 30 if sys.platform == "darwin" else 2 ** 20), 2)


def rss_gib() -> float | None:
  """This process's resident set now, GiB (Linux's /proc VmRSS; None where there is no /proc)."""
  try:
    with open("/proc/self/status") as f:
      kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
  except (OSError, StopIteration, ValueError):
    return None
  return round(kib / 2 ** 20, 2)


def release_memory() -> None:
  """Between stages: collect garbage and hand glibc's free heap pages back to the kernel.

  A finished stage's arrays are freed, but glibc keeps the pages in its arenas: measured after the
  demo pipeline's cpt (session 36), the process held 4.45 GiB resident, 4.45 after gc.collect()
  and 0.83 after malloc_trim(0). Without the trim every stage's peak stacks on the last one's
  leftovers. A no-op where the C library is not glibc.
  """
  import ctypes
  import gc
  gc.collect()
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


def is_complete(workdir: str, stage: str) -> bool:
  return storage.exists(os.path.join(workdir, stage, "summary.json"))


def run(cfg, workdir: str) -> dict:
  wanted = list(cfg.all.stages) or list(ORDER)
  unknown = [s for s in wanted if s not in ORDER]
  if unknown:
    raise errors.ConfigError(f"config key all.stages has unknown stages {unknown}; known: {list(ORDER)}")
  if "annotate" in wanted and readers.is_bundled_annotations(cfg.data.reasoning_path):
    # The pipeline made its own annotations: crsd reads those, not the shipped ones.
    logging.info("all: annotate is in this run, so crsd reads <workdir>/annotate/annotations.jsonl"
                 f" instead of the bundled teacher annotations ({cfg.data.reasoning_path!r})")
    cfg = cfg.copy_and_resolve_references()
    cfg.data.reasoning_path = ""
  timings, results, peak_rss, rss_after = {}, {}, {}, {}
  started = time.perf_counter()
  for stage in [s for s in ORDER if s in wanted]:
    if is_complete(workdir, stage):
      if stage in run_config.STAGE_KEYS and run_config.check(
          os.path.join(workdir, stage), run_config.for_stage(cfg, stage), what="reuse") is None:
        logging.warning("all: %s is complete but predates run_config.json: reused unchecked", stage)
      logging.info("all: %s already complete, skipped", stage)
      timings[stage] = "skipped (complete)"
      continue
    logging.info("all: running %s", stage)
    t0 = time.perf_counter()
    result = registry.run(stage, cfg, workdir)
    if result.get("interrupted_at"):
      return {"stage": "all", "interrupted_in": stage, "seconds_per_stage": timings,
              "peak_rss_gib_after": peak_rss}
    timings[stage] = round(time.perf_counter() - t0, 1)
    peak_rss[stage] = peak_rss_gib()
    results[stage] = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
    del result
    release_memory()
    rss_after[stage] = rss_gib()   # what the next stage starts from
  summary = {"stage": "all", "seconds": round(time.perf_counter() - started, 1),
             "seconds_per_stage": timings, "peak_rss_gib_after": peak_rss,
             "rss_gib_after_release": rss_after, "results": results}
  if jax.process_index() == 0:
    metrics_lib.write_json_atomic(summary, os.path.join(workdir, "all_summary.json"))
  logging.info("all: %s", json.dumps(timings))
  return summary
