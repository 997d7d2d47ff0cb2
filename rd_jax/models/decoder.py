"""Llama-family decoder (the teacher): RMSNorm, RoPE, grouped-query attention, SwiGLU, KV cache.

Shapes: B batch, L new tokens, S cache slots (= L without a cache), D hidden, H query heads,
K key/value heads (G = H / K queries share one K/V head), hd head dim, V vocabulary.

Block i (pre-norm, as HF `LlamaDecoderLayer`):
  x = x + o_proj(Attn(RoPE(q_proj(n1(x))), RoPE(k_proj(n1(x))), v_proj(n1(x))))   n1 = input_layernorm
  x = x + down_proj(silu(gate_proj(n2(x))) * up_proj(n2(x)))                      n2 = post_attention_layernorm
  RMSNorm(x) = scale * x / sqrt(mean(x^2) + eps)
  RoPE (HF "rotate_half" layout): with f_j = theta^(-2j/hd), j < hd/2 and x = [x1, x2] halves,
    RoPE(x, p) = [x1 cos(p f) - x2 sin(p f),  x2 cos(p f) + x1 sin(p f)]
    rope_scaling="llama3" (Llama 3.1+) rescales f by wavelength (`rope_frequencies`).
  qkv_bias (Qwen2/2.5): q, k, v projections carry a bias; o_proj never does.
  Attn: softmax(q k^T / sqrt(hd) + mask) v, query head h reads K/V head h // G.

Parameter names mirror HF's (`layers_3/self_attn/q_proj/kernel` <-> `model.layers.3.self_attn.
q_proj.weight`, transposed), so `convert/hf_decoder.py` needs one name map. Params are fp32;
`config.dtype` is the compute dtype. Norm statistics, RoPE, softmax and the LM head run in fp32.
`config.matmul_dtype="bfloat16"` with dtype float32 (generation on CPU): the projections, MLP and
LM head take bf16 inputs (weights cast once by `cast_matmul_params`) and accumulate and return
fp32; activations, norms, attention and the KV cache stay fp32. Why: XLA:CPU runs a bf16 x bf16
-> fp32 matmul on AMX / AVX512-BF16 2-4x faster than fp32, but a bf16-output matmul (dtype
bfloat16) ~4x slower than fp32, and a scatter into a bf16 cache converts the whole cache
(README "Performance").

Padding: prompts are LEFT-padded; `attention_mask` [B, S] marks valid slots (1) and positions
count valid tokens only (`positions_from_mask`), so a padded row computes what it would alone.
KV cache: `{"k", "v"}` each [layers, B, K, S_max, hd]; a call writes its L new keys at slot
`cache_index` (a shared scalar, or [B] per row) and attends to slots <= its own slot. Slots sit
next to hd (not [.., S, K, hd]) so a layer's cache is a ready [B, K, S, hd] matmul operand: the
other order made XLA transpose-copy every layer's cache every step (3x slower decode at B=16).
Shared prefix (optional cache entries "prefix_k", "prefix_v", each [layers, K, P0, hd]): P0 keys
and values every row attends to before its own slots, stored once, never written; the row cache's
slots and `cache_index` then count from the end of the prefix (positions stay absolute). A decode
step reads the prefix once for all B rows instead of B copies (`rd_jax/refill.py`). A cache of
the prefix entries alone (no "k", "v"; no cache_index) is a forward of whole rows after a fixed
prefix, which writes nothing (SFT rows after a shared prompt, teacher/model.shared_prefix_logits);
remat "scan" runs it as a scan too, the prefix's layers stacked with the blocks' params.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rd_jax.models import remat

# Param-path rules for `rd_jax/parallel/sharding.py`: (regex searched in the "/"-joined param
# path, one mesh-axis name or None per array dim). "fsdp" shards the hidden (D) side of every
# matrix, "tensor" the heads / MLP width / vocabulary (Megatron: column-parallel q,k,v,gate,up,
# row-parallel o,down). With tensor > 1 it should divide num_kv_heads (3 for SmolLM2-135M), or
# XLA splits inside a head. Norm scales are replicated. First match wins.
DECODER_SHARDING_RULES = [
    (r"embed_tokens/embedding$", ("tensor", "fsdp")),          # [V, D]
    (r"self_attn/(q|k|v)_proj/kernel$", ("fsdp", "tensor")),  # [D, H*hd] / [D, K*hd]
    (r"self_attn/(q|k|v)_proj/bias$", ("tensor",)),           # [H*hd] / [K*hd] (qkv_bias)
    (r"self_attn/o_proj/kernel$", ("tensor", "fsdp")),        # [H*hd, D]
    (r"mlp/(gate|up)_proj/kernel$", ("fsdp", "tensor")),      # [D, F]
    (r"mlp/down_proj/kernel$", ("tensor", "fsdp")),           # [F, D]
    (r"lm_head/kernel$", ("fsdp", "tensor")),                 # [D, V] (untied only)
    (r"(input_layernorm|post_attention_layernorm|norm)/scale$", (None,)),  # [D]
]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# Finite "-inf": a fully masked row (a pad query) gets a uniform softmax instead of NaN.
_MASKED = -1e30


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Shape of a Llama-family decoder; defaults are SmolLM2-135M (== config.py `teacher`)."""
  vocab_size: int = 49152
  hidden_size: int = 576
  num_layers: int = 30
  num_heads: int = 9
  num_kv_heads: int = 3
  intermediate_size: int = 1536
  rope_theta: float = 100000.0
  rms_norm_eps: float = 1e-5
  tie_embeddings: bool = True
  max_position: int = 2048
  dtype: str = "float32"  # compute dtype; params stay fp32
  qkv_bias: bool = False  # Qwen2/2.5: bias on q_proj, k_proj, v_proj
  rope_scaling: str = "none"  # none | llama3 (the four rope_* below; HF rope_parameters)
  rope_factor: float = 8.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_position: int = 8192
  remat: str = "none"     # none | per_layer | scan (models/remat.py); params identical either way
  remat_policy: str = "nothing_saveable"
  matmul_dtype: str = ""  # "" = dtype; "bfloat16" (with dtype float32): bf16-input fp32-output matmuls

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
    if self.dtype not in _DTYPES:
      raise ValueError(f"dtype {self.dtype!r} not one of {sorted(_DTYPES)}")
    if self.matmul_dtype not in ("",) + tuple(_DTYPES):
      raise ValueError(f"matmul_dtype {self.matmul_dtype!r} not one of {['', *sorted(_DTYPES)]}")
    if self.rope_scaling not in ("none", "llama3"):
      raise ValueError(f"rope_scaling {self.rope_scaling!r} not one of ['llama3', 'none']")
    remat.check(self.remat, self.remat_policy, remat.MODES + (remat.SCAN,))

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def mixed_matmuls(self) -> bool:
    """matmul inputs in matmul_dtype, fp32 accumulation and outputs (see the module doc)."""
    return self.matmul_dtype not in ("", self.dtype)

  def dense(self, n: int, name: str, bias: bool = False) -> nn.Dense:
    if self.mixed_matmuls:
      return nn.Dense(n, use_bias=bias, dtype=_DTYPES[self.matmul_dtype], param_dtype=jnp.float32,
                      dot_general=_dot_fp32_out, name=name)
    return nn.Dense(n, use_bias=bias, dtype=self.compute_dtype, param_dtype=jnp.float32, name=name)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Any, strict: bool = True) -> "DecoderConfig":
    """From a dict or ConfigDict; strict=False ignores extra keys (e.g. cfg.teacher.init)."""
    d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
    names = {f.name for f in dataclasses.fields(cls)}
    extra = sorted(set(d) - names)
    if extra and strict:
      raise ValueError(f"unknown DecoderConfig key(s) {extra}; known: {sorted(names)}")
    return cls(**{k: v for k, v in d.items() if k in names})


