"""``config.data.source='tfds'``: any TensorFlow Datasets image dataset.

Each process reads its own share: the split is cut into ``process_count * blocks`` even
sub-splits (``tfds.even_splits``) and process ``p`` takes blocks ``p*K .. p*K+K-1``, so shares
are disjoint and cover the split. An epoch's order is a random interleaving of the K blocks
(a stateless shuffle of the block choices, seeded by the epoch) followed by a shuffle buffer
of ``config.data.shuffle_buffer`` undecoded records with a seed derived from the epoch: no
state carries from one epoch to the next, so a resumed run starts its epoch directly and only
skips, undecoded, the records of the current epoch it has already consumed.

Saliency masks come from ``config.data.mask_path``: the mask of an example is the image file
below that folder whose stem is the example's ``file_name`` stem (imagenet2012 has that
feature; datasets without it cannot take masks).
"""

from __future__ import annotations

import glob
import os
import pathlib
import sys

import ml_collections
import numpy as np

from relic.data.lazy_tf import tf, tfds
from relic.data import builtin, decode, seeds, sources
from relic.errors import ConfigError, Problems

_BLOCKS_PER_PROCESS = 16
_MIN_BLOCK_SIZE = 1000

MANUAL_DOWNLOADS = {
    "imagenet2012": ("ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from "
                     "https://image-net.org/download-images, after registering; converting them "
                     "needs about 150 GB of free disk space)"),
    "cityscapes/semantic_segmentation": (
        "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip (from "
        "https://www.cityscapes-dataset.com, after registering)"),
}


class DatasetMissingError(RuntimeError):
  """The tfds dataset is not prepared in the data_dir; the message says how to prepare it."""


def default_data_dir() -> str:
  """Where tfds looks when ``config.data.data_dir`` is empty: $TFDS_DATA_DIR, else
  ~/tensorflow_datasets."""
  return os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"


def missing_message(name: str, data_dir: str, error: Exception | str) -> str:
  """What was looked for, and the commands that provide it."""
  builder_dir = data_dir or default_data_dir()
  if name in MANUAL_DOWNLOADS:
    steps = (f"{name} needs a manual download: put {MANUAL_DOWNLOADS[name]} in "
             f"{builder_dir}/downloads/manual/, then run "
             f"`tfds build {name} --data_dir={builder_dir}` once (it extracts and converts the "
             "archives)")
  else:
    steps = (f"run `tfds build {name} --data_dir={builder_dir}` on a machine with internet "
             "access (copy the resulting folder here if this one has none)")
  return (f"tfds dataset {name!r} is not prepared in data_dir={builder_dir!r} ({error}). "
          f"Fix: {steps}; or set config.data.data_dir to the directory that holds it.")


def _prepared_infos(name: str, data_dir: str) -> list[str]:
  """The ``dataset_info.json`` files a prepared ``name`` ('NAME[/CONFIG][:VERSION]') has under
  ``data_dir``: tfds's layout ``DATA_DIR/NAME/[CONFIG/]VERSION/dataset_info.json``."""
  name, _, version = name.partition(":")
  version = version.replace("*", "[0-9]*") or "[0-9]*"
  root = os.path.join(os.path.expanduser(data_dir), *name.split("/"))
  found = glob.glob(os.path.join(glob.escape(root), version, "dataset_info.json"))
  if "/" not in name:  # no config named: the builder's default one (any config here)
    found += glob.glob(os.path.join(glob.escape(root), "*", version, "dataset_info.json"))
  return found


def check_prepared(name: str, data_dir: str, field: str = "dataset") -> None:
  """ConfigError (on ``config.data.FIELD``) when tfds dataset ``name`` is not prepared in
  ``data_dir`` (empty: :func:`default_data_dir`), looked up on disk without importing
  TensorFlow, so a missing dataset stops the run at once. A necessary condition only: the
  builder check that follows reads the metadata. Skipped for remote directories and once tfds
  is imported (a Python caller, tfds.testing.mock_data): tfds itself then decides."""
  builder_dir = data_dir or default_data_dir()
  if "://" in builder_dir or "tensorflow_datasets" in sys.modules:
    return
  if not _prepared_infos(name, builder_dir):
    where = os.path.join(builder_dir, *name.partition(":")[0].split("/"))
    catalog = ("" if name.partition(":")[0] in MANUAL_DOWNLOADS else
               "; check the name against the catalog, https://www.tensorflow.org/datasets/catalog")
    raise ConfigError(f"config.data.{field}: " + missing_message(
        name, data_dir, f"no {where}/.../dataset_info.json{catalog}"))


