"""Deterministic example subsets of a labelled split: label fractions and hold-out slices.

Semi-supervised fine-tuning on ImageNet uses SimCLR's fixed 1% / 10% lists (tfds
``imagenet2012_subset``). Other datasets have no such list, so relic draws one the same way
every time: a class-balanced subset of a fixed size, chosen by a seeded permutation of each
class. Balanced means every class gets the same number of examples, up to one more for some
classes when the count does not divide (and fewer only for a class that has fewer examples, in
which case the other classes make up the difference), so the subset is as close to uniform
over classes as the split allows and its size is exactly what was asked for.
"""

from __future__ import annotations

import numpy as np


def subset_size(num_examples: int, fraction: float) -> int:
  """Examples in a ``fraction`` subset: ``round(fraction * num_examples)``, at least 1."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"A label fraction must be in (0, 1], got {fraction}.")
  return max(1, min(num_examples, int(round(fraction * num_examples))))


def class_quotas(class_counts: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
  """Examples to take per class: as equal as possible, capped by each class's size, summing
  to exactly ``total``. The classes that get the extra example are drawn by ``rng``."""
  class_counts = np.asarray(class_counts, np.int64)
  if total > class_counts.sum():
    raise ValueError(f"Cannot take {total} examples from a split of {class_counts.sum()}.")
  # Water-filling: the largest level L with sum(min(count, L)) <= total; every class gets
  # min(count, L) and the remainder (fewer than the classes larger than L) goes one each to
  # classes drawn by the seed among those larger than L.
  level = 0
  while level < class_counts.max() and np.minimum(class_counts, level + 1).sum() <= total:
    level += 1
  quotas = np.minimum(class_counts, level)
  remainder = int(total - quotas.sum())
  candidates = np.flatnonzero(class_counts > level)
  quotas[rng.permutation(candidates)[:remainder]] += 1
  return quotas


def class_balanced_subset(labels: np.ndarray, total: int, seed: int = 0) -> np.ndarray:
  """Sorted indices of a class-balanced subset of exactly ``total`` examples.

  Args:
    labels: (N,) integer labels of the split, in its (deterministic) example order.
    total: subset size.
    seed: fixes which examples (and which classes get a remainder example) are chosen.

  Returns:
    int64 indices into ``labels``, ascending.
  """
  labels = np.asarray(labels)
  classes, inverse = np.unique(labels, return_inverse=True)
  counts = np.bincount(inverse, minlength=len(classes))
  rng = np.random.default_rng(seed)
  quotas = class_quotas(counts, total, rng)
  chosen = []
  for c, quota in enumerate(quotas):
    members = np.flatnonzero(inverse == c)
    chosen.append(members[rng.permutation(len(members))[:quota]])
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros((0,), np.int64)


def holdout_split(num_examples: int, num_holdout: int) -> tuple[np.ndarray, np.ndarray]:
  """``(holdout, rest)`` index ranges: the first ``num_holdout`` examples and the others.

  The hold-out is a prefix, as DeepMind's VALID split (``train[:10000]``, utils/dataset.py),
  so the same images are held out whatever the seed, the device count or the number of
  processes.
  """
  if not 0 < num_holdout < num_examples:
    raise ValueError(f"The hold-out ({num_holdout}) must leave training examples in a split of "
                     f"{num_examples}.")
  return np.arange(num_holdout), np.arange(num_holdout, num_examples)
