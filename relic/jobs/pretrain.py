"""``config.job = 'pretrain'``: ReLICv2 pretraining, end to end.

Resumable at any step: the restarted command with the same workdir restores the train state
(online/target/probe parameters and BN statistics, optimiser state, step, RNG) and the data
position (a pure function of the step), then continues exactly where the run stopped.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax
from absl import logging

from relic import objectives, optim, parallel, resume_check, schedules
from relic.checkpoints import orbax_checkpointer as checkpoint
from relic.data import pipeline
from relic.errors import ConfigError, Problems
from relic.evaluators import registry
from relic.checkpoints import results as eval_results
from relic.models import networks_from_config
from relic.train import divergence, loop
from relic.train.pretrain_step import (jit_pretrain_step, make_pretrain_step,
                                       make_view_augmentation, step_rngs)
from relic.train.states import TrainState, create_train_state


def validate(config) -> None:
  """Pretraining-specific checks, before any compute: the settings and the data's presence
  (reported together, without TensorFlow), then what needs the data's metadata."""
  problems = Problems()
  problems.check(_check_settings, config)
  problems.check(pipeline.check_data_config, config)
  problems.raise_if_any()
  if config.data.labelled_split and not config.data.fake:
    try:
      pipeline.num_examples(config, config.data.labelled_split)
    except Exception as e:  # pylint: disable=broad-except
      raise ConfigError(f"config.data.labelled_split: split {config.data.labelled_split!r} "
                        f"cannot be read ({e}). Fix: name a labelled split of the dataset, "
                        f"e.g. {list(pipeline.split_names(config))}, or '' for "
                        "data.train_split.") from None
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
  if config.loss.objective == "supervised":
    classes = int(pipeline.num_classes(config))
    if config.model.projector_output_dim != classes:
      raise ConfigError(
          "config.model.projector_output_dim: the supervised objective reads the network's "
          f"output as logits of the {classes} classes, got {config.model.projector_output_dim}. "
          f"Fix: set --config.model.projector_output_dim={classes}.")


def _check_settings(config) -> None:
  """The pretraining fields that need no data."""
  for field in ("log_every_steps", "checkpoint_every_steps", "eval_every_steps",
                "keep_checkpoints"):
    if config.train[field] < 0 or (field == "keep_checkpoints" and config.train[field] < 1):
      raise ConfigError(f"config.train.{field} must be positive, got {config.train[field]}. "
                        "Fix: use a positive number of steps (0 disables periodic evaluation).")
  if config.train.view_images < 0:
    raise ConfigError(f"config.train.view_images must be >= 0, got {config.train.view_images}. "
                      "Fix: use e.g. 8, or 0 for no view images.")
  registry.check_names(config.evaluators.periodic, "evaluators.periodic")
  registry.check_names(config.evaluators.final, "evaluators.final")
  objective = config.loss.objective
  if objective not in objectives.OBJECTIVES:
    raise ConfigError(f"config.loss.objective: unknown objective {objective!r}. "
                      f"Fix: choose one of {', '.join(repr(o) for o in objectives.OBJECTIVES)}.")
  _check_baseline(config)
  negatives, batch = config.loss.num_negatives, config.train.batch_size
  if negatives >= batch > 0:
    # Sampled per anchor from the other images of the global batch (relic/objectives.py).
    raise ConfigError(f"config.loss.num_negatives: {negatives} sampled negatives per anchor "
                      f"need more than {negatives} images in the global batch, got "
                      f"train.batch_size={batch} ({batch - 1} others). Fix: use at most "
                      f"--config.loss.num_negatives={batch - 1}, 0 for the whole batch, or a "
                      f"train.batch_size above {negatives}.")