class TfdsSource(sources.Source):
  """A tfds image dataset; the first Image feature is the image, 'label' the class if present,
  else 'labels' (a sequence of classes, as in voc/2007) the set of classes of a multi-label
  dataset, with 'labels_no_difficult' (if present) telling which are only "difficult"."""

  cacheable = False  # tfds's test mocks patch builders per context
  mask_layout = ("matched by the example's file_name stem anywhere below MASKDIR; the saliency "
                 "job writes MASKDIR/<bucket 000-255>/<stem>.png")

  def __init__(self, data: ml_collections.ConfigDict, dataset: str = ""):
    self.name = dataset or data.dataset
    self.data_dir = data.data_dir
    self.builder = tfds.builder(self.name, data_dir=data.data_dir or None)
    self._shuffle_buffer = data.shuffle_buffer
    self._mask_root = pathlib.Path(data.mask_path).expanduser() if data.mask_path else None
    self._cache = builtin.cache_root(data.cache_dir)
    features = self.builder.info.features
    images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    if not images:
      raise ValueError(f"tfds dataset {self.name!r} has no image feature.")
    self.image_key, self._image_keys = images[0], images
    label = features["label"] if "label" in features else None
    labels = features["labels"] if "labels" in features else None
    self._multilabel = (not isinstance(label, tfds.features.ClassLabel) and
                        isinstance(labels, tfds.features.Sequence) and
                        isinstance(labels.feature, tfds.features.ClassLabel))
    if self._multilabel:
      self._num_classes = labels.feature.num_classes
      self._has_difficult = "labels_no_difficult" in features
    else:
      self._num_classes = label.num_classes if isinstance(label, tfds.features.ClassLabel) else 0
    self.has_file_names = "file_name" in features

  def as_dataset(self, split) -> tf.data.Dataset:
    """Examples of a split, in stored order, their images undecoded (decoded after shuffling,
    so a shuffle buffer holds small records). Raises DatasetMissingError."""
    try:
      return self.builder.as_dataset(split=split, shuffle_files=False,
                                     decoders={k: tfds.decode.SkipDecoding()
                                               for k in self._image_keys})
    except (AssertionError, FileNotFoundError, tfds.core.DatasetNotFoundError) as e:
      raise DatasetMissingError(missing_message(self.name, self.data_dir, e)) from e

  def num_examples(self, split: str) -> int:
    try:
      return self.builder.info.splits[split].num_examples
    except (KeyError, ValueError):
      # Unprepared metadata (e.g. tfds.testing.mock_data): count what as_dataset yields.
      return int(self.as_dataset(split).cardinality())

  def num_classes(self) -> int:
    return self._num_classes

  def split_names(self) -> tuple[str, ...]:
    return tuple(self.builder.info.splits.keys())

  def multilabel(self) -> bool:
    return self._multilabel

  @classmethod
  def check(cls, data: ml_collections.ConfigDict) -> None:
    # The mask folder and the dataset's presence, on disk (no TensorFlow), reported together;
    # then the builder's metadata.
    problems = Problems()
    needs_masks = problems.check(sources.check_mask_folder, data)
    problems.check(check_prepared, data.dataset, data.data_dir)
    problems.raise_if_any()
    try:
      source = cls(data)
    except tfds.core.DatasetNotFoundError as e:
      sources.fail("dataset", f"no tfds dataset named {data.dataset!r} ({str(e).splitlines()[0]})",
                   "use a name from the tfds catalog (https://www.tensorflow.org/datasets/catalog), "
                   "e.g. 'imagenet2012' or 'cifar10'")
    for field in ("train_split", "eval_split"):
      try:
        source.as_dataset(data[field])
      except DatasetMissingError as e:
        raise ConfigError(f"config.data.dataset: {e}") from None
      except (ValueError, KeyError) as e:
        sources.fail(field, f"split {data[field]!r} of {data.dataset!r} cannot be read ({e})",
                     f"use one of {list(source.split_names())}, tfds slicing allowed")
    if needs_masks and not source.has_file_names:
      sources.fail("mask_path", f"tfds dataset {data.dataset!r} has no 'file_name' feature to "
                   "match masks by", "set config.data.mask_prob=0 or use source='folder'")

  def blocks(self, split: str, process_index: int, process_count: int, max_blocks: int = 0,
             min_block_size: int = 0) -> tuple[list[tf.data.Dataset], int]:
    """This process's blocks of ``split`` (module docstring; 0: its settings), the split's size."""
    global_size = self.num_examples(split)
    blocks = max(1, min(max_blocks or _BLOCKS_PER_PROCESS,
                        global_size // (process_count * (min_block_size or _MIN_BLOCK_SIZE))))
    subsplits = tfds.even_splits(split, n=process_count * blocks)
    return [self.as_dataset(s) for s in
            subsplits[process_index * blocks:(process_index + 1) * blocks]], global_size

  def reader(self, split: str, *, process_index: int, process_count: int,
             with_masks: bool) -> sources.Reader:
    datasets, global_size = self.blocks(split, process_index, process_count)
    masks = self._mask_table() if with_masks else None
    targets = ((self._num_classes, self._has_difficult) if self._multilabel else None)
    return TfdsReader(datasets, global_size, self._shuffle_buffer, self.image_key, masks,
                      targets, named=self.has_file_names)

  def _mask_table(self) -> tf.lookup.StaticHashTable:
    """file_name stem -> mask file."""
    from relic.data.folder_source import mask_index  # pylint: disable=import-outside-toplevel
    if not self.has_file_names:
      raise ValueError(f"tfds dataset {self.name!r} has no 'file_name' feature to match "
                       "saliency masks by; use config.data.mask_prob=0.")
    stems = {pathlib.PurePath(name).name: path
             for name, path in mask_index(self._mask_root, self._cache).items()}
    keys = tf.constant(list(stems) or [""], tf.string)
    values = tf.constant(list(stems.values()) or [""], tf.string)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values),
                                     default_value="")


