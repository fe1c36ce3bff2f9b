"""Where segmentation examples come from: PASCAL VOC 2012, Cityscapes and the built-in shapes.

``config.segmentation.dataset`` selects one; a reader is one process's disjoint share of a split
(:class:`relic.data.sources.Reader`) whose ``load`` gives 'image' ``(H, W, 3)`` uint8 and 'mask'
``(H, W)`` uint8 class ids, :data:`IGNORE` for pixels that are never scored.

* 'voc2012': the VOC2012 folder at ``config.segmentation.path``: JPEGImages/<id>.jpg, the mask
  SegmentationClassAug/<id>.png (SBD-augmented, class indices) if it exists, else the official
  SegmentationClass/<id>.png (a palette PNG, decoded to colours and mapped back to indices);
  split ``NAME`` lists its ids in ImageSets/Segmentation/NAME.txt.
* 'cityscapes': tfds ``cityscapes/semantic_segmentation`` in ``config.segmentation.data_dir``;
  its labels are Cityscapes labelIds, mapped to the 19 trainIds of the benchmark.
* 'builtin': relic/data/builtin.py's shapes; class ``label + 1`` on the object's exact mask,
  0 elsewhere.

Split strings take tfds slicing (``train_aug[:2119]``) for every dataset.
"""

from __future__ import annotations

import functools
import pathlib
from typing import NoReturn

import numpy as np
import tensorflow as tf

from relic.config import ConfigError
from relic.data import builtin, decode, sources, splits, tfds_source

IGNORE = 255
DATASETS = ("voc2012", "cityscapes", "builtin")

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                      "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                      "truck", "bus", "train", "motorcycle", "bicycle")
CITYSCAPES = "cityscapes/semantic_segmentation"
_CITYSCAPES_SPLITS = ("train", "validation", "test")
# trainId of each labelId 0..33 (cityscapesScripts' labels.py); classes not evaluated -> IGNORE.
_TRAIN_IDS = np.full(34, IGNORE, np.int32)
_TRAIN_IDS[[7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]] = range(19)
# Undecoded full-resolution scenes (a few MB each) held for shuffling, per process.
_CITYSCAPES_SHUFFLE_BUFFER = 256
_MIN_BLOCK_SIZE = 64


def _fail(field: str, problem: str, fix: str) -> NoReturn:
  raise ConfigError(f"config.segmentation.{field}: {problem}. Fix: {fix}.")


class SplitError(ConfigError):
  """A split string the dataset cannot serve; :func:`check` names the field that holds it."""

  def __init__(self, split: str, problem: str, fix: str):
    self.problem, self.fix = problem, fix
    super().__init__(f"config.segmentation: split {split!r}: {problem}. Fix: {fix}.")


def _parse(split: str) -> tuple[str, str | None, str | None]:
  try:
    return splits.parse(split)
  except ValueError:
    raise SplitError(split, "cannot parse it", "use NAME or NAME[start:stop] with integer or "
                     "percent bounds, e.g. 'train_aug[:2119]' or 'train[90%:]'") from None


def class_names(dataset: str) -> tuple[str, ...]:
  """Class names by class id (ConfigError for an unknown dataset)."""
  if dataset == "voc2012":
    return VOC_CLASSES
  if dataset == "cityscapes":
    return CITYSCAPES_CLASSES
  if dataset == "builtin":
    return ("background",) + builtin.SHAPES
  _fail("dataset", f"unknown dataset {dataset!r}", f"choose one of {DATASETS}")


# ---- PASCAL VOC 2012 -------------------------------------------------------------------------

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
  return tf.where(index < len(VOC_CLASSES), index, IGNORE)


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
    grey = tf.reduce_all((r == g) & (g == b) & ((r < len(VOC_CLASSES)) | (r == IGNORE)))
    return tf.cond(grey, lambda: r, lambda: voc_colour_to_class(channels[..., :3]))

  ids = tf.cond(tf.shape(decoded)[-1] >= 3, from_colours, lambda: channels[..., 0])
  return tf.cast(tf.where(ids < len(VOC_CLASSES), ids, IGNORE), tf.uint8)


