"""What the teacher stages (cpt, sft, reward, dpo, annotate) share.

- `load_teacher`: the decoder a stage starts from — an explicit final/ folder, else the newest
  complete upstream stage in the workdir (annotate: dpo > sft > cpt), else the base model
  `teacher.init` ("smollm2" GGUF, a HF folder, a .gguf, or "random" sized by the config).
  Params are restored from abstract shapes straight into this mesh's shardings.
- `make_lm_step`: the pure `(state, batch) -> (state, metrics)` of CPT and SFT (masked next-token
  CE; CPT masks nothing but padding, SFT everything but the response).
- `RowBatches`: a checkpointable grain iterator over fixed rows (packed CPT rows, SFT rows),
  reshuffled every epoch from (seed, epoch), each host taking its slice of the global batch.
- `teacher_meta` / `save_teacher`: the final/ hand-off with the model config and tokenizer spec.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from rd_jax import checkpoint
from rd_jax.losses import lm
from rd_jax.models import decoder, remat
from rd_jax.train import state as state_lib
from rd_jax.parallel import mesh as mesh_lib, sharding

TEACHER_RULES = tuple(decoder.DECODER_SHARDING_RULES) + ((r".*", None),)


@dataclasses.dataclass
class Teacher:
  config: decoder.DecoderConfig
  params: dict
  tokenizer: object
  tokenizer_spec: str      # what resolve_teacher_tokenizer takes (recorded in meta.json)
  source: str              # where the params came from (a final/ folder or the base spec)


def _config_from_cfg(cfg) -> decoder.DecoderConfig:
  t = cfg.teacher
  return decoder.DecoderConfig(
      vocab_size=t.vocab_size, hidden_size=t.hidden_size, num_layers=t.num_layers,
      num_heads=t.num_heads, num_kv_heads=t.num_kv_heads, intermediate_size=t.intermediate_size,
      rope_theta=t.rope_theta, rms_norm_eps=t.rms_norm_eps, tie_embeddings=t.tie_embeddings,
      max_position=t.max_position, dtype=t.dtype, remat=t.remat, remat_policy=t.remat_policy)


def upstream_final(workdir: str, upstream: Sequence[str]) -> str | None:
  for stage in upstream:
    path = os.path.join(workdir, stage, "final")
    if checkpoint.is_complete(path):
      return path
  return None


def load_teacher(cfg, workdir: str, mesh, *, upstream: Sequence[str], explicit: str = "") -> Teacher:
  from rd_jax.convert import hf_decoder, hf_sharded
  source = explicit or upstream_final(workdir, upstream)
  if source:
    meta = checkpoint.read_meta(source)
    config = decoder.DecoderConfig.from_dict(meta["model_config"])
    config = remat.configure(dataclasses.replace(config, dtype=cfg.teacher.dtype), cfg.teacher)
    params, _ = checkpoint.load_final(source, abstract_params(config, mesh),
                                      expect_model="decoder")
    spec = meta["tokenizer"]
    tokenizer = hf_decoder.resolve_teacher_tokenizer(spec)
    logging.info("teacher from %s (%s)", source, meta.get("stage"))
    return Teacher(config, params, tokenizer, spec, os.path.abspath(source))
  spec = cfg.teacher.init
  if spec == "random":
    config = _config_from_cfg(cfg)
    tok_spec = cfg.teacher.tokenizer or "smollm2"
    params = jax.jit(lambda: decoder.init_params(config, jax.random.PRNGKey(cfg.seed)),
                     out_shardings=param_shardings(config, mesh))()
    return Teacher(config, params, hf_decoder.resolve_teacher_tokenizer(tok_spec), tok_spec, "random")
  config, params, tokenizer = hf_sharded.load_to_mesh(spec, lambda c: param_shardings(c, mesh))
  config = remat.configure(dataclasses.replace(config, dtype=cfg.teacher.dtype), cfg.teacher)
  return Teacher(config, params, tokenizer, spec, spec)


def param_shardings(config, mesh):
  shapes = jax.eval_shape(lambda: decoder.init_params(config, jax.random.PRNGKey(0)))
  return sharding.tree_shardings(shapes, TEACHER_RULES, mesh)


def abstract_params(config, mesh):
  shapes = jax.eval_shape(lambda: decoder.init_params(config, jax.random.PRNGKey(0)))
  shardings = sharding.tree_shardings(shapes, TEACHER_RULES, mesh)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                      shardings)


def teacher_meta(cfg, teacher: Teacher, *, stage: str, step: int, **extra) -> dict:
  return {"model": "decoder", "model_config": teacher.config.to_dict(),
          "tokenizer": teacher.tokenizer_spec, "labels": list(cfg.labels), "stage": stage,
          "step": int(step), "started_from": teacher.source, **extra}


# ------------------------------------------------------------------------------ LM train step
def make_lm_step(model: decoder.Decoder, tx, schedule):
  """Pure step on batch {"tokens", "attention_mask", "loss_mask"} [B, L] (right-padded rows).

  loss = sum_t -log p(tokens[t+1] | tokens[:t+1]) * loss_mask[t+1] / sum loss_mask  (token mean
  over the global batch, so hosts and accumulation agree).
  """
  def loss_fn(params, batch):
    mask = batch["attention_mask"]
    logits, _ = model.apply({"params": params}, batch["tokens"],
                            decoder.positions_from_mask(mask), attention_mask=mask)
    targets, target_mask = lm.next_token_targets(batch["tokens"], batch["loss_mask"])
    total, count = lm.masked_lm_loss(logits, targets, target_mask)
    loss = total / jnp.maximum(count, 1.0)
    return loss, {"loss": loss, "tokens": count, "perplexity": jnp.exp(loss)}

  return state_lib.gradient_step(loss_fn, tx, schedule)


# ------------------------------------------------------------------------------ row batches
class _RowBatch:
  """index -> this host's slice of global batch `index` (epoch-wise reshuffled rows)."""

  def __init__(self, rows: dict[str, np.ndarray], batch_size: int, seed: int,
               process_index: int, process_count: int, trim_to: Sequence[int] = ()):
    self.rows, self.batch_size, self.seed = rows, batch_size, seed
    self.n = len(next(iter(rows.values())))
    self.per_epoch = self.n // batch_size
    if self.per_epoch == 0:
      raise ValueError(f"{self.n} rows are fewer than one batch of {batch_size}")
    if batch_size % process_count:
      raise ValueError(f"batch {batch_size} is not divisible by {process_count} processes")
    local = batch_size // process_count
    self.local = slice(process_index * local, (process_index + 1) * local)
    self.trim_to = sorted(trim_to)

  def __call__(self, index: int, _slot=None) -> dict[str, np.ndarray]:
    epoch, slot = divmod(int(index), self.per_epoch)
    order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
    rows = order[slot * self.batch_size:(slot + 1) * self.batch_size]
    batch = {k: v[rows] for k, v in self.rows.items()}
    if self.trim_to:  # cut right padding to the smallest bucket the GLOBAL batch fits
      longest = int(batch["attention_mask"].sum(1).max())
      length = next((b for b in self.trim_to if b >= longest), batch["tokens"].shape[1])
      batch = {k: v[:, :length] if v.ndim == 2 else v for k, v in batch.items()}
    return {k: v[self.local] for k, v in batch.items()}


