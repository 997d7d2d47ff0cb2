"""`teacher_generate`: our KV-cache generation vs HF `model.generate`, same weights and prompts.

  python -m rd_jax.bench teacher_generate --repeats=1 --warmup=0 --out=teacher_generate.json

`--mode=annotation` (default): annotation throughput in pairs/s on `--pairs` seeded valid-fold
pairs of the bundled data, greedy, up to `--max_new_tokens` (default 96 = teacher.max_response_len)
with EOS, three ways in one run:
  ours      `refill.run` with prompt v2: shared prefix prefilled once, `--slots` rows refilled as
            they end, `--draft_tokens` n-gram guesses checked per row and step, stop at
            "\\nLabel:", the K labels scored from the cache (what annotate runs);
  ours_no_drafts  the same without guesses (with --draft_tokens > 0; the same tokens expected);
  plain_v1  what annotation ran before (prompt v1, `generate.generate` in batches of
            `--hf_batch`, each decoding to its longest row);
  hf        HF `generate` on the same prompt-v2 prompts in batches of `--hf_batch` (default 16),
            to EOS (its answer's label line parsed, no scoring), left-padded to each batch's longest.
The summary has pairs/s of each and the ratios ours/hf and ours/plain_v1; `--dtype=bfloat16`
casts our params to bf16 (HF stays fp32).

`--mode=tokens` (the older benchmark):

Both sides load the teacher once (`--teacher`, default the SmolLM2-135M GGUF dequantised to fp32;
`--size=tiny` swaps in a 2-layer random decoder for a smoke run) and decode greedily, fp32, for
exactly `--max_new_tokens` per row (EOS never stops a row: ours gets no EOS ids, HF gets
min_new_tokens), so both produce B x N tokens. Prompts are real teacher prompts
(`data/prompts.py` through the chat template) for 16 query/item pairs, LEFT-padded: ours to the
`generate.DEFAULT_BUCKETS` bucket, HF to the longest prompt. A timed call is the whole
generation (prefill + decode) from token ids to token ids; tokens/s = B x N / median seconds.
`--split_prefill` also times a 1-token call of each, so decode-only rates can be told apart.
`agreement` = greedy tokens equal to HF's up to our first EOS (HF suppresses EOS there).
"""

from __future__ import annotations

import numpy as np

from rd_jax.bench import common

PAIRS = [
    ("red running shoes for women", "Nike Women's Air Zoom Pegasus 39 Running Shoe\nBrand: Nike\nColor: Red"),
    ("usb c charger 65w", "Anker 735 Charger (Nano II 65W), 3-Port Fast Compact Foldable GaN Charger\nBrand: Anker"),
    ("stainless steel water bottle", "Hydro Flask Standard Mouth Bottle with Flex Cap, 21 oz\nBrand: Hydro Flask\nColor: Pacific"),
    ("iphone 13 case", "Spigen Tough Armor Case for Galaxy S22\nBrand: Spigen\nColor: Black"),
    ("coffee grinder burr", "Coffee Filters, 200 Count, Basket Style\nBrand: Amazon Basics"),
    ("kids bike helmet", "Giro Scamp Youth Recreational Cycling Helmet\nBrand: Giro\nColor: Matte Blue"),
    ("wireless mouse", "Logitech M185 Wireless Mouse, 2.4GHz with USB Mini Receiver\nBrand: Logitech\nColor: Grey"),
    ("yoga mat thick", "Gaiam Yoga Mat Premium 6mm Print Extra Thick Non Slip\nBrand: Gaiam\nColor: Purple"),
    ("hdmi cable 10 ft", "Amazon Basics High-Speed HDMI Cable, 6 Feet\nBrand: Amazon Basics"),
    ("organic green tea bags", "Bigelow Green Tea, Caffeinated, 40 Count\nBrand: Bigelow"),
    ("mechanical keyboard", "Keycap Puller and Switch Puller Tool\nBrand: Glorious"),
    ("baby monitor with camera", "Infant Optics DXR-8 Video Baby Monitor\nBrand: Infant Optics"),
    ("dog food grain free", "Cat Litter, Clumping, 40 lb\nBrand: Tidy Cats"),
    ("led desk lamp", "TaoTronics LED Desk Lamp with USB Charging Port\nBrand: TaoTronics\nColor: Black"),
    ("cast iron skillet 12 inch", "Lodge 10.25 Inch Cast Iron Skillet\nBrand: Lodge\nColor: Black"),
    ("noise cancelling headphones", "Sony WH-1000XM4 Wireless Noise Canceling Headphones\nBrand: Sony\nColor: Black"),
]
LABELS = ["Exact", "Substitute", "Complement", "Irrelevant"]