def _dot_fp32_out(x, w, dims, precision=None, **kw):
  return lax.dot_general(x, w, dims, precision=precision, preferred_element_type=jnp.float32)


def cast_matmul_params(config: DecoderConfig, params):
  """With `config.mixed_matmuls`, every matrix (kernels, the embedding) in matmul_dtype once, so
  no step converts them; norm scales and biases stay fp32. Otherwise params unchanged."""
  if not config.mixed_matmuls:
    return params
  dt = _DTYPES[config.matmul_dtype]
  return jax.tree.map(lambda x: x.astype(dt) if x.ndim >= 2 else x, params)


def init_cache(config: DecoderConfig, batch: int, max_len: int, dtype=None) -> dict:
  """Zeroed KV cache {"k", "v"}: [num_layers, batch, num_kv_heads, max_len, head_dim]."""
  shape = (config.num_layers, batch, config.num_kv_heads, max_len, config.head_dim)
  dtype = dtype or config.compute_dtype
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def positions_from_mask(mask: jax.Array) -> jax.Array:
  """[B, L] validity mask -> [B, L] int32 positions counting valid tokens only (pads get 0)."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)


def flops_per_token(config: DecoderConfig, context_len: int = 0, training: bool = False) -> float:
  """Matmul FLOPs per token: forward = 2 N + 4 layers * context_len * H * hd.

  N = weights used in matmuls (projections, MLP, LM head; the embedding lookup is free).
  The second term is q k^T and p v against `context_len` keys (PaLM's convention, not halved for
  causality). Training (forward + backward) is 3x forward.
  """
  d, hd = config.hidden_size, config.head_dim
  attn = d * config.num_heads * hd * 2 + d * config.num_kv_heads * hd * 2  # q, o ; k, v
  mlp = 3 * d * config.intermediate_size
  n = config.num_layers * (attn + mlp) + d * config.vocab_size
  fwd = 2.0 * n + 4.0 * config.num_layers * context_len * config.num_heads * hd
  return 3.0 * fwd if training else fwd


class RMSNorm(nn.Module):
  eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)  # the mean square overflows/underflows in bf16
    y = x32 * lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return y.astype(self.dtype) * scale.astype(self.dtype)  # HF: weight * y.to(input_dtype)


def rope_frequencies(config: DecoderConfig) -> np.ndarray:
  """f_j = theta^(-2j/hd) [hd/2] fp32; with rope_scaling="llama3", by wavelength w = 2 pi / f:
  w < L/high: kept; w > L/low: f / factor; between: (1 - s) f / factor + s f with
  s = (L / w - low) / (high - low), L = rope_original_max_position (HF `_compute_llama3_parameters`)."""
  c, hd = config, config.head_dim
  inv_freq = (1.0 / c.rope_theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd)).astype(np.float32)
  if c.rope_scaling == "none":
    return inv_freq
  old, low, high = c.rope_original_max_position, c.rope_low_freq_factor, c.rope_high_freq_factor
  wavelen = 2 * np.pi / inv_freq
  scaled = np.where(wavelen > old / low, inv_freq / c.rope_factor, inv_freq)
  smooth = (old / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / c.rope_factor + smooth * scaled
  medium = (wavelen >= old / high) & (wavelen <= old / low)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq) -> jax.Array:
  """RoPE on x [B, L, N, hd] at positions [B, L] with frequencies inv_freq [hd/2]
  (`rope_frequencies`), HF rotate_half layout; angles in fp32 (positions up to thousands times
  frequencies need more than bf16's 8 mantissa bits)."""
  inv_freq = jnp.asarray(inv_freq, jnp.float32)
  ang = positions.astype(jnp.float32)[..., None] * inv_freq                   # [B, L, hd/2]
  cos, sin = jnp.cos(ang)[:, :, None, :], jnp.sin(ang)[:, :, None, :]        # [B, L, 1, hd/2]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def _write(buf: jax.Array, new: jax.Array, layer: int, index: jax.Array) -> jax.Array:
  """buf [layers, B, K, S, hd] <- new [B, K, L, hd] at (layer, :, :, index); index scalar or [B]."""
  new = new.astype(buf.dtype)
  if index.ndim == 0:
    return lax.dynamic_update_slice(buf, new[None], (layer, 0, 0, index, 0))
  # one scatter straight into the buffer (updated in place inside a loop), not a per-row copy of
  # the layer's cache: b, k, slot indices broadcast to [B, K, L]
  b, k, l = new.shape[:3]
  slots = index[:, None, None] + jnp.arange(l)[None, None, :]
  return buf.at[layer, jnp.arange(b)[:, None, None], jnp.arange(k)[None, :, None], slots].set(new)


class Attention(nn.Module):
  config: DecoderConfig

  def setup(self):
    c = self.config
    dense = c.dense
    self.q_proj = dense(c.num_heads * c.head_dim, "q_proj", c.qkv_bias)
    self.k_proj = dense(c.num_kv_heads * c.head_dim, "k_proj", c.qkv_bias)
    self.v_proj = dense(c.num_kv_heads * c.head_dim, "v_proj", c.qkv_bias)
    self.o_proj = dense(c.hidden_size, "o_proj")

  def __call__(self, x, positions, mask, cache, cache_index, layer):
    c = self.config
    b, l, _ = x.shape
    kh, hd = c.num_kv_heads, c.head_dim
    g = c.num_heads // kh
    freqs = rope_frequencies(c)
    q = apply_rope(self.q_proj(x).reshape(b, l, c.num_heads, hd), positions, freqs)
    k = apply_rope(self.k_proj(x).reshape(b, l, kh, hd), positions, freqs)
    k = k.transpose(0, 2, 1, 3)                                        # [B, K, L, hd]
    v = self.v_proj(x).reshape(b, l, kh, hd).transpose(0, 2, 1, 3)     # [B, K, L, hd]
    if cache is None or "k" not in cache:   # no row cache (at most a fixed shared prefix)
      q_slot = jnp.broadcast_to(jnp.arange(l), (b, l))                 # [B, L]
    else:
      index = jnp.asarray(cache_index, jnp.int32)
      cache = dict(cache, k=_write(cache["k"], k, layer, index),
                   v=_write(cache["v"], v, layer, index))
      k, v = cache["k"][layer], cache["v"][layer]                      # [B, K, S, hd]
      q_slot = jnp.reshape(index, (-1, 1)) + jnp.arange(l)             # [B or 1, L]
    s = k.shape[2]
    allowed = jnp.arange(s)[None, None, :] <= q_slot[:, :, None]       # causal, [B, L, S]
    if mask is not None:   # [B, S] valid key slots, or [B, L, S] per query (packed scoring)
      allowed = allowed & (mask[:, None, :] if mask.ndim == 2 else mask).astype(bool)
    allowed = jnp.broadcast_to(allowed[:, None, None], (b, 1, g, l, s)).reshape(b, 1, g * l, s)
    # The G query heads sharing a K/V head are stacked as rows: [B, K, G*L, hd], so both
    # products are plain batched matmuls over (B, K) with the cache in its stored layout.
    q = q.reshape(b, l, kh, g, hd).transpose(0, 2, 3, 1, 4).reshape(b, kh, g * l, hd)
    scores = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32)
    scores = jnp.where(allowed, scores / jnp.sqrt(jnp.float32(hd)), _MASKED)
    shared = cache is not None and "prefix_k" in cache
    if shared:  # the shared prefix: one [K, B*G*L, hd] x [K, hd, P0] product, always allowed
      pk, pv = cache["prefix_k"][layer], cache["prefix_v"][layer]     # [K, P0, hd]
      sp = jnp.einsum("bkqd,ksd->bkqs", q, pk, preferred_element_type=jnp.float32)
      scores = jnp.concatenate([sp / jnp.sqrt(jnp.float32(hd)), scores], -1)  # [B, K, G*L, P0+S]
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)            # fp32 softmax
    if shared:
      p0 = pk.shape[1]
      out = (jnp.einsum("bkqs,ksd->bkqd", probs[..., :p0], pv)
             + jnp.einsum("bkqs,bksd->bkqd", probs[..., p0:], v))      # [B, K, G*L, hd]
    else:
      out = jnp.einsum("bkqs,bksd->bkqd", probs, v)                    # [B, K, G*L, hd]
    out = out.reshape(b, kh, g, l, hd).transpose(0, 3, 1, 2, 4).reshape(b, l, c.num_heads * hd)
    return self.o_proj(out.astype(c.compute_dtype)), cache


