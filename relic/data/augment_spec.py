"""BYOL's photometric augmentation, described once for its JAX and its TensorFlow versions.

Both implementations (:mod:`relic.data.augment` on the accelerator, :mod:`relic.data.augment_tf`
in tf.data on the host) draw one vector of ``NUM_UNIFORMS`` independent U[0, 1) numbers per view
and turn it into augmentation parameters with :func:`photometric_params` below. Sharing that map
is what makes the two modes agree in distribution (and, given the same uniforms, pixel for
pixel up to float rounding), so a run can move the augmentation between host and device
without changing the method.

Values are BYOL's (deepmind-research/byol/utils/augmentations.py), which ReLICv2 reuses
([code]: the same file ships as ReLICv2's utils/augmentations.py): random horizontal flip;
colour jitter with probability 0.8
(brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, in random order, clipped to [0, 1]
after each); grayscale with probability 0.2; Gaussian blur with sigma ~ U(0.1, 2.0) and a
kernel of about a tenth of the view size; solarisation at 0.5. Preset 'A' always blurs and never
solarises, preset 'B' blurs with probability 0.1 and solarises with probability 0.2.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Layout of the per-view uniform vector.
FLIP = 0
JITTER = 1
BRIGHTNESS = 2
CONTRAST = 3
SATURATION = 4
HUE = 5
ORDER = 6            # 4 entries: argsort gives the random order of the four jitter ops.
GRAYSCALE = 10
BLUR = 11
SIGMA = 12
SOLARIZE = 13
NUM_UNIFORMS = 14

FLIP_PROB = 0.5
JITTER_PROB = 0.8
BRIGHTNESS_DELTA = 0.4
CONTRAST_DELTA = 0.4
SATURATION_DELTA = 0.2
HUE_DELTA = 0.1
GRAYSCALE_PROB = 0.2
GRAYSCALE_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale's, as in BYOL.
SIGMA_MIN, SIGMA_MAX = 0.1, 2.0
BLUR_DIVIDER = 10.0
SOLARIZE_THRESHOLD = 0.5

# Jitter ops, in the index order the ORDER entries permute.
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


@dataclasses.dataclass(frozen=True)
class Preset:
  """The two probabilities that tell BYOL's asymmetric views 'A' and 'B' apart."""
  blur_prob: float
  solarize_prob: float


PRESETS = {"A": Preset(blur_prob=1.0, solarize_prob=0.0),
           "B": Preset(blur_prob=0.1, solarize_prob=0.2)}


@dataclasses.dataclass(frozen=True)
class Photometric:
  """How strong the colour distortion is; the defaults are BYOL's.

  ``color_strength`` multiplies the four jitter deltas (SimCLR's colour-distortion strength,
  relative to BYOL's values): 2 gives brightness/contrast 0.8, saturation 0.4, hue 0.2. The
  deltas are capped where the op stops making sense (a contrast or saturation factor below 0,
  a hue turn beyond half the wheel).
  """
  color_strength: float = 1.0
  grayscale_prob: float = GRAYSCALE_PROB
  blur: bool = True  # False: no view is blurred, whatever its preset (``config.data.blur``).

  @classmethod
  def from_config(cls, data_config: Any) -> "Photometric":
    return cls(color_strength=float(data_config.color_jitter_strength),
               grayscale_prob=float(data_config.grayscale_prob),
               blur=bool(data_config.get("blur", True)))

  def blur_prob(self, preset: str) -> float:
    """The blur probability of a view of ``preset``."""
    return PRESETS[preset].blur_prob if self.blur else 0.0


BYOL = Photometric()


def check_presets(presets: str, num_views: int) -> None:
  if len(presets) != num_views or not set(presets) <= set(PRESETS):
    raise ValueError(f"presets must be a string of {num_views} letters from "
                     f"{sorted(PRESETS)} (one per view), got {presets!r}.")


def blur_radius(view_size: int) -> int:
  """BYOL's kernel: size ``view_size / 10``, made odd as ``2 * int(size / 2) + 1`` taps."""
  return int(view_size / BLUR_DIVIDER / 2)


def photometric_params(u: Any, photometric: Photometric = BYOL) -> dict[str, Any]:
  """Maps a uniform vector to augmentation parameters; works on NumPy, JAX and TF tensors.

  Only indexing and arithmetic are used, so each framework evaluates the same formulas.
  Decisions are ``u < p`` so that a probability of 0 never fires.
  """
  def symmetric(i: int, delta: float, cap: float) -> Any:
    return (2.0 * u[..., i] - 1.0) * min(delta * photometric.color_strength, cap)

  return dict(
      flip=u[..., FLIP] < FLIP_PROB,
      jitter=u[..., JITTER] < JITTER_PROB,
      brightness=symmetric(BRIGHTNESS, BRIGHTNESS_DELTA, 1.0),          # added
      contrast=1.0 + symmetric(CONTRAST, CONTRAST_DELTA, 0.9),          # factor
      saturation=1.0 + symmetric(SATURATION, SATURATION_DELTA, 1.0),    # factor
      hue=symmetric(HUE, HUE_DELTA, 0.5),                               # turn of the colour wheel
      grayscale=u[..., GRAYSCALE] < photometric.grayscale_prob,
      sigma=SIGMA_MIN + (SIGMA_MAX - SIGMA_MIN) * u[..., SIGMA],
  )
