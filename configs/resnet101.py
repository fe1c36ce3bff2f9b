"""ReLICv2 pretraining of a ResNet-101 on ImageNet (1000 epochs, batch 4096).

Command (TPU VM pod slice or GPU node; the same command on every host):
  python -m relic.main --config=configs/resnet101.py --workdir=gs://BUCKET/relic_resnet101
  Saliency masks: add --config.data.mask_path=MASKS (one PNG per image, see README) or
  --config.data.mask_prob=0 to train without masking.
  Presets: configs/resnet101.py:epochs=300 or :epochs=100; a seconds-long CPU smoke run of the
  same code paths: configs/resnet101.py:runlocal.
Then linear evaluation:
  python -m relic.main --config=configs/linear_probe.py --config.pretrained=gs://BUCKET/relic_resnet101 \
      --workdir=gs://BUCKET/relic_resnet101_linear
Expected: 78.7% ImageNet linear top-1 (unverified: a recollection of the paper's Table 1).
Compute: about 267 GFLOPs per image per step (online forward+backward on 4x224 + 2x96
  views, target forward on 4x224), 3.4e+20 FLOPs for 1000 epochs.
"""

from relic.presets import imagenet_pretrain_config


def get_config(arg=None):
  return imagenet_pretrain_config(arg, depth=101, width_multiplier=1, name="resnet101")
