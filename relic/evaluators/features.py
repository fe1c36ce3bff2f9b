"""Frozen-encoder features of a whole split, each example exactly once, on any device count."""

from __future__ import annotations

from typing import Any, Iterable

import jax
import numpy as np
from jax.experimental import multihost_utils

from relic import parallel


def make_feature_fn(encoder, mesh):
  """Jitted ``(variables, images) -> features`` with BN in inference mode, batch sharded."""
  return jax.jit(lambda variables, images: encoder.apply(variables, images, train=False),
                 out_shardings=parallel.data_sharding(mesh))


def extract_features(encoder, variables: Any, batches: Iterable[dict], mesh,
                     max_examples: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Features and labels of every valid example of ``batches`` (per-process eval batches with
  'image', 'label', 'valid'; padded examples are dropped). Identical on every process. The
  labels are the batches' 'labels' (N, num_classes) when they have them (a multi-label
  dataset), else 'label' (N,).

  Args:
    max_examples: stop once this many valid examples are collected (0 = the whole split).
  """
  feature_fn = make_feature_fn(encoder, mesh)
  variables = parallel.replicate(variables, mesh)
  features, labels = [], []
  count = 0
  for batch in batches:
    images = parallel.to_global(batch["image"], mesh)
    out = feature_fn(variables, images)
    gathered = multihost_utils.process_allgather(
        {"f": out, "l": parallel.to_global(batch.get("labels", batch["label"]), mesh),
         "v": parallel.to_global(batch["valid"], mesh)}, tiled=True)
    valid = np.asarray(gathered["v"], bool)
    features.append(np.asarray(gathered["f"])[valid])
    labels.append(np.asarray(gathered["l"])[valid])
    count += int(valid.sum())
    if max_examples and count >= max_examples:
      break
  features_np = np.concatenate(features) if features else np.zeros((0, encoder.num_features))
  labels_np = np.concatenate(labels) if labels else np.zeros((0,), np.int32)
  if max_examples:
    features_np, labels_np = features_np[:max_examples], labels_np[:max_examples]
  return features_np.astype(np.float32), labels_np.astype(np.int32)
