"""``config.data.source='cityscapes'``: tfds ``cityscapes/semantic_segmentation`` (fine labels).

Read from ``config.data.data_dir`` by the tfds source's blocks (relic/data/tfds_source.py); its
labels are Cityscapes labelIds, mapped to the 19 trainIds of the benchmark (the others are
:data:`IGNORE`). Splits 'train', 'validation' ('val' means it) and 'test', tfds slicing allowed.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from relic.data.lazy_tf import tf
from relic.data import decode, sources, splits, tfds_source
from relic.errors import ConfigError

IGNORE = sources.IGNORE
CITYSCAPES = "cityscapes/semantic_segmentation"
CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
           "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
           "bus", "train", "motorcycle", "bicycle")
_SPLITS = ("train", "validation", "test")
# trainId of each labelId 0..33 (cityscapesScripts' labels.py); classes not evaluated -> IGNORE.
_TRAIN_IDS = np.full(34, IGNORE, np.int32)
_TRAIN_IDS[[7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]] = range(19)
# Undecoded full-resolution scenes (a few MB each) held for shuffling, per process.
_SHUFFLE_BUFFER = 256
_MIN_BLOCK_SIZE = 64


def cityscapes_train_ids(label_ids: tf.Tensor) -> tf.Tensor:
  """Cityscapes labelIds (any integer dtype, -1 = license plate) -> uint8 trainIds / IGNORE."""
  ids = tf.cast(label_ids, tf.int32)
  known = (ids >= 0) & (ids < len(_TRAIN_IDS))
  mapped = tf.gather(tf.constant(_TRAIN_IDS), tf.clip_by_value(ids, 0, len(_TRAIN_IDS) - 1))
  return tf.cast(tf.where(known, mapped, IGNORE), tf.uint8)


def tfds_split(split: str) -> str:
  """The tfds split string: 'val[:10]' -> 'validation[:10]'."""
  name, start, stop = sources.parse_split(split)
  resolved = splits.resolve_name(name, _SPLITS)
  if resolved is None:
    raise sources.SplitError(split, "Cityscapes has no such split",
                             f"use one of {_SPLITS} ('val' means 'validation'), slicing allowed")
  return resolved if start is None and stop is None else f"{resolved}[{start or ''}:{stop or ''}]"


class CityscapesReader(tfds_source.TfdsReader):
  """Blocks of a tfds split whose records carry the label image."""

  def _record(self, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {"image": example["image_left"], "mask": example["segmentation_label"]}

  def load(self, record) -> dict[str, tf.Tensor]:
    label = tf.io.decode_png(record["mask"], channels=1)[..., 0]
    return {"image": decode.decode_image(record["image"]), "mask": cityscapes_train_ids(label)}


class CityscapesSource(sources.SegmentationSource):
  """The fine-label scenes of tfds Cityscapes; see the module docstring."""

  cacheable = False   # as the tfds source

  def __init__(self, data: ml_collections.ConfigDict):
    self._tfds = tfds_source.TfdsSource(data, dataset=CITYSCAPES)
    self._shuffle_buffer = min(data.shuffle_buffer, _SHUFFLE_BUFFER)

  @classmethod
  def check(cls, data: ml_collections.ConfigDict) -> None:
    tfds_source.check_prepared(CITYSCAPES, data.data_dir, field="data_dir")  # no TensorFlow
    source = cls(data)

    def prepared_size(split: str) -> int:   # split metadata alone does not prove the records
      source._tfds.as_dataset(tfds_split(split))
      return source.num_examples(split)

    try:
      sources.check_split_fields(data, prepared_size)
    except tfds_source.DatasetMissingError as e:
      raise ConfigError(f"config.data.data_dir: {e}") from None

  def class_names(self) -> tuple[str, ...]:
    return CLASSES

  def num_examples(self, split: str) -> int:
    return self._tfds.num_examples(tfds_split(split))

  def segmentation_reader(self, split: str, *, process_index: int, process_count: int,
                          shuffle: bool) -> sources.Reader:
    # More blocks per process mix a shuffled epoch better for the same buffer.
    datasets, global_size = self._tfds.blocks(tfds_split(split), process_index, process_count,
                                              max_blocks=16 if shuffle else 1,
                                              min_block_size=_MIN_BLOCK_SIZE)
    return CityscapesReader(datasets, global_size, self._shuffle_buffer, "image_left", None)
