"""ReLICv2 pretraining of a ResNet-200 2x on ImageNet (1000 epochs, batch 4096).

Command (TPU VM pod slice or GPU node; the same command on every host):
  python -m relic.main --config=configs/resnet200_2x.py --workdir=gs://BUCKET/relic_resnet200_2x
  Saliency masks: add --config.data.mask_path=MASKS (one PNG per image, see README) or
  --config.data.mask_prob=0 to train without masking.
  Presets: configs/resnet200_2x.py:epochs=300 or :epochs=100; a seconds-long CPU smoke run of the
  same code paths: configs/resnet200_2x.py:runlocal.
Then linear evaluation:
  python -m relic.main --config=configs/linear_probe.py --config.pretrained=gs://BUCKET/relic_resnet200_2x \
      --workdir=gs://BUCKET/relic_resnet200_2x_linear
Expected: 80.6% ImageNet linear top-1 [ReLICv2 paper abstract: "80.6% with larger ResNet
  models"; the paper's largest encoder].
Compute: about 1977 GFLOPs per image per step (online forward+backward on 4x224 + 2x96
  views, target forward on 4x224), 2.5e+21 FLOPs for 1000 epochs.
  Memory: use --config.model.dtype=bfloat16 --config.model.remat=True on 16 GiB devices.
"""

from relic.presets import imagenet_pretrain_config


def get_config(arg=None):
  return imagenet_pretrain_config(arg, depth=200, width_multiplier=2, name="resnet200_2x")
