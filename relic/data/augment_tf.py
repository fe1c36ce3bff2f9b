"""BYOL's photometric augmentation in TensorFlow, for ``config.data.augment_on_device=False``.

Same parameters and order as the JAX version (:mod:`relic.data.augment`), both derived from
:mod:`relic.data.augment_spec`; here each op runs under ``tf.cond`` so the host only pays for
the ops a view actually draws. Used when the accelerator step should not spend time on
augmentation, or to run the pipeline without JAX.
"""

from __future__ import annotations


from relic.data.lazy_tf import tf
from relic.data import augment_spec as spec


def augment_image(image: tf.Tensor, u: tf.Tensor, preset: str, radius: int,
                  photometric: spec.Photometric = spec.BYOL) -> tf.Tensor:
  """One (H, W, 3) float32 image in [0, 1]; ``u``: its ``NUM_UNIFORMS`` uniforms."""
  p = spec.photometric_params(u, photometric)
  settings = spec.PRESETS[preset]
  x = tf.cond(p["flip"], lambda: tf.reverse(image, axis=[1]), lambda: image)
  x = tf.cond(p["jitter"], lambda: color_jitter(x, p, u), lambda: x)
  x = tf.cond(p["grayscale"], lambda: grayscale(x), lambda: x)
  if photometric.blur_prob(preset) > 0:
    x = tf.cond(u[spec.BLUR] < photometric.blur_prob(preset),
                lambda: gaussian_blur(x, p["sigma"], radius), lambda: x)
  if settings.solarize_prob > 0:
    x = tf.cond(u[spec.SOLARIZE] < settings.solarize_prob, lambda: solarize(x), lambda: x)
  return tf.clip_by_value(x, 0.0, 1.0)


def color_jitter(x: tf.Tensor, p: dict[str, tf.Tensor], u: tf.Tensor) -> tf.Tensor:
  """The four jitter ops in the random order given by ``argsort`` of the ORDER uniforms."""
  branches = [lambda y: tf.image.adjust_brightness(y, p["brightness"]),
              lambda y: tf.image.adjust_contrast(y, p["contrast"]),
              lambda y: tf.image.adjust_saturation(y, p["saturation"]),
              lambda y: tf.image.adjust_hue(y, p["hue"])]
  order = tf.argsort(u[spec.ORDER:spec.ORDER + len(branches)])
  for slot in range(len(branches)):
    x = tf.switch_case(order[slot], [lambda f=f, y=x: f(y) for f in branches])
    x = tf.clip_by_value(x, 0.0, 1.0)
  return x


def grayscale(x: tf.Tensor) -> tf.Tensor:
  gray = tf.tensordot(x, tf.constant(spec.GRAYSCALE_WEIGHTS, x.dtype), axes=[[-1], [-1]])
  return tf.tile(gray[..., None], [1, 1, 3])


def gaussian_blur(x: tf.Tensor, sigma: tf.Tensor, radius: int) -> tf.Tensor:
  """Separable Gaussian blur with zero 'SAME' padding, horizontal then vertical (BYOL)."""
  if radius == 0:
    return x
  taps = tf.range(-radius, radius + 1, dtype=tf.float32)
  kernel = tf.exp(-taps ** 2 / (2.0 * sigma ** 2))
  kernel = kernel / tf.reduce_sum(kernel)
  size = 2 * radius + 1
  horizontal = tf.tile(tf.reshape(kernel, [1, size, 1, 1]), [1, 1, 3, 1])
  vertical = tf.tile(tf.reshape(kernel, [size, 1, 1, 1]), [1, 1, 3, 1])
  y = tf.nn.depthwise_conv2d(x[None], horizontal, strides=[1, 1, 1, 1], padding="SAME")
  y = tf.nn.depthwise_conv2d(y, vertical, strides=[1, 1, 1, 1], padding="SAME")
  return y[0]


def solarize(x: tf.Tensor) -> tf.Tensor:
  return tf.where(x < spec.SOLARIZE_THRESHOLD, x, 1.0 - x)