class TfdsReader(sources.Reader):
  """One process's blocks of a tfds split; see the module docstring for the epoch order."""

  def __init__(self, datasets: list[tf.data.Dataset], global_size: int, shuffle_buffer: int,
               image_key: str, masks: tf.lookup.StaticHashTable | None,
               multilabel_targets: tuple[int, bool] | None = None, named: bool = False):
    self._datasets = datasets
    self._sizes = np.array([int(ds.cardinality()) for ds in datasets], np.int64)
    self.size = int(self._sizes.sum())
    self.global_size = global_size
    self.has_masks = masks is not None
    self._shuffle_buffer = shuffle_buffer
    self._image_key = image_key
    self._masks = masks
    # (num_classes, has 'labels_no_difficult') of a multi-label dataset.
    self._targets = multilabel_targets
    self.multilabel = multilabel_targets is not None
    self._named = named   # examples have a 'file_name': records carry their mask name

  def epoch(self, root: tf.Tensor, epoch: tf.Tensor, shuffle: bool) -> tf.data.Dataset:
    if not shuffle:
      ds = self._datasets[0]
      for other in self._datasets[1:]:
        ds = ds.concatenate(other)
    else:
      choices = tf.random.experimental.stateless_shuffle(
          tf.repeat(tf.range(len(self._datasets), dtype=tf.int64), self._sizes),
          seed=seeds.epoch_key(root, epoch, seeds.EPOCH_ORDER))
      ds = tf.data.Dataset.choose_from_datasets(
          self._datasets, tf.data.Dataset.from_tensor_slices(choices))
      if self._shuffle_buffer > 1:
        ds = ds.shuffle(self._shuffle_buffer,
                        seed=seeds.int64_seed(seeds.epoch_key(root, epoch, seeds.SHUFFLE_BUFFER)))
    return ds.map(self._record)

  def _record(self, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    record = {"image": example[self._image_key],
              "label": tf.cast(example.get("label", tf.constant(-1)), tf.int32)}
    if self._named:
      stem = tf.strings.regex_replace(
          tf.strings.regex_replace(example["file_name"], r"^.*/", ""), r"\.[^.]*$", "")
      # 256 sub-folders: no single folder of 1.28M ImageNet masks.
      bucket = tf.strings.as_string(tf.strings.to_hash_bucket_fast(stem, 256), width=3, fill="0")
      record["mask_name"] = tf.strings.join([bucket, stem], "/")
      if self._masks is not None:
        record["mask_path"] = self._masks.lookup(stem)
    if self._targets is not None:
      record["labels"] = self._multilabel_targets(example)
    return record

  def _multilabel_targets(self, example: dict[str, tf.Tensor]) -> tf.Tensor:
    """(num_classes,) int32: 1 present, 0 absent, -1 present only as "difficult" objects."""
    num_classes, has_difficult = self._targets

    def indicator(classes):
      hits = tf.reduce_sum(tf.one_hot(classes, num_classes, dtype=tf.int32), axis=0)
      return tf.minimum(hits, 1)

    present = indicator(example["labels"])
    if not has_difficult:
      return present
    clear = indicator(example["labels_no_difficult"])
    return tf.where(clear > 0, 1, tf.where(present > 0, -1, 0))

  def load(self, record) -> dict[str, tf.Tensor]:
    loaded = {"image": decode.decode_image(record["image"]), "label": record["label"]}
    if self.multilabel:
      loaded["labels"] = record["labels"]
    return loaded

  def load_mask(self, record, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    if self._masks is None:
      return super().load_mask(record, height, width)
    return decode.read_mask(record["mask_path"], height, width)

  def mask_name(self, record) -> tf.Tensor:
    if not self._named:
      return super().mask_name(record)
    return record["mask_name"]
