"""Metric output of a run: TensorBoard events (clu), ``metrics.jsonl`` and console lines.

Only process 0 writes files; every process may call ``write`` (the others only log).
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
    self._writer = metric_writers.create_default_writer(
        workdir, just_logging=not self._is_lead, asynchronous=True)
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

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def read_metrics(workdir: str) -> list[dict]:
  """All lines of a run's ``metrics.jsonl`` (for tests, notebooks and experiment scripts)."""
  path = epath.Path(workdir) / METRICS_JSONL
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
