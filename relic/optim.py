"""Optimisers: LARS as in BYOL/ReLICv2, plus SGD and AdamW, with one weight-decay mask.

LARS (You et al. 2017) as DeepMind's BYOL code applies it (byol/utils/optimizers.py, shipped
unchanged as ReLICv2's utils/optimizers.py; coefficients from byol/configs/byol.py), per parameter
tensor ``p`` with gradient ``g``, momentum buffer ``mu`` and learning rate ``lr_k`` at step k:

    g  <- g + weight_decay * p                              (decayed tensors only)
    g  <- g * trust * ||p|| / ||g||   (1 if either norm is 0)  (adapted tensors only)
    mu <- momentum * mu + g
    p  <- p - lr_k * mu

Weight decay is added *before* the trust ratio, so the ratio sees the decayed gradient. The
learning rate multiplies the momentum buffer after accumulation (BYOL scales ``mu`` by the
current rate; ``optax.lars`` instead accumulates ``lr * g``, which differs whenever the rate
changes, i.e. at every step of a schedule), hence the chain below rather than ``optax.lars``.

``optim.lars_clip`` (solo-learn's ``clip_lr``, its CIFAR and ImageNet-100 recipes) caps the
trust ratio at 1 relative to the current rate, ``g <- g * min(trust * ||p|| / ||g|| / lr_k, 1)``:
a tensor then moves by ``min(trust * ||p|| / ||g||, lr_k)`` times its gradient, never by more
than plain SGD at the scheduled rate.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from relic.errors import ConfigError

OPTIMIZERS = ("lars", "sgd", "adamw")


def weight_decay_mask(params: Any) -> Any:
  """True for convolution and dense kernels, False for everything else.

  Why a rule on the leaf name rather than on module names: in Flax every ``nn.Conv`` and
  ``nn.Dense`` weight matrix is called ``kernel``, while biases are ``bias`` and BatchNorm
  parameters are ``scale`` and ``bias``, whatever the module is called (``bn_*``,
  ``shortcut_bn``, a projector's or predictor's BN). Deciding on ``kernel`` with ``ndim >= 2``
  therefore excludes exactly the biases and *all* BatchNorm parameters of the encoder, the
  projector and the predictor, and keeps working when a module is renamed or added. Decaying or
  trust-ratio-scaling BN scales and biases is what BYOL's code avoids (its exclude_bias_and_norm
  filter, byol/utils/optimizers.py, serves as both filters in byol_experiment.py):
  they are not weights of a linear map, their norm carries no scale information.

  The same mask selects the tensors that get LARS's trust ratio.

  Returns:
    A pytree of bools with the structure of ``params``.
  """
  def decide(path, leaf) -> bool:
    name = getattr(path[-1], "key", getattr(path[-1], "name", None)) if path else None
    return name == "kernel" and getattr(leaf, "ndim", 0) >= 2

  return jax.tree_util.tree_map_with_path(decide, params)


def lars(learning_rate: optax.ScalarOrSchedule, *, weight_decay: float, momentum: float = 0.9,
         trust_coefficient: float = 1e-3, mask: Any = weight_decay_mask, clip: bool = False
         ) -> optax.GradientTransformation:
  """BYOL's LARS from optax primitives (see the module docstring for the update).

  Args:
    learning_rate: scalar or schedule of the step (the optimiser's own update count).
    weight_decay: decay coefficient added to the gradient before the trust ratio.
    momentum: momentum of the (un-scaled) update buffer.
    trust_coefficient: LARS's eta, 1e-3 in BYOL/ReLICv2.
    mask: pytree of bools (or function of params returning one) choosing the tensors that get
      weight decay and the trust ratio; the others get plain momentum SGD.
    clip: cap the trust ratio at 1 relative to the rate (module docstring); needs a scalar
      ``learning_rate`` (the rate held by :func:`step_scheduled`).
  """
  if clip and callable(learning_rate):
    raise ValueError("lars(clip=True) needs the current rate as a scalar; build the optimiser "
                     "with optim.step_scheduled.")
  trust = (clipped_trust_ratio(trust_coefficient, learning_rate) if clip
           else optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient))
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=mask),
      optax.masked(trust, mask),
      optax.trace(decay=momentum, nesterov=False),
      optax.scale_by_learning_rate(learning_rate),
  )


def clipped_trust_ratio(trust_coefficient: float, learning_rate: Any
                        ) -> optax.GradientTransformation:
  """``g * min(trust * ||p|| / ||g|| / lr, 1)`` per tensor; 1 where either norm or the rate is
  0 (solo-learn's LARS with ``clip_lr=True``)."""

  def update_fn(updates, state, params):
    rate = jnp.asarray(learning_rate, jnp.float32)

    def scale(update, param):
      param_norm = jnp.linalg.norm(param.astype(jnp.float32))
      update_norm = jnp.linalg.norm(update.astype(jnp.float32))
      usable = (param_norm > 0) & (update_norm > 0) & (rate > 0)
      ratio = trust_coefficient * param_norm / jnp.where(usable, update_norm * rate, 1.0)
      return update * jnp.where(usable, jnp.minimum(ratio, 1.0), 1.0).astype(update.dtype)

    return jax.tree.map(scale, updates, params), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def make_optimizer(config: ml_collections.ConfigDict,
                   schedule: optax.ScalarOrSchedule) -> optax.GradientTransformation:
  """The optimiser named by ``config.optim.name``, decaying only :func:`weight_decay_mask`.

  ``'lars'``: BYOL's LARS (pretraining default). ``'sgd'``: momentum SGD (Nesterov with
  ``optim.nesterov``, as in linear evaluation), L2 decay added to the gradient of the masked
  tensors. ``'adamw'``: AdamW, decoupled weight decay on the masked tensors.

  The schedule is evaluated at the optimiser's own update count (stored in the optimiser
  state), which equals the train state's step as long as every step applies an update. The
  pretraining step, which may skip non-finite updates, uses :func:`step_scheduled` instead.
  """
  optim = config.optim
  if optim.name == "lars":
    return lars(schedule, weight_decay=optim.weight_decay, momentum=optim.momentum,
                trust_coefficient=optim.trust_coefficient,
                clip=bool(optim.get("lars_clip", False)))
  if optim.name == "sgd":
    return optax.chain(
        optax.add_decayed_weights(optim.weight_decay, mask=weight_decay_mask),
        optax.sgd(schedule, momentum=optim.momentum or None,
                  nesterov=bool(optim.get("nesterov", False))),
    )
  if optim.name == "adamw":
    return optax.adamw(schedule, weight_decay=optim.weight_decay, mask=weight_decay_mask)
  raise ConfigError(f"config.optim.name: unknown optimiser {optim.name!r}. "
                    f"Fix: choose one of {list(OPTIMIZERS)}.")


def step_scheduled(make: Callable[[Any], optax.GradientTransformation]
                   ) -> optax.GradientTransformation:
  """The optimiser ``make(learning_rate)`` with its learning rate held in its state, to be set
  by the caller before every update with :func:`set_learning_rate`.

  Why: a schedule inside the optimiser follows the optimiser's update count, which stops when
  a non-finite step is skipped (``train.nan_policy='skip'`` keeps the whole old state), so the
  rate would lag the data by the skipped steps and never reach the schedule's end. Set from
  the train state's step instead, the rate applied is the schedule of the step, skipped or not,
  while the optimiser's own statistics (momentum, Adam's moments and bias correction) count
  only the updates that were applied.
  """
  # inject_hyperparams binds hyperparameters by name: ``make``'s own argument name is free.
  return optax.inject_hyperparams(lambda learning_rate: make(learning_rate))(learning_rate=0.0)


def set_learning_rate(opt_state: Any, learning_rate: Any) -> Any:
  """``opt_state`` of a :func:`step_scheduled` optimiser with the rate for the next update."""
  hyperparams = getattr(opt_state, "hyperparams", None)
  if not isinstance(hyperparams, dict) or "learning_rate" not in hyperparams:
    raise TypeError(
        f"set_learning_rate needs the state of an optimiser built by optim.step_scheduled; got "
        f"{type(opt_state).__name__}. Fix: build it as optim.step_scheduled(lambda lr: ...).")
  return opt_state._replace(hyperparams={
      **hyperparams, "learning_rate": jnp.asarray(learning_rate, hyperparams["learning_rate"].dtype)})
