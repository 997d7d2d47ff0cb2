"""The optimiser sections and their schedule: warm-up rules, first update, per-stage sections."""

import numpy as np
import pytest

from rd_jax.config import OPTIM_KEYS, OPTIM_SECTIONS, TRAINING, default_config
from rd_jax import config_check
from rd_jax.train import optim


def _lrs(warmup, total, kind="cosine", peak=1.0):
  schedule = optim.learning_rate_schedule(peak, warmup, total, kind)
  return np.asarray([float(schedule(s)) for s in range(total)])


def test_first_update_is_not_zero_and_warmup_reaches_the_peak():
  lrs = _lrs(warmup=3, total=10)
  np.testing.assert_allclose(lrs[:4], [0.25, 0.5, 0.75, 1.0], rtol=1e-6)   # peak * (s+1)/(W+1)
  assert np.all(np.diff(lrs[3:]) < 0) and lrs[-1] > 0                      # cosine to the end
  np.testing.assert_allclose(_lrs(warmup=0, total=4, kind="constant"), [1.0] * 4)
  linear = _lrs(warmup=0, total=4, kind="linear")
  np.testing.assert_allclose(linear, [1.0, 0.75, 0.5, 0.25], rtol=1e-6)


@pytest.mark.parametrize("warmup,total", [(16, 16), (20, 16), (-1, 16)])
def test_warmup_as_long_as_the_run_is_an_error_naming_the_key(warmup, total):
  with pytest.raises(ValueError, match=r"dpo\.optim\.warmup_steps"):
    optim.learning_rate_schedule(1e-3, warmup, total, "cosine", key="dpo.optim")


def test_unknown_schedule_names_its_key():
  with pytest.raises(ValueError, match=r"sft\.optim\.schedule"):
    optim.learning_rate_schedule(1e-3, 0, 4, "zigzag", key="sft.optim")


def test_each_training_stage_has_its_own_section_with_the_same_keys():
  cfg = default_config()
  assert "optim" not in cfg and "learning_rate" not in cfg.cpt
  for section in OPTIM_SECTIONS:
    assert tuple(sorted(cfg[section].optim)) == tuple(sorted(OPTIM_KEYS)), section


def test_config_check_refuses_a_warmup_as_long_as_the_run(tiny_config):
  cfg = tiny_config()
  cfg.dpo.optim.warmup_steps = cfg.dpo.num_steps
  with pytest.raises(config_check.ConfigError, match=r"dpo\.optim\.warmup_steps .* dpo\.num_steps"):
    config_check.validate(cfg)


def test_shipped_teacher_warmups_are_a_fraction_of_their_runs(demo_like_configs):
  for name, cfg in demo_like_configs.items():
    for section, steps_key in TRAINING.values():
      steps = cfg[steps_key.split(".")[0]][steps_key.split(".")[1]]
      assert cfg[section].optim.warmup_steps <= 0.25 * steps, (name, section)
      first = float(optim.make_optimizer(cfg[section].optim, steps, f"{section}.optim")[1](0))
      assert first > 0, (name, section)


@pytest.fixture
def demo_like_configs():
  from test_config import _load
  return {name: _load(name) for name in ("demo", "demo_pipeline", "pod", "teacher_rules")}


def _student(tiny_config):
  import jax
  from rd_jax.student.model import initial_student
  model_cfg, params, _ = initial_student(tiny_config(), jax.random.PRNGKey(0))
  return model_cfg, params


