"""Where examples come from: the source interface and the registry of ``config.data.source``.

A :class:`Source` holds images and labels (tfds, an image folder, the built-in shapes...), a
:class:`SegmentationSource` images and per-pixel class masks (VOC 2012, Cityscapes, the shapes):
each job asks for the capability it needs. A :class:`Reader` is one process's disjoint share of
a split. The pipeline asks a reader for the *records* of an epoch in that epoch's order (cheap:
indices or undecoded bytes), skips what a resumed run has already consumed, and only then has
the reader :meth:`~Reader.load` (read and decode) the records it keeps.

:data:`SOURCES` names each source's class, imported on first use: this module imports none of
them (they import it), so a source's dependencies load only when it is used.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import importlib
import json
import pathlib
from typing import Callable, NoReturn, TypeVar

import ml_collections
import numpy as np

from relic.data.lazy_tf import tf
from relic.data import seeds, splits
from relic.errors import ConfigError, Problems

# config.data.source -> "module:class".
SOURCES = {
    "tfds": "relic.data.tfds_source:TfdsSource",
    "folder": "relic.data.folder_source:FolderSource",
    "builtin": "relic.data.builtin_source:BuiltinSource",
    "objectnet": "relic.data.objectnet:ObjectNetSource",
    "fgvc_aircraft": "relic.data.fgvc_aircraft:AircraftSource",
    "voc2012": "relic.data.voc2012:VocSource",
    "cityscapes": "relic.data.cityscapes:CityscapesSource",
    "saliency_masks": "relic.data.saliency_masks:SaliencyMaskSource",
}
IGNORE = 255  # segmentation mask value of void / border / padding pixels: never scored


def fail(field: str, problem: str, fix: str) -> NoReturn:
  """Raises the ConfigError of ``config.data.FIELD``."""
  raise ConfigError(f"config.data.{field}: {problem}. Fix: {fix}.")


def require_path(data: ml_collections.ConfigDict, what: str, fix: str) -> None:
  """Fails naming ``config.data.path`` when a source that reads a folder was given none."""
  if not data.path:
    fail("path", f"no {what} given for source={data.source!r}", fix)


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
    """A record -> 'image' (H, W, 3) uint8 and 'label' int32 (-1 = unknown); from a
    segmentation reader, 'image' and 'mask' (H, W) uint8 class ids (:data:`IGNORE`: void)."""

  def load_mask(self, record, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """The record's saliency mask, (height, width, 1) uint8, 255 = foreground.

    Separate from :meth:`load` so that the pipeline reads a mask only for the views that are
    masked (with p_m = 0.1, most images need none).
    """
    raise NotImplementedError(f"{type(self).__name__} has no saliency masks.")

  def mask_name(self, record) -> tf.Tensor:
    """Where the record's saliency mask lives below ``config.data.mask_path``: a relative path
    without extension (tf.string). The saliency job writes ``<mask_path>/<name>.png`` and
    :meth:`load_mask` reads it back (see :attr:`Source.mask_layout`)."""
    raise NotImplementedError(f"{type(self).__name__} names no saliency masks.")


class DataSource(abc.ABC):
  """What every registered source has, whatever it offers."""

  offers: str  # what a job gets from it (for the error that names the sources offering it)
  cacheable = True  # get_source keeps one per data config: a folder is scanned once per process

  @classmethod
  @abc.abstractmethod
  def check(cls, data: ml_collections.ConfigDict) -> None:
    """Raises ConfigError, naming the field and the fix, when ``data`` cannot be read: the
    source's folder or dataset, its train and eval splits. Cheap: nothing is decoded."""

  @abc.abstractmethod
  def num_examples(self, split: str) -> int:
    ...


class Source(DataSource):
  """A dataset of images and labels with named splits (pretraining, classification)."""

  offers = "images with labels for pretraining and classification"
  # How ``config.data.mask_path`` is laid out for this source (README, the saliency job);
  # '' = the source takes no mask folder (its readers have no :meth:`Reader.mask_name`).
  mask_layout = ""

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


class SegmentationSource(DataSource):
  """A dataset of images with per-pixel class masks: the segmentation job's data. A capability
  of its own, as most sources have no masks; a class may offer both (the built-in shapes)."""

  offers = "per-pixel class masks for segmentation"

  @abc.abstractmethod
  def class_names(self) -> tuple[str, ...]:
    """The names of the mask's class ids."""

  @abc.abstractmethod
  def segmentation_reader(self, split: str, *, process_index: int, process_count: int,
                          shuffle: bool) -> Reader:
    """This process's share of ``split``; its records load to 'image' and 'mask'. ``shuffle``:
    whether epochs will be shuffled (a tfds reader then reads more blocks to mix)."""


