"""The input pipelines the jobs use: multi-crop pretraining batches and evaluation batches.

Both return per-process NumPy batches (leading axis = this process's share of the global
batch); :func:`device_prefetch` turns them into global sharded arrays.

Determinism and resumption. Each process reads a fixed, disjoint share of the split. Epoch
``e``'s order is a stateless function of (seed, process, e), and every random draw for an
example (crop boxes, masking, host augmentation) is keyed by (seed, process, e, position in
the epoch), never by a stateful generator. The stream runs through the epochs without
dropping a partial batch at their boundaries, so batch ``k`` starts at element ``k * b``:
``start_step=k`` starts directly in epoch ``k * b // n`` and skips ``k * b % n`` records of it
before they are read or decoded. The result is identical to iterating from step 0, whatever
tf.data's parallelism.
"""

from __future__ import annotations

import math
from typing import Iterator

import jax
import ml_collections
import numpy as np
from absl import logging

from relic.data.lazy_tf import tf
from relic.errors import ConfigError
from relic.data import augment_spec, fake, seeds, sources, views
from relic.data.sources import check_data_config
from relic.data.prefetch import device_prefetch

__all__ = ["pretrain_batches", "eval_batches", "num_examples", "num_classes", "split_names",
           "eval_num_batches", "check_data_config", "device_prefetch"]

_MAX_EPOCHS = 2 ** 40       # "forever"; epochs are int64 keys
_PROBE_EXAMPLES = 4
_LARGE, _SMALL = 0, 1       # key of each view group within an example


def _graph_function(fn):
  """Example functions are traced once (shared by the start-up probe and the pipeline) and
  without autograph: they have no Python control flow on tensors, and conversion dominates
  start-up. (A function, not a partial of tf.function: TensorFlow loads on first use.)"""
  return tf.function(fn, autograph=False)


def _process() -> tuple[int, int]:
  return jax.process_index(), jax.process_count()


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  """Examples in ``split`` over all processes (after skipping unreadable files)."""
  if config.data.fake:
    return fake.num_examples(split)
  return sources.get_source(config).num_examples(split)


def num_classes(config: ml_collections.ConfigDict) -> int:
  """Classes of the dataset's labels (0 when it has none)."""
  if config.data.fake:
    return fake.NUM_CLASSES
  return sources.get_source(config).num_classes()


def is_multilabel(config: ml_collections.ConfigDict) -> bool:
  """Whether the dataset's examples carry a set of classes (evaluation batches get 'labels')."""
  return not config.data.fake and sources.get_source(config).multilabel()


_SCORE_MULTILABEL = ("score it by 11-point mAP with the transfer job (--config.job=transfer, "
                     "linear and fine-tune protocols) or the finetune job (--config.job=finetune)")


def check_single_label(config: ml_collections.ConfigDict, what: str,
                       fix: str = _SCORE_MULTILABEL) -> None:
  """Raises ConfigError when the dataset is multi-label and ``what`` needs one class per image."""
  if is_multilabel(config):
    raise ConfigError(
        f"config.data.dataset={config.data.dataset!r} is multi-label (a set of classes per "
        f"image); {what} needs one class per image. Fix: {fix}")


def split_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The dataset's split names (each accepts tfds slicing, e.g. 'train[:10000]')."""
  if config.data.fake:
    return ("train", "validation")
  return sources.get_source(config).split_names()


def eval_num_batches(global_size: int, process_count: int, batch_size: int) -> int:
  """Batches every process yields for one pass: enough for the largest share."""
  return math.ceil(math.ceil(global_size / process_count) / batch_size)


def tf_options(data: ml_collections.ConfigDict) -> tf.data.Options:
  """Deterministic tf.data (every input pipeline of relic), on ``data.num_threads`` threads."""
  options = tf.data.Options()
  options.deterministic = True
  options.threading.max_intra_op_parallelism = 1
  if data.num_threads > 0:
    options.threading.private_threadpool_size = data.num_threads
  return options


def parallel_calls(data: ml_collections.ConfigDict) -> int:
  return data.num_threads if data.num_threads > 0 else tf.data.AUTOTUNE


