"""The benchmark configs (CIFAR-10/100, STL-10, Imagenette, ImageNet-100): each builds, validates
and accepts ':runlocal' and ':linear'; a few pretraining steps of each through relic.main.run on
tfds.testing.mock_data (ImageNet-100: a generated ImageNet folder through its builder) train,
checkpoint, and read the named dataset and splits."""

import importlib.util
import math
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from relic import benchmark_configs, checkpoints, main, metrics
from relic import config as config_lib
from relic.data import imagenet100, pipeline, tfds_source
from relic.jobs import pretrain

ROOT = pathlib.Path(__file__).resolve().parents[1]
TFDS_BENCHMARKS = ["cifar10", "cifar100", "stl10", "imagenette"]
ALL = TFDS_BENCHMARKS + ["imagenet100"]
STEPS = 3
MOCK_EXAMPLES = 13


def load(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg), module.__doc__


@pytest.mark.parametrize("name", ALL)
def test_config_recipe_command_and_variants(name):
  config, doc = load(name)
  config_lib.validate(config)
  b = benchmark_configs.BENCHMARKS[name]
  assert config.job == "pretrain" and config.loss.objective == "relicv2"
  assert (config.model.depth, config.model.small_images) == (18, name.startswith("cifar"))
  assert config.train.batch_size == 256 and config.train.num_train_examples == 0
  assert config.optim.name == "lars" and config.optim.lars_clip
  assert config.train.num_epochs == (1000 if name.startswith("cifar") else b.epochs)
  assert f"python -m relic.main --config=configs/{name}.py" in doc
  assert "Reference" in doc and "Compute" in doc and ":linear" in doc
  if b.source == "tfds":
    assert config.data.dataset == b.dataset and f"tfds build {b.dataset}" in doc
  runlocal, _ = load(name, "runlocal")
  config_lib.validate(runlocal)
  assert runlocal.data.source == "builtin" and runlocal.train.num_steps == 20
  assert runlocal.data.expected_train_examples == 0 and not runlocal.data.labelled_split
  linear, _ = load(name, "linear")
  config_lib.validate(linear)
  assert linear.job == "linear_probe" and linear.data.train_split == (b.labelled_split
                                                                      or b.train_split)
  assert linear.linear_probe.image_size == b.large[0]
  assert linear.model.to_dict() == config_lib.base_config().model.to_dict()  # from the checkpoint
  config_lib.validate(load(name, "linear,runlocal")[0])
  with pytest.raises(ValueError, match="accepts"):
    load(name, "epochs=300")


def test_stated_sizes_give_the_documented_steps():
  steps = {"cifar10": 195_313, "cifar100": 195_313, "stl10": 164_063, "imagenette": 29_591}
  for name, expected in steps.items():
    config, doc = load(name)
    n = config.data.expected_train_examples
    assert math.ceil(config.train.num_epochs * n / 256) == expected
    assert f"{expected:,} steps" in doc


def shrink(config, tmp_path):
  """A tiny network and a few steps; the config's data, views and recipe stay."""
  config.model.update(dict(stage_sizes=(1, 1, 1, 1), base_width=8, projector_hidden_dim=64,
                           projector_output_dim=32))
  config.data.update(dict(data_dir=str(tmp_path / "tfds"), shuffle_buffer=8))
  config.train.update(dict(batch_size=16, num_epochs=0.0, num_steps=STEPS, log_every_steps=1,
                           checkpoint_every_steps=STEPS, eval_every_steps=STEPS, view_images=2))
  config.optim.warmup_epochs = 0.0
  config.knn.num_train_examples = 0
  config.evaluators.final = ()
  return config


