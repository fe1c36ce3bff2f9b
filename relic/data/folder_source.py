"""``config.data.source='folder'``: a directory of image files.

Layout (``config.data.path = DIR``):
  * Splits: if ``DIR/<split>`` exists (``train``, ``val``...; 'validation' and 'val' stand in
    for each other) that folder is the split, else the whole of ``DIR`` serves every split.
    tfds slicing works on top. A split's files are stored in a fixed pseudo-random order
    (:func:`relic.data.sources.stored_order` of their paths below the split folder), as tfds
    stores a prepared split shuffled: ``train[:10000]`` is 10,000 files drawn from every class,
    not the first class folders. '+' joins whole splits: ``train+val`` is train's, then val's.
  * Labels: the sorted names of the sub-folders of the *training* split's folder are the
    classes (ImageNet's ``train/n01440764/*.JPEG`` layout). A file's label is the index of the
    first folder on its path below the split folder; files directly in the split folder, or
    under a folder that is not a training class, get label -1. No sub-folders: no classes.
  * Formats: anything ``tf.io.decode_image`` reads (JPEG, PNG, GIF, BMP, WebP) plus what Pillow
    reads (TIFF...), converted once into the cache; unreadable files, files too large for the
    training decoder and what is not a regular file (a named pipe, a socket, a device) are
    skipped (counted in the log). See relic/data/image_check.py.
  * Links: links to files and folders are followed (a dataset may be a tree of links), each real
    file counted once, under the first path met (depth first, in name order). A directory link
    that points into the split folder (its files are listed under their own names already) or
    at a folder that holds the split (a loop) is not followed, so a link loop can neither
    multiply the data nor hang the listing; nor is a folder entered twice (two links to one
    folder outside the split).
  * Saliency masks (``config.data.mask_path = MASKDIR``): the mask of ``DIR/a/b/x.jpg`` is
    ``MASKDIR/a/b/x.<any image extension>``, matched by stem; grayscale, 255 = foreground,
    any size (resized to the image). An image without a mask is used unmasked (counted in the
    log).
"""

from __future__ import annotations

import os
import pathlib
from typing import Iterator

import ml_collections
import numpy as np
from absl import logging

from relic.data.lazy_tf import tf
from relic.data import builtin, decode, image_check, sources, splits

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp",
                              ".tif", ".tiff"})


def _is_image_name(name: str) -> bool:
  return pathlib.PurePath(name).suffix.lower() in IMAGE_EXTENSIONS


def _within(path: str, folder: str) -> bool:
  """Whether ``path`` is ``folder`` or below it (both real paths)."""
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _enters(link: str, top: str) -> bool:
  """Whether a listing of the folder whose real path is ``top`` follows the directory link
  ``link``: not into ``top`` (its files are listed under their own names) nor to a folder that
  holds ``top`` (a loop)."""
  target = os.path.realpath(link)
  return not (_within(target, top) or _within(top, target))


def _is_dir(entry: os.DirEntry) -> bool:
  try:
    return entry.is_dir()
  except OSError:                     # e.g. a link that loops onto itself
    return False


