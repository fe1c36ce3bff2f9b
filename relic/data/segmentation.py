"""Input pipeline of semantic-segmentation transfer (BYOL's protocol, which ReLICv2 follows).

Training: each image is rescaled by a random factor in [min_scale, max_scale] (image bilinear,
mask nearest-neighbour, so class ids are never blended), padded bottom/right to ``crop_size``
if smaller (image with the ImageNet mean colour, which the model's normalisation maps to 0;
mask with :data:`IGNORE`), cropped to ``crop_size`` at a random position and flipped left-right
with probability 1/2; image and mask always share the window and the flip. Evaluation: the
central ``eval_size`` crop where an image is larger, the same padding where it is smaller, no
resizing.

Data: ``config.data``, a SegmentationSource ('voc2012', 'cityscapes', 'builtin'; see
relic/data/sources.py) and its train / eval splits. Determinism and sharding work as in
relic/data/pipeline.py: each process reads a fixed disjoint share; every random draw is keyed by
(seed, process, epoch, position in the epoch), so a training stream is a pure function of
(seed, step) whatever tf.data's parallelism, and ``start_step`` starts in the right epoch and
skips the records before it undecoded.
"""

from __future__ import annotations

from typing import Iterator

import jax
import ml_collections
from absl import logging

from relic.data.lazy_tf import tf
from relic.data import pipeline, seeds, sources

__all__ = ["IGNORE", "MEAN_RGB", "num_classes", "class_names", "num_examples", "check",
           "train_batches", "eval_batches", "train_example", "eval_example"]

IGNORE = sources.IGNORE   # mask value of void / border / padding pixels: never scored
MEAN_RGB = (0.485, 0.456, 0.406)
_MAX_EPOCHS = 2 ** 40
_SCALE, _CROP, _FLIP = 0, 1, 2   # streams of an example's key


def _graph_function(fn):
  """Traced once, without autograph: the example functions have no Python control flow on
  tensors."""
  return tf.function(fn, autograph=False)


def _source(config: ml_collections.ConfigDict) -> sources.SegmentationSource:
  return sources.get_source(config, sources.SegmentationSource)


def num_classes(config: ml_collections.ConfigDict) -> int:
  """Scored classes: 21 for VOC 2012 (background + 20), 19 for Cityscapes, 11 built-in."""
  return len(class_names(config))


