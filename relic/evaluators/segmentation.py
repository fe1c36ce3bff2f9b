"""Semantic-segmentation scores: a pixel confusion matrix over a whole split, and the mean
intersection-over-union (mIoU) of PASCAL VOC and Cityscapes.

Counts, not means: each batch adds integer (true class, predicted class) pixel counts over the
scored pixels (a class id below ``num_classes``, so 255 = void / border / padding never counts,
and never over the padded examples of the last batch). The batch's counts are read to the host
and summed in int64 (a Cityscapes validation pass counts about 10^9 pixels), so the matrix is
exact whatever the batch, the device count or the number of processes.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from relic import parallel


def confusion_counts(logits: jax.Array, mask: jax.Array, valid: jax.Array) -> jax.Array:
  """(C, C) int32 pixel counts, rows = true class, columns = predicted class.

  Args:
    logits: (B, H, W, C) per-pixel class scores.
    mask: (B, H, W) int true classes; values outside [0, C) (e.g. 255) are not scored.
    valid: (B,) bool, False for padding examples.
  """
  num_classes = logits.shape[-1]
  predicted = jnp.argmax(logits, axis=-1)
  scored = (mask >= 0) & (mask < num_classes) & valid[:, None, None]
  index = jnp.where(scored, mask * num_classes + predicted, 0).ravel()
  counts = jnp.zeros((num_classes * num_classes,), jnp.int32).at[index].add(
      scored.ravel().astype(jnp.int32))
  return counts.reshape(num_classes, num_classes)


def scores(confusion: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
  """mIoU (%), per-class IoU and pixel accuracy of a confusion matrix.

  IoU of class c = true positives / (true + predicted - true positives) pixels of c; the mean
  is over the classes that occur in the ground truth or the predictions (a class absent from
  both has no IoU, as in the VOC devkit and cityscapesScripts, which score every class of the
  benchmark: on a full validation set every class occurs).
  """
  confusion = np.asarray(confusion, np.int64)
  true_positive = np.diag(confusion).astype(np.float64)
  union = confusion.sum(0) + confusion.sum(1) - true_positive
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = np.where(union > 0, true_positive / union, np.nan)
  names = list(class_names) if class_names is not None else [str(c) for c in range(len(iou))]
  total = int(confusion.sum())
  return {
      "miou": float(100.0 * np.nanmean(iou)) if np.any(union > 0) else float("nan"),
      "pixel_accuracy": float(100.0 * true_positive.sum() / max(total, 1)),
      "per_class_iou": {name: (None if np.isnan(v) else float(100.0 * v))
                        for name, v in zip(names, iou)},
      "num_pixels": total,
  }


@functools.lru_cache(maxsize=8)
def _jitted_counts(logits_fn: Callable, mesh):
  """One compiled counting function per model (every evaluation of a sweep reuses it); the
  counts come out replicated, so every process reads the whole matrix from its own device."""
  def count(variables, images, mask, valid):
    return confusion_counts(logits_fn(variables, images), mask, valid)
  return jax.jit(count, out_shardings=parallel.replicated(mesh))


def confusion_matrix(logits_fn: Callable[[Any, jax.Array], jax.Array], variables: Any,
                     batches: Iterable[dict], mesh, num_classes: int,
                     progress=None) -> np.ndarray:
  """The (C, C) int64 confusion matrix of ``logits_fn(variables, images)`` over every valid
  example of ``batches`` (per-process batches with 'image', 'mask', 'valid').

  Args:
    logits_fn: pure function (variables on the mesh, global images) -> (B, H, W, C) logits;
      pass the same function object for every split so it compiles once.
    progress: updated with the number of valid examples of each batch.
  """
  count = _jitted_counts(logits_fn, mesh)
  total = np.zeros((num_classes, num_classes), np.int64)
  seen = False
  for batch in batches:
    images, mask, valid = (parallel.to_global(batch[k], mesh) for k in ("image", "mask", "valid"))
    counts = count(variables, images, mask, valid)
    total += np.asarray(counts.addressable_data(0), np.int64)  # replicated on every device
    seen = True
    if progress is not None:
      progress.update(int(np.asarray(batch["valid"]).sum()) * jax.process_count())
  if not seen:
    raise ValueError("The split produced no batches; check the split name and its size.")
  return total
