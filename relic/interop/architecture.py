"""Encoder architectures by name and by shape: 'resnet50x2' <-> ResNet(depth=50, width_multiplier=2).

Interop needs the architecture of a checkpoint that carries no config (DeepMind's pickles, a
bare variables dict), so it is read back from the parameter shapes: the number of blocks per
stage gives the depth, the stem's output channels give the width. The same description builds
the relic model and the equivalent torchvision model.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

from relic.models.resnet import BOTTLENECK_DEPTHS, STAGE_SIZES, ResNet

STANDARD_STEM = 64
BLOCK_NAME = re.compile(r"^block_group_(\d+)_block_(\d+)$")
_ARCH_NAME = re.compile(r"^(?:res_?net|r)[-_ ]?(\d+)(?:[-_ ]?x(\d+)|[-_ ]+(\d+)x)?$")


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  """What fixes the shapes of a ResNet encoder (the ``config.model`` fields that matter).

  ``stage_sizes`` is None for a depth's standard layout; a tuple for anything else (tiny test
  models). Only ``base_width * width_multiplier`` (the stem's channels) matters for shapes.
  """
  depth: int = 50
  width_multiplier: int = 1
  stage_sizes: tuple[int, ...] | None = None
  base_width: int = STANDARD_STEM
  small_images: bool = False

  @property
  def bottleneck(self) -> bool:
    return self.depth in BOTTLENECK_DEPTHS

  @property
  def blocks(self) -> tuple[int, ...]:
    return tuple(self.stage_sizes or STAGE_SIZES[self.depth])

  def describe(self) -> str:
    if self.stage_sizes is None and self.base_width == STANDARD_STEM and not self.small_images:
      return f"ResNet-{self.depth} {self.width_multiplier}x"
    kind = "bottleneck" if self.bottleneck else "basic"
    stem = " CIFAR stem" if self.small_images else ""
    return (f"ResNet ({kind} blocks {self.blocks}, {self.base_width * self.width_multiplier} "
            f"stem channels{stem})")

  def model(self, padding: str = "torchvision", **kwargs: Any) -> ResNet:
    return ResNet(depth=self.depth, width_multiplier=self.width_multiplier,
                  stage_sizes=self.stage_sizes, base_width=self.base_width,
                  small_images=self.small_images, padding=padding, **kwargs)

  def model_config(self, padding: str) -> dict[str, Any]:
    """The ``config.model`` encoder fields (``stage_sizes=()`` means the standard layout)."""
    return dict(depth=self.depth, width_multiplier=self.width_multiplier,
                stage_sizes=tuple(self.stage_sizes or ()), base_width=self.base_width,
                small_images=self.small_images, padding=padding)

  def same_shapes(self, other: "EncoderSpec") -> bool:
    return (self.bottleneck == other.bottleneck and self.blocks == other.blocks
            and self.small_images == other.small_images
            and self.base_width * self.width_multiplier == other.base_width * other.width_multiplier)


def parse_arch(arch: str) -> EncoderSpec:
  """'resnet50', 'resnet50x2', 'resnet200_2x', 'ResNet-101', 'r50x4' -> EncoderSpec."""
  match = _ARCH_NAME.match(arch.strip().lower())
  depth = int(match.group(1)) if match else None
  if depth not in STAGE_SIZES:
    raise ValueError(f"Unknown architecture {arch!r}: expected resnet{{depth}}[x{{width}}] with "
                     f"depth in {sorted(STAGE_SIZES)}, e.g. 'resnet50', 'resnet50x2', "
                     f"'resnet200x2'.")
  width = int(match.group(2) or match.group(3) or 1)
  if width < 1:
    raise ValueError(f"Architecture {arch!r}: the width multiplier must be >= 1.")
  return EncoderSpec(depth=depth, width_multiplier=width)


def spec_from_layout(blocks: Sequence[int], bottleneck: bool, stem_channels: int,
                     small_images: bool = False) -> EncoderSpec:
  """The spec of a ResNet with ``blocks`` per stage and ``stem_channels`` after the stem."""
  blocks = tuple(int(b) for b in blocks)
  depths = BOTTLENECK_DEPTHS if bottleneck else tuple(d for d in STAGE_SIZES
                                                      if d not in BOTTLENECK_DEPTHS)
  depth = next((d for d in depths if STAGE_SIZES[d] == blocks), None)
  stage_sizes = None
  if depth is None:  # a non-standard layout: any depth of the right block type, explicit stages
    depth, stage_sizes = depths[0], blocks
  if stem_channels % STANDARD_STEM == 0:
    width, base = stem_channels // STANDARD_STEM, STANDARD_STEM
  else:
    width, base = 1, stem_channels
  return EncoderSpec(depth=depth, width_multiplier=width, stage_sizes=stage_sizes,
                     base_width=base, small_images=small_images)


def spec_from_variables(variables: Mapping[str, Any]) -> EncoderSpec:
  """Reads the architecture of relic ResNet variables (``{'params': ..., ...}`` or params)."""
  params = variables.get("params", variables)
  if "conv_init" not in params:
    raise ValueError("Not relic ResNet variables: no 'conv_init' among the parameters "
                     f"(found {sorted(params)[:8]}).")
  kernel_shape = tuple(params["conv_init"]["kernel"].shape)
  counts: dict[int, int] = {}
  bottleneck = False
  for name, block in params.items():
    match = BLOCK_NAME.match(name)
    if match:
      stage, index = int(match.group(1)), int(match.group(2))
      counts[stage] = max(counts.get(stage, 0), index + 1)
      bottleneck = bottleneck or "conv_2" in block
  blocks = tuple(counts.get(stage, 0) for stage in range(len(counts)))
  return spec_from_layout(blocks, bottleneck, kernel_shape[-1], small_images=kernel_shape[0] == 3)
