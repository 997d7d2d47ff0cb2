"""`student_epoch`: examples/s over a CRSD and a baseline epoch of the bundled data at real lengths.

  python -m rd_jax.bench student_epoch --size=minilm --repeats=1 --out=student_epoch.json
  python -m rd_jax.bench student_epoch --size=minilm --max_batches=30 ...   # a shorter run

Ours: the crsd/baseline stage's path — `pipeline.train_batches` (length-sorted windows, padded to
`student.length_buckets`), `put_batch`, the jitted step, the loss fetched every step as the loop
does. The epoch's wall time INCLUDES compilation (a fresh jit per repeat: a run pays it once per
new shape); compile is also reported apart (first call of each shape) with the shape count.
PyTorch: what a `transformers` user writes — the same token ids (both views), a shuffled
DataLoader (drop_last, no workers: 2 cores) whose collate pads each view to the longest row of
the batch (`DataCollatorWithPadding`), the peer step of student_train, `loss.item()` per step.
Reasoning: our teacher's bundled annotations, as the demo reads them (configs/demo.py; the 11
train pairs without one dropped). Tokenisation is done once up front for both and not timed.

ratio = ours examples/s / PyTorch examples/s over the whole epoch (target >= 1.25).
"""

from __future__ import annotations

import time

from rd_jax.bench import common, student_train


def add_args(parser) -> None:
  parser.add_argument("--batch_size", type=int, default=32,
                      help="global batch (the README figures: 32; configs/demo.py trains at 12)")
  parser.add_argument("--modes", default="crsd,baseline", help="comma list of crsd, baseline")
  parser.add_argument("--max_batches", type=int, default=0,
                      help="stop each epoch after this many batches (0 = the whole epoch)")


def _config(args):
  from rd_jax.config import default_config
  cfg = default_config()
  cfg.data.reasoning_source = "annotations"  # the demo's reasoning (configs/demo.py)
  cfg.data.reasoning_path = "bundled_v1"   # as configs/demo.py
  cfg.train.batch_size = args.batch_size
  cfg.seed = args.seed
  return cfg


def load_tokens(cfg, use_reasoning: bool):
  """(tokenizer, TokenizedPairs of the train folds), with the demo's bundled teacher reasoning.

  Both modes train on the same pairs: those the teacher annotated (3,100 of 3,111)."""
  from rd_jax.data import readers, tokenize
  pairs, _ = readers.load_pairs("", cfg, require_label=True)
  train = readers.train_valid_test(pairs, cfg)["train"]
  train, _ = readers.attach_reasoning(
      train, readers.bundled_annotations_path(cfg.data.reasoning_path), cfg)
  train = [p for p in train if p.reasoning]
  if not use_reasoning:
    import dataclasses
    train = [dataclasses.replace(p, reasoning=None) for p in train]
  tokenizer = tokenize.load_tokenizer(cfg.student.tokenizer)
  tokens = tokenize.tokenize_pairs(train, tokenizer, max_len_std=cfg.student.max_len_std,
                                   max_len_aug=cfg.student.max_len_aug,
                                   match_hint=cfg.student.get("match_hint", ""))
  return tokenizer, tokens


def _shape_key(batch: dict) -> tuple:
  return tuple(sorted((k, v.shape) for k, v in batch.items()))


def ours_epoch(model_cfg, params, tokens, tokenizer, cfg, *, use_reasoning: bool, epoch: int,
               num_batches: int) -> dict:
  """One epoch through the stage's pipeline and jitted step (fresh jit: compile included)."""
  import jax
  from rd_jax.data import pipeline
  from rd_jax.parallel import mesh as mesh_lib
  b = cfg.train.batch_size
  state, step, mesh = common.jax_train_step(model_cfg, params, use_reasoning=use_reasoning,
                                            batch_size=b, num_steps=num_batches)
  it = pipeline.train_batches(tokens, tokenizer, cfg, seed=cfg.seed + epoch, batch_size=b)
  shapes, compile_s, steady_s = {}, 0.0, 0.0
  real = padded = 0
  t_start = time.perf_counter()
  for _ in range(num_batches):
    t0 = time.perf_counter()
    host = next(it)
    state, metrics = step(state, mesh_lib.put_batch(host, mesh))
    float(jax.device_get(metrics["loss"]))  # the training loop fetches metrics every step
    dt = time.perf_counter() - t0
    key = _shape_key(host)
    if key in shapes:
      steady_s += dt
    else:
      shapes[key] = dt
      compile_s += dt
    for view in ("std", "aug") if use_reasoning else ("std",):
      real += int(host[f"{view}_attention_mask"].sum())
      padded += host[f"{view}_attention_mask"].size
  wall = time.perf_counter() - t_start
  steady_batches = num_batches - len(shapes)
  return {"seconds": wall, "examples": num_batches * b, "examples_per_s": num_batches * b / wall,
          "new_shapes": len(shapes), "first_call_s_total": compile_s,
          "steady_examples_per_s": steady_batches * b / steady_s if steady_batches else None,
          "padding_efficiency": real / padded}