def _voc_root(config) -> pathlib.Path:
  s = config.segmentation
  if not s.path:
    _fail("path", "no VOC2012 folder given for dataset='voc2012'",
          "set config.segmentation.path=DIR, the VOC2012 folder (JPEGImages/, "
          "SegmentationClassAug/ or SegmentationClass/, ImageSets/Segmentation/)")
  root = pathlib.Path(s.path).expanduser()
  if not root.is_dir():
    _fail("path", f"VOC2012 folder {str(root)!r} not found",
          "point it to the VOC2012 folder of the devkit (VOCdevkit/VOC2012)")
  return root


def voc_split_names(root: pathlib.Path) -> tuple[str, ...]:
  lists = root / "ImageSets" / "Segmentation"
  return tuple(sorted(p.stem for p in lists.glob("*.txt"))) if lists.is_dir() else ()


def _voc_listing(root: pathlib.Path, name: str) -> tuple[np.ndarray, np.ndarray]:
  """(image paths, mask paths) of every id of split ``name``, in the list file's order."""
  resolved = splits.resolve_name(name, voc_split_names(root))
  if resolved is None:
    lists = root / "ImageSets" / "Segmentation"
    fix = (f"put {name}.txt (one image id per line) in {str(lists)!r} or choose one of "
           f"{list(voc_split_names(root))}")
    if name == "train_aug":
      fix += ("; train_aug.txt (10,582 ids) and SegmentationClassAug/ come with the SBD "
              "augmentation of VOC 2012, or use the official 1,464 images: train_split='train'")
    raise SplitError(name, f"no list file {str(lists / (name + '.txt'))!r}", fix)
  # Lines are ids, or 'JPEGImages/<id>.jpg SegmentationClassAug/<id>.png' as in some train_aug
  # lists: the first field's file stem is the id.
  lines = (root / "ImageSets" / "Segmentation" / f"{resolved}.txt").read_text().splitlines()
  ids = [pathlib.PurePath(line.split()[0]).stem for line in lines if line.strip()]
  folders = {d: root / d for d in ("JPEGImages", "SegmentationClassAug", "SegmentationClass")}
  present = {d: {p.name for p in f.iterdir()} if f.is_dir() else set() for d, f in folders.items()}
  images, masks, missing = [], [], []
  for i in ids:
    mask_dir = next((d for d in ("SegmentationClassAug", "SegmentationClass")
                     if f"{i}.png" in present[d]), None)
    if f"{i}.jpg" not in present["JPEGImages"] or mask_dir is None:
      missing.append(i)
      continue
    images.append(str(folders["JPEGImages"] / f"{i}.jpg"))
    masks.append(str(folders[mask_dir] / f"{i}.png"))
  if missing:
    _fail("path", f"{len(missing)} of the {len(ids)} ids of {resolved}.txt lack JPEGImages/<id>.jpg "
          f"or a mask SegmentationClassAug/<id>.png or SegmentationClass/<id>.png under "
          f"{str(root)!r} (first: {missing[:3]})", "complete the folder (the SBD masks for "
          "train_aug), or use a split whose images and masks are all there")
  return np.asarray(images, dtype=str), np.asarray(masks, dtype=str)


def _load_voc(row) -> dict[str, tf.Tensor]:
  image = decode.decode_image(tf.io.read_file(row["image"]))
  mask = voc_mask(tf.io.read_file(row["mask"]))
  same = tf.reduce_all(tf.shape(image)[:2] == tf.shape(mask))
  check = tf.debugging.Assert(same, ["Image and mask sizes differ:", row["image"], row["mask"],
                                     tf.shape(image), tf.shape(mask)])
  with tf.control_dependencies([check]):
    return {"image": image, "mask": tf.identity(mask)}


# ---- Cityscapes (tfds) -----------------------------------------------------------------------

