"""Training and scoring one FCN segmentation run on the shared loop: the segmentation job's
rate sweep and final run, and the saliency job's refinement network.

Settings come from ``config.segmentation`` and the data from ``config.data`` (a
SegmentationSource); the step itself is relic/train/segmentation_step.py.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
from absl import logging

from relic import parallel
from relic.data import pipeline, segmentation as seg_data
from relic.evaluators import segmentation as seg_eval
from relic.evaluators.progress import Progress
from relic.models.segmentation import SegmentationNet
from relic.train import divergence, loop
from relic.train.segmentation_step import init_state, make_optimizer, make_train_step
from relic.train.states import FinetuneState

# A rerun resumes a run's checkpoint only with these config.segmentation fields unchanged.
RESUME_FIELDS = ("crop_size", "min_scale", "max_scale", "output_stride", "head_channels",
                 "head_dilation", "batch_size", "num_steps", "lr_decay_at", "momentum",
                 "weight_decay")


def train(config, run_dir: str, net: SegmentationNet, variables: dict, info: dict[str, Any],
          split: str, base_lr: float, mesh) -> FinetuneState | None:
  """One run on ``split`` at ``base_lr``; checkpoints and resumes in ``run_dir``. None when
  stopped early (SIGTERM: the step is saved; the same command resumes)."""
  s = config.segmentation
  process_batch = parallel.check_batch_size(s.batch_size, mesh, "segmentation.batch_size")
  optimizer, schedule = make_optimizer(config, base_lr)
  logging.info("Segmentation training on %s: %d steps of batch %d at rate %g.", split,
               s.num_steps, s.batch_size, base_lr)
  replicated, sharded = parallel.replicated(mesh), parallel.data_sharding(mesh)
  step_fn = jax.jit(divergence.guarded(make_train_step(net, optimizer, schedule),
                                       config.train.nan_policy),
                    in_shardings=(replicated, sharded), out_shardings=(replicated, replicated),
                    donate_argnums=0)
  outcome = loop.train(loop.encoder_run(
      config, "segmentation", info, base_lr, RESUME_FIELDS,
      name=f"Segmentation training at rate {base_lr:g}", workdir=run_dir,
      state=parallel.replicate(init_state(net, variables, optimizer, config), mesh),
      step_fn=step_fn, total_steps=s.num_steps, global_batch=s.batch_size,
      batches=lambda start: pipeline.device_prefetch(
          seg_data.train_batches(config, batch_size=process_batch, seed=config.seed,
                                 start_step=start, split=split),
          mesh, config.data.prefetch_to_device, num_batches=s.num_steps - start)))
  return None if outcome.stopped else outcome.state


@functools.lru_cache(maxsize=8)
def logits_fn(net: SegmentationNet):
  """``(variables, images) -> logits`` in inference mode; one function object per network, so
  every evaluation of a sweep reuses one compiled computation."""
  return lambda variables, images: net.apply(variables, images, train=False)


def evaluate(config, net: SegmentationNet, state: FinetuneState, split: str, mesh,
             what: str) -> dict[str, Any]:
  """mIoU, per-class IoU and pixel accuracy over every image of ``split``."""
  s = config.segmentation
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  num_images = seg_data.num_examples(config, split)
  batches = seg_data.eval_batches(config, split=split,
                                  batch_size=s.batch_size // jax.process_count())
  confusion = seg_eval.confusion_matrix(
      logits_fn(net), variables, batches, mesh, seg_data.num_classes(config),
      progress=Progress(f"{what} ({split})", num_images))
  return {**seg_eval.scores(confusion, seg_data.class_names(config)), "num_images": num_images}
