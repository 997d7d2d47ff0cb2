"""Large-teacher import (`convert/hf_sharded.py`): Llama-3 and Qwen2/2.5 checkpoints saved by
transformers in several safetensors files, read slice by slice onto a mesh, give PyTorch's
logits; the host never holds more than one tensor; on 8 host devices every parameter lands on
its rule's sharding with the right values."""

import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import torch
import transformers

from conftest import REPO
from rd_jax.convert import hf_decoder, hf_sharded
from rd_jax.models import decoder
from rd_jax.parallel import mesh as mesh_lib, sharding

BASE = dict(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
            intermediate_size=48, rms_norm_eps=1e-6, max_position=256)
# head_dim 8, theta 1e4: wavelengths 6.3, 63, 628, 6283 -> with original 64, low 1, high 4 the
# llama3 rule keeps the first, smooths the second and divides the last two by the factor.
LLAMA3 = decoder.DecoderConfig(**BASE, rope_theta=1e4, tie_embeddings=False, rope_scaling="llama3",
                               rope_factor=8.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                               rope_original_max_position=64)
CONFIGS = {
    "llama3_untied": LLAMA3,
    "qwen2_tied": decoder.DecoderConfig(**BASE, rope_theta=1e6, tie_embeddings=True, qkv_bias=True),
    "qwen2_untied": decoder.DecoderConfig(**BASE, rope_theta=1e6, tie_embeddings=False, qkv_bias=True),
}


def save_random(config, folder, seed=0):
  """A transformers model with every weight random (biases and norm scales too), saved in
  several safetensors files plus model.safetensors.index.json."""
  torch.manual_seed(seed)
  hf = hf_decoder.hf_config(config, attn_implementation="eager")
  model = transformers.AutoModelForCausalLM.from_config(hf).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.3)
  model.save_pretrained(folder, max_shard_size="20KB")
  assert len([f for f in os.listdir(folder) if f.endswith(".safetensors")]) > 2
  assert os.path.exists(os.path.join(folder, hf_sharded.INDEX))
  return model


def shardings_on(mesh):
  rules = tuple(decoder.DECODER_SHARDING_RULES) + ((r".*", None),)
  return lambda c: sharding.tree_shardings(
      jax.eval_shape(lambda: decoder.init_params(c, jax.random.PRNGKey(0))), rules, mesh)


def one_device_mesh():
  return mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)),
                            jax.devices()[:1])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_transformers(name, tmp_path):
  model = save_random(CONFIGS[name], str(tmp_path))
  config, params = hf_sharded.load_sharded(str(tmp_path), shardings_on(one_device_mesh()))
  assert config == CONFIGS[name]  # config.json -> DecoderConfig, every field
  assert ("lm_head" in params) == (not config.tie_embeddings)
  assert ("bias" in params["layers_1"]["self_attn"]["k_proj"]) == config.qkv_bias
  tokens = np.random.RandomState(0).randint(0, config.vocab_size, (2, 150))  # past original 64
  with torch.no_grad():
    want = model(torch.tensor(tokens)).logits.numpy()
  pos = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  got, _ = decoder.Decoder(config).apply({"params": params}, tokens, pos)
  assert np.abs(np.asarray(got) - want).max() <= 1e-4, np.abs(np.asarray(got) - want).max()


def test_llama3_rope_scaling_changes_frequencies():
  plain = decoder.rope_frequencies(decoder.DecoderConfig(**BASE, rope_theta=1e4))
  scaled = decoder.rope_frequencies(LLAMA3)
  assert scaled[0] == plain[0]                                    # short wavelength: kept
  assert plain[1] / 8 < scaled[1] < plain[1]                      # medium: smoothed
  np.testing.assert_allclose(scaled[2:], plain[2:] / 8, rtol=1e-6)  # long: divided by factor