def _check_baseline(config) -> None:
  """What the BYOL and SimCLR baselines need (relic/objectives.py). 'byol' does not turn the
  predictor on by itself: the config (and so config.json and the resume check) must say what
  the network is."""
  objective = config.loss.objective
  if objective not in ("byol", "simclr"):
    return
  views = config.data.views
  if views.large.num + views.small.num < 2:
    raise ConfigError(f"config.data.views: loss.objective={objective!r} compares pairs of "
                      f"different views; got {views.large.num} large + {views.small.num} small. "
                      "Fix: use at least two views, e.g. --config.data.views.large.num=2.")
  if config.loss.num_negatives:
    raise ConfigError(f"config.loss.num_negatives: sampled negatives are a ReLICv2 option; "
                      f"loss.objective={objective!r} "
                      + ("has no negatives" if objective == "byol" else
                         "uses the whole global batch (2B - 2 negatives)")
                      + ". Fix: --config.loss.num_negatives=0.")
  if objective == "byol" and not config.model.predictor:
    raise ConfigError("config.model.predictor: loss.objective='byol' regresses the online "
                      "network's prediction onto the target projection, so the online network "
                      "needs its predictor. Fix: add --config.model.predictor=True.")
  if objective == "simclr" and config.model.predictor:
    raise ConfigError("config.model.predictor: loss.objective='simclr' compares online "
                      "projections (SimCLR has no predictor). Fix: "
                      "--config.model.predictor=False.")


def _probe_classes(config) -> int:
  if not config.probe.enabled:
    return 0
  return int(config.probe.num_classes) or int(pipeline.num_classes(config))


def run(config, workdir: str) -> dict[str, Any]:
  """Pretrains, then runs ``config.evaluators.final`` (results.json); returns the final
  metrics ({} when stopped early: the checkpoint is written and the command resumes)."""
  resume_check.check_workdir(config, workdir)   # another experiment's workdir: before any compute
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
  schedule = {"num_train_examples": num_train, "total_steps": total, "warmup_steps": warmup}
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
                                    start_step=start), mesh, config.data.prefetch_to_device,
          num_batches=total - start),
      meta={"config": checkpoint.config_to_json(config), "schedule": schedule},
      check_resume=lambda meta: _check_resume(meta, config, schedule),
      periodic=periodic, images=_view_images(config)))
  if outcome.stopped:
    return {}
  final: dict[str, Any] = dict(outcome.metrics)
  evaluators = evaluate(config.evaluators.final)
  if evaluators:
    results: dict[str, Any] = {}
    for e in evaluators:
      results.update(e.run(_encoder_variables(outcome.state)))
    eval_results.write_results(workdir, results,
                               "\n".join(e.markdown(results) for e in evaluators), step=total)
    final["evaluation"] = results
  return final


def _check_resume(meta: dict, config, schedule: dict) -> None:
  """The checkpoint's experiment config, then its schedule (the length the split gave it)."""
  resume_check.check_resume_compatible(meta.get("config", {}), config)
  resume_check.check_schedule(meta.get("schedule"), schedule)


def _view_images(config):
  """``(state, batch) -> {'views/large': grid, ...}``: the first ``train.view_images`` images
  of step 0's batch, each view as the networks see it (augmented with the step's own keys, so
  exactly step 0's views), a row per image; masked large views show their filled background.
  ``views/large_crops`` are the same large views before photometric augmentation."""
  count = int(config.train.view_images)
  if count <= 0:
    return None
  views = make_view_augmentation(config)

  @jax.jit
  def augmented(state, batch):
    rng_large, rng_small, _ = step_rngs(state)
    return views(rng_large, rng_small, {k: v for k, v in batch.items() if k != "label"})

  def local_rows(x):
    """The first ``count`` rows this process holds (every process runs ``augmented``)."""
    shards, starts = [], set()
    for shard in sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0):
      if shard.index[0].start not in starts:  # a replica of rows already taken
        starts.add(shard.index[0].start)
        shards.append(np.asarray(shard.data))
      if sum(len(s) for s in shards) >= count:
        break
    return np.concatenate(shards)[:count]

  def images(state, batch):
    from relic import metrics as metrics_lib  # pylint: disable=import-outside-toplevel
    large, small = augmented(state, batch)
    grids = {"views/large": local_rows(large)}
    if small is not None:
      grids["views/small"] = local_rows(small)
    if batch["large"].dtype == np.uint8:
      grids["views/large_crops"] = local_rows(batch["large"])
    return {name: metrics_lib.image_grid(rows)[None] for name, rows in grids.items()}

  return images


def _encoder_variables(state: TrainState) -> dict:
  return {"params": state.online_params["encoder"],
          "batch_stats": state.online_batch_stats["encoder"]}
