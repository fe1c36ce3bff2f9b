"""The configuration schema shared by every job, its command-line arguments, and its validation.

Every experiment config (``configs/*.py``) starts from :func:`base_config` and only overrides
fields, so all jobs read the same names. The returned config is locked: a misspelled key fails
with the list of the fields that exist, in a config file as on the command line.
"""

from __future__ import annotations

import ml_collections

from relic.data.config import data_config
from relic.errors import ConfigError  # noqa: F401  (re-exported)


def base_config() -> ml_collections.ConfigDict:
  """Defaults: ReLICv2 ResNet-50 on ImageNet (each value's source: the README's hyper-parameter
  table); configs override what differs."""
  config = ml_collections.ConfigDict()
  config.job = "pretrain"
  config.seed = 0

  config.model = ml_collections.ConfigDict(dict(
      depth=50,
      width_multiplier=1,
      stage_sizes=(),           # () = the depth's standard layout; e.g. (1, 1, 1, 1) for tests.
      base_width=64,
      small_images=False,       # CIFAR-style stem for ~32 px inputs.
      zero_init_residual=True,  # blocks start as the identity (paper); False learns faster early.
      dtype="float32",          # compute dtype: 'float32' or 'bfloat16'.
      padding="torchvision",    # 'torchvision' or 'same' (Haiku/TF), see relic/models/resnet.py.
      remat=False,
      projector_hidden_dim=4096,
      projector_output_dim=256,
      predictor=False,          # BYOL-style predictor on the online branch.
      predictor_hidden_dim=4096,
      # A bias on the last Linear of the projector (and predictor). False = BYOL's MLP, which
      # ReLICv2's released code ships (utils/networks.py: Linear(bias) -> BN -> ReLU ->
      # Linear(with_bias=False)); True = the layout of relic runs from before this field.
      projector_last_bias=False,
  ))
  config.loss = ml_collections.ConfigDict(dict(
      # 'relicv2'; the baselines in the same pipeline (same views, network, optimiser and
      # schedule; relic/objectives.py): 'byol' (normalised MSE of the online prediction onto
      # the target projection of another view; needs model.predictor=True) and 'simclr'
      # (NT-Xent between online projections, 2B - 2 negatives, no target network); or
      # 'supervised': cross-entropy on the labels (the online network's output are the
      # logits, so projector_output_dim must equal the number of classes), a reference.
      objective="relicv2",
      temperature=0.1,          # relicv2 and simclr.
      beta=1.0,                 # relicv2: weight of the invariance (KL) term; 0 = InfoNCE.
      num_negatives=0,          # relicv2: 0 = the whole global batch; n > 0 samples n per anchor.
  ))
  config.ema = ml_collections.ConfigDict(dict(base_rate=0.996))
  config.optim = ml_collections.ConfigDict(dict(
      name="lars",              # 'lars', 'sgd', 'adamw'.
      base_lr=0.2,              # scaled by batch_size / 256.
      weight_decay=1.5e-6,
      momentum=0.9,
      trust_coefficient=1e-3,
      lars_clip=False,          # solo-learn's clip_lr: trust ratio capped at the rate (optim.py).
      warmup_epochs=10.0,
      nesterov=False,           # 'sgd' only: Nesterov momentum (linear evaluation uses it).
  ))
  config.train = ml_collections.ConfigDict(dict(
      batch_size=4096,          # global batch, over all devices and processes.
      num_epochs=1000.0,
      num_steps=0,              # > 0 overrides num_epochs.
      # Examples per epoch: 0 = the size of data.train_split as read (the usual case); N > 0
      # counts epochs of N examples whatever the split holds (e.g. a subset run that should
      # train as long as on the full dataset). See data.expected_train_examples.
      num_train_examples=0,
      log_every_steps=100,
      checkpoint_every_steps=2000,
      keep_checkpoints=3,       # the last N ...
      keep_every_steps=0,       # ... plus every K-th step for good (0 = none).
      eval_every_steps=5000,
      stop_at_step=0,           # > 0: checkpoint and exit at this step (time-sliced runs); a
                                # rerun of the same command continues. 0 = run to the end.
      fsdp=False,               # shard parameters + optimizer state over the data axis.
      view_images=8,            # pretraining: the views of this many images of the first
                                # batch go to TensorBoard at step 0 (views/...); 0 = none.
      nan_policy="stop",        # every job: 'stop' or 'skip' (skip up to max_skipped_steps).
      max_skipped_steps=10,
  ))
  config.data = data_config()
  config.probe = ml_collections.ConfigDict(dict(
      enabled=True,             # online linear probe on stop-gradient features.
      lr=0.2,
      num_classes=0,            # 0 = from the dataset.
  ))
  # Evaluators of pretraining by name (relic/evaluators/registry.py): 'periodic' ones run every
  # train.eval_every_steps and after the last step, 'final' ones once at the end and write
  # results.json / results.md. Their settings are the sections below.
  config.evaluators = ml_collections.ConfigDict(dict(
      periodic=("knn",),
      final=(),                 # e.g. ('frozen',): linear + kNN on frozen features.
  ))
  config.knn = ml_collections.ConfigDict(dict(
      k=20,
      temperature=0.07,
      num_train_examples=10_000,  # labelled bank size; 0 = the whole split.
  ))
  config.final_eval = ml_collections.ConfigDict(dict(
      # The 'frozen' evaluator: linear classifier + kNN on frozen features, next to a
      # random-init encoder of the same architecture.
      num_train_examples=10_000,  # train-split examples used (0 = all).
      num_test_examples=0,        # eval-split examples used (0 = all).
      extra_splits=(),            # more splits to report, e.g. ('test_ood',).
      compare_random_init=True,
  ))
  # Evaluation jobs; each reads config.pretrained.
  config.linear_probe = ml_collections.ConfigDict(dict(
      # DeepMind's ReLICv2 linear evaluation, every default below [code]: google-deepmind/
      # relicv2 configs/eval.py, eval_experiment.py and main_loop.py (configs/linear_probe.py
      # lists them): frozen encoder (BN in inference mode), one linear layer, SGD + Nesterov
      # momentum, no warm-up, cosine to 0, no weight decay, all training images.
      batch_size=1024,          # global batch of the head's SGD (main_loop.py --batch_size).
      num_epochs=100.0,         # main_loop.py --num_epochs.
      # Base rates (x batch_size / 256), trained side by side in one pass; with several, the
      # one with the best hold-out top-1 is reported. (0.3,) = eval.py's base_learning_rate,
      # no sweep; configs/linear_probe.py:sweep sweeps (relic's option).
      lr_grid=(0.3,),
      momentum=0.9,             # Nesterov (eval.py optimizer_config).
      weight_decay=0.0,         # eval.py: optax.sgd, no decay.
      # train[:N] selects the rate, train[N:] trains; 0 = no hold-out, train on the whole train
      # split (eval.py trains on TRAIN_AND_VALID, all 1,281,167 images).
      holdout_examples=0,
      # Initial head: 'haiku' = hk.Linear's default (truncated normal, stddev 1/sqrt(fan_in),
      # zero bias; eval_experiment.py _classif_fn), drawn with config.seed; 'zeros'.
      head_init="haiku",
      image_size=224,           # test: resize short side to size*256/224, centre crop.
      train_augment=True,       # random-resized crop + flip; False = centre crops.
      precompute_features=False,  # needs train_augment=False: encode once, train on the cache.
      log_every_steps=100,
      checkpoint_every_steps=1000,
  ))
  config.finetune = ml_collections.ConfigDict(dict(
      # The whole network + a linear head; BN in train mode with global batch statistics.
      subset="full",            # '1pct' / '10pct' labelled subsets (semi-supervised) or 'full'.
      label_fraction=0.0,       # sources without SimCLR's lists: class-balanced fraction of the
                                # train split; 0 = from subset (1pct -> 0.01, 10pct -> 0.1).
      subset_seed=0,            # fixes which examples a label_fraction subset holds.
      # A file of training image names, one per line (SimCLR's 1percent.txt / 10percent.txt):
      # with an image-folder ImageNet, the same subset as tfds's lists. '' = none.
      subset_file="",
      batch_size=1024,
      num_epochs=30.0,          # [recon] SimCLR: 60 for 1pct, 30 for 10pct (configs/finetune.py).
      base_lr=0.05,             # x batch_size / 256 [recon, SimCLR's fine-tuning rate].
      lr_grid=(),               # base rates to sweep (one full run each); () = base_lr only.
      holdout_examples=0,       # sweep: first N train examples score the rates (0 = 10%).
      holdout_split="",         # sweep: an official validation split that is part of a combined
                                # train split ('validation' of 'train+validation'); '' = N above.
      head_lr_multiplier=1.0,   # the new head's rate relative to the encoder's [code: 1, one
                                # optimiser for both in relicv2/eval_experiment.py].
      head_init="haiku",        # [code] hk.Linear's default (see linear_probe.head_init).
      momentum=0.9,             # Nesterov.
      weight_decay=0.0,
      warmup_epochs=0.0,
      image_size=224,
      log_every_steps=100,
      checkpoint_every_steps=1000,
      keep_checkpoints=2,
  ))
  config.transfer = ml_collections.ConfigDict(dict(
      # Names from relic/data/transfer_datasets.py, or 'tfds_name:train_split:test_split'.
      datasets=("food101", "cifar10", "cifar100", "caltech_birds2011", "sun397", "cars196",
                "voc2007", "dtd", "oxford_iiit_pet", "caltech101", "oxford_flowers102"),
      protocols=("linear",),    # 'linear' (frozen features) and/or 'finetune' (config.finetune).
      image_size=224,
      batch_size=256,           # global batch of feature extraction.
      l2_grid=(),               # logistic-regression L2 strengths; () = 1e-6 ... 1.
      val_fraction=0.2,         # of train, held out to choose the L2 strength (datasets without
                                # an official validation split).
      max_iter=1000,            # L-BFGS iterations per fit.
      num_train_examples=0,     # cap on train examples per dataset (0 = all).
  ))
  config.segmentation = ml_collections.ConfigDict(dict(
      # Semantic segmentation transfer, BYOL's protocol (appendix D.4) [recon]: FCN-16s (the
      # encoder's last stage dilated, two 3x3 convs of 256 channels with dilation 6 + BN + ReLU,
      # a 1x1 classifier), per-pixel softmax cross-entropy, whole network trained.
      # Data: config.data (source 'voc2012', 'cityscapes' or 'builtin'; its train / eval splits).
      crop_size=513,            # training crops (after random scaling; padded with 'ignore').
      eval_size=(513, 513),     # (height, width) evaluated: central crop / padding of each image.
      min_scale=0.5,            # random rescaling of training images ...
      max_scale=2.0,            # ... by a factor in [min_scale, max_scale].
      output_stride=16,         # 16: last stage dilated (FCN-16s); 8: last two; 32: none.
      head_channels=256,
      head_dilation=6,
      batch_size=16,            # global batch.
      num_steps=30_000,
      base_lr=0.02,             # [recon] BYOL sweeps 5 log-spaced rates in [1e-3, 1e-1].
      lr_grid=(),               # rates to sweep (one full run each on a hold-out); () = base_lr.
      holdout_examples=2119,    # sweep: the first N train examples score the rates (BYOL: 2119).
      lr_decay_at=(0.7, 0.9),   # the rate is multiplied by 0.1 at these fractions of training.
      momentum=0.9,
      weight_decay=1e-4,
      log_every_steps=100,
      checkpoint_every_steps=1000,
      keep_checkpoints=2,
  ))
  config.robustness = ml_collections.ConfigDict(dict(
      # The ImageNet linear head of a linear_probe run, no fine-tuning, on shifted test sets.
      probe="",                 # linear_probe workdir (its probe_head.npz + probe_head.json).
      # Names from relic/data/robustness_sets.py or 'dataset:split' ('' = data.dataset);
      # () = the suite of data.source: built-in -> test + test_ood; else the ImageNet suite.
      datasets=(),
      corruptions=(),           # ImageNet-C corruptions; () = the 15 benchmark ones.
      severities=(1, 2, 3, 4, 5),
      batch_size=1024,          # global eval batch.
      image_size=0,             # 0 = the probe's.
      max_examples=0,           # per test set, for quick looks (0 = all).
      # The unpacked objectnet-1.0 folder (not in tfds: objectnet.dev); '' = no ObjectNet.
      objectnet_path="",
  ))
  config.saliency = ml_collections.ConfigDict(dict(
      # Saliency masks without labels (the 'saliency' job, relic/jobs/saliency.py): classical
      # cues -> pseudo-masks -> an FCN (config.segmentation) trained on them -> masks.
      splits=(),                # splits to mask; () = (data.train_split,). Refinement trains on
                                # the first.
      output="",                # the masks' folder ('' = WORKDIR/masks): give it to data.mask_path.
      image_size=128,           # masks are computed and written at this square size (pretraining
                                # resizes a mask to its image).
      batch_size=64,            # images per process in each batch of the mask passes.
      cues=("contrast", "barrier", "centre"),  # combined by product (relic/saliency/cues.py).
      refine=True,              # False: the cue masks are the output (the cheap stage alone).
      score_splits=(),          # splits scored against ground truth (IoU, F-measure, MAE).
      ground_truth="",          # the ground-truth masks (data.mask_path layout); '' = the
                                # source's own (the built-in exact masks).
  ))
  config.pretrained = ""        # evaluation jobs: relic workdir, checkpoint or DeepMind pickle.
  config.lock()
  return config


