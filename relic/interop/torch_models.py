"""torchvision ResNets that take relic encoders' weights, the widened ones included.

relic's width multiplier scales *every* layer, the stem included (SimCLR/BYOL/ReLICv2
convention): ResNet-50 2x has a 128-channel stem, bottlenecks of 128..1024 channels with
512..4096 outputs and 4096 features (93.9M trunk parameters). torchvision's
``wide_resnet50_2`` is a different network: it widens only the bottleneck's inner 3x3
(``width_per_group=128``) and keeps the 64-channel stem and the 256..2048 block outputs
(2048 features, 66.8M trunk parameters), so relic 2x weights do not fit it.
:func:`torch_resnet` builds the right model from torchvision's own ``ResNet`` class and its
``_make_layer`` with every stage's ``planes`` scaled, so module names, the forward pass and the
state-dict keys stay torchvision's; for 1x it is exactly ``torchvision.models.resnet50()`` etc.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torchvision.models import resnet as tv

from relic.interop.architecture import spec_from_variables
from relic.interop.torch_same import convert_to_same_padding
from relic.interop.torchvision_names import encoder_variables, to_torchvision_state_dict
from relic.models.resnet import BOTTLENECK_DEPTHS, IMAGENET_MEAN, IMAGENET_STD, STAGE_SIZES


def torch_resnet(depth: int = 50, width_multiplier: int = 1, *,
                 stage_sizes: Sequence[int] | None = None, base_width: int = 64,
                 small_images: bool = False, num_classes: int = 0,
                 padding: str = "torchvision") -> tv.ResNet:
  """A ``torchvision.models.resnet.ResNet`` with relic's architecture, in eval-ready form.

  Args:
    depth, width_multiplier, stage_sizes, base_width, small_images: as in relic's ``ResNet``.
    num_classes: > 0 keeps ``fc`` as a Linear classifier (load an exported probe into it);
      0 makes ``fc`` an identity, so the model returns the pooled features.
    padding: 'torchvision' (relic's default: the model is plain torchvision) or 'same'
      (DeepMind-imported encoders: strided layers get TF 'SAME' padding, see torch_same.py).

  Inputs are NCHW float tensors normalised with ImageNet mean/std (relic normalises inside its
  model; torchvision models expect normalised inputs).
  """
  if depth not in STAGE_SIZES:
    raise ValueError(f"ResNet depth {depth} is not supported; choose one of {sorted(STAGE_SIZES)}.")
  block = tv.Bottleneck if depth in BOTTLENECK_DEPTHS else tv.BasicBlock
  layers = list(stage_sizes or STAGE_SIZES[depth])
  if len(layers) != 4:
    raise ValueError(f"torchvision's ResNet has 4 stages, got stage_sizes={layers}.")
  model = tv.ResNet(block, layers, num_classes=max(num_classes, 1))
  stem = base_width * width_multiplier
  if stem != 64:
    # Rebuild stem, stages and classifier with every layer scaled, through torchvision's own
    # _make_layer (which tracks the running input width in ``inplanes``).
    model.inplanes = stem
    model.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(stem)
    for stage, blocks in enumerate(layers):
      setattr(model, f"layer{stage + 1}",
              model._make_layer(block, stem * 2**stage, blocks, stride=1 if stage == 0 else 2))
    model.fc = nn.Linear(stem * 8 * block.expansion, max(num_classes, 1))
    for module in model.modules():
      if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
  if small_images:  # relic's CIFAR stem: 3x3 stride-1 conv, no max-pool
    model.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
  if num_classes == 0:
    model.fc = nn.Identity()
  if padding == "same":
    convert_to_same_padding(model)
  elif padding != "torchvision":
    raise ValueError(f"padding must be 'torchvision' or 'same', got {padding!r}.")
  return model


def load_state_dict(model: nn.Module, state_dict: Mapping[str, Any]) -> nn.Module:
  """Strictly loads a (numpy or torch) state dict from :func:`to_torchvision_state_dict`."""
  tensors = {k: torch.tensor(np.asarray(v)) for k, v in state_dict.items()}  # copies
  model.load_state_dict(tensors, strict=True)
  return model


def to_torch(variables: Mapping[str, Any], *, padding: str = "torchvision",
             head_params: Mapping[str, Any] | None = None) -> tv.ResNet:
  """A relic encoder (and optionally its LinearHead as ``fc``) as an eval-mode torch model.

  Args:
    variables: relic ResNet variables; depth and width are read from the shapes.
    padding: the relic model's padding ('same' for DeepMind-imported encoders).
    head_params: LinearHead params; None returns the pooled features (``fc`` is an identity).
  """
  state = to_torchvision_state_dict(variables, head_params)
  spec = spec_from_variables(encoder_variables(variables))
  num_classes = int(state["fc.bias"].shape[0]) if "fc.bias" in state else 0
  model = torch_resnet(spec.depth, spec.width_multiplier, stage_sizes=spec.stage_sizes,
                       base_width=spec.base_width, small_images=spec.small_images,
                       num_classes=num_classes, padding=padding)
  return load_state_dict(model, state).eval()


def torch_projector(input_dim: int, hidden_dim: int, output_dim: int,
                    last_bias: bool = False) -> nn.Sequential:
  """relic's / BYOL's projector MLP in torch: Linear(D, H) -> BatchNorm1d(H) -> ReLU ->
  Linear(H, O, bias=last_bias); takes :func:`relic.interop.projector.to_torch_state_dict`.
  Call ``.eval()`` for the BatchNorm running statistics, as relic's features are."""
  return nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.BatchNorm1d(hidden_dim, eps=1e-5),
                       nn.ReLU(), nn.Linear(hidden_dim, output_dim, bias=last_bias))


def run_nhwc(model: nn.Module, images: Any) -> np.ndarray:
  """``model`` on NHWC images in [0, 1] (relic's convention): normalised, NCHW, float32."""
  images = (np.asarray(images, np.float32) - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(
      IMAGENET_STD, np.float32)
  with torch.no_grad():
    return model(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))).numpy()
