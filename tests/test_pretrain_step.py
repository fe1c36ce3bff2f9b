"""The sharded pretraining step: device-count invariance, stop-gradient target, EMA, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from relic import config as config_lib, presets
from relic import optim, parallel
from relic.models import networks_from_config
from relic.train import divergence
from relic.train.pretrain_step import jit_pretrain_step, make_pretrain_step
from relic.train.states import create_train_state


def tiny_config(**loss):
  config = config_lib.base_config()
  presets.apply_runlocal(config)
  config.data.augment_on_device = False  # float views in; augmentation is tested elsewhere
  config.loss.update(loss)
  return config


def make_batch(batch=16, num_large=2, num_small=2, seed=0):
  rng = np.random.default_rng(seed)
  base = rng.uniform(size=(batch, 1, 16, 16, 3))
  large = np.clip(base + 0.05 * rng.normal(size=(batch, num_large, 16, 16, 3)), 0, 1)
  small = np.clip(base[:, :, :8, :8] + 0.05 * rng.normal(size=(batch, num_small, 8, 8, 3)), 0, 1)
  return dict(large=large.astype(np.float32), small=small.astype(np.float32),
              label=rng.integers(0, 10, size=(batch,)).astype(np.int32))


def build(config, ema=lambda step: jnp.asarray(0.99), lr=0.1):
  online, target = networks_from_config(config.model)
  optimizer = optim.step_scheduled(optax.sgd)
  probe_optimizer = optax.sgd(0.1)
  state = create_train_state(jax.random.key(0), online=online, target=target,
                             optimizer=optimizer, probe_optimizer=probe_optimizer,
                             num_classes=10, image_size=16)
  step = make_pretrain_step(config, online=online, target=target, optimizer=optimizer,
                            probe_optimizer=probe_optimizer,
                            learning_rate=lr if callable(lr) else lambda s: jnp.asarray(lr),
                            ema_rate=ema,
                            num_classes=10)
  return state, divergence.guarded(step, config.train.nan_policy)


def run_on_mesh(config, batch, devices, num_steps=2):
  mesh = parallel.make_mesh(devices)
  state, step = build(config)
  state = parallel.replicate(state, mesh)
  jitted = jit_pretrain_step(step, parallel.replicated(mesh), parallel.data_sharding(mesh))
  metrics = []
  for _ in range(num_steps):
    global_batch = jax.device_put(batch, parallel.data_sharding(mesh))
    state, m = jitted(state, global_batch)
    metrics.append(jax.device_get(m))
  return jax.device_get(state), metrics


@pytest.mark.parametrize("num_negatives", [0, 5])
def test_step_same_on_1_and_8_devices(num_negatives):
  config = tiny_config(num_negatives=num_negatives)
  batch = make_batch()
  state1, metrics1 = run_on_mesh(config, batch, jax.devices()[:1])
  state8, metrics8 = run_on_mesh(config, batch, jax.devices())
  for m1, m8 in zip(metrics1, metrics8):
    for key in ("loss", "contrastive", "invariance", "accuracy", "probe_loss"):
      np.testing.assert_allclose(m1[key], m8[key], atol=1e-5, err_msg=key)
  # Parameters after two SGD steps agree: the gradients are the same on both meshes.
  for field in ("online_params", "online_batch_stats", "target_params", "target_batch_stats",
                "probe_params"):
    # atol 1e-4: the 8-device sums run in another order, and the optimiser divides by the
    # gradient's size, so a near-zero gradient's update carries that rounding at lr scale.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, err_msg=field),
                 getattr(state1, field), getattr(state8, field))
  assert int(state8.step) == 2 and metrics1[0]["finite"]


def test_target_gets_no_gradient_and_follows_ema():
  config = tiny_config()
  batch = jax.tree.map(jnp.asarray, make_batch())
  state, step = build(config, ema=lambda s: jnp.asarray(1.0))
  new_state, _ = jax.jit(step)(state, batch)
  # rate 1: the target keeps its parameters exactly, whatever the loss's gradients were.
  jax.tree.map(np.testing.assert_array_equal, state.target_params, new_state.target_params)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), state.online_params,
                         new_state.online_params)
  assert any(jax.tree.leaves(changed["encoder"]))
  # rate 0.9: g' = 0.9 g + 0.1 f' with f' the updated online parameters.
  state, step = build(config, ema=lambda s: jnp.asarray(0.9))
  new_state, metrics = jax.jit(step)(state, batch)
  expected = jax.tree.map(lambda g, f: 0.9 * g + 0.1 * f, state.target_params,
                          {k: new_state.online_params[k] for k in state.target_params})
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), expected,
               new_state.target_params)
  np.testing.assert_allclose(metrics["ema_rate"], 0.9)


def test_small_views_and_every_pair_enter_the_loss():
  config = tiny_config()
  batch = jax.tree.map(jnp.asarray, make_batch())
  state, step = build(config)
  _, with_small = jax.jit(step)(state, batch)
  no_small = dict(batch, small=batch["small"][:, :0])
  _, without_small = jax.jit(step)(state, no_small)
  assert not np.isclose(with_small["loss"], without_small["loss"])


def test_predictor_only_on_online_branch():
  config = tiny_config()
  config.model.predictor = True
  state, step = build(config)
  assert "predictor" in state.online_params and "predictor" not in state.target_params
  new_state, metrics = jax.jit(step)(state, jax.tree.map(jnp.asarray, make_batch()))
  assert np.isfinite(metrics["loss"]) and int(new_state.step) == 1


def test_bfloat16_low_temperature_close_to_float32():
  batch = jax.tree.map(jnp.asarray, make_batch())
  losses = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny_config(temperature=0.05)
    config.model.dtype = dtype
    state, step = build(config)
    _, metrics = jax.jit(step)(state, batch)
    losses[dtype] = float(metrics["loss"])
  assert np.isfinite(losses["bfloat16"])
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.05)


def test_nonfinite_step_skipped_when_asked():
  config = tiny_config()
  config.train.nan_policy = "skip"
  batch = jax.tree.map(jnp.asarray, make_batch())
  batch["large"] = batch["large"].at[0, 0, 0, 0, 0].set(jnp.nan)
  state, step = build(config)
  new_state, metrics = jax.jit(step)(state, batch)
  assert not metrics["finite"] and int(new_state.step) == 1
  jax.tree.map(np.testing.assert_array_equal, state.online_params, new_state.online_params)


def test_skipped_step_keeps_the_learning_rate_on_the_step_schedule():
  """ok, NaN (skipped), ok == ok, then a clean step at the rate schedule(2): the update after a
  skip uses the schedule of the train step (a rate lagging by the skipped step would be
  schedule(1)), and the optimiser state only counts the applied updates."""
  config = tiny_config()
  config.train.nan_policy = "skip"
  schedule = lambda s: 0.05 * (1.0 + s)  # a different rate at every step
  clean = jax.tree.map(jnp.asarray, make_batch(seed=1))
  bad = dict(clean, large=clean["large"].at[0, 0, 0, 0, 0].set(jnp.nan))
  state, step = build(config, lr=schedule)
  step = jax.jit(step)
  skipped, _ = step(state, clean)
  skipped, metrics = step(skipped, bad)
  assert not metrics["finite"]
  skipped, metrics = step(skipped, clean)
  assert float(metrics["learning_rate"]) == pytest.approx(schedule(2))

  # Reference: the third update taken by a step whose schedule is the constant schedule(2).
  _, at_step_2 = build(config, lr=lambda s: jnp.asarray(schedule(2)))
  reference, _ = step(state, clean)
  reference, _ = jax.jit(at_step_2)(reference.replace(step=reference.step + 1), clean)
  assert int(skipped.step) == int(reference.step) == 3
  jax.tree.map(np.testing.assert_array_equal, skipped.online_params, reference.online_params)
  jax.tree.map(np.testing.assert_array_equal, skipped.opt_state, reference.opt_state)


def test_supervised_objective_learns_labels_and_skips_target():
  config = tiny_config(objective="supervised")
  config.model.projector_output_dim = 10
  batch = jax.tree.map(jnp.asarray, make_batch())
  state, step = build(config)
  jitted = jax.jit(step)
  losses = []
  for _ in range(5):
    new_state, metrics = jitted(state, batch)
    # The target branch does not run and is not updated: its statistics and weights stay.
    for group in ("target_batch_stats", "target_params"):
      same = jax.tree.map(np.array_equal, getattr(new_state, group), getattr(state, group))
      assert all(jax.tree.leaves(same)), group
    state = new_state
    losses.append(float(metrics["loss"]))
  assert set(metrics) >= {"loss", "accuracy", "probe_top1"}
  assert losses[-1] < losses[0] - 0.1, losses


def baseline_config(objective):
  config = tiny_config(objective=objective)
  config.model.predictor = objective == "byol"
  return config


@pytest.mark.parametrize("objective,keys", [("byol", ("loss", "cosine", "probe_loss")),
                                            ("simclr", ("loss", "accuracy", "probe_loss"))])
def test_baseline_step_same_on_1_and_8_devices(objective, keys):
  config = baseline_config(objective)
  batch = make_batch()
  state1, metrics1 = run_on_mesh(config, batch, jax.devices()[:1])
  state8, metrics8 = run_on_mesh(config, batch, jax.devices())
  for m1, m8 in zip(metrics1, metrics8):
    assert np.isfinite(m1["loss"])
    for key in keys:
      np.testing.assert_allclose(m1[key], m8[key], atol=1e-5, err_msg=key)
  for field in ("online_params", "online_batch_stats", "target_params", "target_batch_stats",
                "probe_params"):
    # atol 1e-4: the 8-device sums run in another order, and the optimiser divides by the
    # gradient's size, so a near-zero gradient's update carries that rounding at lr scale.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, err_msg=field),
                 getattr(state1, field), getattr(state8, field))
  assert int(state8.step) == 2


def test_byol_step_target_is_an_ema_without_gradient_and_simclr_has_no_target():
  batch = jax.tree.map(jnp.asarray, make_batch())
  config = baseline_config("byol")
  state, step = build(config, ema=lambda s: jnp.asarray(1.0))
  assert "predictor" in state.online_params and "predictor" not in state.target_params
  new_state, metrics = jax.jit(step)(state, batch)
  jax.tree.map(np.testing.assert_array_equal, state.target_params, new_state.target_params)
  assert any(jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b),
                                          state.target_batch_stats,
                                          new_state.target_batch_stats)))  # target ran
  assert 0.0 < float(metrics["loss"]) <= 8.0
  # SimCLR: the target network neither runs (its BN statistics stay) nor follows the online one.
  state, step = build(baseline_config("simclr"), ema=lambda s: jnp.asarray(0.5))
  new_state, metrics = jax.jit(step)(state, batch)
  for group in ("target_params", "target_batch_stats"):
    jax.tree.map(np.testing.assert_array_equal, getattr(state, group), getattr(new_state, group))
  assert np.isfinite(metrics["loss"]) and "accuracy" in metrics