def add_args(parser) -> None:
  parser.add_argument("--teacher", default="smollm2", help="smollm2 | <.gguf> | <HF folder>")
  parser.add_argument("--mode", default="annotation", choices=("annotation", "tokens"))
  parser.add_argument("--pairs", type=int, default=64, help="annotation: valid-fold pairs")
  # 32: a decode step streams all weights, so 32 slots cost ~1.4x a 16-slot step for 2x the rows
  parser.add_argument("--slots", type=int, default=32, help="annotation: our decode slots")
  parser.add_argument("--draft_tokens", type=int, default=4,
                      help="annotation: our n-gram guesses per row and step (teacher.draft_tokens); "
                           "> 0 also times ours without them (ours_no_drafts)")
  parser.add_argument("--matmul_dtype", default="float32", choices=("float32", "bfloat16"),
                      help="annotation: our matmul inputs (teacher.generate_matmul_dtype); bfloat16 "
                           "also times ours in float32 (ours_fp32) for the speed and token agreement")
  parser.add_argument("--hf_bf16", action="store_true",
                      help="annotation: also time HF generate with its weights in bf16 (hf_bf16)")
  parser.add_argument("--hf_batch", type=int, default=16, help="annotation: HF / plain batch")
  parser.add_argument("--no_plain", action="store_true", help="annotation: skip plain_v1")
  parser.add_argument("--batch_sizes", default="1,16", help="comma list (at most 16: the prompt set)")
  parser.add_argument("--max_new_tokens", type=int, default=0,
                      help="new tokens (0 = 96 in annotation mode, 64 in tokens mode)")
  parser.add_argument("--no_hf", action="store_true", help="skip HF generate (ours only)")
  parser.add_argument("--split_prefill", action="store_true", help="also time 1-token calls")


def _teacher(args):
  """(DecoderConfig, flax params, torch model, tokenizer) sharing one set of weights."""
  from rd_jax.convert import hf_decoder
  if getattr(args, "size", "") == "tiny":
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from rd_jax.models.decoder import DecoderConfig
    config = DecoderConfig(vocab_size=49152, hidden_size=64, num_layers=2, num_heads=4,
                           num_kv_heads=2, intermediate_size=128)
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(LlamaConfig(**hf_decoder.hf_config_dict(config))).eval()
    tokenizer = hf_decoder.resolve_teacher_tokenizer(args.teacher)
  else:
    model, tokenizer = hf_decoder.load_torch_model(args.teacher)
    config = hf_decoder.config_from_hf(model.config.to_dict())
  return config, hf_decoder.from_hf_state_dict(config, model.state_dict()), model, tokenizer


