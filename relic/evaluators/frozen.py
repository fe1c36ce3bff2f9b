"""Quick frozen-feature evaluation of an encoder: kNN and a linear classifier on features.

Used by the pretraining job as its periodic kNN monitor and, when ``config.final_eval.enabled``,
for the end-of-run summary that compares the pretrained encoder with a random-init one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from relic.evaluators import features as features_lib
from relic.evaluators import knn, linear


def eval_batch_size(config, mesh) -> int:
  """A per-process eval batch: the training batch rounded to the device count."""
  devices = mesh.devices.size
  global_batch = max(devices, (min(config.train.batch_size, 1024) // devices) * devices)
  return global_batch // max(1, _process_count())


def _process_count() -> int:
  import jax  # pylint: disable=import-outside-toplevel
  return jax.process_count()


def split_features(config, encoder, variables: Any, mesh, split: str,
                   max_examples: int) -> tuple[np.ndarray, np.ndarray]:
  from relic.data import pipeline  # pylint: disable=import-outside-toplevel
  batches = pipeline.eval_batches(config, split=split, batch_size=eval_batch_size(config, mesh),
                                  image_size=config.data.views.large.size)
  return features_lib.extract_features(encoder, variables, batches, mesh,
                                       max_examples=max_examples)


def knn_monitor(config, encoder, variables: Any, mesh, num_classes: int,
                bank: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
  """kNN top-1 (%) on the eval split with a labelled bank from the train split."""
  bank_x, bank_y = bank or split_features(config, encoder, variables, mesh,
                                          config.data.train_split, config.knn.num_train_examples)
  test_x, test_y = split_features(config, encoder, variables, mesh, config.data.eval_split,
                                  config.final_eval.num_test_examples)
  return {"knn_top1": knn.knn_top1(bank_x, bank_y, test_x, test_y, num_classes=num_classes,
                                   k=config.knn.k, temperature=config.knn.temperature)}


def evaluate_frozen(config, encoder, variables: Any, mesh, num_classes: int) -> dict[str, Any]:
  """Linear classifier (L2 chosen on a held-out slice of train) and kNN on frozen features,
  for the eval split and every extra split in ``config.final_eval.extra_splits``."""
  train_x, train_y = split_features(config, encoder, variables, mesh, config.data.train_split,
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
