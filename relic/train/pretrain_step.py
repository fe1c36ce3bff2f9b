"""The ReLICv2 pretraining step: one pure function, jitted over a data-parallel mesh.

views in -> (on-device photometric augmentation) -> online forward on all views, target
forward on the large views -> ReLICv2 loss over the global batch -> gradients -> optimiser ->
EMA update of the target -> online probe update -> metrics out.

``config.loss.objective`` swaps the loss and nothing else (views, networks, optimiser,
schedule, probe): 'relicv2'; 'byol' (online predictions vs target projections, needs
``model.predictor``); 'simclr' (NT-Xent between online projections, no target forward, no EMA);
'supervised' (cross-entropy on the labels, no target). See relic/objectives.py.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from relic import objectives, optim
from relic.models import LinearHead, RelicNetwork
from relic.train.states import TrainState


def _merge_views(views: jax.Array) -> jax.Array:
  """(B, V, H, W, C) -> (B * V, H, W, C).

  Views stay next to their image, so with B sharded over devices each device's slice of the
  merged batch is contiguous: no data moves between devices.
  """
  return views.reshape((-1,) + views.shape[2:])


def _split_views(x: jax.Array, num_views: int) -> jax.Array:
  """(B * V, D) -> (V, B, D), the layout of ``relicv2_loss``."""
  return jnp.swapaxes(x.reshape((-1, num_views) + x.shape[1:]), 0, 1)


def _to_float_images(views: jax.Array) -> jax.Array:
  if views.dtype == jnp.uint8:
    return views.astype(jnp.float32) / 255.0
  return views.astype(jnp.float32)


def ema_update(target_params: Any, online_params: Any, rate: jax.Array) -> Any:
  """g <- rate * g + (1 - rate) * f on the target's parameters (no predictor)."""
  online = {k: online_params[k] for k in target_params}
  return jax.tree.map(lambda g, f: rate * g + (1.0 - rate) * f, target_params, online)


def probe_loss_and_top1(probe: LinearHead, probe_params: Any, features: jax.Array,
                        labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Cross-entropy and top-1 of the online probe; examples labelled -1 are ignored."""
  logits = probe.apply({"params": probe_params}, features)
  loss, metrics = objectives.supervised_loss(logits[None], labels)
  return loss, metrics["accuracy"]


def step_rngs(state: TrainState) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The step's keys (large views, small views, loss): a pure function of the state's step."""
  rng_large, rng_small, rng_loss = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)
  return rng_large, rng_small, rng_loss


def make_view_augmentation(config) -> Callable[[jax.Array, jax.Array, dict],
                                               tuple[jax.Array, jax.Array | None]]:
  """``(rng_large, rng_small, batch) -> (large, small)``: the views as the step's networks see
  them, float32 in [0, 1] (``small`` None without small views). Photometric augmentation when
  the pixels are uint8 crops (``config.data.augment_on_device``), else only the conversion.
  """
  augment = bool(config.data.augment_on_device)
  if augment:
    from relic.data import augment as augment_lib  # pylint: disable=import-outside-toplevel
    from relic.data import views as views_lib  # pylint: disable=import-outside-toplevel
    from relic.data import augment_spec  # pylint: disable=import-outside-toplevel
    large_presets, small_presets = views_lib.view_presets(config)
    photometric = augment_spec.Photometric.from_config(config.data)

  def views(rng_large: jax.Array, rng_small: jax.Array, batch: dict):
    large = batch["large"]
    small = batch.get("small")
    has_small = small is not None and small.shape[1] > 0
    if augment:
      large = augment_lib.augment_views(rng_large, large, large_presets, photometric)
      small = (augment_lib.augment_views(rng_small, small, small_presets, photometric)
               if has_small else None)
    else:
      large = _to_float_images(large)
      small = _to_float_images(small) if has_small else None
    return large, small

  return views


