"""ReLICv2 pretraining of a ResNet-18 on Imagenette (160 px version, 800 epochs, batch 256).

Command (one GPU; the same command on more devices or a TPU VM):
  tfds build imagenette/160px-v2          # once: download and prepare
  python -m relic.main --config=configs/imagenette.py --workdir=DIR
  A seconds-long CPU run of the same code paths: configs/imagenette.py:runlocal.
Then linear evaluation (frozen encoder, configs/linear_probe.py's protocol on train at
  128 px, validation split):
  python -m relic.main --config=configs/imagenette.py:linear --config.pretrained=DIR --workdir=DIR_linear
Data: tfds imagenette/160px-v2 (fastai's imagenette2-160: 9,469 train, 3,925 validation images
  of 10 easy ImageNet classes), the version lightly's benchmark uses, at 128 px as it does.
Recipe (relic/benchmark_configs.py): ResNet-18 (ImageNet stem, as lightly's torchvision
  ResNet-18), 2 views of 128 px (8-100%) + 2 of 64 px (8-50%), BYOL's augmentation, no masking;
  LARS base rate 0.5, weight decay 1e-6, trust 0.02 with clip_lr, 10 warm-up epochs; EMA
  0.99 -> 1. kNN top-1 on validation every 370 steps (10 epochs; k 20, T 0.1: lightly's
  protocol reports the best kNN top-1 over training, here the maximum of monitor/knn_top1 in
  metrics.jsonl).
Reference (published numbers of the nearest anchor, not relic runs): lightly benchmarks page,
  Imagenette table (ResNet-18, batch 256, 800 epochs, best kNN top-1 over training, k 20, one
  A6000): BYOL 0.887 (214.8 min), SimCLR 0.889 (193.5 min) (docs/source/getting_started/
  benchmarks.rst of github.com/lightly-ai/lightly at 948454f; its script now sets knn_k=200).
Compute: 29,591 steps (ceil(800 x 9,469 / 256)); 9.6 GFLOPs per image per step (XLA cost
  analysis of the step), 7.3e16 FLOPs in all, about the FLOPs of lightly's 2-view BYOL step at
  128 px. Wall time: unmeasured here; lightly's BYOL run of the same length took 215 minutes
  on one A6000.
"""

from relic.benchmark_configs import benchmark_config


def get_config(arg=None):
  return benchmark_config("imagenette", arg)
