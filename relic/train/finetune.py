"""Fine-tuning: the whole pretrained network + a new linear head, trained on labels, on the
shared loop (relic/train/loop.py); run by the ``finetune`` job and the transfer job's fine-tune
protocol.

Semi-supervised protocol ([recon]: SimCLR's label subsets and recipe; DeepMind's released code
fine-tunes on all labels, see configs/finetune.py): fine-tune on the 1% or 10% ImageNet label
subsets, SimCLR's lists (tfds ``imagenet2012_subset/1pct`` and ``/10pct``), chosen with
``finetune.subset``; report on the ImageNet validation set. Any other dataset (built-in,
folder, other tfds datasets) has no official list: ``subset='1pct'`` / ``'10pct'`` or
``finetune.label_fraction`` then draw a deterministic class-balanced fraction of the train
split (relic/evaluators/label_subsets.py), whose size and per-class counts are recorded in the
results. ImageNet as an image folder takes SimCLR's own lists by file name:
``finetune.subset_file=1percent.txt`` (every listed image must be in the train split). The
transfer job reuses :func:`finetune_and_evaluate` for its fine-tune protocol.

Training: random-resized crops + flips; BatchNorm in train mode, its statistics over the
*global* batch (the step is written on global arrays, so under ``jax.jit`` XLA reduces over all
devices) and its running averages updated for evaluation; SGD with Nesterov momentum, rate
``base_lr * batch / 256`` with optional linear warm-up, cosine to 0; weight decay (if any) on
kernels only. [recon] defaults follow SimCLR's fine-tuning (no weight decay, base rate 0.05);
[code] the head starts as DeepMind's hk.Linear (``finetune.head_init='haiku'``).

Multi-label datasets (VOC2007: a set of classes per image, tfds ``voc/2007``): the head is
one-vs-rest (a sigmoid cross-entropy per class, "difficult"-only classes ignored, see
relic/evaluators/linear.py:multilabel_nll) and the score is the devkit's 11-point mAP
(relic/evaluators/multilabel.py); they train on the whole split (no label-fraction subsets).

Rate sweep (``finetune.lr_grid``): every rate is a full run on the training examples minus a
hold-out, scored on the hold-out; the best rate is then trained on all training examples, since
labels are scarce in the semi-supervised setting. The hold-out is ``finetune.holdout_split``
when set (an official validation split that is part of a combined training split, e.g.
VOC2007's 'validation' of 'train+validation'), else ``finetune.holdout_examples`` (default 10%:
a prefix slice of a split, or a class-balanced part of a subset). Rates are compared by the
dataset's metric (top-1 unless the transfer job names another: mean per-class accuracy, mAP).
Every run checkpoints in its own directory and resumes there; finished sweep runs are not
repeated.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from relic import errors, parallel, schedules
from relic.checkpoints import orbax_checkpointer as checkpoint
from relic.train import divergence, finetune_step, loop, sweep as sweep_lib
from relic.errors import ConfigError
from relic.data import pipeline
from relic.evaluators import accuracy, features as features_lib, multilabel
from relic.evaluators.progress import Progress
from relic.checkpoints import results as eval_results
from relic.data.examples import (Examples, dataset_name, eval_data_config,
                                      file_list_subset, label_fraction_subset, named_part_problem,
                                      split_labels)
from relic.models import HEAD_INITS, linear_head_params
from relic.train.states import FinetuneState

SUBSETS = {"1pct": 0.01, "10pct": 0.1, "full": 0.0}
TFDS_SUBSET_DATASETS = ("imagenet2012",)   # datasets with SimCLR's lists in tfds
_RESUME_FIELDS = ("subset", "label_fraction", "subset_seed", "subset_file", "batch_size",
                  "num_epochs",
                  "momentum", "weight_decay", "warmup_epochs", "image_size", "head_lr_multiplier",
                  "head_init")


def check_data(config) -> None:
  """What the dataset must offer for ``config.finetune`` (after pipeline.check_data_config)."""
  ft = config.finetune
  subset = (uses_tfds_subset(config) or label_fraction(config) not in (0.0, 1.0)
            or bool(ft.subset_file))
  if subset and pipeline.is_multilabel(config):
    raise ConfigError(
        f"config.data.dataset={config.data.dataset!r} is multi-label (a set of classes per "
        f"image): fine-tuning it trains on the whole split. Fix: finetune.subset='full', "
        f"finetune.label_fraction=0 and no finetune.subset_file.")
  if ft.subset_file:
    file_list_subset(config, config.data.train_split, ft.subset_file)   # every name is there
  if ft.holdout_split and len(ft.lr_grid) > 1:
    problem = named_part_problem(config.data.train_split, ft.holdout_split, subset)
    if problem:
      raise ConfigError(f"config.finetune.holdout_split: {problem}")


def check_settings(config) -> None:
  """The ``config.finetune`` fields; one ConfigError lists every one that fails."""
  ft = config.finetune
  problems = errors.Problems()
  require = lambda ok, field, problem, fix: problems.require(ok, f"finetune.{field}", problem, fix)
  require(ft.subset in SUBSETS, "subset", f"unknown subset {ft.subset!r}",
          f"choose one of {sorted(SUBSETS)}")
  require(0.0 <= ft.label_fraction <= 1.0, "label_fraction",
          f"must be in [0, 1], got {ft.label_fraction}", "use e.g. 0.01, or 0 to follow subset")
  require(not ft.subset_file or epath.Path(ft.subset_file).exists(), "subset_file",
          f"{ft.subset_file!r} not found", "point it at a list of training image names, one per "
          "line (SimCLR's 1percent.txt / 10percent.txt), or leave it empty")
  require(not (ft.subset_file and (ft.subset != "full" or ft.label_fraction)), "subset_file",
          "cannot be combined with finetune.subset or finetune.label_fraction",
          "keep subset='full' and label_fraction=0 with a subset file")
  require(ft.batch_size > 0, "batch_size", f"must be > 0, got {ft.batch_size}", "use e.g. 1024")
  require(ft.num_epochs > 0, "num_epochs", f"must be > 0, got {ft.num_epochs}", "use e.g. 30")
  require(ft.base_lr > 0 and all(lr > 0 for lr in ft.lr_grid), "lr_grid",
          f"rates must be positive, got base_lr={ft.base_lr}, lr_grid={ft.lr_grid}",
          "use positive base rates")
  require(ft.holdout_examples >= 0, "holdout_examples", f"must be >= 0, got {ft.holdout_examples}",
          "use 0 (10% of the training examples) or a count")
  require(ft.image_size > 0, "image_size", f"must be > 0, got {ft.image_size}", "use e.g. 224")
  require(ft.head_init in HEAD_INITS, "head_init", f"unknown init {ft.head_init!r}",
          f"choose one of {HEAD_INITS} ('haiku': DeepMind's hk.Linear default)")
  require(ft.keep_checkpoints >= 1, "keep_checkpoints", f"must be >= 1, got {ft.keep_checkpoints}",
          "use e.g. 2")
  problems.raise_if_any()


def label_fraction(config) -> float:
  """The fraction a label_fraction subset holds (0 = the whole split)."""
  return float(config.finetune.label_fraction or SUBSETS[config.finetune.subset])


def uses_tfds_subset(config) -> bool:
  """SimCLR's lists apply: ImageNet from tfds, a 1%/10% subset, no explicit fraction."""
  return (config.data.source == "tfds" and config.data.dataset in TFDS_SUBSET_DATASETS
          and config.finetune.subset != "full" and not config.finetune.label_fraction)


