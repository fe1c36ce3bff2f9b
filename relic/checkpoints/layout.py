"""Every directory and file name of a run's workdir, the one step-directory finder, and the
workdir's ``config.json``.

  WORKDIR/config.json                 the resolved config of the first run (config.resumed.json:
                                      a resumed run's, when it differs)
  WORKDIR/checkpoints/STEP/state      the train state (Orbax, see orbax_checkpointer.py)
  WORKDIR/checkpoints/STEP/meta       JSON: the config under "config", the data position, ...
  WORKDIR/checkpoints_corrupt/STEP    unreadable steps moved out of the way on resume
  WORKDIR/probe_head.npz, .json       the head a linear probe selected, and its record
  WORKDIR/results.json, results.md    an evaluation's results
  WORKDIR/sweep/lr_RATE/              one run of a rate sweep (a run directory like WORKDIR),
    run_result.json                   with its hold-out score once it is scored
"""

from __future__ import annotations

import json

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

CONFIG_JSON = "config.json"
CONFIG_RESUMED_JSON = "config.resumed.json"
CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints_corrupt"
STATE_ITEM = "state"
META_ITEM = "meta"
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


def step_dirs(path: str | epath.PathLike) -> list[epath.Path]:
  """The committed checkpoint step directories of a workdir, its ``checkpoints`` directory, or
  one step directory; newest first.

  Raises:
    FileNotFoundError: none there; the message names what was found and how to make one.
  """
  path = epath.Path(path)
  if (path / STATE_ITEM).is_dir():
    return [path]
  directory = path if path.name == CHECKPOINT_DIR else checkpoint_dir(path)
  steps = []
  if directory.is_dir():
    manager = ocp.CheckpointManager(
        directory, item_names=(STATE_ITEM, META_ITEM),
        options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    steps = sorted(manager.all_steps(), reverse=True)
    manager.close()
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