def make_pretrain_step(config, *, online: RelicNetwork, target: RelicNetwork,
                       optimizer: optax.GradientTransformation,  # from optim.step_scheduled
                       probe_optimizer: optax.GradientTransformation,
                       learning_rate: Callable[[jax.Array], jax.Array],
                       ema_rate: Callable[[jax.Array], jax.Array],
                       num_classes: int) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Builds ``step(state, batch) -> (state, metrics)`` (not jitted; see ``jit_pretrain_step``).

  ``batch`` holds 'large' (B, L, H, W, 3), optionally 'small' (B, S, h, w, 3), and 'label' (B,).
  Pixels are uint8 (crops only: photometric augmentation runs here, on the accelerator) or
  float32 in [0, 1] (the host already augmented them; ``config.data.augment_on_device`` False).
  """
  loss_cfg = config.loss
  num_negatives = int(loss_cfg.num_negatives) or None
  objective = loss_cfg.objective
  if objective not in objectives.OBJECTIVES:
    raise ValueError(f"Unknown loss.objective {objective!r}; choose one of "
                     f"{objectives.OBJECTIVES}.")
  supervised = objective == "supervised"
  # ReLICv2 and BYOL compare with an EMA target; SimCLR (both branches online) and the
  # supervised reference never run, read or update it.
  uses_target = objective in objectives.TARGET_OBJECTIVES
  probe = LinearHead(num_classes) if num_classes else None
  augment_views = make_view_augmentation(config)

  def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng_large, rng_small, rng_loss = step_rngs(state)
    large, small = augment_views(rng_large, rng_small, batch)
    has_small = small is not None
    num_large = large.shape[1]
    num_small = small.shape[1] if has_small else 0

    # Target branch: large views only, BN with batch statistics, its own running statistics;
    # outside the gradient computation (stop-gradient by construction). SimCLR and the
    # supervised reference have no use for it (their target keeps its initial values).
    target_stats = state.target_batch_stats
    if uses_target:
      (_, target_proj, _), target_updates = target.apply(
          {"params": state.target_params, "batch_stats": state.target_batch_stats},
          _merge_views(large), train=True, mutable=["batch_stats"])
      target_proj = _split_views(jax.lax.stop_gradient(target_proj), num_large)
      target_stats = target_updates["batch_stats"]

    def loss_fn(params):
      variables = {"params": params, "batch_stats": state.online_batch_stats}
      (features, _, out_large), updates = online.apply(
          variables, _merge_views(large), train=True, mutable=["batch_stats"])
      outputs = [_split_views(out_large, num_large)]
      if has_small:
        # Small views use their own batch statistics; their running-statistics update is
        # dropped so the stored statistics describe full-size (evaluation-size) images.
        (_, _, out_small), _ = online.apply(variables, _merge_views(small), train=True,
                                            mutable=["batch_stats"])
        outputs.append(_split_views(out_small, num_small))
      outputs = jnp.concatenate(outputs, axis=0)      # (L + S, B, D), large views first
      if supervised:
        loss, metrics = objectives.supervised_loss(outputs, batch["label"])
      elif objective == "byol":     # online predictions vs target projections
        loss, metrics = objectives.byol_loss(outputs, target_proj)
      elif objective == "simclr":   # online projections of every view, both sides of a pair
        loss, metrics = objectives.simclr_loss(outputs, num_large=num_large,
                                               temperature=loss_cfg.temperature)
      else:
        loss, metrics = objectives.relicv2_loss(
            outputs, target_proj, temperature=loss_cfg.temperature,
            beta=loss_cfg.beta, num_negatives=num_negatives, rng=rng_loss)
      return loss, (metrics, updates["batch_stats"], features)

    grads, (metrics, online_stats, features) = jax.grad(loss_fn, has_aux=True)(
        state.online_params)
    lr = learning_rate(state.step)
    updates, opt_state = optimizer.update(
        grads, optim.set_learning_rate(state.opt_state, lr), state.online_params)
    online_params = optax.apply_updates(state.online_params, updates)
    rate = ema_rate(state.step)
    # SimCLR's and the supervised reference's target is never read: no EMA to keep.
    target_params = (ema_update(state.target_params, online_params, rate) if uses_target
                     else state.target_params)

    probe_params, probe_opt_state = state.probe_params, state.probe_opt_state
    if probe is not None:
      labels = jnp.repeat(batch["label"], num_large)  # features are (B * L): image-major
      (probe_loss, top1), probe_grads = jax.value_and_grad(
          lambda p: probe_loss_and_top1(probe, p, jax.lax.stop_gradient(features), labels),
          has_aux=True)(probe_params)
      probe_updates, probe_opt_state = probe_optimizer.update(probe_grads, probe_opt_state,
                                                              probe_params)
      probe_params = optax.apply_updates(probe_params, probe_updates)
      metrics.update(probe_loss=probe_loss, probe_top1=top1)

    # 'loss' and 'grad_norm' are what relic.train.loop.guarded checks for divergence.
    metrics.update(grad_norm=optax.tree.norm(grads), learning_rate=lr, ema_rate=rate)
    return state.replace(
        step=state.step + 1, online_params=online_params, online_batch_stats=online_stats,
        target_params=target_params, target_batch_stats=target_stats,
        opt_state=opt_state, probe_params=probe_params, probe_opt_state=probe_opt_state), metrics

  return step


def jit_pretrain_step(step: Callable, state_sharding: Any, batch_sharding: Any) -> Callable:
  """Jits the step over the mesh: state as laid out by ``state_sharding`` (replicated or FSDP),
  batch split over the data axis, metrics replicated; the old state's buffers are donated."""
  # keep_unused: the learning rate held in the optimiser state is overwritten before it is read;
  # pruned as unused, its buffer would escape donation and outlive the step.
  return jax.jit(step, in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, None), donate_argnums=(0,), keep_unused=True)
