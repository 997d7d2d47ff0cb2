"""`--stage=cpt`: continued (domain-adaptive) pre-training of the teacher on domain text.

Corpus: `cpt.corpus_paths` (text files, one document per non-empty line; .gz ok) or, by default,
the bundled data's TRAINING folds only — each distinct rendered item (title, brand, colour,
category, bullets, description) and each distinct query — so no test-fold text is ever seen.
Documents are tokenised, joined with EOS and packed into rows of `cpt.seq_len` tokens (the tail
that does not fill a row is dropped and counted); attention runs across document boundaries
inside a row, as usual in packed pre-training. Loss: next-token CE on every token.
Writes <workdir>/cpt/: checkpoints/, final/ (decoder params + meta), metrics.jsonl, summary.json
(tokens, rows, held-out perplexity before and after).
"""

from __future__ import annotations

import math
import os
import time

import jax
import numpy as np
from absl import logging

from rd_jax import errors
from rd_jax.data import readers
from rd_jax import storage
from rd_jax.data.schema import render_item
from rd_jax.losses import lm
from rd_jax.models import decoder
from rd_jax.parallel import mesh as mesh_lib
from rd_jax.teacher import model as teacher_model, rows as rows_lib
from rd_jax.train import fit

CORPUS_TEMPLATE = ("{product_title}\nBrand: {product_brand}\nColor: {product_color}\n"
                   "Category: {category}\n{product_bullet_point}\n{product_description}")


def build_corpus(cfg) -> tuple[list[str], dict]:
  if cfg.cpt.corpus_paths:
    docs = []
    for path in cfg.cpt.corpus_paths:
      if not storage.exists(path):
        raise FileNotFoundError(f"config key cpt.corpus_paths: {path} does not exist")
      with readers.open_text(path) as f:
        docs += [line.strip() for line in f if line.strip()]
    if not docs:
      raise errors.DataError(f"cpt.corpus_paths {list(cfg.cpt.corpus_paths)} hold no text")
    return docs, {"source": list(cfg.cpt.corpus_paths), "documents": len(docs)}
  pairs, _ = readers.load_pairs(cfg.data.path, cfg, require_label=False)
  train = readers.train_valid_test(pairs, cfg)["train"]
  items = {p.product_id or p.item_text: render_item(p.raw, CORPUS_TEMPLATE) for p in train}
  queries = sorted({p.query for p in train})
  docs = sorted(items.values()) + queries
  return docs, {"source": "bundled training folds", "items": len(items), "queries": len(queries),
                "documents": len(docs)}


def pack(docs: list[str], tokenizer, seq_len: int) -> tuple[np.ndarray, dict]:
  """Documents -> [R, seq_len] int32 rows of the EOS-joined token stream."""
  eos = tokenizer.eos_token_id
  stream: list[int] = []
  for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
    stream += ids + [eos]
  rows = len(stream) // seq_len
  if rows == 0:
    raise errors.DataError(f"the corpus has {len(stream)} tokens, fewer than one row of cpt.seq_len="
                           f"{seq_len}")
  packed = np.asarray(stream[:rows * seq_len], np.int32).reshape(rows, seq_len)
  return packed, {"tokens": len(stream), "rows": rows, "dropped_tail_tokens": len(stream) - rows * seq_len}


def heldout_loss(model, params, rows: np.ndarray, mesh, batch_size: int) -> float:
  """Token-mean next-token CE over `rows` (equal-length full rows)."""
  @jax.jit
  def loss_sum(params, tokens):
    mask = jax.numpy.ones_like(tokens)
    logits, _ = model.apply({"params": params}, tokens, decoder.positions_from_mask(mask),
                            attention_mask=mask)
    targets, tmask = lm.next_token_targets(tokens, mask)
    return lm.masked_lm_loss(logits, targets, tmask)
  total = count = 0.0
  dp = mesh_lib.data_parallel_size(mesh)
  size = max(dp, batch_size - batch_size % dp)
  for start in range(0, len(rows) - size + 1, size):
    s, n = loss_sum(params, jax.device_put(rows[start:start + size]))
    total, count = total + float(s), count + float(n)
  return total / max(count, 1.0)


def run(cfg, workdir: str) -> dict:
  stage_dir = os.path.join(workdir, "cpt")
  storage.makedirs(stage_dir)
  t0 = time.perf_counter()
  mesh = fit.make_mesh(cfg)
  teacher = teacher_model.load_teacher(cfg, workdir, mesh, upstream=())
  docs, corpus = build_corpus(cfg)
  rows, packing = pack(docs, teacher.tokenizer, cfg.cpt.seq_len)
  order = np.random.default_rng(cfg.seed).permutation(len(rows))
  n_held = max(cfg.cpt.batch_size, int(cfg.cpt.heldout_rows))
  if len(rows) - n_held < cfg.cpt.batch_size:
    raise errors.DataError(f"{len(rows)} packed rows leave too few for training after holding out "
                           f"{n_held}: give more text or lower cpt.seq_len")
  held, train = rows[order[:n_held]], rows[order[n_held:]]

  model = decoder.Decoder(teacher.config)
  before = heldout_loss(model, teacher.params, held, mesh, cfg.cpt.batch_size)
  ones = np.ones_like(train)
  batches = rows_lib.row_batches({"tokens": train, "attention_mask": ones, "loss_mask": ones},
                                 batch_size=cfg.cpt.batch_size, seed=cfg.seed)
  trained = fit.fit(cfg, "cpt", workdir, params=teacher.params,
                    loss_fn=teacher_model.lm_loss(model), batches=batches, mesh=mesh,
                    rules=teacher_model.TEACHER_RULES)
  if trained.interrupted:
    return fit.interrupted(cfg, "cpt")
  after = heldout_loss(model, trained.params, held, mesh, cfg.cpt.batch_size)
  summary = {"stage": "cpt", "corpus": corpus, "packing": packing, "heldout_rows": int(n_held),
             "heldout_loss_before": before, "heldout_loss_after": after,
             "heldout_perplexity_before": math.exp(min(before, 50)),
             "heldout_perplexity_after": math.exp(min(after, 50)),
             "steps": trained.stats["steps"], "resumed_from": trained.stats["resumed_from"],
             "started_from": teacher.source, "seconds": round(time.perf_counter() - t0, 1)}
  fit.finish(stage_dir, trained.params,
             teacher_model.teacher_meta(cfg, teacher, stage="cpt", step=trained.step), summary)
  logging.info("cpt done: held-out loss %.4f -> %.4f", before, after)
  return summary
