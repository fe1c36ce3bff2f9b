"""Evaluation building blocks: class subsets, label subsets, exact counts, side-by-side heads,
VOC2007 average precision and the multi-label linear evaluation."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from relic import config as config_lib
from relic import parallel
from relic.errors import ConfigError
from relic.data import objectnet_classes, sources
from relic.evaluators import accuracy, class_subsets, label_subsets
from relic.train import heads_step as linear_heads
from relic.evaluators import linear, multilabel
from relic.checkpoints import pretrained
from relic.data import robustness_sets, transfer_datasets
from relic.train import finetune
from relic.jobs import robustness


def test_imagenet_r_classes_match_the_imagenet_label_order():
  from tensorflow_datasets.datasets.imagenet2012 import imagenet_common
  with open(imagenet_common.label_names_file()) as f:
    wnids = f.read().split()
  assert len(wnids) == 1000
  assert len(class_subsets.IMAGENET_R_WNIDS) == 200 == len(set(class_subsets.IMAGENET_R_WNIDS))
  assert list(class_subsets.IMAGENET_R_INDICES) == [wnids.index(w) for w in
                                                    class_subsets.IMAGENET_R_WNIDS]
  # Spot checks against hendrycks/imagenet-r: goldfish (1) is in, tench (0) is not.
  assert class_subsets.IMAGENET_R_INDICES[:3] == (1, 2, 4)
  assert 0 not in class_subsets.IMAGENET_R_INDICES


def test_objectnet_classes_name_the_right_imagenet_classes():
  """Every index of the ObjectNet table names, in torchvision's ImageNet category list (the
  sorted-wnid order of tfds's labels), the ImageNet class ObjectNet's mapping file gives."""
  pytest.importorskip("torchvision")
  from torchvision.models._meta import _IMAGENET_CATEGORIES
  table = objectnet_classes.OBJECTNET_TO_IMAGENET
  assert len(table) == 113 and objectnet_classes.CLASSES == tuple(sorted(table))
  for folder, classes in table.items():
    for index, name in classes:
      assert _IMAGENET_CATEGORIES[index] == name, (folder, index, name)
  indices = [i for group in objectnet_classes.IMAGENET_GROUPS for i in group]
  assert len(indices) == 125 == len(set(indices))      # no ImageNet class in two groups
  assert dict(table["alarm_clock"]) == {409: "analog clock", 530: "digital clock"}
  assert objectnet_classes.IMAGENET_GROUPS[objectnet_classes.CLASSES.index("banana")] == (954,)


def test_class_groups_score_each_group_by_its_best_class_like_numpy():
  rng = np.random.default_rng(0)
  groups = objectnet_classes.IMAGENET_GROUPS
  logits = rng.normal(size=(2, 6, 1000)).astype(np.float32)   # a leading (head) axis is kept
  logits[..., 0] = 50.0                 # tench: the best class overall, in no ObjectNet group
  expected = np.stack([logits[..., list(g)].max(-1) for g in groups], axis=-1)
  scores = class_subsets.group_max(jnp.asarray(logits), groups)
  np.testing.assert_array_equal(np.asarray(scores), expected)
  labels = rng.integers(0, len(groups), 6).astype(np.int32)
  labels[:2] = np.argsort(-expected[0, :2], axis=-1)[:, 3]     # 4th best: in top-5, not top-1
  valid = np.array([True] * 5 + [False])
  counts = accuracy.correct_counts(scores, jnp.asarray(labels), jnp.asarray(valid))
  order = np.argsort(-expected, axis=-1)
  for k in (1, 5):
    hits = (order[..., :k] == labels[:, None]).any(-1) & valid
    np.testing.assert_array_equal(np.asarray(counts[f"top{k}"]), hits.sum(-1))
  assert int(counts["top5"][0]) - int(counts["top1"][0]) >= 2   # the two 4th-best labels


def test_restricted_predictions_only_name_subset_classes_and_counts_skip_padding():
  logits = jnp.asarray([[9.0, 1.0, 2.0, 3.0],    # best overall is class 0 (outside the subset)
                        [0.0, 5.0, 1.0, 4.0],
                        [0.0, 0.0, 7.0, 0.0]])  # padding row: never counted
  labels = jnp.asarray([3, 1, 2])
  valid = jnp.asarray([True, True, False])
  full = accuracy.correct_counts(logits, labels, valid)
  assert (int(full["top1"]), int(full["count"])) == (1, 2)
  restricted = accuracy.correct_counts(logits, labels, valid, class_indices=(1, 3))
  assert int(restricted["top1"]) == 2   # class 0 can no longer be predicted
  top = class_subsets.restricted_topk(logits, 5, (1, 3))
  assert top.shape == (3, 2) and set(np.asarray(top).ravel()) <= {1, 3}


def test_counts_are_exact_over_padded_batches_on_8_devices():
  mesh = parallel.make_mesh()
  rng = np.random.default_rng(0)
  n, batch = 45, 16                       # 45 is not a multiple of the global batch
  x = rng.normal(size=(n, 6)).astype(np.float32)
  # Imbalanced, class 5 absent: the mean per class differs from top-1 and skips class 5.
  y = rng.choice(6, n, p=[0.4, 0.2, 0.2, 0.1, 0.1, 0.0]).astype(np.int32)
  batches = []
  for i in range(0, 48, batch):
    xb, yb = np.zeros((batch, 6), np.float32), np.full(batch, -1, np.int32)
    part = slice(i, min(i + batch, n))
    xb[:part.stop - i], yb[:part.stop - i] = x[part], y[part]
    batches.append({"image": xb, "label": yb, "valid": np.arange(batch) < part.stop - i})
  counts = accuracy.count_split(lambda p, images: images, {}, batches, mesh)
  assert int(counts["count"]) == n
  assert int(counts["top1"]) == int(np.sum(x.argmax(-1) == y))
  assert accuracy.accuracies(counts)["num_examples"] == n
  # Mean per-class accuracy, with a leading axis of two heads (the second: negated logits).
  two_heads = accuracy.count_split(lambda p, images: jnp.stack([images, -images]), {}, batches,
                                   mesh)
  result = accuracy.accuracies(two_heads)
  for head, predictions in enumerate((x.argmax(-1), (-x).argmax(-1))):
    expected = 100.0 * np.mean([np.mean(predictions[y == c] == c) for c in np.unique(y)])
    assert result["mean_per_class"][head] == pytest.approx(expected)
    assert result["top1"][head] == pytest.approx(100.0 * np.mean(predictions == y))


@pytest.mark.parametrize("num_classes,total", [(10, 100), (10, 105), (7, 30)])
def test_class_balanced_subset_exact_balanced_deterministic(num_classes, total):
  labels = np.random.default_rng(1).permutation(np.arange(700) % num_classes)
  chosen = label_subsets.class_balanced_subset(labels, total, seed=3)
  assert len(chosen) == total == len(np.unique(chosen))
  per_class = np.bincount(labels[chosen], minlength=num_classes)
  assert per_class.max() - per_class.min() <= 1
  np.testing.assert_array_equal(chosen, label_subsets.class_balanced_subset(labels, total, seed=3))
  assert not np.array_equal(chosen, label_subsets.class_balanced_subset(labels, total, seed=4))


def test_class_balanced_subset_fills_up_from_larger_classes():
  labels = np.r_[np.zeros(3, int), np.ones(100, int), np.full(100, 2)]
  chosen = label_subsets.class_balanced_subset(labels, 31, seed=0)
  assert np.bincount(labels[chosen]).tolist() == [3, 14, 14]
  assert label_subsets.subset_size(1_281_167, 0.01) == 12_812
  with pytest.raises(ValueError):
    label_subsets.subset_size(100, 0.0)


def test_side_by_side_heads_separate_linearly_separable_features():
  """Each head reaches ~100% on features separable by construction; rates stay independent."""
  rng = np.random.default_rng(0)
  num_classes, dim, n = 5, 16, 400
  centres = rng.normal(size=(num_classes, dim)) * 3.0
  labels = rng.integers(0, num_classes, n).astype(np.int32)
  features = (centres[labels] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)
  optimizer = linear_heads.heads_optimizer(0.9)
  total = 60
  step = jax.jit(linear_heads.make_train_step(
      num_classes=num_classes, learning_rates=(0.05, 0.0), total_steps=total,
      optimizer=optimizer, features_fn=lambda frozen, batch: batch["features"]))
  state = linear_heads.init_heads(2, dim, num_classes, optimizer)
  for i in range(total):
    idx = rng.integers(0, n, 64)
    state, metrics = step(state, {}, {"features": features[idx], "label": labels[idx],
                                      "valid": np.ones(64, bool)})
  logits = linear_heads.heads_logits(state.params, features, num_classes)
  acc = (np.asarray(logits).argmax(-1) == labels).mean(-1)
  assert acc[0] > 0.99
  # The head with rate 0 never moved: the heads share batches, not updates.
  assert np.all(np.asarray(state.params["linear"]["kernel"][1]) == 0)
  assert int(state.step) == total and float(metrics["learning_rate"][0]) < 1e-3


def test_architecture_check_names_expected_and_found():
  config = config_lib.base_config()
  found = {"depth": 50, "width_multiplier": 1, "stage_sizes": (), "base_width": 64,
           "small_images": False}
  pretrained.check_architecture(config, found, "/ckpt")    # defaults: nothing requested
  config.model.stage_sizes = (3, 4, 6, 3)                    # same layout, said explicitly
  pretrained.check_architecture(config, found, "/ckpt")
  config.model.width_multiplier = 2
  with pytest.raises(ConfigError, match=r"width_multiplier: expected 2, found 1") as error:
    pretrained.check_architecture(config, found, "/ckpt")
  assert "ResNet-50 1x" in str(error.value)


def test_transfer_names_substitutes_and_unavailable_datasets(tmp_path):
  assert transfer_datasets.expand(("cifar10,dtd", " food101")) == ["cifar10", "dtd",
                                                                   "food101"]
  assert transfer_datasets.resolve("sun397").dataset == "sun397/tfds"
  assert "Birdsnap" in transfer_datasets.resolve("caltech_birds2011").note
  custom = transfer_datasets.resolve("stanford_dogs:train:test")
  assert (custom.dataset, custom.train_split, custom.test_split) == ("stanford_dogs", "train",
                                                                      "test")
  assert transfer_datasets.resolve("folder:/data/birdsnap").source == "folder"
  for folders, splits in ((("train", "test"), ("train", "")),
                          (("train", "val", "test"), ("train+val", "val")),
                          (("train", "validation"), ("train", ""))):   # 'test' would be val
    root = tmp_path / "_".join(folders)
    for folder in folders:
      (root / folder).mkdir(parents=True)
    dataset = transfer_datasets.resolve(f"folder:{root}")
    assert (dataset.train_split, dataset.holdout_split) == splits, folders
  aircraft = transfer_datasets.resolve("fgvc_aircraft:/data/fgvc-aircraft-2013b")
  assert (aircraft.source, aircraft.dataset, aircraft.train_split, aircraft.holdout_split,
          aircraft.metric) == ("fgvc_aircraft", "/data/fgvc-aircraft-2013b", "train+val", "val",
                               "mean_per_class")
  voc = transfer_datasets.resolve("voc2007")
  assert (voc.dataset, voc.train_split, voc.test_split, voc.metric) == (
      "voc/2007", "train+validation", "test", "map11")
  for name, hint in (("birdsnap", "caltech_birds2011"), ("fgvc_aircraft", "fgvc_aircraft:/path"),
                     ("fgvc_aircraft:", "fgvc_aircraft:/path")):
    with pytest.raises(ConfigError, match=hint):
      transfer_datasets.resolve(name)
  with pytest.raises(ConfigError, match="unknown dataset"):
    transfer_datasets.resolve("not_a_dataset")


def test_robustness_suites():
  config = config_lib.base_config()
  sets = robustness_sets.resolve(config)
  names = [s.name for s in sets]
  assert names[:5] == ["imagenet_v2_matched_frequency", "imagenet_v2_threshold_0.7",
                       "imagenet_v2_topimages", "imagenet_r", "imagenet_sketch"]
  corrupted = [s for s in sets if s.group]
  assert len(corrupted) == 75 and corrupted[0].dataset == "imagenet2012_corrupted/gaussian_noise_1"
  assert next(s for s in sets if s.name == "imagenet_r").class_subset == "imagenet_r"
  config.data.source = "builtin"
  assert [s.split for s in robustness_sets.resolve(config)] == ["test", "test_ood"]
  config.robustness.corruptions = ("fog",)
  config.robustness.datasets = ("imagenet_c",)
  config.data.source = "tfds"
  assert len(robustness_sets.resolve(config)) == 5
  means = robustness.group_means({
      "a": {"top1": 10.0, "top5": 20.0, "group": "imagenet_c/fog"},
      "b": {"top1": 30.0, "top5": 40.0, "group": "imagenet_c/fog"},
      "c": {"top1": 50.0, "top5": 60.0, "group": "imagenet_c/snow"}})
  assert means["imagenet_c/fog"]["top1"] == 20.0 and means["imagenet_c"]["top1"] == 35.0
  # ObjectNet is not in tfds: in the default suite only once its folder is given.
  config.robustness.datasets = ()
  assert "objectnet" not in [s.name for s in robustness_sets.resolve(config)]
  config.robustness.objectnet_path = "/data/objectnet-1.0"
  objectnet = robustness_sets.resolve(config)[-1]
  assert (objectnet.name, objectnet.class_groups) == ("objectnet", "objectnet")
  assert robustness_sets.set_config(config, objectnet).data.path == "/data/objectnet-1.0"
  config.robustness.update(dict(datasets=("objectnet",), objectnet_path=""))
  with pytest.raises(ConfigError, match="objectnet_path=DIR"):
    robustness_sets.resolve(config)


def test_heads_optimizer_matches_optax_sgd_for_one_head():
  """Momentum before the per-head rate is exactly optax's Nesterov SGD at that rate."""
  params = {"w": jnp.ones((3,))}
  grads = {"w": jnp.asarray([0.1, -0.2, 0.3])}
  ours = linear_heads.heads_optimizer(0.9)
  ref = optax.sgd(0.5, momentum=0.9, nesterov=True)
  s1, s2 = ours.init(params), ref.init(params)
  for _ in range(3):
    u1, s1 = ours.update(grads, s1, params)
    u2, s2 = ref.update(grads, s2, params)
    np.testing.assert_allclose(-0.5 * u1["w"], u2["w"], rtol=1e-6)


