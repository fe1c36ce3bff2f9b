"""Scores of saliency masks against ground-truth masks, and the centred-ellipse baseline.

Per image, with both masks binarised at 128: IoU = |P and G| / |P or G| (1 when both are
empty), precision |P and G| / |P|, recall |P and G| / |G|, F-measure
(1 + b2) P R / (b2 P + R) with b2 = 0.3 (the salient-object-detection convention, Achanta et
al. 2009, weighting precision), and MAE = mean |p - g| of the masks scaled to [0, 1]. Scores
are means over images, in percent (MAE in [0, 1]).
"""

from __future__ import annotations

import numpy as np

BETA2 = 0.3
ELLIPSE_SCALES = tuple(np.round(np.arange(0.15, 0.51, 0.05), 2))


def per_image(masks: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
  """(B, H, W) uint8 masks and ground truth -> per-image 'iou', 'f_measure', 'mae'."""
  p, g = masks >= 128, truth >= 128
  inter = np.sum(p & g, axis=(1, 2)).astype(np.float64)
  union = np.sum(p | g, axis=(1, 2))
  iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
  precision = np.where(p.any(axis=(1, 2)), inter / np.maximum(p.sum(axis=(1, 2)), 1), 0.0)
  recall = np.where(g.any(axis=(1, 2)), inter / np.maximum(g.sum(axis=(1, 2)), 1), 1.0)
  f = np.where(precision + recall > 0, (1 + BETA2) * precision * recall /
               np.maximum(BETA2 * precision + recall, 1e-12), 0.0)
  mae = np.mean(np.abs(masks.astype(np.float64) - truth.astype(np.float64)) / 255.0, axis=(1, 2))
  return {"iou": iou, "f_measure": f, "mae": mae}


def ellipse(height: int, width: int, scale: float) -> np.ndarray:
  """(H, W) uint8: 255 inside the centred ellipse of semi-axes scale * (H, W)."""
  y = (np.arange(height) - (height - 1) / 2) / (scale * height)
  x = (np.arange(width) - (width - 1) / 2) / (scale * width)
  return np.where(y[:, None] ** 2 + x[None, :] ** 2 <= 1, 255, 0).astype(np.uint8)


class Scores:
  """Running means of :func:`per_image` over the valid images of batches."""

  def __init__(self):
    self.sums = {"iou": 0.0, "f_measure": 0.0, "mae": 0.0}
    self.count = 0

  def add(self, masks: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> None:
    for key, values in per_image(masks[valid], truth[valid]).items():
      self.sums[key] += float(values.sum())
    self.count += int(valid.sum())

  def totals(self) -> np.ndarray:
    return np.array([self.sums["iou"], self.sums["f_measure"], self.sums["mae"], self.count])

  @staticmethod
  def means(totals: np.ndarray) -> dict[str, float]:
    """Totals summed over processes -> {'iou', 'f_measure' (percent), 'mae', 'num_images'}."""
    count = max(float(totals[3]), 1.0)
    return {"iou": 100 * totals[0] / count, "f_measure": 100 * totals[1] / count,
            "mae": totals[2] / count, "num_images": int(totals[3])}


def foreground_histogram(masks: np.ndarray, valid: np.ndarray, bins: int = 10) -> np.ndarray:
  """Counts of images by foreground fraction in ``bins`` equal bins of [0, 1]."""
  fraction = np.mean(masks[valid] >= 128, axis=(1, 2))
  return np.histogram(fraction, bins=bins, range=(0.0, 1.0))[0]
