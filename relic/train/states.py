"""Training states: one dataclass per kind of run, holding everything a resumed run needs."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from relic.models import LinearHead, RelicNetwork


@flax.struct.dataclass
class TrainState:
  """Online/target networks, optimisers, online probe, step and RNG.

  ``step`` is the single source of truth: learning rate, EMA rate, the per-step RNG
  (``fold_in(rng, step)``) and the logging/checkpoint cadence are pure functions of it, so a
  resumed run recomputes them exactly.
  """
  step: jax.Array
  online_params: Any
  online_batch_stats: Any
  target_params: Any
  target_batch_stats: Any
  opt_state: Any
  probe_params: Any
  probe_opt_state: Any
  rng: jax.Array

  def to_dict(self) -> dict[str, Any]:
    """The checkpointed pytree (plain dict, stable key names)."""
    return flax.serialization.to_state_dict(self)

  def replace_from_dict(self, tree: dict[str, Any]) -> "TrainState":
    return flax.serialization.from_state_dict(self, tree)


def create_train_state(rng: jax.Array, *, online: RelicNetwork, target: RelicNetwork,
                       optimizer: optax.GradientTransformation,
                       probe_optimizer: optax.GradientTransformation, num_classes: int,
                       image_size: int) -> TrainState:
  """Initialises online and target networks identically (target = copy of online).

  Args:
    num_classes: classes of the online probe; 0 disables it (unlabelled data).
    image_size: the large-view size, only used to trace shapes at initialisation.
  """
  init_rng, probe_rng, state_rng = jax.random.split(rng, 3)
  images = jnp.zeros((2, image_size, image_size, 3), jnp.float32)
  online_vars = online.init(init_rng, images, train=False)
  target_keys = jax.eval_shape(lambda: target.init(init_rng, images, train=False))["params"]
  # The target starts as an exact copy of the online network (minus the predictor); real
  # copies, so the two never share a buffer (the step donates the state's buffers).
  target_params = jax.tree.map(jnp.copy, {k: online_vars["params"][k] for k in target_keys})
  target_stats = jax.tree.map(jnp.copy,
                              {k: online_vars["batch_stats"][k] for k in target_keys})
  probe_params = {}
  if num_classes:
    probe_params = LinearHead(num_classes).init(
        probe_rng, jnp.zeros((1, online.encoder.num_features)))["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      online_params=online_vars["params"],
      online_batch_stats=online_vars["batch_stats"],
      target_params=target_params,
      target_batch_stats=target_stats,
      opt_state=optimizer.init(online_vars["params"]),
      probe_params=probe_params,
      probe_opt_state=probe_optimizer.init(probe_params),
      rng=state_rng,
  )


@flax.struct.dataclass
class FinetuneState:
  """Whole-network supervised training (fine-tuning, segmentation transfer): step, encoder +
  head parameters and BN statistics, optimiser state."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  def to_dict(self) -> dict[str, Any]:
    return flax.serialization.to_state_dict(self)

  def replace_from_dict(self, tree: dict[str, Any]) -> "FinetuneState":
    return flax.serialization.from_state_dict(self, tree)
