"""``config.data.source='builtin'``: the generated shapes dataset (relic/data/builtin.py).

A Source (the shape's class; its exact mask the saliency mask) and a SegmentationSource (class
``label + 1`` on the object's mask, 0 elsewhere): segmentation without a download.

With ``config.data.mask_path = MASKDIR`` the saliency masks are read from files instead of the
exact ones: the mask of example ``i`` of split ``s`` is ``MASKDIR/s/<i, 5 digits>.png``, ``i``
its position in the whole split (``test[100:]`` starts at 00100); the layout the saliency job
writes. An example without a file is used unmasked, as in a folder source.
"""

from __future__ import annotations

import pathlib

import ml_collections
import numpy as np
from absl import logging

from relic.data.lazy_tf import tf
from relic.data import builtin, decode, sources, splits


class BuiltinSource(sources.Source, sources.SegmentationSource):
  """Splits 'train', 'test', 'test_ood'; 'validation' and 'val' mean 'test'. Masks always exist
  (the exact ones, or ``data.mask_path``'s files)."""

  mask_layout = "MASKDIR/<split>/<index in the split, 5 digits>.png, e.g. train/00042.png"

  def __init__(self, data: ml_collections.ConfigDict):
    self._options = data.builtin
    self._cache_dir = data.cache_dir
    self._mask_root = pathlib.Path(data.mask_path).expanduser() if data.mask_path else None
    self._arrays: dict[str, dict[str, np.ndarray]] = {}

  @classmethod
  def check(cls, data: ml_collections.ConfigDict) -> None:
    o = data.builtin
    if min(o.num_train, o.num_test, o.image_size) <= 0:
      sources.fail("builtin", f"sizes must be positive, got num_train={o.num_train}, "
                   f"num_test={o.num_test}, image_size={o.image_size}", "use e.g. 10000, 2000, 64")
    if data.mask_path and not pathlib.Path(data.mask_path).expanduser().is_dir():
      sources.fail("mask_path", f"mask folder {data.mask_path!r} not found", "point it to the "
                   "masks of the saliency job (its WORKDIR/masks), or set it to '' for the "
                   "exact object masks")
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
    """The arrays of this process's share of ``split`` (with each example's 'mask_name'), and
    the split's size."""
    name, first, last = self._resolve(split)
    index = first + sources.share(last - first, process_index, process_count)
    arrays = {k: v[index] for k, v in self._load(name).items()}
    arrays["mask_name"] = np.array([f"{name}/{i:05d}" for i in index], dtype=str)
    return arrays, last - first

  def _mask_files(self, names: np.ndarray) -> np.ndarray:
    """The readable file under ``data.mask_path`` of each mask name ('' = none)."""
    from relic.data.folder_source import mask_index  # pylint: disable=import-outside-toplevel
    found = mask_index(self._mask_root, builtin.cache_root(self._cache_dir))
    paths = np.array([found.get(n, "") for n in names], dtype=str)
    missing = int(np.sum(paths == ""))
    if missing:
      logging.warning("%d of %d built-in images have no (readable) mask under %s; they are "
                      "used unmasked.", missing, len(names), self._mask_root)
    return paths

  def reader(self, split: str, *, process_index: int, process_count: int,
             with_masks: bool) -> sources.Reader:
    arrays, size = self._share(split, process_index, process_count)
    columns = {"image": arrays["image"], "label": arrays["label"],
               "mask_name": arrays["mask_name"]}
    load_mask = None
    if with_masks and self._mask_root is not None:
      columns["mask_path"] = self._mask_files(arrays["mask_name"])
      load_mask = _read_mask
    elif with_masks:
      columns["mask"] = arrays["mask"][..., None]
      load_mask = _mask
    return sources.IndexedReader(columns, size, lambda row: {k: row[k] for k in ("image", "label")},
                                 load_mask)

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


def _read_mask(row, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  return decode.read_mask(row["mask_path"], height, width)
