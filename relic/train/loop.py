"""The one resumable training loop of every job (pretraining, linear probe, fine-tuning,
segmentation), as DeepMind BYOL's ``main_loop`` drives every experiment through its step.

A job describes its run (:class:`Run`: the initial state, the jitted step, the batches from a
given step on, the length, the cadence, what makes a checkpoint its own) and :func:`train`
owns everything around the step, once, for all of them:
  * the job's resume check on the newest checkpoint's saved config, before anything is read
    into the state or written to the workdir (a refused run leaves the workdir as it was, and a
    model of other shapes is refused by name, not by a failed restore); then the restore of the
    newest readable checkpoint;
  * the cadence: log, evaluate, checkpoint, ``stop_at_step``, all pure functions of the step;
  * the divergence policy (``stop`` / ``skip`` up to a limit) over the loss, the gradients and
    the updated train state, tracked on the device so the loop synchronises with it only when
    it logs or saves; a state with a NaN/Inf anywhere is never saved;
  * SIGTERM through the preemption guard: checkpoint the current step, return normally;
  * the metrics logger, the checkpointer and the batch stream (with its prefetch thread),
    all closed in one ``finally``, whatever ends the loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np
from absl import logging

from relic import preemption, resume_check
from relic.train.divergence import Divergence, check_saveable
from relic.checkpoints import Checkpointer, config_to_json


@dataclasses.dataclass
class Periodic:
  """``run(state, step) -> scalars``, logged under ``prefix`` every ``every_steps`` steps and
  after the last step."""
  every_steps: int
  run: Callable[[Any, int], Mapping[str, float]]
  prefix: str = "monitor"


@dataclasses.dataclass
class Run:
  """What a job hands the loop: what is trained (``name``, for messages), where (``workdir``:
  ``checkpoints/``, ``metrics.jsonl``, TensorBoard events), the initial ``state`` on the devices
  (a flax struct with ``step``, ``to_dict()``, ``replace_from_dict()``), the jitted ``step_fn``
  ``(state, batch) -> (state, metrics)`` wrapped by :func:`relic.train.divergence.guarded`,
  ``batches(start_step)`` (an iterator from that step on; closed at the end when it can be),
  the length and examples per step, the JSON ``meta`` saved with every checkpoint and
  ``check_resume(meta)`` (raises ConfigError for another run's checkpoint; it is given the
  saved ``meta`` before the state is restored), the cadence (the last step always logs and
  saves; ``stop_at_step`` > 0 saves and stops there), retention, the divergence policy,
  ``periodic`` evaluations and ``log_metrics`` (host metrics -> the scalars to log; default:
  all but 'finite'). ``images(state, batch)``, when given, runs on every
  process before the first step of a run that starts at step 0, and the images it returns go
  to TensorBoard at step 0. The loop writes ``meta['config']`` as TensorBoard hparams."""
  name: str
  workdir: str
  state: Any
  step_fn: Callable[[Any, Any], tuple[Any, dict]]
  batches: Callable[[int], Iterator]
  total_steps: int
  global_batch: int
  meta: dict[str, Any]
  check_resume: Callable[[dict[str, Any]], None]
  log_every_steps: int = 100
  checkpoint_every_steps: int = 1000
  stop_at_step: int = 0
  keep_checkpoints: int = 2
  keep_every_steps: int = 0
  nan_policy: str = "stop"
  max_skipped_steps: int = 0
  periodic: tuple[Periodic, ...] = ()
  log_metrics: Callable[[dict], Mapping[str, Any]] | None = None
  images: Callable[[Any, Any], Mapping[str, np.ndarray]] | None = None


@dataclasses.dataclass
class Outcome:
  """The state, the last step's metrics (host floats), and whether the run stopped early
  (SIGTERM or ``stop_at_step``: the checkpoint is written, the run unfinished)."""
  state: Any
  metrics: dict[str, float]
  stopped: bool


def job_run(config, section: str, **fields) -> Run:
  """A :class:`Run` with the cadence and retention of ``config.<section>`` (its
  ``log_every_steps``, ``checkpoint_every_steps`` and, where the section has them,
  ``keep_checkpoints``, ``keep_every_steps``, ``stop_at_step``) and the divergence policy of
  ``config.train``, the same for every job; ``fields`` are the job's own."""
  s = config[section]
  return Run(log_every_steps=s.log_every_steps, checkpoint_every_steps=s.checkpoint_every_steps,
             keep_checkpoints=s.get("keep_checkpoints", 2),
             keep_every_steps=s.get("keep_every_steps", 0), stop_at_step=s.get("stop_at_step", 0),
             nan_policy=config.train.nan_policy,
             max_skipped_steps=config.train.max_skipped_steps, **fields)


