"""The transfer suite (BYOL's / SimCLR's twelve datasets [recon]) by tfds name, and how each is
scored.

The paper's twelve datasets, mapped to what tfds 4.9 provides (``tensorflow_datasets/
image_classification``, ``datasets/``):

  ============  =====================  ==================  ==================================
  paper         tfds                   splits (fit/test)   note
  ============  =====================  ==================  ==================================
  Food-101      food101                train / validation  tfds's 'validation' is the test set
  CIFAR-10      cifar10                train / test
  CIFAR-100     cifar100               train / test
  Birdsnap      caltech_birds2011      train / test        substitute: Birdsnap is not in tfds
  SUN397        sun397/tfds            train / test        tfds's standard partition
  Stanford Cars cars196                train / test
  FGVC Aircraft (none)                 train+val / test    not in tfds: 'fgvc_aircraft:PATH'
                                                           (relic/data/fgvc_aircraft.py)
  VOC2007       voc/2007               train+validation /  multi-label: 11-point mAP
                                       test
  DTD           dtd                    train+validation /  split 1
                                       test
  Oxford Pets   oxford_iiit_pet        train / test        mean per-class accuracy
  Caltech-101   caltech101             train / test        tfds's fixed 30-per-class train
  Flowers-102   oxford_flowers102      train+validation /  mean per-class accuracy
                                       test
  ============  =====================  ==================  ==================================

Hyper-parameters (the linear protocol's L2 strength, the fine-tune protocol's rate when
``finetune.lr_grid`` is swept) are chosen as in SimCLR's transfer appendix: on the validation
split the dataset's authors specify for VOC2007, DTD, Flowers-102 and FGVC Aircraft (fit on
'train', score on 'validation', then refit on 'train+validation' and report 'test';
``holdout_split``), and on an image folder's ``val/`` when it has one next to ``train/`` and
``test/``; else on a part of the train split held out at random (linear) or as a prefix
(fine-tune).

Scoring follows the literature (SimCLR / BYOL transfer tables): mean per-class accuracy for
Pets, Caltech-101, Flowers-102 and Aircraft, top-1 for the others; both are always reported.
VOC2007 is multi-label (the classes present in an image): 11-point mAP of one-vs-rest logistic
regression or of a fine-tuned one-vs-rest head (relic/evaluators/multilabel.py), "difficult"-only
classes ignored as in the devkit. Selection uses each dataset's metric.
"""

from __future__ import annotations

import copy
import dataclasses
import pathlib

from relic.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TransferDataset:
  name: str
  source: str            # 'tfds', 'folder' or 'fgvc_aircraft'
  dataset: str           # tfds name, or the dataset's folder
  train_split: str
  test_split: str
  metric: str = "top1"   # the number the literature reports: 'top1', 'mean_per_class', 'map11'
  note: str = ""
  holdout_split: str = ""  # the official validation split (a part of train_split) that
                           # scores hyper-parameters; '' = hold out a part of train_split


TRANSFER_DATASETS: dict[str, TransferDataset] = {d.name: d for d in (
    TransferDataset("food101", "tfds", "food101", "train", "validation"),
    TransferDataset("cifar10", "tfds", "cifar10", "train", "test"),
    TransferDataset("cifar100", "tfds", "cifar100", "train", "test"),
    TransferDataset("caltech_birds2011", "tfds", "caltech_birds2011", "train", "test",
                    note="substitute for Birdsnap (not in tfds)"),
    TransferDataset("sun397", "tfds", "sun397/tfds", "train", "test"),
    TransferDataset("cars196", "tfds", "cars196", "train", "test"),
    TransferDataset("dtd", "tfds", "dtd", "train+validation", "test", holdout_split="validation"),
    TransferDataset("oxford_iiit_pet", "tfds", "oxford_iiit_pet", "train", "test",
                    metric="mean_per_class"),
    TransferDataset("caltech101", "tfds", "caltech101", "train", "test", metric="mean_per_class"),
    TransferDataset("oxford_flowers102", "tfds", "oxford_flowers102", "train+validation", "test",
                    metric="mean_per_class", holdout_split="validation"),
    TransferDataset("voc2007", "tfds", "voc/2007", "train+validation", "test", metric="map11",
                    note="multi-label (trainval / test)", holdout_split="validation"),
    # No download: the built-in shapes dataset, for runlocal checks of the whole job.
    TransferDataset("builtin", "builtin", "builtin", "train", "test"),
)}
# Paper datasets that cannot be read by name, with what to do instead.
UNAVAILABLE = {
    "birdsnap": "Birdsnap is not in tfds; use 'caltech_birds2011' (CUB-200-2011, the usual "
                "substitute) or an image folder as 'folder:/path/to/birdsnap'",
    "fgvc_aircraft": "FGVC Aircraft is not in tfds; download fgvc-aircraft-2013b from "
                     "robots.ox.ac.uk/~vgg/data/fgvc-aircraft, unpack it and use "
                     "'fgvc_aircraft:/path/to/fgvc-aircraft-2013b'",
}


