"""``config.job = 'saliency'``: a saliency mask for every image of a source, without labels and
without downloads, in the layout ``config.data.mask_path`` reads, so that pretraining can cut
ReLICv2's masked views (``data.mask_prob``) from any dataset.

Stages, following DeepUSPS (Nguyen et al. 2019), whose masks the paper used:
1. **cues**: pseudo-masks from classical background priors (relic/saliency/cues.py: colour
   contrast to the border, minimum barrier distance, centre prior; Otsu threshold), in JAX on
   this process's devices.
2. **refine** (``saliency.refine``): relic's FCN (``config.segmentation``) on a relic encoder
   (``config.pretrained``; empty: a random-init ``config.model`` encoder) is trained on the
   pseudo-masks of the first split, two classes, on the shared training loop, and then predicts
   every image (foreground where its probability is >= 0.5).

Output: ``saliency.output`` (default WORKDIR/masks) holds the final masks, 8-bit PNGs (255 =
foreground) of ``saliency.image_size`` squared; with refinement the pseudo-masks are kept in
WORKDIR/pseudo_masks. Pretrain with ``--config.data.mask_path=WORKDIR/masks``.

Resumable: every mask is written once, atomically (a rerun skips the masks that exist and never
rewrites one); the refinement checkpoints in WORKDIR/refine and resumes (SIGTERM: saved, exit 0,
the same command continues). Multi-host: each process masks its own disjoint share on its own
devices. The summary (results.json / results.md) gives each split's foreground-fraction
histogram and, with ground truth (the built-in exact masks, or ``saliency.ground_truth``),
IoU / F-measure / MAE of each stage and of the best centred ellipse.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from relic import checkpoints, errors, parallel
from relic.checkpoints import pretrained
from relic.data import saliency_masks, sources
from relic.evaluators.progress import Progress
from relic.models import encoder_from_config, segmentation_net
from relic.saliency import cues, quality, writer
from relic.train import segmentation as seg_train

PSEUDO_DIR, REFINE_DIR, MASKS_DIR = "pseudo_masks", "refine", "masks"


def splits(config) -> tuple[str, ...]:
  return tuple(config.saliency.splits) or (config.data.train_split,)


def output_dir(config, workdir: str) -> str:
  return config.saliency.output or os.path.join(workdir, MASKS_DIR)


def validate(config) -> None:
  """Settings, data and the output folder, reported together before any compute (the default
  output below the workdir is checked when the run starts)."""
  problems = errors.Problems()
  s = config.saliency
  require = lambda ok, field, problem, fix: problems.require(ok, f"saliency.{field}", problem,
                                                             fix)
  layout = problems.check(lambda: sources.source_class(config.data.source).mask_layout)
  require(layout != "", "splits", f"source {config.data.source!r} takes no mask folder, so its "
          "masks could not be read back", "use source 'tfds', 'folder' or 'builtin'")
  require(s.image_size >= 16, "image_size", f"must be >= 16, got {s.image_size}", "use e.g. 128")
  require(s.batch_size > 0 and s.batch_size % jax.local_device_count() == 0, "batch_size",
          f"must be a positive multiple of this process's {jax.local_device_count()} devices, "
          f"got {s.batch_size}", f"use e.g. {8 * jax.local_device_count()}")
  require(bool(s.cues) and set(s.cues) <= set(cues.CUES), "cues",
          f"must be a non-empty subset of {cues.CUES}, got {tuple(s.cues)}",
          "use e.g. ('contrast', 'barrier', 'centre')")
  require(set(s.score_splits) <= set(splits(config)), "score_splits",
          f"{tuple(s.score_splits)} are not all among the masked splits {splits(config)}",
          "add them to config.saliency.splits")
  require(not s.score_splits or s.ground_truth or config.data.source == "builtin",
          "ground_truth", f"scoring needs ground-truth masks, and source {config.data.source!r} "
          "has none of its own", "set config.saliency.ground_truth=DIR (masks in the "
          "data.mask_path layout) or config.saliency.score_splits=()")
  require(not s.ground_truth or os.path.isdir(os.path.expanduser(s.ground_truth)),
          "ground_truth", f"folder {s.ground_truth!r} not found", "point it to a mask folder")
  if s.output:
    problems.check(_check_output, s.output)
  if s.refine:
    problems.check(_check_refinement, config)
  data = saliency_masks.base_data(config.data, mask_path="")
  data.update(dict(mask_prob=0.0, train_split=splits(config)[0], eval_split=splits(config)[-1]))
  problems.check(lambda: sources.source_class(data.source).check(data))
  problems.raise_if_any()


def _check_output(folder: str) -> None:
  reason = writer.check_writable(folder)
  errors.require(not reason, "saliency.output", f"cannot write masks to {folder!r} ({reason})",
                 "choose a writable folder (config.saliency.output, or '' for WORKDIR/masks)")


def _check_refinement(config) -> None:
  g = config.segmentation
  problems = errors.Problems()
  problems.require(g.batch_size > 0 and g.batch_size % jax.device_count() == 0,
                   "segmentation.batch_size", f"must be a positive multiple of the "
                   f"{jax.device_count()} devices, got {g.batch_size}",
                   f"use e.g. {max(16, jax.device_count())}")
  problems.require(g.num_steps > 0, "segmentation.num_steps", f"must be > 0, got {g.num_steps}",
                   "use e.g. 2000, or config.saliency.refine=False for the cue masks alone")
  problems.require(0 < g.crop_size <= config.saliency.image_size * g.max_scale,
                   "segmentation.crop_size", f"{g.crop_size} does not fit the images of "
                   f"{config.saliency.image_size} px scaled by at most {g.max_scale}",
                   "use a crop_size <= image_size * max_scale")
  if config.pretrained:
    problems.check(pretrained.check_pretrained, config)
  problems.raise_if_any()


def _local_predict(fn: Callable, static: Any) -> Callable[[np.ndarray], np.ndarray]:
  """``images -> fn(static, images)`` jitted over this process's devices (no collectives:
  processes run their shares independently), the batch split over them, ``static`` (e.g. the
  variables) replicated."""
  mesh = parallel.make_mesh(jax.local_devices())
  sharding = parallel.data_sharding(mesh)
  replicated = parallel.replicated(mesh)
  static = jax.device_put(static, replicated)
  jitted = jax.jit(fn, in_shardings=(replicated, sharding), out_shardings=sharding)
  return lambda images: np.asarray(jitted(static, jax.device_put(images, sharding)))


def _write_masks(config, split: str, folder: str, predict, what: str) -> dict[str, int]:
  """Masks of this process's share of ``split`` into ``folder``, skipping those written."""
  s = config.saliency
  names = saliency_masks.mask_names(config.data, split)
  done = writer.finished(folder).intersection(names)
  todo = len(names) - len(done)
  logging.info("%s (%s): %d of %d masks of this process to write into %s.", what, split, todo,
               len(names), folder)
  if todo:
    progress = Progress(f"{what} ({split})", todo, unit="masks")
    out = writer.Writer(folder)
    try:
      for batch in saliency_masks.image_batches(config.data, split, size=s.image_size,
                                                batch_size=s.batch_size, skip=frozenset(done)):
        valid = batch["valid"]
        out.submit(batch["name"][valid], predict(batch["image"])[valid])
        progress.update(int(valid.sum()))
    finally:
      out.close()
  return {"written": todo, "found": len(done)}


