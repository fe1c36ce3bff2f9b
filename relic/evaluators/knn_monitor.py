"""The ``knn`` evaluator: weighted kNN top-1 of the encoder on the eval split, with a labelled
bank of ``config.knn.num_train_examples`` training images (a cheap signal during pretraining)."""

from __future__ import annotations

from typing import Any

from relic.evaluators import frozen, knn


class Evaluator:

  def __init__(self, config, encoder, mesh, num_classes: int):
    self._config, self._encoder, self._mesh, self._classes = config, encoder, mesh, num_classes

  def run(self, variables: Any) -> dict[str, float]:
    config = self._config
    bank_x, bank_y = frozen.split_features(config, self._encoder, variables, self._mesh,
                                           frozen.labelled_split(config),
                                           config.knn.num_train_examples)
    test_x, test_y = frozen.split_features(config, self._encoder, variables, self._mesh,
                                           config.data.eval_split,
                                           config.final_eval.num_test_examples)
    return {"knn_top1": knn.knn_top1(bank_x, bank_y, test_x, test_y, num_classes=self._classes,
                                     k=config.knn.k, temperature=config.knn.temperature)}

  @staticmethod
  def markdown(results: dict[str, Any]) -> str:
    return f"kNN top-1: {results['knn_top1']:.1f}%\n"
