"""The shared presets of the experiment configs: ImageNet pretraining per encoder and epoch
count, the evaluation jobs' ImageNet base, and the ``:runlocal`` variants that shrink any of them
to a CPU run on the built-in dataset. Each starts from :func:`relic.config.base_config`.
"""

from __future__ import annotations

import ml_collections

from relic.config import base_config, check_config_args, parse_config_arg
from relic.errors import ConfigError


# Epoch presets of DeepMind's BYOL code [code: byol/configs/byol.py _LR_PRESETS, _WD_PRESETS,
# _EMA_PRESETS; ReLICv2 released no pretraining config]:
# epochs -> (base learning rate, weight decay, EMA base rate).
EPOCH_PRESETS = {1000: (0.2, 1.5e-6, 0.996), 300: (0.3, 1e-6, 0.99), 100: (0.45, 1e-6, 0.99)}
IMAGENET_TRAIN_EXAMPLES = 1_281_167


def apply_runlocal(config: ml_collections.ConfigDict) -> None:
  """Shrinks any pretraining config to a seconds-long CPU run on the built-in dataset.

  Keeps every code path (views, masking, probe, kNN, checkpoints) but with a tiny ResNet.
  """
  config.model.update(dict(stage_sizes=(1, 1, 1, 1), base_width=8, small_images=True,
                           projector_hidden_dim=64, projector_output_dim=32,
                           predictor_hidden_dim=64))
  config.data.source = "builtin"
  config.data.eval_split = "test"
  config.data.builtin.update(dict(num_train=512, num_test=256, image_size=32))
  config.data.views.large.size = 32
  config.data.views.small.size = 16
  config.data.shuffle_buffer = 512
  config.data.update(dict(expected_train_examples=0, labelled_split=""))
  # Batch 16: every code path of the step; on a 2-core CPU it compiles in about 9 s instead of
  # 16 s and runs 4x faster than at batch 64.
  config.train.update(dict(batch_size=16, num_steps=20, num_train_examples=0, log_every_steps=5,
                           checkpoint_every_steps=10, eval_every_steps=10))
  config.optim.warmup_epochs = 0.125   # 4 steps
  config.knn.num_train_examples = 256


def imagenet_pretrain_config(arg: str | None, *, depth: int, width_multiplier: int,
                             name: str) -> ml_collections.ConfigDict:
  """ReLICv2 ImageNet pretraining of one encoder; ``arg``: 'epochs=N' (1000/300/100), 'runlocal'."""
  options = parse_config_arg(arg)
  check_config_args(options, ("epochs", "runlocal"), name)
  epochs = int(options.get("epochs", 1000))
  if epochs not in EPOCH_PRESETS:
    raise ConfigError(f"{name}: no preset for epochs={epochs}. Fix: choose one of "
                      f"{sorted(EPOCH_PRESETS)} or override config.train.num_epochs and the "
                      "optimiser fields directly.")
  base_lr, weight_decay, ema = EPOCH_PRESETS[epochs]
  config = base_config()
  config.model.depth = depth
  config.model.width_multiplier = width_multiplier
  config.train.num_epochs = float(epochs)
  # Epochs count the split as read; a folder or slice of another size is trained for the same
  # number of epochs of *its* examples, with a start-up warning naming both numbers.
  config.data.expected_train_examples = IMAGENET_TRAIN_EXAMPLES
  config.optim.update(dict(base_lr=base_lr, weight_decay=weight_decay))
  config.ema.base_rate = ema
  config.data.dataset = "imagenet2012"
  if "runlocal" in options:
    apply_runlocal(config)
  return config


# The evaluation configs' ImageNet base and ``:runlocal`` variant: the quickstart's built-in data
# (already generated and cached) at its large-view size, what the quickstart's encoder saw.
QUICKSTART_BUILTIN = dict(num_train=10_000, num_test=2_000, image_size=64)
RUNLOCAL_IMAGE_SIZE = 32


def imagenet_eval_config(job: str) -> ml_collections.ConfigDict:
  """``job`` on ImageNet from tfds: train / validation splits, no saliency masks."""
  config = base_config()
  config.job = job
  config.data.update(dict(source="tfds", dataset="imagenet2012", train_split="train",
                          eval_split="validation", mask_prob=0.0))
  return config


def apply_eval_runlocal(config: ml_collections.ConfigDict) -> None:
  """The built-in dataset at 32 px: minutes on a laptop CPU, every code path of the job."""
  config.data.update(dict(source="builtin", train_split="train", eval_split="test"))
  config.data.builtin.update(QUICKSTART_BUILTIN)
  size = RUNLOCAL_IMAGE_SIZE
  config.linear_probe.update(dict(batch_size=256, num_epochs=30.0, lr_grid=(0.1, 0.3, 1.0),
                                  holdout_examples=1000, image_size=size, train_augment=False,
                                  precompute_features=True, log_every_steps=50,
                                  checkpoint_every_steps=500))
  config.finetune.update(dict(batch_size=64, num_epochs=10.0, image_size=size,
                              log_every_steps=10, checkpoint_every_steps=100))
  config.transfer.update(dict(datasets=("builtin",), image_size=size, batch_size=256))
  config.robustness.update(dict(batch_size=256))
