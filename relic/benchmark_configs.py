"""The benchmark recipes researchers compare against: CIFAR-10, CIFAR-100, STL-10, Imagenette and
ImageNet-100 (``configs/<name>.py`` each call :func:`benchmark_config`).

One recipe for all five, in the spirit of solo-learn's BYOL configs (github.com/vturrisi/
solo-learn, ``scripts/pretrain/cifar/byol.yaml`` and ``scripts/pretrain/imagenet-100/
byol.yaml``): a ResNet-18 (torchvision's layout; the CIFAR stem, a 3x3 stride-1 convolution
without max-pooling, for the 32 px CIFAR images only, as solo-learn does), the ReLICv2 loss
(temperature 0.1, beta 1) on BYOL's 4096-256 projector without a predictor, global batch 256,
LARS with solo-learn's trust coefficient 0.02 and ``clip_lr`` (``optim.lars_clip``), 10 warm-up
epochs then cosine, an EMA target from 0.99 to 1, BYOL's asymmetric colour augmentation ('A'
and 'B' views; no Gaussian blur at 32 px, as solo-learn's CIFAR views). ReLICv2's multi-crop
is kept small: 2 large + 2 small views per image (the paper's ImageNet recipe has 4 + 2). No
saliency masking: these datasets have no masks (``--config.data.mask_path=DIR
--config.data.mask_prob=0.1`` turns it on). Rates, weight decay and epochs are solo-learn's:
base rate 1.0 and decay 1e-5 for CIFAR (1000 epochs), 0.5 and 1e-6 for the 96-224 px sets
(ImageNet-100 400 epochs; STL-10 400 and Imagenette 800 epochs, the latter lightly's
benchmark length). None of these recipes has been trained to the end here.

Config arguments (``configs/NAME.py:ARG``): 'runlocal' (any pretraining config's seconds-long
CPU run on the built-in dataset), 'linear' (the linear-probe job of the benchmark: frozen
encoder, configs/linear_probe.py's protocol on the labelled train split at the large-view size,
scored on the test split), and 'linear,runlocal'.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from relic.config import base_config, check_config_args, parse_config_arg
from relic.presets import apply_eval_runlocal, apply_runlocal


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """One benchmark's data and the recipe fields that differ between benchmarks."""
  name: str
  source: str               # 'tfds' or 'folder'
  dataset: str              # tfds name ('' for a folder)
  train_split: str          # pretraining split
  eval_split: str
  labelled_split: str       # kNN bank, linear probe; '' = train_split
  train_examples: int       # of train_split as published (0 = not stated: a folder you build)
  large: tuple[int, float, float]   # view size, min / max crop area
  small: tuple[int, float, float]
  small_images: bool        # the CIFAR stem
  blur: bool
  epochs: int
  base_lr: float
  weight_decay: float
  eval_every_steps: int
  knn_bank: int             # kNN bank size (0 = the whole labelled split)
  knn: tuple[int, float] = (20, 0.07)  # k, temperature of the kNN monitor


# Small views: half the large size and 8-50% of the image area (solo-learn's CIFAR multi-crop:
# 18 px, 0.08-0.5); the 224 px set keeps ReLICv2's 96 px, 5-14% views. The kNN monitor runs
# about every 10 epochs; CIFAR and Imagenette use lightly's kNN settings (k 200 / 20, T 0.1),
# its benchmark tables reporting the best kNN top-1 over training.
BENCHMARKS = {b.name: b for b in (
    Benchmark("cifar10", "tfds", "cifar10", "train", "test", "", 50_000,
              (32, 0.08, 1.0), (18, 0.08, 0.5), True, False, 1000, 1.0, 1e-5, 1_950, 0,
              knn=(200, 0.1)),
    Benchmark("cifar100", "tfds", "cifar100", "train", "test", "", 50_000,
              (32, 0.08, 1.0), (18, 0.08, 0.5), True, False, 1000, 1.0, 1e-5, 1_950, 0,
              knn=(200, 0.1)),
    Benchmark("stl10", "tfds", "stl10", "unlabelled+train", "test", "train", 105_000,
              (96, 0.08, 1.0), (48, 0.08, 0.5), False, True, 400, 0.5, 1e-6, 4_100, 0),
    Benchmark("imagenette", "tfds", "imagenette/160px-v2", "train", "validation", "", 9_469,
              (128, 0.08, 1.0), (64, 0.08, 0.5), False, True, 800, 0.5, 1e-6, 370, 0,
              knn=(20, 0.1)),
    Benchmark("imagenet100", "folder", "", "train", "val", "", 0,
              (224, 0.08, 1.0), (96, 0.05, 0.14), False, True, 400, 0.5, 1e-6, 4_950, 10_000),
)}


def benchmark_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """The pretraining (or, with 'linear', linear-probe) config of benchmark ``name``."""
  b = BENCHMARKS[name]
  options = parse_config_arg(arg)
  check_config_args(options, ("runlocal", "linear"), name)
  config = base_config()
  config.data.update(dict(source=b.source, train_split=b.train_split, eval_split=b.eval_split,
                          labelled_split=b.labelled_split, mask_prob=0.0, blur=b.blur,
                          expected_train_examples=b.train_examples))
  if b.dataset:
    config.data.dataset = b.dataset
  if "linear" in options:  # the architecture comes from the checkpoint: config.model untouched
    return _linear_config(config, b, runlocal="runlocal" in options)
  config.model.update(dict(depth=18, small_images=b.small_images, zero_init_residual=False,
                           projector_hidden_dim=4096, projector_output_dim=256, predictor=False))
  size, low, high = b.large
  config.data.views.large.update(dict(num=2, size=size, min_scale=low, max_scale=high))
  size, low, high = b.small
  config.data.views.small.update(dict(num=2, size=size, min_scale=low, max_scale=high))
  config.loss.update(dict(temperature=0.1, beta=1.0))
  config.ema.base_rate = 0.99
  config.optim.update(dict(name="lars", base_lr=b.base_lr, weight_decay=b.weight_decay,
                           trust_coefficient=0.02, lars_clip=True, warmup_epochs=10.0))
  config.train.update(dict(batch_size=256, num_epochs=float(b.epochs), num_train_examples=0,
                           log_every_steps=100, checkpoint_every_steps=2_000,
                           eval_every_steps=b.eval_every_steps))
  config.probe.lr = 0.1
  config.knn.update(dict(num_train_examples=b.knn_bank, k=b.knn[0], temperature=b.knn[1]))
  config.evaluators.update(dict(periodic=("knn",), final=("frozen",)))
  config.final_eval.num_train_examples = 10_000
  if "runlocal" in options:
    apply_runlocal(config)
  return config


def _linear_config(config: ml_collections.ConfigDict, b: Benchmark,
                   runlocal: bool) -> ml_collections.ConfigDict:
  """The linear protocol of configs/linear_probe.py (frozen encoder, SGD + Nesterov, base rate
  0.3, 100 epochs, cosine, the whole labelled train split) at the benchmark's large-view size,
  scored on its test split; global batch 256 (the pretraining batch) instead of 1024."""
  config.job = "linear_probe"
  config.data.train_split = b.labelled_split or b.train_split
  config.data.labelled_split = ""
  config.data.expected_train_examples = 0
  config.linear_probe.update(dict(batch_size=256, image_size=b.large[0]))
  if runlocal:
    apply_eval_runlocal(config)
  return config
