"""``config.job = 'segmentation'``: semantic-segmentation transfer (PASCAL VOC 2012, Cityscapes),
scored by mean intersection-over-union.

Protocol (BYOL's, Grill et al. 2020 appendix D.4, which relic takes the paper's VOC 2012 and
Cityscapes results to follow [recon]): FCN-16s, i.e. the
pretrained encoder with its last stage dilated (stride 1, dilation 2; ``output_stride``), two
3x3 convolutions of 256 channels with dilation 6, each with BatchNorm and ReLU, and a 1x1
classifier, upsampled bilinearly to the image (relic/models/segmentation.py). The whole network
trains with a per-pixel softmax cross-entropy (void pixels, 255, ignored) on random rescalings
(0.5-2x), 513 px crops and flips (relic/data/segmentation.py); SGD with momentum 0.9, weight
decay 1e-4 on kernels, batch 16, 30,000 steps, the rate multiplied by 0.1 at 70% and 90% of
training. Inference on the 513 x 513 central crop (padding, void, where the image is smaller).
BatchNorm statistics are over the global batch, as everywhere in relic.

Rate sweep (``segmentation.lr_grid``; BYOL sweeps 5 log-spaced rates in [1e-3, 1e-1]): every
rate is a full run on the training split minus its first ``holdout_examples`` images (2119, as
BYOL's held-out set), scored by mIoU on them; the best rate is then trained on the whole split
and scored on ``config.data.eval_split``. Every run checkpoints in its own directory and
resumes there (also after SIGTERM: the step is saved and the job exits 0); finished sweep runs
are not repeated.
"""

from __future__ import annotations

from typing import Any

import jax

from relic import errors, parallel
from relic.checkpoints import orbax_checkpointer as checkpoint
from relic.data import segmentation as seg_data
from relic.checkpoints import pretrained as eval_pretrained, results as eval_results
from relic.models.resnet import OUTPUT_STRIDES
from relic.train import sweep as sweep_lib
from relic.models import segmentation_net
from relic.train.segmentation import RESUME_FIELDS, evaluate, train

def validate(config) -> None:
  """Settings and data, before any compute: the encoder's path, the settings and the data
  reported together (no TensorFlow for the VOC folder and the built-in data), then the hold-out."""
  problems = errors.Problems()
  problems.check(eval_pretrained.check_pretrained, config)
  s = config.segmentation

  require = lambda ok, field, problem, fix: problems.require(ok, f"segmentation.{field}", problem,
                                                             fix)

  require(s.batch_size > 0 and s.batch_size % jax.device_count() == 0, "batch_size",
          f"must be a positive multiple of the {jax.device_count()} devices, got {s.batch_size}",
          f"use e.g. {max(16, jax.device_count())}")
  require(s.num_steps > 0, "num_steps", f"must be > 0, got {s.num_steps}", "use e.g. 30000")
  require(s.crop_size > 0, "crop_size", f"must be > 0, got {s.crop_size}", "use e.g. 513")
  require(len(s.eval_size) == 2 and all(v > 0 for v in s.eval_size), "eval_size",
          f"must be (height, width) > 0, got {s.eval_size}", "use e.g. (513, 513)")
  require(0 < s.min_scale <= s.max_scale, "min_scale",
          f"need 0 < min_scale <= max_scale, got {s.min_scale}, {s.max_scale}", "use 0.5, 2.0")
  require(s.output_stride in OUTPUT_STRIDES, "output_stride",
          f"{s.output_stride} is not supported", f"choose one of {sorted(OUTPUT_STRIDES)}")
  require(s.head_channels > 0 and s.head_dilation > 0, "head_channels",
          f"need head_channels > 0 and head_dilation > 0, got {s.head_channels}, "
          f"{s.head_dilation}", "use 256 and 6")
  require(s.base_lr > 0 and all(lr > 0 for lr in s.lr_grid), "lr_grid",
          f"rates must be positive, got base_lr={s.base_lr}, lr_grid={s.lr_grid}",
          "use positive rates")
  require(all(0 < f < 1 for f in s.lr_decay_at) and list(s.lr_decay_at) == sorted(s.lr_decay_at),
          "lr_decay_at", f"need increasing fractions in (0, 1), got {s.lr_decay_at}",
          "use e.g. (0.7, 0.9)")
  require(s.keep_checkpoints >= 1, "keep_checkpoints", f"must be >= 1, got {s.keep_checkpoints}",
          "use e.g. 2")
  problems.check(seg_data.check, config)
  problems.raise_if_any()
  if len(s.lr_grid) > 1:
    num_train = seg_data.num_examples(config, config.data.train_split)
    errors.require(0 < s.holdout_examples < num_train, "segmentation.holdout_examples",
                   f"a hold-out of {s.holdout_examples} needs 0 < N < the {num_train} training "
                   "images", "lower it, or give a single rate")