def run(args) -> dict:
  if args.mode == "annotation":
    return run_annotation(args)
  import jax
  import torch
  from rd_jax import generate as gen
  from rd_jax.data import prompts

  torch.set_num_threads(common.cores())
  config, params, hf_model, tok = _teacher(args)
  params = jax.device_put(params)
  n_new = args.max_new_tokens or 64
  pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
  ids = [tok(prompts.build_prompt(tok, q, item, LABELS), add_special_tokens=False)["input_ids"]
         for q, item in PAIRS]
  fns, meta, agreement = {}, {}, {}
  for b in [int(x) for x in str(args.batch_sizes).split(",")]:
    if not 1 <= b <= len(PAIRS):
      raise ValueError(f"--batch_sizes: {b} not in 1..{len(PAIRS)}")
    rows = ids[:b]
    p = gen.bucket_length(max(map(len, rows)), gen.DEFAULT_BUCKETS)
    tokens, mask = gen.left_pad(rows, p, pad)

    def ours(tokens=tokens, mask=mask, n=n_new):
      return gen.generate(config, params, tokens, mask, max_new_tokens=n, eos_ids=[], pad_id=pad).tokens

    hp = max(map(len, rows))
    h_tokens, h_mask = (torch.from_numpy(a.astype(np.int64)) for a in gen.left_pad(rows, hp, pad))

    def hf(n=n_new, h_tokens=h_tokens, h_mask=h_mask):
      with torch.inference_mode():
        return hf_model.generate(input_ids=h_tokens, attention_mask=h_mask, max_new_tokens=n,
                                 min_new_tokens=n, do_sample=False, pad_token_id=pad)[:, h_tokens.shape[1]:]

    fns[f"ours_b{b}"], meta[f"ours_b{b}"] = ours, dict(batch=b, padded_prompt_len=p, new_tokens=n_new)
    if not args.no_hf:
      fns[f"hf_b{b}"], meta[f"hf_b{b}"] = hf, dict(batch=b, padded_prompt_len=hp, new_tokens=n_new)
      ours_t, hf_t = np.asarray(ours()), hf().numpy()
      agreement[f"b{b}"] = [_agreement(o, h, tok.eos_token_id) for o, h in zip(ours_t, hf_t)]
    if args.split_prefill:
      fns[f"ours_prefill_b{b}"] = lambda o=ours: o(n=1)
      meta[f"ours_prefill_b{b}"] = dict(batch=b, padded_prompt_len=p, new_tokens=1)
      if not args.no_hf:
        fns[f"hf_prefill_b{b}"] = lambda h=hf: h(n=1)
        meta[f"hf_prefill_b{b}"] = dict(batch=b, padded_prompt_len=hp, new_tokens=1)

  timings = common.measure(fns, repeats=args.repeats, calls=1, warmup=args.warmup)
  table, summary = [], {}
  for name, timing in timings.items():
    m = meta[name]
    timing.extra.update(m, tokens_per_s=m["batch"] * m["new_tokens"] / timing.median,
                        tokens_per_s_repeats=[m["batch"] * m["new_tokens"] / r for r in timing.repeats])
    table.append({"run": name, **m, "median_s": timing.median, "tokens_per_s": timing.extra["tokens_per_s"]})
  for b in str(args.batch_sizes).split(","):
    o, h = timings.get(f"ours_b{b}"), timings.get(f"hf_b{b}")
    summary[f"ours_tokens_per_s_b{b}"] = o.extra["tokens_per_s"]
    if h is not None:
      summary[f"hf_tokens_per_s_b{b}"] = h.extra["tokens_per_s"]
      summary[f"speedup_b{b}"] = o.extra["tokens_per_s"] / h.extra["tokens_per_s"]
    po, ph = timings.get(f"ours_prefill_b{b}"), timings.get(f"hf_prefill_b{b}")
    for name, full, pre in (("ours", o, po), ("hf", h, ph)):
      if full is not None and pre is not None and full.median > pre.median:
        summary[f"{name}_decode_only_tokens_per_s_b{b}"] = int(b) * (n_new - 1) / (full.median - pre.median)
  cfg = {"teacher": args.teacher, "size": getattr(args, "size", None), "model_config": config.to_dict(),
         "max_new_tokens": n_new, "batch_sizes": args.batch_sizes, "repeats": args.repeats,
         "warmup": args.warmup, "threads": common.cores(), "torch_threads": torch.get_num_threads(),
         "prompt_tokens": [len(r) for r in ids], "buckets": list(gen.DEFAULT_BUCKETS),
         "greedy_agreement": agreement}
  notes = ["fp32 both sides; HF uses its default attention (sdpa) and its own KV cache",
           "HF pads to the longest prompt, ours to the bucket (the padded prefill is ours to pay)"]
  return common.envelope("teacher_generate", cfg, timings, summary, table, notes)


def _agreement(ours, hf, eos: int) -> dict:
  """Equal leading tokens, compared up to our first EOS (HF's min_new_tokens forbids EOS)."""
  hits = np.flatnonzero(ours == eos)
  n = int(hits[0]) if hits.size else len(ours)
  diff = np.flatnonzero(ours[:n] != hf[:n])
  return {"compared": n, "equal_prefix": int(diff[0]) if diff.size else n}


def _valid_pairs(n: int, seed: int):
  from rd_jax import config as config_lib
  from rd_jax.data import readers
  cfg = config_lib.default_config()
  pairs, _ = readers.load_pairs(cfg.data.path, cfg)
  return readers.seeded_subset(readers.train_valid_test(pairs, cfg)["valid"], n, seed), cfg


