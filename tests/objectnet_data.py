"""A tiny ObjectNet 1.0 in its download layout: ``objectnet-1.0/images/<class folder>/*.png``.

Each photograph is framed by a 2-pixel red border, as ObjectNet's images are, around content
whose top-left pixel encodes the class and image number, so a test can tell exactly which
pixels the loader kept.
"""

import pathlib

import numpy as np
from PIL import Image

# Image counts per class folder: four of the 113 ImageNet-overlapping classes, and 'squeegee',
# one of the 200 that are not (its images must never be read).
COUNTS = {"alarm_clock": 2, "banana": 3, "chair": 2, "wok": 1, "squeegee": 2}
BORDER_RGB = (255, 0, 0)


def content(folder_index: int, image_index: int, height: int = 36, width: int = 44) -> np.ndarray:
  """The photograph inside the border: noise with a recognisable first pixel."""
  rng = np.random.default_rng(100 * folder_index + image_index)
  pixels = rng.integers(0, 200, (height, width, 3), dtype=np.uint8)
  pixels[0, 0] = (folder_index, image_index, 7)
  return pixels


def write_objectnet(root: pathlib.Path) -> pathlib.Path:
  """Writes ``root/objectnet-1.0`` (PNG images with a 2 px red border); returns that folder."""
  base = root / "objectnet-1.0"
  for folder_index, (folder, count) in enumerate(COUNTS.items()):
    (base / "images" / folder).mkdir(parents=True)
    for image_index in range(count):
      inner = content(folder_index, image_index)
      framed = np.empty((inner.shape[0] + 4, inner.shape[1] + 4, 3), np.uint8)
      framed[:] = BORDER_RGB
      framed[2:-2, 2:-2] = inner
      Image.fromarray(framed).save(base / "images" / folder / f"{image_index:04x}.png")
  return base