def data_config(config):
  """The config the job reads data with: no masks; SimCLR's subset dataset when it applies."""
  config = eval_data_config(config)
  if uses_tfds_subset(config):
    config.data.dataset = f"imagenet2012_subset/{config.finetune.subset}"
  return config


def training_examples(config) -> tuple[Any, Examples, dict[str, Any]]:
  """``(data config, training examples, description)`` of ``config.finetune``'s subset."""
  tfds_subset = uses_tfds_subset(config)
  config = data_config(config)
  ft = config.finetune
  fraction = label_fraction(config)
  if ft.subset_file:
    indices = file_list_subset(config, config.data.train_split, ft.subset_file)
    counts = np.bincount(split_labels(config, config.data.train_split)[indices])
    return config, Examples(config, config.data.train_split, indices), {
        "kind": f"the images listed in {ft.subset_file}", "num_examples": int(len(indices)),
        "per_class": counts.tolist()}
  if tfds_subset or not fraction or fraction >= 1.0:
    examples = Examples(config, config.data.train_split)
    kind = (f"tfds {config.data.dataset} (SimCLR's list)" if tfds_subset else "full split")
    return config, examples, {"kind": kind, "num_examples": examples.size()}
  indices = label_fraction_subset(config, config.data.train_split, fraction, ft.subset_seed)
  counts = np.bincount(split_labels(config, config.data.train_split)[indices])
  return config, Examples(config, config.data.train_split, indices), {
      "kind": f"class-balanced {fraction:g} of {config.data.train_split} (seed "
              f"{ft.subset_seed})", "num_examples": int(len(indices)),
      "per_class": counts.tolist()}


