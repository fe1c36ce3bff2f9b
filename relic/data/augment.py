"""BYOL's photometric augmentation in JAX, applied inside the jitted training step.

The host pipeline only decodes and crops (uint8 views); colour jitter, grayscale, blur and
solarisation of the L + S views of every image then run on the accelerator, where they are
cheap, instead of on the host CPUs that multi-crop would otherwise saturate (DeepMind's BYOL
does the same). Every op is written per image and ``vmap``-ed over the (batch, view) axes, with
no data-dependent control flow, so XLA partitions it like any other op on a batch sharded over
the data axis. Parameters come from :mod:`relic.data.augment_spec`, shared with the tf.data
version in :mod:`relic.data.augment_tf`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from relic.data import augment_spec as spec


def augment_views(rng: jax.Array, views: jax.Array, presets: str,
                  photometric: spec.Photometric = spec.BYOL) -> jax.Array:
  """Augments every view of every image independently.

  Args:
    rng: PRNG key; each (example, view) gets its own uniforms drawn from it.
    views: ``(B, V, H, W, 3)`` uint8 in [0, 255] or float in [0, 1].
    presets: ``V`` letters 'A'/'B', the preset of each view (see ``view_presets``).
    photometric: colour-distortion strength (``config.data``; default BYOL's).

  Returns:
    float32 ``(B, V, H, W, 3)`` in [0, 1].
  """
  if views.ndim != 5 or views.shape[-1] != 3:
    raise ValueError(f"views must be (B, V, H, W, 3), got {views.shape}.")
  batch, num_views, height = views.shape[:3]
  spec.check_presets(presets, num_views)
  images = views.astype(jnp.float32)
  if views.dtype == jnp.uint8:
    images = images / 255.0
  u = jax.random.uniform(rng, (batch, num_views, spec.NUM_UNIFORMS), jnp.float32)
  blur_prob = jnp.array([photometric.blur_prob(p) for p in presets], jnp.float32)
  solarize_prob = jnp.array([spec.PRESETS[p].solarize_prob for p in presets], jnp.float32)
  radius = spec.blur_radius(height)
  per_view = jax.vmap(lambda x, v, b, s: augment_image(x, v, b, s, radius, photometric))
  return jax.vmap(per_view, in_axes=(0, 0, None, None))(images, u, blur_prob, solarize_prob)


def augment_image(image: jax.Array, u: jax.Array, blur_prob: jax.Array,
                  solarize_prob: jax.Array, radius: int,
                  photometric: spec.Photometric = spec.BYOL) -> jax.Array:
  """One (H, W, 3) float image in [0, 1] with its uniform vector ``u`` (augment_spec layout).

  Order as in BYOL: flip, colour jitter, grayscale, blur, solarise, final clip.
  """
  p = spec.photometric_params(u, photometric)
  x = jnp.where(p["flip"], image[:, ::-1, :], image)
  x = jnp.where(p["jitter"], color_jitter(x, p, u), x)
  x = jnp.where(p["grayscale"], grayscale(x), x)
  x = jnp.where(u[spec.BLUR] < blur_prob, gaussian_blur(x, p["sigma"], radius), x)
  x = jnp.where(u[spec.SOLARIZE] < solarize_prob, solarize(x), x)
  return jnp.clip(x, 0.0, 1.0)


def color_jitter(x: jax.Array, p: dict[str, jax.Array], u: jax.Array) -> jax.Array:
  """Brightness, contrast, saturation and hue in a random order, clipping after each.

  Under ``vmap`` a ``switch`` evaluates every branch and selects, so each of the four slots
  costs all four ops (they fuse well: all elementwise but contrast's channel mean). The slots
  are a loop so the four ops are compiled once, not four times.
  """
  ops = (lambda y: adjust_brightness(y, p["brightness"]),
         lambda y: adjust_contrast(y, p["contrast"]),
         lambda y: adjust_saturation(y, p["saturation"]),
         lambda y: adjust_hue(y, p["hue"]))
  order = jnp.argsort(u[spec.ORDER:spec.ORDER + len(ops)])

  def slot(i: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.clip(jax.lax.switch(order[i], ops, y), 0.0, 1.0)

  return jax.lax.fori_loop(0, len(ops), slot, x)


def adjust_brightness(x: jax.Array, delta: jax.Array) -> jax.Array:
  return x + delta


def adjust_contrast(x: jax.Array, factor: jax.Array) -> jax.Array:
  """Scales each channel around its own spatial mean (tf.image.adjust_contrast)."""
  mean = jnp.mean(x, axis=(0, 1), keepdims=True)
  return (x - mean) * factor + mean


def adjust_saturation(x: jax.Array, factor: jax.Array) -> jax.Array:
  """HSV saturation times ``factor`` (clipped to [0, 1]), computed without leaving RGB.

  In HSV every channel is ``V - C * k(hue)`` with chroma ``C = V * S``; scaling S to
  ``S' = min(S * factor, 1)`` keeps V and the hue, so each channel becomes
  ``V - (V - c) * S' / S = V - (V - c) * min(factor, V / C)``. Same result as
  tf.image.adjust_saturation for inputs in [0, 1] (grey pixels, C = 0, stay as they are), at a
  fraction of the cost of the two colour-space conversions.
  """
  value = jnp.max(x, axis=-1, keepdims=True)
  chroma = value - jnp.min(x, axis=-1, keepdims=True)
  ratio = jnp.minimum(factor, value / jnp.maximum(chroma, 1e-12))
  return value - (value - x) * ratio


def adjust_hue(x: jax.Array, delta: jax.Array) -> jax.Array:
  """Rotates the HSV hue by ``delta`` turns (tf.image.adjust_hue), keeping S and V.

  Hue is kept in sixths of a turn; the wrap-arounds are single conditional subtractions
  (|delta| < 1) because a float ``mod`` is several times slower on CPU.
  """
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  value = jnp.max(x, axis=-1)
  chroma = value - jnp.min(x, axis=-1)
  inv_chroma = 1.0 / jnp.where(chroma > 0, chroma, 1.0)
  hue6 = jnp.where(value == r, (g - b) * inv_chroma,
                   jnp.where(value == g, (b - r) * inv_chroma + 2.0, (r - g) * inv_chroma + 4.0))
  hue6 = jnp.where(chroma > 0, hue6, 0.0) + 6.0 * delta
  hue6 = jnp.where(hue6 < 0.0, hue6 + 6.0, jnp.where(hue6 >= 6.0, hue6 - 6.0, hue6))
  # HSV -> RGB: channel n is V - C * clip(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6.
  channels = []
  for n in (5.0, 3.0, 1.0):
    k = n + hue6
    k = jnp.where(k >= 6.0, k - 6.0, k)
    channels.append(value - chroma * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0))
  return jnp.stack(channels, axis=-1)


def grayscale(x: jax.Array) -> jax.Array:
  gray = jnp.tensordot(x, jnp.array(spec.GRAYSCALE_WEIGHTS, x.dtype), axes=(-1, -1))
  return jnp.repeat(gray[..., None], 3, axis=-1)


def gaussian_blur(x: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
  """Separable Gaussian blur with zero 'SAME' padding (BYOL's), horizontal then vertical.

  Written as a sum of shifted copies rather than a convolution with a per-image kernel:
  under ``vmap`` the latter becomes a grouped convolution with one group per image, which
  many backends run slowly, while shifted sums fuse into one elementwise loop everywhere.
  """
  if radius == 0:
    return x
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  kernel = jnp.exp(-taps ** 2 / (2.0 * sigma ** 2))
  kernel = kernel / jnp.sum(kernel)
  height, width = x.shape[0], x.shape[1]
  padded = jnp.pad(x, ((0, 0), (radius, radius), (0, 0)))
  x = sum(kernel[i] * padded[:, i:i + width] for i in range(2 * radius + 1))
  padded = jnp.pad(x, ((radius, radius), (0, 0), (0, 0)))
  return sum(kernel[i] * padded[i:i + height] for i in range(2 * radius + 1))


def solarize(x: jax.Array) -> jax.Array:
  return jnp.where(x < spec.SOLARIZE_THRESHOLD, x, 1.0 - x)
