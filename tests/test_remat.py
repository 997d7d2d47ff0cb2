"""Per-layer remat (`student.remat`, `teacher.remat`): the same parameter tree, the same loss and
the same gradients as without it, and fewer activations kept for the backward pass."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rd_jax.models import bert, decoder, remat

from rd_jax.losses import lm

BERT = bert.BertConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2,
                       intermediate_size=64, dropout=0.1)
DEC = decoder.DecoderConfig(vocab_size=61, hidden_size=32, num_layers=2, num_heads=4,
                            num_kv_heads=2, intermediate_size=48, max_position=64)


def _bert_loss(config):
  ids = jnp.asarray(np.random.RandomState(0).randint(1, 64, (4, 12)), jnp.int32)

  def loss(params):  # dropout on: the recomputed layer must draw the same masks
    out = bert.BertClassifier(config).apply(
        {"params": params}, ids, jnp.ones_like(ids), jnp.zeros_like(ids), deterministic=False,
        rngs={"dropout": jax.random.PRNGKey(1)})
    return jax.nn.log_softmax(out["logits"])[:, 0].mean()
  return loss


def _decoder_loss(config):
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, 61, (3, 10)), jnp.int32)

  def loss(params):
    logits, _ = decoder.Decoder(config).apply({"params": params}, tokens,
                                               jnp.broadcast_to(jnp.arange(10), tokens.shape))
    return lm.token_log_probs(logits[:, :-1], tokens[:, 1:]).mean()
  return loss


CASES = {"bert": (BERT, bert.init_params, _bert_loss), "decoder": (DEC, decoder.init_params, _decoder_loss)}


@pytest.mark.parametrize("model,mode", [("bert", "per_layer"), ("decoder", "per_layer"),
                                        ("decoder", "scan")])
@pytest.mark.parametrize("policy", ["nothing_saveable", "dots_with_no_batch_dims_saveable"])
def test_same_params_loss_and_grads(model, mode, policy):
  config, init, make_loss = CASES[model]
  rematted = dataclasses.replace(config, remat=mode, remat_policy=policy)
  params = init(config, jax.random.PRNGKey(0))
  shapes = lambda c: jax.tree.map(lambda x: x.shape, jax.eval_shape(lambda: init(c, jax.random.PRNGKey(0))))
  assert shapes(rematted) == shapes(config)  # same names and shapes: checkpoints, converters
  (l0, g0), (l1, g1) = (jax.jit(jax.value_and_grad(make_loss(c)))(params) for c in (config, rematted))
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def test_remat_keeps_fewer_activations():
  """The point of remat: the forward pass saves (far) fewer bytes for the backward pass."""
  from rd_jax.bench.remat import residual_bytes
  config = dataclasses.replace(DEC, num_layers=4, hidden_size=64, intermediate_size=256)
  params = decoder.init_params(config, jax.random.PRNGKey(0))
  saved = {mode: residual_bytes(_decoder_loss(dataclasses.replace(config, remat=mode)), params)
           for mode in ("none", "per_layer")}
  assert saved["per_layer"] < saved["none"] / 4, saved


def test_scan_with_padding_and_with_a_cache_is_the_loop():
  """remat "scan" on right-padded rows (the attention mask reaches every scanned block), and a
  cached forward (prefill + one decode step: generation keeps the loop) give the plain
  decoder's outputs."""
  config = dataclasses.replace(DEC, num_layers=3)
  scanned = dataclasses.replace(config, remat="scan")
  params = decoder.init_params(config, jax.random.PRNGKey(0))
  tokens = jnp.asarray(np.random.RandomState(1).randint(0, 61, (3, 10)), jnp.int32)
  mask = jnp.asarray(np.arange(10)[None] < np.array([[10], [7], [4]]), jnp.int32)

  def padded_loss(c):
    def loss(p):
      logits, _ = decoder.Decoder(c).apply({"params": p}, tokens,
                                           decoder.positions_from_mask(mask), attention_mask=mask)
      return jnp.sum(lm.token_log_probs(logits[:, :-1], tokens[:, 1:]) * mask[:, 1:])
    return loss
  (l0, g0), (l1, g1) = (jax.jit(jax.value_and_grad(padded_loss(c)))(params)
                        for c in (config, scanned))
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)

  def cached(c):
    cache = decoder.init_cache(c, 3, 12)
    pos = jnp.broadcast_to(jnp.arange(10), (3, 10))
    first, cache = decoder.Decoder(c).apply({"params": params}, tokens, pos, cache=cache,
                                            cache_index=0)
    step, _ = decoder.Decoder(c).apply({"params": params}, tokens[:, :1], pos[:, :1] + 10,
                                       cache=cache, cache_index=10)
    return first, step
  for a, b in zip(cached(config), cached(scanned)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_scan_lowers_the_compiled_temp_bytes_where_per_layer_does_not_have_to():
  """What scan is for: XLA's scratch for the decoder's training step, compiled on this backend.
  Unrolled per-layer remat leaves it to the scheduler (on CPU it barely moves); the scan's
  backward loop recomputes one block at a time, so its temp bytes fall well below both."""
  from rd_jax.bench.remat import _memory
  config = dataclasses.replace(DEC, num_layers=8, hidden_size=64, num_heads=4, num_kv_heads=2,
                               intermediate_size=256, max_position=128)
  params = decoder.init_params(config, jax.random.PRNGKey(0))
  tokens = jnp.zeros((4, 96), jnp.int32)

  def temp(mode):
    c = dataclasses.replace(config, remat=mode)

    def step(p, t):
      def loss(p):
        logits, _ = decoder.Decoder(c).apply({"params": p}, t,
                                             jnp.broadcast_to(jnp.arange(96), t.shape))
        return lm.token_log_probs(logits[:, :-1], t[:, 1:]).mean()
      return jax.grad(loss)(p)
    return _memory(jax.jit(step), params, tokens)["temp_bytes"]
  got = {mode: temp(mode) for mode in ("none", "per_layer", "scan")}
  assert got["scan"] < 0.5 * min(got["none"], got["per_layer"]), got


def test_bad_values_are_named():
  with pytest.raises(ValueError, match="remat 'every_layer'"):
    dataclasses.replace(BERT, remat="every_layer")
  with pytest.raises(ValueError, match="remat 'scan' not one of"):   # the decoder's alone
    dataclasses.replace(BERT, remat="scan")
  with pytest.raises(ValueError, match="remat_policy 'dots'"):
    dataclasses.replace(DEC, remat="per_layer", remat_policy="dots")
  assert "nothing_saveable" in remat.POLICIES and "dots_saveable" in remat.POLICIES


def test_scan_trains_sharded_over_8_devices_as_on_one():
  """teacher.remat = scan under the teacher's shardings (data 2 x fsdp 2 x tensor 2, forced host
  devices): the stacked per-layer params keep the pod path exact (tests/sharded_teacher_check.py)."""
  import json
  import os
  import subprocess
  import sys
  tests = os.path.dirname(os.path.abspath(__file__))
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(tests), tests])}
  r = subprocess.run([sys.executable, os.path.join(tests, "sharded_teacher_check.py"), "scan"],
                     env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["devices"] == 8 and any("fsdp" in s and "tensor" in s for s in out["specs"])
  np.testing.assert_allclose(out["loss_8"], out["loss_1"], rtol=1e-5)
  assert out["max_param_diff"] < 1e-5
