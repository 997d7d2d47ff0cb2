"""bf16 compute with fp32 master weights and fp32 losses (student.dtype=bfloat16)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from rd_jax.config import default_config
from rd_jax.models import bert
from rd_jax.parallel import mesh as mesh_lib, sharding
from rd_jax.losses.crsd import CrsdLossConfig
from rd_jax.stages.crsd import make_loss_fn
from rd_jax.train import fit

import ml_collections


def one_step(dtype):
  cfg = default_config()
  model_cfg = bert.BertConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                              intermediate_size=64, num_labels=4, dropout=0.0, dtype=dtype)
  mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)),
                            jax.devices()[:1])
  cfg.student.optim.learning_rate = 1e-3
  params = bert.init_params(dataclasses.replace(model_cfg, dtype="float32"), jax.random.PRNGKey(0))
  loss_fn = make_loss_fn(bert.BertClassifier(model_cfg), CrsdLossConfig.from_config(cfg.crsd),
                         use_reasoning=True, local_block=8, seed=0)
  state, _, step = fit.compile_step(loss_fn, params, cfg.student.optim, 100,
                                    rules=sharding.BERT_RULES, mesh=mesh, with_step=True)
  rng = np.random.default_rng(0)
  batch = {}
  for view, length in (("std", 12), ("aug", 20)):
    batch[f"{view}_input_ids"] = rng.integers(1, 64, (8, length)).astype(np.int32)
    batch[f"{view}_attention_mask"] = np.ones((8, length), np.int32)
    batch[f"{view}_token_type_ids"] = np.zeros((8, length), np.int32)
  batch.update(labels=rng.integers(0, 4, 8).astype(np.int32), weights=np.ones(8, np.float32),
               item_key=np.arange(8, dtype=np.int32), reasoning_key=np.arange(8, dtype=np.int32))
  new_state, metrics = step(state, jax.tree.map(jnp.asarray, batch))
  return new_state, metrics


def test_bf16_compute_keeps_fp32_master_weights_and_loss():
  s32, m32 = one_step("float32")
  s16, m16 = one_step("bfloat16")
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(s16["params"]))
  assert m16["loss"].dtype == jnp.float32 and np.isfinite(float(m16["loss"]))
  # bf16 has ~3 significant digits: the loss agrees to a couple of percent, not to 1e-6.
  np.testing.assert_allclose(float(m16["loss"]), float(m32["loss"]), rtol=3e-2)
  assert float(m16["loss"]) != float(m32["loss"])   # bf16 really was used