class SplitError(ValueError):
  """A split the source cannot serve; :func:`check_split_fields` names the field holding it."""

  def __init__(self, split: str, problem: str, fix: str):
    self.problem, self.fix = problem, fix
    super().__init__(f"split {split!r}: {problem}. Fix: {fix}.")


def parse_split(split: str) -> tuple[str, str | None, str | None]:
  """:func:`relic.data.splits.parse`, failing with a SplitError."""
  try:
    return splits.parse(split)
  except ValueError:
    raise SplitError(split, "cannot parse it", "use NAME or NAME[start:stop] with integer or "
                     "percent bounds, e.g. 'train[:10000]' or 'train[90%:]'") from None


def check_split_fields(data: ml_collections.ConfigDict, num_examples: Callable[[str], int]) -> None:
  """``data.train_split`` and ``data.eval_split`` must be non-empty splits (a SplitError from
  ``num_examples``, the source's count, fails naming the field)."""
  for field in ("train_split", "eval_split"):
    try:
      if num_examples(data[field]) == 0:
        fail(field, f"split {data[field]!r} has no examples", "use a non-empty split or slice")
    except SplitError as e:
      fail(field, f"split {data[field]!r}: {e.problem}", e.fix)


def check_mask_folder(data: ml_collections.ConfigDict) -> bool:
  """Whether masked views are on; then the saliency-mask folder a source without masks of its
  own needs must exist."""
  needs_masks = data.mask_prob > 0 and data.views.large.num > 0
  if needs_masks and not data.mask_path:
    same_data = (f"--config.data.source={data.source} " +
                 (f"--config.data.dataset={data.dataset}" if data.source == "tfds"
                  else f"--config.data.path={data.path or 'DIR'}"))
    fail("mask_prob", f"is {data.mask_prob} but the {data.source!r} source has no saliency "
         "masks", "set config.data.mask_path=DIR, a folder of grayscale masks (255 = "
         "foreground) with the same relative paths/stems as the images; the saliency job makes "
         f"them without labels: `python -m relic.main --config=saliency {same_data} "
         "--workdir=MASKS_RUN`, then config.data.mask_path=MASKS_RUN/masks. Or set "
         "config.data.mask_prob=0 to train without masked views")
  if needs_masks and not pathlib.Path(data.mask_path).expanduser().is_dir():
    fail("mask_path", f"mask folder {data.mask_path!r} not found",
         "point it to an existing folder of saliency masks, or set config.data.mask_prob=0")
  return needs_masks


def check_with_mask_folder(data: ml_collections.ConfigDict,
                           check_files: Callable[[ml_collections.ConfigDict], None]) -> bool:
  """:func:`check_mask_folder` and a source's ``check_files(data)``, independent checks: one
  ConfigError reports both a missing mask folder and a missing image folder. Returns whether
  masked views are on."""
  problems = Problems()
  needs_masks = problems.check(check_mask_folder, data)
  problems.check(check_files, data)
  problems.raise_if_any()
  return bool(needs_masks)


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
  a row of columns into the image and label / the mask; a 'mask_name' column names each
  example's mask file (:meth:`Reader.mask_name`).
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

  def mask_name(self, record) -> tf.Tensor:
    if "mask_name" not in self._columns:
      return super().mask_name(record)
    return _Row(self._columns, record)["mask_name"]


_Capability = TypeVar("_Capability", bound=DataSource)


def _load(name: str) -> type:
  module, _, cls = SOURCES[name].partition(":")
  return getattr(importlib.import_module(module), cls)


def source_class(name: str, capability: type[_Capability] = Source) -> type[_Capability]:
  """The class of source ``name``; ConfigError unless it offers ``capability`` (any: DataSource)."""
  if name not in SOURCES:
    fail("source", f"unknown source {name!r}", "choose one of " + ", ".join(map(repr, SOURCES)))
  found = _load(name)
  if not issubclass(found, capability):
    offering = [n for n in SOURCES if issubclass(_load(n), capability)]
    fail("source", f"{name!r} has no {capability.offers}",
         "choose one of " + ", ".join(map(repr, offering)))
  return found


@functools.lru_cache(maxsize=8)
def _cached_source(name: str, data_json: str):
  return _load(name)(ml_collections.ConfigDict(json.loads(data_json)))


def get_source(config: ml_collections.ConfigDict,
               capability: type[_Capability] = Source) -> _Capability:
  """The source of ``config.data``, which must offer ``capability``."""
  cls = source_class(config.data.source, capability)
  if not cls.cacheable:
    return cls(config.data)
  return _cached_source(config.data.source, config.data.to_json(sort_keys=True))


def check_data_config(config: ml_collections.ConfigDict) -> None:
  """ConfigError when the configured images and labels cannot be read, before any compute
  (unreadable files are handled later, see relic/data/image_check.py)."""
  if not config.data.fake:
    source_class(config.data.source).check(config.data)
