"""ReLICv2 pretraining of a ResNet-18 on ImageNet-100 (solo-learn's 100 classes, 400 epochs).

Build the dataset once: a link to each image of the 100 classes of an ImageNet folder with
train/<wnid>/ and val/<wnid>/ (solo-learn's scripts/utils/make_imagenet100.py links the class
folders; the class list, solo-learn's, is in relic/data/imagenet100.py):
  python -m relic.data.imagenet100 --imagenet=/data/imagenet --out=/data/imagenet100
Command (one GPU; the same command on more devices or a TPU VM):
  python -m relic.main --config=configs/imagenet100.py --config.data.path=/data/imagenet100 --workdir=DIR
  A seconds-long CPU run of the same code paths: configs/imagenet100.py:runlocal.
Then linear evaluation (frozen encoder, configs/linear_probe.py's protocol at 224 px, val
  split):
  python -m relic.main --config=configs/imagenet100.py:linear --config.data.path=/data/imagenet100 \
      --config.pretrained=DIR --workdir=DIR_linear
Data: the image-folder source: train/ (about 1,300 images per class; the length counts the
  files found) and val/ (50 per class, 5,000); labels = the sorted wnids.
Recipe (relic/benchmark_configs.py): ResNet-18 (ImageNet stem), 2 views of 224 px (8-100%) +
  2 of 96 px (5-14%, ReLICv2's), BYOL's augmentation, no masking (saliency masks:
  --config.data.mask_path=MASKS --config.data.mask_prob=0.1); LARS base rate 0.5 (x batch / 256),
  weight decay 1e-6, trust 0.02 with clip_lr, 10 warm-up epochs, EMA 0.99 -> 1 (solo-learn's
  BYOL ImageNet-100 values: batch 2 x 128, lr 0.5, 400 epochs). kNN top-1 on val every 4,950
  steps (bank of 10,000 train images).
Reference (published numbers of the nearest anchor, not relic runs): solo-learn README,
  ImageNet-100 table (ResNet-18, 400 epochs, linear Acc@1 online / offline): BYOL 80.16 / 80.32,
  SimCLR 77.64 / - (github.com/vturrisi/solo-learn at 9187ea3).
Compute: ceil(400 x N / 256) steps for the N train images found (about 200,000 for ~127,000
  images); 30.0 GFLOPs per image per step (XLA cost analysis of the step), about 1.5e18 FLOPs
  in all. Wall time: unmeasured (no accelerator here); JPEG decoding on the host sets the pace
  of 224 px pipelines (README, Performance).
"""

from relic.benchmark_configs import benchmark_config


def get_config(arg=None):
  return benchmark_config("imagenet100", arg)
