"""The labelled examples an evaluation job trains or scores on: a (sliced) split, or chosen
examples of it.

A slice of a split (``train[10000:]``) is read by the data pipeline directly. A subset that is
not a slice, such as the class-balanced 1% of a dataset that has no official 1% list, is read
here from the source's reader: the chosen records are gathered once (indices for the folder and
built-in sources, undecoded bytes for tfds), then streamed with the pipeline's evaluation
transform (:func:`relic.data.views.eval_image`) and its stateless per-example keys, so the
images are cut exactly as :func:`relic.data.pipeline.eval_batches` would cut them. Training
streams of a subset are a pure function of (seed, step): ``start_step`` resumes exactly.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Iterator

import jax
import numpy as np
from etils import epath

from relic.data.lazy_tf import tf
from relic.errors import ConfigError
from relic.data import pipeline, seeds, sources, splits, views
from relic.evaluators import label_subsets

_MAX_EPOCHS = 2 ** 40
_ROOT = (0, 0)  # key of the unshuffled reading order (no randomness is drawn from it)


def eval_data_config(config):
  """A copy of ``config`` as evaluation jobs read data: never with saliency masks."""
  out = copy.deepcopy(config)
  out.data.mask_prob = 0.0
  return out


def dataset_name(config) -> str:
  """How results name the data: the tfds name, 'builtin', or 'SOURCE (PATH)' for the sources
  read from a folder."""
  if config.data.source == "tfds":
    return config.data.dataset
  return config.data.source + (f" ({config.data.path})" if config.data.path else "")


def slice_prefix(config, split: str, n: int) -> tuple[str, str]:
  """``(rest, prefix)`` split strings: the first ``n`` examples of ``split`` and the others,
  composed with any slice ``split`` already has (``train[:50%]`` -> ``train[0:n]``...)."""
  name, start, stop = splits.parse(split)
  size = pipeline.num_examples(config, name)
  first, last = splits.bounds(start, stop, size)
  if not 0 < n < last - first:
    raise ConfigError(f"a hold-out of {n} examples leaves no training examples in {split!r} "
                      f"({last - first} examples). Fix: lower the hold-out size.")
  return f"{name}[{first + n}:{last}]", f"{name}[{first}:{first + n}]"


def named_part_problem(split: str, part: str, subset: bool = False) -> str | None:
  """Why ``part`` cannot be held out of the training split ``split`` (None when it can)."""
  if subset:
    return (f"a hold-out split {part!r} needs the whole training split, not a subset of it. "
            f"Fix: use finetune.subset='full' and label_fraction=0, or no hold-out split.")
  parts = split.replace(" ", "").split("+")
  if part in parts and len(parts) >= 2:
    return None
  return (f"the hold-out split {part!r} is not a part of the training split {split!r}: it must "
          f"be one of the splits joined by '+' (e.g. train split 'train+validation' with hold-out "
          f"'validation': rates are compared training on 'train', scoring 'validation', then "
          f"the chosen rate trains on both). Fix: set the training split so, or leave the "
          f"hold-out split empty (a slice of the training split is held out).")


def split_named_part(split: str, part: str) -> tuple[str, str]:
  """``('train', 'validation')`` for ``('train+validation', 'validation')``: the rest of a
  combined split and the named part (ConfigError when it is not a part)."""
  problem = named_part_problem(split, part)
  if problem:
    raise ConfigError(problem)
  return "+".join(p for p in split.replace(" ", "").split("+") if p != part), part


def _reader(config, split: str) -> sources.Reader:
  return sources.get_source(config).reader(split, process_index=0, process_count=1,
                                           with_masks=False)


def split_labels(config, split: str) -> np.ndarray:
  """Labels of every example of ``split`` in its stored order (index i = example i).

  tfds records carry the label undecoded; folder and built-in records are indices whose label
  is read by the reader (a folder's images are decoded once for this).
  """
  reader = _reader(config, split)
  ds = reader.epoch(tf.constant(_ROOT, tf.int64), tf.constant(0, tf.int64), False)
  if isinstance(ds.element_spec, dict) and "label" in ds.element_spec:
    ds = ds.map(lambda record: record["label"])
  else:
    ds = ds.map(lambda record: reader.load(record)["label"], num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
  chunks = list(ds.batch(8192).as_numpy_iterator())
  return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros((0,), np.int64)


def _gather_records(reader: sources.Reader, wanted: np.ndarray, size: int):
  """The reader's records at the (sorted) positions ``wanted``, stacked as tensors."""
  keep = np.zeros(size, bool)
  keep[wanted] = True
  keep_t = tf.constant(keep)
  ds = reader.epoch(tf.constant(_ROOT, tf.int64), tf.constant(0, tf.int64), False).enumerate()
  ds = ds.filter(lambda i, _: tf.gather(keep_t, i))
  ds = ds.map(lambda _, record: record)
  records = list(ds.as_numpy_iterator())
  if len(records) != len(wanted):
    raise RuntimeError(f"Read {len(records)} of the {len(wanted)} chosen examples.")
  if isinstance(records[0], dict):
    return {k: tf.constant(np.stack([r[k] for r in records])) for k in records[0]}
  return tf.constant(np.asarray(records))


@dataclasses.dataclass(frozen=True)
class Examples:
  """Examples of ``split``: all of it (``indices=None``) or the example indices given."""
  config: object
  split: str
  indices: np.ndarray | None = None

  def size(self) -> int:
    if self.indices is None:
      return pipeline.num_examples(self.config, self.split)
    return len(self.indices)

  def describe(self) -> str:
    if self.indices is None:
      return self.split
    return f"{len(self.indices)} chosen examples of {self.split}"

  def split_holdout(self, n: int, seed: int) -> tuple["Examples", "Examples"]:
    """``(rest, holdout)``: a prefix slice of a split, or a class-balanced part of a subset."""
    if self.indices is None:
      rest, prefix = slice_prefix(self.config, self.split, n)
      return Examples(self.config, rest), Examples(self.config, prefix)
    if not 0 < n < len(self.indices):
      raise ConfigError(f"a hold-out of {n} examples leaves no training examples in a subset "
                        f"of {len(self.indices)}. Fix: lower the hold-out size.")
    labels = split_labels(self.config, self.split)[self.indices]
    held = label_subsets.class_balanced_subset(labels, n, seed)
    rest = np.delete(self.indices, held)
    return Examples(self.config, self.split, rest), Examples(self.config, self.split,
                                                             self.indices[held])

  def split_named_part(self, part: str) -> tuple["Examples", "Examples"]:
    """``(rest, part)`` of a combined split: ``'train+validation'`` and ``'validation'`` give
    ``('train', 'validation')`` (a dataset's official validation split as the hold-out)."""
    if self.indices is not None:
      raise ConfigError(named_part_problem(self.split, part, subset=True))
    rest, part = split_named_part(self.split, part)
    return Examples(self.config, rest), Examples(self.config, part)

  def batches(self, *, batch_size: int, image_size: int, train_augment: bool, seed: int,
              repeat: bool, start_step: int = 0) -> Iterator[dict]:
    """Per-process batches as :func:`relic.data.pipeline.eval_batches` yields them, from the
    ``start_step``-th batch on (exactly those of an uninterrupted stream)."""
    if self.indices is None:
      return pipeline.eval_batches(self.config, split=self.split, batch_size=batch_size,
                                   image_size=image_size, train_augment=train_augment,
                                   seed=seed, repeat=repeat, start_step=start_step)
    return _subset_batches(self.config, self.split, self.indices, batch_size=batch_size,
                           image_size=image_size, train_augment=train_augment, seed=seed,
                           repeat=repeat, start_step=start_step)


def _subset_batches(config, split: str, indices: np.ndarray, *, batch_size: int,
                    image_size: int, train_augment: bool, seed: int, repeat: bool,
                    start_step: int) -> Iterator[dict]:
  process_index, process_count = jax.process_index(), jax.process_count()
  reader = _reader(config, split)
  mine = np.sort(np.asarray(indices))[process_index::process_count]
  records = _gather_records(reader, mine, reader.size)
  n = len(mine)
  root = seeds.root_key(seed, process_index)

  def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
    order = tf.range(n, dtype=tf.int64)
    if train_augment:
      order = tf.random.experimental.stateless_shuffle(
          order, seed=seeds.epoch_key(root, epoch, seeds.EPOCH_ORDER))
    ds = tf.data.Dataset.from_tensor_slices(order).enumerate()
    return ds.map(lambda position, i: (epoch, position, i))

  def example(epoch, position, i) -> dict[str, tf.Tensor]:
    loaded = reader.load(tf.nest.map_structure(lambda t: tf.gather(t, i), records))
    key = seeds.example_key(root, epoch, position)
    return {"image": views.eval_image(loaded["image"], key, image_size, train_augment),
            "label": tf.cast(loaded["label"], tf.int32), "valid": tf.constant(True)}

  epochs = tf.data.Dataset.range(_MAX_EPOCHS if repeat else 1)
  ds = epochs.flat_map(one_epoch).skip(start_step * batch_size)
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if not repeat:
    padding = {"image": tf.zeros([image_size, image_size, 3], tf.float32),
               "label": tf.constant(-1, tf.int32), "valid": tf.constant(False)}
    total = pipeline.eval_num_batches(len(indices), process_count, batch_size) * batch_size
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat()).take(total)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options).as_numpy_iterator()


