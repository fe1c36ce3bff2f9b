"""Weighted k-nearest-neighbour classification on cosine similarity (Wu et al. 2018).

Each of the k most similar bank features votes for its label with weight exp(sim / T); the
class with the largest total wins. A cheap, training-free monitor of representation quality.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def _normalize(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _predict(bank, bank_labels, queries, temperature, *, k: int, num_classes: int):
  """One chunk of queries; module-level, so every call with the same shapes reuses one
  compilation (the bank is an argument, not a constant baked into the program)."""
  sims = _normalize(queries) @ bank.T
  top_sims, top_idx = jax.lax.top_k(sims, k)
  votes = jax.nn.one_hot(bank_labels[top_idx], num_classes) * jnp.exp(top_sims / temperature)[
      ..., None]
  return jnp.argmax(votes.sum(axis=1), axis=-1)


def knn_predict(bank_features: np.ndarray, bank_labels: np.ndarray, query_features: np.ndarray,
                *, num_classes: int, k: int = 20, temperature: float = 0.07,
                chunk: int = 1024) -> np.ndarray:
  """Predicted labels of ``query_features`` from the labelled bank."""
  if len(bank_features) == 0:
    raise ValueError("kNN needs a non-empty labelled bank.")
  k = min(k, len(bank_features))
  bank = _normalize(jnp.asarray(bank_features, jnp.float32))
  bank_labels = jnp.asarray(bank_labels, jnp.int32)
  predictions = [np.asarray(_predict(bank, bank_labels,
                                     jnp.asarray(query_features[i:i + chunk], jnp.float32),
                                     jnp.float32(temperature), k=k, num_classes=num_classes))
                 for i in range(0, len(query_features), chunk)]
  return np.concatenate(predictions) if predictions else np.zeros((0,), np.int32)


def knn_top1(bank_features, bank_labels, query_features, query_labels, *, num_classes: int,
             k: int = 20, temperature: float = 0.07) -> float:
  """Top-1 accuracy (%) of the weighted kNN classifier."""
  predictions = knn_predict(bank_features, bank_labels, query_features, num_classes=num_classes,
                            k=k, temperature=temperature)
  return float(100.0 * np.mean(predictions == np.asarray(query_labels)))
