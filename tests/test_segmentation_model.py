"""Dilated encoders (output_stride 16/8) and the FCN segmentation network of BYOL's protocol.

The dilated feature maps are checked against an independent implementation: the encoder
exported to torchvision, with torchvision's own ``replace_stride_with_dilation`` geometry.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from relic.config import base_config
from relic.models import (FCNHead, ResNet, SegmentationNet, encoder_from_config,
                          segmentation_net)
from tests.numpy_weights import numpy_variables, with_batch_statistics

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
torch.set_num_threads(2)

from torchvision.models import resnet as tv  # noqa: E402

from relic.interop import run_nhwc, to_torch  # noqa: E402  (needs torch)

TINY18 = dict(depth=18, stage_sizes=(2, 2, 2, 2), base_width=8)
TINY50 = dict(depth=50, stage_sizes=(1, 1, 1, 1), base_width=8)
# output_stride -> torchvision's replace_stride_with_dilation, and the dilation of each dilated
# stage (BYOL's: every 3x3 conv of the stage, its first block's included).
REPLACE = {16: [False, False, True], 8: [False, True, True]}
DILATIONS = {16: {"layer4": 2}, 8: {"layer3": 2, "layer4": 4}}


def random_variables(model, rng, size=64):
  """Random encoder variables whose BN statistics are those of a real batch, computed by the
  *standard* (output stride 32) network, as for a pretrained checkpoint loaded into the dilated
  one."""
  standard = model.clone(output_stride=32, pooled=True)
  images = rng.uniform(size=(4, size, size, 3)).astype(np.float32)
  return with_batch_statistics(standard, numpy_variables(standard, images, rng), images)


def forward(model, variables, images, train=False):
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=train))(variables, images))


def dilate_stage(layer, dilation):
  """A torchvision stage with stride 1 and every 3x3 conv dilated (BYOL: all conv5 3x3s)."""
  for module in layer.modules():
    if isinstance(module, torch.nn.Conv2d):
      module.stride = (1, 1)
      if module.kernel_size == (3, 3):
        module.dilation = module.padding = (dilation, dilation)


def dilate_like_torchvision(net, depth, stage_sizes, output_stride):
  """The exported ``net`` given the conv geometry of torchvision's ResNet built with
  ``replace_stride_with_dilation`` (bottlenecks; torchvision refuses dilated basic blocks, so
  those get :func:`dilate_stage`, checked equal on bottlenecks below), then each dilated stage's
  first block dilated like the rest (torchvision keeps the previous stage's dilation there)."""
  dilations = DILATIONS[output_stride]
  if depth == 18:
    for name, dilation in dilations.items():
      dilate_stage(getattr(net, name), dilation)
    return net
  template = tv.ResNet(tv.Bottleneck, list(stage_sizes),
                       replace_stride_with_dilation=REPLACE[output_stride])
  template_modules = dict(template.named_modules())
  for name, module in net.named_modules():
    if isinstance(module, torch.nn.Conv2d):
      for attr in ("stride", "dilation", "padding"):
        setattr(module, attr, getattr(template_modules[name], attr))
  for name, dilation in dilations.items():
    first = getattr(net, name)[0].conv2
    assert first.dilation == (dilation // 2,) * 2  # torchvision's first-block convention
    first.dilation = first.padding = (dilation, dilation)
  return net


def torch_feature_map(net, images):
  trunk = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                              net.layer3, net.layer4).eval()
  return run_nhwc(trunk, images).transpose(0, 2, 3, 1)


def geometry(net):
  return {name: (m.stride, m.dilation, m.padding) for name, m in net.named_modules()
          if isinstance(m, torch.nn.Conv2d)}


@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilate_stage_is_torchvisions_dilation_with_dilated_first_blocks(output_stride):
  reference = dilate_like_torchvision(torchvision.models.resnet50(), 50, (3, 4, 6, 3),
                                      output_stride)
  ours = torchvision.models.resnet50()
  for name, dilation in DILATIONS[output_stride].items():
    dilate_stage(getattr(ours, name), dilation)
  assert geometry(ours) == geometry(reference)
  assert geometry(ours) != geometry(torchvision.models.resnet50())


@pytest.mark.parametrize("arch,output_stride", [(TINY18, 16), (TINY50, 16), (TINY50, 8),
                                                (TINY18, 8)],
                         ids=["r18-os16", "r50-os16", "r50-os8", "r18-os8"])
def test_dilated_feature_map_matches_torchvision(arch, output_stride):
  model = ResNet(**arch, output_stride=output_stride, pooled=False)
  variables = random_variables(model, np.random.default_rng(output_stride))
  images = np.random.default_rng(1).uniform(size=(2, 64, 64, 3)).astype(np.float32)
  ours = forward(model, variables, images)
  assert ours.dtype == np.float32 and ours.shape[:3] == (2, 64 // output_stride, 64 // output_stride)
  assert np.abs(ours).max() > 0.5
  net = dilate_like_torchvision(to_torch(variables), arch["depth"], arch["stage_sizes"],
                                output_stride)
  np.testing.assert_allclose(ours, torch_feature_map(net, images), atol=1e-4, rtol=0)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_same_padding_equals_torchvision_padding_where_they_should(output_stride):
  """On odd sizes every strided layer pads symmetrically in 'SAME' too, so both modes must
  agree; this covers 'SAME' padding with kernel dilation in the dilated stages."""
  model = ResNet(**TINY18, small_images=True, output_stride=output_stride, pooled=False)
  variables = random_variables(model, np.random.default_rng(3), size=33)
  images = np.random.default_rng(4).uniform(size=(2, 33, 33, 3)).astype(np.float32)
  ours = forward(model, variables, images)
  assert ours.shape[1:3] == {16: (9, 9), 8: (17, 17)}[output_stride]
  np.testing.assert_allclose(forward(model.clone(padding="same"), variables, images), ours,
                             atol=1e-5, rtol=0)


def test_output_stride_32_is_the_default_network_and_parameters_never_change():
  model = ResNet(**TINY50)
  variables = random_variables(model, np.random.default_rng(5))
  images = np.random.default_rng(6).uniform(size=(2, 64, 64, 3)).astype(np.float32)
  np.testing.assert_array_equal(forward(model.clone(output_stride=32, pooled=True), variables,
                                        images), forward(model, variables, images))
  feature_map = forward(model.clone(pooled=False), variables, images)
  assert feature_map.shape == (2, 2, 2, model.num_features)
  np.testing.assert_allclose(feature_map.mean(axis=(1, 2)), forward(model, variables, images),
                             rtol=1e-6, atol=1e-6)

  def tree(m, size=64):
    shapes = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
    return jax.tree_util.tree_map_with_path(lambda p, x: (jax.tree_util.keystr(p), x.shape), shapes)

  for arch in (TINY18, TINY50):
    reference = tree(ResNet(**arch))
    for output_stride in (16, 8):
      for remat in (False, True):
        assert tree(ResNet(**arch, output_stride=output_stride, pooled=False, remat=remat)) == \
            reference


def test_remat_dilated_encoder_has_the_same_values_and_gradients():
  model = ResNet(**TINY18 | dict(stage_sizes=(1, 1, 1, 1)), output_stride=8, pooled=False)
  variables = random_variables(model, np.random.default_rng(7))
  images = np.random.default_rng(8).uniform(size=(2, 32, 32, 3)).astype(np.float32)

  def loss(m):
    return jax.jit(jax.value_and_grad(lambda p: jnp.sum(m.apply(
        {"params": p, "batch_stats": variables["batch_stats"]}, images) ** 2)))(variables["params"])

  value, grads = loss(model)
  remat_value, remat_grads = loss(model.clone(remat=True))
  np.testing.assert_allclose(remat_value, value, rtol=1e-5)
  # Recomputation may reorder float sums: compare each gradient relative to its scale.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max()),
               remat_grads, grads)


@pytest.mark.parametrize("small_images,sizes", [(False, {32: 2, 16: 4, 8: 8}),
                                                (True, {32: 8, 16: 16, 8: 32})])
def test_feature_map_size_follows_output_stride(small_images, sizes):
  for output_stride, size in sizes.items():
    model = ResNet(**TINY18, small_images=small_images, output_stride=output_stride, pooled=False)
    out = jax.eval_shape(lambda m=model: m.init_with_output(jax.random.key(0),
                                                            jnp.zeros((1, 64, 64, 3)))[0])
    assert out.shape == (1, size, size, model.num_features) and out.dtype == jnp.float32


@pytest.mark.parametrize("output_stride", [4, 64, 0])
def test_unsupported_output_stride_raises(output_stride):
  model = ResNet(**TINY18, output_stride=output_stride)
  with pytest.raises(ValueError, match=r"output_stride.*\[32, 16, 8\]"):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def seg_config(**overrides):
  config = base_config()
  config.model.update(depth=18, stage_sizes=(1, 1, 1, 1), base_width=8)
  config.segmentation.update(head_channels=16, **overrides)
  return config


@pytest.fixture(scope="module")
def seg():
  """A tiny segmentation net from the config, on images whose size is no multiple of 16."""
  config = seg_config()
  net = segmentation_net(encoder_from_config(config.model), config.segmentation, num_classes=5)
  images = jax.random.uniform(jax.random.key(0), (2, 65, 49, 3))
  return net, numpy_variables(net, images, np.random.default_rng(1)), images


def test_segmentation_net_from_config_shapes_and_variable_tree(seg):
  net, variables, images = seg
  assert net.encoder.output_stride == 16 and not net.encoder.pooled
  assert (net.head.channels, net.head.dilation, net.head.num_classes) == (16, 6, 5)
  assert set(variables) == {"params", "batch_stats"}
  for collection in variables.values():
    assert set(collection) == {"encoder", "head"}
  assert set(variables["params"]["head"]) == {"conv_0", "bn_0", "conv_1", "bn_1", "classifier"}
  assert variables["params"]["head"]["conv_0"]["kernel"].shape == (3, 3, 64, 16)
  assert variables["params"]["head"]["classifier"]["bias"].shape == (5,)
  # A pretrained encoder's variables fit the dilated encoder unchanged.
  encoder_shapes = jax.eval_shape(ResNet(**TINY18 | dict(stage_sizes=(1, 1, 1, 1))).init,
                                  jax.random.key(0), images)
  assert jax.tree.map(jnp.shape, encoder_shapes) == jax.tree.map(
      jnp.shape, {k: v["encoder"] for k, v in variables.items()})
  logits = forward(net, variables, images)
  assert logits.shape == (2, 65, 49, 5) and logits.dtype == np.float32
  assert np.all(np.isfinite(logits)) and logits.std() > 0


def test_segmentation_net_bfloat16_still_returns_float32_logits():
  config = seg_config(output_stride=8)
  config.model.dtype = "bfloat16"
  net = segmentation_net(encoder_from_config(config.model), config.segmentation, num_classes=3)
  assert net.head.dtype == "bfloat16" and net.encoder.output_stride == 8
  images = jnp.zeros((1, 33, 40, 3))
  out = jax.eval_shape(lambda: net.init_with_output(jax.random.key(0), images)[0])
  assert out.shape == (1, 33, 40, 3) and out.dtype == jnp.float32


def test_train_mode_updates_head_batch_statistics_and_eval_mode_does_not(seg):
  net, variables, images = seg
  apply = jax.jit(lambda v, train: net.apply(v, images, train=train, mutable=["batch_stats"]),
                  static_argnums=1)
  _, updated = apply(variables, True)
  for layer in ("bn_0", "bn_1"):
    old, new = variables["batch_stats"]["head"][layer], updated["batch_stats"]["head"][layer]
    assert not np.allclose(old["mean"], new["mean"]) and not np.allclose(old["var"], new["var"])
  encoder_bn = lambda v: v["batch_stats"]["encoder"]["block_group_3_block_0"]["bn_0"]["mean"]
  assert not np.allclose(encoder_bn(updated), encoder_bn(variables))
  _, unchanged = apply(variables, False)
  jax.tree.map(np.testing.assert_array_equal, unchanged["batch_stats"], variables["batch_stats"])


class ConstantPlusRampHead(FCNHead):
  """Logits that are the image's mean feature (per image and class) plus the column index:
  constant down each column, linear across columns."""

  def __call__(self, features, train=False):
    means = jnp.mean(features, axis=(1, 2), keepdims=True)[..., :self.num_classes]
    ramp = jnp.arange(features.shape[2], dtype=jnp.float32)[None, None, :, None]
    return jnp.broadcast_to(means + ramp, features.shape[:3] + (self.num_classes,))


def test_upsampling_is_half_pixel_bilinear_to_the_input_size_without_batch_mixing():
  encoder = ResNet(**TINY18, output_stride=16, pooled=False)
  net = SegmentationNet(encoder=encoder, head=ConstantPlusRampHead(num_classes=3))
  images = jax.random.uniform(jax.random.key(4), (3, 65, 49, 3))
  variables = numpy_variables(net, images, np.random.default_rng(5))
  out = forward(net, variables, images)
  pooled = forward(encoder.clone(pooled=True), {k: v["encoder"] for k, v in variables.items()},
                   images)[:, :3]
  assert out.shape == (3, 65, 49, 3)
  assert np.ptp(pooled, axis=0).max() > 1e-3  # images differ, so batch mixing would show
  # 49 columns come from 4: pixel x samples column (x + 0.5) * 4 / 49 - 0.5, clamped at the
  # borders; a linear ramp stays linear under bilinear interpolation (not under 'nearest').
  ramp = np.clip((np.arange(49) + 0.5) * 4 / 49 - 0.5, 0, 3)
  expected = pooled[:, None, None, :] + ramp[None, None, :, None]
  np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), rtol=1e-5, atol=1e-5)