def devkit_average_precision(scores, targets):
  """The VOC2007 devkit's VOCevalcls.m, transcribed line by line: 11-point interpolated AP;
  'difficult' (target 0 there, -1 here) examples removed before ranking."""
  gt = np.where(targets > 0, 1, np.where(targets < 0, 0, -1))  # devkit: 1 / -1, 0 = difficult
  order = np.argsort(-scores, kind="stable")
  tp = (gt[order] > 0).astype(float)
  fp = (gt[order] < 0).astype(float)
  fp, tp = np.cumsum(fp), np.cumsum(tp)
  rec = tp / np.sum(gt > 0)
  with np.errstate(invalid="ignore"):
    prec = tp / (fp + tp)               # NaN while only difficult ones are ranked
  ap = 0.0
  for t in np.arange(0, 1.1, 0.1):
    p = prec[rec >= t - 1e-12]          # devkit: max(prec(rec>=t)), empty -> 0, NaN skipped
    p = 0.0 if p.size == 0 else np.nanmax(p)
    ap += p / 11
  return 100 * ap


def test_voc2007_average_precision_matches_the_devkit():
  # By hand: ranks hit, miss, hit, miss -> precision 1 up to recall 0.5, 2/3 up to recall 1.
  assert multilabel.average_precision_11point(np.array([0.9, 0.8, 0.7, 0.6]),
                                              np.array([1, 0, 1, 0])) == pytest.approx(
      100 * (6 * 1 + 5 * 2 / 3) / 11)
  # A "difficult" example ranked first is ignored, not counted as a false positive.
  assert multilabel.average_precision_11point(np.array([1.0, 0.9, 0.8, 0.7, 0.6]),
                                              np.array([-1, 1, 0, 1, 0])) == pytest.approx(
      100 * (6 * 1 + 5 * 2 / 3) / 11)
  rng = np.random.default_rng(0)
  for _ in range(20):
    targets = rng.choice([1, 0, 0, 0, -1], size=60)
    targets[0] = 1
    scores = rng.normal(size=60) + targets
    assert multilabel.average_precision_11point(scores, targets) == pytest.approx(
        devkit_average_precision(scores, targets))
  scores, targets = rng.normal(size=(30, 3)), rng.choice([1, 0], size=(30, 3))
  targets[:, 2] = 0                                   # no positive: left out of the mean
  mean, per_class = multilabel.mean_average_precision(scores, targets)
  assert np.isnan(per_class[2]) and mean == pytest.approx(np.mean(per_class[:2]))


