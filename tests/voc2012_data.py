"""A tiny PASCAL VOC 2012 segmentation folder in the devkit's layout: JPEGImages/,
SegmentationClassAug/ (single-channel class indices), SegmentationClass/ (the official palette
PNGs) and ImageSets/Segmentation/<split>.txt."""

import io
import pathlib

import numpy as np
from PIL import Image

IGNORE = 255


def voc_palette() -> list[int]:
  """The VOC colour map (768 values): the bits of class c spread over r, g, b."""
  palette = []
  for c in range(256):
    r = g = b = 0
    value = c
    for j in range(8):
      r |= (value & 1) << (7 - j)
      g |= ((value >> 1) & 1) << (7 - j)
      b |= ((value >> 2) & 1) << (7 - j)
      value >>= 3
    palette += [r, g, b]
  return palette


def palette_png(mask: np.ndarray, palette: list[int]) -> bytes:
  """``mask`` as a PIL 'P' (palette) PNG, as the official SegmentationClass files are."""
  mask = np.ascontiguousarray(mask, np.uint8)
  image = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
  image.putpalette(palette)
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()


def blocky_mask(rng: np.random.Generator, height: int, width: int, block: int = 8,
                void: bool = True) -> np.ndarray:
  """Random classes 0..20 in ``block``-pixel squares; with ``void``, a few IGNORE rows."""
  blocks = rng.integers(0, 21, size=(-(-height // block), -(-width // block)))
  mask = np.kron(blocks, np.ones((block, block), np.int64))[:height, :width].astype(np.uint8)
  if void:
    mask[rng.integers(0, height, size=2)] = IGNORE
  return mask


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """Low-frequency colours, which JPEG keeps within a few levels."""
  y, x = np.mgrid[:height, :width] / np.array([height, width])[:, None, None]
  phase = rng.random(3) * 2 * np.pi
  channels = [0.5 + 0.4 * np.sin(2 * np.pi * (x + (k + 1) * y / 3) + phase[k]) for k in range(3)]
  return np.round(255 * np.stack(channels, axis=-1)).astype(np.uint8)


def write_voc(root: pathlib.Path, examples: dict[str, tuple[np.ndarray, np.ndarray]],
              splits: dict[str, list[str]], palette_ids=(), exact_images: bool = False,
              aug_overrides: dict[str, np.ndarray] | None = None) -> pathlib.Path:
  """Writes VOC2012/ under ``root`` and returns it.

  Args:
    examples: id -> (image (H, W, 3) uint8, mask (H, W) uint8 class ids / IGNORE).
    splits: split name -> ids of its list file.
    palette_ids: ids whose mask is written only to SegmentationClass/ as a VOC palette PNG;
      the others go to SegmentationClassAug/ as single-channel indices.
    exact_images: write PNG bytes under the .jpg names (TensorFlow sniffs the format), so pixel
      values survive exactly.
    aug_overrides: id -> a mask written to SegmentationClass/ as a palette PNG *in addition*
      to the SegmentationClassAug/ one (the reader must prefer the Aug mask).
  """
  base = root / "VOC2012"
  for folder in ("JPEGImages", "SegmentationClassAug", "SegmentationClass",
                 "ImageSets/Segmentation"):
    (base / folder).mkdir(parents=True, exist_ok=True)
  palette = voc_palette()
  for image_id, (image, mask) in examples.items():
    target = base / "JPEGImages" / f"{image_id}.jpg"
    if exact_images:
      Image.fromarray(image).save(target, format="PNG")
    else:
      Image.fromarray(image).save(target, format="JPEG", quality=95, subsampling=0)
    if image_id in palette_ids:
      (base / "SegmentationClass" / f"{image_id}.png").write_bytes(palette_png(mask, palette))
    else:
      Image.fromarray(mask).save(base / "SegmentationClassAug" / f"{image_id}.png")
  for image_id, other in (aug_overrides or {}).items():
    (base / "SegmentationClass" / f"{image_id}.png").write_bytes(palette_png(other, palette))
  for name, ids in splits.items():
    (base / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("\n".join(ids) + "\n")
  return base