def parse_config_arg(arg: str | None) -> dict[str, str]:
  """Parses ``configs/NAME.py:ARG`` strings: 'runlocal', 'epochs=300', 'epochs=300,runlocal'."""
  options: dict[str, str] = {}
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, _, value = item.partition("=")
    options[key.strip()] = value.strip() if value else "true"
  return options


def check_config_args(options: dict[str, str], known: tuple[str, ...], config_name: str) -> None:
  unknown = sorted(set(options) - set(known))
  if unknown:
    raise ConfigError(f"{config_name}: unknown config argument(s) {unknown}. Fix: this config "
                      f"accepts {list(known)}"
                      + (f", e.g. --config={config_name}:{known[0]}." if known else "."))


# Moved fields and their new flags; main.py checks them first (ml_collections: "no such field").
RENAMED = {
    "segmentation.dataset": "--config.data.source={}",
    "segmentation.path": "--config.data.source=voc2012 --config.data.path={}",
    "segmentation.data_dir": "--config.data.source=cityscapes --config.data.data_dir={}",
    "segmentation.train_split": "--config.data.train_split={}",
    "segmentation.eval_split": "--config.data.eval_split={}",
}


def check_renamed(args: list[str]) -> None:
  """ConfigError for a ``--config.FIELD[=VALUE]`` flag of a moved field, naming its new flags."""
  for i, arg in enumerate(args):
    field, equals, value = arg.lstrip("-").removeprefix("config.").partition("=")
    if arg.startswith(("--config.", "-config.")) and field in RENAMED:
      value = value if equals else (args[i + 1:] or ["VALUE"])[0]
      raise ConfigError(f"config.{field}: was renamed (the segmentation job reads its data from "
                        f"config.data). Fix: use {RENAMED[field].format(value)}.")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the fields shared by every job (jobs check their own fields on top); one
  ConfigError lists every field that fails. Imports no TensorFlow."""
  from relic.data import sources  # pylint: disable=import-outside-toplevel
  from relic.errors import Problems
  from relic.models.resnet import PADDING_MODES, STAGE_SIZES

  problems = Problems()
  require = problems.require  # each check below is independent: report them all at once

  m = config.model
  require(m.depth in STAGE_SIZES, "model.depth", f"unsupported depth {m.depth}",
           f"choose one of {sorted(STAGE_SIZES)}")
  require(m.width_multiplier >= 1, "model.width_multiplier",
           f"must be >= 1, got {m.width_multiplier}", "use 1, 2 or 4")
  require(not m.stage_sizes or (len(m.stage_sizes) == 4 and min(m.stage_sizes) >= 1),
           "model.stage_sizes", f"must be () or four positive block counts, got {m.stage_sizes}",
           "e.g. (1, 1, 1, 1)")
  require(m.dtype in ("float32", "bfloat16"), "model.dtype", f"unknown dtype {m.dtype!r}",
           "choose 'float32' or 'bfloat16'")
  require(m.padding in PADDING_MODES, "model.padding", f"unknown padding {m.padding!r}",
           f"choose one of {PADDING_MODES}")
  require(config.loss.temperature > 0, "loss.temperature",
           f"must be > 0, got {config.loss.temperature}", "use e.g. 0.1")
  require(config.loss.beta >= 0, "loss.beta", f"must be >= 0, got {config.loss.beta}",
           "use 1.0, or 0 for pure InfoNCE")
  require(config.loss.num_negatives >= 0, "loss.num_negatives",
           f"must be >= 0, got {config.loss.num_negatives}",
           "use 0 for the whole batch or a positive count")
  require(config.optim.name in ("lars", "sgd", "adamw"), "optim.name",
           f"unknown optimiser {config.optim.name!r}", "choose 'lars', 'sgd' or 'adamw'")
  require(config.optim.base_lr >= 0, "optim.base_lr", f"must be >= 0, got {config.optim.base_lr}",
           "use e.g. 0.2")
  require(0.0 <= config.ema.base_rate <= 1.0, "ema.base_rate",
           f"must be in [0, 1], got {config.ema.base_rate}", "use e.g. 0.996")
  require(config.train.nan_policy in ("stop", "skip"), "train.nan_policy",
          f"unknown policy {config.train.nan_policy!r}", "choose 'stop' or 'skip'")
  require(config.train.max_skipped_steps >= 0, "train.max_skipped_steps",
          f"must be >= 0, got {config.train.max_skipped_steps}", "use e.g. 10")
  require(config.train.num_train_examples >= 0, "train.num_train_examples",
          f"must be >= 0, got {config.train.num_train_examples}",
          "use 0 (the size of the training split) or a positive count")
  require(config.data.expected_train_examples >= 0, "data.expected_train_examples",
          f"must be >= 0, got {config.data.expected_train_examples}",
          "use 0 (no statement) or the number of examples the config was written for")
  require(config.train.batch_size > 0, "train.batch_size",
           f"must be > 0, got {config.train.batch_size}", "use a positive global batch size")
  require(config.train.num_steps > 0 or config.train.num_epochs > 0, "train.num_epochs",
           "neither num_epochs nor num_steps is positive", "set one of them")
  d = config.data
  problems.check(sources.source_class, d.source, sources.DataSource)
  require(0.0 <= d.mask_prob <= 1.0, "data.mask_prob",
           f"must be a probability in [0, 1], got {d.mask_prob}", "use e.g. 0.1, or 0 to disable")
  require(0.0 <= d.grayscale_prob <= 1.0, "data.grayscale_prob",
           f"must be a probability in [0, 1], got {d.grayscale_prob}", "use e.g. 0.2 (BYOL's)")
  require(d.color_jitter_strength >= 0, "data.color_jitter_strength",
           f"must be >= 0, got {d.color_jitter_strength}",
           "use 1 for BYOL's colour jitter, 0 to disable it, 2 for SimCLR's strength 1")
  for group in ("large", "small"):
    v = d.views[group]
    require(v.num >= 0, f"data.views.{group}.num", f"must be >= 0, got {v.num}",
             "use a non-negative count")
    require(v.size > 0, f"data.views.{group}.size", f"must be > 0, got {v.size}",
             "use a positive size in pixels")
    require(0 < v.min_scale <= v.max_scale <= 1, f"data.views.{group}.min_scale",
             f"need 0 < min_scale <= max_scale <= 1, got ({v.min_scale}, {v.max_scale})",
             "use e.g. (0.08, 1.0)")
    require(v.presets and set(v.presets) <= set("AB"), f"data.views.{group}.presets",
             f"must be a string of 'A'/'B', got {v.presets!r}", "use e.g. 'AB'")
  require(d.views.large.num >= 1, "data.views.large.num",
           "at least one large view is needed (the target network sees only large views)",
           "set data.views.large.num >= 1")
  problems.raise_if_any()
