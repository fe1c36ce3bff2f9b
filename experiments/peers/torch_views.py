"""relic's views written again in PyTorch, for the PyTorch side of the comparison.

The same formulas as relic's own: the random-resized crop box of relic/data/crops.py (in NumPy)
and BYOL's photometric augmentation of relic/data/augment.py (in torch, batched), both driven by
one vector of uniforms per view laid out as relic/data/augment_spec.py says. Given the same
uniforms, the boxes are identical and the photometric output agrees with relic's to float
rounding (tests/test_peers.py). What differs and stays different: the random numbers themselves
(NumPy's generator here, JAX's and TensorFlow's in relic) and the bicubic kernel of the resize
(torch's a = -0.75 here, TensorFlow's a = -0.5 in relic).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from relic.data import augment_spec as spec

MAX_ATTEMPTS = 10
CROP_UNIFORMS = 2 * MAX_ATTEMPTS + 2
ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)


def random_resized_crop_box(u: np.ndarray, height: int, width: int, min_scale: float,
                            max_scale: float) -> tuple[int, int, int, int]:
  """``(top, left, crop_height, crop_width)`` from ``CROP_UNIFORMS`` uniforms, as relic's
  ``crops.random_resized_crop_box``: the first of ten candidates that fits, else the centred
  box with the aspect ratio clamped."""
  u = np.asarray(u, np.float32)
  h, w = np.float32(height), np.float32(width)
  area = h * w * (np.float32(min_scale) + np.float32(max_scale - min_scale) * u[:MAX_ATTEMPTS])
  log_lo, log_hi = np.float32(math.log(ASPECT_RANGE[0])), np.float32(math.log(ASPECT_RANGE[1]))
  aspect = np.exp(log_lo + (log_hi - log_lo) * u[MAX_ATTEMPTS:2 * MAX_ATTEMPTS])
  cand_w = np.round(np.sqrt(area * aspect))
  cand_h = np.round(np.sqrt(area / aspect))
  fits = (cand_w > 0) & (cand_w <= w) & (cand_h > 0) & (cand_h <= h)
  if fits.any():
    first = int(np.argmax(fits))
    crop_w, crop_h = max(cand_w[first], 1.0), max(cand_h[first], 1.0)
    top = np.floor(u[2 * MAX_ATTEMPTS] * (h - crop_h + 1.0))
    left = np.floor(u[2 * MAX_ATTEMPTS + 1] * (w - crop_w + 1.0))
  else:
    ratio = w / h
    crop_w = min(w if ratio <= ASPECT_RANGE[1] else np.round(h * ASPECT_RANGE[1]), w)
    crop_h = min(np.round(w / ASPECT_RANGE[0]) if ratio < ASPECT_RANGE[0] else h, h)
    crop_w, crop_h = max(crop_w, 1.0), max(crop_h, 1.0)
    top, left = np.floor((h - crop_h) / 2.0), np.floor((w - crop_w) / 2.0)
  top, left = min(top, h - crop_h), min(left, w - crop_w)
  return int(top), int(left), int(crop_h), int(crop_w)


@functools.lru_cache(maxsize=None)
def resize_matrix(length: int, size: int) -> np.ndarray:
  """(size, length): torch's bicubic resize of a 1-D signal of ``length`` samples to ``size``
  (align_corners False, no antialiasing), as a matrix: the resize applied to the identity."""
  identity = torch.eye(length).reshape(length, 1, 1, length)
  return F.interpolate(identity, size=(1, size), mode="bicubic",
                       align_corners=False).reshape(length, size).T.numpy().copy()


def crop_and_resize(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
  """(H, W, 3) uint8 -> (3, size, size) uint8: the box, bicubic, rounded as relic stores views.

  ``F.interpolate(mode='bicubic')``'s values, computed as two small matrix products (the resize
  is separable and linear), several times faster than the call on a tiny image."""
  top, left, crop_h, crop_w = box
  patch = np.asarray(image[top:top + crop_h, left:left + crop_w], np.float32)
  rows = resize_matrix(crop_h, size) @ patch.reshape(crop_h, crop_w * 3)     # (size, w * 3)
  out = rows.reshape(size, crop_w, 3).transpose(2, 0, 1) @ resize_matrix(crop_w, size).T
  return torch.from_numpy(np.round(np.clip(out, 0, 255)).astype(np.uint8))


def photometric(views: torch.Tensor, u: torch.Tensor, presets: str,
                params: spec.Photometric = spec.BYOL) -> torch.Tensor:
  """BYOL's augmentation of (N, 3, H, W) views in [0, 1]; ``u`` (N, NUM_UNIFORMS); ``presets``:
  one letter per view. Order as relic's: flip, jitter, grayscale, blur, solarise, clip."""
  if any(params.blur_prob(p) > 0 for p in presets):
    raise NotImplementedError("Blur is not written for the PyTorch side (the compared recipe "
                              "has none: data.blur=False).")
  p = spec.photometric_params(u, params)
  x = torch.where(p["flip"][:, None, None, None], views.flip(-1), views)
  x = torch.where(p["jitter"][:, None, None, None], color_jitter(x, p, u), x)
  x = torch.where(p["grayscale"][:, None, None, None], grayscale(x), x)
  solarize_prob = torch.tensor([spec.PRESETS[c].solarize_prob for c in presets])
  solarized = torch.where(x < spec.SOLARIZE_THRESHOLD, x, 1.0 - x)
  x = torch.where((u[:, spec.SOLARIZE] < solarize_prob)[:, None, None, None], solarized, x)
  return x.clamp(0.0, 1.0)