def _cue_stage(config) -> Callable[[np.ndarray], np.ndarray]:
  chosen = tuple(config.saliency.cues)
  return _local_predict(lambda _, images: cues.pseudo_masks(images, chosen), ())


def _encoder(config):
  """(encoder, variables, info): config.pretrained's, else a random-init config.model one."""
  if config.pretrained:
    return checkpoints.load_pretrained(config)
  encoder = encoder_from_config(config.model)
  size = config.saliency.image_size
  variables = encoder.init(jax.random.key(config.seed), jnp.zeros((1, size, size, 3)))
  variables = {k: variables[k] for k in ("params", "batch_stats")}
  model = {f: config.model[f] for f in pretrained.ARCH_FIELDS}
  return encoder, variables, {"path": "random init", "architecture": pretrained.describe(model),
                              "fingerprint": pretrained.fingerprint(variables)}


def _refine_stage(config, workdir: str, pseudo_dir: str):
  """Trains the FCN on the pseudo-masks; its ``images -> masks``, or None when stopped."""
  s = config.saliency
  refine = copy.deepcopy(config)
  refine.data.saliency_masks.update(dict(images=config.data.source, size=s.image_size))
  refine.data.update(dict(source="saliency_masks", mask_path=pseudo_dir,
                          train_split=splits(config)[0], mask_prob=0.0))
  encoder, variables, info = _encoder(config)
  net = segmentation_net(encoder, config.segmentation, len(saliency_masks.CLASSES))
  state = seg_train.train(refine, os.path.join(workdir, REFINE_DIR), net, variables, info,
                          refine.data.train_split, float(config.segmentation.base_lr),
                          parallel.make_mesh())
  if state is None:
    return None, info
  trained = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)),
                         {"params": state.params, "batch_stats": state.batch_stats})

  def masks(variables, images):
    probability = jax.nn.softmax(net.apply(variables, images, train=False), axis=-1)[..., 1]
    return jnp.where(probability >= 0.5, 255, 0).astype(jnp.uint8)

  return _local_predict(masks, trained), info


