"""Semantic segmentation network of BYOL's transfer protocol (Grill et al. 2020, appendix D.4).

FCN-16s: the encoder's convolutional layers with the last stage dilated (stride 1, dilation 2),
two 3x3 convolutions of 256 channels with dilation 6, each followed by BatchNorm and ReLU, and a
1x1 per-pixel classifier. The logits are upsampled bilinearly to the input resolution, so the
loss and the metrics see one prediction per labelled pixel whatever the image size.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from relic.models.conv import conv_general_dilated
from relic.models.resnet import ResNet, conv_kernel_init


class FCNHead(nn.Module):
  """(B, h, w, C) features -> (B, h, w, num_classes) float32 logits.

  The 3x3 convs are padded by their dilation, so the feature map keeps its size (33x33 for a
  513-pixel crop at output stride 16).
  """
  num_classes: int
  channels: int = 256
  dilation: int = 6
  dtype: Any = "float32"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, features, train: bool = False):
    dtype = jnp.dtype(self.dtype)
    x = jnp.asarray(features).astype(dtype)
    pad = ((self.dilation, self.dilation), (self.dilation, self.dilation))
    for index in range(2):
      x = nn.Conv(self.channels, (3, 3), kernel_dilation=(self.dilation, self.dilation),
                  padding=pad, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=conv_kernel_init, conv_general_dilated=conv_general_dilated,
                  name=f"conv_{index}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                       epsilon=self.bn_epsilon, dtype=dtype, param_dtype=jnp.float32,
                       name=f"bn_{index}")(x)
      x = nn.relu(x)
    x = nn.Conv(self.num_classes, (1, 1), dtype=dtype, param_dtype=jnp.float32,
                conv_general_dilated=conv_general_dilated, name="classifier")(x)
    return x.astype(jnp.float32)


class SegmentationNet(nn.Module):
  """Dilated encoder (``pooled=False``) -> FCN head -> bilinear upsampling to the input size.

  The submodules are named ``encoder`` and ``head``, so a pretrained encoder's variables slot
  in as ``params['encoder']`` / ``batch_stats['encoder']``.
  """
  encoder: ResNet
  head: FCNHead

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    features = self.encoder(images, train=train)
    logits = self.head(features, train=train)
    batch, height, width = images.shape[:3]
    # Half-pixel-centred bilinear interpolation; upsampling only, so antialiasing is a no-op.
    return jax.image.resize(logits, (batch, height, width, logits.shape[-1]), method="bilinear")


def segmentation_net(encoder: ResNet, seg_config: Mapping[str, Any],
                     num_classes: int) -> SegmentationNet:
  """The network of ``config.segmentation`` on ``encoder``'s architecture (a pretrained
  checkpoint's, which may differ from ``config.model``'s defaults), its last stage(s) dilated."""
  dilated = encoder.clone(output_stride=int(seg_config["output_stride"]), pooled=False)
  head = FCNHead(num_classes=num_classes, channels=int(seg_config["head_channels"]),
                 dilation=int(seg_config["head_dilation"]), dtype=dilated.dtype,
                 bn_momentum=dilated.bn_momentum, bn_epsilon=dilated.bn_epsilon)
  return SegmentationNet(encoder=dilated, head=head)
