"""``config.data.source='voc2012'``: PASCAL VOC 2012 segmentation, a folder in the devkit's layout.

``config.data.path`` is the VOC2012 folder: JPEGImages/<id>.jpg, the mask
SegmentationClassAug/<id>.png (SBD-augmented, class indices) if it exists, else the official
SegmentationClass/<id>.png (a palette PNG, decoded to colours and mapped back to indices); split
``NAME`` lists its ids in ImageSets/Segmentation/NAME.txt ('train_aug' is the usual 10,582-image
list with SBD), tfds slicing on top (``train_aug[:2119]``).
"""

from __future__ import annotations

import pathlib

import ml_collections
import numpy as np

from relic.data.lazy_tf import tf
from relic.data import decode, sources, splits

IGNORE = sources.IGNORE
CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
           "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
           "sheep", "sofa", "train", "tvmonitor")
_MASK_FOLDERS = ("SegmentationClassAug", "SegmentationClass")   # in order of preference


def voc_colour_to_class(rgb: tf.Tensor) -> tf.Tensor:
  """(H, W, 3) colours of the VOC colour map -> int32 class index (unknown colours: IGNORE).

  The map spreads the bits of class c over the channels, most significant bit first: bit
  3j + k of c is bit 7 - j of channel k. Gathering them back inverts it for every colour, so
  only c <= 20 (a class) is kept; the border colour (224, 224, 192) is c = 255 = IGNORE.
  """
  rgb = tf.cast(rgb, tf.int32)
  index = tf.zeros_like(rgb[..., 0])
  for j in range(8):
    for k in range(3):
      bit = tf.bitwise.bitwise_and(tf.bitwise.right_shift(rgb[..., k], 7 - j), 1)
      index = tf.bitwise.bitwise_or(index, tf.bitwise.left_shift(bit, 3 * j + k))
  return tf.where(index < len(CLASSES), index, IGNORE)


def voc_mask(encoded: tf.Tensor) -> tf.Tensor:
  """A VOC mask file -> (H, W) uint8 class ids, whatever the PNG flavour.

  Single-channel PNGs (SegmentationClassAug) hold indices. TensorFlow expands palette PNGs (the
  official SegmentationClass) to RGB: grey images whose values are all class ids or 255 were
  index images with a grey palette; other colours are the VOC colour map's.
  """
  decoded = tf.io.decode_image(encoded, channels=0, expand_animations=False, dtype=tf.uint8)
  decoded.set_shape([None, None, None])
  channels = tf.cast(decoded, tf.int32)

  def from_colours() -> tf.Tensor:
    r, g, b = channels[..., 0], channels[..., 1], channels[..., 2]
    grey = tf.reduce_all((r == g) & (g == b) & ((r < len(CLASSES)) | (r == IGNORE)))
    return tf.cond(grey, lambda: r, lambda: voc_colour_to_class(channels[..., :3]))

  ids = tf.cond(tf.shape(decoded)[-1] >= 3, from_colours, lambda: channels[..., 0])
  return tf.cast(tf.where(ids < len(CLASSES), ids, IGNORE), tf.uint8)


