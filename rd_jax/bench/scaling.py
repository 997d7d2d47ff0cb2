"""`scaling`: the sharded CRSD step on 1, 2, 4, 8 devices: step time, tokens/s per device, MFU.

  python -m rd_jax.bench scaling --size=minilm --devices=1,2,4,8 --out=scaling.json
  python -m rd_jax.bench scaling --fsdp=2 --tensor=2 --devices=4,8 ...     # other mesh layouts

Each device count runs in its own subprocess (a JAX process cannot change its device count):
on CPU with `XLA_FLAGS=--xla_force_host_platform_device_count=N` (N host devices sharing the
same cores: this checks the sharded step and its overheads, it cannot speed anything up); on
GPU/TPU on the first N real devices (a count above the chips present is skipped). The step is the
crsd stage's, jitted with its shardings (parallel/sharding.BERT_RULES) on a (data, fsdp, tensor)
mesh. Weak scaling by default: the global batch is --per_device_batch x N; --strong keeps it at
--per_device_batch x max(devices).

efficiency(N) = tokens/s per device at N / tokens/s per device at the smallest N.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from rd_jax.bench import common, student_train


def add_args(parser) -> None:
  parser.add_argument("--devices", default="1,2,4,8", help="comma list of device counts")
  parser.add_argument("--per_device_batch", type=int, default=8)
  parser.add_argument("--strong", action="store_true", help="fixed global batch (strong scaling)")
  parser.add_argument("--fsdp", type=int, default=1, help="mesh.fsdp (data axis takes the rest)")
  parser.add_argument("--tensor", type=int, default=1, help="mesh.tensor")
  parser.add_argument("--std_len", type=int, default=None, help="default 64 (minilm) / 32 (tiny)")
  parser.add_argument("--aug_len", type=int, default=None, help="default 128 (minilm) / 64 (tiny)")
  parser.add_argument("--child_devices", type=int, default=0, help=argparse_suppress())
  parser.add_argument("--child_out", default="", help=argparse_suppress())


def argparse_suppress():
  import argparse
  return argparse.SUPPRESS


def child(args) -> dict:
  """One device count, in this process (its XLA_FLAGS were set by the parent)."""
  import jax
  import ml_collections
  from rd_jax.parallel import mesh as mesh_lib
  n = args.child_devices
  devices = jax.devices()
  if len(devices) < n:
    return {"devices": n, "skipped": f"only {len(devices)} {jax.default_backend()} device(s)"}
  dtype = common.resolve_dtype(args.dtype)
  model_cfg, params = common.student(args.size, dtype, seed=args.seed)
  std_len, aug_len = student_train.lengths(args)
  counts = [int(d) for d in args.devices.split(",")]
  b = args.per_device_batch * (max(counts) if args.strong else n)
  mesh_cfg = ml_collections.ConfigDict(dict(data=-1, fsdp=args.fsdp, tensor=args.tensor))
  try:
    mesh = mesh_lib.make_mesh(mesh_cfg, devices[:n])
  except ValueError as e:
    return {"devices": n, "skipped": str(e)}
  if b % mesh_lib.data_parallel_size(mesh):
    return {"devices": n, "skipped": f"batch {b} not divisible by {dict(mesh.shape)}"}
  state, step, mesh = common.jax_train_step(model_cfg, params, use_reasoning=True, batch_size=b,
                                            mesh=mesh)
  batch = common.synthetic_batch(b, std_len, aug_len, vocab_size=model_cfg.vocab_size, seed=args.seed)
  fn = common.stepper(state, step, mesh_lib.put_batch(batch, mesh))
  timing = common.measure({"crsd": fn}, repeats=args.repeats, calls=args.steps,
                          warmup=args.warmup)["crsd"]
  common.add_flops(timing, common.train_flops(model_cfg, b, std_len, aug_len),
                   device_kind=devices[0].device_kind, dtype=dtype, num_devices=n)
  padded = b * (std_len + aug_len)
  real = int(batch["std_attention_mask"].sum() + batch["aug_attention_mask"].sum())
  out = timing.to_dict()
  out.update(devices=n, mesh=dict(mesh.shape), global_batch=b, std_len=std_len, aug_len=aug_len,
             device_kind=devices[0].device_kind, backend=jax.default_backend(), dtype=dtype,
             tokens_per_s_per_device=padded / timing.median / n,
             real_tokens_per_s_per_device=real / timing.median / n,
             model_config=model_cfg.to_dict())
  return out


def _spawn(args, n: int, argv: list[str]) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "child.json")
    cmd = [sys.executable, "-m", "rd_jax.bench", "scaling", *argv, f"--child_devices={n}",
           f"--child_out={out}", f"--out={os.path.join(tmp, 'unused.json')}"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
      return {"devices": n, "failed": f"exit {r.returncode}: {r.stderr[-2000:]}"}
    with open(out) as f:
      return json.load(f)


def run(args) -> dict:
  if args.child_devices:
    result = child(args)
    common.write_json(result, args.child_out)
    return {"benchmark": "scaling-child", "summary": {}, "table": [], "notes": []}
  counts = [int(d) for d in args.devices.split(",") if d]
  children = [_spawn(args, n, _argv_from(args)) for n in counts]
  ok = [c for c in children if "median" in c]
  base = ok[0]["tokens_per_s_per_device"] if ok else None
  measurements, table = {}, []
  for c in children:
    if "median" not in c:
      measurements[f"devices_{c['devices']}"] = c
      table.append({"devices": c["devices"], "status": c.get("skipped") or "failed"})
      continue
    c["scaling_efficiency"] = c["tokens_per_s_per_device"] / base
    measurements[f"devices_{c['devices']}"] = c
    table.append({"devices": c["devices"], "mesh": "x".join(str(v) for v in c["mesh"].values()),
                  "batch": c["global_batch"], "step_ms": 1e3 * c["median"],
                  "tok/s/dev": c["tokens_per_s_per_device"], "eff": c["scaling_efficiency"],
                  "compile_s": c["first_call_s"], "mfu": c["mfu"]})
  first = ok[0] if ok else {}
  config = {"size": args.size, "dtype": first.get("dtype", args.dtype), "devices": counts,
            "per_device_batch": args.per_device_batch, "strong": args.strong, "fsdp": args.fsdp,
            "tensor": args.tensor, "repeats": args.repeats, "steps_per_repeat": args.steps,
            "warmup": args.warmup, "std_len": first.get("std_len"), "aug_len": first.get("aug_len"),
            "model_config": first.get("model_config")}
  summary = {f"efficiency_at_{c['devices']}": c["scaling_efficiency"] for c in ok}
  notes = []
  if first.get("backend") == "cpu":
    notes.append("host devices share the machine's cores: per-device throughput falls ~1/N by "
                 "construction; this checks the sharded step and its overhead, not speed-up")
  if any("failed" in c for c in children):
    notes.append("some device counts failed: see measurements")
  return common.envelope("scaling", config, measurements, summary, table, notes)


def _argv_from(args) -> list[str]:
  """The flags of `args` as a child's command line."""
  keys = ("size", "repeats", "steps", "warmup", "dtype", "seed", "devices", "per_device_batch",
          "fsdp", "tensor", "std_len", "aug_len")
  argv = [f"--{k}={getattr(args, k)}" for k in keys if getattr(args, k) is not None]
  return argv + (["--strong"] if args.strong else [])
