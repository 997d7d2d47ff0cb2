"""`student_train`: one jitted CRSD / baseline training step vs the same model in PyTorch.

  python -m rd_jax.bench student_train --size=minilm --out=student_train.json

Both sides start from the same weights (`flax_to_hf`), see the same batch at the same padded
lengths (std [B, Ls], aug [B, La]), train with dropout 0.1 and AdamW with the same settings
(lr 5e-5, warm-up 20 + cosine, betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on matrices only,
global-norm clip 1.0), fp32 on CPU (bf16 on an accelerator: JAX compute dtype, torch autocast).
PyTorch's CRSD step is `torch_crsd_loss` below: the same two-view forward, CE on both views and
symmetric InfoNCE with duplicate masking — a peer written for this benchmark, not a product.

ratio = JAX median step time / PyTorch median step time (target <= 1.0, goal 0.8).
"""

from __future__ import annotations

import contextlib

import numpy as np

from rd_jax.bench import common


def add_args(parser) -> None:
  parser.add_argument("--batch_size", type=int, default=32, help="global batch (rows)")
  parser.add_argument("--std_len", type=int, default=None,
                      help="padded (query, item) length; default 64 (minilm) / 32 (tiny)")
  parser.add_argument("--aug_len", type=int, default=None,
                      help="padded (query, item, reasoning) length; default 128 / 64")
  parser.add_argument("--modes", default="crsd,baseline", help="comma list of crsd, baseline")


def lengths(args) -> tuple[int, int]:
  small = args.size == "tiny"
  return args.std_len or (32 if small else 64), args.aug_len or (64 if small else 128)


# ------------------------------------------------------------------------ the PyTorch peer
def torch_device():
  import jax
  import torch
  return torch.device("cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available()
                      else "cpu")


