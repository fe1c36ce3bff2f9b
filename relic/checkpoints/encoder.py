"""The online encoder of a relic checkpoint as host arrays, read without the train state (for
evaluation jobs, export and interop). What is read is verified against the checksums written
with the checkpoint, as the train loop's restore is."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from relic.checkpoints import integrity
from relic.checkpoints.layout import (CHECKSUMS_KEY, CONFIG_JSON, ENCODER, META_ITEM, STATE_ITEM,
                                      read_config, step_dirs, workdir_of)
from relic.checkpoints.orbax_checkpointer import CheckpointRestoreError


def _tuples(value: Any) -> Any:
  """JSON lists back to tuples, so model configs can be passed to Flax modules as stored."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def _read_meta(step_dir: epath.Path) -> dict[str, Any]:
  handler = ocp.JsonCheckpointHandler()
  try:
    return dict(handler.restore(step_dir / META_ITEM) or {})
  finally:
    handler.close()


def _read_part(step_dir: epath.Path, select: Callable[[Mapping[str, Any]], Any]
               ) -> tuple[Any, dict[str, Any]]:
  """``(part, meta)``: the selected part of the state, verified against its checksums."""
  handler = ocp.PyTreeCheckpointHandler()
  try:
    item = select(handler.metadata(step_dir / STATE_ITEM).tree)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    part = handler.restore(step_dir / STATE_ITEM, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
  finally:
    handler.close()
  meta = _read_meta(step_dir)
  where = f"Checkpoint step {step_dir.name} in {step_dir.parent}"
  if not integrity.verify(part, meta.pop(CHECKSUMS_KEY, None), where):
    logging.warning("%s has no checksums (written before relic checksummed checkpoints): read, "
                    "not verified.", where)
  return part, meta


def read_state_part(step_dir: epath.Path, select: Callable[[Mapping[str, Any]], Any]) -> Any:
  """The part of a step's train state that ``select`` picks out of the stored tree's metadata
  (e.g. ``lambda tree: {'probe_params': tree['probe_params']}``), as host numpy arrays; the
  rest of the state is not read.

  Raises:
    integrity.CheckpointIntegrityError: the part read differs from its checksums.
  """
  return _read_part(step_dir, select)[0]


def _restore_encoder_from(step_dir: epath.Path) -> tuple[dict[str, Any], dict[str, Any]]:
  restored, meta = _read_part(step_dir, lambda tree: {
      g: {ENCODER: tree[g][ENCODER]} for g in ("online_params", "online_batch_stats")})
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
    CheckpointRestoreError: no checkpoint under ``path`` can be read and verified.
  """
  errors = []
  for step_dir in step_dirs(path):
    try:
      meta, variables = _restore_encoder_from(step_dir)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("Cannot read the encoder from %s (%s: %s); trying an older checkpoint.",
                      step_dir, type(e).__name__, str(e)[:500])
      errors.append(e)
      continue
    model_config = (meta.get("config") or {}).get("model")
    if model_config is None:
      saved = read_config(workdir_of(step_dir))
      if saved is None:
        raise FileNotFoundError(f"Checkpoint {step_dir} stores no config and no "
                                f"{CONFIG_JSON} was found next to it.")
      model_config = saved.model.to_dict()
    return _tuples(dict(model_config)), variables
  raise CheckpointRestoreError(
      f"No checkpoint under {path} has a readable encoder; the newest failed with "
      f"{type(errors[0]).__name__}: {errors[0]}") from errors[0]
