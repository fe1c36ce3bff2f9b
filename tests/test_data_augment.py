"""Photometric augmentation: JAX (device) and TF (host) versions agree and follow BYOL's rates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from jax.sharding import NamedSharding, PartitionSpec as P

from relic import parallel
from relic.data import augment, augment_spec, augment_tf

SIZE = 16


def colourful(n, seed=0):
  """Smooth random colour images: no grey pixels, so grayscale is detectable."""
  rng = np.random.default_rng(seed)
  base = rng.uniform(0.2, 0.8, (n, 1, 1, 3))
  ramp = np.linspace(-0.15, 0.15, SIZE)
  rows = ramp[None, :, None, None] * rng.choice([-1, 1], (n, 1, 1, 3))
  cols = ramp[None, None, :, None] * rng.choice([-1, 1], (n, 1, 1, 3))
  return np.clip(base + rows + cols, 0, 1).astype(np.float32)


def white(n):
  """Constant white: jitter keeps it in [0.6, 1] (contrast, saturation and hue do nothing to a
  flat grey image, brightness moves it by at most 0.4), so only solarisation takes the centre
  below 0.5 (blur's zero padding only dims the border)."""
  return np.ones((n, SIZE, SIZE, 3), np.float32)


def tf_augment(images, presets, seed):
  """Host version over a batch of single views, with stateless uniforms."""
  def one(i, image):
    u = tf.random.stateless_uniform([augment_spec.NUM_UNIFORMS], seed=[seed, i])
    return tf.stack([augment_tf.augment_image(image, u, p, augment_spec.blur_radius(SIZE))
                     for p in presets])
  ds = tf.data.Dataset.from_tensor_slices(images).enumerate().map(one).batch(len(images))
  return next(iter(ds)).numpy()


augment_jit = jax.jit(augment.augment_views, static_argnums=2)


def jax_augment(images, presets, seed):
  views = np.repeat(images[:, None], len(presets), axis=1)
  return np.asarray(augment_jit(jax.random.key(seed), jnp.asarray(views), presets))


def grayscale_rate(out):
  spread = out.max(axis=-1) - out.min(axis=-1)
  return float(np.mean(spread.reshape(len(out), -1).max(axis=1) < 1e-5))


def solarized(out):
  return out[:, SIZE // 2, SIZE // 2, 0] < 0.5


def within(rate, p, n, sigmas=4.0):
  return abs(rate - p) <= sigmas * np.sqrt(p * (1 - p) / n) + 1e-9


N = 1000


@pytest.fixture(scope="module")
def outputs():
  """Views 'A' and 'B' of N colourful and N white images, from both implementations."""
  images = np.concatenate([colourful(N, seed=5), white(N)])
  return images, tf_augment(images, "AB", seed=6), jax_augment(images, "AB", seed=7)


def test_jax_and_tf_versions_give_the_same_pixels_for_the_same_uniforms():
  rng = np.random.default_rng(0)
  images = rng.random((64, SIZE, SIZE, 3), dtype=np.float32)
  u = rng.random((64, augment_spec.NUM_UNIFORMS), dtype=np.float32)
  radius = augment_spec.blur_radius(SIZE)
  for preset in "AB":
    settings = augment_spec.PRESETS[preset]
    device = jax.jit(jax.vmap(lambda x, v, s=settings: augment.augment_image(
        x, v, s.blur_prob, s.solarize_prob, radius)))(images, u)
    host = tf.data.Dataset.from_tensor_slices((images, u)).map(
        lambda x, v, p=preset: augment_tf.augment_image(x, v, p, radius)).batch(64)
    np.testing.assert_allclose(np.asarray(device), next(iter(host)).numpy(), atol=2e-5)


def test_single_ops_match_tensorflow():
  rng = np.random.default_rng(1)
  x = rng.random((8, 8, 3), dtype=np.float32)
  for factor in (0.7, 1.3):
    np.testing.assert_allclose(augment.adjust_saturation(x, factor),
                               tf.image.adjust_saturation(x, factor).numpy(), atol=1e-5)
  for delta in (-0.1, 0.07, 0.5):
    np.testing.assert_allclose(augment.adjust_hue(x, delta),
                               tf.image.adjust_hue(x, delta).numpy(), atol=1e-5)
  np.testing.assert_allclose(augment.adjust_contrast(x, 1.4),
                             tf.image.adjust_contrast(x, 1.4).numpy(), atol=1e-5)
  # Blur keeps constant regions away from the zero-padded border and is normalised.
  flat = np.full((SIZE, SIZE, 3), 0.6, np.float32)
  blurred = np.asarray(augment.gaussian_blur(flat, 1.5, 3))
  np.testing.assert_allclose(blurred[3:-3, 3:-3], 0.6, atol=1e-6)
  assert blurred[0, 0, 0] < 0.6


def test_augment_views_shapes_ranges_and_independent_randomness():
  rng = np.random.default_rng(2)
  one = rng.integers(0, 256, (1, 1, SIZE, SIZE, 3), dtype=np.uint8)
  views = np.tile(one, (2 * N, 2, 1, 1, 1))   # one image in every slot; shapes as `outputs`
  out = np.asarray(augment_jit(jax.random.key(1), jnp.asarray(views), "AB"))
  assert out.shape == views.shape and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  # Independent draws per (example, view): unchanged views (no jitter and no grayscale, 16%)
  # are the only repeats, and the two views of an example are uncorrelated.
  for view in range(2):
    assert len({v.tobytes() for v in out[:, view]}) > 0.75 * len(out)
  shift = out.mean(axis=(2, 3, 4)) - one.mean() / 255.0
  assert abs(np.corrcoef(shift[:, 0], shift[:, 1])[0, 1]) < 4 / np.sqrt(len(out))
  floats = augment_jit(jax.random.key(1), jnp.asarray(views) / 255.0, "AB")
  np.testing.assert_allclose(np.asarray(floats), out, atol=1e-5)  # uint8 means float / 255
  with pytest.raises(ValueError, match="presets"):
    augment.augment_views(jax.random.key(0), jnp.asarray(views), "A")


def test_rates_match_byol_probabilities(outputs):
  _, host, device = outputs
  for out in (host, device):
    for view in range(2):                                 # grayscale p = 0.2 in A and B
      assert within(grayscale_rate(out[:N, view]), augment_spec.GRAYSCALE_PROB, N)
    assert not solarized(out[N:, 0]).any()                # preset A never solarises
    assert within(float(solarized(out[N:, 1]).mean()), 0.2, N)  # preset B: p = 0.2


def test_host_and_device_modes_agree_in_distribution(outputs):
  images, host, device = outputs
  for view in range(2):
    shift_h = host[:N, view].mean(axis=(1, 2, 3)) - images[:N].mean(axis=(1, 2, 3))
    shift_d = device[:N, view].mean(axis=(1, 2, 3)) - images[:N].mean(axis=(1, 2, 3))
    stderr = np.sqrt(shift_h.var() / N + shift_d.var() / N)
    assert abs(shift_h.mean() - shift_d.mean()) < 4 * stderr
    assert 0.85 < shift_h.std() / shift_d.std() < 1.15
    assert shift_h.std() > 0.05                  # the jitter does move brightness
    rates = [grayscale_rate(out[:N, view]) for out in (host, device)]
    assert abs(rates[0] - rates[1]) < 4 * np.sqrt(2 * 0.16 / N)


def test_augment_views_runs_sharded_over_the_batch():
  mesh = parallel.make_mesh()
  rng = np.random.default_rng(10)
  views = rng.integers(0, 256, (8, 2, SIZE, SIZE, 3), dtype=np.uint8)
  sharded = jax.device_put(views, parallel.data_sharding(mesh))
  fn = jax.jit(augment.augment_views, static_argnums=2,
               out_shardings=NamedSharding(mesh, P(parallel.DATA_AXIS)))
  out = fn(jax.random.key(11), sharded, "AB")
  assert out.sharding.spec == P(parallel.DATA_AXIS)
  single = augment_jit(jax.random.key(11), jnp.asarray(views), "AB")
  np.testing.assert_allclose(np.asarray(out), np.asarray(single), atol=1e-6)


def test_color_strength_scales_the_jitter_and_both_versions_agree():
  rng = np.random.default_rng(4)
  u = rng.random((2000, augment_spec.NUM_UNIFORMS), dtype=np.float32)
  byol = augment_spec.photometric_params(u)
  strong = augment_spec.photometric_params(u, augment_spec.Photometric(color_strength=2.0))
  np.testing.assert_allclose(strong["brightness"], 2 * byol["brightness"], rtol=1e-6)
  np.testing.assert_allclose(strong["hue"], 2 * byol["hue"], rtol=1e-6)
  np.testing.assert_allclose(strong["saturation"] - 1, 2 * (byol["saturation"] - 1), atol=1e-6)
  assert np.abs(strong["hue"]).max() > 0.19 and np.abs(strong["hue"]).max() <= 0.2
  # Capped where an op stops making sense: factors stay positive, hue within half a turn.
  huge = augment_spec.photometric_params(u, augment_spec.Photometric(color_strength=100.0))
  assert huge["contrast"].min() > 0 and huge["saturation"].min() >= 0
  assert np.abs(huge["hue"]).max() <= 0.5
  none = augment_spec.photometric_params(u, augment_spec.Photometric(color_strength=0.0))
  assert np.all(none["brightness"] == 0) and np.all(none["contrast"] == 1)
  always_gray = augment_spec.photometric_params(u, augment_spec.Photometric(grayscale_prob=1.0))
  assert always_gray["grayscale"].all() and within(byol["grayscale"].mean(), 0.2, len(u))
  # Host and device versions still give the same pixels under a non-default strength.
  images = rng.random((32, SIZE, SIZE, 3), dtype=np.float32)
  photometric = augment_spec.Photometric(color_strength=2.5, grayscale_prob=0.5)
  radius = augment_spec.blur_radius(SIZE)
  host = tf.data.Dataset.from_tensor_slices((images, u[:32])).map(
      lambda x, v: augment_tf.augment_image(x, v, "A", radius, photometric)).batch(32)
  # Preset 'A' always blurs on the host; compare against blur_prob=1 on the device.
  device = jax.jit(jax.vmap(lambda x, v: augment.augment_image(
      x, v, 1.0, 0.0, radius, photometric)))(images, u[:32])
  np.testing.assert_allclose(np.asarray(device), next(iter(host)).numpy(), atol=2e-5)