def iter_images(folder: pathlib.Path) -> Iterator[pathlib.Path]:
  """The image files below ``folder`` by name (a broken link, a pipe named x.jpg included: the
  up-front check skips them), depth first in name order; links followed as the module docstring
  says. Lazy: the start-up check stops at the first."""
  top = os.path.realpath(folder)
  entered: set[tuple[int, int]] = set()    # (device, inode) of every folder listed
  # Real paths of the files met through a link or outside ``top``: the only ones that can be met
  # twice (a file inside is met once, under its own path, as links into ``top`` are not taken).
  met: set[str] = set()
  pending = [(str(folder), top)]           # (path, real path) of the folders to list
  while pending:
    directory, real_directory = pending.pop()
    try:
      status = os.stat(directory)
      if (status.st_dev, status.st_ino) in entered:
        continue
      entered.add((status.st_dev, status.st_ino))
      with os.scandir(directory) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    except OSError:                        # unreadable: skipped, as os.walk does
      continue
    subfolders = []
    for entry in entries:
      linked = entry.is_symlink()
      if _is_dir(entry):
        if not linked:
          subfolders.append((entry.path, os.path.join(real_directory, entry.name)))
        elif _enters(entry.path, top):
          subfolders.append((entry.path, os.path.realpath(entry.path)))
      elif _is_image_name(entry.name):
        real = os.path.realpath(entry.path) if linked else os.path.join(real_directory, entry.name)
        if linked and _within(real, top) and _is_image_name(real) and os.path.exists(real):
          continue                         # listed under its own name
        if linked or not _within(real, top):
          if real in met:
            continue
          met.add(real)
        yield pathlib.Path(entry.path)
    pending.extend(reversed(subfolders))


def list_images(folder: pathlib.Path) -> list[pathlib.Path]:
  """All image files below ``folder`` (:func:`iter_images`), sorted by path."""
  return sorted(iter_images(folder))


def subfolders(folder: pathlib.Path) -> list[pathlib.Path]:
  """The folders directly below ``folder`` that :func:`iter_images` enters, sorted by name."""
  top = os.path.realpath(folder)
  return sorted(d for d in folder.iterdir()
                if d.is_dir() and (not d.is_symlink() or _enters(str(d), top)))


def mask_index(mask_root: pathlib.Path, cache: pathlib.Path) -> dict[str, str]:
  """The readable mask files below ``mask_root`` by relative path without extension
  ('train/n01/x'), each mapped to the file to read (converted in ``cache`` when needed)."""
  files = list_images(mask_root)
  usable = image_check.validate([str(f) for f in files], cache, f"masks under {mask_root}")
  return {str(f.relative_to(mask_root).with_suffix("")): usable[str(f)]
          for f in files if usable[str(f)]}