def torch_epoch(model_cfg, params, tokens, tokenizer, cfg, *, use_reasoning: bool, epoch: int,
                num_batches: int, dtype: str) -> dict:
  """One epoch as a transformers user trains it: shuffled DataLoader + dynamic padding."""
  import torch
  from transformers import DataCollatorWithPadding
  b = cfg.train.batch_size
  collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")
  device = student_train.torch_device()

  def features(ragged, i):
    ids = ragged.ids[ragged.offsets[i]:ragged.offsets[i + 1]].tolist()
    start = int(ragged.b_start[i])
    return {"input_ids": ids, "token_type_ids": [0] * start + [1] * (len(ids) - start),
            "attention_mask": [1] * len(ids)}

  views = ("std", "aug") if use_reasoning else ("std",)
  examples = [{"views": {v: features(getattr(tokens, v), i) for v in views},
               "labels": int(tokens.labels[i]), "item_key": int(tokens.item_key[i]),
               "reasoning_key": int(tokens.reasoning_key[i])} for i in range(len(tokens))]

  def collate(rows):
    out = {}
    for v in views:
      for k, t in collator([r["views"][v] for r in rows]).items():
        out[f"{v}_{k}"] = t.to(device)
    for k in ("labels", "item_key", "reasoning_key"):
      out[k] = torch.tensor([r[k] for r in rows], device=device)
    out["weights"] = torch.ones(len(rows), device=device)
    return out

  loader = torch.utils.data.DataLoader(examples, batch_size=b, shuffle=True, drop_last=True,
                                       collate_fn=collate, num_workers=0,
                                       generator=torch.Generator().manual_seed(cfg.seed + epoch))
  model = student_train.torch_model(model_cfg, params, train=True)
  opt, sched, clip = student_train.torch_optimizer(model, num_batches)
  real = padded = done = 0
  t_start = time.perf_counter()
  for batch in loader:
    if done == num_batches:
      break
    step = student_train.torch_train_step(model, opt, sched, clip, batch,
                                          use_reasoning=use_reasoning, dtype=dtype)
    step().item()
    for v in views:
      real += int(batch[f"{v}_attention_mask"].sum())
      padded += batch[f"{v}_attention_mask"].numel()
    done += 1
  wall = time.perf_counter() - t_start
  return {"seconds": wall, "examples": done * b, "examples_per_s": done * b / wall,
          "padding_efficiency": real / padded}


def run(args) -> dict:
  dtype = common.resolve_dtype(args.dtype)
  model_cfg, params = common.student(args.size, dtype, seed=args.seed)
  cfg = _config(args)
  modes = [m for m in args.modes.split(",") if m]
  measurements, summary, table = {}, {}, []
  for mode in modes:
    use_reasoning = mode == "crsd"
    tokenizer, tokens = load_tokens(cfg, use_reasoning)
    per_epoch = len(tokens) // args.batch_size
    num_batches = min(per_epoch, args.max_batches) if args.max_batches else per_epoch
    runs = {"ours": [], "torch": []}
    for r in range(args.repeats):  # interleaved: ours, torch, ours, torch, ...
      runs["ours"].append(ours_epoch(model_cfg, params, tokens, tokenizer, cfg,
                                     use_reasoning=use_reasoning, epoch=r, num_batches=num_batches))
      runs["torch"].append(torch_epoch(model_cfg, params, tokens, tokenizer, cfg,
                                       use_reasoning=use_reasoning, epoch=r,
                                       num_batches=num_batches, dtype=dtype))
    medians = {}
    for side, epochs in runs.items():
      timing = common.Timing("examples/s", [e["examples_per_s"] for e in epochs],
                             extra={"epochs": epochs, "batches": num_batches,
                                    "batches_per_full_epoch": per_epoch})
      measurements[f"{mode}_{side}"] = timing
      medians[side] = timing.median
    ratio = medians["ours"] / medians["torch"]
    summary[f"{mode}_ratio_ours_over_torch"] = common.target(ratio, 1.25, at_most=False)
    for side, epochs in runs.items():
      last = epochs[-1]
      table.append({"mode": mode, "side": side, "examples/s": medians[side],
                    "steady_ex/s": last.get("steady_examples_per_s"),
                    "shapes": last.get("new_shapes"), "compile_s": last.get("first_call_s_total"),
                    "pad_eff": last["padding_efficiency"],
                    "ratio": ratio if side == "ours" else None})
  config = {**common.base_config(args, model_cfg), "batch_size": args.batch_size,
            "max_batches": args.max_batches, "modes": modes,
            "length_buckets": list(cfg.student.length_buckets),
            "max_len_std": cfg.student.max_len_std, "max_len_aug": cfg.student.max_len_aug,
            "data": "bundled esci_us_srw150, train folds "
                    f"{list(cfg.data.train_folds)}, bundled teacher reasoning"}
  notes = ["repeats = epochs (each with a fresh jit: ours pays compilation in every repeat)"]
  if args.max_batches:
    notes.append(f"capped at {args.max_batches} batches: compilation weighs more than in a full epoch")
  return common.envelope("student_epoch", config, measurements, summary, table, notes)
