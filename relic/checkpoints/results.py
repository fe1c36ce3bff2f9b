"""``results.json`` and ``results.md`` of an evaluation job, written by process 0 only."""

from __future__ import annotations

import json
from typing import Any

import jax
from etils import epath

from relic.checkpoints.layout import RESULTS_JSON, RESULTS_MD

# The number the literature reports for a dataset (TransferDataset.metric), and where it sits in
# an evaluation's result: top-1, mean per-class accuracy, or VOC2007's 11-point mAP.
METRIC_KEYS = {"top1": "top1", "mean_per_class": "mean_per_class", "map11": "map"}
METRIC_NAMES = {"top1": "top-1", "mean_per_class": "mean per-class accuracy",
                "map11": "11-point mAP"}


def write_results(workdir: str, results: dict[str, Any], markdown: str, *, step: int = 0) -> None:
  """Writes both files (and prints the table), so a finished run can be read without tools,
  and the numbers of ``results`` as TensorBoard scalars ``eval/...`` at ``step`` (pretraining:
  its last step; an evaluation job: 0), see :func:`relic.metrics.eval_scalars`."""
  if jax.process_index() == 0:
    path = epath.Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    (path / RESULTS_JSON).write_text(json.dumps(results, indent=2, sort_keys=False))
    (path / RESULTS_MD).write_text(markdown)
  # Imported here: the metric writers load TensorFlow, which the start-up checks avoid.
  from relic.metrics import write_eval_scalars  # pylint: disable=import-outside-toplevel
  write_eval_scalars(workdir, results, step)
  print(markdown, flush=True)


def read_results(workdir: str) -> dict[str, Any] | None:
  """A finished job's ``results.json`` (None if it has none yet)."""
  path = epath.Path(workdir) / RESULTS_JSON
  return json.loads(path.read_text()) if path.exists() else None


def table(header: list[str], rows: list[list[Any]]) -> str:
  """A Markdown table; floats with one decimal."""
  def cell(value: Any) -> str:
    if isinstance(value, float):
      return "-" if value != value else f"{value:.1f}"  # NaN -> '-'
    return str(value)
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"
