"""Large teachers without a host copy: a HF safetensors folder read straight onto the mesh.

`load_sharded(folder, shardings_for)` never builds the model on the host. For each parameter
(`hf_decoder.name_map`, in file order) it creates the global array with
`jax.make_array_from_callback` on the parameter's NamedSharding; the callback reads, for each
device this process addresses, only that device's slice of the tensor from the safetensors file
(`safe_open(...).get_slice(name)[rows, cols]`, a read of just those bytes), transposed to Flax's
[in, out] layout and cast to fp32. A slice read for one device is reused by the devices that
hold the same slice (replication), then dropped once the parameter exists. So the host holds at
most one parameter's slices at a time — one tensor, or on a pod one host's shards of it — and
every host of a multi-host run reads only the bytes its own devices need.

Multi-file checkpoints are found through `model.safetensors.index.json` (its `weight_map`), or
by listing the tensors of every `*.safetensors` file (headers only) when there is no index.
A tied model's `lm_head.weight`, if saved, is not read (HF ignores it too).
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
from safetensors import safe_open  # framework="flax": bf16 slices (numpy has no bfloat16)

from rd_jax.convert import hf_decoder
from rd_jax.models import decoder
from rd_jax import errors

INDEX = "model.safetensors.index.json"


def tensor_files(folder: str) -> dict[str, str]:
  """{tensor name: path of the safetensors file holding it}."""
  index = os.path.join(folder, INDEX)
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    return {name: os.path.join(folder, file) for name, file in weight_map.items()}
  where = {}
  for path in hf_decoder._safetensor_files(folder):
    with safe_open(path, framework="flax") as f:  # reads the JSON header only
      for name in f.keys():
        if name in where:
          raise errors.PathError(f"{path}: tensor {name!r} also in {where[name]}")
        where[name] = path
  return where


def _slices_to_key(index: tuple) -> tuple:
  return tuple((s.start, s.stop, s.step) for s in index)


def read_parameter(handle, name: str, transpose: bool, shape: tuple, sharding) -> jax.Array:
  """The Flax parameter `shape` (HF tensor `name`, transposed if `transpose`) as a global array
  on `sharding`, read slice by slice for this process's devices."""
  source = handle.get_slice(name)
  hf_shape = tuple(source.get_shape())
  want = tuple(reversed(shape)) if transpose else tuple(shape)
  if hf_shape != want:
    raise ValueError(f"{name}: shape {hf_shape} in the checkpoint, the config needs {want}")
  read = {}

  def callback(index):  # index: one slice per Flax dimension, for one device
    key = _slices_to_key(index)
    if key not in read:
      x = source[tuple(reversed(index)) if transpose else tuple(index)]  # only these bytes
      read[key] = (x.T if transpose else x).astype(jnp.float32)
    return read[key]

  return jax.make_array_from_callback(tuple(shape), sharding, callback)


def load_sharded(folder: str, shardings_for: Callable[[decoder.DecoderConfig], Any]):
  """(DecoderConfig, params): a HF Llama/Qwen2 folder's weights as fp32 global arrays placed on
  `shardings_for(config)` (a pytree of NamedSharding shaped like `decoder.init_params`)."""
  config = hf_decoder.config_from_hf(hf_decoder._read_config(folder))
  shardings = shardings_for(config)
  shapes = jax.eval_shape(lambda: decoder.init_params(config, jax.random.PRNGKey(0)))
  where = tensor_files(folder)
  rows = hf_decoder.name_map(config)
  missing = [h for h, _, _ in rows if h not in where]
  if missing:
    raise KeyError(f"{folder}: checkpoint lacks {missing[0]!r} ({len(missing)} missing)")
  known = {h for h, _, _ in rows} | ({"lm_head.weight"} if config.tie_embeddings else set())
  unused = sorted(n for n in where if n not in known and not hf_decoder._IGNORED.search(n))
  if unused:
    raise KeyError(f"{folder}: {len(unused)} tensor(s) the decoder does not use, e.g. {unused[0]!r}")
  by_file = collections.defaultdict(list)
  for row in rows:
    by_file[where[row[0]]].append(row)
  params = {}
  for path in sorted(by_file):
    with safe_open(path, framework="flax") as handle:
      for hf_name, flax_path, transpose in by_file[path]:
        shape = hf_decoder._get(shapes, flax_path).shape
        hf_decoder._set(params, flax_path, read_parameter(
            handle, hf_name, transpose, shape, hf_decoder._get(shardings, flax_path)))
  return config, params


def load_to_mesh(spec: str, shardings_for: Callable[[decoder.DecoderConfig], Any]):
  """(DecoderConfig, params on `shardings_for(config)`, tokenizer) for a teacher spec: a HF
  folder through `load_sharded` (no host copy); a GGUF (small models only: transformers
  dequantises it whole) through the host and `jax.device_put`."""
  path = hf_decoder.resolve_spec(spec)
  if path.endswith(".gguf"):
    config, host_params, tokenizer = hf_decoder.load_hf_decoder(spec)
    return config, jax.device_put(host_params, shardings_for(config)), tokenizer
  config, params = load_sharded(path, shardings_for)
  return config, params, hf_decoder.resolve_teacher_tokenizer(spec)
