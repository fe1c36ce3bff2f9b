"""The robustness job's out-of-distribution test sets by tfds name, plus the built-in one [recon].

ImageNet suite (labels in the 1000-class ImageNet order in every one of them):
  * ImageNet-V2, three variants: ``imagenet_v2/matched-frequency``, ``threshold-0.7``,
    ``topimages`` (split 'test', 10,000 images each).
  * ImageNet-R: ``imagenet_r`` ('test', 30,000 renditions of 200 classes): predictions are
    restricted to those 200 classes (relic/evaluators/class_subsets.py).
  * ImageNet-Sketch: ``imagenet_sketch`` ('test', 50,889 sketches, all 1000 classes).
  * ImageNet-C: ``imagenet2012_corrupted/<corruption>_<severity>`` ('validation', 50,000 each),
    the 15 benchmark corruptions x severities 1-5; reported per corruption (mean over
    severities) and as the mean over all. tfds stores these already centre-cropped to 224 px;
    the evaluation transform (centre 224/256 crop, resize) is applied on top, as for every set.
  * ObjectNet: not in tfds; ``config.robustness.objectnet_path`` points at the unpacked
    objectnet-1.0 folder (relic/data/objectnet.py). Scored on its 113 classes that overlap
    ImageNet, each class taking the highest logit of its ImageNet classes. Part of the default
    suite when the path is set.

Built-in dataset: its 'test' split (same distribution as training) and 'test_ood' (background
textures never seen in training), scored with the same head.
"""

from __future__ import annotations

import copy
import dataclasses

from absl import logging

from relic.errors import ConfigError

IMAGENET_C_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform",
    "pixelate", "jpeg_compression")
IMAGENET_C_EXTRA = ("gaussian_blur", "saturate", "spatter", "speckle_noise")


@dataclasses.dataclass(frozen=True)
class TestSet:
  name: str
  dataset: str            # tfds name; '' = config.data.dataset (same source)
  split: str
  class_subset: str = ""  # relic.evaluators.class_subsets name, '' = all classes
  group: str = ""         # results are also averaged per group (ImageNet-C corruption)
  source: str = ""        # a non-tfds source ('objectnet'), read from its config path
  class_groups: str = ""  # relic.evaluators.class_subsets.CLASS_GROUPS name: own label space


IMAGENET_SETS = {s.name: s for s in (
    TestSet("imagenet_v2_matched_frequency", "imagenet_v2/matched-frequency", "test"),
    TestSet("imagenet_v2_threshold_0.7", "imagenet_v2/threshold-0.7", "test"),
    TestSet("imagenet_v2_topimages", "imagenet_v2/topimages", "test"),
    TestSet("imagenet_r", "imagenet_r", "test", class_subset="imagenet_r"),
    TestSet("imagenet_sketch", "imagenet_sketch", "test"),
)}
OBJECTNET = TestSet("objectnet", "", "test", source="objectnet", class_groups="objectnet")
BUILTIN_SUITE = ("test", "test_ood")
IMAGENET_SUITE = (*IMAGENET_SETS, "imagenet_c", "objectnet")


def imagenet_c_sets(corruptions, severities) -> list[TestSet]:
  known = IMAGENET_C_CORRUPTIONS + IMAGENET_C_EXTRA
  for c in corruptions:
    if c not in known:
      raise ConfigError(f"config.robustness.corruptions: unknown corruption {c!r}. Fix: choose "
                        f"from {list(known)}.")
  for s in severities:
    if s not in (1, 2, 3, 4, 5):
      raise ConfigError(f"config.robustness.severities: {s} is not in 1..5.")
  return [TestSet(f"imagenet_c/{c}_{s}", f"imagenet2012_corrupted/{c}_{s}", "validation",
                  group=f"imagenet_c/{c}") for c in corruptions for s in severities]


def resolve(config) -> list[TestSet]:
  """The test sets of ``config.robustness.datasets`` (or of the source's default suite)."""
  r = config.robustness
  entries = [p.strip() for e in r.datasets for p in str(e).split(",") if p.strip()]
  if not entries:
    entries = list(BUILTIN_SUITE if config.data.source == "builtin" else IMAGENET_SUITE)
    if "objectnet" in entries and not r.objectnet_path:
      entries.remove("objectnet")
      logging.warning("ObjectNet is left out of the robustness suite: it is not in tfds. Set "
                      "config.robustness.objectnet_path=DIR (the unpacked objectnet-1.0 folder) "
                      "to include it.")
  sets: list[TestSet] = []
  for entry in entries:
    if entry in IMAGENET_SETS:
      sets.append(IMAGENET_SETS[entry])
    elif entry == "objectnet":
      if not r.objectnet_path:
        raise ConfigError("config.robustness.datasets names 'objectnet' but "
                          "config.robustness.objectnet_path is empty. Fix: download ObjectNet "
                          "1.0 from objectnet.dev, unpack it and pass "
                          "--config.robustness.objectnet_path=DIR (the folder holding images/).")
      sets.append(OBJECTNET)
    elif entry == "imagenet_c":
      sets += imagenet_c_sets(tuple(r.corruptions) or IMAGENET_C_CORRUPTIONS,
                              tuple(r.severities))
    elif entry in BUILTIN_SUITE and config.data.source == "builtin":
      sets.append(TestSet(entry, "", entry))
    elif ":" in entry:
      dataset, split = entry.rsplit(":", 1)
      sets.append(TestSet(entry, dataset, split))
    else:
      raise ConfigError(
          f"config.robustness.datasets: unknown test set {entry!r}. Fix: use one of "
          f"{list(IMAGENET_SUITE)}, 'dataset:split' (dataset '' = config.data.dataset), or for "
          f"the built-in source {list(BUILTIN_SUITE)}.")
  return sets


def set_config(config, test_set: TestSet):
  """A copy of ``config`` whose eval split is the test set."""
  out = copy.deepcopy(config)
  if test_set.source == "objectnet":
    out.data.source = "objectnet"
    out.data.path = config.robustness.objectnet_path
  elif test_set.dataset:
    out.data.source = "tfds"
    out.data.dataset = test_set.dataset
  out.data.eval_split = test_set.split
  out.data.mask_prob = 0.0
  return out
