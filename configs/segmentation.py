"""Semantic-segmentation transfer of a pretrained encoder: PASCAL VOC 2012 and Cityscapes (mIoU).

Command (VOC 2012, BYOL's protocol, which the ReLICv2 paper follows):
  python -m relic.main --config=configs/segmentation.py \
      --config.pretrained=WORKDIR_OR_CHECKPOINT \
      --config.data.source=voc2012 --config.data.path=/data/VOC2012 --workdir=DIR
  /data/VOC2012: JPEGImages/, SegmentationClassAug/ (the SBD-augmented masks; or the official
  SegmentationClass/) and ImageSets/Segmentation/{train_aug,val}.txt. Trained on train_aug
  (10,582 images), scored on val (1,449).
  Cityscapes: configs/segmentation.py:cityscapes (data.source=cityscapes: tfds
  cityscapes/semantic_segmentation in --config.data.data_dir, which needs a manual download:
  see `tfds build cityscapes/semantic_segmentation`); trained on the
  2,975 fine 'train' images, scored on the 500 'validation' images at full resolution.
Recipe: FCN-16s (last stage dilated, two 3x3 convs of 256 channels with dilation 6 + BN + ReLU,
  1x1 classifier), per-pixel cross-entropy, random rescaling 0.5-2x, 513 px crops, flips; SGD
  momentum 0.9, weight decay 1e-4, batch 16, 30,000 steps, rate x0.1 at 70% and 90%. Rate sweep
  as in BYOL: --config.segmentation.lr_grid=0.001,0.00316,0.01,0.0316,0.1 (each a full run
  scored on the first 2119 training images, the best retrained on all).
Variants: 'cityscapes' ([recon]: 769 px crops, the same schedule); 'runlocal': the built-in
  shapes dataset (object masks, 11 classes), minutes on a CPU:
  --config=configs/segmentation.py:runlocal --config.pretrained=/tmp/relic_quickstart
Expected (ResNet-50): ReLICv2 77.9 mIoU on VOC 2012 val [paperswithcode-derived listing of the
  paper's results], 75.2 on Cityscapes val (BYOL 74.6) [paperswithcode entry].
"""

from relic.config import check_config_args, parse_config_arg
from relic.presets import QUICKSTART_BUILTIN, imagenet_eval_config


def get_config(arg=None):
  options = parse_config_arg(arg)
  check_config_args(options, ("cityscapes", "runlocal"), "segmentation")
  config = imagenet_eval_config("segmentation")
  # VOC: 'train_aug' (10,582 images with SBD) or the official 'train' (1,464).
  config.data.update(dict(source="voc2012", train_split="train_aug", eval_split="val"))
  if "cityscapes" in options:
    config.data.update(dict(source="cityscapes", train_split="train", eval_split="validation"))
    config.segmentation.update(dict(crop_size=769, eval_size=(1024, 2048), holdout_examples=500))
  if "runlocal" in options:
    config.data.update(dict(source="builtin", train_split="train", eval_split="test"))
    config.data.builtin.update(QUICKSTART_BUILTIN)
    config.segmentation.update(dict(
        crop_size=QUICKSTART_BUILTIN["image_size"], eval_size=(QUICKSTART_BUILTIN["image_size"],) * 2,
        batch_size=32, num_steps=300, base_lr=0.05, holdout_examples=1000,
        log_every_steps=20, checkpoint_every_steps=100))
  return config
