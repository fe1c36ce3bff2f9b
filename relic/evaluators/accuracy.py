"""Exact top-1 / top-5 counts of a classifier over a whole split, on any device count.

Counts, not means: every batch contributes integer sums of correct predictions over its valid
examples, overall and per true class (for the mean per-class accuracy); the pipeline pads the
last batch and marks the padding invalid. Sums accumulate on device and are read once at the
end, so each example is counted exactly once whatever the global batch, the device count or the
number of processes. Accuracies are divided at the very end.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from relic import parallel
from relic.evaluators.class_subsets import restricted_topk
from relic.evaluators.progress import Progress

TOPK = (1, 5)


def correct_counts(logits: jax.Array, labels: jax.Array, valid: jax.Array,
                   class_indices: Sequence[int] | None = None) -> dict[str, jax.Array]:
  """Correct top-k predictions among the valid examples.

  Args:
    logits: (..., B, C): any leading axes (e.g. one per head) are kept in the counts.
    labels: (B,) int labels in the full class space.
    valid: (B,) bool, False for padding.
    class_indices: restrict predictions to these classes (a test set covering fewer classes).

  Returns:
    {'top1': (...,) int32, 'top5': (...,) int32, 'count': () int32, 'class_top1': (..., C)
    int32 correct top-1 predictions per true class, 'class_count': (C,) int32 examples per class}.
  """
  top = restricted_topk(logits, max(TOPK), class_indices)
  hits = top == labels[..., None]
  valid = valid.astype(bool)
  counts = {f"top{k}": jnp.sum(jnp.any(hits[..., :k], axis=-1) & valid, axis=-1, dtype=jnp.int32)
            for k in TOPK}
  counts["count"] = jnp.sum(valid, dtype=jnp.int32)
  # Padding (label -1) one-hot encodes to zeros, and is masked by ``valid`` anyway.
  per_class = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.int32) * valid[:, None]
  counts["class_count"] = per_class.sum(0)
  counts["class_top1"] = jnp.einsum("...b,bc->...c", (hits[..., 0] & valid).astype(jnp.int32),
                                    per_class)
  return counts


def accuracies(counts: dict[str, Any]) -> dict[str, Any]:
  """Counts -> percentages (same leading shape), plus the example count.

  'mean_per_class' is the mean over the classes that have examples of each class's top-1
  accuracy (the metric the literature reports for Pets, Caltech-101, Flowers-102).
  """
  n = int(counts["count"])
  out: dict[str, Any] = {"num_examples": n}

  def plain(value: np.ndarray):
    return value.tolist() if value.ndim else float(value)

  for k in TOPK:
    out[f"top{k}"] = plain(100.0 * np.asarray(counts[f"top{k}"], np.float64) / max(n, 1))
  class_count = np.asarray(counts["class_count"], np.int64)
  present = class_count > 0
  per_class = np.asarray(counts["class_top1"], np.float64)[..., present] / class_count[present]
  out["mean_per_class"] = plain(100.0 * per_class.mean(-1) if present.any()
                                else np.zeros(per_class.shape[:-1]))
  return out


def _host(x: jax.Array) -> np.ndarray:
  """A replicated global array on this host (works with several processes)."""
  return np.asarray(x.addressable_data(0))


@functools.lru_cache(maxsize=32)
def _counter(logits_fn: Callable, class_indices: tuple[int, ...] | None):
  """Jitted per-batch counting, one per (logits_fn, class subset): a job that scores many test
  sets with the same model compiles it once."""
  def batch_counts(params, images, labels, valid):
    return correct_counts(logits_fn(params, images), labels, valid, class_indices)

  @jax.jit
  def step(totals, params, images, labels, valid):
    return jax.tree.map(jnp.add, totals, batch_counts(params, images, labels, valid))

  return batch_counts, step


def count_split(logits_fn: Callable[[Any, jax.Array], jax.Array], params: Any,
                batches: Iterable[dict], mesh, *, class_indices: Sequence[int] | None = None,
                progress: Progress | None = None) -> dict[str, np.ndarray]:
  """Runs ``logits_fn(params, images)`` over every batch and returns the exact counts.

  Args:
    logits_fn: pure function of (params, global image batch) -> (..., B, C) logits; pass the
      same function object for every split so the computation is compiled once.
    params: its parameters, already placed on the mesh.
    batches: per-process eval batches ('image', 'label', 'valid').
    class_indices: see :func:`correct_counts`.
    progress: updated with the number of valid examples of each batch.
  """
  batch_counts, step = _counter(logits_fn, None if class_indices is None else tuple(class_indices))
  totals = None
  for batch in batches:
    images, labels, valid = (parallel.to_global(batch[k], mesh)
                             for k in ("image", "label", "valid"))
    if totals is None:
      shapes = jax.eval_shape(batch_counts, params, images, labels, valid)
      totals = parallel.replicate(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes),
                                  mesh)
    totals = step(totals, params, images, labels, valid)
    if progress is not None:
      progress.update(int(np.asarray(batch["valid"]).sum()) * jax.process_count())
  if totals is None:
    raise ValueError("The split produced no batches; check the split name and its size.")
  return {k: _host(v) for k, v in totals.items()}
