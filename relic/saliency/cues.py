"""Unsupervised saliency from classical cues, in JAX on a batch of images (no labels, no data).

DeepUSPS (Nguyen et al. 2019), whose masks ReLICv2 uses, starts from hand-crafted saliency
methods and refines them with a network. The cues here are the two background priors of that
family that need no training and vectorise on an accelerator:

* ``contrast``: colour contrast to the image border (the boundary prior of Wei et al. 2012 and
  Yang et al. 2013): the CIE-Lab distance of each pixel to its nearest border colours (the mean
  of the ``nearest`` smallest distances to up to 64 border pixels). Background regions touch the
  border somewhere and share its colours; an object in the frame does not.
* ``barrier``: the minimum barrier distance to the border (Zhang et al. 2015, "Minimum Barrier
  Salient Object Detection at 80 FPS"): for each pixel, the least (max - min) of intensity along
  any path to the border, summed over the Lab channels. It is computed by relaxation: every
  pixel repeatedly takes the best path of a 4-neighbour, all pixels at once, which is the
  parallel form of FastMBD's raster scans and converges in about one image side of rounds.
* ``centre``: a centre prior (isotropic Gaussian, sigma = half the side), as in MB+; a weak
  cue meant to be combined with the others.

Each cue map is scaled to [0, 1] per image; the saliency map is their product (a pixel is
salient only where every cue agrees), scaled again, and the pseudo-mask is its Otsu threshold
per image (Otsu 1979, on a 64-bin histogram).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

CUES = ("contrast", "barrier", "centre")
_MAX_BORDER_POINTS = 64
_OTSU_BINS = 64


def rgb_to_lab(rgb: jax.Array) -> jax.Array:
  """sRGB in [0, 1] (..., 3) -> CIE Lab (D65), L in [0, 100]."""
  linear = jnp.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
  xyz = linear @ jnp.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192],
                            [0.1805, 0.0722, 0.9505]], rgb.dtype)
  xyz = xyz / jnp.array([0.95047, 1.0, 1.08883], rgb.dtype)
  f = jnp.where(xyz > (6 / 29) ** 3, jnp.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
  return jnp.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                    200 * (f[..., 1] - f[..., 2])], axis=-1)


def _border(x: jax.Array) -> jax.Array:
  """(B, H, W, C) -> (B, P, C): up to 64 pixels spread evenly along the image's border."""
  ring = jnp.concatenate([x[:, 0, :-1], x[:, :-1, -1], x[:, -1, :0:-1], x[:, :0:-1, 0]], axis=1)
  stride = max(1, -(-ring.shape[1] // _MAX_BORDER_POINTS))
  return ring[:, ::stride]


def scale01(maps: jax.Array) -> jax.Array:
  """Each (H, W) map of a (B, H, W) batch scaled to [0, 1] (a constant map gives 0)."""
  low = maps.min(axis=(1, 2), keepdims=True)
  high = maps.max(axis=(1, 2), keepdims=True)
  return (maps - low) / jnp.maximum(high - low, 1e-6)


def border_contrast(lab: jax.Array, nearest: int = 8) -> jax.Array:
  """(B, H, W, 3) Lab -> (B, H, W): mean distance to the ``nearest`` closest border colours."""
  border = _border(lab)                                            # (B, P, 3)
  distance = jnp.sqrt(jnp.maximum(jnp.sum(
      (lab[:, :, :, None, :] - border[:, None, None, :, :]) ** 2, axis=-1), 0.0) + 1e-12)
  nearest = min(nearest, border.shape[1])
  closest = -jax.lax.top_k(-distance, nearest)[0]
  return closest.mean(axis=-1)


def barrier_distance(channel: jax.Array, rounds: int = 0) -> jax.Array:
  """(B, H, W) intensity -> (B, H, W) minimum barrier distance to the border (module docstring).

  ``rounds``: relaxation rounds (each tries the four neighbours); 0 = the image's larger side.
  """
  _, height, width = channel.shape
  rounds = rounds or max(height, width)
  inf = jnp.asarray(jnp.inf, channel.dtype)
  on_border = jnp.zeros((height, width), bool).at[0].set(True).at[-1].set(True)
  on_border = on_border.at[:, 0].set(True).at[:, -1].set(True)
  distance = jnp.where(on_border, 0.0, inf).astype(channel.dtype)[None].repeat(len(channel), 0)
  state = (distance, channel, channel)    # best barrier, and the max / min along its path

  def shifted(x, axis, step, fill):
    pad = [(0, 0)] * 3
    pad[axis] = (1, 0) if step > 0 else (0, 1)
    x = jnp.pad(x, pad, constant_values=fill)
    return x[:, :-1] if (axis == 1 and step > 0) else (
        x[:, 1:] if axis == 1 else (x[:, :, :-1] if step > 0 else x[:, :, 1:]))

  def one_round(_, state):
    for axis, step in ((1, 1), (1, -1), (2, 1), (2, -1)):
      distance, high, low = state
      n_distance = shifted(distance, axis, step, inf)
      n_high = jnp.maximum(shifted(high, axis, step, -inf), channel)
      n_low = jnp.minimum(shifted(low, axis, step, inf), channel)
      candidate = jnp.where(jnp.isfinite(n_distance), n_high - n_low, inf)
      better = candidate < distance
      state = (jnp.where(better, candidate, distance), jnp.where(better, n_high, high),
               jnp.where(better, n_low, low))
    return state

  return jax.lax.fori_loop(0, rounds, one_round, state)[0]


def centre_prior(height: int, width: int) -> jax.Array:
  """(H, W) Gaussian centred on the image, sigma = half of each side."""
  y = (jnp.arange(height) - (height - 1) / 2) / (0.5 * height)
  x = (jnp.arange(width) - (width - 1) / 2) / (0.5 * width)
  return jnp.exp(-(y[:, None] ** 2 + x[None, :] ** 2))


def saliency_map(images: jax.Array, cues: Sequence[str] = ("contrast", "barrier"), *,
                 nearest: int = 8, rounds: int = 0) -> jax.Array:
  """(B, H, W, 3) RGB in [0, 1] -> (B, H, W) saliency in [0, 1]: the product of the cues."""
  unknown = set(cues) - set(CUES)
  if not cues or unknown:
    raise ValueError(f"cues must be a non-empty subset of {CUES}, got {tuple(cues)}")
  lab = rgb_to_lab(images.astype(jnp.float32))
  combined = jnp.ones(images.shape[:3], jnp.float32)
  if "contrast" in cues:
    combined = combined * scale01(border_contrast(lab, nearest))
  if "barrier" in cues:
    combined = combined * scale01(sum(barrier_distance(lab[..., c], rounds) for c in range(3)))
  if "centre" in cues:
    combined = combined * centre_prior(*images.shape[1:3])[None]
  return scale01(combined)


def otsu_threshold(maps: jax.Array) -> jax.Array:
  """(B, H, W) maps in [0, 1] -> (B,) thresholds maximising the between-class variance."""
  bins = jnp.clip((maps * _OTSU_BINS).astype(jnp.int32), 0, _OTSU_BINS - 1)
  counts = jax.vmap(lambda b: jnp.bincount(b.reshape(-1), length=_OTSU_BINS))(bins)
  p = counts / jnp.maximum(counts.sum(axis=1, keepdims=True), 1)
  weight = jnp.cumsum(p, axis=1)
  mean = jnp.cumsum(p * jnp.arange(_OTSU_BINS), axis=1)
  total = mean[:, -1:]
  between = (total * weight - mean) ** 2 / jnp.maximum(weight * (1 - weight), 1e-9)
  return (jnp.argmax(between, axis=1) + 1.0) / _OTSU_BINS


def pseudo_masks(images: jax.Array, cues: Sequence[str] = ("contrast", "barrier"),
                 **kwargs) -> jax.Array:
  """(B, H, W, 3) RGB in [0, 1] -> (B, H, W) uint8 masks, 255 = foreground."""
  maps = saliency_map(images, cues, **kwargs)
  foreground = maps >= otsu_threshold(maps)[:, None, None]
  return jnp.where(foreground, 255, 0).astype(jnp.uint8)