def train(config, run_dir: str, encoder, variables, info: dict[str, Any], num_classes: int,
          examples: Examples, base_lr: float, mesh) -> FinetuneState | None:
  """One fine-tuning run on ``examples`` at ``base_lr``, checkpointed and resumable in
  ``run_dir``; None when it stopped early (SIGTERM: the step is saved, the command resumes)."""
  ft = config.finetune
  process_batch = parallel.check_batch_size(ft.batch_size, mesh, "finetune.batch_size")
  num_train = examples.size()
  total = schedules.epochs_to_steps(ft.num_epochs, num_train, ft.batch_size)
  optimizer, schedule = finetune_step.make_optimizer(config, total, base_lr, num_train)
  head = linear_head_params(ft.head_init, jax.random.key(config.seed), encoder.num_features,
                            num_classes)
  params = {"encoder": variables["params"], "head": head}
  state = FinetuneState(step=jnp.zeros((), jnp.int32), params=params,
                        batch_stats={"encoder": variables["batch_stats"]},
                        opt_state=optimizer.init(params))
  logging.info("Fine-tuning on %s: %d steps of batch %d, base lr %g, %d classes.",
               examples.describe(), total, ft.batch_size, base_lr, num_classes)
  replicated, sharded = parallel.replicated(mesh), parallel.data_sharding(mesh)
  step_fn = jax.jit(divergence.guarded(
      finetune_step.make_train_step(encoder, num_classes, optimizer, schedule,
                                    pipeline.is_multilabel(config)), config.train.nan_policy),
      in_shardings=(replicated, sharded), out_shardings=(replicated, replicated),
      donate_argnums=0)
  outcome = loop.train(loop.encoder_run(
      config, "finetune", info, base_lr, _RESUME_FIELDS,
      name=f"Fine-tuning at base lr {base_lr:g}", workdir=run_dir,
      state=parallel.replicate(state, mesh), step_fn=step_fn, total_steps=total,
      global_batch=ft.batch_size,
      batches=lambda start: pipeline.device_prefetch(
          examples.batches(batch_size=process_batch, image_size=ft.image_size,
                           train_augment=True, seed=config.seed, repeat=True, start_step=start),
          mesh, config.data.prefetch_to_device, num_batches=total - start)))
  return None if outcome.stopped else outcome.state


def evaluate(config, encoder, state: FinetuneState, num_classes: int, examples: Examples, mesh,
             what: str) -> dict[str, Any]:
  """Scores over every example of ``examples`` exactly once: top-1, top-5 and mean per-class
  accuracy; for a multi-label dataset the 11-point mAP ('map') and per-class APs instead."""
  ft = config.finetune
  process_batch = ft.batch_size // jax.process_count()
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  batches = examples.batches(batch_size=process_batch, image_size=ft.image_size,
                             train_augment=False, seed=0, repeat=False)
  progress = Progress(f"{what} ({examples.describe()})", examples.size())
  if pipeline.is_multilabel(config):
    scores, targets = features_lib.collect_outputs(
        finetune_step.jitted_logits(encoder, num_classes), variables, batches, mesh, progress=progress)
    value, per_class = multilabel.mean_average_precision(scores, targets)
    return {"num_examples": int(len(targets)), "map": value, "per_class_ap": per_class}
  counts = accuracy.count_split(finetune_step.logits_fn(encoder, num_classes), variables, batches, mesh,
                                progress=progress)
  return accuracy.accuracies(counts)


