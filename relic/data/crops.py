"""Crop boxes and resizing on the host (tf.data): random-resized crops and centre crops."""

from __future__ import annotations

import math

from relic.data.lazy_tf import tf

# Uniforms one random-resized crop consumes: per attempt an area and a log-aspect, plus the
# two offsets of the chosen box.
MAX_ATTEMPTS = 10
CROP_UNIFORMS = 2 * MAX_ATTEMPTS + 2
ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)


def random_resized_crop_box(u: tf.Tensor, height: tf.Tensor, width: tf.Tensor, min_scale: float,
                            max_scale: float) -> tuple[tf.Tensor, ...]:
  """torchvision's RandomResizedCrop box from ``CROP_UNIFORMS`` uniforms ``u``.

  Up to ten candidate boxes with area ~ U(min_scale, max_scale) of the image and aspect ratio
  log-uniform in [3/4, 4/3]; the first that fits is used. When none fits (very elongated
  images) the fallback is the largest centred box with the aspect ratio clamped to the range.
  All candidates are computed at once (no loop), and the randomness is entirely in ``u``.

  Returns:
    ``(top, left, crop_height, crop_width)`` int32 scalars; the box lies inside the image and
    is at least one pixel.
  """
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  area = h * w * (min_scale + (max_scale - min_scale) * u[:MAX_ATTEMPTS])
  log_lo, log_hi = math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1])
  aspect = tf.exp(log_lo + (log_hi - log_lo) * u[MAX_ATTEMPTS:2 * MAX_ATTEMPTS])
  cand_w = tf.round(tf.sqrt(area * aspect))
  cand_h = tf.round(tf.sqrt(area / aspect))
  fits = (cand_w > 0) & (cand_w <= w) & (cand_h > 0) & (cand_h <= h)
  first = tf.argmax(tf.cast(fits, tf.int32))
  # Fallback: whole image, aspect ratio clamped to the range.
  ratio = w / h
  fb_w = tf.where(ratio < ASPECT_RANGE[0], w,
                  tf.where(ratio > ASPECT_RANGE[1], tf.round(h * ASPECT_RANGE[1]), w))
  fb_h = tf.where(ratio < ASPECT_RANGE[0], tf.round(w / ASPECT_RANGE[0]),
                  tf.where(ratio > ASPECT_RANGE[1], h, h))
  any_fits = tf.reduce_any(fits)
  crop_w = tf.where(any_fits, cand_w[first], tf.minimum(fb_w, w))
  crop_h = tf.where(any_fits, cand_h[first], tf.minimum(fb_h, h))
  crop_w = tf.maximum(crop_w, 1.0)
  crop_h = tf.maximum(crop_h, 1.0)
  top = tf.where(any_fits, tf.floor(u[2 * MAX_ATTEMPTS] * (h - crop_h + 1.0)),
                 tf.floor((h - crop_h) / 2.0))
  left = tf.where(any_fits, tf.floor(u[2 * MAX_ATTEMPTS + 1] * (w - crop_w + 1.0)),
                  tf.floor((w - crop_w) / 2.0))
  top = tf.minimum(top, h - crop_h)
  left = tf.minimum(left, w - crop_w)
  return tuple(tf.cast(v, tf.int32) for v in (top, left, crop_h, crop_w))


def center_crop_box(height: tf.Tensor, width: tf.Tensor,
                    fraction: float) -> tuple[tf.Tensor, ...]:
  """Centred square of side ``fraction`` times the short side (0.875 = the 224/256 crop)."""
  side = tf.maximum(tf.cast(tf.round(fraction * tf.cast(tf.minimum(height, width), tf.float32)),
                            tf.int32), 1)
  return (height - side) // 2, (width - side) // 2, side, side


def crop(image: tf.Tensor, box: tuple[tf.Tensor, ...]) -> tf.Tensor:
  top, left, crop_h, crop_w = box
  return image[top:top + crop_h, left:left + crop_w]


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """Bicubic resize to ``size`` x ``size``; float32 in the input's value range (not clipped).

  Bicubic without antialiasing, as BYOL's pipeline (tf.image.resize, method BICUBIC).
  """
  return tf.image.resize(image, [size, size], method=tf.image.ResizeMethod.BICUBIC)