def torch_model(model_cfg, params, *, train: bool, device=None):
  """transformers.BertForSequenceClassification holding exactly `params` (flax_to_hf, strict)."""
  import torch
  import transformers
  from rd_jax.convert import hf_bert
  torch.set_num_threads(common.torch_threads())
  c = model_cfg
  hf = transformers.BertConfig(
      vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_layers,
      num_attention_heads=c.num_heads, intermediate_size=c.intermediate_size,
      max_position_embeddings=c.max_position, type_vocab_size=c.type_vocab_size,
      layer_norm_eps=c.layer_norm_eps, hidden_act="gelu", hidden_dropout_prob=c.dropout,
      attention_probs_dropout_prob=c.dropout, num_labels=c.num_labels)
  model = transformers.BertForSequenceClassification(hf)
  state = {k: torch.from_numpy(np.array(v)) for k, v in hf_bert.flax_to_hf(params, c).items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
  if missing or unexpected:
    raise RuntimeError(f"torch peer: missing {missing[:3]}, unexpected {unexpected[:3]}")
  model.to(device or torch_device())
  return model.train(train)


def torch_optimizer(model, num_steps: int = 1000):
  """AdamW + warm-up/cosine as optim.make_optimizer with the default student.optim, except that
  transformers' warm-up starts at lr 0 (ours at lr / (warm-up + 1)); clip is in the step."""
  import torch
  import transformers
  from rd_jax.config import default_config
  o = default_config().student.optim
  groups = [{"params": [p for p in model.parameters() if p.ndim >= 2], "weight_decay": o.weight_decay},
            {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0}]
  opt = torch.optim.AdamW(groups, lr=o.learning_rate, betas=(o.b1, o.b2), eps=1e-8)
  sched = transformers.get_cosine_schedule_with_warmup(opt, o.warmup_steps, num_steps)
  return opt, sched, o.grad_clip


def torch_batch(batch: dict[str, np.ndarray], device=None) -> dict:
  import torch
  device = device or torch_device()
  return {k: torch.from_numpy(np.asarray(v, np.int64 if v.dtype.kind in "iu" else np.float32)).to(device)
          for k, v in batch.items()}


def _view(model, batch, prefix):
  return model(input_ids=batch[f"{prefix}_input_ids"], attention_mask=batch[f"{prefix}_attention_mask"],
               token_type_ids=batch[f"{prefix}_token_type_ids"], output_hidden_states=True)


def torch_crsd_loss(model, batch, *, use_reasoning: bool, crsd=None):
  """losses/crsd.py in torch: CE_std + w_aug CE_aug + lambda InfoNCE(cls_std, cls_aug)."""
  import torch
  import torch.nn.functional as F
  from rd_jax.config import default_config
  crsd = crsd or default_config().crsd
  labels, w = batch["labels"], batch["weights"]
  n = w.sum().clamp(min=1.0)
  ce = lambda logits: (F.cross_entropy(logits.float(), labels, reduction="none") * w).sum() / n
  std = _view(model, batch, "std")
  loss = ce(std.logits)
  if not use_reasoning:
    return loss
  aug = _view(model, batch, "aug")
  loss = loss + crsd.weight_aug_ce * ce(aug.logits)
  u = F.normalize(std.hidden_states[-1][:, 0].float(), dim=-1)              # [B, D]
  v = F.normalize(aug.hidden_states[-1][:, 0].float(), dim=-1)
  sim = u @ v.T / crsd.temperature                                           # [B, B]
  b = sim.shape[0]
  diag = torch.eye(b, dtype=torch.bool, device=sim.device)
  valid = w > 0
  keep = valid[None, :] & valid[:, None]
  if crsd.mask_duplicates:
    for key in ("item_key", "reasoning_key"):
      keep &= ~((batch[key][:, None] == batch[key][None, :]) & ~diag)
  keep |= diag & valid[:, None]

  def one_direction(s, k):
    s = s.masked_fill(~k, -1e9)
    return ((torch.logsumexp(s, -1) - s.diagonal()) * w).sum()
  nce = one_direction(sim, keep)
  if crsd.symmetric:
    nce = (nce + one_direction(sim.T, keep.T)) / 2
  return loss + crsd.lambda_infonce * nce / n


def torch_train_step(model, opt, sched, clip: float, batch, *, use_reasoning: bool, dtype: str):
  """One PyTorch training step as a `transformers` user writes it; returns the loss tensor."""
  import torch

  def fn():
    opt.zero_grad(set_to_none=True)
    autocast = (torch.autocast(batch["labels"].device.type, dtype=torch.bfloat16)
                if dtype == "bfloat16" else contextlib.nullcontext())
    with autocast:
      loss = torch_crsd_loss(model, batch, use_reasoning=use_reasoning)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    sched.step()
    return loss.detach()
  return fn


# ------------------------------------------------------------------------------ the benchmark
def run(args) -> dict:
  import jax
  dtype = common.resolve_dtype(args.dtype)
  model_cfg, params = common.student(args.size, dtype, seed=args.seed)
  std_len, aug_len = lengths(args)
  b = args.batch_size
  batch = common.synthetic_batch(b, std_len, aug_len, vocab_size=model_cfg.vocab_size, seed=args.seed)
  device_kind = jax.devices()[0].device_kind
  modes = [m for m in args.modes.split(",") if m]
  measurements, summary, table = {}, {}, []
  for mode in modes:
    use_reasoning = mode == "crsd"
    state, step, mesh = common.jax_train_step(model_cfg, params, use_reasoning=use_reasoning,
                                              batch_size=b)
    from rd_jax.parallel import mesh as mesh_lib
    jax_fn = common.stepper(state, step, mesh_lib.put_batch(batch, mesh))
    model = torch_model(model_cfg, params, train=True)
    opt, sched, clip = torch_optimizer(model)
    torch_fn = torch_train_step(model, opt, sched, clip, torch_batch(batch),
                                use_reasoning=use_reasoning, dtype=dtype)
    timings = common.measure({"jax": jax_fn, "torch": torch_fn}, repeats=args.repeats,
                             calls=args.steps, warmup=args.warmup)
    flops = common.train_flops(model_cfg, b, std_len, *([aug_len] if use_reasoning else []))
    for side, timing in timings.items():
      common.add_flops(timing, flops, device_kind=device_kind, dtype=dtype)
      measurements[f"{mode}_{side}"] = timing
    ratio = timings["jax"].median / timings["torch"].median
    summary[f"{mode}_ratio_jax_over_torch"] = common.target(ratio, 1.0, at_most=True)
    summary[f"{mode}_ratio_goal"] = common.target(ratio, 0.8, at_most=True)
    for side, timing in timings.items():
      t = timing.to_dict()
      table.append({"mode": mode, "side": side, "step_ms": 1e3 * t["median"],
                    "iqr_ms": 1e3 * t["iqr"], "compile_s": t["first_call_s"],
                    "GFLOP/s": t["achieved_flops_per_s"] / 1e9, "mfu": t["mfu"],
                    "ratio": ratio if side == "jax" else None})
    del state, step, jax_fn, model, opt, torch_fn
  config = {**common.base_config(args, model_cfg), "batch_size": b, "std_len": std_len,
            "aug_len": aug_len, "modes": modes, "torch_attn": "sdpa (transformers default)",
            "optimizer": "AdamW 5e-5, warm-up 20 + cosine, wd 0.01 on matrices, clip 1.0"}
  return common.envelope("student_train", config, measurements, summary, table, notes=[])
