"""Outputs of a model (frozen-encoder features, a fine-tuned network's logits) for a whole split,
each example exactly once, on any device count."""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable

import jax
import numpy as np
from jax.experimental import multihost_utils

from relic import parallel


@functools.lru_cache(maxsize=16)
def make_feature_fn(encoder, mesh):
  """Jitted ``(variables, images) -> features`` with BN in inference mode, batch sharded.

  One function per (encoder, mesh) (both hash by value), so every split and every set of
  variables of one architecture reuse one compilation.
  """
  return jax.jit(lambda variables, images: encoder.apply(variables, images, train=False),
                 out_shardings=parallel.data_sharding(mesh))


def collect_outputs(fn: Callable[[Any, jax.Array], jax.Array], variables: Any,
                    batches: Iterable[dict], mesh, max_examples: int = 0,
                    progress=None) -> tuple[np.ndarray, np.ndarray]:
  """``fn(variables, images)`` and the labels of every valid example of ``batches`` (per-process
  eval batches with 'image', 'label', 'valid'; padded examples are dropped). Identical on every
  process. The labels are the batches' 'labels' (N, num_classes) when they have them (a
  multi-label dataset), else 'label' (N,).

  Args:
    fn: jitted function of (variables already on the mesh, global image batch) -> (B, ...).
    max_examples: stop once this many valid examples are collected (0 = the whole split).
    progress: updated with the number of valid examples of each batch.
  """
  outputs, labels = [], []
  count = 0
  for batch in batches:
    out = fn(variables, parallel.to_global(batch["image"], mesh))
    gathered = multihost_utils.process_allgather(
        {"o": out, "l": parallel.to_global(batch.get("labels", batch["label"]), mesh),
         "v": parallel.to_global(batch["valid"], mesh)}, tiled=True)
    valid = np.asarray(gathered["v"], bool)
    outputs.append(np.asarray(gathered["o"])[valid])
    labels.append(np.asarray(gathered["l"])[valid])
    count += int(valid.sum())
    if progress is not None:
      progress.update(int(np.asarray(batch["valid"]).sum()) * jax.process_count())
    if max_examples and count >= max_examples:
      break
  if not outputs:
    raise ValueError("The split produced no batches; check the split name and its size.")
  outputs_np, labels_np = np.concatenate(outputs), np.concatenate(labels)
  if max_examples:
    outputs_np, labels_np = outputs_np[:max_examples], labels_np[:max_examples]
  return outputs_np.astype(np.float32), labels_np.astype(np.int32)


def extract_features(encoder, variables: Any, batches: Iterable[dict], mesh,
                     max_examples: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Frozen-encoder features (BN in inference mode) and labels, see :func:`collect_outputs`."""
  return collect_outputs(make_feature_fn(encoder, mesh), parallel.replicate(variables, mesh),
                         batches, mesh, max_examples)
