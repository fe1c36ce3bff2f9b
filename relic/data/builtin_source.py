"""``config.data.source='builtin'``: the generated shapes dataset (relic/data/builtin.py)."""

from __future__ import annotations

import ml_collections
import numpy as np
import tensorflow as tf

from relic.data import builtin, sources, splits


class BuiltinSource(sources.Source):
  """Splits 'train', 'test', 'test_ood'; 'validation' and 'val' mean 'test'. Masks always exist."""

  def __init__(self, data: ml_collections.ConfigDict):
    self._options = data.builtin
    self._cache_dir = data.cache_dir
    self._arrays: dict[str, dict[str, np.ndarray]] = {}

  def _resolve(self, split: str) -> tuple[str, int, int]:
    name, start, stop = splits.parse(split)
    resolved = splits.resolve_name(name, builtin.SPLITS)
    if resolved is None:
      raise ValueError(f"The built-in dataset has no split {name!r}; it has {builtin.SPLITS} "
                       "('validation' means 'test').")
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

  def reader(self, split: str, *, process_index: int, process_count: int,
             with_masks: bool) -> sources.Reader:
    name, first, last = self._resolve(split)
    arrays = self._load(name)
    index = first + sources.share(last - first, process_index, process_count)
    columns = {"image": arrays["image"][index], "label": arrays["label"][index]}
    if with_masks:
      columns["mask"] = arrays["mask"][index][..., None]
    return sources.IndexedReader(columns, last - first, _image_and_label,
                                 _mask if with_masks else None)


def _image_and_label(row) -> dict[str, tf.Tensor]:
  return {"image": row["image"], "label": row["label"]}


def _mask(row, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  del height, width  # the generated mask has the image's size
  return row["mask"]