def _stream(reader: sources.Reader, root: tf.Tensor, first_epoch: int, offset: int,
            shuffle: bool, repeat: bool) -> tf.data.Dataset:
  """(epoch, position, record) from ``offset`` in ``first_epoch`` on; records undecoded."""
  def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
    ds = reader.epoch(root, epoch, shuffle).enumerate()
    return ds.map(lambda position, record: (epoch, position, record))

  ds = one_epoch(tf.constant(first_epoch, tf.int64)).skip(offset)
  if repeat:
    ds = ds.concatenate(tf.data.Dataset.range(first_epoch + 1, _MAX_EPOCHS).flat_map(one_epoch))
  return ds


def _probe(reader: sources.Reader, root: tf.Tensor, example, what: str) -> None:
  """Fails at start-up if none of the first few examples can be produced.

  The pipelines skip an example whose reading fails (``ignore_errors``), so that one bad
  record never stops a run; if *every* example failed (a systematic problem, e.g. a mask
  format that cannot be decoded) they would skip forever without output. Producing a few
  examples first, with errors raised, turns that into an immediate error.
  """
  zero = tf.constant(0, tf.int64)
  ds = reader.epoch(root, zero, shuffle=False).take(_PROBE_EXAMPLES).enumerate()
  iterator = iter(ds.map(lambda position, record: example(zero, position, record)))
  errors, produced = [], 0
  for _ in range(_PROBE_EXAMPLES):
    try:
      next(iterator)
      produced += 1
    except StopIteration:
      break
    except tf.errors.OpError as e:   # the iterator goes on with the next element
      errors.append(e)
  if errors and not produced:
    raise RuntimeError(f"None of the first {len(errors)} examples of {what} can be read; "
                       f"last error: {errors[-1].message}")