class FolderSource(sources.Source):
  """Images (and optional masks) from folders; see the module docstring for the layout."""

  mask_layout = "mirrors the image folder: the mask of DIR/a/b/x.jpg is MASKDIR/a/b/x.png"

  def __init__(self, data: ml_collections.ConfigDict):
    self.root = pathlib.Path(data.path).expanduser()
    self.mask_root = pathlib.Path(data.mask_path).expanduser() if data.mask_path else None
    self._cache = builtin.cache_root(data.cache_dir)
    self._train_split = data.train_split
    self._listings: dict[tuple[str, bool], dict[str, np.ndarray]] = {}

  @classmethod
  def check(cls, data: ml_collections.ConfigDict) -> None:
    sources.check_with_mask_folder(data, cls._check_files)

  @classmethod
  def _check_files(cls, data: ml_collections.ConfigDict) -> None:
    sources.require_path(data, "image folder", "set config.data.path=DIR (a folder of images, "
                         "optionally in class sub-folders)")
    source = cls(data)
    if not source.root.is_dir():
      sources.fail("path", f"image folder {str(source.root)!r} not found",
                   "point it to an existing folder")
    for field in ("train_split", "eval_split"):
      try:
        names = [splits.parse(part)[0] for part in splits.parts(data[field])]
      except ValueError as e:
        sources.fail(field, str(e).rstrip("."), "use NAME, NAME[start:stop] or NAME+NAME")
      for name in names:
        folder = source.split_dir(name)
        if next(iter_images(folder), None) is None:
          sources.fail("path", f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under "
                       f"{str(folder)!r} for config.data.{field}={data[field]!r}",
                       "put images there (class sub-folders optional) or fix the path/split")

  def _is_split_folder(self, folder: pathlib.Path) -> bool:
    """A folder below the root; a link counts unless it points at the root or above (a split
    holding the other splits)."""
    return folder.is_dir() and not (folder.is_symlink() and _within(
        os.path.realpath(self.root), os.path.realpath(folder)))

  def split_dir(self, name: str) -> pathlib.Path:
    present = (tuple(d.name for d in self.root.iterdir() if self._is_split_folder(d))
               if self.root.is_dir() else ())
    resolved = splits.resolve_name(name, present)
    return self.root / resolved if resolved else self.root

  def split_names(self) -> tuple[str, ...]:
    names = [n for n in ("train", "val", "validation", "test")
             if self._is_split_folder(self.root / n)]
    return tuple(names) or ("train",)

  def classes(self) -> list[str]:
    """The training split's class folders: those its listing enters (see the module docstring)."""
    train_dir = self.split_dir(splits.parse(splits.parts(self._train_split)[0])[0])
    return [d.name for d in subfolders(train_dir)] if train_dir.is_dir() else []

  def num_classes(self) -> int:
    return len(self.classes())

  def _listing(self, name: str, with_masks: bool) -> dict[str, np.ndarray]:
    """Validated files of a split: 'path', 'label', and 'mask_path' ('' = no mask)."""
    if (name, with_masks) in self._listings:
      return self._listings[(name, with_masks)]
    folder = self.split_dir(name)
    files = self.image_files(folder)
    usable = image_check.validate([str(f) for f in files], self._cache, f"images under {folder}")
    class_index = {c: i for i, c in enumerate(self.classes())}
    names, paths, labels, masks, mask_names = [], [], [], [], []
    mask_files = mask_index(self.mask_root, self._cache) if with_masks else {}
    for f in files:
      if not usable[str(f)]:
        continue
      parts = f.relative_to(folder).parts
      names.append("/".join(parts))
      paths.append(usable[str(f)])
      labels.append(class_index.get(parts[0], -1) if len(parts) > 1 else -1)
      mask_names.append(str(f.relative_to(self.root).with_suffix("")))
      masks.append(mask_files.get(mask_names[-1], ""))
    if with_masks:
      missing = sum(1 for m in masks if not m)
      if missing:
        logging.warning("%d of %d images under %s have no (readable) mask under %s; they are "
                        "used unmasked.", missing, len(paths), folder, self.mask_root)
    order = sources.stored_order(names)
    listing = dict(path=np.array(paths, dtype=object)[order],
                   label=np.array(labels, np.int32)[order],
                   mask_path=np.array(masks, dtype=object)[order],
                   name=np.array(names, dtype=object)[order],
                   mask_name=np.array(mask_names, dtype=object)[order])
    self._listings[(name, with_masks)] = listing
    return listing

  def image_files(self, folder: pathlib.Path) -> list[pathlib.Path]:
    """The split's image files, sorted (every image below the split folder)."""
    return list_images(folder)

  def load_row(self, row) -> dict[str, tf.Tensor]:
    """A listing row -> 'image' and 'label'."""
    return {"image": decode.decode_image(tf.io.read_file(row["path"])), "label": row["label"]}

  def num_examples(self, split: str) -> int:
    return len(splits.select(split, lambda name: self._listing(name, False))["path"])

  def example_names(self, split: str) -> np.ndarray:
    """Each example's path below its split folder ('n01440764/n01440764_10026.JPEG'), in the
    stored order (the index of an example in ``split``)."""
    return splits.select(split, lambda name: self._listing(name, False))["name"].astype(str)

  def reader(self, split: str, *, process_index: int, process_count: int,
             with_masks: bool) -> sources.Reader:
    listing = splits.select(split, lambda name: self._listing(name, with_masks))
    size = len(listing["path"])
    index = sources.share(size, process_index, process_count)
    columns = {"path": listing["path"][index].astype(str), "label": listing["label"][index],
               "mask_name": listing["mask_name"][index].astype(str)}
    if with_masks:
      columns["mask_path"] = listing["mask_path"][index].astype(str)
    return sources.IndexedReader(columns, size, self.load_row,
                                 _read_mask if with_masks else None)


def _read_mask(row, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  return decode.read_mask(row["mask_path"], height, width)