def label_fraction_subset(config, split: str, fraction: float, seed: int) -> np.ndarray:
  """Class-balanced ``fraction`` of the labelled examples of ``split`` (sorted indices)."""
  labels = split_labels(config, split)
  labelled = np.flatnonzero(labels >= 0)
  total = label_subsets.subset_size(len(labelled), fraction)
  return labelled[label_subsets.class_balanced_subset(labels[labelled], total, seed)]


def file_list_subset(config, split: str, path: str) -> np.ndarray:
  """Sorted indices of the examples of ``split`` whose file names are listed in ``path`` (one
  per line, e.g. SimCLR's ImageNet 1percent.txt: 'n01440764_10026.JPEG'), matched by file name
  (the last part of a listed path and of each example's path).

  Raises:
    ConfigError: the source has no file names, or a listed name is not in the split (the
      subset would silently differ from the list).
  """
  names = sources.get_source(config).example_names(split)
  if names is None:
    raise ConfigError(f"config.finetune.subset_file selects images by file name, which the "
                      f"{config.data.source!r} source does not have. Fix: use an image-folder "
                      "source (for tfds imagenet2012, finetune.subset='1pct'/'10pct' already "
                      "reads SimCLR's lists), or finetune.label_fraction.")
  with epath.Path(path).open() as f:
    wanted = [line.strip() for line in f if line.strip()]
  index = {}
  for i, name in enumerate(names):
    index.setdefault(name.rsplit("/", 1)[-1], []).append(i)
  missing = [w for w in wanted if w.rsplit("/", 1)[-1] not in index]
  if missing:
    raise ConfigError(f"config.finetune.subset_file: {len(missing)} of the {len(wanted)} images "
                      f"listed in {path} are not in {split!r} of {config.data.path} (e.g. "
                      f"{missing[:3]}). Fix: point data.path at the dataset the list was made "
                      "for, or use finetune.label_fraction.")
  ambiguous = [w for w in wanted if len(index[w.rsplit("/", 1)[-1]]) > 1]
  if ambiguous:
    raise ConfigError(f"config.finetune.subset_file: file names such as {ambiguous[:3]} occur "
                      f"more than once in {split!r}; a list of names cannot tell them apart. "
                      "Fix: use finetune.label_fraction.")
  return np.unique([index[w.rsplit("/", 1)[-1]][0] for w in wanted]).astype(np.int64)
