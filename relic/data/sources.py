"""Where examples come from: the source interface and ``config.data.source`` dispatch.

A :class:`Source` is a dataset (tfds, an image folder or the built-in shapes); a
:class:`Reader` is one process's disjoint share of one of its splits. The pipeline asks a
reader for the *records* of an epoch in that epoch's order (cheap: indices or undecoded
bytes), skips what a resumed run has already consumed, and only then has the reader
:meth:`~Reader.load` (read and decode) the records it keeps.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import json

import ml_collections
import numpy as np
import tensorflow as tf

from relic.data import seeds


class Reader(abc.ABC):
  """One process's share of a split."""

  size: int         # examples in this process's share
  global_size: int  # examples in the split, over all processes
  has_masks: bool   # load_mask() works
  multilabel: bool = False  # load() also returns 'labels', see Source.multilabel

  @abc.abstractmethod
  def epoch(self, root: tf.Tensor, epoch: tf.Tensor, shuffle: bool) -> tf.data.Dataset:
    """The share's records in the order of ``epoch`` (a stateless function of root and epoch)."""

  @abc.abstractmethod
  def load(self, record) -> dict[str, tf.Tensor]:
    """A record -> 'image' (H, W, 3) uint8 and 'label' int32 (-1 = unknown)."""

  def load_mask(self, record, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """The record's saliency mask, (height, width, 1) uint8, 255 = foreground.

    Separate from :meth:`load` so that the pipeline reads a mask only for the views that are
    masked (with p_m = 0.1, most images need none).
    """
    raise NotImplementedError(f"{type(self).__name__} has no saliency masks.")


class Source(abc.ABC):
  """A dataset with named splits."""

  @abc.abstractmethod
  def num_examples(self, split: str) -> int:
    ...

  @abc.abstractmethod
  def num_classes(self) -> int:
    """Number of classes, 0 when the source has no labels."""

  @abc.abstractmethod
  def split_names(self) -> tuple[str, ...]:
    ...

  def multilabel(self) -> bool:
    """Whether examples carry a set of classes (VOC2007) instead of one: then 'label' is -1 and
    :meth:`Reader.load` adds 'labels', (num_classes,) int32 with 1 = present, 0 = absent and
    -1 = ignored (present only as "difficult" objects)."""
    return False

  @abc.abstractmethod
  def reader(self, split: str, *, process_index: int, process_count: int,
             with_masks: bool) -> Reader:
    ...

  def example_names(self, split: str) -> np.ndarray | None:
    """A name per example of ``split`` (its file path) in stored order; None for a source whose
    examples are not files (tfds records, the built-in arrays)."""
    del split
    return None


def stored_order(names: list[str]) -> np.ndarray:
  """A fixed pseudo-random order of examples named ``names`` (paths, ids): argsort of a hash
  of each name.

  The folder sources store their examples in this order, not sorted by class, for the reason
  tfds shuffles a split once when it prepares it: a slice (the linear probe's hold-out
  ``train[:10000]``, a fine-tuning hold-out prefix, ``test[:500]`` for a quick look) is then a
  sample of every class instead of the first few class folders. Keyed by name only, the order
  is the same in every process and every run, whatever else the folder holds.
  """
  keys = [hashlib.sha1(name.encode()).digest() for name in names]
  return np.array(sorted(range(len(names)), key=keys.__getitem__), np.int64)


def share(num: int, process_index: int, process_count: int) -> np.ndarray:
  """Indices of one process's share: every ``process_count``-th example.

  Strided rather than contiguous so that every process sees every class of a folder sorted
  by class; shares are disjoint, cover the split, and differ in size by at most one.
  """
  return np.arange(process_index, num, process_count, dtype=np.int64)


class _Row:
  """Columns of one example, gathered on first use (so unused columns cost nothing)."""

  def __init__(self, columns: dict[str, tf.Tensor], index: tf.Tensor):
    self._columns, self._index = columns, index

  def __getitem__(self, name: str) -> tf.Tensor:
    return tf.gather(self._columns[name], self._index)


class IndexedReader(Reader):
  """A share whose examples can be addressed by index: epoch order is a full permutation.

  ``columns`` hold the share's per-example data (paths, labels, or pixels); a record is an
  index into them, so skipping records costs nothing. ``load_row`` / ``load_mask_row`` turn
  a row of columns into the image and label / the mask.
  """

  def __init__(self, columns: dict[str, np.ndarray], global_size: int, load_row,
               load_mask_row=None):
    self.size = len(next(iter(columns.values())))
    self.global_size = global_size
    self.has_masks = load_mask_row is not None
    self._columns = {k: tf.constant(v) for k, v in columns.items()}
    self._load_row = load_row
    self._load_mask_row = load_mask_row

  def epoch(self, root: tf.Tensor, epoch: tf.Tensor, shuffle: bool) -> tf.data.Dataset:
    order = tf.range(self.size, dtype=tf.int64)
    if shuffle:
      order = tf.random.experimental.stateless_shuffle(
          order, seed=seeds.epoch_key(root, epoch, seeds.EPOCH_ORDER))
    return tf.data.Dataset.from_tensor_slices(order)

  def load(self, record) -> dict[str, tf.Tensor]:
    return self._load_row(_Row(self._columns, record))

  def load_mask(self, record, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    if self._load_mask_row is None:
      return super().load_mask(record, height, width)
    return self._load_mask_row(_Row(self._columns, record), height, width)


@functools.lru_cache(maxsize=8)
def _cached_source(kind: str, data_json: str) -> Source:
  data = ml_collections.ConfigDict(json.loads(data_json))
  if kind == "builtin":
    from relic.data.builtin_source import BuiltinSource  # pylint: disable=import-outside-toplevel
    return BuiltinSource(data)
  if kind == "objectnet":
    from relic.data.objectnet import ObjectNetSource  # pylint: disable=import-outside-toplevel
    return ObjectNetSource(data)
  if kind == "fgvc_aircraft":
    from relic.data.fgvc_aircraft import AircraftSource  # pylint: disable=import-outside-toplevel
    return AircraftSource(data)
  from relic.data.folder_source import FolderSource  # pylint: disable=import-outside-toplevel
  return FolderSource(data)


def get_source(config: ml_collections.ConfigDict) -> Source:
  """The source of ``config.data``.

  Folder and built-in sources are cached per data config, so a folder is scanned and the
  shapes are loaded once per process. tfds builders are cheap and not cached (tfds's test
  mocks patch them per context).
  """
  data = config.data
  if data.source == "tfds":
    from relic.data.tfds_source import TfdsSource  # pylint: disable=import-outside-toplevel
    return TfdsSource(data)
  if data.source not in ("folder", "builtin", "objectnet", "fgvc_aircraft"):
    raise ValueError(f"Unknown data source {data.source!r}; choose 'tfds', 'folder', "
                     "'builtin', 'objectnet' or 'fgvc_aircraft'.")
  return _cached_source(data.source, data.to_json(sort_keys=True))