def _rows_identical(a, b) -> float:
  """Share of rows whose tokens and length equal between two `refill.Result`s."""
  return float(np.mean([x == y and np.array_equal(s, t) for x, y, s, t in
                        zip(a.lengths, b.lengths, a.tokens, b.tokens)]))


def run_annotation(args) -> dict:
  import dataclasses

  import jax
  import jax.numpy as jnp
  import torch
  from rd_jax import generate as gen, refill
  from rd_jax.data import prompts

  torch.set_num_threads(common.torch_threads())
  config, params, hf_model, tok = _teacher(args)
  dtype = "float32" if args.dtype in ("auto", "float32") else args.dtype
  if dtype != "float32":   # weights stored in bf16: half the bytes each decode step streams
    import dataclasses
    config = dataclasses.replace(config, dtype=dtype)
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  params = jax.device_put(params)
  n_new = args.max_new_tokens or 96
  pairs, cfg = _valid_pairs(args.pairs, args.seed)
  labels = list(cfg.labels)
  v2 = [tok(prompts.build_prompt(tok, p.query, p.item_text, labels, version=2),
            add_special_tokens=False)["input_ids"] for p in pairs]
  v1 = [tok(prompts.build_prompt(tok, p.query, p.item_text, labels, version=1),
            add_special_tokens=False)["input_ids"] for p in pairs]
  eos, pad = tok.eos_token_id, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
  stop = tok(gen.LABEL_CUE, add_special_tokens=False)["input_ids"]
  cands = [tok(f"{gen.LABEL_CUE} {l}", add_special_tokens=False)["input_ids"] for l in labels]
  outputs = {}

  mixed = dataclasses.replace(config, matmul_dtype=args.matmul_dtype)

  def ours(d=args.draft_tokens, name="ours", config=mixed):
    r = refill.run(config, params, v2, slots=args.slots, max_new_tokens=n_new, eos_ids=[eos],
                   pad_id=pad, stop_ids=stop, candidates=cands, draft_tokens=d)
    outputs[name] = r
    return r.tokens

  def plain():
    out = []
    for i in range(0, len(v1), args.hf_batch):
      rows = v1[i:i + args.hf_batch]
      length = gen.bucket_length(max(map(len, rows)), gen.DEFAULT_BUCKETS)
      t, m = gen.left_pad(rows, length, pad, batch=args.hf_batch)
      g = gen.generate(config, params, t, m, max_new_tokens=n_new, eos_ids=[eos], pad_id=pad)
      out += [int(x) for x in g.lengths[:len(rows)]]
    outputs["plain_v1"] = out
    return out

  def hf(model=hf_model, name="hf"):
    out = []
    with torch.inference_mode():
      for i in range(0, len(v2), args.hf_batch):
        rows = v2[i:i + args.hf_batch]
        t, m = (torch.from_numpy(a.astype(np.int64)) for a in gen.left_pad(rows, max(map(len, rows)), pad))
        g = model.generate(input_ids=t, attention_mask=m, max_new_tokens=n_new, do_sample=False,
                              pad_token_id=pad, eos_token_id=eos)[:, t.shape[1]:].numpy()
        out += [g[j] for j in range(len(rows))]
    outputs[name] = out
    return out

  fns = {"ours": ours, "hf": hf}
  if args.draft_tokens > 0:
    fns["ours_no_drafts"] = lambda: ours(0, "ours_no_drafts")
  if args.matmul_dtype != "float32":
    fns["ours_fp32"] = lambda: ours(args.draft_tokens, "ours_fp32", config)
  if not args.no_plain:
    fns["plain_v1"] = plain
  if args.no_hf:
    del fns["hf"]
  elif args.hf_bf16:
    import copy
    hf16 = copy.deepcopy(hf_model).to(torch.bfloat16)
    fns["hf_bf16"] = lambda: hf(hf16, "hf_bf16")
  timings = common.measure(fns, repeats=args.repeats, calls=1, warmup=args.warmup)
  n = len(pairs)
  r = outputs["ours"]
  summary, table = {}, []
  for name, timing in timings.items():
    timing.extra.update(pairs=n, pairs_per_s=n / timing.median,
                        pairs_per_s_repeats=[n / x for x in timing.repeats])
    summary[f"{name}_pairs_per_s"] = n / timing.median
    table.append({"run": name, "pairs": n, "median_s": timing.median, "pairs_per_s": n / timing.median})
  if "hf" in timings:
    summary["ours_vs_hf"] = summary["ours_pairs_per_s"] / summary["hf_pairs_per_s"]
    summary["ours_vs_hf_target"] = common.target(summary["ours_vs_hf"], 3.0, at_most=False)
    hf_len = [int(np.flatnonzero(np.append(h == eos, True))[0]) + 1 for h in outputs["hf"]]
    summary["hf_mean_new_tokens"] = float(np.mean(np.minimum(hf_len, n_new)))
    # greedy agreement: our tokens up to the cue / EOS equal HF's leading tokens
    summary["greedy_prefix_agreement"] = float(np.mean([
        np.array_equal(r.tokens[i, :r.lengths[i] - 1], outputs["hf"][i][:r.lengths[i] - 1])
        for i in range(n)]))
  if "hf_bf16" in timings:
    summary["ours_vs_hf_bf16"] = summary["ours_pairs_per_s"] / summary["hf_bf16_pairs_per_s"]
  if "plain_v1" in timings:
    summary["ours_vs_plain_v1"] = summary["ours_pairs_per_s"] / summary["plain_v1_pairs_per_s"]
    summary["plain_v1_mean_new_tokens"] = float(np.mean(outputs["plain_v1"]))
  summary["ours_mean_new_tokens"] = float(np.mean(r.lengths))
  summary["ours_decode_steps"], summary["ours_draft_tokens_kept"] = r.steps, r.accepted
  summary["ours_seconds_by_phase"] = {k: round(v, 3) for k, v in r.seconds.items()}
  if "ours_no_drafts" in outputs:
    r0 = outputs["ours_no_drafts"]
    summary["ours_vs_no_drafts"] = summary["ours_pairs_per_s"] / summary["ours_no_drafts_pairs_per_s"]
    summary["ours_no_drafts_decode_steps"] = r0.steps
    summary["ours_no_drafts_seconds_by_phase"] = {k: round(v, 3) for k, v in r0.seconds.items()}
    summary["drafts_rows_identical"] = _rows_identical(r, r0)   # fp32 greedy: should be 1
    summary["drafts_max_score_diff"] = float(np.max(np.abs(r.scores - r0.scores)))
  if "ours_fp32" in outputs:
    r1 = outputs["ours_fp32"]
    summary["ours_vs_fp32"] = summary["ours_pairs_per_s"] / summary["ours_fp32_pairs_per_s"]
    # bf16 matmul inputs change some greedy tokens: rows identical to fp32's, scored-label agreement
    summary["matmul_rows_identical_to_fp32"] = _rows_identical(r, r1)
    summary["matmul_label_agreement_with_fp32"] = float(np.mean(
        np.argmax(r.scores, -1) == np.argmax(r1.scores, -1)))
  summary["ours_stopped_on_cue"] = float(np.mean(r.stopped))
  summary["ours_label_distribution"] = dict(zip(labels, np.bincount(
      np.argmax(r.scores, -1), minlength=len(labels)).tolist()))
  cfg_out = {"teacher": args.teacher, "size": getattr(args, "size", None), "mode": "annotation",
             "model_config": config.to_dict(), "dtype": dtype, "max_new_tokens": n_new,
             "pairs": n, "slots": args.slots, "draft_tokens": args.draft_tokens,
             "matmul_dtype": args.matmul_dtype, "hf_batch": args.hf_batch, "repeats": args.repeats,
             "warmup": args.warmup, "threads": common.cores(), "torch_threads": torch.get_num_threads(),
             "shared_prefix_tokens": r.prefix_len,
             "prompt_tokens_v2_mean": float(np.mean([len(x) for x in v2])),
             "prompt_tokens_v1_mean": float(np.mean([len(x) for x in v1]))}
  notes = ["pairs/s = pairs / median seconds of one whole call (prefill, decode, scoring)",
           "ours stops at the label cue and scores the labels; HF and plain_v1 generate the label "
           "line to EOS (parsed)", "HF: fp32, sdpa attention, its own KV cache"]
  return common.envelope("teacher_generate", cfg_out, timings, summary, table, notes)