def assert_trained(workdir):
  logged = [m for m in metrics.read_metrics(str(workdir)) if "train/loss" in m]
  assert [m["step"] for m in logged] == list(range(1, STEPS + 1))
  assert all(np.isfinite(m["train/loss"]) for m in logged)
  assert any("monitor/knn_top1" in m for m in metrics.read_metrics(str(workdir)))
  steps = [p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
  assert str(STEPS) in steps
  model_config, variables = checkpoints.restore_encoder(str(workdir))
  assert model_config["depth"] == 18 and variables["params"]


@pytest.mark.parametrize("name", TFDS_BENCHMARKS)
def test_pretrains_on_the_named_tfds_dataset_and_splits(name, tmp_path, monkeypatch,
                                                        synchronous_checkpoints):
  config = shrink(load(name)[0], tmp_path)
  b = benchmark_configs.BENCHMARKS[name]
  read = []
  real = tfds_source.TfdsSource.as_dataset

  def record(self, split):
    read.append((self.name, str(getattr(split, "split", split))))
    return real(self, split)

  monkeypatch.setattr(tfds_source.TfdsSource, "as_dataset", record)
  workdir = tmp_path / "run"
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    num_classes = pipeline.num_classes(config)
    main.run(config, str(workdir))
  assert num_classes == (100 if name == "cifar100" else 10)
  datasets = {dataset for dataset, _ in read}
  assert datasets == {b.dataset}, datasets           # every read: the named dataset
  splits = {split for _, split in read}
  assert b.train_split in splits and b.eval_split in splits
  if name == "stl10":                                 # the kNN bank: the labelled images only
    assert "unlabelled+train" in splits and "train" in splits
  assert_trained(workdir)
  saved = checkpoints.read_config(str(workdir))
  assert (saved.data.dataset, saved.data.train_split) == (b.dataset, b.train_split)


def write_imagenet(root, classes, per_class):
  """An ImageNet folder in the PyTorch layout: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG."""
  rng = np.random.default_rng(0)
  for split, count in (("train", per_class), ("val", 1)):
    for wnid in classes:
      folder = root / split / wnid
      folder.mkdir(parents=True)
      for i in range(count):
        pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG", quality=90)


def test_imagenet100_folder_from_an_imagenet_folder_pretrains(tmp_path, monkeypatch):
  from tensorflow_datasets.datasets.imagenet2012 import imagenet_common
  with open(imagenet_common.label_names_file()) as f:
    wnids = f.read().split()
  assert len(imagenet100.CLASSES) == 100 == len(set(imagenet100.CLASSES))
  assert set(imagenet100.CLASSES) <= set(wnids)            # real ImageNet classes
  assert imagenet100.CLASSES[:3] == ("n02869837", "n01749939", "n02488291")  # solo-learn's order
  extra = "n01440764"                                       # tench: not one of the 100
  assert extra not in imagenet100.CLASSES
  imagenet = tmp_path / "imagenet"
  write_imagenet(imagenet, imagenet100.CLASSES[:99], 2)
  with pytest.raises(FileNotFoundError, match=imagenet100.CLASSES[99]):
    imagenet100.make_folder(imagenet, tmp_path / "in100")
  write_imagenet(imagenet, (imagenet100.CLASSES[99], extra), 2)
  out = imagenet100.make_folder(imagenet, tmp_path / "in100")
  assert imagenet100.make_folder(imagenet, out) == out      # a rerun keeps the links
  assert sorted(p.name for p in (out / "train").iterdir()) == sorted(imagenet100.CLASSES)

  config = shrink(load("imagenet100")[0], tmp_path)
  config.data.path = str(out)
  config.data.views.large.size, config.data.views.small.size = 64, 32  # CPU-sized 224 / 96
  pretrain.validate(config)
  assert pipeline.num_classes(config) == 100
  assert pipeline.num_examples(config, "train") == 200
  assert pipeline.num_examples(config, "val") == 100
  names = pipeline.sources.get_source(config).example_names("train")
  assert {name.split("/")[0] for name in names} == set(imagenet100.CLASSES)
  workdir = tmp_path / "run"
  main.run(config, str(workdir))
  assert_trained(workdir)


def test_clipped_lars_caps_the_trust_ratio_at_the_rate():
  """optim.lars_clip (solo-learn's clip_lr), against NumPy: per decayed tensor,
  g' = g + wd p, f = min(eta ||p|| / ||g'|| / lr, 1), mu = m mu + f g', p -= lr mu; biases
  get plain momentum SGD."""
  from relic import optim
  config = load("cifar10")[0]
  eta, wd, m = config.optim.trust_coefficient, config.optim.weight_decay, config.optim.momentum
  rng = np.random.default_rng(0)
  params = {"big": {"kernel": 100 * rng.normal(size=(3, 4)).astype(np.float32)},  # capped at 1
            "small": {"kernel": 1e-3 * rng.normal(size=(4, 2)).astype(np.float32)},  # not capped
            "lin": {"bias": rng.normal(size=(4,)).astype(np.float32)}}
  grads = [jax_tree_map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
           for _ in range(2)]
  opt = optim.step_scheduled(lambda rate: optim.make_optimizer(config, rate))
  state, p_jax = opt.init(params), params
  p_np = {k: {n: v.copy() for n, v in d.items()} for k, d in params.items()}
  mu = {k: {n: np.zeros_like(v) for n, v in d.items()} for k, d in params.items()}
  factors = {}
  for lr, g in zip((0.5, 0.05), grads):
    state = optim.set_learning_rate(state, lr)
    updates, state = opt.update(g, state, p_jax)
    p_jax = jax_tree_map(lambda p, u: p + u, p_jax, updates)
    for k, d in p_np.items():
      for n, p in d.items():
        step_grad = g[k][n].astype(np.float64)
        if n == "kernel":
          step_grad = step_grad + wd * p
          ratio = eta * np.linalg.norm(p) / np.linalg.norm(step_grad)
          factors[(k, lr)] = min(ratio / lr, 1.0)
          step_grad = step_grad * factors[(k, lr)]
        mu[k][n] = m * mu[k][n] + step_grad
        d[n] = (p - lr * mu[k][n]).astype(np.float32)
  assert factors[("big", 0.5)] == 1.0 and factors[("small", 0.5)] < 1.0   # both regimes seen
  for k, d in p_np.items():
    for n, p in d.items():
      np.testing.assert_allclose(np.asarray(p_jax[k][n]), p, rtol=1e-5, atol=1e-6)


def jax_tree_map(fn, *trees):
  import jax
  return jax.tree.map(fn, *trees)


def test_blur_off_never_blurs_in_either_augmentation():
  import jax
  from relic.data import augment, augment_spec, augment_tf
  image = np.random.default_rng(0).random((1, 4, 64, 64, 3), dtype=np.float32)
  plain = dict(color_strength=0.0, grayscale_prob=0.0)   # preset A: blur always, no solarise
  blurred = np.asarray(augment.augment_views(jax.random.key(1), image, "AAAA",
                                             augment_spec.Photometric(**plain)))
  kept = np.asarray(augment.augment_views(jax.random.key(1), image, "AAAA",
                                          augment_spec.Photometric(**plain, blur=False)))
  unblurred = lambda out, v: any(np.allclose(out[0, v], x, atol=1e-3)
                                 for x in (image[0, v], image[0, v, :, ::-1]))
  assert all(unblurred(kept, v) for v in range(4))
  assert not all(unblurred(blurred, v) for v in range(4))
  u = np.full(augment_spec.NUM_UNIFORMS, 0.9, np.float32)  # no flip, jitter, grey, solarise
  host = augment_tf.augment_image(image[0, 0], u, "A", 3,
                                  augment_spec.Photometric(**plain, blur=False))
  np.testing.assert_allclose(np.asarray(host), image[0, 0], atol=1e-6)
  assert augment_spec.Photometric.from_config(load("cifar10")[0].data).blur is False
