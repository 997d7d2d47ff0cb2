"""A finished student restored for scoring: shared by eval, calibrate and the experiments."""

from __future__ import annotations

import jax

from rd_jax import checkpoint
from rd_jax.models import bert
from rd_jax.parallel import mesh as mesh_lib


def restore_student(cfg, ckpt: str):
  """(meta, model, params, mesh): the student in `ckpt` restored replicated on cfg.mesh, after
  checking it is a bert student trained with cfg.labels."""
  meta = checkpoint.read_meta(ckpt)
  if meta.get("model") != "bert":
    raise checkpoint.CheckpointError(f"{ckpt!r} holds a {meta.get('model')!r} model; a student "
                                     "(bert) checkpoint is needed here")
  if list(meta["labels"]) != list(cfg.labels):
    raise checkpoint.CheckpointError(f"{ckpt!r} was trained with labels {meta['labels']}, the "
                                     f"config has labels {list(cfg.labels)}")
  mesh_lib.maybe_initialize_distributed(cfg.mesh)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  model_cfg = bert.BertConfig.from_dict(meta["model_config"])
  model = bert.BertClassifier(model_cfg)
  abstract = jax.eval_shape(lambda: bert.init_params(model_cfg, jax.random.PRNGKey(0)))
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=mesh_lib.replicated(mesh)),
      abstract)
  params, _ = checkpoint.load_final(ckpt, abstract, expect_model="bert")
  return meta, model, params, mesh
