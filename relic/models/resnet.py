"""ResNet v1.5 encoders (He et al. 2016; stride on the 3x3 conv), as pure Flax linen modules.

Images come in NHWC, float in [0, 1]; ImageNet mean/std normalisation happens inside the model
so every caller (pipelines, evaluators, the PyTorch export) agrees on one input convention.

Padding. Two modes, because the two ecosystems a relic encoder talks to disagree on strided
layers:
  * ``'torchvision'`` (default): symmetric padding of ``k // 2`` on every conv and 1 on the
    stem max-pool, exactly what torchvision's ResNet does, so an exported relic encoder is
    numerically identical in plain ``torchvision.models.resnet50()``.
  * ``'same'``: TensorFlow/Haiku ``'SAME'`` padding (asymmetric, extra pixel at the bottom/right
    on even inputs), exactly what DeepMind's BYOL/ReLICv2 checkpoints were trained with, so
    imported checkpoints reproduce their features.
Stride-1 convolutions with odd kernels and 1x1 strided shortcuts are padded identically in both
modes; the modes differ on the 7x7 stem conv, the stem max-pool and the strided 3x3 convs.

Dense prediction. ``output_stride`` 16 or 8 trades the strides of the last one or two stages for
dilated 3x3 convolutions (Chen et al., DeepLab), as in BYOL's segmentation transfer: the same
parameters, a feature map 2x or 4x larger. Dilated stages have stride 1 everywhere, so both
padding modes pad them symmetrically by the dilation and an imported checkpoint is unaffected.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from relic.models.conv import conv_general_dilated

# Blocks per stage for each supported depth; depths 18/34 use basic blocks, the rest bottlenecks.
STAGE_SIZES: dict[int, tuple[int, ...]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
BOTTLENECK_DEPTHS = (50, 101, 152, 200)
PADDING_MODES = ("torchvision", "same")
# output_stride -> number of final stages whose stride is replaced by dilation.
OUTPUT_STRIDES = {32: 0, 16: 1, 8: 2}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's init for convolutions (kaiming normal, fan_out).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def feature_dim(depth: int, width_multiplier: int = 1, base_width: int = 64) -> int:
  """Width of the pooled features of a ResNet (four stages, channels doubling per stage)."""
  expansion = 4 if depth in BOTTLENECK_DEPTHS else 1
  return 8 * base_width * width_multiplier * expansion


def _conv_padding(kernel: int, mode: str, dilation: int = 1):
  """'SAME' accounts for kernel_dilation itself; torchvision pads a dilated kxk conv by
  dilation * (k // 2), which keeps stride-1 convs size-preserving."""
  if mode == "same":
    return "SAME"
  pad = dilation * (kernel // 2)
  return ((pad, pad), (pad, pad))


def stage_strides_and_dilations(num_stages: int, output_stride: int) -> list[tuple[int, int]]:
  """(stride, dilation) of every stage: the standard strides, with the last stages' replaced by
  dilation (each dilated stage doubles the dilation of the one before, so the receptive field
  grows as it would with the stride)."""
  if output_stride not in OUTPUT_STRIDES:
    raise ValueError(f"ResNet output_stride {output_stride} is not supported; choose one of "
                     f"{sorted(OUTPUT_STRIDES, reverse=True)}.")
  num_dilated = OUTPUT_STRIDES[output_stride]
  plan, dilation = [], 1
  for stage in range(num_stages):
    stride = 2 if stage > 0 else 1
    if stage >= num_stages - num_dilated:
      dilation *= stride
      stride = 1
    plan.append((stride, dilation))
  return plan


def _last_scale_init(zero: bool) -> Callable[..., jax.Array]:
  """Init of a block's last BN scale. Zero makes every block start as the identity (Goyal et
  al.), as DeepMind's Haiku ResNet does; it suits long schedules but slows the first few
  hundred steps, since no gradient reaches a branch's convolutions until its scale has grown."""
  return nn.initializers.zeros if zero else nn.initializers.ones


class BottleneckBlock(nn.Module):
  """1x1 -> 3x3 (strided, v1.5) -> 1x1 (4x channels), with a projection shortcut when needed."""
  filters: int
  strides: int
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]
  padding: str
  zero_init_residual: bool = True
  dilation: int = 1  # of every 3x3 conv in the block (dilated stages, output_stride < 32)

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (1, 1), name="conv_0")(x)
    y = nn.relu(self.norm(name="bn_0")(y))
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides),
                  kernel_dilation=(self.dilation, self.dilation),
                  padding=_conv_padding(3, self.padding, self.dilation), name="conv_1")(y)
    y = nn.relu(self.norm(name="bn_1")(y))
    y = self.conv(self.filters * 4, (1, 1), name="conv_2")(y)
    y = self.norm(name="bn_2", scale_init=_last_scale_init(self.zero_init_residual))(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters * 4, (1, 1), (self.strides, self.strides),
                           name="shortcut_conv")(residual)
      residual = self.norm(name="shortcut_bn")(residual)
    return nn.relu(residual + y)


