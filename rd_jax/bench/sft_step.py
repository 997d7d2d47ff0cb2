"""`sft_step`: the SFT step with the shared prompt prefix run once per batch vs once per row.

  python -m rd_jax.bench sft_step --out=sft_step.json [--batch_sizes=4,16] [--size=tiny]

Both are the sft stage's own jitted step (`fit.compile_step` on `teacher/model.lm_loss`, the
default config's sft optimiser), on the same synthetic rows, fp32:
  plain   rows of P prefix tokens + L row tokens [B, P + L] (`sft.shared_prefix=False`)
  shared  the same rows as [B, L] after a [B, P] prefix (`sft.shared_prefix=True`): the prefix's
          forward and backward run once (teacher/model.shared_prefix_logits), the same loss
ratio = plain / shared step time per batch size (> 1: the shared prefix is faster); the token
count says what to expect: B (P + L) / (P + B L). The default lengths are the demo's prompts
(168 shared tokens, chat template + instructions + definitions; ~82 more prompt tokens and up to
96 response tokens per row, padded to 192). The model is SmolLM2-135M's shape with random
weights (timing needs no trained values); `--size=tiny` a 2-layer random decoder for smoke runs.
"""

from __future__ import annotations

from rd_jax.bench import common


def add_args(parser) -> None:
  parser.add_argument("--batch_sizes", default="4,16", help="comma list of global batch sizes")
  parser.add_argument("--prefix_len", type=int, default=168, help="shared prompt tokens P")
  parser.add_argument("--row_len", type=int, default=192,
                      help="padded row tokens L after the prefix")


def _config(size: str):
  from rd_jax.models.decoder import DecoderConfig
  if size == "tiny":
    return DecoderConfig(vocab_size=49152, hidden_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, intermediate_size=128)
  # SmolLM2-135M-Instruct (its GGUF's metadata; convert/hf_decoder reads the same numbers)
  return DecoderConfig(vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9,
                       num_kv_heads=3, intermediate_size=1536, rope_theta=100000.0,
                       rms_norm_eps=1e-5, tie_embeddings=True, max_position=8192)


def _rows(b: int, p: int, l: int, vocab: int, seed: int) -> tuple[dict, dict]:
  """(plain batch, shared batch): the same B rows, each 3/4 of L long, the last half of it loss."""
  import numpy as np
  rng = np.random.default_rng(seed)
  prefix = rng.integers(1, vocab, p)
  n = (3 * l) // 4
  body = rng.integers(1, vocab, (b, n))
  shared = {"tokens": np.zeros((b, l), np.int32), "attention_mask": np.zeros((b, l), np.int32),
            "loss_mask": np.zeros((b, l), np.int32),
            "prefix": np.tile(prefix, (b, 1)).astype(np.int32)}
  shared["tokens"][:, :n], shared["attention_mask"][:, :n] = body, 1
  shared["loss_mask"][:, n // 2:n] = 1
  head = {"tokens": np.tile(prefix, (b, 1)), "attention_mask": np.ones((b, p)),
          "loss_mask": np.zeros((b, p))}
  plain = {k: np.concatenate([head[k], shared[k]], 1).astype(np.int32) for k in head}
  return plain, shared


def run(args) -> dict:
  import jax
  from rd_jax.config import default_config
  from rd_jax.models import decoder
  from rd_jax.parallel import mesh as mesh_lib
  from rd_jax.teacher import model as teacher_model
  from rd_jax.train import fit
  cfg = default_config()
  config = _config(args.size)
  params = jax.jit(lambda: decoder.init_params(config, jax.random.PRNGKey(args.seed)))()
  mesh = mesh_lib.make_mesh(cfg.mesh, jax.devices()[:1])
  loss_fn = teacher_model.lm_loss(decoder.Decoder(config))
  p, l = args.prefix_len, args.row_len
  fns, tokens = {}, {}
  for b in (int(x) for x in str(args.batch_sizes).split(",")):
    plain, shared = _rows(b, p, l, config.vocab_size, args.seed)
    for name, batch in ((f"plain_b{b}", plain), (f"shared_b{b}", shared)):
      state, _, step = fit.compile_step(loss_fn, params, cfg.sft.optim, 1000,
                                        rules=teacher_model.TEACHER_RULES, mesh=mesh,
                                        optim_key="sft.optim")
      fns[name] = common.stepper(state, step, mesh_lib.put_batch(batch, mesh))
      tokens[name] = b * (p + l) if name.startswith("plain") else p + b * l
  timings = common.measure(fns, repeats=args.repeats, calls=args.steps, warmup=args.warmup)
  kind = jax.devices()[0].device_kind
  for name, t in timings.items():
    common.add_flops(t, tokens[name] * decoder.flops_per_token(config, training=True),
                     device_kind=kind, dtype="float32")
  summary, table = {}, []
  for b in (int(x) for x in str(args.batch_sizes).split(",")):
    plain, shared = timings[f"plain_b{b}"].median, timings[f"shared_b{b}"].median
    summary[f"speedup_b{b}"] = plain / shared
    summary[f"token_ratio_b{b}"] = tokens[f"plain_b{b}"] / tokens[f"shared_b{b}"]
    for name in (f"plain_b{b}", f"shared_b{b}"):
      t = timings[name]
      table.append({"step": name, "ms": 1e3 * t.median, "iqr_ms": 1e3 * t.to_dict()["iqr"],
                    "compile_s": t.first_call_s, "tokens": tokens[name],
                    "rows_per_s": b / t.median,
                    "speedup": plain / shared if name.startswith("shared") else None})
  config_out = {"size": args.size, "model_config": config.to_dict(), "prefix_len": p, "row_len": l,
                "batch_sizes": args.batch_sizes, "repeats": args.repeats,
                "steps_per_repeat": args.steps, "warmup": args.warmup, "seed": args.seed,
                "cores": common.cores()}
  return common.envelope("sft_step", config_out, timings, summary, table, [])
