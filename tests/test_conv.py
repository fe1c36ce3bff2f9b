"""The CPU-fast convolution (relic/models/conv.py): the native convolution's values and
gradients, its chunked weight gradient really used on the CPU, the same under sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from relic import parallel
from relic.models import conv as conv_lib

NHWC = ("NHWC", "HWIO", "NHWC")


def loss_and_grads(conv, x, w, **kwargs):
  """Gradients of a loss that weights every output differently (a sum alone would hide
  transposed or shifted gradients)."""
  def loss(x, w):
    y = conv(x, w, **kwargs)
    weights = jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape)
    return jnp.sum(y * weights)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, w)


@pytest.mark.parametrize("batch,stride,dilation,groups", [
    (40, 1, 1, 1),    # 40 = 4 chunks of 10
    (17, 2, 1, 1),    # a prime batch: 17 chunks of 1
    (32, 1, 2, 1),    # kernel dilation (the segmentation head)
    (24, 1, 1, 2),    # grouped convolution
    (8, 1, 1, 1),     # at most CHUNK examples: the native gradient
])
def test_values_and_gradients_equal_the_native_convolution(batch, stride, dilation, groups):
  kx, kw = jax.random.split(jax.random.key(0))
  size = 16 * stride                  # outputs of 16 x 16 >= MIN_POSITIONS: the chunked rule
  x = jax.random.normal(kx, (batch, size, size, 8))
  w = jax.random.normal(kw, (3, 3, 8 // groups, 6)) * 0.2
  kwargs = dict(window_strides=(stride, stride), padding=((dilation, dilation),) * 2,
                rhs_dilation=(dilation, dilation), dimension_numbers=NHWC,
                feature_group_count=groups)
  value, (dx, dw) = loss_and_grads(conv_lib.conv_general_dilated, x, w, **kwargs)
  value_ref, (dx_ref, dw_ref) = loss_and_grads(lax.conv_general_dilated, x, w, **kwargs)
  np.testing.assert_allclose(value, value_ref, rtol=1e-6)
  np.testing.assert_array_equal(dx, dx_ref)                      # the native input gradient
  np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-5 * np.abs(dw_ref).max())


def test_weight_gradient_against_its_formula_in_numpy():
  """dW[i, j, c, o] = sum over b, h, w of x_padded[b, h + i, w + j, c] * g[b, h, w, o]."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(20, 16, 16, 3)).astype(np.float32)
  g = rng.normal(size=(20, 16, 16, 4)).astype(np.float32)
  w = np.zeros((3, 3, 3, 4), np.float32)
  _, vjp = jax.vjp(lambda w: conv_lib.conv_general_dilated(
      x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC), w)
  (dw,) = vjp(g)
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).astype(np.float64)
  expected = np.zeros(w.shape, np.float64)
  for i in range(3):
    for j in range(3):
      expected[i, j] = np.einsum("bhwc,bhwo->co", padded[:, i:i + 16, j:j + 16], g)
  # Sums of 5,120 float32 products of size ~1 (|dW| ~ 70): float32 rounding, no more.
  np.testing.assert_allclose(dw, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def count_convolutions(fn, *args) -> int:
  return jax.jit(fn).lower(*args).compile().as_text().count("convolution(")


def test_the_cpu_weight_gradient_runs_in_chunks():
  """On the CPU the weight gradient of a batch of 64 is 4 convolutions of 16 examples, next to
  the input gradient; XLA's native rule is 2 convolutions in all (the forward pass is dead code
  when only the gradients are returned)."""
  assert jax.default_backend() == "cpu"
  x = jnp.ones((64, 16, 16, 4))
  w = jnp.ones((3, 3, 4, 4))
  grads = lambda conv: (lambda x, w: jax.grad(lambda x, w: conv(  # noqa: E731
      x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC).sum(), argnums=(0, 1))(x, w))
  assert count_convolutions(grads(lax.conv_general_dilated), x, w) == 2
  assert count_convolutions(grads(conv_lib.conv_general_dilated), x, w) == 1 + 64 // 16
  # Outputs of fewer than MIN_POSITIONS positions (4 x 4) keep the native rule.
  assert count_convolutions(grads(conv_lib.conv_general_dilated), x[:, :4, :4], w) == 2


@pytest.mark.parametrize("batch,chunks", [(256, 16), (64, 4), (40, 4), (16, 1), (17, 17),
                                          (1, 1), (48, 3)])
def test_chunks_divide_the_batch_and_hold_at_most_chunk_examples(batch, chunks):
  assert conv_lib._num_chunks(batch) == chunks
  assert batch % chunks == 0 and batch // chunks <= conv_lib.CHUNK


def test_sharded_batch_gives_the_single_device_gradient():
  assert jax.device_count() == 8
  kx, kw = jax.random.split(jax.random.key(1))
  x = jax.random.normal(kx, (64, 16, 16, 4))
  w = jax.random.normal(kw, (3, 3, 4, 5)) * 0.3
  kwargs = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), dimension_numbers=NHWC)
  _, (dx, dw) = loss_and_grads(conv_lib.conv_general_dilated, x, w, **kwargs)
  mesh = parallel.make_mesh()
  sharded = jax.device_put(x, parallel.data_sharding(mesh))
  _, (dx8, dw8) = loss_and_grads(conv_lib.conv_general_dilated, sharded,
                                 jax.device_put(w, parallel.replicated(mesh)), **kwargs)
  assert len(dx8.sharding.device_set) == 8
  np.testing.assert_allclose(dx8, dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw8, dw, rtol=1e-5, atol=1e-5 * np.abs(dw).max())


def test_bfloat16_weight_gradient_sums_chunks_in_float32():
  kx, kw = jax.random.split(jax.random.key(2))
  x = jax.random.normal(kx, (64, 16, 16, 4)).astype(jnp.bfloat16)
  w = (jax.random.normal(kw, (3, 3, 4, 4)) * 0.3).astype(jnp.bfloat16)
  kwargs = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), dimension_numbers=NHWC)
  _, (_, dw) = loss_and_grads(conv_lib.conv_general_dilated, x, w, **kwargs)
  _, (_, dw32) = loss_and_grads(lax.conv_general_dilated, x.astype(jnp.float32),
                                w.astype(jnp.float32), **kwargs)
  assert dw.dtype == jnp.bfloat16
  np.testing.assert_allclose(dw.astype(jnp.float32), dw32, rtol=0.02,
                             atol=0.02 * np.abs(dw32).max())