def _summary(config, split: str, folders: dict[str, str]) -> dict[str, Any]:
  """Foreground histogram of each stage's masks; with ground truth, their scores and the best
  centred ellipse's (the ellipse scale chosen on the split itself: the strongest such prior)."""
  s = config.saliency
  scored = split in s.score_splits
  read = dict(folders, **({"truth": s.ground_truth} if scored else {}))
  size = s.image_size
  ellipses = {scale: quality.ellipse(size, size, scale) for scale in quality.ELLIPSE_SCALES}
  histograms = {stage: np.zeros(10, np.int64) for stage in folders}
  scores = {key: quality.Scores() for key in list(folders) + [f"ellipse {e}" for e in ellipses]}
  for batch in saliency_masks.mask_batches(config.data, split, size=size,
                                           batch_size=s.batch_size, masks=read):
    valid = batch["valid"]
    for stage in folders:
      histograms[stage] += quality.foreground_histogram(batch[stage], valid)
      if scored:
        scores[stage].add(batch[stage], batch["truth"], valid)
    if scored:
      for scale, mask in ellipses.items():
        scores[f"ellipse {scale}"].add(np.broadcast_to(mask, batch["truth"].shape),
                                       batch["truth"], valid)
  histograms = {k: _sum_over_processes(v).astype(int).tolist() for k, v in histograms.items()}
  out: dict[str, Any] = {"foreground_histogram": histograms}
  if scored:
    means = {k: quality.Scores.means(_sum_over_processes(v.totals())) for k, v in scores.items()}
    best = max(ellipses, key=lambda e: means[f"ellipse {e}"]["iou"])
    out["scores"] = {stage: means[stage] for stage in folders}
    out["scores"]["ellipse"] = dict(means[f"ellipse {best}"], scale=float(best))
  return out


def _sum_over_processes(array: np.ndarray) -> np.ndarray:
  if jax.process_count() == 1:
    return np.asarray(array)
  return np.asarray(multihost_utils.process_allgather(np.asarray(array))).sum(axis=0)


def run(config, workdir: str) -> dict[str, Any]:
  s = config.saliency
  final = output_dir(config, workdir)
  _check_output(final)
  pseudo = os.path.join(workdir, PSEUDO_DIR) if s.refine else final
  written = {}
  predict = _cue_stage(config)
  for split in splits(config):
    written[f"cues {split}"] = _write_masks(config, split, pseudo, predict, "Cue masks")
  folders, encoder = {"cues": pseudo}, None
  if s.refine:
    predict, encoder = _refine_stage(config, workdir, pseudo)
    if predict is None:
      return {}
    for split in splits(config):
      written[f"refined {split}"] = _write_masks(config, split, final, predict, "Refined masks")
    folders["refined"] = final
  multihost_utils.sync_global_devices("saliency masks written")
  results = {
      "protocol": "saliency", "output": final, "pseudo_masks": pseudo, "encoder": encoder,
      "data": {"source": config.data.source, "splits": list(splits(config))},
      "settings": {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in s.to_dict().items()},
      "written": written,   # this process's share (process 0's in a multi-host run)
      "splits": {split: _summary(config, split, folders) for split in splits(config)},
  }
  checkpoints.write_results(workdir, results, results_markdown(results))
  logging.info("Masks in %s. Pretrain with --config.data.mask_path=%s", final, final)
  return results


def results_markdown(results: dict[str, Any]) -> str:
  from relic.checkpoints import results as eval_results  # pylint: disable=import-outside-toplevel
  lines = [f"# Saliency masks: {results['data']['source']} {', '.join(results['data']['splits'])}",
           "", f"Masks in `{results['output']}` (pretrain with "
           f"`--config.data.mask_path={results['output']}`).", ""]
  if results["encoder"]:
    lines += [f"Refined by an FCN on the {results['encoder']['architecture']} encoder "
              f"({results['encoder']['path']}).", ""]
  for split, summary in results["splits"].items():
    lines += [f"## {split}", "", "Images by foreground fraction (10 bins of [0, 1]):", "",
              eval_results.table(["stage"] + [f"{b / 10:.1f}-{(b + 1) / 10:.1f}" for b in range(10)],
                                 [[stage] + counts for stage, counts in
                                  summary["foreground_histogram"].items()]), ""]
    if "scores" in summary:
      lines += [eval_results.table(["masks", "IoU (%)", "F-measure (%)", "MAE"], [
          [stage + (f" (scale {v['scale']})" if "scale" in v else ""), v["iou"], v["f_measure"],
           f"{v['mae']:.3f}"] for stage, v in summary["scores"].items()]), ""]
  return "\n".join(lines)
