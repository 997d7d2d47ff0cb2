"""`python -m rd_jax.bench <name> --out=x.json [--size=tiny|minilm] [--repeats=N] [--steps=N] ...`

`python -m rd_jax.bench --help` lists the benchmarks; `python -m rd_jax.bench <name> --help` their
flags. Each writes one JSON file (schema: rd_jax/bench/common.py) and prints a short table.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one line). Modules are imported when the command line is parsed (cheap: they
# import JAX / torch only inside run()), teacher_generate only if it exists.
BENCHMARKS = {
    "student_train": ("rd_jax.bench.student_train",
                      "CRSD/baseline train step: jitted JAX vs PyTorch, same batch (ratio JAX/torch)"),
    "student_epoch": ("rd_jax.bench.student_epoch",
                      "examples/s over a real-data epoch: bucketed JAX vs dynamic-padding PyTorch"),
    "student_infer": ("rd_jax.bench.student_infer",
                      "student latency (batch 1) and throughput: JAX, PyTorch, ONNX Runtime, int8"),
    "teacher_generate": ("rd_jax.bench.teacher_generate",
                         "annotation throughput: KV-cache generation vs HF generate"),
    "crsd_overhead": ("rd_jax.bench.crsd_overhead",
                      "a CRSD step vs its two branches measured alone (ratio)"),
    "remat": ("rd_jax.bench.remat",
              "per-layer remat: XLA temp bytes of the student / teacher train step with and without"),
    "accel_check": ("rd_jax.bench.accel_check",
                    "GPU/TPU check (launch/gpu_check.sh): student bf16 MFU, teacher tokens/s, sharded step"),
    "sft_step": ("rd_jax.bench.sft_step",
                 "SFT step: the shared prompt prefix run once per batch vs once per row (ratio)"),
    "scaling": ("rd_jax.bench.scaling",
                "sharded CRSD step on 1, 2, 4, 8 devices: step time, tokens/s per device"),
}


def _common_args(parser: argparse.ArgumentParser, name: str) -> None:
  parser.add_argument("--out", default=f"{name}.json", help="JSON result file (written atomically)")
  parser.add_argument("--size", choices=("tiny", "minilm"), default="minilm",
                      help="tiny: 2-layer 64-wide random BERT (tests); minilm: all-MiniLM-L6-v2")
  parser.add_argument("--repeats", type=int, default=5, help="timed repeats (all recorded)")
  parser.add_argument("--steps", type=int, default=10, help="calls per timed repeat")
  parser.add_argument("--warmup", type=int, default=1, help="untimed calls after the first")
  parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                      help="compute dtype; auto = float32 on CPU, bfloat16 on an accelerator")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--torch_threads", type=int, default=0,
                      help="torch.set_num_threads for the PyTorch peer; 0 = the core count")


def _module(name: str):
  try:
    return importlib.import_module(BENCHMARKS[name][0])
  except ModuleNotFoundError as e:
    if e.name != BENCHMARKS[name][0]:
      raise
    return None  # not written yet (teacher_generate is another engineer's)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m rd_jax.bench", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="benchmarks:\n" + "\n".join(f"  {n:<18}{d}" for n, (_, d) in BENCHMARKS.items()))
  sub = parser.add_subparsers(dest="name", metavar="<name>", required=True)
  for name, (_, desc) in BENCHMARKS.items():
    module = _module(name)
    p = sub.add_parser(name, help=desc if module else f"{desc} (not available: module missing)",
                       description=(module.__doc__ if module else desc),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_args(p, name)
    if module is not None and hasattr(module, "add_args"):
      module.add_args(p)
  return parser


def main(argv: list[str] | None = None) -> dict:
  args = build_parser().parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  module = _module(args.name)
  if module is None:
    raise SystemExit(f"benchmark {args.name!r} is not available: {BENCHMARKS[args.name][0]} "
                     "does not exist yet")
  from rd_jax.bench import common
  common.set_torch_threads(args.torch_threads)
  result = module.run(args)
  result.setdefault("benchmark", args.name)
  result.setdefault("machine", common.machine_info())
  result.setdefault("versions", common.versions())
  common.write_json(result, args.out)
  if result.get("table"):
    print(common.format_table(result["table"]))
  for key, value in result.get("summary", {}).items():
    print(f"{key}: {value}")
  for note in result.get("notes", []):
    print(f"note: {note}")
  print(f"wrote {args.out}")
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
