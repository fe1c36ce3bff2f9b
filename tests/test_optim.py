"""Optimiser (BYOL's LARS, byol/utils/optimizers.py), weight-decay mask, durations, schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from relic import schedules
from relic.config import base_config
from relic.errors import ConfigError
from relic.models import MLP, ResNet
from relic.optim import make_optimizer, weight_decay_mask


def _config(**optim):
  config = base_config()
  config.train.batch_size = 512
  config.optim.update(optim)
  return config


def _online_params(depth: int):
  """Encoder + projector + predictor params of a tiny online network, as the jobs nest them."""
  encoder = ResNet(depth=depth, stage_sizes=(1, 1, 1, 1), base_width=4, small_images=True)
  head = MLP(hidden_dim=8, output_dim=4)
  key = jax.random.PRNGKey(0)
  # Shapes only (eval_shape): the mask depends on names and ranks, not on values.
  enc = jax.eval_shape(encoder.init, key, jnp.zeros((2, 8, 8, 3)))["params"]
  projector = jax.eval_shape(head.init, key, jnp.zeros((2, encoder.num_features)))["params"]
  predictor = jax.eval_shape(head.init, key, jnp.zeros((2, 4)))["params"]
  return {"encoder": enc, "projector": projector, "predictor": predictor}


@pytest.mark.parametrize("depth", [18, 50])
def test_weight_decay_mask_excludes_exactly_biases_and_batchnorm(depth):
  params = _online_params(depth)
  mask = weight_decay_mask(params)
  flags = {tuple(k.key for k in path): bool(flag)
           for path, flag in jax.tree_util.tree_leaves_with_path(mask)}
  assert len(flags) == len(jax.tree.leaves(params))
  decayed = {n for n, flag in flags.items() if flag}
  excluded = {n for n, flag in flags.items() if not flag}
  module = lambda names: names[-2]
  # Expected from the module names alone, independently of the rule in weight_decay_mask.
  bn = {n for n in flags if module(n).startswith("bn_") or module(n) == "shortcut_bn"}
  biases = {n for n in flags if n[-1] == "bias"}
  assert excluded == bn | biases
  assert all(n[-1] in ("scale", "bias") for n in bn)
  assert {n[-1] for n in bn} == {"scale", "bias"}
  assert all(n[-1] == "kernel" and (module(n).startswith(("conv", "linear"))
                                    or module(n) == "shortcut_conv") for n in decayed)
  # Every part of the online network has both kinds, so none is silently all-in or all-out.
  for part in ("encoder", "projector", "predictor"):
    assert any(n[0] == part for n in decayed) and any(n[0] == part for n in excluded)
  if depth == 50:
    assert any(module(n) == "shortcut_bn" for n in excluded)
    assert any(module(n) == "shortcut_conv" for n in decayed)


def _byol_lars_reference(params, grads_seq, lrs, *, weight_decay, momentum, eta, mask):
  """DeepMind BYOL's LARS (byol/utils/optimizers.py), written out in NumPy."""
  params = {k: np.array(v, np.float64) for k, v in params.items()}
  mu = {k: np.zeros_like(v) for k, v in params.items()}
  for grads, lr in zip(grads_seq, lrs):
    for k in params:
      g = np.array(grads[k], np.float64)
      if mask[k]:
        g = g + weight_decay * params[k]
        p_norm, g_norm = np.linalg.norm(params[k]), np.linalg.norm(g)
        g = g * (eta * p_norm / g_norm if p_norm > 0 and g_norm > 0 else 1.0)
      mu[k] = momentum * mu[k] + g
      params[k] = params[k] - lr * mu[k]
  return params


