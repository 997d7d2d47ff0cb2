"""Orbax checkpoints: the hand-off between stages (`final/`) and the resumable training state.

Layout of a stage's hand-off, `<workdir>/<stage>/final/`:
  params/      Orbax PyTree of parameters only (no optimizer state)
  meta.json    {"model": "bert"|"decoder"|..., "model_config": {...}, "labels": [...],
                "tokenizer": <folder>, "stage": ..., "step": ...}
  COMPLETE     written last; a folder without it is treated as absent (an interrupted write)

On local disk `final/` is written into a temporary sibling and renamed into place, so a reader
never sees a half-written folder. Object storage has no folder rename: there (`gs://`) COMPLETE
is removed first, the folder rewritten in place, and COMPLETE written last, so a reader (which
requires COMPLETE) sees the old hand-off, none, or the new one. A restore takes abstract shapes (and optionally shardings), so a model
trained on a pod restores on one host or another mesh, and a mismatch names the key.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from rd_jax import storage

COMPLETE = "COMPLETE"


class CheckpointError(ValueError):
  """A missing, incomplete or mismatched checkpoint; the message names the path and key."""


def is_complete(directory: str) -> bool:
  return storage.exists(os.path.join(directory, COMPLETE))


def save_final(directory: str, params: Any, meta: dict) -> None:
  """Writes params + meta atomically to `directory` (replacing an older complete one).

  Multi-host: every process writes its shards through Orbax; process 0 alone prepares the
  temporary folder, writes meta.json + COMPLETE and renames; barriers order the three phases.
  """
  directory = storage.abspath(directory)
  in_place = storage.is_remote(directory)   # no folder rename on object storage
  tmp = directory if in_place else directory + ".tmp"
  primary = jax.process_index() == 0
  if primary:
    if in_place:
      storage.remove(os.path.join(directory, COMPLETE))   # first: the old hand-off is gone
    storage.rmtree(tmp)
    storage.makedirs(tmp)
  multihost_utils.sync_global_devices(f"save_final:prepare:{directory}")
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(tmp, "params"), params)
    ckptr.wait_until_finished()
  multihost_utils.sync_global_devices(f"save_final:saved:{directory}")
  if primary:
    storage.write_text_atomic(os.path.join(tmp, "meta.json"),
                              json.dumps(meta, indent=2, sort_keys=True, default=_json_default))
    storage.write_bytes_atomic(os.path.join(tmp, COMPLETE), b"")
    if not in_place:
      storage.rmtree(directory)
      os.replace(tmp, directory)
  multihost_utils.sync_global_devices(f"save_final:done:{directory}")


def read_meta(directory: str) -> dict:
  directory = resolve_final(directory)
  path = os.path.join(directory, "meta.json")
  try:
    return json.loads(storage.read_text(path))
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path}: unreadable or not valid JSON ({e}): the checkpoint is "
                          "corrupt; rerun the stage that wrote it") from e


def resolve_final(path: str) -> str:
  """Accepts a `final/` folder or a stage folder holding one; errors say what is missing."""
  if not path:
    raise CheckpointError("no checkpoint path given")
  path = path.rstrip("/") if storage.is_remote(path) else path
  candidate = path if os.path.basename(os.path.normpath(path)) == "final" else os.path.join(path, "final")
  if not storage.isdir(candidate):
    if storage.isdir(path) and storage.exists(os.path.join(path, "meta.json")):
      candidate = path
    else:
      raise CheckpointError(f"no checkpoint at {path!r}: expected {candidate!r} (a stage's final/ folder)")
  if not is_complete(candidate):
    raise CheckpointError(f"checkpoint {candidate!r} is incomplete (no {COMPLETE} marker): "
                          "the stage that writes it was interrupted; rerun it")
  return candidate


def load_final(path: str, abstract_params: Any = None, expect_model: str | None = None,
               collective: bool = True):
  """Restores (params, meta) from a final/ folder.

  abstract_params: a pytree of jax.ShapeDtypeStruct (with .sharding for a target mesh) or arrays.
    When given, every key and shape must match, else CheckpointError names the first difference.
    When None, params are restored as stored (host numpy -> default device).
  collective: every JAX process calls this together (Orbax's barriers span all processes). False:
    this process alone reads (the export, a process-0 job); its barriers span only itself, so the
    other processes need not be there (with them gone, a collective restore waits forever).
  """
  # Absolute: Orbax's metadata() quietly returns nothing for a relative path.
  directory = storage.abspath(resolve_final(path))
  meta = read_meta(directory)
  if expect_model is not None and meta.get("model") != expect_model:
    raise CheckpointError(f"checkpoint {directory!r} holds a {meta.get('model')!r} model, "
                          f"expected {expect_model!r}")
  params_dir = os.path.join(directory, "params")
  try:
    options = ({} if collective else dict(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=jax.process_index(), active_processes={jax.process_index()})))
    with ocp.StandardCheckpointer(**options) as ckptr:
      if abstract_params is None:
        params = ckptr.restore(params_dir)
      else:
        stored = ckptr.metadata(params_dir)
        stored_tree = getattr(stored, "item_metadata", stored)
        stored_tree = getattr(stored_tree, "tree", stored_tree)
        if stored_tree is None:
          raise CheckpointError(f"{params_dir!r} has no readable parameter metadata")
        check_tree_matches(stored_tree, abstract_params, where=directory)
        params = ckptr.restore(params_dir, abstract_params)
  except CheckpointError:
    raise
  except Exception as e:  # Orbax/TensorStore raise many types; the chained traceback has details
    first_line = str(e).splitlines()[0][:300] if str(e) else ""
    raise CheckpointError(f"cannot restore params from {params_dir!r} ({type(e).__name__}: "
                          f"{first_line}): the checkpoint is corrupt or partial; rerun the stage "
                          "that wrote it") from e
  return params, meta


def check_tree_matches(stored: Any, expected: Any, where: str) -> None:
  """Raises CheckpointError naming the first missing/unexpected key or shape mismatch."""
  flat_s = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(stored)[0]}
  flat_e = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
  missing = sorted(set(flat_e) - set(flat_s))
  extra = sorted(set(flat_s) - set(flat_e))
  if missing:
    raise CheckpointError(f"checkpoint {where!r} lacks key {missing[0]} ({len(missing)} missing)")
  if extra:
    raise CheckpointError(f"checkpoint {where!r} has unexpected key {extra[0]} ({len(extra)} extra): "
                          "was it written for another model config?")
  for key, exp in flat_e.items():
    got = getattr(flat_s[key], "shape", None)
    if got is not None and tuple(got) != tuple(np.shape(exp)):
      raise CheckpointError(f"checkpoint {where!r} key {key}: shape {tuple(got)} != expected "
                            f"{tuple(np.shape(exp))} (model config mismatch)")


def _json_default(o):
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  if hasattr(o, "to_dict"):
    return o.to_dict()
  raise TypeError(f"not JSON serialisable: {type(o)}")
