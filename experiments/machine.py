"""The machine a figure was measured on: every benchmark line and experiment summary names its CPU
model and core count (from /proc/cpuinfo), and how busy the host was, so a reader on another
machine knows what to compare with. Standard library only (the GPU benchmarks import it too)."""

from __future__ import annotations

import os
import pathlib


def cpu_model() -> str:
  """'<model name> x <cores> cores' from /proc/cpuinfo ('unknown CPU' where it is absent)."""
  try:
    lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
  except OSError:
    lines = []
  names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
  return f"{names[0] if names else 'unknown CPU'} x {os.cpu_count()} cores"


def host_fields() -> dict:
  """The fields every JSON line carries: CPU model, core count, 1-minute load average (other
  work on the host skews CPU timings)."""
  return dict(cpu=cpu_model(), host_cpus=os.cpu_count(), host_load_avg_1m=os.getloadavg()[0])
