"""`remat`: what per-layer rematerialisation saves, from XLA's memory analysis of the compiled step.

  python -m rd_jax.bench remat --size=minilm --teacher_size=smollm2 --out=remat.json

For each model and each setting (`none`; `per_layer` with each of --policies), two figures:
  residual bytes: what the forward pass keeps for the backward pass, the activations remat is
      about (JAX's `saved_residuals` of the loss, parameters and inputs excluded) — the same on
      every backend;
  temp bytes: XLA's scratch buffers of the compiled training step (lowered and compiled, never
      run; `compiled.memory_analysis()`), i.e. what this backend's scheduler makes of it. On CPU
      XLA schedules the recomputation early, so CPU temp bytes barely move (or grow) with remat;
      GPU/TPU schedulers run it where the backward pass needs it (launch/gpu_check.sh measures).
  student: the crsd stage's CRSD step (both views, AdamW), `--size` BERT, batch
           --batch_size x (--std_len + --aug_len) tokens;
  teacher: next-token loss + gradient + SGD update of a random decoder (`--teacher_size`:
           tiny 2 x 64, or SmolLM2-135M's shape), batch --teacher_batch x --teacher_len tokens;
           also remat "scan" (the decoder's blocks as one lax.scan, each iteration remat'ed).
           With --teacher_prefix=P the rows follow one shared P-token prompt prefix, as SFT runs
           them under `sft.shared_prefix` (teacher/model.shared_prefix_logits): the prefix once,
           the --teacher_len tokens after it per row (configs/teacher_rules.py: P 168).
ratios = bytes with remat / bytes without (lower = more saved). The compute cost of the
recomputation (at most one extra forward per layer) is measured with --time_teacher: each teacher
step run on real params, --repeats x --steps calls interleaved across the settings; time_ratio =
median step time / the median without remat.
"""

from __future__ import annotations

import dataclasses

from rd_jax.bench import common


def add_args(parser) -> None:
  parser.add_argument("--batch_size", type=int, default=32, help="student global batch")
  parser.add_argument("--std_len", type=int, default=128)
  parser.add_argument("--aug_len", type=int, default=192)
  parser.add_argument("--teacher_size", choices=("tiny", "smollm2"), default="smollm2")
  parser.add_argument("--teacher_batch", type=int, default=8)
  parser.add_argument("--teacher_len", type=int, default=512)
  parser.add_argument("--teacher_prefix", type=int, default=0,
                      help="tokens of a shared prompt prefix before each teacher row (0 = none)")
  parser.add_argument("--policies", default="nothing_saveable,dots_with_no_batch_dims_saveable",
                      help="comma list of jax.checkpoint_policies names for per_layer")
  parser.add_argument("--time_teacher", action="store_true",
                      help="also run and time each teacher setting's step (--repeats x --steps "
                           "calls, interleaved; --warmup untimed): the price of the recomputation")


def _memory(step, *args) -> dict:
  compiled = step.lower(*args).compile()
  m = compiled.memory_analysis()
  return {"temp_bytes": m.temp_size_in_bytes, "argument_bytes": m.argument_size_in_bytes,
          "output_bytes": m.output_size_in_bytes}


def residual_bytes(loss, *args) -> int:
  """Bytes of the residuals the forward pass of `loss(*args)` saves for its gradient, not
  counting those that are arguments (parameters, inputs) or constants."""
  import numpy as np
  from jax._src.ad_checkpoint import saved_residuals  # what jax.ad_checkpoint.print_saved_residuals prints
  return int(sum(np.prod(a.shape) * a.dtype.itemsize for a, why in saved_residuals(loss, *args)
                 if "argument" not in why and "constant" not in why))


def _student(args, settings) -> dict:
  import jax
  import jax.numpy as jnp
  from rd_jax.models import bert
  from rd_jax.losses import lm
  from rd_jax.parallel import mesh as mesh_lib
  model_cfg, params = common.student(args.size, common.resolve_dtype(args.dtype), seed=args.seed)
  batch = common.synthetic_batch(args.batch_size, args.std_len, args.aug_len,
                                 vocab_size=model_cfg.vocab_size, seed=args.seed)
  out = {}
  for name, (mode, policy) in settings.items():
    cfg = dataclasses.replace(model_cfg, remat=mode, remat_policy=policy)

    def loss(p, cfg=cfg):  # both views through the model, as the CRSD step runs them
      total = 0.0
      for view in ("std", "aug"):
        o = bert.BertClassifier(cfg).apply(
            {"params": p}, batch[f"{view}_input_ids"], batch[f"{view}_attention_mask"],
            batch[f"{view}_token_type_ids"], deterministic=False,
            rngs={"dropout": jax.random.PRNGKey(0)})
        total += jnp.mean(jax.nn.logsumexp(o["logits"], -1)) + jnp.mean(o["cls"])
      return total

    state, step, mesh = common.jax_train_step(cfg, params, use_reasoning=True,
                                              batch_size=args.batch_size)
    out[name] = _memory(step, state, mesh_lib.put_batch(batch, mesh))
    out[name]["residual_bytes"] = residual_bytes(loss, params)
    del state
  jax.clear_caches()
  return out


def teacher_config(size: str, dtype: str):
  from rd_jax.models.decoder import DecoderConfig
  if size == "tiny":
    return DecoderConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                         intermediate_size=128, dtype=dtype)
  return DecoderConfig(dtype=dtype)  # the defaults are SmolLM2-135M's shape