def test_multilabel_linear_evaluation_learns_and_ignores_difficult():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(400, 8)).astype(np.float32)
  y = (x[:, :3] > 0).astype(np.int32)                # class c present iff feature c > 0
  ignored = y.copy()
  ignored[:150, 0] = -1
  result = multilabel.select_and_evaluate(x[:300], ignored[:300], x[300:], y[300:],
                                          l2_grid=(1e-4, 1e2), max_iter=100)
  assert result["map"] > 97, result
  assert result["l2"] == 1e-4 and len(result["per_class_ap"]) == 3

  # The loss: per-class sigmoid cross-entropy over the known targets, in NumPy.
  logits = rng.normal(size=(6, 3))
  targets = rng.choice([1, 0, -1], size=(6, 3))
  known = targets >= 0
  bce = np.where(targets > 0, np.log1p(np.exp(-logits)), np.log1p(np.exp(logits)))
  expected = bce[known].sum() / known.sum() * 3
  assert float(linear._nll(jnp.asarray(logits), jnp.asarray(targets), True)) == pytest.approx(
      expected, rel=1e-5)
  # Fine-tuning's form: padded examples (weight 0) drop out of the sum and of the count.
  weights = np.array([1, 1, 0, 1, 0, 1], np.float32)
  known_w = known & (weights[:, None] > 0)
  expected_w = bce[known_w].sum() / known_w.sum() * 3
  assert float(linear.multilabel_nll(jnp.asarray(logits), jnp.asarray(targets),
                                     jnp.asarray(weights))) == pytest.approx(expected_w, rel=1e-5)