def _column(value: torch.Tensor) -> torch.Tensor:
  return value[:, None, None, None]


def color_jitter(x: torch.Tensor, p: dict, u: torch.Tensor) -> torch.Tensor:
  """Brightness, contrast, saturation and hue in each view's random order, clipping after each.

  Each slot applies each op only to the views that drew it there (4 op evaluations per view,
  not 16)."""
  ops = (lambda y, i: y + _column(p["brightness"][i]),
         lambda y, i: adjust_contrast(y, p["contrast"][i]),
         lambda y, i: adjust_saturation(y, p["saturation"][i]),
         lambda y, i: adjust_hue(y, p["hue"][i]))
  order = torch.argsort(u[:, spec.ORDER:spec.ORDER + len(ops)], dim=1)
  x = x.clone()
  for slot in range(len(ops)):
    for index, op in enumerate(ops):
      chosen = torch.nonzero(order[:, slot] == index).flatten()
      if len(chosen):
        x[chosen] = op(x[chosen], chosen).clamp(0.0, 1.0)
  return x


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
  mean = x.mean(dim=(2, 3), keepdim=True)
  return (x - mean) * _column(factor) + mean


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
  value = x.amax(dim=1, keepdim=True)
  chroma = value - x.amin(dim=1, keepdim=True)
  ratio = torch.minimum(_column(factor), value / chroma.clamp_min(1e-12))
  return value - (value - x) * ratio


def adjust_hue(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
  r, g, b = x[:, 0], x[:, 1], x[:, 2]
  value = x.amax(dim=1)
  chroma = value - x.amin(dim=1)
  inv_chroma = 1.0 / torch.where(chroma > 0, chroma, torch.ones_like(chroma))
  hue6 = torch.where(value == r, (g - b) * inv_chroma,
                     torch.where(value == g, (b - r) * inv_chroma + 2.0,
                                 (r - g) * inv_chroma + 4.0))
  hue6 = torch.where(chroma > 0, hue6, torch.zeros_like(hue6)) + 6.0 * delta[:, None, None]
  hue6 = torch.where(hue6 < 0.0, hue6 + 6.0, torch.where(hue6 >= 6.0, hue6 - 6.0, hue6))
  channels = []
  for n in (5.0, 3.0, 1.0):
    k = n + hue6
    k = torch.where(k >= 6.0, k - 6.0, k)
    channels.append(value - chroma * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
  return torch.stack(channels, dim=1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
  weights = torch.tensor(spec.GRAYSCALE_WEIGHTS, dtype=x.dtype)[None, :, None, None]
  return (x * weights).sum(dim=1, keepdim=True).expand_as(x)
