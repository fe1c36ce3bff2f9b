"""Optimisers: LARS as in BYOL/ReLICv2, plus SGD and AdamW, with one weight-decay mask.

LARS (You et al. 2017) as DeepMind's BYOL code applies it (method.md section 4), per parameter
tensor ``p`` with gradient ``g``, momentum buffer ``mu`` and learning rate ``lr_k`` at step k:

    g  <- g + weight_decay * p                              (decayed tensors only)
    g  <- g * trust * ||p|| / ||g||   (1 if either norm is 0)  (adapted tensors only)
    mu <- momentum * mu + g
    p  <- p - lr_k * mu

Weight decay is added *before* the trust ratio, so the ratio sees the decayed gradient. The
learning rate multiplies the momentum buffer after accumulation (BYOL scales ``mu`` by the
current rate; ``optax.lars`` instead accumulates ``lr * g``, which differs whenever the rate
changes, i.e. at every step of a schedule), hence the chain below rather than ``optax.lars``.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from relic.config import ConfigError

OPTIMIZERS = ("lars", "sgd", "adamw")


def weight_decay_mask(params: Any) -> Any:
  """True for convolution and dense kernels, False for everything else.

  Why a rule on the leaf name rather than on module names: in Flax every ``nn.Conv`` and
  ``nn.Dense`` weight matrix is called ``kernel``, while biases are ``bias`` and BatchNorm
  parameters are ``scale`` and ``bias``, whatever the module is called (``bn_*``,
  ``shortcut_bn``, a projector's or predictor's BN). Deciding on ``kernel`` with ``ndim >= 2``
  therefore excludes exactly the biases and *all* BatchNorm parameters of the encoder, the
  projector and the predictor, and keeps working when a module is renamed or added. Decaying or
  trust-ratio-scaling BN scales and biases is a known accuracy trap (method.md section 7):
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
         trust_coefficient: float = 1e-3, mask: Any = weight_decay_mask
         ) -> optax.GradientTransformation:
  """BYOL's LARS from optax primitives (see the module docstring for the update).

  Args:
    learning_rate: scalar or schedule of the step (the optimiser's own update count).
    weight_decay: decay coefficient added to the gradient before the trust ratio.
    momentum: momentum of the (un-scaled) update buffer.
    trust_coefficient: LARS's eta, 1e-3 in BYOL/ReLICv2.
    mask: pytree of bools (or function of params returning one) choosing the tensors that get
      weight decay and the trust ratio; the others get plain momentum SGD.
  """
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=mask),
      optax.masked(optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient), mask),
      optax.trace(decay=momentum, nesterov=False),
      optax.scale_by_learning_rate(learning_rate),
  )


def make_optimizer(config: ml_collections.ConfigDict,
                   schedule: optax.ScalarOrSchedule) -> optax.GradientTransformation:
  """The optimiser named by ``config.optim.name``, decaying only :func:`weight_decay_mask`.

  ``'lars'``: BYOL's LARS (pretraining default). ``'sgd'``: momentum SGD (Nesterov with
  ``optim.nesterov``, as in linear evaluation), L2 decay added to the gradient of the masked
  tensors. ``'adamw'``: AdamW, decoupled weight decay on the masked tensors.

  The schedule is evaluated at the optimiser's own update count (stored in the optimiser
  state), which equals the train state's step as long as every step applies an update.
  """
  optim = config.optim
  if optim.name == "lars":
    return lars(schedule, weight_decay=optim.weight_decay, momentum=optim.momentum,
                trust_coefficient=optim.trust_coefficient)
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
