"""Linear evaluation of a pretrained encoder on ImageNet: DeepMind's ReLICv2 protocol, exactly.

Command (the same on one GPU, a GPU node or a TPU pod slice):
  python -m relic.main --config=configs/linear_probe.py \
      --config.pretrained=WORKDIR_OR_CHECKPOINT --workdir=DIR
  WORKDIR_OR_CHECKPOINT: a relic pretraining workdir, one of its checkpoints/STEP directories, or
  a DeepMind BYOL/ReLICv2 .pkl. The architecture is read from it.
Reproduces google-deepmind/relicv2 configs/eval.py (get_config) run by main_loop.py with its
  default flags, as eval_experiment.py executes it. Their value -> relic's field [all code]:
  main_loop.py --batch_size=1024             -> linear_probe.batch_size=1024
  main_loop.py --num_epochs=100; eval.py max_steps = num_epochs * 1281167 // batch_size
                                             -> linear_probe.num_epochs=100 (relic rounds the
                                                steps up: 125,114 instead of 125,113)
  eval.py base_learning_rate=0.3, x batch_size / 256 in utils/schedules.py learning_schedule
                                             -> linear_probe.lr_grid=(0.3,): one rate, no sweep
  eval.py warmup_steps=0; learning_schedule: cosine decay to 0 over max_steps
                                             -> no warm-up, cosine to 0 (relic/train/heads_step.py)
  eval.py optimizer_config momentum=0.9, nesterov=True; eval_experiment.py optax.sgd, no decay
                                             -> linear_probe.momentum=0.9 (Nesterov),
                                                linear_probe.weight_decay=0
  eval.py freeze_backbone=True; eval_experiment.py is_training=not freeze_backbone
                                             -> frozen encoder, BatchNorm in inference mode
  eval_experiment.py _build_train_input: dataset.Split.TRAIN_AND_VALID (1,281,167 images,
    utils/dataset.py), PreprocessMode.LINEAR_TRAIN (random crop of area U(0.08, 1), aspect
    3/4..4/3, flip, bicubic 224 px)        -> data.train_split='train', linear_probe.
                                                holdout_examples=0 (no hold-out),
                                                train_augment=True, image_size=224
  eval.py evaluation_config subset='test' = the tfds 'validation' split (utils/dataset.py
    _to_tfds_split), PreprocessMode.EVAL: centre crop 224/256 of the short side, bicubic
                                             -> data.eval_split='validation', the same crop
  eval_experiment.py _classif_fn hk.Linear(num_classes), default init: truncated normal with
    stddev 1/sqrt(fan_in), zero bias; initialised from PRNGKey(random_seed=0)
                                             -> linear_probe.head_init='haiku', config.seed=0
  eval_experiment.py _loss_fn: mean softmax cross-entropy over the global batch -> the same.
  Not mirrored: eval.py's evaluation batch_size=100 (relic scores every test image once with
  any batch) and encoder_class='ResNet50' (relic reads the architecture from the checkpoint).
Outputs: results.json / results.md, probe_head.npz + probe_head.json (input of
  configs/robustness.py and of the PyTorch export).
Variants (configs/linear_probe.py:ARG):
  'sweep': [recon] the base rates (0.1, 0.2, 0.3, 0.5, 1.0) trained side by side on
     train[10000:]; the head with the best top-1 on the held-out train[:10000] (DeepMind's
     VALID split) is reported on the validation set as trained (not retrained on all images).
     relic's option, not DeepMind's protocol.
  'fast': centre crops only, features computed once and the heads trained on the cache (one
     encoder pass over ImageNet instead of 100; a little below the augmented protocol).
  'runlocal': the built-in dataset at 32 px, minutes on a CPU, e.g. on the quickstart's encoder:
     --config=configs/linear_probe.py:runlocal --config.pretrained=/tmp/relic_quickstart
Expected: 77.1% top-1 for the ReLICv2 ResNet-50 [paper abstract]; ResNet-200 79.8%
  [paperswithcode entry]; ResNet-200 2x 80.6% [paper abstract: "80.6% with larger ResNet
  models"]. Other
  encoders: experiments/imagenet/README.md (rows marked unverified).
Runtime: the augmented protocol decodes and crops 128M images (100 epochs); on one 8-GPU node
  it is bound by JPEG decoding on the host (order of 10 hours, depending on the CPU). 'fast'
  needs one pass over ImageNet (tens of minutes) plus minutes for the heads.
"""

from relic.config import check_config_args, parse_config_arg
from relic.presets import apply_eval_runlocal, imagenet_eval_config

# The 'sweep' variant [recon]: base rates and the hold-out (DeepMind's VALID = train[:10000]).
SWEEP_LR_GRID = (0.1, 0.2, 0.3, 0.5, 1.0)
SWEEP_HOLDOUT = 10_000


def get_config(arg=None):
  options = parse_config_arg(arg)
  check_config_args(options, ("runlocal", "fast", "sweep"), "linear_probe")
  config = imagenet_eval_config("linear_probe")
  if "sweep" in options:
    config.linear_probe.update(dict(lr_grid=SWEEP_LR_GRID, holdout_examples=SWEEP_HOLDOUT))
  if "fast" in options:
    config.linear_probe.update(dict(train_augment=False, precompute_features=True))
  if "runlocal" in options:
    apply_eval_runlocal(config)
  return config
