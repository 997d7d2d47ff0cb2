"""`accel_check`: the accelerator check (launch/gpu_check.sh), one JSON, under 10 minutes.

  python -m rd_jax.bench accel_check --out=gpu_check.json          # a GPU/TPU machine
  python -m rd_jax.bench accel_check --smoke --out=x.json          # tiny shapes, any CPU (tests)

Random weights at the real shapes (nothing to download; FLOPs and speed do not depend on the
values), compute dtype bf16 on an accelerator (`--dtype`):
  student_train   the crsd stage's CRSD step (two views, AdamW) of a MiniLM-L6-shaped BERT
                  (6 x 384, 12 heads, vocab 30522) on one device, batch --student_batch x
                  (--std_len + --aug_len). MFU = model FLOPs / step time / the chip's bf16 peak
                  (bench/common.PEAK_FLOPS), model FLOPs = 3 x forward matmul FLOPs at the padded
                  lengths (`common.train_flops`: the 6 N T convention plus attention, embedding
                  lookups and elementwise ops not counted). XLA's own count of the compiled step
                  (`cost_analysis()["flops"]`, which includes elementwise ops and recomputation)
                  is recorded next to it as xla_flops / xla_mfu. Target: MFU >= 0.5.
  teacher_generate  greedy KV-cache generation (`rd_jax.generate`) of a SmolLM2-135M-shaped
                  decoder: --gen_batch prompts of --prompt_len tokens, --new_tokens new tokens
                  each (no EOS: every row runs to the end); tokens/s = batch x new / seconds.
  sharded_crsd    the same CRSD step jitted with the stage's shardings on a mesh over every
                  device (fsdp 2 when the count is even, data the rest), global batch
                  --student_batch x devices: step time and tokens/s per device.
  teacher_remat   XLA memory_analysis temp bytes of the SmolLM2-shaped teacher's training step
                  with teacher.remat none vs per_layer vs scan (compiled, not run;
                  bench/remat.py).
"""

from __future__ import annotations

import dataclasses
import time

from rd_jax.bench import common

MINILM = dict(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536)


def add_args(parser) -> None:
  parser.add_argument("--smoke", action="store_true", help="tiny shapes, 1 repeat: a CPU test")
  parser.add_argument("--student_batch", type=int, default=256)
  parser.add_argument("--std_len", type=int, default=128)
  parser.add_argument("--aug_len", type=int, default=192)
  parser.add_argument("--gen_batch", type=int, default=64)
  parser.add_argument("--prompt_len", type=int, default=256)
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--teacher_batch", type=int, default=8, help="remat compile: batch")
  parser.add_argument("--teacher_len", type=int, default=1024, help="remat compile: tokens")
  parser.add_argument("--parts", default="student_train,teacher_generate,sharded_crsd,teacher_remat")


def _smoke(args) -> None:
  args.student_batch, args.std_len, args.aug_len = 8, 32, 64
  args.gen_batch, args.prompt_len, args.new_tokens = 2, 16, 4
  args.teacher_batch, args.teacher_len = 2, 32
  args.repeats, args.steps, args.warmup = 1, 1, 0


def _student_cfg(args, dtype):
  import jax
  import numpy as np
  from rd_jax.models import bert
  sizes = dict(common.TINY) if args.smoke else dict(MINILM, max_position=512)
  cfg = bert.BertConfig(**sizes, num_labels=common.NUM_LABELS, dtype=dtype)
  return cfg, jax.tree.map(np.asarray, bert.init_params(cfg, jax.random.PRNGKey(args.seed)))


def student_train(args, dtype, device) -> dict:
  from rd_jax.parallel import mesh as mesh_lib
  cfg, params = _student_cfg(args, dtype)
  b = args.student_batch
  state, step, mesh = common.jax_train_step(cfg, params, use_reasoning=True, batch_size=b,
                                            mesh=mesh_lib.make_mesh(_mesh_cfg(1, 1), [device]))
  batch = mesh_lib.put_batch(common.synthetic_batch(b, args.std_len, args.aug_len,
                                                    vocab_size=cfg.vocab_size, seed=args.seed), mesh)
  xla = common.xla_costs(step, state, batch)
  timing = common.measure({"crsd": common.stepper(state, step, batch)}, repeats=args.repeats,
                          calls=args.steps, warmup=args.warmup)["crsd"]
  common.add_flops(timing, common.train_flops(cfg, b, args.std_len, args.aug_len),
                   device_kind=device.device_kind, dtype=dtype)
  out = timing.to_dict()
  peak = out["peak_flops_per_s"]
  out.update(batch=b, std_len=args.std_len, aug_len=args.aug_len, model_config=cfg.to_dict(),
             flops_convention="3 x forward matmul FLOPs at padded lengths (common.train_flops)",
             xla=xla, xla_mfu=(xla["flops"] / timing.median / peak) if xla["flops"] and peak else None,
             tokens_per_s=b * (args.std_len + args.aug_len) / timing.median)
  return out