def image_folder(path: str) -> TransferDataset:
  """An image folder with ``train/`` and ``test/`` split folders. If it also has ``val/`` (or
  ``validation/``), that official validation split scores the hyper-parameters and the final
  fit uses train+val, as for the tfds datasets that have one; else a part of train does."""
  name = path.rstrip("/").rsplit("/", 1)[-1] or "folder"
  root = pathlib.Path(path).expanduser()
  val = next((v for v in ("val", "validation") if (root / v).is_dir()), "")
  if val and (root / "test").is_dir():
    return TransferDataset(name, "folder", path, f"train+{val}", "test", holdout_split=val)
  return TransferDataset(name, "folder", path, "train", "test")


def aircraft(path: str) -> TransferDataset:
  """FGVC Aircraft (variants) read from its download folder: SimCLR's protocol, hyper-parameters
  chosen on 'val', the final fit on 'train+val', mean per-class accuracy on 'test'."""
  return TransferDataset("fgvc_aircraft", "fgvc_aircraft", path, "train+val", "test",
                         metric="mean_per_class", holdout_split="val")


def expand(entries) -> list[str]:
  """Config entries -> names; ``'a,b'`` (one command-line string) counts as two entries."""
  return [part.strip() for entry in entries for part in str(entry).split(",") if part.strip()]


def resolve(entry: str) -> TransferDataset:
  """A registry name, ``'fgvc_aircraft:PATH'``, ``'tfds_name:train_split:test_split'`` or
  ``'folder:PATH'``."""
  if entry in TRANSFER_DATASETS:
    return TRANSFER_DATASETS[entry]
  name, _, path = entry.partition(":")
  if name in UNAVAILABLE and not (name == "fgvc_aircraft" and path):
    raise ConfigError(f"config.transfer.datasets: {UNAVAILABLE[name]}.")
  if name == "fgvc_aircraft":
    return aircraft(path)
  if entry.startswith("folder:"):
    return image_folder(entry[len("folder:"):])
  parts = entry.split(":")
  if len(parts) == 3 and all(parts):
    return TransferDataset(parts[0].replace("/", "_"), "tfds", *parts)
  raise ConfigError(
      f"config.transfer.datasets: unknown dataset {entry!r}. Fix: use one of "
      f"{sorted(TRANSFER_DATASETS)}, 'fgvc_aircraft:PATH', 'tfds_name:train_split:test_split' "
      "or 'folder:PATH'.")


def dataset_config(config, dataset: TransferDataset):
  """A copy of ``config`` that reads ``dataset`` (its splits as train and eval split)."""
  out = copy.deepcopy(config)
  out.data.source = dataset.source
  if dataset.source in ("folder", "fgvc_aircraft"):
    out.data.path = dataset.dataset
  elif dataset.source == "tfds":
    out.data.dataset = dataset.dataset
  out.data.train_split = dataset.train_split
  out.data.eval_split = dataset.test_split
  out.data.mask_prob = 0.0  # evaluation reads no saliency masks
  if dataset.holdout_split:
    out.finetune.holdout_split = dataset.holdout_split
  return out
