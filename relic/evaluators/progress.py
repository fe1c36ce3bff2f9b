"""Progress lines with throughput and ETA for evaluation passes that have no train step.

Training loops report through :class:`relic.metrics.MetricsLogger`, whose ETA is tied to the
train step; a pass over a test set (or 75 ImageNet-C variants) counts examples instead, so it
gets this small counter: one log line at most every ``every_s`` seconds.
"""

from __future__ import annotations

import time

from absl import logging



class Progress:
  """Cumulative counter of a known total; logs 'what: n/N (p%) | x/s | ETA'."""

  def __init__(self, what: str, total: int, *, unit: str = "examples", every_s: float = 30.0):
    self._what = what
    self._total = max(int(total), 1)
    self._unit = unit
    self._every_s = every_s
    self._start = time.perf_counter()
    self._last_log = self._start
    self.done = 0

  def update(self, increment: int) -> None:
    self.done += int(increment)
    now = time.perf_counter()
    if now - self._last_log >= self._every_s or self.done >= self._total:
      self._last_log = now
      rate = self.done / max(now - self._start, 1e-9)
      eta = (self._total - self.done) / max(rate, 1e-9)
      logging.info("%s: %d/%d %s (%.0f%%) | %.1f %s/s | ETA %s", self._what, self.done,
                   self._total, self._unit, 100.0 * self.done / self._total, rate, self._unit,
                   duration(eta))


def duration(seconds: float) -> str:
  """'1h05m' / '3m07s'."""
  seconds = max(int(seconds), 0)
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