def _lm_loss(config, params, tokens, prefix_len: int = 0):
  """Mean next-token loss of `tokens` [B, prefix_len + L]; with prefix_len > 0 row 0's first
  prefix_len tokens are the prefix every row shares, and only the L row tokens are predicted."""
  import jax.numpy as jnp
  from rd_jax.losses import lm
  from rd_jax.models import decoder
  model = decoder.Decoder(config)
  if prefix_len:
    from rd_jax.teacher import model as teacher_model
    tokens, prefix = tokens[:, prefix_len:], tokens[:, :prefix_len]
    logits = teacher_model.shared_prefix_logits(model, params, prefix, tokens,
                                                jnp.ones_like(tokens))
  else:
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    logits, _ = model.apply({"params": params}, tokens, positions)
  return -lm.token_log_probs(logits[:, :-1], tokens[:, 1:]).mean()


def _teacher(args, settings) -> tuple[dict, dict]:
  import jax
  import jax.numpy as jnp
  from rd_jax.models import decoder
  base = teacher_config(args.teacher_size, common.resolve_dtype(args.dtype))
  params = jax.eval_shape(lambda: decoder.init_params(base, jax.random.PRNGKey(0)))
  prefix_len = getattr(args, "teacher_prefix", 0)
  tokens = jax.ShapeDtypeStruct((args.teacher_batch, prefix_len + args.teacher_len), jnp.int32)
  out, steps = {}, {}
  for name, (mode, policy) in settings.items():
    config = dataclasses.replace(base, remat=mode, remat_policy=policy)
    loss = lambda p, t, config=config: _lm_loss(config, p, t, prefix_len)

    def step(params, tokens, loss=loss):  # loss, gradient, SGD update
      value, grads = jax.value_and_grad(loss)(params, tokens)
      return jax.tree.map(lambda w, g: w - 1e-4 * g, params, grads), value

    steps[name] = jax.jit(step, donate_argnums=(0,))
    out[name] = _memory(steps[name], params, tokens)
    out[name]["residual_bytes"] = residual_bytes(loss, params, tokens)
  if getattr(args, "time_teacher", False):
    timings = _time_steps(args, base, steps, prefix_len)
    for name, timing in timings.items():
      out[name]["step_time"] = timing.to_dict()
      out[name]["time_ratio"] = timing.median / timings["none"].median
  return out, base.to_dict()


def _time_steps(args, base, steps: dict, prefix_len: int) -> dict:
  """Each compiled step run on real params and tokens, timed interleaved (common.measure)."""
  import jax
  import numpy as np
  from rd_jax.models import decoder
  length = prefix_len + args.teacher_len
  tokens = jax.numpy.asarray(np.random.RandomState(args.seed).randint(
      0, base.vocab_size, (args.teacher_batch, length)), jax.numpy.int32)
  state = {name: decoder.init_params(base, jax.random.PRNGKey(args.seed)) for name in steps}

  def call(name):   # the step donates its params: carry the updated ones to the next call
    state[name], value = steps[name](state[name], tokens)
    return value
  return common.measure({name: (lambda name=name: call(name)) for name in steps},
                        repeats=args.repeats, calls=args.steps, warmup=args.warmup)


def run(args) -> dict:
  policies = [p for p in args.policies.split(",") if p]
  settings = {"none": ("none", "nothing_saveable"),
              **{f"per_layer:{p}": ("per_layer", p) for p in policies}}
  results = {"student": _student(args, settings)}
  # the decoder's blocks also run as a scan (remat "scan"; the decoder's alone)
  teacher_settings = {**settings, **{f"scan:{p}": ("scan", p) for p in policies}}
  results["teacher"], teacher_cfg = _teacher(args, teacher_settings)
  table, summary = [], {}
  for model, rows in results.items():
    for name, row in rows.items():
      for kind in ("residual", "temp"):
        base = rows["none"][f"{kind}_bytes"]
        row[f"{kind}_ratio"] = row[f"{kind}_bytes"] / base if base else None
        if name != "none":
          summary[f"{model}_{name}_{kind}_ratio"] = row[f"{kind}_ratio"]
      if name != "none" and row.get("time_ratio") is not None:
        summary[f"{model}_{name}_time_ratio"] = row["time_ratio"]
      table.append({"model": model, "remat": name, "residual_MiB": row["residual_bytes"] / 2**20,
                    "residual_ratio": row["residual_ratio"], "xla_temp_MiB": row["temp_bytes"] / 2**20,
                    "temp_ratio": row["temp_ratio"], "args_MiB": row["argument_bytes"] / 2**20,
                    "step_s": row.get("step_time", {}).get("median"),
                    "time_ratio": row.get("time_ratio")})
  config = {"size": args.size, "dtype": common.resolve_dtype(args.dtype),
            "batch_size": args.batch_size, "std_len": args.std_len, "aug_len": args.aug_len,
            "teacher_size": args.teacher_size, "teacher_config": teacher_cfg,
            "teacher_batch": args.teacher_batch, "teacher_len": args.teacher_len,
            "teacher_prefix": args.teacher_prefix,
            "time_teacher": bool(args.time_teacher),
            "settings": {k: list(v) for k, v in teacher_settings.items()}}
  notes = ["compiled, not run: temp bytes are this backend's memory_analysis(); residual bytes "
           "are backend-independent"]
  return common.envelope("remat", config, {f"{m}/{n}": r for m, rows in results.items()
                                           for n, r in rows.items()}, summary, table, notes)