def test_lars_matches_numpy_reference_of_byol():
  rng = np.random.default_rng(0)
  params = {
      "kernel": rng.normal(size=(3, 4)).astype(np.float32),       # decayed + trust ratio
      "zero_kernel": np.zeros((4, 2), np.float32),                 # ||p|| = 0: ratio 1
      "bias": rng.normal(size=(4,)).astype(np.float32),            # excluded
      "scale": rng.normal(size=(4,)).astype(np.float32),           # excluded (BN)
  }
  # Nest like Flax so weight_decay_mask's name rule applies: {module: {leaf: value}}.
  nested = lambda flat: {"dense": {"kernel": flat["kernel"], "bias": flat["bias"]},
                         "dense_zero": {"kernel": flat["zero_kernel"]},
                         "bn_0": {"scale": flat["scale"]}}
  mask = {"kernel": True, "zero_kernel": True, "bias": False, "scale": False}
  num_steps = 5
  grads_seq = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
               for _ in range(num_steps)]
  config = _config(name="lars", base_lr=0.2, weight_decay=0.05, momentum=0.9,
                   trust_coefficient=1e-3)
  schedule = schedules.learning_rate_schedule(config, total_steps=6, warmup_steps=2)
  lrs = [float(schedule(k)) for k in range(num_steps)]
  assert len(set(lrs)) == num_steps  # the rate changes every step: order of lr/momentum matters.

  opt = make_optimizer(config, schedule)
  p = jax.tree.map(jnp.asarray, nested(params))
  state = opt.init(p)
  update = jax.jit(opt.update)
  for grads in grads_seq:
    updates, state = update(jax.tree.map(jnp.asarray, nested(grads)), state, p)
    p = optax.apply_updates(p, updates)

  expected = _byol_lars_reference(params, grads_seq, lrs, weight_decay=0.05, momentum=0.9,
                                  eta=1e-3, mask=mask)
  got = {"kernel": p["dense"]["kernel"], "bias": p["dense"]["bias"],
         "zero_kernel": p["dense_zero"]["kernel"], "scale": p["bn_0"]["scale"]}
  for k in params:
    np.testing.assert_allclose(np.asarray(got[k]), expected[k], rtol=2e-5, atol=1e-7, err_msg=k)

  # optax.lars scales by the rate before the momentum; under a schedule that is a different
  # optimiser, which is why relic builds its own chain.
  ref = optax.lars(schedule, weight_decay=0.05, weight_decay_mask=weight_decay_mask,
                   trust_ratio_mask=weight_decay_mask, trust_coefficient=1e-3, momentum=0.9)
  q = jax.tree.map(jnp.asarray, nested(params))
  ref_state = ref.init(q)
  for grads in grads_seq:
    updates, ref_state = ref.update(jax.tree.map(jnp.asarray, nested(grads)), ref_state, q)
    q = optax.apply_updates(q, updates)
  assert not np.allclose(np.asarray(q["dense"]["kernel"]), expected["kernel"], rtol=1e-4)


