"""ReLICv2 pretraining of a ResNet-18 on CIFAR-100 (1000 epochs, batch 256), solo-learn's recipe.

Command (one GPU; the same command on more devices or a TPU VM):
  tfds build cifar100                     # once: download and prepare (tfds's command line)
  python -m relic.main --config=configs/cifar100.py --workdir=DIR
  A seconds-long CPU run of the same code paths: configs/cifar100.py:runlocal.
Then linear evaluation (frozen encoder, configs/linear_probe.py's protocol on train at 32 px,
  test split):
  python -m relic.main --config=configs/cifar100.py:linear --config.pretrained=DIR --workdir=DIR_linear
Recipe: the CIFAR-10 recipe (configs/cifar10.py, relic/benchmark_configs.py) on CIFAR-100's 100
  classes: ResNet-18 with the CIFAR stem, 2 x 32 px + 2 x 18 px views without blur, LARS base
  rate 1.0, weight decay 1e-5, trust 0.02 with clip_lr, EMA 0.99 -> 1; kNN top-1 on test every
  1,950 steps (k 200, T 0.1), a frozen linear classifier + kNN at the end.
Reference (published numbers of the nearest anchor, not relic runs):
  solo-learn README, CIFAR-100 table (ResNet-18, 1000 epochs, linear Acc@1): BYOL 70.46,
  SimCLR 65.78 (github.com/vturrisi/solo-learn at 9187ea3).
Compute: 195,313 steps (ceil(1000 x 50,000 / 256)); 9.9 GFLOPs per image per step (XLA cost
  analysis of the step), 4.9e17 FLOPs in all. Wall time: unmeasured (no accelerator here).
"""

from relic.benchmark_configs import benchmark_config


def get_config(arg=None):
  return benchmark_config("cifar100", arg)
