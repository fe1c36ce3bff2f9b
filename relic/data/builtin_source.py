"""``config.data.source='builtin'``: the generated shapes dataset (relic/data/builtin.py).

A Source (the shape's class; its exact mask the saliency mask) and a SegmentationSource (class
``label + 1`` on the object's mask, 0 elsewhere): segmentation without a download.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from relic.data.lazy_tf import tf
from relic.data import builtin, sources, splits


class BuiltinSource(sources.Source, sources.SegmentationSource):
  """Splits 'train', 'test', 'test_ood'; 'validation' and 'val' mean 'test'. Masks always exist."""

  def __init__(self, data: ml_collections.ConfigDict):
    self._options = data.builtin
    self._cache_dir = data.cache_dir
    self._arrays: dict[str, dict[str, np.ndarray]] = {}

  @classmethod
  def check(cls, data: ml_collections.ConfigDict) -> None:
    o = data.builtin
    if min(o.num_train, o.num_test, o.image_size) <= 0:
      sources.fail("builtin", f"sizes must be positive, got num_train={o.num_train}, "
                   f"num_test={o.num_test}, image_size={o.image_size}", "use e.g. 10000, 2000, 64")
    sources.check_split_fields(data, cls(data).num_examples)

  def _resolve(self, split: str) -> tuple[str, int, int]:
    name, start, stop = sources.parse_split(split)
    resolved = splits.resolve_name(name, builtin.SPLITS)
    if resolved is None:
      raise sources.SplitError(split, f"the built-in dataset has no split {name!r}",
                               f"choose one of {builtin.SPLITS} ('validation' and 'val' mean "
                               "'test')")
    size = self._options.num_train if resolved == "train" else self._options.num_test
    return (resolved,) + splits.bounds(start, stop, size)

  def _load(self, name: str) -> dict[str, np.ndarray]:
    if name not in self._arrays:
      o = self._options
      self._arrays[name] = builtin.load(
          name, num_examples=o.num_train if name == "train" else o.num_test,
          image_size=o.image_size, seed=o.seed, cache_dir=self._cache_dir)
    return self._arrays[name]

  def num_examples(self, split: str) -> int:
    _, first, last = self._resolve(split)
    return last - first

  def num_classes(self) -> int:
    return builtin.NUM_CLASSES

  def split_names(self) -> tuple[str, ...]:
    return builtin.SPLITS

  def class_names(self) -> tuple[str, ...]:
    return ("background",) + builtin.SHAPES

  def _share(self, split: str, process_index: int,
             process_count: int) -> tuple[dict[str, np.ndarray], int]:
    """The arrays of this process's share of ``split``, and the split's size."""
    name, first, last = self._resolve(split)
    index = first + sources.share(last - first, process_index, process_count)
    return {k: v[index] for k, v in self._load(name).items()}, last - first

  def reader(self, split: str, *, process_index: int, process_count: int,
             with_masks: bool) -> sources.Reader:
    arrays, size = self._share(split, process_index, process_count)
    columns = {"image": arrays["image"], "label": arrays["label"]}
    if with_masks:
      columns["mask"] = arrays["mask"][..., None]
    return sources.IndexedReader(columns, size, lambda row: {k: row[k] for k in ("image", "label")},
                                 _mask if with_masks else None)

  def segmentation_reader(self, split: str, *, process_index: int, process_count: int,
                          shuffle: bool) -> sources.Reader:
    del shuffle  # an index permutes the whole split
    arrays, size = self._share(split, process_index, process_count)
    masks = np.where(arrays["mask"] > 127, arrays["label"][:, None, None] + 1, 0)
    return sources.IndexedReader({"image": arrays["image"], "mask": masks.astype(np.uint8)},
                                 size, lambda row: {"image": row["image"], "mask": row["mask"]})


def _mask(row, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  del height, width  # the generated mask has the image's size
  return row["mask"]