class VocSource(sources.SegmentationSource):
  """The segmentation splits of a VOC2012 folder; see the module docstring. A split's listing
  is read anew each time (a list file and three folder listings): no state to go stale."""

  def __init__(self, data: ml_collections.ConfigDict):
    self.root = pathlib.Path(data.path).expanduser()

  @classmethod
  def check(cls, data: ml_collections.ConfigDict) -> None:
    sources.require_path(data, "VOC2012 folder", "set config.data.path=DIR, the VOC2012 folder "
                         "(JPEGImages/, SegmentationClassAug/ or SegmentationClass/, "
                         "ImageSets/Segmentation/)")
    source = cls(data)
    root = source.root
    if not root.is_dir():
      sources.fail("path", f"VOC2012 folder {str(root)!r} not found",
                   "point it to the VOC2012 folder of the devkit (VOCdevkit/VOC2012)")
    if not (root / "JPEGImages").is_dir():
      sources.fail("path", f"{str(root)!r} has no JPEGImages/ folder",
                   "point config.data.path to the VOC2012 folder (VOCdevkit/VOC2012)")
    if not any((root / d).is_dir() for d in _MASK_FOLDERS):
      sources.fail("path", f"{str(root)!r} has neither SegmentationClassAug/ nor "
                   "SegmentationClass/", "add the masks: the official SegmentationClass/ of the "
                   "devkit, or the SBD-augmented SegmentationClassAug/")
    sources.check_split_fields(data, source.num_examples)

  def class_names(self) -> tuple[str, ...]:
    return CLASSES

  def _listing(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(image paths, mask paths) of every id of split ``name``, in the list file's order."""
    lists = self.root / "ImageSets" / "Segmentation"
    names = sorted(p.stem for p in lists.glob("*.txt"))
    resolved = splits.resolve_name(name, tuple(names))
    if resolved is None:
      fix = f"put {name}.txt (one image id per line) in {str(lists)!r} or choose one of {names}"
      if name == "train_aug":
        fix += ("; train_aug.txt (10,582 ids) and SegmentationClassAug/ come with the SBD "
                "augmentation of VOC 2012, or use the official 1,464 images: "
                "config.data.train_split='train'")
      raise sources.SplitError(name, f"no list file {str(lists / (name + '.txt'))!r}", fix)
    # Lines are ids, or 'JPEGImages/<id>.jpg SegmentationClassAug/<id>.png' as in some
    # train_aug lists: the first field's file stem is the id.
    lines = (lists / f"{resolved}.txt").read_text().splitlines()
    ids = [pathlib.PurePath(line.split()[0]).stem for line in lines if line.strip()]
    present = {d: {p.name for p in (self.root / d).iterdir()} if (self.root / d).is_dir()
               else set() for d in ("JPEGImages",) + _MASK_FOLDERS}
    images, masks, missing = [], [], []
    for i in ids:
      mask_dir = next((d for d in _MASK_FOLDERS if f"{i}.png" in present[d]), None)
      if f"{i}.jpg" not in present["JPEGImages"] or mask_dir is None:
        missing.append(i)
        continue
      images.append(str(self.root / "JPEGImages" / f"{i}.jpg"))
      masks.append(str(self.root / mask_dir / f"{i}.png"))
    if missing:
      sources.fail("path", f"{len(missing)} of the {len(ids)} ids of {resolved}.txt lack "
                   "JPEGImages/<id>.jpg or a mask SegmentationClassAug/<id>.png or "
                   f"SegmentationClass/<id>.png under {str(self.root)!r} (first: {missing[:3]})",
                   "complete the folder (the SBD masks for train_aug), or use a split whose "
                   "images and masks are all there")
    return np.asarray(images, dtype=str), np.asarray(masks, dtype=str)

  def _slice(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    name, start, stop = sources.parse_split(split)
    images, masks = self._listing(name)
    first, last = splits.bounds(start, stop, len(images))
    return images[first:last], masks[first:last]

  def num_examples(self, split: str) -> int:
    return len(self._slice(split)[0])

  def segmentation_reader(self, split: str, *, process_index: int, process_count: int,
                          shuffle: bool) -> sources.Reader:
    del shuffle  # an index permutes the whole split
    images, masks = self._slice(split)
    index = sources.share(len(images), process_index, process_count)
    return sources.IndexedReader({"image": images[index], "mask": masks[index]}, len(images),
                                 _load)


def _load(row) -> dict[str, tf.Tensor]:
  image = decode.decode_image(tf.io.read_file(row["image"]))
  mask = voc_mask(tf.io.read_file(row["mask"]))
  same = tf.reduce_all(tf.shape(image)[:2] == tf.shape(mask))
  check = tf.debugging.Assert(same, ["Image and mask sizes differ:", row["image"], row["mask"],
                                     tf.shape(image), tf.shape(mask)])
  with tf.control_dependencies([check]):
    return {"image": image, "mask": tf.identity(mask)}
