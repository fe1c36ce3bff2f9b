"""The ``frozen`` evaluator: a linear classifier and kNN on frozen features of the encoder, next
to a random-init encoder of the same architecture (``config.final_eval``); the end-of-run summary
of the quickstart. :func:`split_features` also serves the ``knn`` evaluator.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from relic.evaluators import features as features_lib
from relic.evaluators import knn, linear


EVAL_BATCH_RANGE = (256, 1024)   # global images per feature batch: min, max


def eval_batch_size(config, mesh) -> int:
  """A per-process eval batch: the training batch within ``EVAL_BATCH_RANGE``, rounded to the
  device count. Inference holds no activations for a backward pass, so a small training batch
  (the quickstart's 64) need not mean small feature batches, whose per-batch overhead (input
  pipeline, dispatch, gathering) would dominate the evaluation."""
  devices = mesh.devices.size
  low, high = EVAL_BATCH_RANGE
  wanted = min(max(config.train.batch_size, low), high)
  global_batch = max(devices, (wanted // devices) * devices)
  return global_batch // max(1, _process_count())


def _process_count() -> int:
  return jax.process_count()


def labelled_split(config) -> str:
  """The labelled training split of pretraining's evaluators: ``data.labelled_split``, else
  ``data.train_split`` (STL-10 pretrains on 'unlabelled+train' and scores on 'train')."""
  return config.data.get("labelled_split", "") or config.data.train_split


def split_features(config, encoder, variables: Any, mesh, split: str,
                   max_examples: int) -> tuple[np.ndarray, np.ndarray]:
  from relic.data import pipeline  # pylint: disable=import-outside-toplevel
  batches = pipeline.eval_batches(config, split=split, batch_size=eval_batch_size(config, mesh),
                                  image_size=config.data.views.large.size)
  return features_lib.extract_features(encoder, variables, batches, mesh,
                                       max_examples=max_examples)


def evaluate_frozen(config, encoder, variables: Any, mesh, num_classes: int) -> dict[str, Any]:
  """Linear classifier (L2 chosen on a held-out slice of train) and kNN on frozen features,
  for the eval split and every extra split in ``config.final_eval.extra_splits``."""
  train_x, train_y = split_features(config, encoder, variables, mesh, labelled_split(config),
                                    config.final_eval.num_train_examples)
  # One classifier (its L2 strength chosen once on train) scores every split.
  model, chosen = linear.select_and_fit(train_x, train_y, num_classes=num_classes,
                                        seed=config.seed)
  results: dict[str, Any] = {}
  for split in [config.data.eval_split, *config.final_eval.extra_splits]:
    test_x, test_y = split_features(config, encoder, variables, mesh, split,
                                    config.final_eval.num_test_examples)
    results[split] = {
        "linear_top1": linear.accuracy(model, test_x, test_y),
        "linear_l2": chosen["l2"],
        "knn_top1": knn.knn_top1(train_x, train_y, test_x, test_y, num_classes=num_classes,
                                 k=config.knn.k, temperature=config.knn.temperature),
        "num_train": int(len(train_x)),
        "num_test": int(len(test_x)),
    }
  return results


class Evaluator:
  """Final evaluation of pretraining: ``{'pretrained': {split: ...}, 'random_init': ...}``."""

  def __init__(self, config, encoder, mesh, num_classes: int):
    self._config, self._encoder, self._mesh, self._classes = config, encoder, mesh, num_classes

  def run(self, variables: Any) -> dict[str, Any]:
    config, started = self._config, time.perf_counter()
    results = {"pretrained": evaluate_frozen(config, self._encoder, variables, self._mesh,
                                             self._classes)}
    if config.final_eval.compare_random_init:
      size = config.data.views.large.size
      random_vars = self._encoder.init(jax.random.key(config.seed + 1),
                                       jnp.zeros((2, size, size, 3)), train=False)
      results["random_init"] = evaluate_frozen(config, self._encoder, random_vars, self._mesh,
                                               self._classes)
    results["evaluation_seconds"] = time.perf_counter() - started
    return results

  @staticmethod
  def markdown(results: dict[str, Any]) -> str:
    """A readable table: encoder x split -> linear / kNN top-1."""
    lines = ["| encoder | split | linear top-1 (%) | kNN top-1 (%) |", "|---|---|---|---|"]
    for encoder in ("pretrained", "random_init"):
      for split, r in results.get(encoder, {}).items():
        lines.append(f"| {encoder} | {split} | {r['linear_top1']:.1f} | {r['knn_top1']:.1f} |")
    return "\n".join(lines) + "\n"
