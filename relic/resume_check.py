"""Which config changes a resumed run accepts: the experiment-defining fields must match the
checkpoint's, everything else (cadences, paths, threads, evaluation settings) may change.

Checked twice. At start-up, before anything is written to the workdir (:func:`check_workdir`,
from the config alone; the reference is the workdir's ``config.json``, or the newest
checkpoint's own saved config when that file is missing). Then by the training loop, on the
checkpoint it is about to restore, before it restores or writes anything (the job's
``check_resume``, which also compares what only the run knows: the schedule the data gives, the
pretrained encoder's fingerprint, the rate).
"""

from __future__ import annotations

import fnmatch
from typing import Any, Mapping

import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import traverse_util

from relic.checkpoints import config_to_json, layout
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
# The key, in the JSON saved with an evaluation run's checkpoints, of the fields that define the
# run (run_fields): what the start-up check of a rerun compares before anything is written.
RUN_FIELDS_KEY = "run_fields"
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


def run_fields(section: str, fields: tuple[str, ...]) -> list[str]:
  """The dotted config fields that define an evaluation run: the job, ``config.<section>``'s
  ``fields`` and the data (:data:`RUN_DATA_FIELDS`)."""
  return ["job"] + [f"{section}.{f}" for f in fields] + list(RUN_DATA_FIELDS)


def _run_differences(saved_config: Mapping[str, Any] | None, config, names) -> list[str]:
  """``'FIELD: saved X, now Y'`` for every field of ``names`` that both configs have and that
  differs."""
  saved = traverse_util.flatten_dict(dict(saved_config or {}), sep=".")
  now = traverse_util.flatten_dict(config_to_json(config), sep=".")
  return [f"{f}: saved {saved[f]!r}, now {now[f]!r}" for f in names
          if f in saved and f in now and saved[f] != now[f]]


def _refuse_run(section: str, different: list[str]) -> None:
  if different:
    raise ConfigError(f"the run directory holds a different {section} run; refusing to resume "
                      "because:\n  " + "\n  ".join(different) + "\nFix: use a new --workdir, "
                      "or resume with the saved settings.")


def check_run_resume(meta: Mapping[str, Any], config, info: Mapping[str, Any], base_lr: float,
                     section: str, fields: tuple[str, ...]) -> None:
  """For evaluation runs that train a pretrained encoder (fine-tuning, segmentation): refuses to
  resume a run directory written by a different run, i.e. another job, other
  ``config.<section>.<fields>``, other data (:data:`RUN_DATA_FIELDS`; its paths may change),
  another base rate or another pretrained encoder (``info['fingerprint']``)."""
  different = _run_differences(meta.get("config"), config, run_fields(section, fields))
  if meta.get("base_lr") not in (None, base_lr):
    different.append(f"base rate: saved {meta.get('base_lr')}, now {base_lr}")
  if meta.get("fingerprint") not in (None, info["fingerprint"]):
    different.append("the encoder at config.pretrained is not the one this run started from")
  _refuse_run(section, different)


def checkpoint_meta(workdir: str | epath.PathLike) -> tuple[int, dict[str, Any]] | None:
  """``(step, saved JSON)`` of the newest checkpoint of ``workdir`` whose JSON can be read, or
  None when the workdir holds no checkpoint. Reads nothing else (no array) and writes nothing:
  what a resume check needs before the state is restored."""
  try:
    found = layout.step_dirs(workdir)
  except FileNotFoundError:
    return None
  for step_dir in found:
    try:
      return int(step_dir.name), _read_saved_json(step_dir)
    except Exception as e:  # pylint: disable=broad-except  (the restore skips it too)
      logging.warning("Resume check: the saved JSON of checkpoint %s cannot be read (%s: %s); "
                      "trying the previous step.", step_dir, type(e).__name__, e)
  return None


def _read_saved_json(step_dir: epath.Path) -> dict[str, Any]:
  handler = ocp.JsonCheckpointHandler()
  try:
    return dict(handler.restore(step_dir / layout.META_ITEM) or {})
  finally:
    handler.close()


def check_workdir(config: ml_collections.ConfigDict, workdir: str | epath.PathLike) -> None:
  """The start-up resume check: refuses, before anything is written to ``workdir`` (the config
  record, logs, TensorBoard events, checkpoints), a run that would continue another experiment
  there. The loop repeats the job's full check on the checkpoint it restores.

  Pretraining compares the experiment-defining fields (:func:`check_resume_compatible`) with
  the workdir's ``config.json`` or, when that is missing (checkpoints copied without it), with
  the config saved in the newest checkpoint. Another job refuses a checkpoint of another job
  and compares the fields its newest checkpoint records as defining the run
  (:func:`run_fields`); the rate and the encoder are compared by the loop, once the job has
  resolved them.

  Raises:
    ConfigError: naming every differing field with its saved and its new value.
  """
  found = checkpoint_meta(workdir)
  meta = found[1] if found is not None else {}
  if config.job == "pretrain":
    saved = layout.read_config(workdir)
    reference = saved if saved is not None else meta.get("config")
    if reference is not None:
      check_resume_compatible(reference, config)
    return
  saved_job = (meta.get("config") or {}).get("job")
  if saved_job not in (None, config.job):
    _refuse_run(str(saved_job), [f"job: saved {saved_job!r}, now {config.job!r}"])
  _refuse_run(config.job, _run_differences(meta.get("config"), config,
                                           meta.get(RUN_FIELDS_KEY) or ()))
