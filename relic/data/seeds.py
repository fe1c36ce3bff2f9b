"""Stateless random keys for the host pipeline: one key per (seed, process, epoch, example).

Every random choice on the host (epoch order, crop boxes, masking, host-side photometric
augmentation) is a stateless op keyed by where the example sits in the stream, never by how
many elements a stateful generator has produced. That is what makes batches independent of
tf.data's parallelism and lets a resumed iterator skip records without replaying their
random draws.
"""

from __future__ import annotations

from relic.data.lazy_tf import tf

# Purposes folded into a view key, so each draw uses its own stream.
CROP = 0
MASK = 1
AUGMENT = 2
EPOCH_ORDER = 3
SHUFFLE_BUFFER = 4


def fold_in(key: tf.Tensor, data) -> tf.Tensor:
  """A new key from ``key`` and an integer (Python or scalar tensor)."""
  return tf.random.experimental.stateless_fold_in(key, tf.cast(data, tf.int64))


def root_key(seed: int, process_index: int) -> tf.Tensor:
  """Key of one process's stream: processes read disjoint data and draw independently."""
  return fold_in(tf.constant([seed, 0x5E1C], tf.int64), process_index)


def example_key(root: tf.Tensor, epoch: tf.Tensor, position: tf.Tensor) -> tf.Tensor:
  """Key of the example at ``position`` of ``epoch``'s order."""
  return fold_in(fold_in(root, epoch), position)


def epoch_key(root: tf.Tensor, epoch: tf.Tensor, purpose: int) -> tf.Tensor:
  return fold_in(fold_in(fold_in(root, epoch), -1), purpose)


def int64_seed(key: tf.Tensor) -> tf.Tensor:
  """A scalar int64 drawn from ``key``, for ops that take an integer seed (Dataset.shuffle)."""
  return tf.random.stateless_uniform([], seed=key, minval=None, maxval=None, dtype=tf.int64)
