"""Shared pieces of the evaluation configs (configs/linear_probe.py, finetune.py, transfer.py,
robustness.py): the ImageNet base and the ``:runlocal`` variant on the built-in dataset."""

from __future__ import annotations

import ml_collections

from relic.config import base_config

# The quickstart's built-in dataset (configs/quickstart.py), so a runlocal evaluation of the
# quickstart's encoder reads the images it already generated and cached.
BUILTIN = dict(num_train=10_000, num_test=2_000, image_size=64)
RUNLOCAL_IMAGE_SIZE = 32   # the quickstart's large-view size: what its encoder was trained on


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
  config.data.builtin.update(BUILTIN)
  size = RUNLOCAL_IMAGE_SIZE
  config.linear_probe.update(dict(batch_size=256, num_epochs=30.0, lr_grid=(0.1, 0.3, 1.0),
                                  holdout_examples=1000, image_size=size, train_augment=False,
                                  precompute_features=True, log_every_steps=50,
                                  checkpoint_every_steps=500))
  config.finetune.update(dict(batch_size=64, num_epochs=10.0, image_size=size,
                              log_every_steps=10, checkpoint_every_steps=100))
  config.transfer.update(dict(datasets=("builtin",), image_size=size, batch_size=256))
  config.robustness.update(dict(batch_size=256))
