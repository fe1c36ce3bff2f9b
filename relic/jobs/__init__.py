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
    "saliency": "relic.jobs.saliency",
}
# One line per job, for ``relic --help``.
SUMMARIES = {
    "pretrain": "ReLICv2 pretraining of a ResNet, then the evaluators of config.evaluators.final",
    "linear_probe": "the official linear evaluation of a frozen pretrained encoder "
                    "(config.pretrained)",
    "finetune": "the whole pretrained network + a linear head trained on labels (1% / 10% "
                "ImageNet subsets)",
    "transfer": "linear and fine-tune transfer to other datasets (config.transfer.datasets)",
    "robustness": "a linear probe's ImageNet head on shifted test sets (ImageNet-V2/R/Sketch/C, "
                  "ObjectNet)",
    "segmentation": "semantic segmentation transfer, FCN-16s, mIoU (PASCAL VOC 2012, Cityscapes)",
    "knn": "weighted kNN top-1 of a pretrained encoder's frozen features",
    "saliency": "saliency masks for every image of a source, without labels (for "
                "data.mask_path)",
}


def get_job(name: str):
  """The job module named ``name`` (imported now)."""
  require(name in JOBS, "job", f"unknown job {name!r}", f"choose one of {sorted(JOBS)}")
  return importlib.import_module(JOBS[name])
