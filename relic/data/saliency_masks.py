"""Saliency masks as data: the two-class segmentation source the saliency job refines its
network on, and the passes that feed the job (images to mask, masks to score).

``config.data.source='saliency_masks'``: the images of ``data.saliency_masks.images`` (any
source with a mask layout: 'tfds', 'folder', 'builtin'; read with the rest of ``config.data``)
and their masks from ``data.mask_path`` as classes 0 (background) and 1 (foreground, mask >=
128), image and mask resized to ``data.saliency_masks.size`` squared (0: as stored).
"""

from __future__ import annotations

from typing import Iterator

import jax
import ml_collections
import numpy as np

from relic.data.lazy_tf import tf
from relic.data import pipeline, seeds, sources

CLASSES = ("background", "foreground")


def base_data(data: ml_collections.ConfigDict, mask_path: str | None = None,
              source: str | None = None) -> ml_collections.ConfigDict:
  """A copy of ``data`` reading source ``source`` (default: ``data.saliency_masks.images``, else
  ``data.source``) with masks from ``mask_path`` (default: unchanged)."""
  base = ml_collections.ConfigDict(data.to_dict())
  base.source = source or data.saliency_masks.images or data.source
  if mask_path is not None:
    base.mask_path = mask_path
  return base


def mask_source(data: ml_collections.ConfigDict) -> sources.Source:
  """The image source of ``data``, which must name its masks (have a mask layout); one object
  per data config (a folder is scanned once)."""
  if not sources.source_class(data.source).mask_layout:
    with_layout = [n for n in sources.SOURCES
                   if getattr(sources.source_class(n, sources.DataSource), "mask_layout", "")]
    sources.fail("source", f"{data.source!r} takes no saliency-mask folder",
                 "use one of " + ", ".join(map(repr, with_layout)))
  return sources.get_source(ml_collections.ConfigDict({"data": data}))


class SaliencyMaskSource(sources.SegmentationSource):
  """See the module docstring."""

  cacheable = False   # the base source caches what is expensive

  def __init__(self, data: ml_collections.ConfigDict):
    self._base = mask_source(base_data(data))
    self._size = int(data.saliency_masks.size)

  @classmethod
  def check(cls, data: ml_collections.ConfigDict) -> None:
    if not data.saliency_masks.images or data.saliency_masks.images == "saliency_masks":
      sources.fail("saliency_masks.images", f"must name the source of the images, got "
                   f"{data.saliency_masks.images!r}", "use e.g. 'builtin', 'folder' or 'tfds'")
    base = base_data(data)
    if not base.mask_path:
      sources.fail("mask_path", "source 'saliency_masks' needs the folder of the masks",
                   "set config.data.mask_path=DIR (e.g. the saliency job's WORKDIR/masks)")
    base.mask_prob = 1.0
    sources.source_class(base.source).check(base)

  def num_examples(self, split: str) -> int:
    return self._base.num_examples(split)

  def class_names(self) -> tuple[str, ...]:
    return CLASSES

  def segmentation_reader(self, split: str, *, process_index: int, process_count: int,
                          shuffle: bool) -> sources.Reader:
    del shuffle
    return _TwoClassReader(self._base.reader(split, process_index=process_index,
                                             process_count=process_count, with_masks=True),
                           self._size)


class _TwoClassReader(sources.Reader):
  """A reader with masks whose records load to 'image' and a 0/1 'mask'."""

  def __init__(self, base: sources.Reader, size: int):
    self._base, self._size = base, size
    self.size, self.global_size, self.has_masks = base.size, base.global_size, False

  def epoch(self, root: tf.Tensor, epoch: tf.Tensor, shuffle: bool) -> tf.data.Dataset:
    return self._base.epoch(root, epoch, shuffle)

  def load(self, record) -> dict[str, tf.Tensor]:
    image = self._base.load(record)["image"]
    shape = tf.shape(image)
    mask = self._base.load_mask(record, shape[0], shape[1])
    if self._size:
      image = tf.cast(tf.round(tf.clip_by_value(tf.image.resize(
          image, [self._size, self._size], antialias=True), 0, 255)), tf.uint8)
      mask = tf.image.resize(mask, [self._size, self._size], method="nearest")
    return {"image": image, "mask": tf.cast(mask[..., 0] >= 128, tf.uint8)}