@pytest.mark.parametrize("name", ["sgd", "adamw", "lars"])
def test_optimizers_decay_only_kernels(name):
  params = {"conv_0": {"kernel": jnp.ones((3, 3, 2, 2))},
            "bn_0": {"scale": jnp.ones((2,)), "bias": jnp.ones((2,))},
            "linear_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}}
  config = _config(name=name, weight_decay=0.1)
  opt = make_optimizer(config, 0.5)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = opt.update(zero_grads, opt.init(params), params)
  for path, u in jax.tree_util.tree_leaves_with_path(updates):
    moved = bool(jnp.any(u != 0))
    assert moved == (path[-1].key == "kernel"), (name, path)


def test_unknown_optimizer_lists_choices():
  with pytest.raises(ConfigError, match=r"optim\.name.*'lamb'.*\['lars', 'sgd', 'adamw'\]"):
    make_optimizer(_config(name="lamb"), 0.1)


def test_total_and_warmup_steps_from_epochs_and_steps():
  config = base_config()
  config.train.batch_size = 4096
  config.train.num_epochs = 1000.0
  assert schedules.total_steps(config, 1_281_167) == 312_785  # ceil(312784.91)
  assert schedules.warmup_steps(config, 1_281_167) == 3128    # 10 epochs, ceil(3127.85)
  config.train.num_steps = 20
  assert schedules.total_steps(config, 1_281_167) == 20
  # Float noise (0.3 * 1000 / 100 = 3.0000000000000004) must not add a step.
  assert schedules.epochs_to_steps(0.3, 1000, 100) == 3
  assert schedules.epochs_to_steps(0.31, 1000, 100) == 4
  config.optim.warmup_epochs = 0.0
  assert schedules.warmup_steps(config, 1000) == 0
  config.train.num_train_examples = 0
  assert schedules.resolve_num_train_examples(config, 500) == 500
  config.train.num_train_examples = 1_281_167
  assert schedules.resolve_num_train_examples(config, 500) == 1_281_167


def test_learning_rate_schedule_key_points():
  config = _config(base_lr=0.2)               # batch 512 -> peak 0.4
  total, warmup = 100, 10
  lr = jax.jit(schedules.learning_rate_schedule(config, total, warmup))
  peak = 0.2 * 512 / 256
  assert float(lr(0)) == 0.0
  assert float(lr(5)) == pytest.approx(peak / 2)
  assert float(lr(warmup)) == pytest.approx(peak)
  assert float(lr(total - 1)) == pytest.approx(peak * 0.5 * (1 + np.cos(np.pi * 89 / 90)),
                                               rel=1e-4)  # float32 near cos = -1
  assert float(lr(total - 1)) > 0
  assert float(lr(total)) == pytest.approx(0.0, abs=1e-9)
  assert float(lr(total + 50)) == pytest.approx(0.0, abs=1e-9)
  values = np.array([float(lr(k)) for k in range(total + 1)])
  assert np.all(np.diff(values[:warmup + 1]) > 0) and np.all(np.diff(values[warmup:]) <= 0)
  # No warm-up: the peak from step 0.
  assert float(schedules.learning_rate_schedule(config, total, 0)(0)) == pytest.approx(peak)
  with pytest.raises(ConfigError, match="warmup_epochs"):
    schedules.learning_rate_schedule(config, 10, 11)


def test_ema_rate_key_points_and_monotone():
  base, total = 0.996, 1000
  rate = jax.jit(schedules.ema_rate, static_argnums=(1, 2))
  assert float(rate(0, total, base)) == pytest.approx(base)
  assert float(rate(total // 2, total, base)) == pytest.approx(1 - (1 - base) / 2)
  assert float(rate(total, total, base)) == 1.0
  assert float(rate(total + 7, total, base)) == 1.0
  values = np.array([float(rate(k, total, base)) for k in range(0, total + 1, 10)])
  assert np.all(np.diff(values) >= 0)


def test_schedules_are_pure_functions_of_the_step_across_resume():
  config = _config(base_lr=0.3, warmup_epochs=1.0)
  total = schedules.total_steps(config, 5000)
  warmup = schedules.warmup_steps(config, 5000)
  original = jax.jit(schedules.learning_rate_schedule(config, total, warmup))
  ema = jax.jit(schedules.ema_rate, static_argnums=(1, 2))
  points = (0, warmup - 1, warmup, total // 2, total - 1)
  first_run = {k: (float(original(k)), float(ema(k, total, 0.99))) for k in points}
  # A resumed process rebuilds everything from the config and starts at step k.
  resumed_config = _config(base_lr=0.3, warmup_epochs=1.0)
  resumed_total = schedules.total_steps(resumed_config, 5000)
  resumed = jax.jit(schedules.learning_rate_schedule(
      resumed_config, resumed_total, schedules.warmup_steps(resumed_config, 5000)))
  resumed_ema = jax.jit(schedules.ema_rate, static_argnums=(1, 2))
  for k in points:
    assert (float(resumed(jnp.int32(k))),
            float(resumed_ema(jnp.int32(k), resumed_total, 0.99))) == first_run[k]


def test_optimizer_resumed_from_its_state_continues_identically():
  """The lr count lives in the optimiser state: restoring it resumes the schedule exactly."""
  config = _config(name="lars", weight_decay=1e-3)
  schedule = schedules.learning_rate_schedule(config, total_steps=8, warmup_steps=3)
  rng = np.random.default_rng(1)
  params = {"linear_0": {"kernel": jnp.asarray(rng.normal(size=(3, 3)), jnp.float32),
                         "bias": jnp.zeros((3,))}}
  grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
           for _ in range(6)]

  def run(p, state, opt, gs):
    for g in gs:
      u, state = opt.update(g, state, p)
      p = optax.apply_updates(p, u)
    return p, state

  opt = make_optimizer(config, schedule)
  straight, _ = run(params, opt.init(params), opt, grads)
  p3, s3 = run(params, opt.init(params), opt, grads[:3])
  p3, s3 = jax.tree.map(np.asarray, (p3, s3))  # through host memory, as a checkpoint does
  fresh = make_optimizer(config, schedule)
  resumed, _ = run(jax.tree.map(jnp.asarray, p3), jax.tree.map(jnp.asarray, s3), fresh, grads[3:])
  np.testing.assert_array_equal(np.asarray(resumed["linear_0"]["kernel"]),
                                np.asarray(straight["linear_0"]["kernel"]))