def pretrain_batches(config: ml_collections.ConfigDict, *, batch_size: int, seed: int,
                     start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Endless multi-crop batches of this process's share of ``config.data.train_split``.

  Args:
    config: the experiment config (reads ``config.data``).
    batch_size: this process's share of the global batch.
    seed: data seed; with ``start_step`` it fixes every batch.
    start_step: number of batches to skip: yields exactly what the iterator from step 0
      yields from its ``start_step``-th batch on.

  Yields:
    'large' ``(b, L, H, W, 3)``, 'small' ``(b, S, h, w, 3)`` (absent when S = 0) and 'label'
    ``(b,)`` int32 (-1 = unknown). Pixels are uint8 when ``augment_on_device`` (the step applies
    :func:`relic.data.augment.augment_views`), else float32 in [0, 1], augmented on the host.
  """
  if batch_size <= 0 or start_step < 0:
    raise ValueError(f"Need batch_size > 0 and start_step >= 0, got {batch_size}, {start_step}.")
  data = config.data
  if data.fake:
    process_index, process_count = _process()
    return fake.pretrain_batches(config, batch_size=batch_size, seed=seed,
                                 process_index=process_index, process_count=process_count)
  large, small = views.view_specs(config)
  with_masks = data.mask_prob > 0 and any(spec.maskable for spec in large)
  process_index, process_count = _process()
  reader = sources.get_source(config).reader(
      data.train_split, process_index=process_index, process_count=process_count,
      with_masks=with_masks)
  if reader.size == 0:
    raise ValueError(f"Split {data.train_split!r} has no examples for process {process_index}.")
  root = seeds.root_key(seed, process_index)
  first_epoch, offset = divmod(start_step * batch_size, reader.size)
  host_augment = not data.augment_on_device
  logging.info("Pretraining input: %s of %r, %d of %d examples on process %d; views %s + %s; "
               "masks %s; photometric augmentation on the %s; step %d = epoch %d, record %d.",
               data.source, data.train_split, reader.size, reader.global_size, process_index,
               *views.view_presets(config), f"p={data.mask_prob}" if with_masks else "off",
               "host" if host_augment else "device", start_step, first_epoch, offset)

  @_graph_function
  def example(epoch: tf.Tensor, position: tf.Tensor, record) -> dict[str, tf.Tensor]:
    loaded = reader.load(record)
    image = loaded["image"]
    key = seeds.example_key(root, epoch, position)
    mask = None
    if with_masks:
      mask = lambda: reader.load_mask(record, tf.shape(image)[0], tf.shape(image)[1])  # noqa: E731
    common = dict(mask_fill=data.mask_fill, host_augment=host_augment,
                  photometric=augment_spec.Photometric.from_config(data))
    out = {"large": views.make_views(image, mask, seeds.fold_in(key, _LARGE), large,
                                     mask_prob=data.mask_prob, **common),
           "label": tf.cast(loaded["label"], tf.int32)}
    if small:
      out["small"] = views.make_views(image, None, seeds.fold_in(key, _SMALL), small,
                                      mask_prob=0.0, **common)
    return out

  _probe(reader, root, example, f"split {data.train_split!r}")
  ds = _stream(reader, root, first_epoch, offset, shuffle=True, repeat=True)
  ds = ds.map(example, num_parallel_calls=parallel_calls(data), deterministic=True)
  ds = ds.ignore_errors(log_warning=True)   # a last resort; folders are validated up-front
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(tf_options(data)).as_numpy_iterator()


def eval_batches(config: ml_collections.ConfigDict, *, split: str, batch_size: int,
                 image_size: int, train_augment: bool = False, seed: int = 0,
                 repeat: bool = False, start_step: int = 0) -> Iterator[dict]:
  """Batches of this process's share of ``split`` for evaluation jobs.

  Args:
    config: the experiment config.
    split: split name, tfds slicing allowed (e.g. 'train[:10000]').
    batch_size: this process's share of the global batch.
    image_size: output side in pixels.
    train_augment: random-resized crop + flip, in a shuffled order (linear-probe training);
      else the 224/256 centre crop in stored order.
    seed: seed of the order and the augmentation.
    repeat: endless epochs (no padding); else one pass, padded.
    start_step: with ``repeat``, the batches from this one on, exactly as an uninterrupted
      stream yields them (a resumed training run): whole epochs and the records already used
      are skipped before decoding.

  Yields:
    'image' ``(b, image_size, image_size, 3)`` float32 in [0, 1], 'label' ``(b,)`` int32 and
    'valid' ``(b,)`` bool; for a multi-label source also 'labels' ``(b, num_classes)`` int32
    (see ``Source.multilabel``). A single pass is padded with invalid examples (zero image, label
    -1) to :func:`eval_num_batches` batches on every process, so each example is counted
    exactly once however the devices split the batch.
  """
  if batch_size <= 0:
    raise ValueError(f"Need batch_size > 0, got {batch_size}.")
  data = config.data
  process_index, process_count = _process()
  if data.fake:
    return fake.eval_batches(split, batch_size=batch_size, image_size=image_size, seed=seed,
                             repeat=repeat, process_index=process_index,
                             process_count=process_count)
  reader = sources.get_source(config).reader(
      split, process_index=process_index, process_count=process_count, with_masks=False)
  root = seeds.root_key(seed, process_index)

  @_graph_function
  def example(epoch: tf.Tensor, position: tf.Tensor, record) -> dict[str, tf.Tensor]:
    loaded = reader.load(record)
    key = seeds.example_key(root, epoch, position)
    out = {"image": views.eval_image(loaded["image"], key, image_size, train_augment),
           "label": tf.cast(loaded["label"], tf.int32), "valid": tf.constant(True)}
    if reader.multilabel:
      out["labels"] = tf.cast(loaded["labels"], tf.int32)
    return out

  _probe(reader, root, example, f"split {split!r}")
  first_epoch, offset = divmod(start_step * batch_size, reader.size) if repeat else (0, 0)
  ds = _stream(reader, root, first_epoch, offset, shuffle=train_augment, repeat=repeat)
  ds = ds.map(example, num_parallel_calls=parallel_calls(data), deterministic=True)
  ds = ds.ignore_errors(log_warning=True)
  if not repeat:
    padding = {"image": tf.zeros([image_size, image_size, 3], tf.float32),
               "label": tf.constant(-1, tf.int32), "valid": tf.constant(False)}
    if reader.multilabel:
      padding["labels"] = tf.fill(ds.element_spec["labels"].shape, -1)
    total = eval_num_batches(reader.global_size, process_count, batch_size) * batch_size
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat()).take(total)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(tf_options(data)).as_numpy_iterator()
