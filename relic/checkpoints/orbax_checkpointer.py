"""Checkpoints of a run in ``WORKDIR/checkpoints/STEP``: save and restore, safely.

Which config changes a resume accepts: :mod:`relic.resume_check`; reading only the encoder
out of a checkpoint: :mod:`relic.checkpoints.encoder`; the names: :mod:`relic.checkpoints.layout`.

Each step directory is an Orbax composite of two items:
  * ``state``: the train state pytree (``StandardSave``), sharded arrays written by every
    process in parallel, restored straight into the shardings of the caller's target;
  * ``meta``: a JSON document (``JsonSave``) with what is not an array: the run's config under
    ``"config"``, the data position, RNG info, anything the job adds.

Guarantees, and how they are obtained:
  * A checkpoint is complete or absent. Orbax writes into ``STEP.orbax-checkpoint-tmp*`` and
    renames it when every item is written (a commit file on object stores); a job killed
    mid-write leaves only a temporary directory, which is never listed as a step and is cleaned
    up the next time a :class:`Checkpointer` opens the directory.
  * Old checkpoints are deleted only after the new one is committed (Orbax's finalize runs the
    retention policy after the commit), so the last good checkpoint survives a failed save. A
    step is deleted by renaming it into ``checkpoints/deleting/`` first (Orbax's
    ``todelete_subdir``), then removing that directory: a kill in the middle of a deletion
    leaves nothing Orbax lists. (On object stores Orbax ignores that option and deletes in
    place; the next point and the checksums cover what such a kill leaves.)
  * A step directory without Orbax's commit marker and commit time (see
    :func:`relic.checkpoints.layout.incomplete_reason`: a deletion or a save cut short, by this
    or an older relic) is moved to ``WORKDIR/checkpoints_corrupt/`` with a warning when a
    :class:`Checkpointer` opens the directory: it is never listed, restored or taken as the
    last good checkpoint.
  * Every array is checksummed on its devices before the save (:mod:`.integrity`; stored in
    ``meta`` under ``state_checksums``) and verified after the restore. A committed checkpoint
    that cannot be read back (truncated or deleted file: a full disk at the wrong moment) or
    whose arrays differ from their checksums (bit rot, a bad copy, another step's file) is
    skipped with a warning and the previous step restored; the bad step is moved to
    ``WORKDIR/checkpoints_corrupt/`` so the resumed run can save that step number again. All
    processes agree on the step restored (each reads only its own shards, so a bad file may
    fail on one process only). Checkpoints written before checksums restore, with a warning
    that they were not verified.
  * A failed save (full disk, no permission) raises :class:`CheckpointSaveError` naming the
    directory, the step and the cause; nothing is half-committed, and the error propagates.
    An asynchronous write's failure surfaces at the first :meth:`Checkpointer.check_save` after
    the write ended (the train loop's step boundaries), else at the next ``save``, ``wait`` or
    ``close``; Orbax's threads add one line in all, no tracebacks (:mod:`.orbax_noise`).

The train state convention shared with the jobs: a dict with ``online_params``,
``online_batch_stats``, ``target_params``, ``target_batch_stats``, ``opt_state``,
``probe_params``, ``probe_opt_state``, ``step``, ``rng``; the encoder is
``online_params['encoder']`` / ``online_batch_stats['encoder']``.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from relic.checkpoints import host_copy, integrity, orbax_noise
from relic.checkpoints.layout import (CHECKSUMS_KEY, CORRUPT_DIR, DELETING_DIR, META_ITEM,
                                      STATE_ITEM, STEP_NAME, checkpoint_dir, incomplete_reason)


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written; the previous checkpoints are untouched."""


class CheckpointRestoreError(RuntimeError):
  """No checkpoint of the requested step(s) could be read back, or its checksums fail."""


def config_to_json(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
  """The config as plain JSON types (tuples become lists), the form stored in ``meta``."""
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(dict(config), default=str))


def _abstract(leaf: Any) -> Any:
  """A restore target leaf: arrays become shape/dtype/sharding descriptions, the rest stays."""
  if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct)):
    return ocp.utils.to_shape_dtype_struct(leaf)
  return leaf


