"""A corpus of malformed pairs files, and a runner that feeds each one to `rd_jax.main`.

    build(folder) -> {name: Case}      # used by tests/test_malformed.py (readers level)
    python tests/malformed_corpus.py --out=/tmp/corpus [--stages=crsd,eval] [--modes=error,skip]
    python tests/malformed_corpus.py --out=/tmp/corpus --in_process   # minutes: data paths only

The runner runs `python -m rd_jax.main --config=configs/tiny.py` on every file for each stage and
`data.on_bad_row` mode, and counts: named errors (a one-line message naming the file, exit 2-4),
tracebacks, counted skips (exit 0 with rows skipped in the summary), flagged degenerate data, and
silent acceptances (exit 0, nothing skipped, nothing flagged) — the goal is 0 tracebacks and 0
silent acceptances. It prints a table and writes <out>/results.json.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import subprocess
import sys

ROW_FIELDS = ("query", "product_title", "label", "query_fold")


@dataclasses.dataclass
class Case:
  path: str
  kind: str          # "row": bad rows among good ones (skip counts them); "file": the file stops;
                     # "degenerate": a readable file whose data is flagged; "split": no usable split
  reason: str        # the reason_key skipped rows are counted under (row cases), or a word the
                     # message must contain (file/split cases), or the degenerate flag's kind


def good_rows(n: int = 24, labels=("Exact", "Irrelevant")) -> list[dict]:
  """n labelled rows over 8 queries in folds 1-4 (train 1+3, valid 2, test 4), both labels."""
  return [{"query": f"query number {i % 8}", "product_title": f"product {i} title",
           "label": labels[(i // 8) % len(labels)], "query_fold": 1 + (i % 8) % 4}
          for i in range(n)]


def _jsonl(rows) -> bytes:
  return "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")


def _csv(rows, header=ROW_FIELDS) -> bytes:
  lines = [",".join(header)] + [",".join(str(r.get(h, "")) for h in header) for r in rows]
  return ("\n".join(lines) + "\n").encode("utf-8")


def build(folder: str) -> dict[str, Case]:
  os.makedirs(folder, exist_ok=True)
  good = good_rows()
  cases: dict[str, tuple[str, bytes, str, str]] = {}

  def add(name, data: bytes, kind: str, reason: str):
    cases[name] = (name, data, kind, reason)

  latin = _jsonl(good[:12]) + '{"query": "caf\xe9", "product_title": "x", "label": "Exact"}\n'.encode(
      "latin-1") + _jsonl(good[12:])
  add("latin1.jsonl", latin, "row", "bad_encoding")
  add("gzip_named_plain.jsonl", gzip.compress(_jsonl(good)), "file", "gzip")
  add("truncated.jsonl.gz", gzip.compress(_jsonl(good))[:60], "file", "decompress")
  add("not_gzip.jsonl.gz", _jsonl(good), "file", "decompress")
  add("utf16.jsonl", _jsonl(good).decode().encode("utf-16"), "file", "UTF-16")
  add("empty.jsonl", b"", "file", "empty")
  add("blank_lines.jsonl", b"\n   \n\n", "file", "empty")
  add("empty.csv", b"", "file", "empty")
  add("header_only.csv", b"query,product_title,label,query_fold\n", "file", "empty")
  ragged = _csv(good[:12]) + b"query 1,a,b,c,d,Exact,1\n" + _csv(good[12:])[len(_csv([])):]
  add("ragged.csv", ragged, "row", "csv_fields")
  add("no_query_column.csv", _csv(good, header=("q", "product_title", "label")), "file", "query")
  add("latin1.csv", _csv(good[:12]) + "caf\xe9,x,Exact,1\n".encode("latin-1")
      + _csv(good[12:])[len(_csv([])):], "row", "bad_encoding")
  add("invalid_json.jsonl", _jsonl(good[:12]) + b"{not json\n" + _jsonl(good[12:]), "row",
      "invalid_json")
  add("json_array.json", json.dumps(good).encode(), "file", "array")
  add("not_object.jsonl", _jsonl(good) + b'["a", "b"]\n', "row", "not_an_object")
  add("missing_query.jsonl", _jsonl(good + [{"product_title": "x", "label": "Exact"}]), "row",
      "missing_query")
  add("empty_item.jsonl", _jsonl(good + [{"query": "q", "label": "Exact"}]), "row", "empty_item")
  add("unknown_label.jsonl", _jsonl(good + [{**good[0], "label": "Great"}]), "row",
      "unknown_label")
  add("number_query.jsonl", _jsonl(good + [{**good[0], "query": 5}]), "row", "non_string_field")
  add("bad_fold.jsonl", _jsonl(good + [{**good[0], "query_fold": "x"}]), "row", "bad_fold")
  add("fold_out_of_range.jsonl", _jsonl(good + [{**good[0], "query_fold": 9}]), "row",
      "bad_fold")
  add("not_parquet.parquet", _jsonl(good), "file", "Parquet")
  add("all_duplicates.jsonl", _jsonl([good[0]] * 12 + [{**good[0], "query_fold": f}
                                                        for f in (2, 4) for _ in range(6)]),
      "degenerate", "duplicates")
  add("single_class.jsonl", _jsonl(good_rows(labels=("Exact",))), "degenerate", "one_class")
  add("one_fold.jsonl", _jsonl([{**r, "query_fold": 1} for r in good]), "split", "valid split")
  add("unused_fold.jsonl", _jsonl(good + [{**r, "query_fold": 0} for r in good[:6]]),
      "degenerate", "unused_folds")
  out = {}
  for name, (_, data, kind, reason) in cases.items():
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
      f.write(data)
    out[name] = Case(path, kind, reason)
  return out


def _run_main(repo: str, path: str, stage: str, mode: str, workdir: str) -> dict:
  cmd = [sys.executable, "-m", "rd_jax.main", f"--stage={stage}", "--config=configs/tiny.py",
         f"--workdir={workdir}", f"--config.data.path={path}", f"--config.data.on_bad_row={mode}",
         "--config.train.num_steps=2", "--config.train.batch_size=4"]
  if stage == "eval":  # the test split of the file (data.path), so its folds are checked too
    cmd.append(f"--config.eval.checkpoint={os.path.join(os.path.dirname(workdir), 'student')}")
  env = {**os.environ, "PYTHONPATH": repo, "JAX_PLATFORMS": "cpu"}
  r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
  summary = {}
  summary_path = os.path.join(workdir, "eval" if stage == "eval" else stage,
                              "metrics.json" if stage == "eval" else "summary.json")
  if r.returncode == 0 and os.path.exists(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
  data = summary.get("data_report") or summary.get("data") or {}
  skipped = data.get("rows_skipped", 0) if isinstance(data, dict) else 0
  flagged = bool(data.get("degenerate") or (data.get("split") or {}).get("unused_pairs")) \
      if isinstance(data, dict) else False
  tail = r.stderr.strip().splitlines()[-2:] if r.stderr.strip() else []
  named = r.returncode in (2, 3, 4) and any(os.path.basename(path) in l or "split" in l
                                            for l in tail)
  return {"rc": r.returncode, "traceback": "Traceback (most recent call last)" in r.stderr,
          "named_error": named, "skipped": skipped, "flagged": flagged,
          "silent": r.returncode == 0 and not skipped and not flagged,
          "message": tail[0] if tail else ""}


def run_in_process(cases: dict, out: str) -> list[dict]:
  """The same measure without a process per run (and without training): each file through the
  data path of training (student_common.load_student_data, which crsd and baseline call first)
  and of evaluation (student_common.load_eval_pairs), under both on_bad_row modes. An exception
  that errors.classify does not call a user error is what would print a traceback."""
  import traceback
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import tiny
  from rd_jax import errors
  from rd_jax.student import data as student_common
  results = []
  for name, case in cases.items():
    for stage in ("train", "eval"):
      for mode in ("error", "skip"):
        cfg = tiny.get_config()
        cfg.data.path, cfg.data.on_bad_row = case.path, mode
        cfg.data.reasoning_source = "rules"
        folder = os.path.join(out, "inproc", f"{name}_{stage}_{mode}")
        os.makedirs(folder, exist_ok=True)
        r = {"file": name, "kind": case.kind, "stage": stage, "mode": mode, "traceback": False,
             "named_error": False, "skipped": 0, "flagged": False, "message": ""}
        try:
          if stage == "train":
            report = student_common.load_student_data(cfg, folder, use_reasoning=True).report
          else:
            report = student_common.load_eval_pairs(cfg, folder)[2]
          r["skipped"] = report["rows_skipped"]
          r["flagged"] = bool(report.get("degenerate") or report["split"]["unused_pairs"])
        except Exception as e:  # noqa: BLE001 - measured, not handled
          kind = errors.classify(e)
          r["message"] = f"{type(e).__name__}: {e}"
          if kind is None:
            r["traceback"] = True
            r["message"] += "\n" + traceback.format_exc()
          else:
            r["named_error"] = name in str(e) or "split" in str(e)
        r["silent"] = not (r["traceback"] or r["named_error"] or r["skipped"] or r["flagged"])
        results.append(r)
        print(f"{name:26s} {stage:5s} {mode:5s} tb={int(r['traceback'])} "
              f"named={int(r['named_error'])} skipped={r['skipped']} flagged={int(r['flagged'])} "
              f"silent={int(r['silent'])}  {r['message'][:100]}", flush=True)
  return results


def main(argv=None) -> int:
  import argparse
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--stages", default="crsd,eval")
  ap.add_argument("--modes", default="error,skip")
  ap.add_argument("--in_process", action="store_true",
                  help="no subprocess, no training: the data path of train and eval only")
  args = ap.parse_args(argv)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cases = build(os.path.join(args.out, "files"))
  if args.in_process:
    return _report(run_in_process(cases, args.out), cases, args.out)
  # one tiny student to evaluate with (trained on the bundled data)
  student_root = os.path.join(args.out, "runs")
  student = os.path.join(student_root, "student")
  if "eval" in args.stages and not os.path.exists(os.path.join(student, "final", "COMPLETE")):
    subprocess.run([sys.executable, "-m", "rd_jax.main", "--stage=crsd",
                    "--config=configs/tiny.py", f"--workdir={student_root}/train",
                    "--config.train.num_steps=2"], cwd=repo, check=True,
                   env={**os.environ, "PYTHONPATH": repo})
    os.replace(os.path.join(student_root, "train", "crsd"), student)
  results = []
  for name, case in cases.items():
    for stage in args.stages.split(","):
      for mode in args.modes.split(","):
        workdir = os.path.join(student_root, f"{name}_{stage}_{mode}")
        r = _run_main(repo, case.path, stage, mode, workdir)
        r.update(file=name, kind=case.kind, stage=stage, mode=mode)
        results.append(r)
        print(f"{name:26s} {stage:5s} {mode:5s} rc={r['rc']} tb={int(r['traceback'])} "
              f"named={int(r['named_error'])} skipped={r['skipped']} flagged={int(r['flagged'])} "
              f"silent={int(r['silent'])}  {r['message'][:110]}", flush=True)
  return _report(results, cases, args.out)


def _report(results: list[dict], cases: dict, out: str) -> int:
  totals = {"runs": len(results), "files": len(cases),
            "tracebacks": sum(r["traceback"] for r in results),
            "named_errors": sum(r["named_error"] for r in results),
            "counted_skips": sum(bool(r["skipped"]) and r.get("rc", 0) == 0 for r in results),
            "flagged": sum(r["flagged"] and r.get("rc", 0) == 0 for r in results),
            "silent": sum(r["silent"] for r in results)}
  print(json.dumps(totals))
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"totals": totals, "runs": results}, f, indent=1)
  return 0 if totals["tracebacks"] == 0 and totals["silent"] == 0 else 1


if __name__ == "__main__":
  sys.exit(main())
