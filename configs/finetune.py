"""Semi-supervised fine-tuning of a pretrained encoder on 1% or 10% of the ImageNet labels.

Command:
  python -m relic.main --config=configs/finetune.py:subset=1pct \
      --config.pretrained=WORKDIR_OR_CHECKPOINT --workdir=DIR
  subset=1pct / 10pct: SimCLR's label lists (tfds imagenet2012_subset/1pct, /10pct; 12,811 and
  128,116 images); subset=full: all labels. Reported on the ImageNet validation set.
Recipe: the whole network + a linear head, BN in train mode with global batch statistics,
  SGD + Nesterov 0.9, base lr 0.05 x batch/256 at batch 1024, cosine, no weight decay, no
  warm-up, random-resized crop + flip; 60 epochs for 1pct, 30 for 10pct and full. Rate sweep:
  --config.finetune.lr_grid=0.01,0.02,0.05,0.1 (each rate a full run scored on a 10% hold-out of
  the labelled examples, then the best retrained on all of them).
Sources. DeepMind's released evaluation fine-tunes when google-deepmind/relicv2 configs/eval.py
  sets freeze_backbone=False (eval_experiment.py: the backbone then trains, is_training=True);
  what that code fixes, relic mirrors [code]: one optimiser and one rate for the encoder and the
  head (finetune.head_lr_multiplier=1), optax.sgd with Nesterov momentum 0.9 (finetune.momentum)
  and no weight decay (finetune.weight_decay=0), no warm-up (finetune.warmup_epochs=0), cosine to
  0, the head as hk.Linear's default init (finetune.head_init='haiku', seeded by config.seed),
  BatchNorm in training mode, reported on the ImageNet validation set. It has no label subsets
  (it trains on TRAIN_AND_VALID, all 1,281,167 images) and its rate 0.3 and 100 epochs are the
  linear evaluation's (the same config file, main_loop.py's flags): the 'deepmind' variant below
  runs exactly that. The 1%/10% subsets, base rate 0.05 and 60/30 epochs are [recon]: SimCLR's
  semi-supervised recipe (Chen et al. 2020, appendix B.5; not checked against the paper here).
  One difference: DeepMind's BatchNorm in this mode normalises with per-device statistics (no
  cross_replica_axis in eval_experiment.py's bn_config); relic uses global batch statistics
  [recon].
ImageNet as an image folder (--config.data.source=folder --config.data.path=DIR, DIR/train/<wnid>/):
  SimCLR's lists by file name, --config.finetune.subset_file=1percent.txt (or 10percent.txt,
  from SimCLR's imagenet_subsets/), with subset=full.
Other datasets: set config.data (e.g. --config.data.source=folder --config.data.path=DIR); a
  1pct/10pct subset is then a deterministic class-balanced fraction of the train split
  (finetune.label_fraction for any other fraction, finetune.subset_seed to redraw it).
Variants: 'deepmind': DeepMind's fine-tuning mode exactly [code]: all labels (subset=full),
  base lr 0.3 x batch/256 at batch 1024, 100 epochs, the rest as above.
  'runlocal': the built-in dataset at 32 px (10% subset), minutes on a CPU:
  --config=configs/finetune.py:runlocal --config.pretrained=/tmp/relic_quickstart
Expected: the ReLICv2 paper's semi-supervised table (ResNet-50, 1% and 10% labels); its values
  are not reproduced here [unverified].
Runtime: 1pct: 60 epochs of 12.8k images (~0.6 ImageNet epochs of forward + backward); 10pct:
  30 epochs of 128k (~3 ImageNet epochs); about one and a few GPU-node hours respectively.
"""

from relic.config import check_config_args, parse_config_arg
from relic.presets import apply_eval_runlocal, imagenet_eval_config

EPOCHS = {"1pct": 60.0, "10pct": 30.0, "full": 30.0}   # [recon] SimCLR's semi-supervised recipe
# [code] google-deepmind/relicv2 configs/eval.py (base_learning_rate) and main_loop.py's flags
# (--batch_size, --num_epochs), run with freeze_backbone=False.
DEEPMIND = dict(base_lr=0.3, num_epochs=100.0, batch_size=1024)


def get_config(arg=None):
  options = parse_config_arg(arg)
  check_config_args(options, ("subset", "runlocal", "deepmind"), "finetune")
  if "deepmind" in options and options.get("subset", "full") != "full":
    raise ValueError("finetune: 'deepmind' fine-tunes on all labels; drop subset= or use "
                     "subset=full.")
  subset = options.get("subset", "full" if "deepmind" in options else "1pct")
  if subset not in EPOCHS:
    raise ValueError(f"finetune: unknown subset={subset!r}; choose one of {sorted(EPOCHS)}.")
  config = imagenet_eval_config("finetune")
  config.finetune.update(dict(subset=subset, num_epochs=EPOCHS[subset]))
  if "deepmind" in options:
    config.finetune.update(DEEPMIND)
  if "runlocal" in options:
    apply_eval_runlocal(config)
    config.finetune.subset = options.get("subset", "10pct")
  return config
