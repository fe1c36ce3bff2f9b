"""Jobs selected by ``config.job``; each module exposes ``run(config, workdir)``.

Modules are imported on demand so that a job's heavy dependencies load only when it runs.
"""

import importlib

from relic.errors import require

JOBS = {
    "pretrain": "relic.jobs.pretrain",
    "linear_probe": "relic.jobs.linear_probe",
    "finetune": "relic.jobs.finetune",
    "transfer": "relic.jobs.transfer",
    "robustness": "relic.jobs.robustness",
    "segmentation": "relic.jobs.segmentation",
    "knn": "relic.jobs.knn",
}


def get_job(name: str):
  """The job module named ``name`` (imported now)."""
  require(name in JOBS, "job", f"unknown job {name!r}", f"choose one of {sorted(JOBS)}")
  return importlib.import_module(JOBS[name])
