"""Run by test_remat.py in a subprocess with 8 forced host devices (XLA_FLAGS set first).

Trains a tiny decoder with the teacher's LM loss for 2 steps on a 1-device mesh without remat and
on an 8-device (data 2, fsdp 2, tensor 2) mesh with teacher.remat = argv[1], params sharded by
the teacher's rules, and prints JSON with the losses and the max parameter difference.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import dataclasses  # noqa: E402

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from rd_jax.config import default_config  # noqa: E402
from rd_jax.models import decoder  # noqa: E402
from rd_jax.parallel import mesh as mesh_lib  # noqa: E402
from rd_jax.teacher import model as teacher_model  # noqa: E402
from rd_jax.train import fit  # noqa: E402

CONFIG = decoder.DecoderConfig(vocab_size=96, hidden_size=32, num_layers=3, num_heads=4,
                               num_kv_heads=2, intermediate_size=64, max_position=64)


def run(mesh_shape, remat):
  cfg = default_config()
  config = dataclasses.replace(CONFIG, remat=remat)
  mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(
      data=mesh_shape[0], fsdp=mesh_shape[1], tensor=mesh_shape[2])),
      jax.devices()[:int(np.prod(mesh_shape))])
  cfg.cpt.optim.learning_rate, cfg.cpt.optim.warmup_steps = 1e-3, 1
  params = decoder.init_params(CONFIG, jax.random.PRNGKey(0))
  state, shardings, step = fit.compile_step(
      teacher_model.lm_loss(decoder.Decoder(config)), params, cfg.cpt.optim, 10,
      rules=teacher_model.TEACHER_RULES, mesh=mesh)
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(2):
    lens = rng.integers(8, 17, size=8)
    mask = (np.arange(16)[None] < lens[:, None]).astype(np.int32)
    batch = {"tokens": rng.integers(1, 96, size=(8, 16)).astype(np.int32) * mask,
             "attention_mask": mask, "loss_mask": mask}
    state, m = step(state, mesh_lib.put_batch(batch, mesh))
    losses.append(float(m["loss"]))
  specs = sorted({str(s.spec) for s in jax.tree.leaves(shardings["params"])})
  return losses, jax.device_get(state["params"]), specs


if __name__ == "__main__":
  l1, p1, _ = run((1, 1, 1), "none")
  l8, p8, specs = run((2, 2, 2), sys.argv[1])
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)))
  print(json.dumps({"loss_1": l1, "loss_8": l8, "max_param_diff": diff, "specs": specs,
                    "devices": jax.device_count()}))
