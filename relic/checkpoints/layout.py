"""Every directory and file name of a run's workdir, the one step-directory finder, and the
workdir's ``config.json``.

  WORKDIR/config.json                 the resolved config of the first run (config.resumed.json:
                                      a resumed run's, when it differs)
  WORKDIR/checkpoints/STEP/state      the train state (Orbax, see orbax_checkpointer.py)
  WORKDIR/checkpoints/STEP/meta       JSON: the config under "config", the data position, ...,
                                      the checksums of the state under "state_checksums"
  WORKDIR/checkpoints/deleting/STEP   an old step being deleted (renamed here first, so that a
                                      kill mid-deletion leaves no half step in the listing)
  WORKDIR/checkpoints_corrupt/STEP    unreadable, damaged or incomplete steps moved out of the way
  WORKDIR/probe_head.npz, .json       the head a linear probe selected, and its record
  WORKDIR/results.json, results.md    an evaluation's results
  WORKDIR/sweep/lr_RATE/              one run of a rate sweep (a run directory like WORKDIR),
    run_result.json                   with its hold-out score once it is scored
"""

from __future__ import annotations

import json
import re

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

CONFIG_JSON = "config.json"
CONFIG_RESUMED_JSON = "config.resumed.json"
CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints_corrupt"
DELETING_DIR = "deleting"
STATE_ITEM = "state"
META_ITEM = "meta"
CHECKSUMS_KEY = "state_checksums"
# Orbax's step directory names (its standard name format) and its commit marker: the file its
# finalize writes last into a step, after the commit time in _CHECKPOINT_METADATA.
STEP_NAME = re.compile(r"0|[1-9]\d*")
COMMIT_MARKER = ocp.path.atomicity.COMMIT_SUCCESS_FILE
STEP_METADATA = "_CHECKPOINT_METADATA"
ENCODER = "encoder"
PROBE_HEAD_NPZ = "probe_head.npz"
PROBE_HEAD_JSON = "probe_head.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
SWEEP_DIR = "sweep"
RUN_RESULT = "run_result.json"


def checkpoint_dir(workdir: str | epath.PathLike) -> epath.Path:
  return epath.Path(workdir) / CHECKPOINT_DIR


def workdir_of(step_dir: epath.Path) -> epath.Path:
  """The workdir a step directory ``WORKDIR/checkpoints/STEP`` belongs to."""
  return step_dir.parent.parent


def incomplete_reason(step_dir: epath.Path) -> str | None:
  """What a step directory lacks of a committed Orbax checkpoint, or None when it is complete.

  Orbax commits a step by writing the commit time into ``_CHECKPOINT_METADATA`` and then its
  commit marker, both before the directory gets its final name (or, on object stores, as the
  last files of the step); both items are directories. A step directory without them was not
  committed, or its deletion was cut short (Orbax's deleter removes files in no set order).
  """
  missing = []
  if not (step_dir / COMMIT_MARKER).exists():
    missing.append(f"Orbax's commit marker {COMMIT_MARKER}")
  if not (step_dir / STEP_METADATA).exists():
    missing.append(STEP_METADATA)
  elif ocp.path.step.Metadata(step=0, path=step_dir).commit_timestamp_nsecs is None:
    missing.append(f"the commit time in {STEP_METADATA}")
  missing += [f"the {item}/ item" for item in (STATE_ITEM, META_ITEM)
              if not (step_dir / item).is_dir()]
  return "no " + ", no ".join(missing) if missing else None


def step_dirs(path: str | epath.PathLike) -> list[epath.Path]:
  """The committed checkpoint step directories of a workdir, its ``checkpoints`` directory, or
  one step directory; newest first. Incomplete steps (see :func:`incomplete_reason`) are
  skipped with a warning and left where they are (a training run moves them aside).

  Raises:
    FileNotFoundError: none there (the message names what was found and how to make one), or
      ``path`` is one step directory and it is incomplete.
  """
  path = epath.Path(path)
  if (path / STATE_ITEM).is_dir() or (path.parent.name == CHECKPOINT_DIR and
                                      STEP_NAME.fullmatch(path.name) and path.is_dir()):
    reason = incomplete_reason(path)
    if reason:
      raise FileNotFoundError(
          f"{path} is not a complete checkpoint ({reason}): its save or its deletion was "
          f"interrupted. Fix: pass the run's workdir {workdir_of(path)} to use its newest "
          "complete checkpoint, or another step directory.")
    return [path]
  directory = path if path.name == CHECKPOINT_DIR else checkpoint_dir(path)
  steps = []
  if directory.is_dir():
    manager = ocp.CheckpointManager(
        directory, item_names=(STATE_ITEM, META_ITEM),
        options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    steps = sorted(manager.all_steps(), reverse=True)
    manager.close()
  complete = []
  for step in steps:
    reason = incomplete_reason(directory / str(step))
    if reason:
      logging.warning("Skipping checkpoint step %d in %s: it is incomplete (%s); its save or its "
                      "deletion was interrupted.", step, directory, reason)
    else:
      complete.append(step)
  steps = complete
  if not steps:
    found = (sorted(p.name for p in path.iterdir())[:12] or "an empty directory"
             if path.is_dir() else "nothing: it does not exist")
    raise FileNotFoundError(
        f"{path} holds no checkpoint: expected committed step directories "
        f"{directory}/STEP/{STATE_ITEM} (found {found}). Fix: pass a relic run's workdir whose "
        "training wrote a checkpoint (train at least train.checkpoint_every_steps steps, or "
        "until the end; e.g. `python -m relic.main --config=configs/quickstart.py "
        "--workdir=DIR`), its checkpoints directory, or a step directory DIR/checkpoints/STEP.")
  return [directory / str(step) for step in steps]


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the resolved config as JSON (machine-readable) from process 0 only.

  The first config is kept as ``config.json``; a resumed run writes its own next to it so
  nothing a user relies on to compare runs is overwritten.
  """
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  target = path / CONFIG_JSON
  if target.exists() and target.read_text() != text:
    target = path / CONFIG_RESUMED_JSON
  target.write_text(text)


def read_config(workdir: str | epath.PathLike) -> ml_collections.ConfigDict | None:
  """The config a workdir was created with, or None."""
  target = epath.Path(workdir) / CONFIG_JSON
  if not target.exists():
    return None
  return ml_collections.ConfigDict(json.loads(target.read_text()))
