"""ReLICv2 pretraining of a ResNet-18 on CIFAR-10 (1000 epochs, batch 256), solo-learn's recipe.

Command (one GPU; the same command on more devices or a TPU VM):
  tfds build cifar10                      # once: download and prepare (tfds's command line)
  python -m relic.main --config=configs/cifar10.py --workdir=DIR
  A seconds-long CPU run of the same code paths: configs/cifar10.py:runlocal.
Then linear evaluation (frozen encoder, configs/linear_probe.py's protocol on train at 32 px,
  test split):
  python -m relic.main --config=configs/cifar10.py:linear --config.pretrained=DIR --workdir=DIR_linear
Recipe (relic/benchmark_configs.py): ResNet-18 with the CIFAR stem; 2 views of 32 px (8-100% of
  the image) + 2 of 18 px (8-50%), BYOL's colour augmentation without blur, no masking; LARS
  base rate 1.0 (x batch / 256), weight decay 1e-5, trust coefficient 0.02 with solo-learn's
  clip_lr, 10 warm-up epochs then cosine; EMA 0.99 -> 1. kNN top-1 on test every 1,950 steps
  (monitor/knn_top1; k 200, T 0.1, lightly's settings), a frozen linear classifier + kNN at the
  end (results.json).
Reference (published numbers of the nearest anchors, not relic runs):
  solo-learn README, CIFAR-10 table (ResNet-18, 1000 epochs, linear Acc@1): BYOL 92.58,
  SimCLR 90.74 (github.com/vturrisi/solo-learn at 9187ea3).
  lightly benchmarks page, CIFAR-10 table (ResNet-18, batch 512, 800 epochs, best kNN top-1 over
  training, k 200): BYOL 0.910, SimCLR 0.879 (docs/source/getting_started/benchmarks.rst of
  github.com/lightly-ai/lightly at 948454f).
Compute: 195,313 steps (ceil(1000 x 50,000 / 256)); 9.9 GFLOPs per image per step (XLA cost
  analysis of the step, 2 x 32 + 2 x 18 px views), 4.9e17 FLOPs in all. Wall time: unmeasured
  (no accelerator here); lightly's 2-view BYOL at 800 epochs took 401 minutes on its (unnamed) GPU.
"""

from relic.benchmark_configs import benchmark_config


def get_config(arg=None):
  return benchmark_config("cifar10", arg)
