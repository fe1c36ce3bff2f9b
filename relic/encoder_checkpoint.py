"""The online encoder of a relic checkpoint as host arrays, read without the train state (for
evaluation jobs, export and interop)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from relic.checkpoint import (CHECKPOINT_DIR, ENCODER, META_ITEM, STATE_ITEM,
                              CheckpointRestoreError)


def _tuples(value: Any) -> Any:
  """JSON lists back to tuples, so model configs can be passed to Flax modules as stored."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def _step_dirs(path: epath.Path) -> list[epath.Path]:
  """Checkpoint step directories for a workdir, its checkpoints dir, or one step dir; newest
  first."""
  if (path / STATE_ITEM).exists():
    return [path]
  directory = path if path.name == CHECKPOINT_DIR else path / CHECKPOINT_DIR
  steps = []
  if directory.is_dir():
    manager = ocp.CheckpointManager(
        directory, item_names=(STATE_ITEM, META_ITEM),
        options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    steps = sorted(manager.all_steps(), reverse=True)
    manager.close()
  if not steps:
    raise FileNotFoundError(
        f"No relic checkpoint found in {directory} (looked for committed step directories "
        f"{directory}/STEP/{STATE_ITEM}). Make one with `python -m relic.main "
        "--config=configs/quickstart.py --workdir=DIR` (any pretraining config) and pass that "
        "DIR, or a step directory DIR/checkpoints/STEP.")
  return [directory / str(step) for step in steps]


def _restore_encoder_from(step_dir: epath.Path) -> tuple[dict[str, Any], dict[str, Any]]:
  handler = ocp.PyTreeCheckpointHandler()
  try:
    tree = handler.metadata(step_dir / STATE_ITEM).tree
    item = {group: {ENCODER: tree[group][ENCODER]}
            for group in ("online_params", "online_batch_stats")}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    restored = handler.restore(step_dir / STATE_ITEM, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
  finally:
    handler.close()
  meta_handler = ocp.JsonCheckpointHandler()
  try:
    meta = meta_handler.restore(step_dir / META_ITEM) or {}
  finally:
    meta_handler.close()
  variables = {"params": restored["online_params"][ENCODER],
               "batch_stats": restored["online_batch_stats"][ENCODER]}
  return meta, variables


def restore_encoder(path: str | epath.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
  """The online encoder of a relic checkpoint, as host numpy arrays, without the train state.

  Args:
    path: a relic workdir (its newest readable checkpoint is used), its ``checkpoints``
      directory, or one step directory ``WORKDIR/checkpoints/STEP``.

  Returns:
    ``(model_config, variables)``: ``config.model`` of the run (lists as tuples) and
    ``{'params': ..., 'batch_stats': ...}`` for ``relic.models.ResNet``.

  Raises:
    FileNotFoundError: no checkpoint under ``path`` (the message says how to make one).
  """
  from relic import workdir as workdir_lib  # pylint: disable=import-outside-toplevel

  path = epath.Path(path)
  step_dirs = _step_dirs(path)
  errors = []
  for step_dir in step_dirs:
    try:
      meta, variables = _restore_encoder_from(step_dir)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("Cannot read the encoder from %s (%s: %s); trying an older checkpoint.",
                      step_dir, type(e).__name__, str(e)[:500])
      errors.append(e)
      continue
    model_config = (meta.get("config") or {}).get("model")
    if model_config is None:
      saved = workdir_lib.read_config(str(step_dir.parent.parent))
      if saved is None:
        raise FileNotFoundError(f"Checkpoint {step_dir} stores no config and no "
                                f"{workdir_lib.CONFIG_JSON} was found next to it.")
      model_config = saved.model.to_dict()
    return _tuples(dict(model_config)), variables
  raise CheckpointRestoreError(
      f"No checkpoint under {path} has a readable encoder; the newest failed with "
      f"{type(errors[0]).__name__}: {errors[0]}") from errors[0]
