"""Linear evaluation of a pretrained encoder on ImageNet: the official ReLICv2 protocol.

Command (the same on one GPU, a GPU node or a TPU pod slice):
  python -m relic.main --config=configs/linear_probe.py \
      --config.pretrained=WORKDIR_OR_CHECKPOINT --workdir=DIR
  WORKDIR_OR_CHECKPOINT: a relic pretraining workdir, one of its checkpoints/STEP directories, or
  a DeepMind BYOL/ReLICv2 .pkl. The architecture is read from it.
Protocol: frozen encoder (BN in inference mode), one linear layer, SGD + Nesterov 0.9, base lr
  x batch/256 at batch 1024, cosine, 100 epochs, no weight decay, random-resized crop + flip at
  224 px; test = centre 224/256 crop. The base rates (0.1, 0.2, 0.3, 0.5, 1.0) are trained side by
  side on train[10000:] and the best on train[:10000] is reported on the validation set.
Outputs: results.json / results.md, probe_head.npz + probe_head.json (input of
  configs/robustness.py and of the PyTorch export).
Variants (configs/linear_probe.py:ARG):
  'fast': centre crops only, features computed once and the heads trained on the cache (one
     encoder pass over ImageNet instead of 100; a little below the augmented protocol).
  'runlocal': the built-in dataset at 32 px, minutes on a CPU, e.g. on the quickstart's encoder:
     --config=configs/linear_probe.py:runlocal --config.pretrained=/tmp/relic_quickstart
Expected: 77.1% top-1 for the ReLICv2 ResNet-50 (paper); method.md section 6 for the others.
Runtime: the augmented protocol decodes and crops 128M images (100 epochs); on one 8-GPU node
  it is bound by JPEG decoding on the host (order of 10 hours, depending on the CPU). 'fast'
  needs one pass over ImageNet (tens of minutes) plus minutes for the heads.
"""

from relic.config import apply_eval_runlocal, check_config_args, imagenet_eval_config, parse_config_arg


def get_config(arg=None):
  options = parse_config_arg(arg)
  check_config_args(options, ("runlocal", "fast"), "linear_probe")
  config = imagenet_eval_config("linear_probe")
  if "fast" in options:
    config.linear_probe.update(dict(train_augment=False, precompute_features=True))
  if "runlocal" in options:
    apply_eval_runlocal(config)
  return config