def cityscapes_train_ids(label_ids: tf.Tensor) -> tf.Tensor:
  """Cityscapes labelIds (any integer dtype, -1 = license plate) -> uint8 trainIds / IGNORE."""
  ids = tf.cast(label_ids, tf.int32)
  known = (ids >= 0) & (ids < len(_TRAIN_IDS))
  mapped = tf.gather(tf.constant(_TRAIN_IDS), tf.clip_by_value(ids, 0, len(_TRAIN_IDS) - 1))
  return tf.cast(tf.where(known, mapped, IGNORE), tf.uint8)


def _tfds_split(split: str) -> str:
  """The tfds split string: 'val[:10]' -> 'validation[:10]'."""
  name, start, stop = _parse(split)
  resolved = splits.resolve_name(name, _CITYSCAPES_SPLITS)
  if resolved is None:
    raise SplitError(split, "Cityscapes has no such split",
                     f"use one of {_CITYSCAPES_SPLITS} ('val' means 'validation'), slicing allowed")
  return resolved if start is None and stop is None else f"{resolved}[{start or ''}:{stop or ''}]"


def _cityscapes_builder(config):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return tfds.builder(CITYSCAPES, data_dir=config.segmentation.data_dir or None)


def _cityscapes_dataset(config, builder, split: str) -> tf.data.Dataset:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  skip = tfds.decode.SkipDecoding()   # decode after shuffling: the buffer holds small records
  try:
    return builder.as_dataset(split=split, shuffle_files=False,
                              decoders={"image_left": skip, "segmentation_label": skip})
  except (AssertionError, FileNotFoundError, tfds.core.DatasetNotFoundError) as e:
    data_dir = config.segmentation.data_dir or "~/tensorflow_datasets"
    _fail("data_dir", f"tfds dataset {CITYSCAPES!r} is not prepared in {data_dir!r} ({e})",
          "register at https://www.cityscapes-dataset.com, put leftImg8bit_trainvaltest.zip and "
          f"gtFine_trainvaltest.zip in {data_dir}/downloads/manual/ and run `tfds build "
          f"{CITYSCAPES} --data_dir={data_dir}` once; set config.segmentation.data_dir if it "
          "lives elsewhere")


def _cityscapes_size(config, builder, split: str) -> int:
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError):
    # No split metadata (tfds.testing.mock_data): count what the split yields.
    return int(_cityscapes_dataset(config, builder, split).cardinality())


