"""What every benchmark shares: machine facts, a timing helper, FLOPs/MFU, the JSON file, a table.

The JSON every benchmark writes (`python -m rd_jax.bench <name> --out=x.json`):
    benchmark      name;  argv: the command line;  created_utc
    machine        host, cpu model, cores, load average, jax backend, device kind and count
    versions       python, jax, jaxlib, flax, optax, numpy, torch, transformers, onnxruntime
    config         the model config and every setting the numbers depend on
    measurements   {name: Timing.to_dict()}: unit, repeats (every repeat), median, iqr, min,
                   first_call_s (compile + first run, excluded from the repeats), and where
                   known flops_per_step, achieved_flops_per_s, mfu
    summary        the headline numbers: ratios, and each target with whether it was met
    table          the rows printed at the end; notes: caveats (shared machine, skipped parts)
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import socket
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

# Dense peak FLOP/s per chip by compute dtype, from vendor data sheets (SXM parts; no sparsity).
# Matched by substring of `jax.devices()[0].device_kind`, first match wins. fp32 on NVIDIA is
# the TF32 tensor-core rate (XLA's default matmul precision on GPU).
PEAK_FLOPS = (
    ("H200", {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12}),
    ("H100", {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12}),
    ("A100", {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12}),
    ("TPU v4", {"bfloat16": 275e12, "float32": 275e12}),
    ("TPU v5 lite", {"bfloat16": 197e12, "float32": 197e12}),
    ("TPU v5e", {"bfloat16": 197e12, "float32": 197e12}),
    ("TPU v5p", {"bfloat16": 459e12, "float32": 459e12}),
    ("TPU v5", {"bfloat16": 459e12, "float32": 459e12}),
    ("TPU v6", {"bfloat16": 918e12, "float32": 918e12}),
)


def cores() -> int:
  """CPU cores this process may run on (affinity), the thread count given to every framework."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # pragma: no cover - not Linux
    return os.cpu_count() or 1


_TORCH_THREADS = [0]  # 0 = cores(); set from --torch_threads by __main__


def set_torch_threads(n: int) -> None:
  _TORCH_THREADS[0] = int(n)


