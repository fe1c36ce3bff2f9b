"""ObjectNet 1.0 (Barbu et al., 2019) as a test set of ImageNet classifiers.

ObjectNet has 313 object classes photographed in unusual poses, places and viewpoints, and no
training set. 113 of its classes correspond to one or more ImageNet classes; as in the
ObjectNet paper and the robustness testbeds (Taori et al., 2020), an ImageNet classifier is
scored on the images of those 113 classes only (about 18,600 images), with its 1000-way scores
turned into 113 ObjectNet scores: each ObjectNet class takes the highest score of its ImageNet
classes (relic/evaluators/class_subsets.py), so a prediction is always an ObjectNet class.

Layout (``config.data.source='objectnet'``, ``config.data.path = DIR``): DIR is the unpacked
``objectnet-1.0`` folder (or its ``images/`` folder), ``images/<class folder>/<image>.png``,
as downloaded from objectnet.dev. Only the 113 overlapping class folders are read; every split
name means all of their images. The images carry a thin red border that is not part of the
photograph: 2 pixels are cut from every side before the evaluation transform (the convention of
the robustness testbeds' loaders). Labels are positions in the sorted folder list
:data:`relic.data.objectnet_classes.CLASSES`, which also holds each class's ImageNet classes.
"""

from __future__ import annotations

import pathlib

import ml_collections
from absl import logging

from relic.data.lazy_tf import tf
from relic.data import decode, folder_source, sources
from relic.data.objectnet_classes import CLASSES

BORDER = 2  # pixels cut from each side of an ObjectNet image


def images_root(path: str) -> pathlib.Path:
  """The folder holding the class folders: ``DIR/images`` if it exists, else ``DIR``."""
  root = pathlib.Path(path).expanduser()
  return root / "images" if (root / "images").is_dir() else root


class ObjectNetSource(folder_source.FolderSource):
  """The 113 ImageNet-overlapping classes of an ObjectNet folder, borders removed."""

  def __init__(self, data: ml_collections.ConfigDict):
    super().__init__(data)
    self.root = images_root(data.path)

  @classmethod
  def _check_files(cls, data: ml_collections.ConfigDict) -> None:
    sources.require_path(data, "ObjectNet folder", "set it to the unpacked objectnet-1.0 folder "
                         "(config.robustness.objectnet_path for the robustness job)")
    root = images_root(data.path)
    present = [c for c in CLASSES if (root / c).is_dir()]
    if not present:
      sources.fail("path", f"no ObjectNet class folders of the 113 ImageNet classes (e.g. "
                   f"'{CLASSES[0]}/') under {str(root)!r}",
                   "point it to the unpacked objectnet-1.0 folder (the one holding images/), as "
                   "downloaded from objectnet.dev")
    if len(present) < len(CLASSES):
      missing = sorted(set(CLASSES) - set(present))
      logging.warning("Only %d of the %d ImageNet-overlapping ObjectNet class folders are under "
                      "%s (missing e.g. %s): the score covers the present ones only.",
                      len(present), len(CLASSES), root, missing[:3])

  def split_dir(self, name: str) -> pathlib.Path:
    return self.root

  def split_names(self) -> tuple[str, ...]:
    return ("test",)

  def classes(self) -> list[str]:
    return list(CLASSES)

  def image_files(self, folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(f for c in CLASSES if (folder / c).is_dir()
                  for f in folder_source.list_images(folder / c))

  def load_row(self, row) -> dict[str, tf.Tensor]:
    return {"image": remove_border(decode.decode_image(tf.io.read_file(row["path"]))),
            "label": row["label"]}


def remove_border(image: tf.Tensor) -> tf.Tensor:
  """``image`` without :data:`BORDER` pixels on each side (unchanged if that leaves nothing)."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  big_enough = tf.logical_and(height > 2 * BORDER, width > 2 * BORDER)
  return tf.cond(big_enough, lambda: image[BORDER:height - BORDER, BORDER:width - BORDER],
                 lambda: image)
