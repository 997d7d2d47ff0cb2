"""`student_infer`: the student's latency (batch 1) and throughput (batch 64+) on the serving path.

  python -m rd_jax.bench student_infer --size=minilm --out=student_infer.json

Backends, all with the same weights and the same standard-view inputs [B, L]:
  jax          jit(BertClassifier.apply, deterministic) -> logits fetched to the host
  torch        transformers.BertForSequenceClassification (flax_to_hf weights), eval(),
               inference_mode, torch.set_num_threads(cores)
  onnx, int8   rd_jax.convert.onnx.export_onnx of that model (fp32 graph + dynamic int8 weights)
               in ONNX Runtime (CPU provider, intra-op threads = cores); skipped, with a note,
               where the module or onnxruntime is missing
Latency: one synchronous call at batch 1 (seconds). Throughput: examples/s at --batch_size.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from rd_jax.bench import common, student_train

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def add_args(parser) -> None:
  parser.add_argument("--batch_size", type=int, default=64, help="throughput batch")
  parser.add_argument("--seq_len", type=int, default=None,
                      help="padded (query, item) length; default 64 (minilm) / 32 (tiny)")
  parser.add_argument("--no_onnx", action="store_true", help="skip ONNX Runtime fp32/int8")


def _inputs(batch: dict, rows: int) -> dict[str, np.ndarray]:
  return {k: np.ascontiguousarray(batch[f"std_{k}"][:rows]) for k in INPUTS}


def _jax_fns(model_cfg, params):
  import jax
  from rd_jax.models import bert
  model = bert.BertClassifier(model_cfg)
  device_params = jax.device_put(params)

  @jax.jit
  def logits(params, input_ids, attention_mask, token_type_ids):
    return model.apply({"params": params}, input_ids, attention_mask, token_type_ids,
                       deterministic=True)["logits"]
  return lambda x: np.asarray(logits(device_params, *(x[k] for k in INPUTS)))


def _torch_fn(model):
  import torch

  def fn(x):
    with torch.inference_mode():
      return model(**{k: torch.from_numpy(v.astype(np.int64)).to(model.device)
                      for k, v in x.items()}).logits.float().cpu().numpy()
  return fn


def _onnx_fns(model, check_batch: dict, folder: str, notes: list) -> dict:
  """{"onnx": fn, "int8": fn} through the export path, or {} with a note saying why not."""
  try:
    from rd_jax.convert import onnx as onnx_export
    import onnxruntime as ort
  except ImportError as e:
    notes.append(f"ONNX skipped: {e} (rd_jax/convert/onnx.py and onnxruntime are needed)")
    return {}
  model.save_pretrained(folder)
  report = onnx_export.export_onnx(folder, {k: v.astype(np.int64) for k, v in check_batch.items()},
                                   int8=True, min_int8_agreement=0.0)
  notes.append(f"ONNX export check: {report}")
  options = ort.SessionOptions()
  options.intra_op_num_threads = common.cores()
  fns = {}
  for name, file in (("onnx", "model.onnx"), ("int8", "model_int8.onnx")):
    session = ort.InferenceSession(os.path.join(folder, "onnx", file), options,
                                   providers=["CPUExecutionProvider"])
    fns[name] = (lambda s: lambda x: s.run(["logits"], {k: v.astype(np.int64) for k, v in x.items()})[0])(session)
  return fns


def run(args) -> dict:
  import jax
  dtype = common.resolve_dtype(args.dtype)
  model_cfg, params = common.student(args.size, dtype, seed=args.seed)
  seq_len = args.seq_len or (32 if args.size == "tiny" else 64)
  batch = common.synthetic_batch(args.batch_size, seq_len, seq_len,
                                 vocab_size=model_cfg.vocab_size, seed=args.seed)
  one, many = _inputs(batch, 1), _inputs(batch, args.batch_size)
  notes = []
  model = student_train.torch_model(model_cfg, params, train=False)
  backends = {"jax": _jax_fns(model_cfg, params), "torch": _torch_fn(model)}
  with tempfile.TemporaryDirectory() as folder:
    if args.no_onnx:
      notes.append("ONNX skipped: --no_onnx")
    elif student_train.torch_device().type != "cpu":
      notes.append("ONNX skipped: measured on CPU only (the CPU execution provider)")
    else:
      backends.update(_onnx_fns(model, _inputs(batch, min(8, args.batch_size)), folder, notes))
    reference = backends["torch"](many)
    parity = {name: float(np.abs(fn(many) - reference).max()) for name, fn in backends.items()}
    fns = {}
    for name, fn in backends.items():
      fns[f"{name}_latency_b1"] = (lambda f: lambda: f(one))(fn)
      fns[f"{name}_throughput_b{args.batch_size}"] = (lambda f: lambda: f(many))(fn)
    timings = common.measure(fns, repeats=args.repeats, calls=args.steps, warmup=args.warmup,
                             sync=lambda x: x)  # every call returns host numpy: synchronous
  from rd_jax.models import bert
  kind = jax.devices()[0].device_kind
  for name, timing in timings.items():
    rows = 1 if "latency" in name else args.batch_size
    common.add_flops(timing, rows * bert.flops_per_example(model_cfg, seq_len), device_kind=kind,
                     dtype=dtype)
    timing.extra["examples_per_s"] = rows / timing.median
  table, summary = [], {}
  for name in backends:
    lat = timings[f"{name}_latency_b1"]
    thr = timings[f"{name}_throughput_b{args.batch_size}"]
    table.append({"backend": name, "latency_ms": 1e3 * lat.median,
                  "latency_iqr_ms": 1e3 * lat.to_dict()["iqr"],
                  f"ex/s_b{args.batch_size}": thr.extra["examples_per_s"],
                  "max|dlogit|_vs_torch": parity[name]})
    summary[f"{name}_latency_ms"] = 1e3 * lat.median
    summary[f"{name}_examples_per_s"] = thr.extra["examples_per_s"]
  summary["jax_over_torch_latency"] = timings["jax_latency_b1"].median / timings["torch_latency_b1"].median
  config = {**common.base_config(args, model_cfg), "batch_size": args.batch_size,
            "seq_len": seq_len, "backends": list(backends), "max_abs_logit_diff_vs_torch": parity}
  return common.envelope("student_infer", config, timings, summary, table, notes)
