"""A tiny PASCAL VOC2007 in the devkit's own layout, prepared by tfds's real ``voc/2007``
builder (tfds.testing.mock_data cannot generate VOC's nested 'objects' sequence)."""

import pathlib
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
           "train", "tvmonitor")
SPLITS = {"train": 10, "val": 6, "test": 9}


def _annotation(objects: list[tuple[int, bool]]) -> str:
  parts = ["<annotation><size><width>64</width><height>48</height><depth>3</depth></size>"]
  for label, difficult in objects:
    parts.append(f"<object><name>{CLASSES[label]}</name><pose>Unspecified</pose>"
                 f"<truncated>0</truncated><difficult>{int(difficult)}</difficult><bndbox>"
                 "<xmin>4</xmin><ymin>4</ymin><xmax>40</xmax><ymax>30</ymax></bndbox></object>")
  return "".join(parts) + "</annotation>"


def write_devkit(root: pathlib.Path, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
  """Writes VOCdevkit/VOC2007 under ``root``; returns each split's expected targets by image
  id: 1 = a non-difficult object of the class, -1 = only difficult ones, 0 = none."""
  rng = np.random.default_rng(seed)
  base = root / "VOCdevkit" / "VOC2007"
  for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
    (base / folder).mkdir(parents=True, exist_ok=True)
  expected: dict[str, dict[str, np.ndarray]] = {}
  index = 0
  for split, count in SPLITS.items():
    ids = []
    expected[split] = {}
    for _ in range(count):
      image_id = f"{index:06d}"
      index += 1
      labels = rng.choice(len(CLASSES), size=rng.integers(1, 4), replace=False)
      objects = [(int(c), bool(rng.random() < 0.3)) for c in labels]
      objects.append((int(labels[0]), False))  # a class can have several objects
      target = np.zeros(len(CLASSES), np.int32)
      for c, difficult in objects:
        if not difficult:
          target[c] = 1
        elif target[c] == 0:
          target[c] = -1
      (base / "Annotations" / f"{image_id}.xml").write_text(_annotation(objects))
      pixels = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(base / "JPEGImages" / f"{image_id}.jpg")
      ids.append(image_id)
      expected[split][image_id] = target
    (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
  return expected


def prepare(data_dir: pathlib.Path, devkit: pathlib.Path) -> None:
  """Runs tfds's voc/2007 builder on the devkit at ``devkit`` into ``data_dir``."""
  builder = tfds.builder("voc/2007", data_dir=str(data_dir))
  paths = {"trainval": str(devkit), "test": str(devkit)}
  with mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                         lambda self, urls: paths):
    builder.download_and_prepare()