def test_linear_selection_on_an_official_validation_split_by_mean_per_class():
  rng = np.random.default_rng(2)
  centers = rng.normal(size=(4, 6)) * 1.5
  def draw(counts):
    y = np.repeat(np.arange(4), counts)
    return (centers[y] + rng.normal(size=(len(y), 6))).astype(np.float32), y.astype(np.int32)
  train_x, train_y = draw([40, 20, 10, 5])            # imbalanced: per-class mean != top-1
  val_x, val_y = draw([5, 5, 5, 5])
  grid = (1e-4, 1e-1, 1e1)
  model, chosen = linear.select_and_fit(train_x, train_y, num_classes=4, l2_grid=grid,
                                        holdout=(val_x, val_y), metric="mean_per_class",
                                        max_iter=50)
  # Each l2 fit on train only and scored on the validation split, recomputed here.
  for l2 in grid:
    fitted = linear.fit(train_x, train_y, num_classes=4, l2=l2, max_iter=50)
    predictions = linear.logits(fitted, val_x).argmax(-1)
    expected = 100.0 * np.mean([np.mean(predictions[val_y == c] == c) for c in range(4)])
    assert chosen["val_mean_per_class"][str(l2)] == pytest.approx(expected)
  best = max(grid, key=lambda l2: (chosen["val_mean_per_class"][str(l2)], l2))
  assert chosen["l2"] == best and chosen["num_val"] == 20
  # The final classifier: refit on train + validation with the chosen l2.
  refit = linear.fit(np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y]),
                     num_classes=4, l2=best, max_iter=50)
  np.testing.assert_allclose(model["params"]["w"], refit["params"]["w"], rtol=1e-5, atol=1e-6)


