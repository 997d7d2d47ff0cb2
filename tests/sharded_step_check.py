"""Run by test_sharding.py in a subprocess with 8 forced host devices (XLA_FLAGS set first).

Builds one tiny CRSD step, runs it on a 1-device mesh and on an 8-device (data, fsdp, tensor)
mesh, and prints JSON with the max differences of loss and params after 2 steps.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from rd_jax.config import default_config  # noqa: E402
from rd_jax.models import bert  # noqa: E402
from rd_jax.parallel import mesh as mesh_lib, sharding  # noqa: E402
from rd_jax.losses.crsd import CrsdLossConfig  # noqa: E402
from rd_jax.stages.crsd import make_loss_fn  # noqa: E402
from rd_jax.train import fit  # noqa: E402


def batch(rng, b, ls, la, vocab, classes):
  def view(length):
    ids = rng.integers(5, vocab, size=(b, length)).astype(np.int32)
    lens = rng.integers(length // 2, length + 1, size=b)
    mask = (np.arange(length)[None] < lens[:, None]).astype(np.int32)
    types = ((np.arange(length)[None] >= lens[:, None] // 2) & (mask > 0)).astype(np.int32)
    return ids * mask, mask, types
  out = {}
  for name, length in (("std", ls), ("aug", la)):
    out[f"{name}_input_ids"], out[f"{name}_attention_mask"], out[f"{name}_token_type_ids"] = view(length)
  out["labels"] = rng.integers(0, classes, size=b).astype(np.int32)
  out["item_key"] = rng.integers(0, 4 * b, size=b).astype(np.int32)
  out["reasoning_key"] = np.arange(b, dtype=np.int32)
  out["weights"] = np.ones(b, np.float32)
  return out


def run(mesh_shape, gather):
  cfg = default_config()
  cfg.crsd.gather_negatives = gather
  model_cfg = bert.BertConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4,
                              intermediate_size=64, max_position=64, num_labels=4, dropout=0.1,
                              projection_dim=16)
  model = bert.BertClassifier(model_cfg)
  mesh_cfg = ml_collections.ConfigDict(dict(data=mesh_shape[0], fsdp=mesh_shape[1],
                                            tensor=mesh_shape[2]))
  n = int(np.prod(mesh_shape))
  mesh = mesh_lib.make_mesh(mesh_cfg, jax.devices()[:n])
  cfg.student.optim.learning_rate, cfg.student.optim.warmup_steps = 1e-3, 2
  params = bert.init_params(model_cfg, jax.random.PRNGKey(0))
  b = 16
  local_block = b // mesh_lib.data_parallel_size(mesh)
  loss_fn = make_loss_fn(model, CrsdLossConfig.from_config(cfg.crsd), use_reasoning=True,
                         local_block=local_block, seed=0)
  state, shardings, step = fit.compile_step(loss_fn, params, cfg.student.optim, 10,
                                            rules=sharding.BERT_RULES, mesh=mesh, with_step=True)
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(2):
    state, m = step(state, mesh_lib.put_batch(batch(rng, b, 16, 32, 128, 4), mesh))
    losses.append(float(m["loss"]))
  specs = sorted({str(s.spec) for s in jax.tree.leaves(shardings["params"])})
  return losses, jax.device_get(state["params"]), specs


if __name__ == "__main__":
  gather = sys.argv[1] == "gather"
  l1, p1, _ = run((1, 1, 1), gather=True)
  l8, p8, specs = run((2, 2, 2), gather=gather)
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)))
  print(json.dumps({"loss_1": l1, "loss_8": l8, "max_param_diff": diff, "specs": specs,
                    "devices": jax.device_count()}))
