"""Transfer of a pretrained encoder to other datasets: linear and fine-tune protocols.

Command (all eleven datasets tfds provides, linear protocol):
  python -m relic.main --config=configs/transfer.py \
      --config.pretrained=WORKDIR_OR_CHECKPOINT --workdir=DIR
  One or a few datasets: --config.transfer.datasets=cifar10,dtd
  Fine-tuning as well:   configs/transfer.py:finetune (or --config.transfer.protocols=linear,finetune)
Datasets (relic/data/transfer_datasets.py): food101, cifar10, cifar100, caltech_birds2011
  (substitute for Birdsnap, which is not in tfds), sun397 (sun397/tfds), cars196, voc2007
  (voc/2007), dtd, oxford_iiit_pet, caltech101, oxford_flowers102 (prepare each with
  `tfds build NAME` once); FGVC Aircraft, not in tfds, from its unpacked download as
  'fgvc_aircraft:/path/to/fgvc-aircraft-2013b' (add it to the list for all twelve); also
  'tfds_name:train:test' and 'folder:PATH'.
Linear protocol: L2 logistic regression on frozen centre-crop features, the L2 strength chosen
  by the dataset's metric on its official validation split (VOC2007, DTD, Flowers-102, Aircraft:
  fit on 'train', scored on 'validation', refit on both) or on 20% of train, then scored
  on test (top-1 and mean per-class accuracy; VOC2007, multi-label: one-vs-rest, 11-point mAP).
Fine-tune protocol: config.finetune (full train split; finetune.lr_grid for a rate sweep, rates
  compared by the dataset's metric on the same validation splits, else on a prefix of train;
  VOC2007: one-vs-rest head).
Outputs: DIR/<dataset>/results.json per dataset and DIR/results.md, the table across datasets.
  A rerun skips the datasets already done for the same encoder.
Variants: 'runlocal': the built-in dataset as the target, minutes on a CPU:
  --config=configs/transfer.py:runlocal --config.pretrained=/tmp/relic_quickstart
Expected: the paper's transfer table, e.g. CIFAR-100 85.3 and Stanford Cars 92.3 top-1
  [paperswithcode-derived listing of the paper's results; linear or fine-tuned is not stated
  there]; the other datasets' numbers are not reproduced here [unverified].
"""

from relic.config import check_config_args, parse_config_arg
from relic.presets import apply_eval_runlocal, imagenet_eval_config


def get_config(arg=None):
  options = parse_config_arg(arg)
  check_config_args(options, ("finetune", "runlocal"), "transfer")
  config = imagenet_eval_config("transfer")
  if "finetune" in options:
    config.transfer.protocols = ("linear", "finetune")
    config.finetune.update(dict(subset="full", num_epochs=30.0))
  if "runlocal" in options:
    apply_eval_runlocal(config)
  return config