def class_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return _source(config).class_names()


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  """Images of ``split`` over all processes; slicing allowed ('train_aug[:2119]')."""
  return _source(config).num_examples(split)


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError, naming what is missing and how to provide it, when the source or one of
  its train / eval splits cannot be read, or a split is empty. Nothing is decoded."""
  sources.source_class(config.data.source, sources.SegmentationSource).check(config.data)


def _pad(image: tf.Tensor, mask: tf.Tensor, height, width) -> tuple[tf.Tensor, tf.Tensor]:
  """Pads bottom / right up to (height, width): image with the mean colour, mask with IGNORE."""
  shape = tf.shape(mask)
  paddings = [[0, tf.maximum(height - shape[0], 0)], [0, tf.maximum(width - shape[1], 0)]]
  # Channel by channel, so the mean colour is exact (no subtract-and-add rounding).
  image = tf.stack([tf.pad(image[..., c], paddings, constant_values=MEAN_RGB[c])
                    for c in range(3)], axis=-1)
  return image, tf.pad(mask, paddings, constant_values=IGNORE)


def train_example(image: tf.Tensor, mask: tf.Tensor, key: tf.Tensor, *, crop_size: int,
                  min_scale: float, max_scale: float) -> tuple[tf.Tensor, tf.Tensor]:
  """Random scale, pad, crop and flip of one example, as one stateless function of ``key``.

  Args:
    image: (H, W, 3) uint8.
    mask: (H, W) integer class ids.
    key: the example's stateless key (relic/data/seeds.py).

  Returns:
    (crop_size, crop_size, 3) float32 in [0, 1] and (crop_size, crop_size) int32.
  """
  scale = tf.random.stateless_uniform([], seeds.fold_in(key, _SCALE), min_scale, max_scale)
  size = tf.cast(tf.shape(mask), tf.float32) * scale
  size = tf.maximum(tf.cast(tf.round(size), tf.int32), 1)
  image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, size, method="bilinear")
  mask = tf.image.resize(tf.cast(mask, tf.int32)[..., None], size, method="nearest")[..., 0]
  image, mask = _pad(image, mask, crop_size, crop_size)
  shape = tf.shape(mask)
  slack = shape - crop_size     # >= 0 after padding
  u = tf.random.stateless_uniform([2], seeds.fold_in(key, _CROP))
  corner = tf.minimum(tf.cast(u * tf.cast(slack + 1, tf.float32), tf.int32), slack)
  image = tf.slice(image, [corner[0], corner[1], 0], [crop_size, crop_size, 3])
  mask = tf.slice(mask, corner, [crop_size, crop_size])
  flip = tf.random.stateless_uniform([], seeds.fold_in(key, _FLIP)) < 0.5
  image, mask = tf.cond(flip, lambda: (tf.reverse(image, [1]), tf.reverse(mask, [1])),
                        lambda: (image, mask))
  image.set_shape([crop_size, crop_size, 3])
  mask.set_shape([crop_size, crop_size])
  return image, mask


def eval_example(image: tf.Tensor, mask: tf.Tensor,
                 size: tuple[int, int]) -> tuple[tf.Tensor, tf.Tensor]:
  """Central crop to ``size`` = (height, width) where larger, padding where smaller.

  Returns (height, width, 3) float32 in [0, 1] and (height, width) int32.
  """
  height, width = size
  shape = tf.shape(mask)
  keep = tf.minimum(shape, [height, width])
  corner = (shape - keep) // 2
  image = tf.slice(tf.cast(image, tf.float32) / 255.0, [corner[0], corner[1], 0],
                   [keep[0], keep[1], 3])
  mask = tf.slice(tf.cast(mask, tf.int32), corner, keep)
  image, mask = _pad(image, mask, height, width)
  image.set_shape([height, width, 3])
  mask.set_shape([height, width])
  return image, mask


def _reader(config, split: str, shuffle: bool) -> sources.Reader:
  return _source(config).segmentation_reader(split, process_index=jax.process_index(),
                                             process_count=jax.process_count(), shuffle=shuffle)


def train_batches(config: ml_collections.ConfigDict, *, batch_size: int, seed: int,
                  start_step: int = 0, split: str | None = None) -> Iterator[dict]:
  """Endless, shuffled, augmented batches of this process's share of ``split``.

  Args:
    config: the experiment config (reads ``config.segmentation`` and ``config.data``).
    batch_size: this process's share of the global batch.
    seed: with ``start_step`` fixes every batch.
    start_step: batches to skip: yields exactly what the stream from step 0 yields from its
      ``start_step``-th batch on, without decoding the skipped examples.
    split: default ``config.data.train_split``.

  Yields:
    'image' (b, crop, crop, 3) float32 in [0, 1], 'mask' (b, crop, crop) int32 with IGNORE,
    'valid' (b,) bool (all True).
  """
  if batch_size <= 0 or start_step < 0:
    raise ValueError(f"Need batch_size > 0 and start_step >= 0, got {batch_size}, {start_step}.")
  s = config.segmentation
  split = split or config.data.train_split
  reader = _reader(config, split, shuffle=True)
  process_index = jax.process_index()
  if reader.size == 0:
    raise ValueError(f"Split {split!r} has no examples for process {process_index}.")
  root = seeds.root_key(seed, process_index)
  # The stream runs through the epochs without dropping partial batches: batch k starts at
  # element k * batch_size.
  first_epoch, offset = divmod(start_step * batch_size, reader.size)
  logging.info("Segmentation training input: %s %r, %d of %d images on process %d; step %d = "
               "epoch %d, image %d.", config.data.source, split, reader.size, reader.global_size,
               process_index, start_step, first_epoch, offset)

  @_graph_function
  def example(epoch: tf.Tensor, position: tf.Tensor, record) -> dict[str, tf.Tensor]:
    loaded = reader.load(record)
    image, mask = train_example(loaded["image"], loaded["mask"],
                                seeds.example_key(root, epoch, position),
                                crop_size=s.crop_size, min_scale=s.min_scale,
                                max_scale=s.max_scale)
    return {"image": image, "mask": mask, "valid": tf.constant(True)}

  def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
    ds = reader.epoch(root, epoch, shuffle=True).enumerate()
    return ds.map(lambda position, record: (epoch, position, record))

  _probe(reader, root, example, split)
  ds = one_epoch(tf.constant(first_epoch, tf.int64)).skip(offset)
  ds = ds.concatenate(tf.data.Dataset.range(first_epoch + 1, _MAX_EPOCHS).flat_map(one_epoch))
  ds = ds.map(example, num_parallel_calls=pipeline.parallel_calls(config.data), deterministic=True)
  # A last resort for a corrupt file met hours into training; the probe above makes sure
  # that not every example fails.
  ds = ds.ignore_errors(log_warning=True)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(pipeline.tf_options(config.data)).as_numpy_iterator()


def _probe(reader: sources.Reader, root: tf.Tensor, example, split: str) -> None:
  """Produces the split's first stored example with errors raised: a systematic problem (an
  undecodable mask format, image and mask of different sizes) fails here, at start-up, instead
  of being skipped forever. Unshuffled, so no shuffle buffer is filled for it."""
  zero = tf.constant(0, tf.int64)
  ds = reader.epoch(root, zero, shuffle=False).take(1)
  try:
    next(iter(ds.map(lambda record: example(zero, zero, record))))
  except tf.errors.OpError as e:
    raise RuntimeError(f"The first example of split {split!r} cannot be read: "
                       f"{e.message}") from None


def eval_batches(config: ml_collections.ConfigDict, *, split: str,
                 batch_size: int) -> Iterator[dict]:
  """One pass over this process's share of ``split`` in stored order, for scoring.

  Yields:
    'image' (b, H, W, 3) float32 in [0, 1], 'mask' (b, H, W) int32 with IGNORE and 'valid'
    (b,) bool, (H, W) = ``config.segmentation.eval_size``. The pass is padded with invalid
    examples (mean-colour image, all-IGNORE mask) to :func:`relic.data.pipeline.eval_num_batches`
    batches on every process, so every image counts exactly once over all processes. A file
    that cannot be read is an error: skipping it would bias the score.
  """
  if batch_size <= 0:
    raise ValueError(f"Need batch_size > 0, got {batch_size}.")
  height, width = config.segmentation.eval_size
  reader = _reader(config, split, shuffle=False)
  zero = tf.constant(0, tf.int64)

  @_graph_function
  def example(record) -> dict[str, tf.Tensor]:
    loaded = reader.load(record)
    image, mask = eval_example(loaded["image"], loaded["mask"], (height, width))
    return {"image": image, "mask": mask, "valid": tf.constant(True)}

  ds = reader.epoch(seeds.root_key(0, jax.process_index()), zero, shuffle=False)
  ds = ds.map(example, num_parallel_calls=pipeline.parallel_calls(config.data), deterministic=True)
  padding = {"image": tf.broadcast_to(tf.constant(MEAN_RGB, tf.float32), [height, width, 3]),
             "mask": tf.fill([height, width], IGNORE), "valid": tf.constant(False)}
  total = pipeline.eval_num_batches(reader.global_size, jax.process_count(), batch_size)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat()).take(total * batch_size)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(pipeline.tf_options(config.data)).as_numpy_iterator()

