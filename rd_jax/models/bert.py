"""BERT encoder + sequence-classification head in Flax linen (the CRSD student).

Numerically the same model as Hugging Face `BertForSequenceClassification` (post-LN, exact erf
GELU, pooler = dense + tanh on [CLS], then dropout and a Dense classifier), so weights convert
both ways with `rd_jax.convert.hf_bert` and exports score identically in PyTorch.

Parameter tree (params are always fp32; `BertConfig.dtype` is the compute dtype):
  embeddings/{word,position,token_type}_embeddings/embedding   [V|P|T, D]
  embeddings/layer_norm/{scale,bias}                            [D]
  encoder/layer_{i}/attention/{query,key,value,output}/{kernel [D, D], bias [D]}
  encoder/layer_{i}/attention/layer_norm/{scale,bias}           [D]
  encoder/layer_{i}/mlp/intermediate/{kernel [D, I], bias [I]}
  encoder/layer_{i}/mlp/output/{kernel [I, D], bias [D]}
  encoder/layer_{i}/mlp/layer_norm/{scale,bias}                 [D]
  pooler/{kernel [D, D], bias [D]}
  classifier/{kernel [D, C], bias [C]}
  crsd_projection/{hidden [D, D], output [D, P]}                (only when projection_dim > 0)
  wide/{token_class [V, K], mean [F], scale [F], kernel [F, C], bias [C]}  (only with wide_features;
                                                                 models/overlap.py: F, K = 9, 4 or 12, 5)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rd_jax.models import overlap, remat

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_INIT = nn.initializers.normal(stddev=0.02)  # BERT's initializer_range
POOLINGS = ("cls", "mean")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Sizes of a BERT classifier. `dtype` is the compute dtype; parameters are always fp32."""
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_position: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  dropout: float = 0.1            # hidden states: embeddings, each block's output, the pooler
  # on the attention probabilities [B, H, L, L] (HF attention_probs_dropout_prob): at L = 192 the
  # largest tensor dropped per layer (H·L / D = 6x the hidden states); its cost on CPU is in
  # README "Choices" (student.attention_dropout)
  attention_dropout: float = 0.1
  num_labels: int = 4
  dtype: str = "float32"
  projection_dim: int = 0  # >0: CRSD projection head on [CLS] (training only, never exported)
  remat: str = "none"      # none | per_layer (models/remat.py); params identical either way
  remat_policy: str = "nothing_saveable"  # a jax.checkpoint_policies name, used by per_layer
  # What the pooler reads: "cls" = the last hidden state of token 0 (HF BertForSequenceClassification);
  # "mean" = the mean of the last hidden states over the row's real tokens (sentence-transformers'
  # pooling, what all-MiniLM-L6-v2 was trained with). Ours; student.pooling.
  pooling: str = "cls"
  # A linear term on query-item overlap features computed from the input ids, added to the
  # logits (models/overlap.py; its parameters are fitted after training, student/wide_head.py).
  # Ours; student.wide_features: "" (none) or a feature set of models/overlap.FEATURE_SETS
  # ("overlap", "overlap_accessory"); True / False in a meta.json written before session 33 read
  # as "overlap" / "".
  wide_features: str = ""
  # the wide term's item is segment B after the match hint (a student with student.match_hint)
  wide_after_hint: bool = False

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
    if self.dtype not in _DTYPES:
      raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(_DTYPES)}")
    remat.check(self.remat, self.remat_policy)
    if self.pooling not in POOLINGS:
      raise ValueError(f"pooling {self.pooling!r} is not one of {POOLINGS}")
    if isinstance(self.wide_features, bool):   # the session-32 form: one feature set existed
      object.__setattr__(self, "wide_features", "overlap" if self.wide_features else "")
    if self.wide_features:
      overlap.feature_shape(self.wide_features)   # a ValueError naming the known sets

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "BertConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"BertConfig has no field(s) {unknown}; known: {sorted(names)}")
    missing = sorted(f.name for f in dataclasses.fields(cls)
                     if f.default is dataclasses.MISSING and f.name not in d)
    if missing:
      raise ValueError(f"BertConfig dict lacks required field(s) {missing}")
    return cls(**d)