class Mlp(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    dense = c.dense
    return dense(c.hidden_size, "down_proj")(nn.silu(dense(c.intermediate_size, "gate_proj")(x))
                                             * dense(c.intermediate_size, "up_proj")(x))


class Block(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x, positions, mask, cache, cache_index, layer):
    c = self.config
    h, cache = Attention(c, name="self_attn")(
        RMSNorm(c.rms_norm_eps, c.compute_dtype, name="input_layernorm")(x),
        positions, mask, cache, cache_index, layer)
    x = x + h
    x = x + Mlp(c, name="mlp")(RMSNorm(c.rms_norm_eps, c.compute_dtype, name="post_attention_layernorm")(x))
    return x, cache


class Decoder(nn.Module):
  """Causal LM. `__call__` -> (logits [B, L, V] fp32, new_cache or None).

  tokens, positions: [B, L] int. attention_mask: [B, S] validity of every key slot (S = L without
  a cache, S = cache length with one), or [B, L, S] per query (and-ed with causality); None = all
  valid. cache: `init_cache(...)` pytree (+ optional shared-prefix entries), or the shared-prefix
  entries alone (nothing written, no cache_index; module docstring);
  cache_index: slot of tokens[:, 0], an int scalar (all rows) or [B] (per row).
  Outputs at pad positions are finite but meaningless (a pad query may attend to nothing).
  """
  config: DecoderConfig

  def setup(self):
    c = self.config
    self.embed_tokens = nn.Embed(c.vocab_size, c.hidden_size, dtype=c.compute_dtype,
                                 param_dtype=jnp.float32,
                                 embedding_init=nn.initializers.normal(0.02))
    block = remat.wrap(Block, c.remat, c.remat_policy, static_argnums=(6,))  # layer: an index
    self.layers = [block(c, name=f"layers_{i}") for i in range(c.num_layers)]
    self.norm = RMSNorm(c.rms_norm_eps, c.compute_dtype)
    if not c.tie_embeddings:
      self.lm_head = (c.dense(c.vocab_size, "lm_head") if c.mixed_matmuls else
                      nn.Dense(c.vocab_size, use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32))

  def __call__(self, tokens, positions, *, attention_mask=None, cache=None, cache_index=None):
    h, cache = self.hidden_states(tokens, positions, attention_mask=attention_mask, cache=cache,
                                  cache_index=cache_index)
    return self.head(h), cache

  def hidden_states(self, tokens, positions, *, attention_mask=None, cache=None, cache_index=None):
    """Final-norm hidden states [B, L, D] (compute dtype) and the new cache."""
    if cache is not None and "k" in cache and cache_index is None:
      raise ValueError("a cache needs cache_index (the slot of tokens[:, 0])")
    if self.config.mixed_matmuls:   # a gather of the rows, not a conversion of the whole table
      x = jnp.take(self.embed_tokens.embedding, tokens.astype(jnp.int32), axis=0)
      x = x.astype(self.config.compute_dtype)
    else:
      x = self.embed_tokens(tokens.astype(jnp.int32))
    if (self.config.remat == remat.SCAN and (cache is None or "k" not in cache)
        and not self.is_initializing()):
      x = self._scanned_blocks(x, positions, attention_mask, cache)
    else:
      for i, layer in enumerate(self.layers):
        x, cache = layer(x, positions, attention_mask, cache, cache_index, i)
    return self.norm(x), cache

  def _scanned_blocks(self, x, positions, attention_mask, prefix=None):
    """remat "scan": the blocks as one `lax.scan` over their params stacked [layers, ...], each
    iteration rematerialised with remat_policy. The backward pass is a loop too, recomputing one
    block per iteration, so only the [B, L, D] input of each block stays live — what per_layer
    promises but XLA:CPU's scheduler undoes in the unrolled loop. Same params (stacked here, per
    step; their gradients unstack), same maths as the loop. prefix: None, or the shared-prefix
    cache entries {"prefix_k", "prefix_v"} [layers, K, P0, hd], scanned beside the params (each
    block sees its layer's [1, K, P0, hd] as layer 0)."""
    c = self.config
    stacked = jax.tree.map(lambda *w: jnp.stack(w),
                           *[layer.variables["params"] for layer in self.layers])
    block = Block(c, parent=None)

    def one_block(h, layer):    # h [B, L, D]; layer: (params, its prefix keys/values or None)
      params, kv = layer
      cache = None if kv is None else {"prefix_k": kv[0][None], "prefix_v": kv[1][None]}
      return block.apply({"params": params}, h, positions, attention_mask, cache, None, 0)[0], None

    one_block = jax.checkpoint(one_block, policy=getattr(jax.checkpoint_policies, c.remat_policy))
    kv = None if prefix is None else (prefix["prefix_k"], prefix["prefix_v"])
    return jax.lax.scan(one_block, x, (stacked, kv))[0]

  def head(self, h):
    """LM head in fp32: logits feed log-softmax, whose differences (DPO, votes) need the digits."""
    if self.config.mixed_matmuls:
      if self.config.tie_embeddings:
        dt = _DTYPES[self.config.matmul_dtype]
        return jnp.einsum("...d,vd->...v", h.astype(dt), self.embed_tokens.embedding.astype(dt),
                          preferred_element_type=jnp.float32)
      return self.lm_head(h)
    h = h.astype(jnp.float32)
    if self.config.tie_embeddings:
      return jnp.einsum("...d,vd->...v", h, self.embed_tokens.embedding.astype(jnp.float32))
    return self.lm_head(h)


def init_params(config: DecoderConfig, rng: jax.Array) -> dict:
  """Random params (the inner dict: apply with {"params": params})."""
  tokens = jnp.zeros((1, 2), jnp.int32)
  return Decoder(config).init(rng, tokens, jnp.zeros_like(tokens))["params"]