def _square(image: tf.Tensor, size: int) -> tf.Tensor:
  """(H, W, C) uint8 -> (size, size, C) float32 in [0, 1] (antialiased bilinear)."""
  image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, [size, size], antialias=True)
  return tf.clip_by_value(image, 0.0, 1.0)


def _reader(data: ml_collections.ConfigDict, split: str, with_masks: bool) -> sources.Reader:
  return mask_source(data).reader(split, process_index=jax.process_index(),
                                  process_count=jax.process_count(), with_masks=with_masks)


def _records(reader: sources.Reader) -> tf.data.Dataset:
  """The share's records in stored order (the same order in every pass)."""
  return reader.epoch(seeds.root_key(0, jax.process_index()), tf.constant(0, tf.int64), False)


def mask_names(data: ml_collections.ConfigDict, split: str) -> list[str]:
  """The mask names of this process's share of ``split``, in stored order; nothing decoded."""
  reader = _reader(data, split, with_masks=False)
  names = _records(reader).map(reader.mask_name, num_parallel_calls=tf.data.AUTOTUNE)
  return [n.decode() for n in names.as_numpy_iterator()]


def image_batches(data: ml_collections.ConfigDict, split: str, *, size: int, batch_size: int,
                  skip: frozenset[str] = frozenset()) -> Iterator[dict[str, np.ndarray]]:
  """One pass over this process's share of ``split`` in stored order, without the examples
  whose mask name is in ``skip`` (never decoded).

  Yields 'name' (b,) bytes, 'image' (b, size, size, 3) float32 in [0, 1] and 'valid' (b,) bool;
  the last batch is padded with invalid examples.
  """
  reader = _reader(data, split, with_masks=False)
  table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
      tf.constant(sorted(skip) or [""], tf.string), tf.ones([max(len(skip), 1)], tf.bool)), False)

  def example(record):
    return {"name": reader.mask_name(record), "image": _square(reader.load(record)["image"], size),
            "valid": tf.constant(True)}

  ds = _records(reader).filter(lambda record: tf.logical_not(table.lookup(reader.mask_name(record))))
  ds = ds.map(example, num_parallel_calls=pipeline.parallel_calls(data), deterministic=True)
  yield from _padded(ds, batch_size, data, {"name": tf.constant(""),
                                            "image": tf.zeros([size, size, 3]),
                                            "valid": tf.constant(False)})


def mask_batches(data: ml_collections.ConfigDict, split: str, *, size: int, batch_size: int,
                 masks: dict[str, str]) -> Iterator[dict[str, np.ndarray]]:
  """One pass over this process's share of ``split`` reading, for each example, the mask of
  every folder of ``masks`` (key -> folder; '' = the source's own exact masks, built-in) at
  ``size`` x ``size``.

  Yields one (b, size, size) uint8 array per key of ``masks`` (255 = foreground; an example
  without a file reads all-foreground) and 'valid' (b,) bool; the last batch is padded.
  """
  readers = {key: _reader(base_data(data, mask_path=folder), split, with_masks=True)
             for key, folder in masks.items()}

  def example(*records):
    out = {"valid": tf.constant(True)}
    for (key, reader), record in zip(readers.items(), records):
      shape = tf.shape(reader.load(record)["image"])
      mask = reader.load_mask(record, shape[0], shape[1])
      out[key] = tf.cast(tf.round(tf.image.resize(mask, [size, size], antialias=True)[..., 0]),
                         tf.uint8)
    return out

  ds = tf.data.Dataset.zip(tuple(_records(r) for r in readers.values()))
  ds = ds.map(example, num_parallel_calls=pipeline.parallel_calls(data), deterministic=True)
  padding = {key: tf.zeros([size, size], tf.uint8) for key in masks}
  yield from _padded(ds, batch_size, data, {**padding, "valid": tf.constant(False)})


def _padded(ds: tf.data.Dataset, batch_size: int, data: ml_collections.ConfigDict,
            padding: dict[str, tf.Tensor]) -> Iterator[dict[str, np.ndarray]]:
  """Batches of ``ds``, the last one completed with ``padding`` examples."""
  ds = ds.batch(batch_size).map(lambda batch: _pad_batch(batch, batch_size, padding))
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(pipeline.tf_options(data))
  yield from ds.as_numpy_iterator()


def _pad_batch(batch: dict[str, tf.Tensor], batch_size: int,
               padding: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  missing = batch_size - tf.shape(batch["valid"])[0]
  return {k: tf.concat([v, tf.repeat(padding[k][None], missing, axis=0)], axis=0)
          for k, v in batch.items()}
