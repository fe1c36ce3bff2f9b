"""Metric output of a run: TensorBoard events (clu), ``metrics.jsonl`` and console lines.

Only process 0 writes files; every process may call ``write`` (the others only log). Besides the
scalars, TensorBoard gets the flattened config as hparams (:meth:`MetricsLogger.write_hparams`,
from the loop), pretraining's view grids at step 0 (:meth:`MetricsLogger.write_images`) and every
evaluation's results as ``eval/...`` scalars (:func:`write_eval_scalars`, from ``write_results``).
"""

from __future__ import annotations

import json
import time
from typing import Mapping

import jax
import numpy as np
from absl import logging
from clu import metric_writers
from etils import epath

from relic.evaluators.progress import duration

METRICS_JSONL = "metrics.jsonl"


def _scalar(value) -> float:
  return float(np.asarray(value).mean())


class MetricsLogger:
  """Writes scalars per step to TensorBoard and JSON lines, and prints progress with ETA."""

  def __init__(self, workdir: str, *, total_steps: int, global_batch_size: int):
    self._is_lead = jax.process_index() == 0
    # TensorBoard events from process 0 only, and no clu LoggingWriter (create_default_writer's):
    # the console line below is the one line of a logged step.
    self._writer = metric_writers.AsyncMultiWriter(
        [metric_writers.SummaryWriter(str(workdir))] if self._is_lead else [])
    self._jsonl = epath.Path(workdir) / METRICS_JSONL
    self._total_steps = total_steps
    self._batch = global_batch_size
    self._last_time: float | None = None
    self._last_step: int | None = None

  def start(self, step: int) -> None:
    """Marks the start of timing (after compilation, at the resumed step)."""
    self._last_time, self._last_step = time.perf_counter(), step

  def write(self, step: int, scalars: Mapping[str, float], *, prefix: str = "train") -> dict:
    """Writes ``scalars`` for ``step``; with prefix 'train' also throughput and ETA."""
    values = {f"{prefix}/{k}": _scalar(v) for k, v in scalars.items()}
    line = ""
    if prefix == "train" and self._last_time is not None and step > self._last_step:
      now = time.perf_counter()
      steps_per_s = (step - self._last_step) / (now - self._last_time)
      self._last_time, self._last_step = now, step
      values["train/images_per_s"] = steps_per_s * self._batch
      values["train/steps_per_s"] = steps_per_s
      eta = (self._total_steps - step) / max(steps_per_s, 1e-9)
      line = f" | {values['train/images_per_s']:.1f} img/s | ETA {duration(eta)}"
    self._writer.write_scalars(step, values)
    if self._is_lead:
      with self._jsonl.open("a") as f:
        f.write(json.dumps({"step": int(step), **values}) + "\n")
    shown = " ".join(f"{k.split('/', 1)[1]}={v:.4g}" for k, v in sorted(values.items())
                     if not k.endswith(("images_per_s", "steps_per_s")))
    logging.info("[%s] step %d/%d%s | %s", prefix, step, self._total_steps, line, shown)
    return values

  def write_hparams(self, config: Mapping) -> None:
    """The flattened config through TensorBoard's hparams plugin (HPARAMS tab)."""
    if self._is_lead and config:
      self._writer.write_hparams(flatten_hparams(config))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Images (each (H, W, 3) or (N, H, W, 3), uint8 or float in [0, 1]) for the IMAGES tab."""
    if self._is_lead and images:
      self._writer.write_images(step, {k: np.asarray(v) for k, v in images.items()})

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def flatten_hparams(config: Mapping, prefix: str = "") -> dict[str, bool | int | float | str]:
  """``{'model.depth': 50, ...}`` from a nested config (a ConfigDict or its JSON), in the
  types the hparams plugin takes: sequences become their JSON text ('["knn"]'), None ''."""
  flat: dict[str, bool | int | float | str] = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping) or hasattr(value, "items"):
      flat.update(flatten_hparams(value, f"{name}."))
    elif isinstance(value, (bool, int, float, str)):
      flat[name] = value
    elif value is None:
      flat[name] = ""
    else:
      flat[name] = json.dumps(value, default=str) if isinstance(value, (list, tuple)) else str(value)
  return flat


# Parts of an evaluation's results that describe what was evaluated, not how well.
_RESULT_METADATA = ("encoder", "settings", "data", "probe", "fingerprint")


def eval_scalars(results: Mapping, prefix: str = "eval") -> dict[str, float]:
  """The numbers of an evaluation's results (results.json) as scalar names:
  ``{'eval/test/top1': 71.2, 'eval/pretrained/test/knn_top1': ...}``. Nested dicts join with
  '/'; lists (rate sweeps), strings, booleans and the descriptive parts (encoder, settings,
  data, the robustness job's probe record) are left out."""
  scalars: dict[str, float] = {}
  for key, value in results.items():
    name = f"{prefix}/{key}"
    if isinstance(value, Mapping):
      if key not in _RESULT_METADATA:
        scalars.update(eval_scalars(value, name))
    elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)):
      scalars[name] = float(value)
  return scalars


def write_eval_scalars(workdir: str, results: Mapping, step: int = 0) -> dict[str, float]:
  """Writes :func:`eval_scalars` of ``results`` to the workdir's TensorBoard events at ``step``
  (process 0 only; after the job's training loop has closed its own writer)."""
  scalars = eval_scalars(results)
  if jax.process_index() == 0 and scalars:
    writer = metric_writers.SummaryWriter(str(workdir))
    try:
      writer.write_scalars(int(step), scalars)
    finally:
      writer.close()
  return scalars


def image_grid(views: np.ndarray, pad: int = 1) -> np.ndarray:
  """``(N, V, H, W, 3)`` views -> one ``(N*(H+pad)+pad, V*(W+pad)+pad, 3)`` uint8 image: a row
  per image, a column per view, white lines between them."""
  views = np.asarray(views)
  if views.dtype != np.uint8:
    views = np.round(np.clip(views, 0.0, 1.0) * 255.0).astype(np.uint8)
  n, v, h, w, c = views.shape
  grid = np.full((n * (h + pad) + pad, v * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    for j in range(v):
      top, left = pad + i * (h + pad), pad + j * (w + pad)
      grid[top:top + h, left:left + w] = views[i, j]
  return grid


def read_metrics(workdir: str) -> list[dict]:
  """All lines of a run's ``metrics.jsonl`` (for tests, notebooks and experiment scripts)."""
  path = epath.Path(workdir) / METRICS_JSONL
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