def encoder_run(config, section: str, info: Mapping[str, Any], base_lr: float | None,
                resume_fields: tuple[str, ...], **fields) -> Run:
  """:func:`job_run` for a run that trains on a pretrained encoder (linear probe, fine-tuning,
  segmentation): its checkpoints name the encoder (``info['fingerprint']``) and the rate, and
  a rerun resumes only the same run (``config.<section>.<resume_fields>``, rate, encoder).
  The checkpoints also record those fields, so that the start-up check of a rerun
  (:func:`relic.resume_check.check_workdir`) refuses another run before anything is written."""
  return job_run(
      config, section, meta={"config": config_to_json(config),
                             "fingerprint": info["fingerprint"], "base_lr": base_lr,
                             resume_check.RUN_FIELDS_KEY: resume_check.run_fields(
                                 section, resume_fields)},
      check_resume=lambda meta: resume_check.check_run_resume(meta, config, info, base_lr,
                                                              section, resume_fields),
      **fields)


def _default_log_metrics(metrics: dict) -> dict:
  return {k: v for k, v in metrics.items() if k != "finite"}


def _next_batch(batches: Iterator, step: int):
  """The batch of ``step`` (a seam for tests that corrupt one batch)."""
  del step
  return next(batches)


def train(run: Run) -> Outcome:
  """Runs ``run`` from its newest checkpoint (or step 0) to the end, or to a stop request.

  Raises:
    DivergenceError: non-finite steps beyond the policy (the last good checkpoint is kept).
    ConfigError: the workdir's checkpoint belongs to another run (from ``check_resume``);
      nothing was written to the workdir.
    CheckpointSaveError: a save failed (earlier checkpoints are untouched).
  """
  # Before the checkpointer opens (it tidies the checkpoint directory) and before the restore
  # (a checkpoint of other shapes would fail there with the restore's error, not the field's).
  checked = resume_check.checkpoint_meta(run.workdir)
  if checked is not None:
    run.check_resume(checked[1])
  with contextlib.ExitStack() as cleanup:
    ckpt = cleanup.enter_context(Checkpointer(run.workdir, keep=run.keep_checkpoints,
                                              keep_every_steps=run.keep_every_steps))
    state, start = run.state, 0
    if ckpt.latest_step() is not None:
      tree, meta = ckpt.restore(state.to_dict())
      state = state.replace_from_dict(tree)
      start = int(state.step)
      if checked is None or checked[0] != start:   # an older step replaced an unreadable one
        run.check_resume(meta)
      logging.info("%s: resumed from checkpoint step %d/%d in %s.", run.name, start,
                   run.total_steps, ckpt.directory)
    if start >= run.total_steps:
      return Outcome(state, {}, stopped=False)
    guard = preemption.PreemptionGuard().install()
    cleanup.callback(guard.uninstall)
    # Imported here: the metric writers load TensorFlow, which the start-up checks avoid.
    from relic.metrics import MetricsLogger  # pylint: disable=import-outside-toplevel
    logger = MetricsLogger(run.workdir, total_steps=run.total_steps,
                           global_batch_size=run.global_batch)
    cleanup.callback(logger.close)
    logger.write_hparams(run.meta.get("config") or {})
    batches = run.batches(start)
    if hasattr(batches, "close"):
      cleanup.callback(batches.close)  # stops the prefetch thread on every way out
    divergence = Divergence(run.name, run.nan_policy, run.max_skipped_steps)
    log_metrics = run.log_metrics or _default_log_metrics
    last_good = ckpt.latest_step()
    metrics: dict = {}
    for step in range(start, run.total_steps):
      if step == start + 1:
        logger.start(step)  # time from the first compiled step on
      batch = _next_batch(batches, step)
      if step == 0 and run.images is not None:
        logger.write_images(0, run.images(state, batch))  # before the step donates the state
      state, metrics = run.step_fn(state, batch)
      divergence.update(step, metrics["finite"])
      done = step + 1
      is_last = done == run.total_steps
      if done % max(run.log_every_steps, 1) == 0 or is_last:
        # A background save that failed is reported here, before last_good can be named.
        ckpt.check_save()
        divergence.check(last_good, state)
        logger.write(done, log_metrics(jax.device_get(metrics)))
      for periodic in run.periodic:
        if periodic.every_steps and (done % periodic.every_steps == 0 or is_last):
          logger.write(done, periodic.run(state, done), prefix=periodic.prefix)
      stop = guard.should_stop(done) or done == run.stop_at_step
      if done % max(run.checkpoint_every_steps, 1) == 0 or is_last or stop:
        divergence.check(last_good, state)  # never checkpoint a diverged state ...
        check_saveable(run.name, state, done, last_good)  # ... whatever the step reported
        ckpt.save(done, state.to_dict(), extra_json=run.meta)
        last_good = done
      if stop:
        reason = (f"signal {guard.received_signal}" if guard.received_signal
                  else f"stop_at_step={run.stop_at_step}")
        logging.warning("%s: stopping (%s); checkpoint of step %d written. Rerun the same "
                        "command to resume.", run.name, reason, done)
        return Outcome(state, {}, stopped=True)
    return Outcome(state, {k: float(np.asarray(v).mean())
                           for k, v in jax.device_get(metrics).items()}, stopped=False)