def test_layer_depths_of_the_student_and_decoder_names(tiny_config):
  import jax
  model_cfg, params = _student(tiny_config)
  depths, num_layers = optim.layer_depths(params)
  flat = {jax.tree_util.keystr(k): d for k, d in jax.tree_util.tree_flatten_with_path(depths)[0]}
  assert num_layers == model_cfg.num_layers >= 2
  for name, d in flat.items():
    if "embeddings" in name:
      assert d == 0, name
    elif f"layer_{num_layers - 1}'" in name:
      assert d == num_layers, name
    elif "layer_0'" in name:
      assert d == 1, name
    elif "encoder" not in name:                         # pooler, classifier: the full rate
      assert d == num_layers + 1, name
  decoder = {"embed_tokens": {"embedding": 0}, "layers_0": {"w": 0}, "layers_1": {"w": 0},
             "norm": {"scale": 0}, "lm_head": {"kernel": 0}}
  d, n = optim.layer_depths(decoder)
  assert n == 2 and d == {"embed_tokens": {"embedding": 0}, "layers_0": {"w": 1},
                          "layers_1": {"w": 2}, "norm": {"scale": 3}, "lm_head": {"kernel": 3}}


def test_layer_decay_scales_each_update_by_decay_to_its_distance_from_the_top(tiny_config):
  """Golden: with decay d, each leaf's AdamW update is d^(L+1-depth) times the undecayed one."""
  import jax
  import jax.numpy as jnp
  _, params = _student(tiny_config)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01) + 0.001 * p, params)
  section = default_config().student.optim
  updates = {}
  for decay in (1.0, 0.5):
    section.layer_decay = decay
    tx, _ = optim.make_optimizer(section, 100, "student.optim")
    updates[decay], _ = tx.update(grads, tx.init(params), params)
  depths, n = optim.layer_depths(params)
  for a, b, d in zip(jax.tree.leaves(updates[1.0]), jax.tree.leaves(updates[0.5]),
                     jax.tree.leaves(depths)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a) * 0.5 ** (n + 1 - d), rtol=1e-6,
                               atol=1e-12)


@pytest.mark.parametrize("layer_decay", [1.0, 0.5])
def test_head_lr_multiplier_scales_only_the_output_head(tiny_config, layer_decay):
  """Golden: with multiplier m the classifier's AdamW updates (weight decay included) are m times
  the unscaled ones and every other leaf's are unchanged, with or without layer decay."""
  import jax
  import jax.numpy as jnp
  _, params = _student(tiny_config)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01) + 0.001 * p, params)
  section = default_config().student.optim
  section.layer_decay = layer_decay
  updates = {}
  for m in (1.0, 10.0):
    section.head_lr_multiplier = m
    tx, _ = optim.make_optimizer(section, 100, "student.optim")
    updates[m], _ = tx.update(grads, tx.init(params), params)
  flat = lambda tree: {jax.tree_util.keystr(k): np.asarray(v)
                       for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  one, ten = flat(updates[1.0]), flat(updates[10.0])
  assert any(name.startswith("['classifier']") for name in one)
  for name in one:
    factor = 10.0 if name.startswith("['classifier']") else 1.0
    assert np.abs(one[name]).max() > 0, name
    np.testing.assert_allclose(ten[name], one[name] * factor, rtol=1e-6, atol=1e-12,
                               err_msg=name)


def test_head_lr_multiplier_on_a_model_without_an_output_head_is_an_error():
  section = default_config().cpt.optim
  section.head_lr_multiplier = 10.0
  tx, _ = optim.make_optimizer(section, 100, "cpt.optim")
  decoder = {"embed_tokens": {"embedding": np.zeros((4, 2), np.float32)},
             "lm_head": {"kernel": np.zeros((2, 4), np.float32)}}
  with pytest.raises(ValueError, match="head_lr_multiplier"):
    tx.init(decoder)


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_head_lr_multiplier_out_of_range_names_its_key(tiny_config, value):
  cfg = tiny_config()
  cfg.student.optim.head_lr_multiplier = value
  with pytest.raises(config_check.ConfigError, match=r"student\.optim\.head_lr_multiplier"):
    config_check.validate(cfg)


@pytest.mark.parametrize("decay", [0.0, 1.5, -0.2])
def test_layer_decay_out_of_range_names_its_key(tiny_config, decay):
  cfg = tiny_config()
  cfg.student.optim.layer_decay = decay
  with pytest.raises(config_check.ConfigError, match=r"student\.optim\.layer_decay"):
    config_check.validate(cfg)


def _trajectory(ema_decay, steps=5):
  """(params after each update, final opt_state) of the student section's AdamW on a toy tree."""
  import jax.numpy as jnp
  import optax
  section = default_config().student.optim
  section.ema_decay, section.warmup_steps = ema_decay, 2
  tx, _ = optim.make_optimizer(section, 20, "student.optim")
  rng = np.random.default_rng(0)
  params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
                      "bias": jnp.zeros(2, jnp.float32)}}
  state, seen = tx.init(params), []
  for _ in range(steps):
    grads = {"dense": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
                       "bias": jnp.asarray(rng.normal(size=2), jnp.float32)}}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    seen.append(params)
  return seen, state


