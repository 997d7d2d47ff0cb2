"""Parameter sharding from a short list of (regex, spec) rules, big_vision style.

A rule's spec names, per array dimension, a mesh axis (or None = replicated). The first rule
whose regex `re.search`es the parameter's path ("encoder/layer_0/attention/self/query/kernel")
wins; no match = replicated. The same rules shard the optimizer state, whose paths contain the
parameter paths (".../mu/encoder/layer_0/...") — so Adam moments live where their params do.
A dimension that the named axis does not divide is left replicated (with a log line), so a rule
written for a pod still works on 8 host devices or one.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

Rules = Sequence[tuple[str, tuple]]

# BERT (models/bert.py) kernels are [in, out]. Attention q/k/v and the FFN's first matmul are
# column-parallel (out over "tensor"), their output projections row-parallel (in over "tensor");
# the other dimension goes over "fsdp". Embedding tables shard the hidden dimension.
BERT_RULES: Rules = (
    (r"attention/(query|key|value)/kernel$", ("fsdp", "tensor")),
    (r"mlp/intermediate/kernel$", ("fsdp", "tensor")),
    (r"attention/output/kernel$", ("tensor", "fsdp")),
    (r"mlp/output/kernel$", ("tensor", "fsdp")),
    (r"attention/(query|key|value)/bias$", ("tensor",)),
    (r"mlp/intermediate/bias$", ("tensor",)),
    (r"word_embeddings/embedding$", (None, "fsdp")),
    (r".*", None),
)


def path_str(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def spec_for(path: str, shape: tuple[int, ...], rules: Rules, mesh: Mesh) -> P:
  for pattern, spec in rules:
    if re.search(pattern, path):
      break
  else:
    spec = None
  if spec is None or len(shape) == 0:
    return P()
  if len(spec) != len(shape):  # e.g. an optimizer scalar under a matching path
    return P()
  out = []
  for dim, axis in zip(shape, spec):
    size = mesh.shape[axis] if axis else 1
    if axis and dim % size:
      logging.log_first_n(logging.INFO, "%s: dim %d not divisible by %s=%d, replicated", 10,
                          path, dim, axis, size)
      axis = None
    out.append(axis if size > 1 else None)
  return P(*out)


def tree_shardings(tree: Any, rules: Rules, mesh: Mesh) -> Any:
  """A pytree of NamedSharding matching `tree` (arrays or ShapeDtypeStructs)."""
  def one(path, leaf):
    return NamedSharding(mesh, spec_for(path_str(path), tuple(getattr(leaf, "shape", ())), rules,
                                        mesh))
  return jax.tree_util.tree_map_with_path(one, tree)
