"""Synthetic batches for ``config.data.fake=True``: measure the step without any input I/O.

Shapes, dtypes and label range mimic ImageNet pretraining (1000 classes, 1,281,167 training
and 50,000 evaluation examples). One batch is drawn from the seed and yielded again and again,
so the host does no work per step. The batch is drawn for the *global* batch and each process
keeps its own slice, so the global batch is the same whatever the number of processes.
"""

from __future__ import annotations

import itertools
import math
from typing import Iterator

import ml_collections
import numpy as np

from relic.data import splits

NUM_CLASSES = 1000
NUM_TRAIN = 1_281_167
NUM_EVAL = 50_000


def num_examples(split: str) -> int:
  return NUM_TRAIN if splits.parse(split)[0] == "train" else NUM_EVAL


def _pixels(rng: np.random.Generator, shape: tuple[int, ...], as_float: bool) -> np.ndarray:
  if as_float:
    return rng.random(shape, dtype=np.float32)
  return rng.integers(0, 256, shape, dtype=np.uint8)


def pretrain_batches(config: ml_collections.ConfigDict, *, batch_size: int, seed: int,
                     process_index: int = 0,
                     process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  views = config.data.views
  rng = np.random.default_rng(seed)
  host_float = not config.data.augment_on_device
  total = batch_size * process_count
  batch = {"large": _pixels(rng, (total, views.large.num, views.large.size,
                                  views.large.size, 3), host_float),
           "label": rng.integers(0, NUM_CLASSES, total, dtype=np.int32)}
  if views.small.num:
    batch["small"] = _pixels(rng, (total, views.small.num, views.small.size,
                                   views.small.size, 3), host_float)
  own = slice(process_index * batch_size, (process_index + 1) * batch_size)
  return itertools.repeat({k: v[own] for k, v in batch.items()})


def eval_batches(split: str, *, batch_size: int, image_size: int, seed: int, repeat: bool,
                 process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
  rng = np.random.default_rng(seed)
  image = rng.random((batch_size, image_size, image_size, 3), dtype=np.float32)
  label = rng.integers(0, NUM_CLASSES, batch_size, dtype=np.int32)
  if repeat:
    yield from itertools.repeat({"image": image, "label": label,
                                 "valid": np.ones(batch_size, bool)})
    return
  total = num_examples(split)
  own = len(range(process_index, total, process_count))
  for b in range(math.ceil(math.ceil(total / process_count) / batch_size)):
    valid = np.arange(b * batch_size, (b + 1) * batch_size) < own
    yield {"image": image, "label": np.where(valid, label, -1).astype(np.int32), "valid": valid}