def row_batches(rows: dict[str, np.ndarray], *, batch_size: int, seed: int,
                length_buckets: Sequence[int] = ()) -> grain.DatasetIterator:
  """Endless checkpointable iterator (get_state/set_state) of host-local batches of `rows`."""
  fn = _RowBatch(rows, batch_size, seed, jax.process_index(), jax.process_count(), length_buckets)
  dataset = grain.MapDataset.range(fn.per_epoch).repeat().map_with_index(lambda i, _: fn(i))
  return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))


def right_pad(sequences: Sequence[Sequence[int]], masks: Sequence[Sequence[int]], length: int,
              pad_id: int) -> dict[str, np.ndarray]:
  """Token lists + per-token loss masks -> {"tokens", "attention_mask", "loss_mask"} [N, length]."""
  n = len(sequences)
  tokens = np.full((n, length), pad_id, np.int32)
  attention = np.zeros((n, length), np.int32)
  loss = np.zeros((n, length), np.int32)
  for i, (seq, m) in enumerate(zip(sequences, masks)):
    seq, m = list(seq)[:length], list(m)[:length]
    tokens[i, :len(seq)], attention[i, :len(seq)], loss[i, :len(seq)] = seq, 1, m
  return {"tokens": tokens, "attention_mask": attention, "loss_mask": loss}


def mesh_for(cfg):
  mesh_lib.maybe_initialize_distributed(cfg.mesh)
  return mesh_lib.make_mesh(cfg.mesh)
