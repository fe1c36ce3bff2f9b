"""kNN evaluation of a pretrained encoder on ImageNet: weighted kNN on frozen features.

Weighted kNN (k 20, temperature 0.07) on frozen, L2-normalised features, with a labelled bank of
training images.

Command:
  python -m relic.main --config=configs/knn.py --config.pretrained=WORKDIR_OR_CHECKPOINT \
      --workdir=DIR
  WORKDIR_OR_CHECKPOINT: a relic pretraining workdir, one of its checkpoints/STEP directories, or
  a DeepMind BYOL/ReLICv2 .pkl. --config.knn.num_train_examples=0 uses the whole train split as
  the bank (1.28M ImageNet images; the default is 10,000, a quick monitor).
Outputs: results.json / results.md (kNN top-1 on the validation set).
Variants: 'runlocal': the built-in dataset at 32 px, a minute on a CPU, e.g.
  --config=configs/knn.py:runlocal --config.pretrained=/tmp/relic_quickstart
Expected: no published ReLICv2 kNN number exists; the quickstart encoder gives about its
  final-evaluation kNN row (README).
Runtime: one encoder pass over the bank and the validation set (minutes on an accelerator).
"""

from relic.config import check_config_args, parse_config_arg
from relic.presets import apply_eval_runlocal, imagenet_eval_config


def get_config(arg=None):
  options = parse_config_arg(arg)
  check_config_args(options, ("runlocal",), "knn")
  config = imagenet_eval_config("knn")
  config.data.views.large.size = 224
  if "runlocal" in options:
    apply_eval_runlocal(config)
    config.data.views.large.size = 32
  return config
