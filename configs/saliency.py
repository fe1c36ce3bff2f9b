"""Saliency masks for ImageNet without labels: the masks ReLICv2's masked views are cut with.

Classical cues (colour contrast to the border, minimum barrier distance, centre prior) give
pseudo-masks; relic's FCN on a ResNet-50 (random init, or --config.pretrained=WORKDIR) is
trained on them and predicts the final masks (DeepUSPS's structure; relic/jobs/saliency.py).

Command:
  python -m relic.main --config=configs/saliency.py --config.data.data_dir=TFDS_DIR \
      --workdir=MASKS_RUN
then pretrain with --config.data.mask_path=MASKS_RUN/masks (experiments/imagenet/README.md).
An image folder instead: --config.data.source=folder --config.data.path=DIR.
Outputs: MASKS_RUN/masks (one 128 px PNG per training image, 255 = foreground, named by the
  image's file stem), MASKS_RUN/pseudo_masks (the cue stage), results.json / results.md (the
  foreground-fraction histogram). --config.saliency.refine=False: the cue stage alone.
Variants: 'runlocal': the built-in dataset at 32 px, a minute on a CPU; 'builtin': the
  quickstart's data (10,000 train images of 64 px, plus test and test_ood scored against the
  exact object masks), about 20 minutes on 2 CPU cores (README's saliency table).
Compute: the cue stage is one pass of elementwise work (no network) over the images at 128 px;
  the refinement trains FCN-16s for 10,000 steps of 256 crops of 112 px (2.56M crops, about
  1e16 FLOPs, under 0.1% of a 1000-epoch pretraining; experiments/imagenet/README.md) and
  predicts in one 128 px pass.
"""

from relic.config import base_config, check_config_args, parse_config_arg


def get_config(arg=None):
  options = parse_config_arg(arg)
  check_config_args(options, ("runlocal", "builtin"), "saliency")
  config = base_config()
  config.job = "saliency"
  config.data.update(dict(source="tfds", dataset="imagenet2012", train_split="train",
                          eval_split="validation", mask_prob=0.0))
  config.saliency.update(dict(image_size=128, batch_size=64))
  config.segmentation.update(dict(crop_size=112, eval_size=(128, 128), min_scale=0.75,
                                  max_scale=1.25, batch_size=256, num_steps=10_000,
                                  base_lr=0.02, log_every_steps=100,
                                  checkpoint_every_steps=1000))
  if "builtin" in options or "runlocal" in options:
    config.model.update(dict(depth=18, stage_sizes=(1, 1, 1, 1), base_width=16,
                             small_images=True))
    config.data.update(dict(source="builtin", train_split="train", eval_split="test"))
    config.data.builtin.update(dict(num_train=10_000, num_test=2_000, image_size=64))
    config.saliency.update(dict(image_size=64, splits=("train", "test", "test_ood"),
                                score_splits=("test", "test_ood")))
    config.segmentation.update(dict(crop_size=56, eval_size=(64, 64), batch_size=64,
                                    num_steps=600, base_lr=0.05, log_every_steps=50,
                                    checkpoint_every_steps=200))
  if "runlocal" in options:
    config.model.base_width = 8
    config.data.builtin.update(dict(num_train=256, num_test=128, image_size=32))
    config.saliency.update(dict(image_size=32, batch_size=32))
    config.segmentation.update(dict(crop_size=28, eval_size=(32, 32), batch_size=32,
                                    num_steps=40, log_every_steps=10,
                                    checkpoint_every_steps=20))
  return config