def teacher_generate(args, dtype) -> dict:
  import jax
  import numpy as np
  from rd_jax import generate as gen
  from rd_jax.bench.remat import teacher_config
  from rd_jax.models import decoder
  config = teacher_config("tiny" if args.smoke else "smollm2", dtype)
  params = jax.jit(lambda: decoder.init_params(config, jax.random.PRNGKey(args.seed)))()
  rng = np.random.default_rng(args.seed)
  tokens = rng.integers(1, config.vocab_size, (args.gen_batch, args.prompt_len)).astype(np.int32)
  mask = np.ones_like(tokens)

  def call():
    return gen.generate(config, params, tokens, mask, max_new_tokens=args.new_tokens, eos_ids=[],
                        pad_id=0).tokens
  timing = common.measure({"generate": call}, repeats=args.repeats, calls=1, warmup=args.warmup)["generate"]
  n = args.gen_batch * args.new_tokens
  out = timing.to_dict()
  out.update(batch=args.gen_batch, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
             tokens_per_s=n / timing.median, model_config=config.to_dict())
  return out


def _mesh_cfg(fsdp: int, tensor: int):
  import ml_collections
  return ml_collections.ConfigDict(dict(data=-1, fsdp=fsdp, tensor=tensor))


def sharded_crsd(args, dtype, devices) -> dict:
  from rd_jax.parallel import mesh as mesh_lib
  n = len(devices)
  cfg, params = _student_cfg(args, dtype)
  mesh = mesh_lib.make_mesh(_mesh_cfg(2 if n % 2 == 0 else 1, 1), devices)
  b = args.student_batch * n
  state, step, mesh = common.jax_train_step(cfg, params, use_reasoning=True, batch_size=b, mesh=mesh)
  batch = mesh_lib.put_batch(common.synthetic_batch(b, args.std_len, args.aug_len,
                                                    vocab_size=cfg.vocab_size, seed=args.seed), mesh)
  timing = common.measure({"crsd": common.stepper(state, step, batch)}, repeats=args.repeats,
                          calls=args.steps, warmup=args.warmup)["crsd"]
  common.add_flops(timing, common.train_flops(cfg, b, args.std_len, args.aug_len),
                   device_kind=devices[0].device_kind, dtype=dtype, num_devices=n)
  out = timing.to_dict()
  out.update(devices=n, mesh=dict(mesh.shape), global_batch=b,
             tokens_per_s_per_device=b * (args.std_len + args.aug_len) / timing.median / n)
  return out


def teacher_remat(args, dtype) -> dict:
  from rd_jax.bench import remat
  ns = dataclasses.make_dataclass("A", ["teacher_size", "dtype", "teacher_batch", "teacher_len"])(
      "tiny" if args.smoke else "smollm2", dtype, args.teacher_batch, args.teacher_len)
  rows, _ = remat._teacher(ns, {"none": ("none", "nothing_saveable"),
                                "per_layer": ("per_layer", "nothing_saveable"),
                                "scan": ("scan", "nothing_saveable")})
  base = rows["none"]["temp_bytes"]
  return dict(rows, temp_ratio=rows["per_layer"]["temp_bytes"] / base if base else None,
              residual_ratio=rows["per_layer"]["residual_bytes"] / rows["none"]["residual_bytes"],
              scan_temp_ratio=rows["scan"]["temp_bytes"] / base if base else None,
              batch=args.teacher_batch, seq_len=args.teacher_len)


def run(args) -> dict:
  import jax
  if args.smoke:
    _smoke(args)
  dtype = common.resolve_dtype(args.dtype)
  devices = jax.devices()
  parts = [p for p in args.parts.split(",") if p]
  measurements, seconds = {}, {}
  for part in parts:
    t0 = time.perf_counter()
    try:
      if part == "student_train":
        measurements[part] = student_train(args, dtype, devices[0])
      elif part == "teacher_generate":
        measurements[part] = teacher_generate(args, dtype)
      elif part == "sharded_crsd":
        measurements[part] = sharded_crsd(args, dtype, devices)
      elif part == "teacher_remat":
        measurements[part] = teacher_remat(args, dtype)
      else:
        raise ValueError(f"--parts: unknown part {part!r}")
    except Exception as e:  # one part failing must not lose the others' figures
      if args.smoke:
        raise
      measurements[part] = {"failed": f"{type(e).__name__}: {e}"[:2000]}
    seconds[part] = time.perf_counter() - t0
    jax.clear_caches()
  m = measurements
  get = lambda part, key: m.get(part, {}).get(key)
  summary = {"student_train_mfu": common.target(get("student_train", "mfu"), 0.5, at_most=False),
             "student_train_xla_mfu": get("student_train", "xla_mfu"),
             "teacher_generate_tokens_per_s": get("teacher_generate", "tokens_per_s"),
             "sharded_crsd_tokens_per_s_per_device": get("sharded_crsd", "tokens_per_s_per_device"),
             "teacher_remat_temp_ratio": get("teacher_remat", "temp_ratio"),
             "seconds_per_part": seconds}
  table = [{"part": p, "median_s": v.get("median"), "mfu": v.get("mfu"),
            "tokens_per_s": v.get("tokens_per_s", v.get("tokens_per_s_per_device")),
            "status": v.get("failed", "ok")[:60]} for p, v in m.items()]
  config = {"size": "tiny" if args.smoke else "real-shapes", "smoke": args.smoke, "dtype": dtype,
            "parts": parts, "repeats": args.repeats, "steps_per_repeat": args.steps,
            "warmup": args.warmup, "seed": args.seed}
  notes = [] if jax.default_backend() != "cpu" else [
      "CPU run: no MFU (no known peak); this checks that the script works, not the chip"]
  return common.envelope("accel_check", config, measurements, summary, table, notes)