def _all_processes(ok: bool) -> bool:
  """True iff ``ok`` on every process (a collective when there are several)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


class Checkpointer:
  """Orbax ``CheckpointManager`` for one run, keeping the last ``keep`` checkpoints plus every
  ``keep_every_steps``-th step for good.

  Every process calls every method (Orbax writes each process's shards and coordinates the
  primary host's metadata). The caller decides when to save: the step cadence is a pure
  function of the step in the train loop, and :meth:`save` saves whenever asked.
  """

  def __init__(self, workdir: str | epath.PathLike, *, keep: int, keep_every_steps: int = 0,
               async_save: bool = True):
    if keep < 1:
      raise ValueError(f"keep must be >= 1 (the latest checkpoint is needed to resume), got {keep}")
    self._workdir = epath.Path(workdir)
    self._directory = checkpoint_dir(workdir)
    self._keep = keep
    self._keep_every_steps = keep_every_steps
    self._async_save = async_save
    self._pending_step: int | None = None
    self._failure: CheckpointSaveError | None = None
    orbax_noise.install()
    host_copy.install()
    self._set_aside_incomplete_steps()
    self._manager = self._open(cleanup_tmp=True)

  def _open(self, cleanup_tmp: bool) -> ocp.CheckpointManager:
    policies = [ocp.checkpoint_managers.LatestN(self._keep)]
    if self._keep_every_steps > 0:
      policies.append(ocp.checkpoint_managers.EveryNSteps(self._keep_every_steps))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=self._async_save,
        cleanup_tmp_directories=cleanup_tmp,
        # Deletion renames the step out of the listing first; _empty_trash removes it.
        todelete_subdir=DELETING_DIR,
        create=True,
    )
    try:
      return ocp.CheckpointManager(self._directory, options=options,
                                   item_names=(STATE_ITEM, META_ITEM))
    except OSError as e:
      raise CheckpointSaveError(
          f"Cannot create the checkpoint directory {self._directory}: {type(e).__name__}: {e}. "
          "Fix: pass a --workdir that is a writable directory.") from e

  @property
  def directory(self) -> epath.Path:
    return self._directory

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest committed step, or None in a fresh workdir."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any, *, extra_json: Mapping[str, Any] | None = None,
           force: bool = False) -> bool:
    """Starts writing ``state`` (and ``extra_json``) as step ``step``; returns once the device
    arrays are copied, the write continues in the background when ``async_save``.

    Args:
      step: the train state's step.
      state: pytree of (possibly sharded) arrays.
      extra_json: JSON-serialisable metadata: ``{"config": config_to_json(config), ...}``.
      force: also save a step older than the latest one (Orbax skips those otherwise).

    Returns:
      False if the step was not written because it already exists (e.g. a preemption save
      right after the periodic one) or is older than the latest without ``force``.

    Raises:
      CheckpointSaveError: this save, or the previous asynchronous one, failed.
      TypeError: ``extra_json`` is not JSON-serialisable (checked here, not in the writer).
      ValueError: ``extra_json`` has the key ``state_checksums`` (where the checksums of
        ``state``, computed here, are stored).
    """
    meta = dict(extra_json or {})
    if CHECKSUMS_KEY in meta:
      raise ValueError(f"extra_json of checkpoint step {step} has the key {CHECKSUMS_KEY!r}, which "
                       "holds the checksums of the state. Fix: store that under another key.")
    try:
      json.dumps(meta)
    except (TypeError, ValueError) as e:
      raise TypeError(f"extra_json of checkpoint step {step} is not JSON-serialisable: {e}") from e
    self.wait()
    if self._failure is not None:
      raise CheckpointSaveError(f"Not saving step {step}: an earlier save failed ({self._failure}). "
                                "Stop the job and rerun it once the cause is fixed.")
    if step in self.all_steps():
      logging.info("Checkpoint step %d already exists in %s; not saving it again.", step,
                   self._directory)
      return False
    # Before the write: the checksums of what is written, from the arrays on their devices.
    meta[CHECKSUMS_KEY] = integrity.record(state)
    try:
      saved = self._manager.save(step, args=ocp.args.Composite(
          **{STATE_ITEM: ocp.args.StandardSave(state), META_ITEM: ocp.args.JsonSave(meta)}),
          force=force)
    except Exception as e:  # pylint: disable=broad-except
      raise self._failed(step, e) from e
    if saved:
      self._pending_step = step
      if not self._async_save:
        self._pending_step = None
        self._empty_trash()
    return saved

  def check_save(self) -> None:
    """Raises the failure of the background write at once if it has ended in one; returns at
    once otherwise (it never waits for a write in progress). Call it at step boundaries so a
    failed asynchronous save stops the run then, not at the next save.

    With several processes it is a collective (the processes agree on whether the write has
    ended): call it at the same steps on every process, where the loop synchronises anyway.

    Raises:
      CheckpointSaveError: the background write failed.
    """
    if self._pending_step is None:
      return
    ended = not self._manager.is_saving_in_progress()
    if jax.process_count() > 1:
      ended = _all_processes(ended)
    if ended:
      self.wait()  # returns at once: the write has ended

  def wait(self) -> None:
    """Blocks until the background write (if any) is committed.

    Raises:
      CheckpointSaveError: the background write failed.
    """
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      step, self._pending_step = self._pending_step, None
      raise self._failed(step, e) from e
    self._pending_step = None
    self._empty_trash()

  def close(self) -> None:
    """Waits for the last write, then releases Orbax's threads. Call it before exiting."""
    try:
      self.wait()
    finally:
      self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, exc_type, exc, traceback) -> None:
    if exc_type is None:
      self.close()
      return
    # Already unwinding from an error: a failing last write is logged, not raised over it.
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      logging.exception("Closing the checkpointer of %s while handling %s failed.",
                        self._directory, exc_type.__name__)

  def _failed(self, step: int | None, error: BaseException) -> CheckpointSaveError:
    """Records a failed save and reopens the manager from what is on disk.

    Orbax drops the failed step and the steps it was about to delete from its in-memory list
    before the write completes, and re-raises a failed background write at every later wait; a
    fresh manager lists exactly the committed steps, so ``latest_step`` and ``restore`` stay
    right. Later saves are refused: the failed step's other items may still be writing into
    its temporary directory (Orbax stops waiting at the first failed item), and the job is
    expected to stop. Temporary directories are cleaned up when the next run opens the
    directory.
    """
    try:
      self._manager.close()
    except Exception:  # pylint: disable=broad-except
      pass  # the failure is being raised already; close() would only raise it again.
    self._manager = self._open(cleanup_tmp=False)
    self._failure = CheckpointSaveError(self._save_failure_message(step, error))
    orbax_noise.failure_reported()
    return self._failure

  def _save_failure_message(self, step: int | None, error: BaseException) -> str:
    latest = self.latest_step()
    previous = (f"the previous checkpoint (step {latest}) is intact" if latest is not None
                else "no earlier checkpoint exists")
    which = f"step {step}" if step is not None else "the last step"
    return (f"Saving checkpoint {which} in {self._directory} failed: {type(error).__name__}: "
            f"{error}. Nothing was committed for that step and {previous}. Fix the cause "
            "(free disk space, fix permissions or the --workdir path) and rerun the same command "
            "to resume.")

  def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores a checkpoint into the structure, dtypes and shardings of ``target``.

    Args:
      target: pytree like the saved state, of arrays or ``jax.ShapeDtypeStruct`` s (with
        ``sharding`` to restore sharded ``jax.Array`` s; leaves without one come back as numpy).
      step: a specific step; None = the latest that can be read, falling back to older steps
        (with a warning) when the latest is corrupt.

    Returns:
      ``(state, extra_json)``, every array verified against the checksums saved with it.

    Raises:
      FileNotFoundError: there is no checkpoint.
      CheckpointRestoreError: the requested step, or every step, cannot be read or fails its
        checksums.
    """
    self.wait()
    abstract = jax.tree.map(_abstract, target)
    args = ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(abstract),
                                 META_ITEM: ocp.args.JsonRestore()})
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"No checkpoint in {self._directory}.")
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(f"No checkpoint of step {step} in {self._directory}; "
                                f"available steps: {sorted(steps)}.")
      try:
        return self._verified(step, self._manager.restore(step, args=args))
      except Exception as e:  # pylint: disable=broad-except
        raise CheckpointRestoreError(
            f"Checkpoint step {step} in {self._directory} cannot be restored: "
            f"{type(e).__name__}: {e}") from e

    failed: list[tuple[int, Exception]] = []
    for candidate in steps:
      restored, error = None, None
      try:
        restored = self._manager.restore(candidate, args=args)
      except Exception as e:  # pylint: disable=broad-except
        error = e
      # Every process reads only its own shards, so a corrupt file may fail on some processes
      # only: all must agree on the step, or they would resume from different states. The
      # checksums are computed by all processes together, so only once all have read the step.
      if _all_processes(error is None):
        try:
          result = self._verified(candidate, restored)
        except integrity.CheckpointIntegrityError as e:
          error = e
        if _all_processes(error is None):
          if failed:
            self._quarantine([s for s, _ in failed])
            logging.warning("Restored checkpoint step %d instead of the corrupt step(s) %s.",
                            candidate, [s for s, _ in failed])
          return result
      error = error or RuntimeError("unreadable on another process")
      logging.warning("Checkpoint step %d in %s cannot be restored (%s: %s); trying the "
                      "previous one.", candidate, self._directory, type(error).__name__,
                      str(error)[:500])
      failed.append((candidate, error))
    latest_step, latest_error = failed[0]
    raise CheckpointRestoreError(
        f"None of the checkpoints {sorted(steps)} in {self._directory} can be restored; the "
        f"latest (step {latest_step}) failed with {type(latest_error).__name__}: {latest_error}"
    ) from latest_error

  def _verified(self, step: int, restored: Any) -> tuple[Any, dict[str, Any]]:
    """``(state, extra_json)`` of a restored step, its arrays checked against their checksums.

    Raises:
      integrity.CheckpointIntegrityError: an array differs from its checksum.
    """
    meta = dict(restored[META_ITEM] or {})
    stored = meta.pop(CHECKSUMS_KEY, None)
    where = f"Checkpoint step {step} in {self._directory}"
    if not integrity.verify(restored[STATE_ITEM], stored, where):
      logging.warning("%s has no checksums (written before relic checksummed checkpoints): "
                      "restored, not verified.", where)
    return restored[STATE_ITEM], meta

  def _move_aside(self, step: int) -> epath.Path:
    """Moves step directory ``step`` to ``WORKDIR/checkpoints_corrupt/`` (kept for inspection,
    never deleted); process 0 only."""
    target_root = self._workdir / CORRUPT_DIR
    target_root.mkdir(parents=True, exist_ok=True)
    target = target_root / str(step)
    suffix = 1
    while target.exists():
      target = target_root / f"{step}.{suffix}"
      suffix += 1
    (self._directory / str(step)).rename(target)
    return target

  def _quarantine(self, steps: list[int]) -> None:
    """Moves unreadable committed steps out of the way, so the resumed run lists the good step
    as the latest and can save the same step numbers."""
    if jax.process_index() == 0:
      for step in steps:
        target = self._move_aside(step)
        logging.warning("Moved unreadable checkpoint %s to %s.", self._directory / str(step),
                        target)
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes("relic_checkpoint_quarantine")
    self._manager.close()
    self._manager = self._open(cleanup_tmp=False)

  def _set_aside_incomplete_steps(self) -> None:
    """Before Orbax lists the steps: moves step directories without Orbax's commit marker aside
    (Orbax lists any directory with a step's name on a local disk) and finishes interrupted
    deletions."""
    if jax.process_index() == 0 and self._directory.is_dir():
      self._empty_trash()
      for path in sorted(self._directory.iterdir()):
        if not (STEP_NAME.fullmatch(path.name) and path.is_dir()):
          continue
        reason = incomplete_reason(path)
        if reason:
          target = self._move_aside(int(path.name))
          logging.warning(
              "Checkpoint step %s in %s is incomplete (%s): its save or the deletion of an old "
              "checkpoint was interrupted. Moved it to %s; it is never restored.", path.name,
              self._directory, reason, target)
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes("relic_checkpoint_incomplete_steps")

  def _empty_trash(self) -> None:
    """Removes the steps Orbax's retention renamed into ``checkpoints/deleting/``; process 0
    only, as Orbax's deletion. A kill here leaves only that directory, which no listing reads and
    the next :class:`Checkpointer` empties."""
    trash = self._directory / DELETING_DIR
    if jax.process_index() != 0 or not trash.exists():
      return
    try:
      trash.rmtree()
    except OSError as e:
      logging.warning("Cannot remove the deleted checkpoints in %s (%s: %s); they take disk "
                      "space until a later run removes them. Fix: check the directory's "
                      "permissions.", trash, type(e).__name__, e)