def _dense(features: int, dtype, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=_INIT, name=name)


def _layer_norm(config: BertConfig, dtype, name: str) -> nn.LayerNorm:
  # use_fast_variance=False: var = E[(x - mean)^2], as PyTorch computes it (parity at 1e-5).
  return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=dtype, param_dtype=jnp.float32,
                      use_fast_variance=False, name=name)


class BertEmbeddings(nn.Module):
  """e = LayerNorm(word[ids] + position[pos] + token_type[tt]) -> dropout.   [B, L, D]"""
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool):
    c, dtype = self.config, _DTYPES[self.config.dtype]
    embed = lambda n, name: nn.Embed(n, c.hidden_size, embedding_init=_INIT, name=name)
    x = (embed(c.vocab_size, "word_embeddings")(input_ids)
         + embed(c.max_position, "position_embeddings")(position_ids)
         + embed(c.type_vocab_size, "token_type_embeddings")(token_type_ids))  # [B, L, D] fp32
    x = _layer_norm(c, dtype, "layer_norm")(x)
    return nn.Dropout(c.dropout)(x, deterministic=deterministic)


class BertAttention(nn.Module):
  """Post-LN multi-head self-attention block: LayerNorm(x + Wo · softmax(QKᵀ/√d + bias) V)."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, mask_bias, deterministic: bool):
    c, dtype = self.config, _DTYPES[self.config.dtype]
    b, l, _ = x.shape
    heads = lambda name: _dense(c.hidden_size, dtype, name)(x).reshape(b, l, c.num_heads, c.head_dim)
    q, k, v = heads("query"), heads("key"), heads("value")                    # [B, L, H, Dh]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)          # [B, H, L, L]
    # Softmax in fp32: bf16 logits lose the small differences that the attention pattern is made of.
    probs = jax.nn.softmax(scores * c.head_dim ** -0.5 + mask_bias, axis=-1)
    probs = nn.Dropout(c.attention_dropout)(probs, deterministic=deterministic).astype(dtype)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, l, c.hidden_size)  # [B, L, D]
    out = nn.Dropout(c.dropout)(_dense(c.hidden_size, dtype, "output")(context),
                                deterministic=deterministic)
    return _layer_norm(c, dtype, "layer_norm")(x + out)


class BertMlp(nn.Module):
  """Post-LN feed-forward block: LayerNorm(x + W2 · gelu_erf(W1 x)).   [B, L, D] -> [B, L, D]"""
  config: BertConfig

  @nn.compact
  def __call__(self, x, deterministic: bool):
    c, dtype = self.config, _DTYPES[self.config.dtype]
    h = nn.gelu(_dense(c.intermediate_size, dtype, "intermediate")(x), approximate=False)  # [B, L, I]
    out = nn.Dropout(c.dropout)(_dense(c.hidden_size, dtype, "output")(h), deterministic=deterministic)
    return _layer_norm(c, dtype, "layer_norm")(x + out)


class BertLayer(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x, mask_bias, deterministic: bool):
    x = BertAttention(self.config, name="attention")(x, mask_bias, deterministic)
    return BertMlp(self.config, name="mlp")(x, deterministic)


class BertEncoder(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x, mask_bias, deterministic: bool):
    c = self.config
    layer_cls = remat.wrap(BertLayer, c.remat, c.remat_policy, static_argnums=(3,))  # deterministic
    for i in range(c.num_layers):
      x = layer_cls(c, name=f"layer_{i}")(x, mask_bias, deterministic)
    return x


def attention_bias(attention_mask) -> jax.Array:
  """0 where attention is allowed, a large negative number where not.   -> [B, 1, Lq|1, Lk] fp32

  attention_mask: [B, L] (1 = real token, 0 = padding) or [B, L, L] (query x key; block-diagonal for
  packed rows). A finite minimum (not -inf) keeps fully masked padding queries free of NaNs.
  """
  mask = jnp.asarray(attention_mask)
  if mask.ndim == 2:
    mask = mask[:, None, None, :]  # [B, 1, 1, L]: every query sees the same keys
  elif mask.ndim == 3:
    mask = mask[:, None, :, :]  # [B, 1, L, L]
  else:
    raise ValueError(f"attention_mask must be [B, L] or [B, L, L], got shape {mask.shape}")
  return jnp.where(mask > 0, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """Mean of the last hidden states over each row's real tokens.   hidden [B, L, D], mask [B, L] -> [B, D]

  Padding (mask 0) contributes nothing, so a row's vector does not depend on how far it is padded.
  """
  m = jnp.asarray(attention_mask).astype(jnp.float32)[..., None]             # [B, L, 1]
  total = jnp.sum(hidden.astype(jnp.float32) * m, axis=1)                     # [B, D]
  return total / jnp.maximum(jnp.sum(m, axis=1), 1.0)


class BertClassifier(nn.Module):
  """BERT encoder -> [CLS] (or the mean of the tokens) -> pooler -> dropout -> classifier; with
  pooling "cls" exactly HF BertForSequenceClassification.

  Returns a dict (all fp32):
    logits [B, C], cls [B, D] (what the pooler reads: the last hidden state of token 0, or with
    pooling "mean" the masked mean of the last hidden states), pooled [B, D] (tanh(W_p cls + b_p)),
    hidden [B, L, D] (last hidden states), proj [B, P] (only when projection_dim > 0).
  cls_positions [B, S] (optional): read S [CLS] positions per row (packed rows) instead of token 0;
    cls, pooled, logits and proj then gain a segment axis: [B, S, ...].
  """
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids, *, position_ids=None,
               cls_positions=None, deterministic: bool = True) -> dict[str, jax.Array]:
    c, dtype = self.config, _DTYPES[self.config.dtype]
    if position_ids is None:
      position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)  # [B, L]
    x = BertEmbeddings(c, name="embeddings")(input_ids, token_type_ids, position_ids, deterministic)
    hidden = BertEncoder(c, name="encoder")(x, attention_bias(attention_mask), deterministic)
    if c.pooling == "mean":
      if cls_positions is not None or jnp.ndim(attention_mask) != 2:
        raise ValueError("pooling='mean' reads one row per example: packed rows (cls_positions, "
                         "a [B, L, L] attention_mask) need pooling='cls'")
      cls = mean_pool(hidden, attention_mask)                                # [B, D]
    elif cls_positions is None:
      cls = hidden[:, 0]                                                     # [B, D]
    else:
      cls = jnp.take_along_axis(hidden, cls_positions[..., None], axis=1)  # [B, S, D]
    pooled = jnp.tanh(_dense(c.hidden_size, dtype, "pooler")(cls))
    dropped = nn.Dropout(c.dropout)(pooled, deterministic=deterministic)
    logits = _dense(c.num_labels, dtype, "classifier")(dropped)              # [B, (S,) C]
    if c.wide_features:
      if cls_positions is not None or jnp.ndim(attention_mask) != 2:
        raise ValueError("wide_features reads one (query, item) pair per row: packed rows are "
                         "not supported")
      logits = logits.astype(jnp.float32) + WideTerm(c, name="wide")(
          input_ids, token_type_ids, attention_mask)                         # [B, C]
    out = {"logits": logits, "cls": cls, "pooled": pooled, "hidden": hidden}
    if c.projection_dim > 0:
      out["proj"] = ProjectionHead(c, name="crsd_projection")(cls)           # [B, (S,) P]
    return {k: v.astype(jnp.float32) for k, v in out.items()}


class WideTerm(nn.Module):
  """The wide term of models/overlap.py: ((f - mean) / scale) @ kernel + bias, f = the pair's
  overlap features [B, F] from its ids. Initialised as a no-op (kernel and bias 0; token_class 0
  until fitted): the values come from student/wide_head.py, not from the optimiser."""
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids, token_type_ids, attention_mask):
    c = self.config
    f, k = overlap.feature_shape(c.wide_features)
    zeros = nn.initializers.zeros
    wide = {"token_class": self.param("token_class", zeros, (c.vocab_size, k), jnp.float32),
            "mean": self.param("mean", zeros, (f,), jnp.float32),
            "scale": self.param("scale", nn.initializers.ones, (f,), jnp.float32),
            "kernel": self.param("kernel", zeros, (f, c.num_labels), jnp.float32),
            "bias": self.param("bias", zeros, (c.num_labels,), jnp.float32)}
    return overlap.wide_logits(wide, input_ids, token_type_ids, attention_mask, c.wide_after_hint)


class ProjectionHead(nn.Module):
  """CRSD contrastive head on [CLS]: W2 · tanh(W1 cls).   [..., D] -> [..., P]"""
  config: BertConfig

  @nn.compact
  def __call__(self, cls):
    c, dtype = self.config, _DTYPES[self.config.dtype]
    return _dense(c.projection_dim, dtype, "output")(jnp.tanh(_dense(c.hidden_size, dtype, "hidden")(cls)))


def head_logits(params: dict, cls: jax.Array) -> jax.Array:
  """The classification head as a pure function of [CLS] (no dropout): what BertClassifier does
  after the encoder. cls [B, D] -> logits [B, C] (fp32). Used to measure, per step, how hard each
  loss term pulls on the shared [CLS] vectors (stages/crsd.py, crsd.lambda_scale)."""
  dense = lambda p, x: x @ p["kernel"].astype(jnp.float32) + p["bias"].astype(jnp.float32)
  return dense(params["classifier"], jnp.tanh(dense(params["pooler"], cls.astype(jnp.float32))))


def head_projection(params: dict, cls: jax.Array) -> jax.Array:
  """The CRSD projection head as a pure function: cls [B, D] -> [B, P] (fp32)."""
  p = params["crsd_projection"]
  dense = lambda q, x: x @ q["kernel"].astype(jnp.float32) + q["bias"].astype(jnp.float32)
  return dense(p["output"], jnp.tanh(dense(p["hidden"], cls.astype(jnp.float32))))


def init_params(config: BertConfig, rng: jax.Array) -> dict:
  """Freshly initialised fp32 parameters (BERT init: N(0, 0.02) weights, zero biases, unit LN)."""
  ids = jnp.zeros((1, 8), jnp.int32)
  variables = jax.jit(BertClassifier(config).init)(rng, ids, jnp.ones_like(ids), ids)
  return dict(variables["params"])


def flops_per_example(config: BertConfig, seq_len: int) -> int:
  """Forward-pass matmul FLOPs (2·m·n·k per matmul) for one sequence of `seq_len` tokens.

  Per layer: QKV + output projections 4·2·L·D², scores QKᵀ and probs·V 2·2·L²·D, MLP 2·2·L·D·I.
  Head: pooler 2·D², classifier 2·D·C (+ projection 2·D² + 2·D·P). Embedding lookups,
  LayerNorm, softmax and GELU are not matmuls and are not counted (MFU convention).
  """
  c, l = config, seq_len
  d, i = c.hidden_size, c.intermediate_size
  per_layer = 8 * l * d * d + 4 * l * l * d + 4 * l * d * i
  head = 2 * d * d + 2 * d * c.num_labels
  if c.projection_dim > 0:
    head += 2 * d * d + 2 * d * c.projection_dim
  return c.num_layers * per_layer + head