def default_metric(config) -> str:
  """The score a fine-tuning run reports first and selects rates by, when none is named."""
  return "map11" if pipeline.is_multilabel(config) else "top1"


def _holdout(config, examples: Examples) -> tuple[Examples, Examples]:
  """``(fit, holdout)``: the named hold-out split, else a slice / class-balanced part."""
  ft = config.finetune
  if ft.holdout_split:
    return examples.split_named_part(ft.holdout_split)
  return examples.split_holdout(ft.holdout_examples or max(1, examples.size() // 10), config.seed)


def _sweep(config, workdir: str, encoder, variables, info, num_classes: int, examples: Examples,
           mesh, metric: str) -> tuple[float, list[dict[str, Any]]] | None:
  """Scores every rate of ``finetune.lr_grid`` on a hold-out by ``metric``; returns (best rate,
  scores), or None when a run stopped early."""
  fit, holdout = _holdout(config, examples)

  def train_and_score(run_dir: str, base_lr: float) -> dict[str, Any] | None:
    state = train(config, run_dir, encoder, variables, info, num_classes, fit, base_lr, mesh)
    if state is None:
      return None
    result = evaluate(config, encoder, state, num_classes, holdout, mesh, "hold-out")
    return {"num_holdout": result["num_examples"], "holdout_split": holdout.describe(),
            **{f"holdout_{k}": v for k, v in result.items()
               if k in ("top1", "top5", "mean_per_class", "map")}}

  return sweep_lib.sweep(workdir, config.finetune.lr_grid,
                         "holdout_" + eval_results.METRIC_KEYS[metric], train_and_score)


def finetune_and_evaluate(config, workdir: str, encoder, variables, info: dict[str, Any],
                          mesh=None, metric: str = "") -> dict[str, Any] | None:
  """Selects the rate (if a grid is given), fine-tunes, reports the eval split.

  Args:
    config: experiment config (``config.data`` is the dataset, ``config.finetune`` the recipe).
    workdir: where the runs checkpoint (the final run at the top, sweep runs below it).
    encoder, variables, info: the pretrained encoder (see eval_pretrained.load_pretrained).
    metric: what rates are selected by and 'score' reports ('top1', 'mean_per_class',
      'map11'); '' = mAP for a multi-label dataset, else top-1.

  Returns:
    The results dict written by the job (test scores, subset, sweep, settings); None when a run
    stopped early (SIGTERM): its step is saved and the same command resumes.
  """
  mesh = mesh or parallel.make_mesh()
  metric = metric or default_metric(config)
  data_config, examples, subset = training_examples(config)
  num_classes = int(pipeline.num_classes(data_config))
  if num_classes <= 0:
    raise ConfigError(f"{data_config.data.dataset!r} has no class labels; fine-tuning needs them.")
  sweep: list[dict[str, Any]] = []
  base_lr = float(config.finetune.base_lr)
  if len(config.finetune.lr_grid) > 1:
    swept = _sweep(data_config, workdir, encoder, variables, info, num_classes, examples, mesh,
                   metric)
    if swept is None:
      return None
    base_lr, sweep = swept
  elif len(config.finetune.lr_grid) == 1:
    base_lr = float(config.finetune.lr_grid[0])
  state = train(data_config, workdir, encoder, variables, info, num_classes, examples, base_lr,
                mesh)
  if state is None:
    return None
  test = evaluate(data_config, encoder, state, num_classes,
                  Examples(data_config, data_config.data.eval_split), mesh, "test")
  ft = config.finetune
  return {
      "protocol": "finetune", "encoder": info,
      "data": {"source": data_config.data.source, "dataset": dataset_name(data_config),
               "train": subset, "test_split": data_config.data.eval_split,
               "num_classes": num_classes},
      "selected": {"base_lr": base_lr, "peak_lr": base_lr * ft.batch_size / 256.0},
      "sweep": sweep, "test": test, "metric": metric,
      "score": test[eval_results.METRIC_KEYS[metric]],
      "settings": {k: checkpoint.config_to_json(config)["finetune"][k] for k in _RESUME_FIELDS},
  }


