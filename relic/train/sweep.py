"""Learning-rate sweeps on a hold-out: the run directories, the result files, the selection rule
and the results table, shared by the linear probe, fine-tuning and segmentation.

A sweep over separate runs (fine-tuning, segmentation) trains each rate in
``WORKDIR/sweep/lr_RATE/`` (checkpointed and resumable there like any run) and records its
hold-out score in ``run_result.json`` once it is scored, so a rerun of the job skips finished
rates. The linear probe trains its rates side by side in one run and only shares the rule and
the table.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import logging
from etils import epath

from relic.checkpoints import results as results_lib
from relic.checkpoints.layout import RUN_RESULT, SWEEP_DIR

def run_dir(workdir: str, rate: float) -> str:
  """Where the run of ``rate`` checkpoints."""
  return str(epath.Path(workdir) / SWEEP_DIR / f"lr_{rate:g}")


def select(scores: Sequence[float], rates: Sequence[float]) -> int:
  """Index of the best score; NaN (e.g. an mAP without positives) counts as worst, and ties go
  to the smaller rate (``rates`` need not be sorted)."""
  return min(range(len(rates)),
             key=lambda i: (-float(np.nan_to_num(scores[i], nan=-np.inf)), rates[i]))


def sweep(workdir: str, rates: Sequence[float], key: str,
          train_and_score: Callable[[str, float], dict[str, Any] | None]
          ) -> tuple[float, list[dict[str, Any]]] | None:
  """Scores every rate, reusing finished runs; returns ``(best rate, scores)``.

  Args:
    key: the hold-out score that selects (e.g. 'holdout_top1'); a recorded result without it
      (scored by another metric) is recomputed, which resumes its finished run.
    train_and_score: ``(run directory, rate) -> {key: score, ...}``, or None when the run was
      stopped (preemption): the sweep then returns None and the job stops too.
  """
  scores = []
  for rate in rates:
    done_file = epath.Path(run_dir(workdir, rate)) / RUN_RESULT
    score = json.loads(done_file.read_text()) if done_file.exists() else {}
    if key not in score:
      result = train_and_score(run_dir(workdir, rate), float(rate))
      if result is None:
        return None
      score = {"base_lr": float(rate), **result}
      if jax.process_index() == 0:
        done_file.write_text(json.dumps(score))
    scores.append(score)
    logging.info("Sweep: rate %g -> %s %.2f.", rate, key, score[key])
  best = select([s[key] for s in scores], [s["base_lr"] for s in scores])
  return scores[best]["base_lr"], scores


def table(scores: Sequence[dict[str, Any]], selected: float, rate_header: str,
          columns: Sequence[tuple[str, str]]) -> str:
  """The Markdown table of a sweep: the rate (the selected one marked), then ``(header, key)``
  columns of each score."""
  rows = [[f"{s['base_lr']:g}" + (" (selected)" if s["base_lr"] == selected else "")]
          + [s.get(k, math.nan) for _, k in columns] for s in scores]
  return results_lib.table([rate_header] + [h for h, _ in columns], rows)