def test_transfer_config_scores_voc2007_with_both_protocols():
  spec = importlib.util.spec_from_file_location("transfer_config", "configs/transfer.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert "voc2007" in module.get_config().transfer.datasets
  finetune = module.get_config("finetune").transfer
  assert "finetune" in finetune.protocols and "voc2007" in finetune.datasets
  assert len(finetune.datasets) == 11


def test_finetune_subset_file_takes_the_listed_images_of_an_image_folder(tmp_path):
  """SimCLR's 1% / 10% lists name ImageNet training images by file name: with ImageNet as an
  image folder, finetune.subset_file trains on exactly those images."""
  rng = np.random.default_rng(0)
  for wnid in ("n01440764", "n01443537"):
    (tmp_path / "imagenet" / "train" / wnid).mkdir(parents=True)
    for i in range(4):
      Image.fromarray(rng.integers(0, 256, (12, 12, 3), np.uint8)).save(
          tmp_path / "imagenet" / "train" / wnid / f"{wnid}_{i}.JPEG", format="JPEG")
  listed = ["n01440764_1.JPEG", "n01443537_0.JPEG", "n01443537_3.JPEG"]
  (tmp_path / "1percent.txt").write_text("\n".join(listed) + "\n")
  config = config_lib.base_config()
  config.data.update(dict(source="folder", path=str(tmp_path / "imagenet"), mask_prob=0.0,
                          cache_dir=str(tmp_path / "cache")))
  config.finetune.subset_file = str(tmp_path / "1percent.txt")
  finetune.check_settings(config)
  finetune.check_data(config)
  data_config, examples, described = finetune.training_examples(config)
  assert described["num_examples"] == 3 and described["per_class"] == [1, 2]
  names = sources.get_source(data_config).example_names("train")[examples.indices]
  assert sorted(n.rsplit("/", 1)[-1] for n in names) == listed
  # A list made for other data, a list next to a fraction, a source without file names: refused.
  (tmp_path / "other.txt").write_text("n01440764_1.JPEG\nn09999999_7.JPEG\n")
  config.finetune.subset_file = str(tmp_path / "other.txt")
  with pytest.raises(ConfigError, match=r"1 of the 2 images listed .*n09999999_7"):
    finetune.check_data(config)
  config.finetune.subset = "1pct"
  with pytest.raises(ConfigError, match="cannot be combined"):
    finetune.check_settings(config)
  config.finetune.subset = "full"
  config.data.source = "builtin"
  with pytest.raises(ConfigError, match="does not have"):
    finetune.check_data(config)