def torch_threads() -> int:
  """Threads given to PyTorch: --torch_threads, else the core count (the fair default)."""
  return _TORCH_THREADS[0] or cores()


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_info() -> dict:
  import jax
  devices = jax.devices()
  info = {"host": socket.gethostname(), "platform": platform.platform(), "cpu": _cpu_model(),
          "cores": cores(), "cpu_count": os.cpu_count(), "backend": jax.default_backend(),
          "device_kind": devices[0].device_kind, "device_count": len(devices),
          "process_count": jax.process_count(),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}
  if hasattr(os, "getloadavg"):
    info["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
  return info


def versions() -> dict:
  out = {"python": sys.version.split()[0]}
  for name in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers", "onnxruntime"):
    try:
      out[name] = __import__(name).__version__
    except Exception:  # not installed: the benchmark that needs it says so
      out[name] = None
  return out


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """The chip's dense peak FLOP/s for `dtype`, or None (CPUs, unknown chips: no MFU)."""
  for key, peaks in PEAK_FLOPS:
    if key.lower() in device_kind.lower():
      return peaks.get(dtype)
  return None


def train_flops(model_cfg, batch_size: int, *seq_lens: int) -> int:
  """Model FLOPs of one training step: 3 x forward (backward = 2 x forward), one forward per view.

  Counted at the padded lengths the step really runs (bert.flops_per_example: matmuls only).
  """
  from rd_jax.models import bert
  return 3 * batch_size * sum(bert.flops_per_example(model_cfg, l) for l in seq_lens)


@dataclasses.dataclass
class Timing:
  """Every repeat of one measurement (seconds per call, or whatever `unit` says), plus extras."""
  unit: str
  repeats: list[float]
  first_call_s: float | None = None
  calls_per_repeat: int = 1
  extra: dict = dataclasses.field(default_factory=dict)

  @property
  def median(self) -> float:
    return float(statistics.median(self.repeats))

  def to_dict(self) -> dict:
    q25, q75 = np.percentile(self.repeats, [25, 75])
    return {"unit": self.unit, "repeats": [float(r) for r in self.repeats], "median": self.median,
            "iqr": float(q75 - q25), "min": float(min(self.repeats)),
            "first_call_s": self.first_call_s, "calls_per_repeat": self.calls_per_repeat,
            **self.extra}


def block(out: Any) -> Any:
  """Waits for JAX arrays (async dispatch) and CUDA tensors; other values pass through."""
  import jax
  out = jax.block_until_ready(out)
  if "torch" in sys.modules:
    import torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():
      torch.cuda.synchronize()
  return out


def measure(fns: dict[str, Callable[[], Any]], *, repeats: int, calls: int, warmup: int = 1,
            sync: Callable[[Any], Any] = block) -> dict[str, Timing]:
  """Times each `fn()` in seconds per call; repeats are interleaved across `fns`.

  Per fn: the first call (compile + first run) is timed apart as `first_call_s`, then `warmup`
  untimed calls. Then, `repeats` times, each fn in turn runs `calls` times back to back (async
  dispatch overlaps them as in training) and is waited on; its time / `calls` is one repeat.
  Interleaving spreads a busy machine's slow moments over all the contenders alike.
  """
  first = {}
  for name, fn in fns.items():
    t0 = time.perf_counter()
    sync(fn())
    first[name] = time.perf_counter() - t0
    for _ in range(warmup):
      sync(fn())
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      out = None
      for _ in range(calls):
        out = fn()
      sync(out)
      times[name].append((time.perf_counter() - t0) / calls)
  return {name: Timing("s/call", times[name], first_call_s=first[name], calls_per_repeat=calls)
          for name in fns}


def add_flops(timing: Timing, flops_per_call: float, *, device_kind: str, dtype: str,
              num_devices: int = 1) -> Timing:
  """Adds flops_per_step, achieved FLOP/s and (where the chip's peak is known) MFU."""
  achieved = flops_per_call / timing.median
  timing.extra["flops_per_step"] = float(flops_per_call)
  timing.extra["achieved_flops_per_s"] = achieved
  peak = peak_flops(device_kind, dtype)
  timing.extra["peak_flops_per_s"] = peak * num_devices if peak else None
  timing.extra["mfu"] = achieved / (peak * num_devices) if peak else None
  return timing


def envelope(name: str, config: dict, measurements: dict[str, Timing | dict], summary: dict,
             table: list[dict], notes: list[str]) -> dict:
  """The benchmark's JSON (module docstring)."""
  machine = machine_info()
  if machine["backend"] == "cpu" and machine.get("load_average_1_5_15", [0])[0] > 0.5 * machine["cores"]:
    notes = notes + [f"load average {machine['load_average_1_5_15']} on {machine['cores']} cores at "
                     "the end of the run: the machine was busy, timings are noisy"]
  return {"benchmark": name, "argv": sys.argv,
          "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "machine": machine, "versions": versions(), "config": config,
          "measurements": {k: v.to_dict() if isinstance(v, Timing) else v
                           for k, v in measurements.items()},
          "summary": summary, "table": table, "notes": notes}


def target(value: float | None, goal: float, *, at_most: bool) -> dict:
  """{"value", "target", "met"}: met = value <= goal (at_most) or >= goal; None if not measured."""
  met = None if value is None else bool(value <= goal if at_most else value >= goal)
  return {"value": value, "target": f"{'<=' if at_most else '>='} {goal}", "met": met}


def write_json(obj: dict, path: str) -> None:
  """Atomic: written to `path`.tmp, then renamed over `path`."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, default=_jsonable)
    f.write("\n")
  os.replace(tmp, path)


def _jsonable(x):
  if isinstance(x, (np.integer, np.floating)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  return str(x)


def format_table(rows: list[dict]) -> str:
  """Rows of dicts -> aligned plain-text columns (floats to 4 significant digits)."""
  if not rows:
    return ""
  columns = list(dict.fromkeys(k for row in rows for k in row))
  cell = lambda v: f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v))
  cells = [[cell(row.get(c)) for c in columns] for row in rows]
  widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
  line = lambda values: "  ".join(v.rjust(w) for v, w in zip(values, widths))
  return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


# ------------------------------------------------------------------ the model and its batches
NUM_LABELS = 4  # ESCI's four grades
TINY = dict(vocab_size=30522, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256,
            max_position=512)  # the real vocabulary, so real tokenised pairs fit


def resolve_dtype(dtype: str) -> str:
  """"auto" -> bfloat16 on an accelerator, float32 on CPU (the issue's fp32-on-CPU rule)."""
  import jax
  if dtype != "auto":
    return dtype
  return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def student(size: str, dtype: str, *, seed: int = 0, projection_dim: int = 0):
  """(BertConfig, host numpy params): "tiny" (random, 2x64) or "minilm" (all-MiniLM-L6-v2 weights).

  Params come back as numpy so that every state built from them gets its own device buffers
  (train steps donate theirs).
  """
  import jax
  from rd_jax.models import bert
  rng = jax.random.PRNGKey(seed)
  if size == "tiny":
    cfg = bert.BertConfig(**TINY, num_labels=NUM_LABELS, dtype=dtype, projection_dim=projection_dim)
    params = bert.init_params(cfg, rng)
  elif size == "minilm":
    from rd_jax.convert import hf_bert
    cfg, params, _ = hf_bert.load_hf_bert("minilm", NUM_LABELS, rng, dtype=dtype,
                                          projection_dim=projection_dim)
  else:
    raise ValueError(f"--size={size!r}: expected tiny or minilm")
  return cfg, jax.tree.map(np.asarray, params)


def synthetic_batch(batch_size: int, std_len: int, aug_len: int, *, vocab_size: int,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """A student batch (WORKSPACE.md data contract) of random tokens with real-looking padding.

  Row lengths are uniform in [0.6 L, L] with the longest exactly L (so the padded length is the
  one a bucketed batch would get); segment B starts mid-row; every item and reasoning distinct.
  """
  rng = np.random.default_rng(seed)
  batch = {}
  for view, length in (("std", std_len), ("aug", aug_len)):
    lengths = rng.integers(int(0.6 * length), length + 1, size=batch_size)
    lengths[0] = length
    positions = np.arange(length)[None, :]
    mask = (positions < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1000, vocab_size, size=(batch_size, length)).astype(np.int32)
    ids[:, 0] = 101  # [CLS]
    types = ((positions >= (lengths // 2)[:, None]) & (mask > 0)).astype(np.int32)
    batch.update({f"{view}_input_ids": ids * mask, f"{view}_attention_mask": mask,
                  f"{view}_token_type_ids": types})
  batch["labels"] = rng.integers(0, NUM_LABELS, size=batch_size).astype(np.int32)
  batch["item_key"] = np.arange(1, batch_size + 1, dtype=np.int32)
  batch["reasoning_key"] = np.arange(1, batch_size + 1, dtype=np.int32)
  batch["weights"] = np.ones(batch_size, np.float32)
  return batch


def jax_train_step(model_cfg, params, *, use_reasoning: bool, batch_size: int, mesh=None,
                   num_steps: int = 1000, crsd_overrides: dict | None = None):
  """(state, jitted step, mesh): exactly the crsd/baseline stage's step (stages/crsd.py), built
  by the same `fit.compile_step` with the default config's student.optim (AdamW 5e-5, warm-up 20
  + cosine over `num_steps`, clip 1.0, decay 0.01 on matrices) and crsd section.
  """
  import jax
  from rd_jax.config import default_config
  from rd_jax.losses.crsd import CrsdLossConfig
  from rd_jax.models import bert
  from rd_jax.parallel import mesh as mesh_lib, sharding
  from rd_jax.stages.crsd import make_loss_fn
  from rd_jax.train import fit
  cfg = default_config()
  for key, value in (crsd_overrides or {}).items():
    cfg.crsd[key] = value
  # a timing run of a few steps: the warm-up must fit in it (the schedule does not change speed)
  cfg.student.optim.warmup_steps = min(cfg.student.optim.warmup_steps, max(num_steps - 1, 0))
  if mesh is None:
    mesh = mesh_lib.make_mesh(cfg.mesh, jax.devices()[:1])
  loss_fn = make_loss_fn(bert.BertClassifier(model_cfg), CrsdLossConfig.from_config(cfg.crsd),
                         use_reasoning=use_reasoning,
                         local_block=batch_size // mesh_lib.data_parallel_size(mesh), seed=0)
  state, _, step = fit.compile_step(loss_fn, params, cfg.student.optim, num_steps,
                                    rules=sharding.BERT_RULES, mesh=mesh,
                                    optim_key="student.optim", with_step=True)
  return state, step, mesh


def xla_costs(step, state, batch) -> dict:
  """What XLA says of the compiled step: flops, bytes accessed, and its buffer sizes.

  `step.lower(...).compile()` is a separate compile of the same program (the jit cache is not
  used), so call it outside the timed region. Keys absent from this backend's analysis are None.
  """
  compiled = step.lower(state, batch).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):   # older jax: one dict per computation
    cost = cost[0] if cost else {}
  cost = cost or {}
  memory = compiled.memory_analysis()
  get = lambda name: getattr(memory, name, None) if memory is not None else None
  return {"flops": cost.get("flops"), "bytes_accessed": cost.get("bytes accessed"),
          "temp_bytes": get("temp_size_in_bytes"), "argument_bytes": get("argument_size_in_bytes"),
          "output_bytes": get("output_size_in_bytes")}


def stepper(state, step, batch) -> Callable[[], Any]:
  """A no-argument fn running one training step on `batch` (state carried across calls)."""
  box = [state]

  def fn():
    box[0], metrics = step(box[0], batch)
    return metrics["loss"]
  return fn


def base_config(args, model_cfg) -> dict:
  """The config fields every benchmark records."""
  return {"size": args.size, "dtype": model_cfg.dtype, "model_config": model_cfg.to_dict(),
          "repeats": args.repeats, "steps_per_repeat": args.steps, "warmup": args.warmup,
          "seed": args.seed, "cores": cores(), "torch_threads": torch_threads()}
