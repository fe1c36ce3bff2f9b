"""A convolution whose weight gradient is fast on XLA's CPU backend; the same values everywhere.

XLA:CPU computes the weight gradient of a convolution over a large batch on a path that is one
to two orders of magnitude slower than the forward pass (openxla/xla#34273): on the quickstart's
first stage (3x3, 16 -> 16 channels, 32x32, batch 256) it took 610 ms against 22 ms for the
forward pass on a 2-core AMD EPYC, and it was most of the training step. Over a few examples at
a time it takes the fast path, so on the CPU :func:`conv_general_dilated` computes the weight
gradient as the sum of the gradients of batch chunks of at most ``CHUNK`` examples: the same
gradient up to the order of the float sums. Other platforms (GPU, TPU) use the native gradient,
chosen when the step is lowered (``lax.platform_dependent``). The forward pass and the input
gradient are the native ones everywhere.

The chunks interleave the batch (chunk k holds examples k, k + n, k + 2n, ...), so a batch sharded
over devices stays sharded the same way: every device computes its part of every chunk.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

CHUNK = 16   # examples per weight-gradient chunk on the CPU (16-32 measured fastest)
# Outputs of fewer positions per example (4x4 and smaller) keep the native gradient, which is
# as fast there; 8x8 outputs gain 2.6-2.9x on a 2-core Intel Xeon (experiments/bench_conv.py).
MIN_POSITIONS = 64


class _Params(NamedTuple):
  """The static arguments of ``lax.conv_general_dilated``, hashable (custom_vjp needs that)."""
  window_strides: Any
  padding: Any
  lhs_dilation: Any
  rhs_dilation: Any
  dimension_numbers: Any
  feature_group_count: int
  batch_group_count: int
  precision: Any
  preferred_element_type: Any

  def conv(self, lhs, rhs):
    return lax.conv_general_dilated(lhs, rhs, **self._asdict())


def _hashable(value):
  if isinstance(value, (list, tuple)):
    return tuple(_hashable(v) for v in value)
  return value


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None,
                         weight_grad_chunk: int = CHUNK):
  """``lax.conv_general_dilated`` (same arguments, same values) whose weight gradient on the CPU
  sums batch chunks of at most ``weight_grad_chunk`` examples; for
  ``flax.linen.Conv(conv_general_dilated=...)``."""
  dimension_numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  params = _Params(_hashable(window_strides), _hashable(padding), _hashable(lhs_dilation),
                   _hashable(rhs_dilation), dimension_numbers, feature_group_count,
                   batch_group_count, precision, preferred_element_type)
  return _conv(lhs, rhs, params, weight_grad_chunk)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(lhs, rhs, params: _Params, chunk: int):
  del chunk
  return params.conv(lhs, rhs)


def _conv_fwd(lhs, rhs, params: _Params, chunk: int):
  del chunk
  return params.conv(lhs, rhs), (lhs, rhs)


def _native_weight_grad(params: _Params, lhs, rhs, g):
  _, vjp = jax.vjp(lambda w: params.conv(lhs, w), rhs)
  return vjp(g)[0]


def _num_chunks(batch: int, chunk: int = CHUNK) -> int:
  """The fewest chunks of at most ``chunk`` examples that divide the batch evenly."""
  for n in range(-(-batch // chunk), batch + 1):
    if batch % n == 0:
      return n
  return batch


def _chunked_weight_grad(params: _Params, chunk: int, lhs, rhs, g):
  """The weight gradient summed over interleaved batch chunks (module docstring)."""
  in_batch = params.dimension_numbers.lhs_spec[0]
  out_batch = params.dimension_numbers.out_spec[0]
  batch = lhs.shape[in_batch]
  n = _num_chunks(batch, chunk)
  positions = math.prod(g.shape[d] for d in params.dimension_numbers.out_spec[2:])
  if n == 1 or positions < MIN_POSITIONS or params.batch_group_count != 1:
    return _native_weight_grad(params, lhs, rhs, g)

  def chunks(x, axis):
    # (B, ...) -> (B / n, n, ...) keeps the leading (sharded) part; chunk k is [:, k].
    shape = x.shape[:axis] + (batch // n, n) + x.shape[axis + 1:]
    x = x.reshape(shape)
    return [lax.index_in_dim(x, k, axis + 1, keepdims=False) for k in range(n)]

  total = None
  for x, gk in zip(chunks(lhs, in_batch), chunks(g, out_batch)):
    part = _native_weight_grad(params, x, rhs, gk).astype(jnp.float32)
    total = part if total is None else total + part
  return total.astype(rhs.dtype)


def _conv_bwd(params: _Params, chunk: int, residuals, g):
  lhs, rhs = residuals
  _, vjp_lhs = jax.vjp(lambda x: params.conv(x, rhs), lhs)
  (d_lhs,) = vjp_lhs(g)
  d_rhs = lax.platform_dependent(
      lhs, rhs, g,
      cpu=functools.partial(_chunked_weight_grad, params, chunk),
      default=functools.partial(_native_weight_grad, params))
  return d_lhs, d_rhs


_conv.defvjp(_conv_fwd, _conv_bwd)