def test_weight_average_is_the_debiased_ema_of_the_updated_parameters():
  """Golden (NumPy): m_T / w_T = sum_t (1-a) a^(T-t) theta_t / (1 - a^T) over the T updates."""
  a, steps = 0.8, 5
  seen, state = _trajectory(a, steps)
  plain, _ = _trajectory(0.0, steps)
  for leaf in ("kernel", "bias"):   # the average does not change the updates themselves
    np.testing.assert_array_equal(np.asarray(seen[-1]["dense"][leaf]),
                                  np.asarray(plain[-1]["dense"][leaf]))
  averaged = optim.averaged_params(state, seen[-1])
  for leaf in ("kernel", "bias"):
    thetas = np.stack([np.asarray(p["dense"][leaf], np.float64) for p in seen])
    weights = np.asarray([(1 - a) * a ** (steps - 1 - t) for t in range(steps)])
    expected = np.tensordot(weights, thetas, axes=1) / (1 - a ** steps)
    np.testing.assert_allclose(np.asarray(averaged["dense"][leaf]), expected, rtol=1e-5,
                               atol=1e-6)
    assert not np.allclose(expected, thetas[-1])     # the test can tell the two apart


def test_no_weight_average_hands_on_the_last_parameters():
  seen, state = _trajectory(0.0)
  assert optim.averaged_params(state, seen[-1]) is seen[-1]


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5])
def test_ema_decay_out_of_range_names_its_key(tiny_config, decay):
  cfg = tiny_config()
  cfg.sft.optim.ema_decay = decay
  with pytest.raises(config_check.ConfigError, match=r"sft\.optim\.ema_decay"):
    config_check.validate(cfg)


def test_without_ema_the_optimiser_state_keeps_its_checkpointed_structure():
  """Checkpoints written before `ema_decay` existed restore into the state of a run without it."""
  import jax
  import jax.numpy as jnp
  import optax
  params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
  before = optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(optax.constant_schedule(1e-3), mask=optim.decay_mask),
                       optax.identity())
  tx, _ = optim.make_optimizer(default_config().student.optim, 100, "student.optim")
  assert jax.tree.structure(tx.init(params)) == jax.tree.structure(before.init(params))
  # nor with the per-parameter factors on: they share one stateless slot
  section = default_config().student.optim
  section.layer_decay, section.head_lr_multiplier = 0.8, 10.0
  tx, _ = optim.make_optimizer(section, 100, "student.optim")
  params = {"classifier": params["dense"], "layer_0": params["dense"]}
  before_state = before.init(params)
  assert jax.tree.structure(tx.init(params)) == jax.tree.structure(before_state)


def test_the_weight_average_of_bf16_parameters_is_kept_in_float32():
  import jax
  import jax.numpy as jnp
  params = {"w": jnp.full((4,), 1.0, jnp.bfloat16)}
  tx = optim.track_params_ema(0.99)
  state = tx.init(params)
  updates = {"w": jnp.full((4,), 1e-3, jnp.bfloat16)}       # below bf16's resolution near 1.0
  for _ in range(3):
    _, state = tx.update(updates, state, params)
  assert state.ema["w"].dtype == jnp.float32
  averaged = optim.averaged_params((state,), params)
  assert averaged["w"].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(state.ema["w"], np.float64) / float(state.weight), 1.0,
                             rtol=1e-5)
