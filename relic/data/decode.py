"""Image and mask decoding on the host: any format tf.io.decode_image reads, as 3-channel uint8.

Grayscale, palette, 16-bit, CMYK and alpha images all come out as 8-bit RGB (alpha dropped);
GIFs give their first frame. Files TensorFlow cannot decode at all (corrupt, truncated, TIFF)
are dealt with before training: see :mod:`relic.data.image_check`.
"""

from __future__ import annotations

from relic.data.lazy_tf import tf


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
  """Encoded bytes -> ``(H, W, 3)`` uint8."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False, dtype=tf.uint8)
  image.set_shape([None, None, 3])
  return image


def decode_mask(encoded: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  """Encoded saliency mask -> ``(H, W, 1)`` uint8 at the image's size.

  An empty string (no mask for this image) gives an all-foreground mask, so the image is used
  as it is. A mask of another size is resized to the image (bilinear).
  """
  def read() -> tf.Tensor:
    mask = tf.io.decode_image(encoded, channels=0, expand_animations=False, dtype=tf.uint8)
    mask.set_shape([None, None, None])
    # Native channels (some formats, e.g. BMP, refuse a one-channel decode): grey (+ alpha)
    # keeps its first channel, colour is reduced to luminance.
    mask = tf.cond(tf.shape(mask)[-1] >= 3, lambda: tf.image.rgb_to_grayscale(mask[..., :3]),
                   lambda: mask[..., :1])
    same = tf.logical_and(tf.shape(mask)[0] == height, tf.shape(mask)[1] == width)
    return tf.cond(same, lambda: mask, lambda: tf.cast(
        tf.round(tf.image.resize(mask, [height, width], method="bilinear")), tf.uint8))

  return tf.cond(tf.strings.length(encoded) > 0, read,
                 lambda: tf.fill([height, width, 1], tf.constant(255, tf.uint8)))


def read_mask(path: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  """:func:`decode_mask` of the file at ``path``; '' (no mask) gives an all-foreground mask."""
  encoded = tf.cond(tf.strings.length(path) > 0, lambda: tf.io.read_file(path),
                    lambda: tf.constant(""))
  return decode_mask(encoded, height, width)
