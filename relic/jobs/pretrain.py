"""``config.job = 'pretrain'``: ReLICv2 pretraining, end to end.

Resumable at any step: the restarted command with the same workdir restores the train state
(online/target/probe parameters and BN statistics, optimiser state, step, RNG) and the data
position (a pure function of the step), then continues exactly where the run stopped.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from etils import epath

from relic import checkpoint, optim, parallel, preemption, resume_check, schedules
from relic import workdir as workdir_lib
from relic.config import ConfigError
from relic.data import pipeline
from relic.evaluators import frozen
from relic.metrics import MetricsLogger
from relic.models import networks_from_config
from relic.pretrain_step import jit_pretrain_step, make_pretrain_step
from relic.train_state import TrainState, create_train_state

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


class DivergenceError(RuntimeError):
  """The loss or the gradients became NaN/Inf."""


def validate(config) -> None:
  """Pretraining-specific checks, before any compute."""
  if config.train.nan_policy not in ("stop", "skip"):
    raise ConfigError(f"config.train.nan_policy: unknown policy {config.train.nan_policy!r}. "
                      "Fix: choose 'stop' or 'skip'.")
  for field in ("log_every_steps", "checkpoint_every_steps", "eval_every_steps",
                "keep_checkpoints"):
    if config.train[field] < 0 or (field == "keep_checkpoints" and config.train[field] < 1):
      raise ConfigError(f"config.train.{field} must be positive, got {config.train[field]}. "
                        "Fix: use a positive number of steps (0 disables periodic evaluation).")
  pipeline.check_data_config(config)
  label_users = [name for name, on in (("probe", config.probe.enabled),
                                       ("knn", config.knn.enabled),
                                       ("final_eval", config.final_eval.enabled),
                                       ("loss.objective='supervised'",
                                        config.loss.objective == "supervised")) if on]
  if label_users:
    pipeline.check_single_label(
        config, f"pretraining with {', '.join(label_users)}",
        fix="pretrain on the images alone (--config.probe.enabled=False "
            "--config.knn.enabled=False --config.final_eval.enabled=False, loss.objective "
            "'relicv2'), then score the encoder with the transfer job's linear protocol")
  if config.loss.objective not in ("relicv2", "supervised"):
    raise ConfigError(f"config.loss.objective: unknown objective {config.loss.objective!r}. "
                      "Fix: choose 'relicv2' or 'supervised'.")
  if config.loss.objective == "supervised":
    classes = int(pipeline.num_classes(config))
    if config.model.projector_output_dim != classes:
      raise ConfigError(
          "config.model.projector_output_dim: the supervised objective reads the network's "
          f"output as logits of the {classes} classes, got {config.model.projector_output_dim}. "
          f"Fix: set --config.model.projector_output_dim={classes}.")


def _probe_classes(config) -> int:
  if not config.probe.enabled:
    return 0
  return int(config.probe.num_classes) or int(pipeline.num_classes(config))


def _check_resumable(config, workdir: str) -> None:
  """Refuses to continue a run of another experiment, before any compute."""
  saved = workdir_lib.read_config(workdir)
  if saved is not None:
    resume_check.check_resume_compatible(saved, config)


class _Divergence:
  """Tracks, on device, the first non-finite step so the loop syncs only when it logs."""

  def __init__(self):
    self.first_bad = jnp.asarray(-1, jnp.int32)
    self.count = jnp.asarray(0, jnp.int32)

  def update(self, step: int, finite: jax.Array) -> None:
    bad = jnp.logical_not(finite)
    self.first_bad = jnp.where((self.first_bad < 0) & bad, step, self.first_bad)
    self.count = self.count + bad.astype(jnp.int32)

  def check(self, config, last_good: int | None) -> None:
    first_bad, count = int(self.first_bad), int(self.count)
    if first_bad < 0:
      return
    where = (f"the last good checkpoint is step {last_good}" if last_good is not None
             else "no checkpoint was written yet")
    if config.train.nan_policy == "skip" and count <= config.train.max_skipped_steps:
      logging.warning("Skipped %d non-finite step(s) so far (first at step %d).", count,
                      first_bad)
      return
    raise DivergenceError(
        f"Training diverged: NaN/Inf in the loss or gradients at step {first_bad} "
        f"({count} non-finite step(s)); {where}. Lower optim.base_lr, raise loss.temperature, "
        "or set train.nan_policy='skip' with train.max_skipped_steps; rerunning the command "
        "resumes from the last good checkpoint.")


def run(config, workdir: str) -> dict[str, Any]:
  """Pretrains, then (``final_eval.enabled``) writes results.json; returns the final metrics."""
  _check_resumable(config, workdir)
  mesh = parallel.make_mesh()
  process_batch = parallel.check_batch_size(config.train.batch_size, mesh)
  split_size = pipeline.num_examples(config, config.data.train_split)
  num_train = schedules.resolve_num_train_examples(config, split_size)
  total = schedules.total_steps(config, num_train)
  warmup = schedules.warmup_steps(config, num_train)
  lr = schedules.learning_rate_schedule(config, total, warmup)
  ema = lambda step: schedules.ema_rate(step, total, config.ema.base_rate)
  optimizer = optim.step_scheduled(lambda rate: optim.make_optimizer(config, rate))
  probe_optimizer = optax.sgd(config.probe.lr, momentum=0.9, nesterov=True)
  num_classes = _probe_classes(config)
  online, target = networks_from_config(config.model)

  def init_state() -> TrainState:
    return create_train_state(jax.random.key(config.seed), online=online, target=target,
                              optimizer=optimizer, probe_optimizer=probe_optimizer,
                              num_classes=num_classes, image_size=config.data.views.large.size)

  # Initialised in place, already in its layout: every process computes the same values for
  # its own devices, and no host ever holds a full copy of a wide model's state.
  shardings = parallel.state_sharding(jax.eval_shape(init_state), mesh, fsdp=config.train.fsdp)
  state = jax.jit(init_state, out_shardings=shardings)()
  step_fn = jit_pretrain_step(
      make_pretrain_step(config, online=online, target=target, optimizer=optimizer,
                         probe_optimizer=probe_optimizer, learning_rate=lr, ema_rate=ema,
                         num_classes=num_classes),
      shardings, parallel.data_sharding(mesh))

  ckpt = checkpoint.Checkpointer.from_config(workdir, config)
  start = 0
  if ckpt.latest_step() is not None:
    tree, meta = ckpt.restore(state.to_dict())
    resume_check.check_resume_compatible(meta.get("config", {}), config)
    state = state.replace_from_dict(tree)
    start = int(state.step)
    logging.info("Resumed from checkpoint step %d in %s.", start, ckpt.directory)
  logging.info("Pretraining %d steps (%d warm-up) of global batch %d on %d devices, %d "
               "process(es); %d examples per epoch.", total, warmup, config.train.batch_size,
               mesh.devices.size, jax.process_count(), num_train)

  def save(step: int) -> None:
    ckpt.save(step, state.to_dict(), extra_json={
        "config": checkpoint.config_to_json(config), "data_position": {
            "step": step, "seed": config.seed, "examples_seen": schedules.examples_seen(
                step, config)}})

  logger = MetricsLogger(workdir, total_steps=total, global_batch_size=config.train.batch_size)
  divergence = _Divergence()
  batches = pipeline.device_prefetch(
      pipeline.pretrain_batches(config, batch_size=process_batch, seed=config.seed,
                                start_step=start),
      mesh, config.data.prefetch_to_device)
  metrics: dict = {}
  last_good = ckpt.latest_step()
  guard = preemption.PreemptionGuard().install()
  try:
    for step in range(start, total):
      if step == start + 1:
        logger.start(step)  # time from the first compiled step on
      state, metrics = step_fn(state, next(batches))
      divergence.update(step, metrics["finite"])
      done = step + 1
      is_last = done == total
      if done % max(config.train.log_every_steps, 1) == 0 or is_last:
        divergence.check(config, last_good)
        logger.write(done, {k: v for k, v in metrics.items() if k != "finite"})
      if config.knn.enabled and num_classes and config.train.eval_every_steps and (
          done % config.train.eval_every_steps == 0 or is_last):
        logger.write(done, frozen.knn_monitor(config, online.encoder, _encoder_variables(state),
                                              mesh, num_classes), prefix="monitor")
      stop = guard.should_stop(done) or done == config.train.stop_at_step
      if done % config.train.checkpoint_every_steps == 0 or is_last or stop:
        divergence.check(config, last_good)  # never checkpoint a diverged state
        save(done)
        last_good = done
      if stop:
        logging.warning("Stopping (%s): checkpoint of step %d written; rerun the same command "
                        "to resume.", f"signal {guard.received_signal}" if
                        guard.received_signal else "train.stop_at_step", done)
        ckpt.close()
        logger.close()
        return {}
  finally:
    guard.uninstall()
    batches.close()   # stops the prefetch thread before evaluation and interpreter exit
  ckpt.close()
  logger.flush()
  final = {k: float(np.asarray(v).mean()) for k, v in jax.device_get(metrics).items()}
  if config.final_eval.enabled and num_classes:
    final["evaluation"] = _final_evaluation(config, workdir, online, state, mesh, num_classes)
  logger.close()
  return final


def _encoder_variables(state: TrainState) -> dict:
  return {"params": state.online_params["encoder"],
          "batch_stats": state.online_batch_stats["encoder"]}


def _final_evaluation(config, workdir: str, online, state: TrainState, mesh,
                      num_classes: int) -> dict[str, Any]:
  """Frozen-feature linear probe and kNN of the pretrained (and a random-init) encoder."""
  started = time.perf_counter()
  results = {"pretrained": frozen.evaluate_frozen(config, online.encoder,
                                                  _encoder_variables(state), mesh, num_classes)}
  if config.final_eval.compare_random_init:
    random_vars = online.encoder.init(jax.random.key(config.seed + 1), jnp.zeros(
        (2, config.data.views.large.size, config.data.views.large.size, 3)), train=False)
    results["random_init"] = frozen.evaluate_frozen(config, online.encoder, random_vars, mesh,
                                                    num_classes)
  results["evaluation_seconds"] = time.perf_counter() - started
  if jax.process_index() == 0:
    path = epath.Path(workdir)
    (path / RESULTS_JSON).write_text(json.dumps(results, indent=2))
    (path / RESULTS_MD).write_text(results_markdown(results))
  print(results_markdown(results), flush=True)
  return results


def results_markdown(results: dict[str, Any]) -> str:
  """A readable table: encoder x split -> linear / kNN top-1."""
  lines = ["| encoder | split | linear top-1 (%) | kNN top-1 (%) |", "|---|---|---|---|"]
  for encoder in ("pretrained", "random_init"):
    for split, r in results.get(encoder, {}).items():
      lines.append(f"| {encoder} | {split} | {r['linear_top1']:.1f} | {r['knn_top1']:.1f} |")
  return "\n".join(lines) + "\n"
