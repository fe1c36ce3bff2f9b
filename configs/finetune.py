"""Semi-supervised fine-tuning of a pretrained encoder on 1% or 10% of the ImageNet labels.

Command:
  python -m relic.main --config=configs/finetune.py:subset=1pct \
      --config.pretrained=WORKDIR_OR_CHECKPOINT --workdir=DIR
  subset=1pct / 10pct: SimCLR's label lists (tfds imagenet2012_subset/1pct, /10pct; 12,811 and
  128,116 images); subset=full: all labels. Reported on the ImageNet validation set.
Recipe [recon, SimCLR's fine-tuning]: the whole network + a zero-initialised linear head, BN in
  train mode with global batch statistics, SGD + Nesterov 0.9, base lr 0.05 x batch/256 at batch
  1024, cosine, no weight decay, random-resized crop + flip; 60 epochs for 1pct, 30 for 10pct and
  full. Rate sweep: --config.finetune.lr_grid=0.01,0.02,0.05,0.1 (each rate a full run scored on
  a 10% hold-out of the labelled examples, then the best retrained on all of them).
ImageNet as an image folder (--config.data.source=folder --config.data.path=DIR, DIR/train/<wnid>/):
  SimCLR's lists by file name, --config.finetune.subset_file=1percent.txt (or 10percent.txt,
  from SimCLR's imagenet_subsets/), with subset=full.
Other datasets: set config.data (e.g. --config.data.source=folder --config.data.path=DIR); a
  1pct/10pct subset is then a deterministic class-balanced fraction of the train split
  (finetune.label_fraction for any other fraction, finetune.subset_seed to redraw it).
Variants: 'runlocal': the built-in dataset at 32 px (10% subset), minutes on a CPU:
  --config=configs/finetune.py:runlocal --config.pretrained=/tmp/relic_quickstart
Expected: the ReLICv2 paper's semi-supervised table (ResNet-50, 1% and 10% labels).
Runtime: 1pct: 60 epochs of 12.8k images (~0.6 ImageNet epochs of forward + backward); 10pct:
  30 epochs of 128k (~3 ImageNet epochs); about one and a few GPU-node hours respectively.
"""

from relic.config import apply_eval_runlocal, check_config_args, imagenet_eval_config, parse_config_arg

EPOCHS = {"1pct": 60.0, "10pct": 30.0, "full": 30.0}


def get_config(arg=None):
  options = parse_config_arg(arg)
  check_config_args(options, ("subset", "runlocal"), "finetune")
  subset = options.get("subset", "1pct")
  if subset not in EPOCHS:
    raise ValueError(f"finetune: unknown subset={subset!r}; choose one of {sorted(EPOCHS)}.")
  config = imagenet_eval_config("finetune")
  config.finetune.update(dict(subset=subset, num_epochs=EPOCHS[subset]))
  if "runlocal" in options:
    apply_eval_runlocal(config)
    config.finetune.subset = options.get("subset", "10pct")
  return config
