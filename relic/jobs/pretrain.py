"""``config.job = 'pretrain'``: ReLICv2 pretraining, end to end.

Resumable at any step: the restarted command with the same workdir restores the train state
(online/target/probe parameters and BN statistics, optimiser state, step, RNG) and the data
position (a pure function of the step), then continues exactly where the run stopped.
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from absl import logging

from relic import optim, parallel, resume_check, schedules
from relic.checkpoints import orbax_checkpointer as checkpoint
from relic.checkpoints import layout as workdir_lib
from relic.data import pipeline
from relic.errors import ConfigError
from relic.evaluators import registry
from relic.checkpoints import results as eval_results
from relic.models import networks_from_config
from relic.train import divergence, loop
from relic.train.pretrain_step import jit_pretrain_step, make_pretrain_step
from relic.train.states import TrainState, create_train_state

def validate(config) -> None:
  """Pretraining-specific checks, before any compute."""
  for field in ("log_every_steps", "checkpoint_every_steps", "eval_every_steps",
                "keep_checkpoints"):
    if config.train[field] < 0 or (field == "keep_checkpoints" and config.train[field] < 1):
      raise ConfigError(f"config.train.{field} must be positive, got {config.train[field]}. "
                        "Fix: use a positive number of steps (0 disables periodic evaluation).")
  pipeline.check_data_config(config)
  registry.check_names(config.evaluators.periodic, "evaluators.periodic")
  registry.check_names(config.evaluators.final, "evaluators.final")
  label_users = [name for name, on in (("probe", config.probe.enabled),
                                       ("evaluators", config.evaluators.periodic
                                        or config.evaluators.final),
                                       ("loss.objective='supervised'",
                                        config.loss.objective == "supervised")) if on]
  if label_users:
    pipeline.check_single_label(
        config, f"pretraining with {', '.join(label_users)}",
        fix="pretrain on the images alone (--config.probe.enabled=False "
            "--config.evaluators.periodic=() --config.evaluators.final=(), loss.objective "
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


def run(config, workdir: str) -> dict[str, Any]:
  """Pretrains, then runs ``config.evaluators.final`` (results.json); returns the final
  metrics ({} when stopped early: the checkpoint is written and the command resumes)."""
  saved = workdir_lib.read_config(workdir)
  if saved is not None:   # refuse another experiment's workdir before any compute
    resume_check.check_resume_compatible(saved, config)
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
  step_fn = jit_pretrain_step(divergence.guarded(
      make_pretrain_step(config, online=online, target=target, optimizer=optimizer,
                         probe_optimizer=probe_optimizer, learning_rate=lr, ema_rate=ema,
                         num_classes=num_classes), config.train.nan_policy),
      shardings, parallel.data_sharding(mesh))
  logging.info("Pretraining %d steps (%d warm-up) of global batch %d on %d devices, %d "
               "process(es); %d examples per epoch.", total, warmup, config.train.batch_size,
               mesh.devices.size, jax.process_count(), num_train)
  evaluate = lambda names: [registry.get(name, config, online.encoder, mesh, num_classes)
                            for name in (names if num_classes else ())]
  periodic = tuple(
      loop.Periodic(config.train.eval_every_steps,
                    lambda state, step, e=e: e.run(_encoder_variables(state)))
      for e in evaluate(config.evaluators.periodic))
  outcome = loop.train(loop.job_run(
      config, "train", name="Pretraining", workdir=workdir,
      state=jax.jit(init_state, out_shardings=shardings)(), step_fn=step_fn, total_steps=total,
      global_batch=config.train.batch_size,
      batches=lambda start: pipeline.device_prefetch(
          pipeline.pretrain_batches(config, batch_size=process_batch, seed=config.seed,
                                    start_step=start), mesh, config.data.prefetch_to_device),
      meta={"config": checkpoint.config_to_json(config)},
      check_resume=lambda meta: resume_check.check_resume_compatible(meta.get("config", {}),
                                                                     config),
      periodic=periodic))
  if outcome.stopped:
    return {}
  final: dict[str, Any] = dict(outcome.metrics)
  evaluators = evaluate(config.evaluators.final)
  if evaluators:
    results: dict[str, Any] = {}
    for e in evaluators:
      results.update(e.run(_encoder_variables(outcome.state)))
    eval_results.write_results(workdir, results,
                               "\n".join(e.markdown(results) for e in evaluators))
    final["evaluation"] = results
  return final


def _encoder_variables(state: TrainState) -> dict:
  return {"params": state.online_params["encoder"],
          "batch_stats": state.online_batch_stats["encoder"]}
