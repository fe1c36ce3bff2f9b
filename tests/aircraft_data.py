"""A tiny FGVC-Aircraft 2013b in its download layout: ``fgvc-aircraft-2013b/data/`` with
``images/<id>.jpg``, ``variants.txt`` and ``images_variant_<split>.txt``.

Every image is a dark photograph with the dataset's 20-row copyright banner (white) below it;
its top-left 8x8 block encodes its label (``LABEL_LEVELS``), so a test can check labels
whatever order the loader stores images in. Variant names have spaces and slashes, as the real
ones do.
"""

import pathlib

import numpy as np
from PIL import Image

VARIANTS = ("707-320", "Boeing 737-700", "F/A-18", "Cessna 172")
SPLITS = {"train": 6, "val": 4, "test": 5}
HEIGHT, WIDTH, BANNER = 40, 48, 20


def label_level(label: int) -> int:
  return 10 + 20 * label


def decode_label(image: np.ndarray) -> int:
  """The label encoded in an image's top-left block (JPEG moves it by a few levels at most)."""
  return int(round((float(image[2:6, 2:6].mean()) - 10) / 20))


def write_aircraft(root: pathlib.Path, seed: int = 0) -> tuple[pathlib.Path, dict[str, list]]:
  """Writes ``root/fgvc-aircraft-2013b``; returns it and each split's [(image id, label)]."""
  rng = np.random.default_rng(seed)
  data = root / "fgvc-aircraft-2013b" / "data"
  (data / "images").mkdir(parents=True)
  (data / "variants.txt").write_text("\n".join(VARIANTS) + "\n")
  expected: dict[str, list] = {}
  number = 1000000
  for split, count in SPLITS.items():
    rows = []
    for i in range(count):
      number += 7
      label = i % len(VARIANTS)
      image = np.full((HEIGHT + BANNER, WIDTH, 3), 255, np.uint8)        # the banner: white
      image[:HEIGHT] = rng.integers(0, 100, (HEIGHT, WIDTH, 3))          # the photograph: dark
      image[:8, :8] = label_level(label)
      Image.fromarray(image).save(data / "images" / f"{number:07d}.jpg", quality=95)
      rows.append((f"{number:07d}", label))
    (data / f"images_variant_{split}.txt").write_text(
        "".join(f"{image_id} {VARIANTS[label]}\n" for image_id, label in rows))
    expected[split] = rows
  expected["trainval"] = expected["train"] + expected["val"]
  (data / "images_variant_trainval.txt").write_text(
      "".join(f"{image_id} {VARIANTS[label]}\n" for image_id, label in expected["trainval"]))
  return root / "fgvc-aircraft-2013b", expected
