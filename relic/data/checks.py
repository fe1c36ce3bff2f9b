"""Start-up checks of ``config.data``: missing data fails before any compute, with the fix."""

from __future__ import annotations

import pathlib

import ml_collections
from absl import logging

from relic.config import ConfigError
from relic.data import builtin, splits


def _fail(field: str, problem: str, fix: str) -> None:
  raise ConfigError(f"config.data.{field}: {problem}. Fix: {fix}.")


def check_data_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError when the configured data cannot be read.

  Checks that the dataset / folder exists and has the train and eval splits, and that
  saliency masks exist when ``mask_prob > 0``. Cheap: nothing is decoded (unreadable files
  are handled later, see relic/data/image_check.py).
  """
  data = config.data
  if data.fake:
    return
  needs_masks = data.mask_prob > 0 and data.views.large.num > 0
  if data.source == "builtin":
    _check_builtin(data)
    return
  if needs_masks:
    if not data.mask_path:
      _fail("mask_prob", f"is {data.mask_prob} but the {data.source!r} source has no saliency "
            "masks", "set config.data.mask_path=DIR, a folder of grayscale masks (255 = "
            "foreground) with the same relative paths/stems as the images, or set "
            "config.data.mask_prob=0 to train without masked views")
    if not pathlib.Path(data.mask_path).expanduser().is_dir():
      _fail("mask_path", f"mask folder {data.mask_path!r} not found",
            "point it to an existing folder of saliency masks, or set config.data.mask_prob=0")
  if data.source == "folder":
    _check_folder(data)
  elif data.source == "objectnet":
    _check_objectnet(data)
  elif data.source == "fgvc_aircraft":
    _check_aircraft(data)
  elif data.source == "tfds":
    _check_tfds(data, needs_masks)
  else:
    _fail("source", f"unknown source {data.source!r}",
          "choose 'tfds', 'folder', 'builtin', 'objectnet' or 'fgvc_aircraft'")


def _check_builtin(data: ml_collections.ConfigDict) -> None:
  o = data.builtin
  if min(o.num_train, o.num_test, o.image_size) <= 0:
    _fail("builtin", f"sizes must be positive, got num_train={o.num_train}, "
          f"num_test={o.num_test}, image_size={o.image_size}", "use e.g. 10000, 2000, 64")
  for field in ("train_split", "eval_split"):
    name = splits.parse(data[field])[0]
    if splits.resolve_name(name, builtin.SPLITS) is None:
      _fail(field, f"the built-in dataset has no split {name!r}",
            f"choose one of {builtin.SPLITS}")


def _check_folder(data: ml_collections.ConfigDict) -> None:
  from relic.data.folder_source import IMAGE_EXTENSIONS, FolderSource  # pylint: disable=import-outside-toplevel
  if not data.path:
    _fail("path", "no image folder given for source='folder'",
          "set config.data.path=DIR (a folder of images, optionally in class sub-folders)")
  root = pathlib.Path(data.path).expanduser()
  if not root.is_dir():
    _fail("path", f"image folder {str(root)!r} not found", "point it to an existing folder")
  source = FolderSource(data)
  for field in ("train_split", "eval_split"):
    try:
      names = [splits.parse(part)[0] for part in splits.parts(data[field])]
    except ValueError as e:
      _fail(field, str(e).rstrip("."), "use NAME, NAME[start:stop] or NAME+NAME")
    for name in names:
      folder = source.split_dir(name)
      has_image = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.rglob("*"))
      if not has_image:
        _fail("path", f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under "
              f"{str(folder)!r} for config.data.{field}={data[field]!r}",
              "put images there (class sub-folders optional) or fix the path/split")


def _check_objectnet(data: ml_collections.ConfigDict) -> None:
  from relic.data import objectnet  # pylint: disable=import-outside-toplevel
  if not data.path:
    _fail("path", "no ObjectNet folder given for source='objectnet'",
          "set it to the unpacked objectnet-1.0 folder (config.robustness.objectnet_path for "
          "the robustness job)")
  root = objectnet.images_root(data.path)
  present = [c for c in objectnet.CLASSES if (root / c).is_dir()]
  if not present:
    _fail("path", f"no ObjectNet class folders of the 113 ImageNet classes (e.g. "
          f"'{objectnet.CLASSES[0]}/') under {str(root)!r}",
          "point it to the unpacked objectnet-1.0 folder (the one holding images/), as "
          "downloaded from objectnet.dev")
  if len(present) < len(objectnet.CLASSES):
    missing = sorted(set(objectnet.CLASSES) - set(present))
    logging.warning("Only %d of the %d ImageNet-overlapping ObjectNet class folders are under %s "
                    "(missing e.g. %s): the score covers the present ones only.", len(present),
                    len(objectnet.CLASSES), root, missing[:3])


def _check_aircraft(data: ml_collections.ConfigDict) -> None:
  from relic.data import fgvc_aircraft  # pylint: disable=import-outside-toplevel
  download = ("point it to the unpacked fgvc-aircraft-2013b folder (the one holding data/), as "
              "downloaded from robots.ox.ac.uk/~vgg/data/fgvc-aircraft")
  if not data.path:
    _fail("path", "no FGVC-Aircraft folder given for source='fgvc_aircraft'", download)
  root = fgvc_aircraft.data_root(data.path)
  needed = [root / "variants.txt", root / "images"]
  for field in ("train_split", "eval_split"):
    try:
      parts = fgvc_aircraft.split_parts(data[field])
    except ValueError as e:
      _fail(field, str(e).rstrip("."), "use train, val, trainval or test, or a '+' join")
    needed += [root / f"images_variant_{p}.txt" for p in parts]
  missing = [str(p) for p in needed if not p.exists()]
  if missing:
    _fail("path", f"FGVC-Aircraft files missing: {missing}", download)


def _check_tfds(data: ml_collections.ConfigDict, needs_masks: bool) -> None:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  from relic.data.tfds_source import DatasetMissingError, TfdsSource  # pylint: disable=import-outside-toplevel
  try:
    source = TfdsSource(data)
  except tfds.core.DatasetNotFoundError as e:
    _fail("dataset", f"no tfds dataset named {data.dataset!r} ({str(e).splitlines()[0]})",
          "use a name from the tfds catalog (https://www.tensorflow.org/datasets/catalog), "
          "e.g. 'imagenet2012' or 'cifar10'")
  for field in ("train_split", "eval_split"):
    try:
      source.as_dataset(data[field])
    except DatasetMissingError as e:
      raise ConfigError(f"config.data.dataset: {e}") from None
    except (ValueError, KeyError) as e:
      _fail(field, f"split {data[field]!r} of {data.dataset!r} cannot be read ({e})",
            f"use one of {list(source.split_names())}, tfds slicing allowed")
  if needs_masks and not source.has_file_names:
    _fail("mask_path", f"tfds dataset {data.dataset!r} has no 'file_name' feature to match "
          "masks by", "set config.data.mask_prob=0 or use source='folder'")
