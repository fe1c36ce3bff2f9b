"""Multi-label linear evaluation (VOC2007 classification): one-vs-rest logistic regression on
frozen features, scored by the 11-point interpolated mean average precision of the VOC2007
devkit, the number the SimCLR / BYOL transfer tables report for VOC2007.

Targets are (N, C) int arrays: 1 = the class is in the image, 0 = it is not, -1 = ignored (VOC's
"difficult" objects: an image whose only objects of a class are difficult counts neither as a
positive nor as a negative for that class, as in the devkit).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from relic.evaluators import linear


def average_precision_11point(scores: np.ndarray, targets: np.ndarray) -> float:
  """VOC2007 AP of one class (%): the mean over recall thresholds 0, 0.1, ..., 1 of the best
  precision reached at a recall of at least that threshold (0 if never reached).

  Args:
    scores: (N,) classifier scores.
    targets: (N,) 1 / 0 / -1 (ignored).

  Returns:
    AP in %, NaN when the class has no positive example.
  """
  keep = targets >= 0
  scores, positive = scores[keep], targets[keep] > 0
  num_positive = int(positive.sum())
  if num_positive == 0:
    return float("nan")
  order = np.argsort(-scores, kind="stable")
  true_positives = np.cumsum(positive[order])
  precision = true_positives / np.arange(1, len(order) + 1)
  points = []
  for k in range(11):
    # recall >= k/10, compared in integers: a recall of exactly 3/10 reaches the 0.3 point,
    # which a float threshold (0.30000000000000004) would miss.
    reached = 10 * true_positives >= k * num_positive
    points.append(precision[reached].max() if np.any(reached) else 0.0)
  return float(100.0 * np.mean(points))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> tuple[float, list[float]]:
  """``(mAP, per-class APs)`` in %, the mean over the classes that have a positive example."""
  per_class = [average_precision_11point(scores[:, c], targets[:, c])
               for c in range(targets.shape[1])]
  present = [ap for ap in per_class if not np.isnan(ap)]
  return (float(np.mean(present)) if present else float("nan")), per_class


def _map_score(model: dict, x: np.ndarray, y: np.ndarray) -> float:
  return mean_average_precision(linear.logits(model, x), y)[0]


def select_and_evaluate(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                        test_y: np.ndarray, *, l2_grid: Sequence[float] = linear.DEFAULT_L2_GRID,
                        val_fraction: float = 0.2, seed: int = 0, max_iter: int = 300,
                        holdout: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
  """Chooses the L2 strength by mAP on held-out examples (``holdout``, else a random
  ``val_fraction`` of train), refits and reports test mAP (see
  :func:`relic.evaluators.linear.select_and_fit`).

  Returns:
    dict with 'map' (test, %), 'per_class_ap', 'l2' (chosen), 'val_map' per l2, 'num_val'.
  """
  model, chosen = linear.select_and_fit(train_x, train_y, num_classes=train_y.shape[1],
                                        l2_grid=l2_grid, val_fraction=val_fraction, seed=seed,
                                        max_iter=max_iter, holdout=holdout, metric="map",
                                        score=_map_score)
  test_map, per_class = mean_average_precision(linear.logits(model, test_x), test_y)
  return {"map": test_map, "per_class_ap": per_class, **chosen}
