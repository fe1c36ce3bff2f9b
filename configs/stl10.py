"""ReLICv2 pretraining of a ResNet-18 on STL-10 (unlabelled + train, 400 epochs, batch 256).

Command (one GPU; the same command on more devices or a TPU VM):
  tfds build stl10                        # once: download and prepare (tfds's command line)
  python -m relic.main --config=configs/stl10.py --workdir=DIR
  A seconds-long CPU run of the same code paths: configs/stl10.py:runlocal.
Then linear evaluation (frozen encoder, configs/linear_probe.py's protocol on the 5,000
  labelled train images at 96 px, test split):
  python -m relic.main --config=configs/stl10.py:linear --config.pretrained=DIR --workdir=DIR_linear
Data: pretraining reads tfds stl10 'unlabelled+train' (100,000 + 5,000 images of 96 px; the
  unlabelled ones carry label -1, which the online probe ignores), as solo-learn's
  'train+unlabeled'; the kNN monitor and the final frozen evaluation use 'train'
  (data.labelled_split) and score 'test' (8,000).
Recipe (relic/benchmark_configs.py): ResNet-18 with the ImageNet stem (solo-learn changes the
  stem for CIFAR only; --config.model.small_images=True for the CIFAR stem, 16x the FLOPs at
  96 px), 2 views of 96 px (8-100%) + 2 of 48 px (8-50%), BYOL's augmentation (blur on), no
  masking; LARS base rate 0.5, weight decay 1e-6, trust 0.02 with clip_lr (solo-learn's
  ImageNet-100 BYOL values), 10 warm-up epochs; EMA 0.99 -> 1; kNN on test every 4,100 steps.
Reference: none. solo-learn's README has no STL-10 table and lightly's benchmarks have no
  STL-10 entry; this config has no published anchor from either, and 400 epochs is a choice
  made here, not a published recipe.
Compute: 164,063 steps (ceil(400 x 105,000 / 256)); 5.3 GFLOPs per image per step (XLA cost
  analysis of the step), 2.2e17 FLOPs in all. Wall time: unmeasured (no accelerator here).
"""

from relic.benchmark_configs import benchmark_config


def get_config(arg=None):
  return benchmark_config("stl10", arg)
