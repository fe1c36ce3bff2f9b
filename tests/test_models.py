"""ResNet family: exact parameter counts, global BatchNorm under sharding, train vs inference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from relic import parallel
from relic.models import ResNet, feature_dim

# torchvision / standard width-multiplied ResNets, classifier excluded.
TORCHVISION_COUNTS = {
    (18, 1): 11_176_512,
    (50, 1): 23_508_032,
    (101, 1): 42_500_160,
    (152, 1): 58_143_808,
    (200, 1): 62_624_832,
    (50, 2): 93_907_072,
    (50, 4): 375_378_176,
    (200, 2): 250_128_512,
}


def tiny_resnet(**kwargs):
  defaults = dict(depth=50, stage_sizes=(1, 1, 1, 1), base_width=4, small_images=True)
  defaults.update(kwargs)
  return ResNet(**defaults)


@pytest.mark.parametrize("depth,width", sorted(TORCHVISION_COUNTS))
def test_parameter_counts_match_torchvision(depth, width):
  model = ResNet(depth=depth, width_multiplier=width)
  # Abstract shapes only: no 4x model is ever allocated.
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
  assert count == TORCHVISION_COUNTS[(depth, width)]


@pytest.mark.parametrize("depth,width,dim", [(18, 1, 512), (34, 2, 1024), (50, 1, 2048),
                                             (50, 4, 8192)])
def test_feature_dimension(depth, width, dim):
  model = ResNet(depth=depth, width_multiplier=width)
  out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0),
                                                      jnp.zeros((2, 64, 64, 3)))[0])
  assert out.shape == (2, dim) and feature_dim(depth, width) == dim


def test_real_forward_shapes_and_outputs():
  model = tiny_resnet()
  images = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
  variables = model.init(jax.random.key(0), images, train=False)
  assert set(variables) == {"params", "batch_stats"}
  features = model.apply(variables, images, train=False)
  assert features.shape == (4, model.num_features) and features.dtype == jnp.float32
  assert np.all(np.isfinite(features))


def test_batchnorm_train_and_inference_modes():
  model = tiny_resnet()
  images = jax.random.uniform(jax.random.key(1), (8, 32, 32, 3))
  variables = model.init(jax.random.key(0), images, train=False)
  # Inference: running statistics, no mutation, per-example (batch composition irrelevant).
  full = model.apply(variables, images, train=False)
  half = model.apply(variables, images[:4], train=False)
  np.testing.assert_allclose(full[:4], half, atol=1e-5)
  # Training: batch statistics, so an example's features depend on the rest of the batch,
  # and the running statistics move towards the batch statistics with decay 0.9.
  train_full, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
  train_half, _ = model.apply(variables, images[:4], train=True, mutable=["batch_stats"])
  assert not np.allclose(train_full[:4], train_half, atol=1e-4)
  old_mean = variables["batch_stats"]["bn_init"]["mean"]
  new_mean = updates["batch_stats"]["bn_init"]["mean"]
  stem = model.apply(variables, images, train=True, mutable=["batch_stats", "intermediates"],
                     capture_intermediates=lambda mdl, _: mdl.name == "conv_init")[1]
  conv_out = stem["intermediates"]["conv_init"]["__call__"][0]
  batch_mean = conv_out.mean(axis=(0, 1, 2))
  np.testing.assert_allclose(new_mean, 0.9 * old_mean + 0.1 * batch_mean, rtol=1e-5, atol=1e-6)


def test_global_batchnorm_same_on_1_and_8_devices():
  assert jax.device_count() == 8
  model = tiny_resnet()
  images = jax.random.uniform(jax.random.key(1), (16, 32, 32, 3))
  variables = model.init(jax.random.key(0), images, train=False)

  def train_forward(variables, images):
    return model.apply(variables, images, train=True, mutable=["batch_stats"])

  single_out, single_stats = jax.jit(train_forward)(variables, images)
  mesh = parallel.make_mesh()
  sharded_images = jax.device_put(images, parallel.data_sharding(mesh))
  sharded_vars = parallel.replicate(variables, mesh)
  multi_out, multi_stats = jax.jit(train_forward)(sharded_vars, sharded_images)
  assert len(sharded_images.sharding.device_set) == 8
  np.testing.assert_allclose(single_out, multi_out, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), single_stats,
               multi_stats)
  # A per-device BN would see 2 images per device: its statistics differ from the global ones.
  per_device = jnp.stack([train_forward(variables, images[i:i + 2])[1]["batch_stats"]["bn_init"]
                          ["mean"] for i in range(0, 16, 2)]).mean(0)
  assert np.allclose(per_device, single_stats["batch_stats"]["bn_init"]["mean"], atol=1e-5)
  per_device_var = [train_forward(variables, images[i:i + 2])[1]["batch_stats"]["bn_init"]["var"]
                    for i in range(0, 16, 2)]
  assert not np.allclose(jnp.stack(per_device_var).mean(0),
                         single_stats["batch_stats"]["bn_init"]["var"], atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_close_features():
  images = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
  model32 = tiny_resnet()
  model16 = tiny_resnet(dtype="bfloat16")
  variables = model32.init(jax.random.key(0), images)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(model16.init(jax.random.key(0),
                                                                          images)))
  f32 = model32.apply(variables, images)
  f16 = model16.apply(variables, images)
  assert f16.dtype == jnp.float32
  np.testing.assert_allclose(f16, f32, rtol=0.05, atol=0.05)


def test_remat_does_not_change_result():
  images = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
  model = tiny_resnet()
  variables = model.init(jax.random.key(0), images)
  loss = lambda m: lambda p: jnp.sum(m.apply({**variables, "params": p}, images, train=True,
                                             mutable=["batch_stats"])[0] ** 2)
  g_plain = jax.grad(loss(model))(variables["params"])
  g_remat = jax.grad(loss(tiny_resnet(remat=True)))(variables["params"])
  # Rematerialisation recomputes the forward pass inside the backward one, so XLA may fuse
  # and sum in another order: float32 rounding, relative to each gradient's scale.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-5, atol=1e-5 * float(np.abs(a).max())), g_plain, g_remat)


def test_padding_modes_differ_only_on_strided_layers():
  images = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3))
  torch_style = ResNet(depth=18, base_width=4)
  same_style = ResNet(depth=18, base_width=4, padding="same")
  variables = torch_style.init(jax.random.key(0), images)
  a = torch_style.apply(variables, images)
  b = same_style.apply(variables, images)
  assert a.shape == b.shape and not np.allclose(a, b, atol=1e-4)
  with pytest.raises(ValueError, match="padding"):
    ResNet(depth=18, padding="valid").init(jax.random.key(0), images)
  with pytest.raises(ValueError, match="depth 42"):
    ResNet(depth=42).init(jax.random.key(0), images)