def test_refuses_what_it_cannot_run():
  hf = hf_decoder.hf_config(CONFIGS["qwen2_tied"]).to_dict()
  with pytest.raises(ValueError, match="use_sliding_window"):
    hf_decoder.config_from_hf(dict(hf, use_sliding_window=True))
  with pytest.raises(ValueError, match="rope type 'yarn'"):
    hf_decoder.config_from_hf(dict(hf, rope_parameters={"rope_type": "yarn", "factor": 4.0}))
  with pytest.raises(ValueError, match="model_type 'mistral'"):
    hf_decoder.config_from_hf(dict(hf, model_type="mistral"))


class _Recorder:
  """Wraps safetensors handles: logs every read (get_slice[...] or get_tensor) with its bytes."""

  def __init__(self, real_open):
    self.real_open, self.events, self.files = real_open, [], set()

  def open(self, path, framework):
    recorder, handle = self, self.real_open(path, framework=framework)
    self.files.add(path)

    class Slice:
      def __init__(self, s):
        self.s = s

      def get_shape(self):
        return self.s.get_shape()

      def __getitem__(self, index):
        x = self.s[index]
        recorder.events.append(("read", x.nbytes))
        return x

    class Handle:
      def __enter__(self):
        handle.__enter__()
        return self

      def __exit__(self, *exc):
        return handle.__exit__(*exc)

      def keys(self):
        return handle.keys()

      def get_slice(self, name):
        return Slice(handle.get_slice(name))

      def get_tensor(self, name):
        x = handle.get_tensor(name)
        recorder.events.append(("read", x.nbytes))
        return x
    return Handle()


def test_host_never_holds_the_whole_model(tmp_path, monkeypatch):
  """Bytes read from the files but not yet turned into a placed parameter never exceed the
  largest single tensor: a loader that read the checkpoint (or a file of it) first and placed
  it afterwards would hold the whole model here, and fail."""
  save_random(CONFIGS["qwen2_untied"], str(tmp_path))
  recorder = _Recorder(hf_sharded.safe_open)
  monkeypatch.setattr(hf_sharded, "safe_open", recorder.open)
  real_make = jax.make_array_from_callback

  def make(*args, **kwargs):
    out = real_make(*args, **kwargs)
    recorder.events.append(("placed", 0))
    return out
  monkeypatch.setattr(jax, "make_array_from_callback", make)
  config, params = hf_sharded.load_sharded(str(tmp_path), shardings_on(one_device_mesh()))

  sizes = [4 * int(np.prod(x.shape)) for x in jax.tree.leaves(params)]  # the files hold fp32
  pending, peak = 0, 0
  for kind, nbytes in recorder.events:
    pending = 0 if kind == "placed" else pending + nbytes
    peak = max(peak, pending)
  assert sum(n for k, n in recorder.events if k == "read") == sum(sizes)  # each byte read once
  assert peak == max(sizes) < sum(sizes) / 4, (peak, max(sizes), sum(sizes))
  assert len(recorder.files) > 2


_SHARDED_CHECK = """
import json, sys, jax, numpy as np
sys.path.insert(0, sys.argv[2])
from test_hf_sharded import shardings_on
import ml_collections
from rd_jax.convert import hf_decoder, hf_sharded
from rd_jax.parallel import mesh as mesh_lib
mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=2)))
shard_fn = shardings_on(mesh)
config, params = hf_sharded.load_sharded(sys.argv[1], shard_fn)
host = hf_decoder.from_hf_state_dict(config, hf_decoder._read_safetensors(sys.argv[1]))  # all on host
want = shard_fn(config)
same_sharding = jax.tree.leaves(jax.tree.map(lambda a, s: a.sharding == s, params, want))
diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), params, host)))
specs = [str(a.sharding.spec) for a in jax.tree.leaves(params)]
print(json.dumps({"devices": jax.device_count(), "same_sharding": all(same_sharding),
                  "max_diff": diff, "specs": specs}))
"""


def test_sharded_placement_on_8_devices(tmp_path):
  save_random(CONFIGS["llama3_untied"], str(tmp_path))
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
  r = subprocess.run([sys.executable, "-c", _SHARDED_CHECK, str(tmp_path), str(REPO / "tests")],
                     cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["devices"] == 8 and out["same_sharding"] and out["max_diff"] == 0.0
  assert any("fsdp" in s and "tensor" in s for s in out["specs"]), out["specs"]
