"""TensorFlow/Haiku 'SAME' padding for PyTorch convolutions and max-pools.

DeepMind's encoders were trained with 'SAME' padding: a strided layer pads
``total = max((ceil(n / s) - 1) * s + k - n, 0)`` pixels, ``total // 2`` before and the rest
after, so the extra pixel of an even input goes to the bottom/right. torchvision pads ``k // 2``
on both sides. The output sizes agree but the sampling grid is shifted by one pixel on the 7x7
stem, the stem max-pool and every strided 3x3 conv, so weights trained one way give different
features the other way. Stride-1 layers with odd kernels and 1x1 strided shortcuts pad the
same in both conventions and are left alone.

The modules here subclass ``nn.Conv2d`` / ``nn.MaxPool2d`` and keep their parameters, so a
converted model has the same state-dict keys as the torchvision original.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
  """(before, after) padding of one spatial dimension under TF 'SAME'."""
  effective = (kernel - 1) * dilation + 1
  total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
  return total // 2, total - total // 2


def _pad(x: torch.Tensor, kernel, stride, dilation, value: float = 0.0) -> torch.Tensor:
  top, bottom = same_padding(x.shape[-2], kernel[0], stride[0], dilation[0])
  left, right = same_padding(x.shape[-1], kernel[1], stride[1], dilation[1])
  if top == bottom == left == right == 0:
    return x
  return F.pad(x, (left, right, top, bottom), value=value)


def _pair(x) -> tuple[int, int]:
  return (x, x) if isinstance(x, int) else tuple(x)


class Conv2dSame(nn.Conv2d):
  """``nn.Conv2d`` with TF 'SAME' padding, computed from each input's size."""

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = _pad(x, self.kernel_size, self.stride, self.dilation)
    return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MaxPool2dSame(nn.MaxPool2d):
  """``nn.MaxPool2d`` with TF 'SAME' padding (padded values never win the max)."""

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    kernel, stride, dilation = _pair(self.kernel_size), _pair(self.stride), _pair(self.dilation)
    x = _pad(x, kernel, stride, dilation, value=float("-inf"))
    return F.max_pool2d(x, kernel, stride, 0, dilation, ceil_mode=False)


def _needs_same(module: nn.Module) -> bool:
  """Strided convs and max-pools; stride-1 ones pad identically in both conventions."""
  if isinstance(module, (Conv2dSame, MaxPool2dSame)):
    return False
  if not isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
    return False
  return _pair(module.stride if module.stride is not None else module.kernel_size) != (1, 1)


def convert_to_same_padding(model: nn.Module) -> nn.Module:
  """Switches every strided ``Conv2d`` / ``MaxPool2d`` of ``model`` to TF 'SAME', in place.

  Parameters are shared, not copied, so the state dict and its keys are unchanged. Returns
  ``model`` for chaining: ``convert_to_same_padding(torchvision.models.resnet50())``.
  """
  for parent in list(model.modules()):
    for name, child in list(parent.named_children()):
      if not _needs_same(child):
        continue
      if isinstance(child, nn.Conv2d):
        same = Conv2dSame(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                          padding=0, dilation=child.dilation, groups=child.groups,
                          bias=child.bias is not None, device=child.weight.device,
                          dtype=child.weight.dtype)
        same.weight = child.weight
        same.bias = child.bias
      else:
        same = MaxPool2dSame(child.kernel_size, child.stride, padding=0, dilation=child.dilation)
      same.train(child.training)
      setattr(parent, name, same)
  return model
