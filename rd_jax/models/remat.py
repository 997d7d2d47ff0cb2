"""Per-layer rematerialisation (`student.remat`, `teacher.remat`): recompute a layer's
activations in the backward pass instead of keeping them, trading compute for memory.

mode "none" keeps every activation XLA wants for the backward pass; "per_layer" wraps each
BERT layer / decoder block in `nn.remat`, which saves what `policy` allows (a name in
`jax.checkpoint_policies`: "nothing_saveable" keeps only the layer inputs; "dots_saveable" and
"dots_with_no_batch_dims_saveable" also keep matmul outputs, recomputing the cheap elementwise
ops). The wrapped module keeps its name, so the parameter tree — and every checkpoint and
converter — is the same with and without remat. Forward-only calls (eval, generation) are
unaffected.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

MODES = ("none", "per_layer")
# The decoder's third mode: per-layer remat with its blocks run as one `lax.scan` over their
# stacked params wherever no KV cache is used (training, scoring). The backward pass then
# recomputes one block per loop iteration; unrolled (per_layer), XLA:CPU schedules the
# recomputation early and keeps the activations live anyway (README, "Rematerialisation").
SCAN = "scan"
POLICIES = tuple(n for n in dir(jax.checkpoint_policies)
                 if n.endswith("saveable") and not n.startswith("_"))


def check(mode: str, policy: str, modes: tuple[str, ...] = MODES) -> None:
  if mode not in modes:
    raise ValueError(f"remat {mode!r} not one of {modes}")
  if policy not in POLICIES:
    raise ValueError(f"remat_policy {policy!r} not one of {POLICIES}")


def wrap(module_cls, mode: str, policy: str, static_argnums: tuple[int, ...] = ()):
  """`module_cls` itself (mode "none") or its `nn.remat` version with `policy` (per_layer, and
  scan where the layers run in a Python loop).

  static_argnums count `self` as 0 (Python values the layer branches on, e.g. `deterministic`).
  """
  if mode == "none":
    return module_cls
  return nn.remat(module_cls, policy=getattr(jax.checkpoint_policies, policy),
                  static_argnums=static_argnums)


def configure(model_config, section):
  """`model_config` (BertConfig / DecoderConfig) with the remat keys of a config section
  (`cfg.student`, `cfg.teacher`)."""
  return dataclasses.replace(model_config, remat=section.remat, remat_policy=section.remat_policy)
