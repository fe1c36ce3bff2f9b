"""Heads on top of the encoder: the projector ("comparison net"), the optional predictor and
the linear classifier used by probes."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
  """Linear -> BatchNorm -> ReLU -> Linear, BYOL's projector and predictor.

  The output stays float32: it feeds the loss, whose logits and softmax must be float32.
  """
  hidden_dim: int = 4096
  output_dim: int = 256
  dtype: Any = "float32"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, train: bool = False):
    dtype = jnp.dtype(self.dtype)
    x = nn.Dense(self.hidden_dim, dtype=dtype, param_dtype=jnp.float32, name="linear_0")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=self.bn_epsilon, dtype=dtype, param_dtype=jnp.float32,
                     name="bn_0")(x)
    x = nn.relu(x)
    x = nn.Dense(self.output_dim, dtype=dtype, param_dtype=jnp.float32, name="linear_1")(x)
    return x.astype(jnp.float32)


class LinearHead(nn.Module):
  """One linear layer on pooled features (zero-initialised, as in linear evaluation)."""
  num_classes: int

  @nn.compact
  def __call__(self, features):
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                    param_dtype=jnp.float32, name="linear")(features.astype(jnp.float32))
