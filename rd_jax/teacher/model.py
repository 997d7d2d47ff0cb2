"""The teacher decoder a stage trains or samples from, and the loss of CPT and SFT.

- `load_teacher`: the decoder a stage starts from — an explicit final/ folder, else the newest
  complete upstream stage in the workdir (annotate: dpo > sft > cpt), else the base model
  `teacher.init` ("smollm2" GGUF, a HF folder, a .gguf, or "random" sized by the config).
  Params are restored from abstract shapes straight into this mesh's shardings.
- `lm_loss`: the masked next-token CE of CPT and SFT (CPT masks nothing but padding, SFT
  everything but the response), a `loss_fn` for `train.fit`.
- `teacher_meta`: the final/ meta.json with the model config and tokenizer spec.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax
import jax.numpy as jnp
from absl import logging

from rd_jax import checkpoint
from rd_jax import storage
from rd_jax.losses import lm
from rd_jax.models import decoder, remat
from rd_jax.parallel import sharding

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
    return Teacher(config, params, tokenizer, spec, storage.abspath(source))
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


# ------------------------------------------------------------------------------ LM loss
def lm_loss(model: decoder.Decoder):
  """`loss_fn(params, batch) -> (loss, metrics)` on {"tokens", "attention_mask", "loss_mask"}
  [B, L] (right-padded rows):

  loss = sum_t -log p(tokens[t+1] | tokens[:t+1]) * loss_mask[t+1] / sum loss_mask  (token mean
  over the global batch, so hosts and accumulation agree). A float loss_mask weighs each target
  (sft.label_loss_weight): the loss is then the weighted mean and "tokens" the weights' sum.
  """
  def loss_fn(params, batch):
    mask = batch["attention_mask"]
    if "prefix" in batch:   # SFT rows after a shared prompt prefix (stages/sft.py)
      logits = shared_prefix_logits(model, params, batch["prefix"], batch["tokens"], mask)
    else:
      logits, _ = model.apply({"params": params}, batch["tokens"],
                              decoder.positions_from_mask(mask), attention_mask=mask)
    targets, target_mask = lm.next_token_targets(batch["tokens"], batch["loss_mask"])
    total, count = lm.masked_lm_loss(logits, targets, target_mask)
    loss = total / jnp.maximum(count, 1.0)
    return loss, {"loss": loss, "tokens": count, "perplexity": jnp.exp(loss)}

  return loss_fn


def shared_prefix_logits(model: decoder.Decoder, params, prefix, tokens, mask):
  """Logits [B, L, V] of rows `tokens` [B, L] (right-padded, validity `mask`) that all follow the
  same P prompt tokens `prefix` [B, P] (every row holds the same tokens; row 0 is read).

  The prefix runs once, as one row: its keys/values [layers, K, P, hd] are attended by every row
  through the decoder's shared-prefix cache entries, and the rows' positions start at P. This is
  exactly the full rows' forward (prefix + row) with the prefix's logits dropped, and autodiff
  sums the rows' gradients through the one prefix pass: a batch of B rows costs P + B * L token
  passes instead of B * (P + L). The first row token's prediction (from the prefix's last
  position) is dropped, so the caller keeps every loss target inside the rows (sft.py: a row starts
  inside the prompt).
  """
  p = prefix.shape[1]
  one = prefix[:1]                                                          # [1, P]
  _, cache = model.apply({"params": params}, one, jnp.arange(p)[None],
                         cache=decoder.init_cache(model.config, 1, p), cache_index=0,
                         method=decoder.Decoder.hidden_states)
  # the rows write no cache: the prefix entries alone (a scan under teacher.remat "scan")
  prefix_kv = {"prefix_k": cache["k"][:, 0], "prefix_v": cache["v"][:, 0]}  # [layers, K, P, hd]
  logits, _ = model.apply({"params": params}, tokens, p + decoder.positions_from_mask(mask),
                          attention_mask=mask, cache=prefix_kv)
  return logits