class CityscapesReader(tfds_source.TfdsReader):
  """Blocks of a tfds split (see relic/data/tfds_source.py) whose records carry the label."""

  def _record(self, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {"image": example["image_left"], "mask": example["segmentation_label"]}

  def load(self, record) -> dict[str, tf.Tensor]:
    label = tf.io.decode_png(record["mask"], channels=1)[..., 0]
    return {"image": decode.decode_image(record["image"]), "mask": cityscapes_train_ids(label)}


def _cityscapes_reader(config, split: str, process_index: int, process_count: int,
                       shuffle: bool) -> sources.Reader:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  builder = _cityscapes_builder(config)
  split = _tfds_split(split)
  global_size = _cityscapes_size(config, builder, split)
  # More blocks per process mix a shuffled epoch better for the same buffer.
  blocks = max(1, min(16, global_size // (process_count * _MIN_BLOCK_SIZE))) if shuffle else 1
  parts = tfds.even_splits(split, n=process_count * blocks)
  datasets = [_cityscapes_dataset(config, builder, p)
              for p in parts[process_index * blocks:(process_index + 1) * blocks]]
  buffer = min(config.data.shuffle_buffer, _CITYSCAPES_SHUFFLE_BUFFER)
  return CityscapesReader(datasets, global_size, buffer, "image_left", None)


# ---- built-in shapes -------------------------------------------------------------------------

def _builtin_split(config, split: str) -> tuple[str, int, int]:
  name, start, stop = _parse(split)
  resolved = splits.resolve_name(name, builtin.SPLITS)
  if resolved is None:
    raise SplitError(split, "the built-in dataset has no such split",
                     f"use one of {builtin.SPLITS} ('val' and 'validation' mean 'test')")
  o = config.data.builtin
  return (resolved,) + splits.bounds(start, stop, o.num_train if resolved == "train" else
                                     o.num_test)


@functools.lru_cache(maxsize=4)
def _builtin_arrays(name: str, num: int, size: int, seed: int,
                    cache_dir: str) -> tuple[np.ndarray, np.ndarray]:
  """(images, masks): class label + 1 on the object's exact mask, 0 = background."""
  arrays = builtin.load(name, num_examples=num, image_size=size, seed=seed, cache_dir=cache_dir)
  masks = np.where(arrays["mask"] > 127, arrays["label"][:, None, None] + 1, 0)
  return arrays["image"], masks.astype(np.uint8)


def _builtin_reader(config, split: str, process_index: int,
                    process_count: int) -> sources.Reader:
  name, first, last = _builtin_split(config, split)
  o = config.data.builtin
  images, masks = _builtin_arrays(name, o.num_train if name == "train" else o.num_test,
                                  o.image_size, o.seed, config.data.cache_dir)
  index = first + sources.share(last - first, process_index, process_count)
  return sources.IndexedReader({"image": images[index], "mask": masks[index]}, last - first,
                               lambda row: {"image": row["image"], "mask": row["mask"]})


# ---- dispatch --------------------------------------------------------------------------------

def num_examples(config, split: str) -> int:
  """Examples of ``split`` (slicing allowed) over all processes."""
  dataset = config.segmentation.dataset
  class_names(dataset)   # unknown dataset -> ConfigError
  name, start, stop = _parse(split)
  if dataset == "voc2012":
    first, last = splits.bounds(start, stop, len(_voc_listing(_voc_root(config), name)[0]))
    return last - first
  if dataset == "cityscapes":
    return _cityscapes_size(config, _cityscapes_builder(config), _tfds_split(split))
  _, first, last = _builtin_split(config, split)
  return last - first


def reader(config, split: str, *, process_index: int, process_count: int,
           shuffle: bool) -> sources.Reader:
  """This process's share of ``split``; records load to 'image' and 'mask'."""
  dataset = config.segmentation.dataset
  class_names(dataset)
  name, start, stop = _parse(split)
  if dataset == "voc2012":
    images, masks = _voc_listing(_voc_root(config), name)
    first, last = splits.bounds(start, stop, len(images))
    index = first + sources.share(last - first, process_index, process_count)
    return sources.IndexedReader({"image": images[index], "mask": masks[index]}, last - first,
                                 _load_voc)
  if dataset == "cityscapes":
    return _cityscapes_reader(config, split, process_index, process_count, shuffle)
  return _builtin_reader(config, split, process_index, process_count)


def check(config) -> None:
  """ConfigError, naming what is missing and the fix, when the data cannot be read."""
  s = config.segmentation
  class_names(s.dataset)
  if s.dataset == "voc2012":
    root = _voc_root(config)
    if not (root / "JPEGImages").is_dir():
      _fail("path", f"{str(root)!r} has no JPEGImages/ folder",
            "point config.segmentation.path to the VOC2012 folder (VOCdevkit/VOC2012)")
    if not any((root / d).is_dir() for d in ("SegmentationClassAug", "SegmentationClass")):
      _fail("path", f"{str(root)!r} has neither SegmentationClassAug/ nor SegmentationClass/",
            "add the masks: the official SegmentationClass/ of the devkit, or the SBD-augmented "
            "SegmentationClassAug/")
  if s.dataset == "builtin":
    o = config.data.builtin
    if min(o.num_train, o.num_test, o.image_size) <= 0:
      raise ConfigError(f"config.data.builtin: sizes must be positive, got num_train="
                        f"{o.num_train}, num_test={o.num_test}, image_size={o.image_size}. "
                        "Fix: use e.g. 10000, 2000, 64.")
  for field in ("train_split", "eval_split"):
    try:
      if s.dataset == "cityscapes":
        _cityscapes_dataset(config, _cityscapes_builder(config), _tfds_split(s[field]))
      elif num_examples(config, s[field]) == 0:
        raise SplitError(s[field], "it has no examples", "use a non-empty split or slice")
    except SplitError as e:
      _fail(field, f"split {s[field]!r}: {e.problem}", e.fix)
