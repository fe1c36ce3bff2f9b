"""``config.data.source='fgvc_aircraft'``: FGVC-Aircraft 2013b in its download layout.

FGVC-Aircraft (Maji et al., 2013) is not in tfds. ``config.data.path`` is the unpacked
``fgvc-aircraft-2013b`` folder (or its ``data/`` folder), as downloaded from
robots.ox.ac.uk/~vgg/data/fgvc-aircraft:
  * ``data/images/<7-digit id>.jpg``;
  * ``data/variants.txt``: the 100 variant names, one per line (the classes, in that order);
  * ``data/images_variant_<split>.txt``: ``<id> <variant name>`` per line, for the splits
    ``train``, ``val``, ``trainval`` and ``test`` (3,334 / 3,333 / 6,667 / 3,333 images).
    Variant names contain spaces and slashes ('F/A-18'), so they cannot be folder names.

Splits: those four ('validation' means 'val'), tfds slicing (``test[:100]``: the annotation
files list images by variant, so a split is stored in the fixed pseudo-random order of
:func:`relic.data.sources.stored_order`, and a slice samples every variant), and '+' joins of
whole splits (``train+val``), which the transfer protocol uses to choose hyper-parameters on
'val' and then train on both. The bottom 20 rows of every image are a copyright banner that
the dataset's README asks users to remove; :data:`BANNER_ROWS` are cut before any crop. The
benchmark's metric is the mean per-class accuracy (the average of the confusion matrix's
diagonal), on the variant level.
"""

from __future__ import annotations

import pathlib

import ml_collections
import numpy as np

from relic.data.lazy_tf import tf
from relic.data import builtin, decode, image_check, sources, splits

BANNER_ROWS = 20
SPLITS = ("train", "val", "trainval", "test")


def data_root(path: str) -> pathlib.Path:
  """The folder holding ``variants.txt`` and ``images/``: ``PATH/data`` if it exists, else PATH."""
  root = pathlib.Path(path).expanduser()
  return root / "data" if (root / "data").is_dir() else root


def split_parts(split: str) -> list[str]:
  """The split names of ``split`` ('train+val' -> ['train', 'val']), aliases resolved."""
  names = []
  for part in splits.parts(split):
    name = splits.parse(part)[0]
    resolved = splits.resolve_name(name, SPLITS)
    if resolved is None:
      raise ValueError(f"FGVC-Aircraft has no split {name!r}; it has {SPLITS} ('validation' "
                       "means 'val'), and '+' joins them.")
    names.append(resolved)
  return names


class AircraftSource(sources.Source):
  """FGVC-Aircraft variants; see the module docstring."""

  def __init__(self, data: ml_collections.ConfigDict):
    self.root = data_root(data.path)
    self._cache = builtin.cache_root(data.cache_dir)
    self._listings: dict[str, dict[str, np.ndarray]] = {}

  @classmethod
  def check(cls, data: ml_collections.ConfigDict) -> None:
    sources.check_with_mask_folder(data, cls._check_files)

  @classmethod
  def _check_files(cls, data: ml_collections.ConfigDict) -> None:
    download = ("point it to the unpacked fgvc-aircraft-2013b folder (the one holding data/), as "
                "downloaded from robots.ox.ac.uk/~vgg/data/fgvc-aircraft")
    sources.require_path(data, "FGVC-Aircraft folder", download)
    root = data_root(data.path)
    needed = [root / "variants.txt", root / "images"]
    for field in ("train_split", "eval_split"):
      try:
        parts = split_parts(data[field])
      except ValueError as e:
        sources.fail(field, str(e).rstrip("."), "use train, val, trainval or test, or a '+' join")
      needed += [root / f"images_variant_{p}.txt" for p in parts]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
      sources.fail("path", f"FGVC-Aircraft files missing: {missing}", download)

  def classes(self) -> list[str]:
    return [line.strip() for line in (self.root / "variants.txt").read_text().splitlines()
            if line.strip()]

  def num_classes(self) -> int:
    return len(self.classes())

  def split_names(self) -> tuple[str, ...]:
    return SPLITS

  def _listing(self, name: str) -> dict[str, np.ndarray]:
    """Readable images of one split: 'path' and 'label'."""
    name = split_parts(name)[0]   # the alias resolved, e.g. 'validation' -> 'val'
    if name not in self._listings:
      index = {c: i for i, c in enumerate(self.classes())}
      annotations = self.root / f"images_variant_{name}.txt"
      paths, labels = [], []
      for number, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
          continue
        image_id, _, variant = line.strip().partition(" ")
        if variant not in index:
          raise ValueError(f"{annotations}:{number}: variant {variant!r} is not in "
                           f"{self.root / 'variants.txt'}; the annotation files do not match.")
        paths.append(str(self.root / "images" / f"{image_id}.jpg"))
        labels.append(index[variant])
      usable = image_check.validate(paths, self._cache, f"FGVC-Aircraft {name} images")
      keep = [i for i, p in enumerate(paths) if usable[p]]
      # The annotation files list images by variant: store them shuffled (see stored_order).
      keep = [keep[i] for i in sources.stored_order([pathlib.Path(paths[i]).stem for i in keep])]
      self._listings[name] = {"path": np.array([usable[paths[i]] for i in keep], dtype=object),
                              "label": np.array([labels[i] for i in keep], np.int32),
                              "name": np.array([pathlib.Path(paths[i]).name for i in keep],
                                               dtype=object)}
    return self._listings[name]

  def _columns(self, split: str) -> dict[str, np.ndarray]:
    split_parts(split)            # every part is a split of the dataset
    return splits.select(split, self._listing)

  def num_examples(self, split: str) -> int:
    return len(self._columns(split)["path"])

  def example_names(self, split: str) -> np.ndarray:
    """Each example's file name ('1025794.jpg') in stored order."""
    return self._columns(split)["name"].astype(str)

  def reader(self, split: str, *, process_index: int, process_count: int,
             with_masks: bool) -> sources.Reader:
    if with_masks:
      raise ValueError("FGVC-Aircraft has no saliency masks; set config.data.mask_prob=0.")
    columns = self._columns(split)
    index = sources.share(len(columns["path"]), process_index, process_count)
    return sources.IndexedReader({"path": columns["path"][index].astype(str),
                                  "label": columns["label"][index]},
                                 len(columns["path"]), _read_image)


def _read_image(row) -> dict[str, tf.Tensor]:
  return {"image": remove_banner(decode.decode_image(tf.io.read_file(row["path"]))),
          "label": row["label"]}


def remove_banner(image: tf.Tensor) -> tf.Tensor:
  """``image`` without its bottom :data:`BANNER_ROWS` rows (unchanged if that leaves nothing)."""
  height = tf.shape(image)[0]
  return tf.cond(height > BANNER_ROWS, lambda: image[:height - BANNER_ROWS], lambda: image)
