"""Linear heads on frozen features, several learning rates trained side by side in one pass.

Linear evaluation sweeps the learning rate. The encoder is frozen, so every candidate sees the
same features of the same augmented batch: one forward pass of the encoder serves all of them,
and a sweep of K rates costs about as much as a single run (the heads are tiny next to the
encoder). The heads are one :class:`relic.models.LinearHead` each, stacked on a leading axis
of size K and applied with ``vmap``.

Optimiser (the official ReLICv2/BYOL linear evaluation): SGD with Nesterov momentum, no weight
decay by default, learning rate ``lr_k * cos_decay(step)`` from the peak ``lr_k`` of head k to 0
at the last step, no warm-up. The momentum buffer does not depend on the rate, so one
``optax.trace`` serves all heads and only the final scaling is per head.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

from relic import schedules
from relic.models import LinearHead, linear_head_params


@flax.struct.dataclass
class HeadsState:
  """Step, stacked head parameters (leading axis = head) and the momentum state."""
  step: jax.Array
  params: Any
  opt_state: Any

  # The checkpointed tree, as is (the selected head is saved apart: relic.checkpoints.probe_head).
  to_dict = flax.serialization.to_state_dict
  replace_from_dict = flax.serialization.from_state_dict


def heads_optimizer(momentum: float, weight_decay: float = 0.0,
                    nesterov: bool = True) -> optax.GradientTransformation:
  """Rate-free part of the update (decay, then momentum); the rate is applied per head."""
  parts = []
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay))
  parts.append(optax.trace(decay=momentum, nesterov=nesterov))
  return optax.chain(*parts)


def init_heads(num_heads: int, num_features: int, num_classes: int,
               optimizer: optax.GradientTransformation, init: str = "zeros",
               rng: jax.Array | None = None) -> HeadsState:
  """K heads and their optimiser state. ``init``: 'haiku' (DeepMind's linear evaluation:
  ``hk.Linear``'s default, drawn from ``rng``) or 'zeros' (see
  :func:`relic.models.heads.linear_head_params`). Every head starts from the same draw, so a
  rate sweep compares rates, not initialisations."""
  one = linear_head_params(init, jax.random.key(0) if rng is None else rng, num_features,
                           num_classes)
  params = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_heads, *x.shape)).copy(), one)
  return HeadsState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params))


def heads_logits(params: Any, features: jax.Array, num_classes: int) -> jax.Array:
  """(K, B, C) logits of the K stacked heads on (B, D) features."""
  head = LinearHead(num_classes)
  return jax.vmap(lambda p: head.apply({"params": p}, features))(params)


def make_train_step(*, num_classes: int, learning_rates: Sequence[float], total_steps: int,
                    optimizer: optax.GradientTransformation,
                    features_fn: Callable[[Any, dict], jax.Array]):
  """The (un-jitted) step ``(state, frozen, batch) -> (state, metrics)``.

  Args:
    learning_rates: the peak rate of each head (already scaled by batch / 256).
    features_fn: ``(frozen, batch) -> (B, D)`` features; ``frozen`` holds whatever it needs (the
      encoder variables, or nothing when the batch carries cached features). The features are
      wrapped in ``stop_gradient``: nothing flows back into the encoder, which is not an output
      of the step either, so its parameters and BN statistics cannot change.
  """
  rates = jnp.asarray(learning_rates, jnp.float32)

  def step(state: HeadsState, frozen: Any, batch: dict):
    features = jax.lax.stop_gradient(features_fn(frozen, batch))
    labels = batch["label"]
    valid = batch["valid"].astype(jnp.float32)
    num_valid = jnp.maximum(valid.sum(), 1.0)

    def loss_fn(params):
      logits = heads_logits(params, features, num_classes)                     # (K, B, C)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels[None])  # (K, B)
      per_head = (ce * valid).sum(-1) / num_valid
      return per_head.sum(), (per_head, logits)  # heads are independent: sum = each its own

    grads, (per_head, logits) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    scale = -rates * schedules.warmup_cosine(1.0, total_steps)(state.step)                    # (K,)
    updates = jax.tree.map(lambda u: u * scale.reshape((-1,) + (1,) * (u.ndim - 1)), updates)
    params = optax.apply_updates(state.params, updates)
    correct = (jnp.argmax(logits, -1) == labels[None]).astype(jnp.float32)
    metrics = {"loss": per_head, "accuracy": 100.0 * (correct * valid).sum(-1) / num_valid,
               "learning_rate": -scale, "grad_norm": optax.tree.norm(grads)}
    return HeadsState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def select_head(params: Any, index: int) -> Any:
  """The LinearHead parameters of head ``index``."""
  return jax.tree.map(lambda x: x[index], params)