class BasicBlock(nn.Module):
  """3x3 (strided) -> 3x3, for ResNet-18/34."""
  filters: int
  strides: int
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]
  padding: str
  zero_init_residual: bool = True
  dilation: int = 1  # of every 3x3 conv in the block (dilated stages, output_stride < 32)

  @nn.compact
  def __call__(self, x):
    residual = x
    dilation = (self.dilation, self.dilation)
    padding = _conv_padding(3, self.padding, self.dilation)
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides), kernel_dilation=dilation,
                  padding=padding, name="conv_0")(x)
    y = nn.relu(self.norm(name="bn_0")(y))
    y = self.conv(self.filters, (3, 3), kernel_dilation=dilation, padding=padding,
                  name="conv_1")(y)
    y = self.norm(name="bn_1", scale_init=_last_scale_init(self.zero_init_residual))(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), (self.strides, self.strides),
                           name="shortcut_conv")(residual)
      residual = self.norm(name="shortcut_bn")(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  """ResNet v1.5 encoder returning globally average-pooled float32 features (or the feature map).

  Attributes:
    depth: 18, 34, 50, 101, 152 or 200.
    width_multiplier: multiplies the channels of every layer, the stem included (1x/2x/4x).
    stage_sizes: blocks per stage; overrides the depth's standard layout (tiny test models).
    base_width: channels of the stem (64 in every standard ResNet; smaller for tiny models).
    dtype: compute dtype ('float32' or 'bfloat16'); parameters and BN statistics stay float32.
    padding: 'torchvision' (default) or 'same' (Haiku/TF checkpoints), see the module docstring.
    remat: rematerialise every residual block in the backward pass (less memory, ~30% more FLOPs).
    bn_momentum, bn_epsilon: BatchNorm decay and epsilon (0.9 and 1e-5 as in the paper).
    small_images: CIFAR-style stem (3x3 stride-1 conv, no max-pool) for inputs of ~32 px.
    zero_init_residual: zero-init the last BN scale of every block (default, as the paper's
      ResNets); False (ones, torchvision's default) learns much faster in short runs.
    output_stride: 32 (standard), 16 (last stage dilated 2, stride 1) or 8 (last two stages
      dilated 2 and 4), named after the standard network's total stride; with
      ``small_images`` (stride-1 stem, no max-pool) the total stride is output_stride / 4.
      Parameters are identical for all values, so any encoder checkpoint loads.
    pooled: True returns (B, C) global-average features; False the (B, h, w, C) feature map,
      for dense prediction. Both float32.

  BatchNorm statistics are means over the batch axis of the *global* array: under ``jax.jit``
  with the batch sharded over a mesh, XLA inserts the cross-device reductions, so statistics are
  synchronised over all devices without any per-device code.
  """
  depth: int = 50
  width_multiplier: int = 1
  stage_sizes: Sequence[int] | None = None
  base_width: int = 64
  dtype: Any = "float32"
  padding: str = "torchvision"
  remat: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  small_images: bool = False
  zero_init_residual: bool = True
  output_stride: int = 32
  pooled: bool = True

  @property
  def num_features(self) -> int:
    return feature_dim(self.depth, self.width_multiplier, self.base_width)

  @nn.compact
  def __call__(self, images, train: bool = False):
    if self.depth not in STAGE_SIZES:
      raise ValueError(f"ResNet depth {self.depth} is not supported; choose one of "
                       f"{sorted(STAGE_SIZES)}.")
    if self.padding not in PADDING_MODES:
      raise ValueError(f"ResNet padding {self.padding!r} is not supported; choose one of "
                       f"{PADDING_MODES}.")
    stage_sizes = tuple(self.stage_sizes or STAGE_SIZES[self.depth])
    stage_plan = stage_strides_and_dilations(len(stage_sizes), self.output_stride)
    dtype = jnp.dtype(self.dtype)
    # The CPU-fast weight gradient (relic/models/conv.py): identical values, native elsewhere.
    conv = functools.partial(nn.Conv, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                             kernel_init=conv_kernel_init, padding="VALID",
                             conv_general_dilated=conv_general_dilated)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             dtype=dtype, param_dtype=jnp.float32)
    block_cls = BottleneckBlock if self.depth in BOTTLENECK_DEPTHS else BasicBlock
    if self.remat:
      block_cls = nn.remat(block_cls)
    width = self.base_width * self.width_multiplier

    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    x = ((jnp.asarray(images, jnp.float32) - mean) / std).astype(dtype)

    if self.small_images:
      x = conv(width, (3, 3), padding=_conv_padding(3, self.padding), name="conv_init")(x)
      x = nn.relu(norm(name="bn_init")(x))
    else:
      x = conv(width, (7, 7), (2, 2), padding=_conv_padding(7, self.padding), name="conv_init")(x)
      x = nn.relu(norm(name="bn_init")(x))
      pool_padding = "SAME" if self.padding == "same" else ((1, 1), (1, 1))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=pool_padding)

    for stage, (num_blocks, (stage_stride, dilation)) in enumerate(zip(stage_sizes, stage_plan)):
      for index in range(num_blocks):
        strides = stage_stride if index == 0 else 1
        x = block_cls(filters=width * 2**stage, strides=strides, conv=conv, norm=norm,
                      padding=self.padding, zero_init_residual=self.zero_init_residual,
                      dilation=dilation, name=f"block_group_{stage}_block_{index}")(x)
    x = x.astype(jnp.float32)
    return jnp.mean(x, axis=(1, 2)) if self.pooled else x