def _sweep(config, workdir: str, net, variables, info, mesh) -> tuple[float, list[dict]] | None:
  n = config.segmentation.holdout_examples
  fit, holdout = f"{config.data.train_split}[{n}:]", f"{config.data.train_split}[:{n}]"

  def train_and_score(run_dir: str, base_lr: float) -> dict[str, Any] | None:
    state = train(config, run_dir, net, variables, info, fit, base_lr, mesh)
    if state is None:
      return None
    result = evaluate(config, net, state, holdout, mesh, "hold-out")
    return {"holdout_miou": result["miou"], "holdout_split": holdout,
            "num_holdout": result["num_images"]}

  return sweep_lib.sweep(workdir, config.segmentation.lr_grid, "holdout_miou", train_and_score)


def run(config, workdir: str) -> dict[str, Any]:
  s = config.segmentation
  encoder, variables, info = eval_pretrained.load_pretrained(config)
  mesh = parallel.make_mesh()
  num_classes = seg_data.num_classes(config)
  net = segmentation_net(encoder, config.segmentation, num_classes)
  base_lr, sweep = float(s.base_lr), []
  if len(s.lr_grid) > 1:
    swept = _sweep(config, workdir, net, variables, info, mesh)
    if swept is None:
      return {}
    base_lr, sweep = swept
  elif len(s.lr_grid) == 1:
    base_lr = float(s.lr_grid[0])
  state = train(config, workdir, net, variables, info, config.data.train_split, base_lr, mesh)
  if state is None:
    return {}
  test = evaluate(config, net, state, config.data.eval_split, mesh, "evaluation")
  results = {
      "protocol": "segmentation", "encoder": info,
      "data": {"dataset": config.data.source, "train_split": config.data.train_split,
               "eval_split": config.data.eval_split, "num_classes": num_classes,
               "num_train": seg_data.num_examples(config, config.data.train_split)},
      "selected": {"base_lr": base_lr}, "sweep": sweep, "test": test,
      "settings": {k: checkpoint.config_to_json(config)["segmentation"][k]
                   for k in RESUME_FIELDS + ("eval_size",)},
  }
  eval_results.write_results(workdir, results, results_markdown(results))
  return results


def results_markdown(results: dict[str, Any]) -> str:
  data, test = results["data"], results["test"]
  lines = [f"# Segmentation: {results['encoder']['architecture']} from "
           f"{results['encoder']['path']}", "",
           f"FCN-{results['settings']['output_stride']}s trained on {data['dataset']} "
           f"{data['train_split']} ({data['num_train']} images) at rate "
           f"{results['selected']['base_lr']:g}.", "",
           f"{data['eval_split']} ({test['num_images']} images): **mIoU {test['miou']:.2f}%**, "
           f"pixel accuracy {test['pixel_accuracy']:.2f}%.", "",
           eval_results.table(["class", "IoU (%)"], [
               [name, float("nan") if iou is None else iou]
               for name, iou in test["per_class_iou"].items()])]
  if results["sweep"]:
    lines += [f"Rate selection on {results['sweep'][0]['holdout_split']}:", "",
              sweep_lib.table(results["sweep"], results["selected"]["base_lr"], "rate",
                              [("hold-out mIoU (%)", "holdout_miou")])]
  return "\n".join(lines)
