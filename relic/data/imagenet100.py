"""ImageNet-100: the 100 ImageNet classes of solo-learn's ``imagenet100`` split, as an image folder.

``CLASSES`` is solo-learn's list (``solo/data/dataset_subset/imagenet100_classes.txt`` and
``scripts/utils/make_imagenet100.py`` in github.com/vturrisi/solo-learn, the class list of CMC,
Tian et al. 2019), in that file's order. The dataset is the full ImageNet train and validation
images of those classes: about 1,300 training images per class and exactly 50 validation ones
(5,000). As solo-learn does, it is built once as a folder of links to the class folders of an
ImageNet folder (here: a real folder per class holding a link per image, so that every tool
that walks folders without following directory links sees the images), then read with
``config.data.source='folder'``::

  python -m relic.data.imagenet100 --imagenet=/data/imagenet --out=/data/imagenet100

``--imagenet`` holds ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (the usual PyTorch
layout; the validation archive unpacks flat, and its images are sorted into class folders by
the widely used ``valprep.sh``). ``--copy`` copies the files instead of linking them.
The folder source labels classes by their sorted folder names, so label ``i`` is the ``i``-th
wnid of ``sorted(CLASSES)``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil

CLASSES: tuple[str, ...] = tuple("""
    n02869837 n01749939 n02488291 n02107142 n13037406 n02091831 n04517823 n04589890 n03062245 n01773797
    n01735189 n07831146 n07753275 n03085013 n04485082 n02105505 n01983481 n02788148 n03530642 n04435653
    n02086910 n02859443 n13040303 n03594734 n02085620 n02099849 n01558993 n04493381 n02109047 n04111531
    n02877765 n04429376 n02009229 n01978455 n02106550 n01820546 n01692333 n07714571 n02974003 n02114855
    n03785016 n03764736 n03775546 n02087046 n07836838 n04099969 n04592741 n03891251 n02701002 n03379051
    n02259212 n07715103 n03947888 n04026417 n02326432 n03637318 n01980166 n02113799 n02086240 n03903868
    n02483362 n04127249 n02089973 n03017168 n02093428 n02804414 n02396427 n04418357 n02172182 n01729322
    n02113978 n03787032 n02089867 n02119022 n03777754 n04238763 n02231487 n03032252 n02138441 n02104029
    n03837869 n03494278 n04136333 n03794056 n03492542 n02018207 n04067472 n03930630 n03584829 n02123045
    n04229816 n02100583 n03642806 n04336792 n03259280 n02116738 n02108089 n03424325 n01855672 n02090622
""".split())
SPLITS = ("train", "val")
VAL_IMAGES = 5_000  # 50 per class


def make_folder(imagenet: str | os.PathLike, out: str | os.PathLike, *,
                copy: bool = False) -> pathlib.Path:
  """Builds ``out/{train,val}/<wnid>/`` for the 100 classes from ``imagenet/{train,val}/<wnid>/``:
  a link to each image (a copy with ``copy``). Existing entries are kept, so an interrupted
  build can be rerun.

  Raises:
    FileNotFoundError: naming the missing split or class folders of ``imagenet``.
  """
  source, target = pathlib.Path(imagenet).expanduser(), pathlib.Path(out).expanduser()
  missing = [f"{split}/{wnid}" for split in SPLITS for wnid in CLASSES
             if not (source / split / wnid).is_dir()]
  if missing:
    raise FileNotFoundError(
        f"{len(missing)} ImageNet class folder(s) missing under {source}, e.g. "
        f"{', '.join(missing[:5])}. --imagenet must hold train/<wnid>/ and val/<wnid>/ (sort "
        "the flat validation images into class folders first, e.g. with valprep.sh).")
  for split in SPLITS:
    for wnid in CLASSES:
      folder = target / split / wnid
      folder.mkdir(parents=True, exist_ok=True)
      for entry in os.scandir((source / split / wnid).resolve()):
        dst = folder / entry.name
        if not entry.is_file() or dst.is_symlink() or dst.exists():
          continue
        if copy:
          shutil.copy2(entry.path, dst)
        else:
          dst.symlink_to(entry.path)
  return target


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--imagenet", required=True, help="ImageNet folder with train/ and val/.")
  parser.add_argument("--out", required=True, help="Where to build the ImageNet-100 folder.")
  parser.add_argument("--copy", action="store_true", help="Copy the images instead of linking.")
  args = parser.parse_args(argv)
  out = make_folder(args.imagenet, args.out, copy=args.copy)
  print(f"ImageNet-100 ({len(CLASSES)} classes) in {out}: use --config.data.path={out}")


if __name__ == "__main__":
  main()
