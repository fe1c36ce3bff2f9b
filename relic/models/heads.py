"""Heads on top of the encoder: the projector ("comparison net"), the optional predictor and
the linear classifier used by probes."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class MLP(nn.Module):
  """Linear -> BatchNorm -> ReLU -> Linear, BYOL's projector and predictor.

  As DeepMind's ``networks.MLP`` (byol/utils/networks.py, copied unchanged into ReLICv2's
  released utils/networks.py): the first Linear has a bias, the last one none
  (``hk.Linear(output_size, with_bias=False)``); ``last_bias=True`` adds one (the layout of
  relic checkpoints written before ``model.projector_last_bias`` existed).
  The output stays float32: it feeds the loss, whose logits and softmax must be float32.
  """
  hidden_dim: int = 4096
  output_dim: int = 256
  dtype: Any = "float32"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  last_bias: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    dtype = jnp.dtype(self.dtype)
    x = nn.Dense(self.hidden_dim, dtype=dtype, param_dtype=jnp.float32, name="linear_0")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=self.bn_epsilon, dtype=dtype, param_dtype=jnp.float32,
                     name="bn_0")(x)
    x = nn.relu(x)
    x = nn.Dense(self.output_dim, use_bias=self.last_bias, dtype=dtype,
                 param_dtype=jnp.float32, name="linear_1")(x)
    return x.astype(jnp.float32)


HEAD_INITS = ("haiku", "zeros")


def linear_head_params(init: str, rng: jax.Array, num_features: int, num_classes: int) -> dict:
  """Initial :class:`LinearHead` parameters ``{'linear': {'kernel', 'bias'}}``.

  'haiku': ``hk.Linear``'s default, the head of DeepMind's linear evaluation and fine-tuning
    (relicv2/eval_experiment.py ``_classif_fn``: ``hk.Linear(output_size=num_classes)``): kernel
    ``TruncatedNormal(stddev=1 / sqrt(fan_in))``, i.e. a standard normal truncated to [-2, 2]
    times ``1 / sqrt(fan_in)`` (Haiku does not rescale it: the standard deviation is
    0.8796 / sqrt(fan_in)), bias 0. Same distribution as Haiku's, not Haiku's random bits.
  'zeros': kernel and bias 0 (``LinearHead``'s own init; relic's choice before the DeepMind
    default).
  """
  if init == "zeros":
    kernel = jnp.zeros((num_features, num_classes), jnp.float32)
  elif init == "haiku":
    kernel = jax.random.truncated_normal(rng, -2.0, 2.0, (num_features, num_classes),
                                         jnp.float32) / np.sqrt(num_features)
  else:
    raise ValueError(f"Unknown head init {init!r}; choose one of {HEAD_INITS}.")
  return {"linear": {"kernel": kernel, "bias": jnp.zeros((num_classes,), jnp.float32)}}


class LinearHead(nn.Module):
  """One linear layer on pooled features (zero-initialised by ``init``; the evaluation jobs
  start it from :func:`linear_head_params`)."""
  num_classes: int

  @nn.compact
  def __call__(self, features):
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                    param_dtype=jnp.float32, name="linear")(features.astype(jnp.float32))
