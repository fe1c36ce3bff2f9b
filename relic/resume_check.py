"""Which config changes a resumed run accepts: the experiment-defining fields must match the
checkpoint's, everything else (cadences, paths, threads, evaluation settings) may change."""

from __future__ import annotations

import fnmatch
from typing import Any, Mapping

import ml_collections
from absl import logging
from flax import traverse_util

from relic.checkpoints import config_to_json
from relic.errors import ConfigError

# Fields that define the experiment. Resuming with a different value would continue a run that
# is no longer the one the checkpoint belongs to (different model, objective, data, optimiser
# trajectory or schedule length), silently. Patterns are matched against dotted field names.
CRITICAL_FIELDS = (
    "job",
    "seed",
    "model.*",
    "loss.*",
    "optim.*",
    "ema.*",
    "data.*",                     # except DATA_FIELDS_THAT_MAY_CHANGE
    "train.batch_size",
    "train.num_epochs",
    "train.num_steps",
    "train.num_train_examples",   # sets the schedule length when training is given in epochs;
                                  # the length the split gives is compared by check_schedule.
    "probe.enabled",              # the probe head is part of the train state ...
    "probe.num_classes",          # ... and its shape.
    "pretrained",                 # evaluation jobs: the encoder they start from.
    # Plus the section named after the job, if there is one (e.g. ``finetune.*`` when
    # ``job='finetune'``): an evaluation job's own optimiser, batch and duration.
)
# Inside the critical groups but without effect on the computed values: rematerialisation
# trades memory for FLOPs (a resumed run on a smaller accelerator may need it); cadences and
# retention of a job's own section.
NOT_CRITICAL = ("model.remat", "*.log_every_steps", "*.checkpoint_every_steps",
                "*.eval_every_steps", "*.keep_checkpoints", "*.keep_every_steps")
# The fields of config.data that may change on resume: where the same data lies, and how fast
# it is read. Every other data field (a new one too) defines the training data: critical.
DATA_FIELDS_THAT_MAY_CHANGE = ("data.data_dir", "data.path", "data.mask_path", "data.cache_dir",
                               "data.num_threads", "data.prefetch_to_device",
                               "data.shuffle_buffer", "data.augment_on_device",
                               "data.eval_split", "data.labelled_split",
                               "data.expected_train_examples")
# What identifies an evaluation run's data (check_run_resume); not data.path or data.data_dir.
RUN_DATA_FIELDS = ("data.source", "data.dataset", "data.train_split")
# Everything else may change on resume: logging / evaluation / checkpoint cadence, retention,
# parameter sharding (train.fsdp: restore re-shards), data paths and reader threads, NaN
# policy, kNN settings, the sections of other jobs.


def _is_critical(field: str, job: str) -> bool:
  if field in DATA_FIELDS_THAT_MAY_CHANGE or any(
      fnmatch.fnmatchcase(field, pattern) for pattern in NOT_CRITICAL):
    return False
  return any(fnmatch.fnmatchcase(field, pattern) for pattern in CRITICAL_FIELDS + (f"{job}.*",))


def check_resume_compatible(saved_config: Mapping[str, Any] | ml_collections.ConfigDict,
                            config: ml_collections.ConfigDict) -> None:
  """Refuses to resume a checkpoint whose experiment-defining config differs (CRITICAL_FIELDS).

  Harmless fields (cadences, retention, paths, threads, evaluation settings) may change. A
  critical field present on one side only (the schema gained or lost a field between versions)
  is logged, not refused: there is no saved value to compare.

  Raises:
    ConfigError: naming every differing field with its saved and its new value.
  """
  saved = traverse_util.flatten_dict(config_to_json(saved_config), sep=".")
  new = traverse_util.flatten_dict(config_to_json(config), sep=".")
  differences = []
  for field in sorted(set(saved) | set(new)):
    if not _is_critical(field, str(new.get("job", ""))):
      continue
    if field not in saved or field not in new:
      logging.warning("Resume check: config field %s exists only in the %s config; not compared.",
                      field, "new" if field in new else "saved")
      continue
    if saved[field] != new[field]:
      differences.append(f"  {field}: saved {saved[field]!r}, now {new[field]!r}")
  if differences:
    raise ConfigError(
        "the checkpoint to resume was trained with a different experiment config; refusing "
        "to resume because these fields differ:\n" + "\n".join(differences) +
        "\nFix: resume with the saved values (see config.json in the workdir), or start a new "
        "run in a new --workdir.")


def check_schedule(saved: Mapping[str, Any] | None, now: Mapping[str, Any]) -> None:
  """Refuses to resume a checkpoint whose schedule differs: examples per epoch, total and
  warm-up steps, saved with every pretraining checkpoint.

  The length comes from the training split as read, which the config alone does not fix (an
  image folder at the same ``data.path`` may now hold other files), so the config comparison
  of :func:`check_resume_compatible` cannot see every change; a resumed learning-rate and EMA
  schedule of another length would silently be another run. A checkpoint without a saved
  schedule (written before it was recorded) is logged, not refused.

  Raises:
    ConfigError: naming each differing quantity with its saved and its new value.
  """
  if not saved:
    logging.warning("Resume check: the checkpoint records no schedule; its length is not "
                    "compared.")
    return
  differences = [f"  {key}: saved {saved[key]!r}, now {value!r}" for key, value in now.items()
                 if key in saved and saved[key] != value]
  if differences:
    keep = saved.get("num_train_examples")
    raise ConfigError(
        "the checkpoint to resume was trained on a schedule of another length; refusing to "
        "resume because:\n" + "\n".join(differences) +
        "\nFix: resume with the saved training split (or --config.train.num_train_examples="
        f"{keep} to count epochs of the saved size), or start a new run in a new --workdir.")


def check_run_resume(meta: Mapping[str, Any], config, info: Mapping[str, Any], base_lr: float,
                     section: str, fields: tuple[str, ...]) -> None:
  """For evaluation runs that train a pretrained encoder (fine-tuning, segmentation): refuses to
  resume a run directory written by a different run, i.e. other ``config.<section>.<fields>``,
  other data (:data:`RUN_DATA_FIELDS`; its paths may change), another base rate or another
  pretrained encoder (``info['fingerprint']``)."""
  saved = traverse_util.flatten_dict(meta.get("config") or {}, sep=".")
  now = traverse_util.flatten_dict(config_to_json(config), sep=".")
  names = [f"{section}.{f}" for f in fields] + list(RUN_DATA_FIELDS)
  different = [f"{f}: saved {saved[f]!r}, now {now[f]!r}" for f in names
               if f in saved and saved[f] != now[f]]
  if meta.get("base_lr") not in (None, base_lr):
    different.append(f"base rate: saved {meta.get('base_lr')}, now {base_lr}")
  if meta.get("fingerprint") not in (None, info["fingerprint"]):
    different.append("the encoder at config.pretrained is not the one this run started from")
  if different:
    raise ConfigError(f"the run directory holds a different {section} run; refusing to resume "
                      "because:\n  " + "\n  ".join(different) + "\nFix: use a new --workdir, "
                      "or resume with the saved settings.")
