"""SFT rows after a shared prompt prefix (teacher/model.shared_prefix_logits, sft.shared_prefix):
the loss and every gradient equal the full rows' (prefix + row) path, for right-padded rows of
different lengths, in fp32; rows whose prefixes differ are not what it computes (the test fails
when the prefix is ignored). Under teacher.remat "scan" the rows run as one scan over the blocks
(the prefix's keys and values scanned beside their params), with the same loss and gradients."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rd_jax.models.decoder import Decoder, DecoderConfig, init_params
from rd_jax.teacher import model as teacher_model

TINY = DecoderConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                     intermediate_size=48, rope_theta=1000.0, rms_norm_eps=1e-6, max_position=64)
PAD = 0


def _rows(prefix, bodies, losses, length):
  """Right-padded {"tokens", "attention_mask", "loss_mask"} [B, length] of the given bodies."""
  b = len(bodies)
  out = {k: np.zeros((b, length), np.int32) for k in ("tokens", "attention_mask", "loss_mask")}
  for i, (body, loss) in enumerate(zip(bodies, losses)):
    seq = list(prefix) + list(body)
    out["tokens"][i, :len(seq)] = seq
    out["attention_mask"][i, :len(seq)] = 1
    out["loss_mask"][i, len(prefix):len(seq)] = loss
  return out


@pytest.mark.parametrize("tied,remat", [(True, "none"), (False, "none"), (False, "scan")])
def test_shared_prefix_loss_and_grads_equal_the_full_rows(tied, remat):
  config = dataclasses.replace(TINY, tie_embeddings=tied, remat=remat)
  params = init_params(config, jax.random.PRNGKey(0))
  noise = lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape)
  params = jax.tree.map(noise, params)                     # no zero biases or unit norms
  rng = np.random.RandomState(0)
  p = 7
  prefix = rng.randint(1, config.vocab_size, p)
  lengths = [9, 5, 12]                                     # row lengths after the prefix
  bodies = [rng.randint(1, config.vocab_size, n) for n in lengths]
  # the first body tokens are prompt (mask 0), the rest response (mask 1), as sft_rows builds them
  losses = [[0] * 2 + [1] * (n - 2) for n in lengths]
  full = _rows(prefix, bodies, losses, p + max(lengths) + 2)
  split = {k: v[:, p:] for k, v in full.items()}
  split["prefix"] = np.tile(prefix, (len(bodies), 1))
  loss_fn = teacher_model.lm_loss(Decoder(config))
  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))   # jitted: op by op takes ~45 s
  (want, want_m), want_g = grad_fn(params, full)
  (got, got_m), got_g = grad_fn(params, split)
  scans = str(jax.make_jaxpr(loss_fn)(params, split)).count(" scan[")
  # the rows' forward is one scan; the one-row prefix pass writes a cache, so it keeps the loop
  assert scans == (1 if remat == "scan" else 0), scans
  assert float(got_m["tokens"]) == float(want_m["tokens"]) == sum(n - 2 for n in lengths)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4,
                                                       atol=2e-6), got_g, want_g)
  # the prefix matters: another prefix gives another loss (the test can fail)
  other = dict(split, prefix=np.tile(rng.randint(1, config.vocab_size, p), (len(bodies), 1)))
  assert abs(float(grad_fn(params, other)[0][0]) - float(want)) > 1e-4
