"""``config.job = 'linear_probe'``: the official ReLICv2 linear evaluation of a frozen encoder.

Protocol (DeepMind's released evaluation, google-deepmind/relicv2 configs/eval.py with
eval_experiment.py and main_loop.py's flags; configs/linear_probe.py lists every value): the
online encoder is frozen with BatchNorm in inference mode; one linear layer (``hk.Linear``'s
default init, ``linear_probe.head_init='haiku'``) on its pooled features is trained with SGD,
Nesterov momentum 0.9, no weight decay, rate ``0.3 * batch / 256`` without warm-up, decayed by
a cosine to 0 over 100 epochs of batch 1024, on random-resized crops + flips of all 1,281,167
training images (their TRAIN_AND_VALID: no hold-out); the test image is the centre crop of
224/256 of the short side, and the ImageNet validation set is the reported test set.

``configs/linear_probe.py:sweep`` (relic's option, not DeepMind's) instead trains every rate of
``linear_probe.lr_grid`` on ``train[10000:]``, chooses on the held-out ``train[:10000]`` and
reports the chosen head. The rates are trained side by side on the same batches (one encoder
pass serves them all, see relic/train/heads_step.py), so the sweep costs about one run.
With ``train_augment=False`` and ``precompute_features=True`` the features are
computed once and the heads train on the cache, which takes minutes instead of hours.

Outputs in the workdir: ``results.json`` / ``results.md`` (hold-out top-1 per rate, test top-1
and top-5 of the selected head), ``probe_head.npz`` (the selected head: ``kernel`` (D, C) and
``bias`` (C,), the LinearHead parameters) with ``probe_head.json`` (its rate, the image size and
the encoder it was fit on, with a fingerprint of its weights) for the robustness job and the
PyTorch export, and resumable checkpoints of the heads in ``checkpoints/``.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from relic import errors, parallel, schedules
from relic.errors import ConfigError
from relic.data import pipeline
from relic.evaluators import accuracy, features as features_lib
from relic.train import divergence, loop, sweep as sweep_lib
from relic.train import heads_step as linear_heads
from relic.evaluators.progress import Progress
from relic.checkpoints import pretrained as eval_pretrained, results as eval_results
from relic.checkpoints.probe_head import save_probe_head
from relic.data import examples as eval_examples
from relic.models import HEAD_INITS

# Fields that must match to resume the heads of an interrupted run.
_RESUME_FIELDS = ("batch_size", "num_epochs", "lr_grid", "momentum", "weight_decay",
                  "holdout_examples", "image_size", "train_augment", "precompute_features",
                  "head_init")


def validate(config) -> None:
  """Probe-specific checks, before any compute: the encoder's path, the settings and the
  data's presence reported together (no TensorFlow), then the labels."""
  lp = config.linear_probe
  problems = errors.Problems()
  problems.check(eval_pretrained.check_pretrained, config)

  require = lambda ok, field, problem, fix: problems.require(ok, f"linear_probe.{field}", problem,
                                                             fix)

  require(lp.batch_size > 0, "batch_size", f"must be > 0, got {lp.batch_size}", "use e.g. 1024")
  require(lp.num_epochs > 0, "num_epochs", f"must be > 0, got {lp.num_epochs}", "use e.g. 100")
  require(len(lp.lr_grid) > 0 and min(lp.lr_grid) > 0, "lr_grid",
          f"needs positive base rates, got {lp.lr_grid}", "use e.g. (0.3,) or (0.1, 0.3, 1.0)")
  require(lp.holdout_examples >= 0, "holdout_examples", f"must be >= 0, got {lp.holdout_examples}",
          "use 10000 (the official hold-out) or 0")
  require(lp.holdout_examples > 0 or len(lp.lr_grid) == 1, "lr_grid",
          f"{len(lp.lr_grid)} rates but no hold-out to choose between them",
          "set linear_probe.holdout_examples > 0, or give a single rate")
  require(not (lp.precompute_features and lp.train_augment), "precompute_features",
          "cached features need un-augmented training images (train_augment=True)",
          "set linear_probe.train_augment=False, or precompute_features=False")
  require(lp.image_size > 0, "image_size", f"must be > 0, got {lp.image_size}", "use e.g. 224")
  require(lp.head_init in HEAD_INITS, "head_init", f"unknown init {lp.head_init!r}",
          f"choose one of {HEAD_INITS} ('haiku': DeepMind's hk.Linear default)")
  problems.check(pipeline.check_data_config, eval_examples.eval_data_config(config))
  problems.raise_if_any()
  pipeline.check_single_label(config, "the linear_probe job")


def fit_and_holdout_splits(config) -> tuple[str, str | None]:
  """``(fit split, hold-out split or None)``: ``train[N:]`` and ``train[:N]`` of the train split
  (composed with any slice the train split already has)."""
  n = config.linear_probe.holdout_examples
  if not n:
    return config.data.train_split, None
  try:
    return eval_examples.slice_prefix(config, config.data.train_split, n)
  except ConfigError as e:
    raise ConfigError(f"config.linear_probe.holdout_examples: {e}") from None


def peak_rates(config) -> list[float]:
  lp = config.linear_probe
  return [float(base) * lp.batch_size / 256.0 for base in lp.lr_grid]


class _CachedBatches:
  """Training batches drawn from cached features, as a pure function of the step.

  Position ``p = step * B + j`` of the stream is example ``perm_e[p mod N]`` of epoch
  ``e = p // N`` (a fresh permutation per epoch, seeded by (seed, epoch)), so a resumed run
  draws exactly the batches it would have drawn. Every process holds all features and feeds its
  own rows of the global batch.
  """

  def __init__(self, features: np.ndarray, labels: np.ndarray, global_batch: int, seed: int,
               mesh):
    self._x, self._y = features, labels
    self._batch, self._seed, self._mesh = global_batch, seed, mesh
    self._perms: dict[int, np.ndarray] = {}

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
      self._perms[epoch] = np.random.default_rng([self._seed, epoch]).permutation(len(self._x))
    return self._perms[epoch]

  def __call__(self, step: int) -> dict[str, jax.Array]:
    n = len(self._x)
    positions = step * self._batch + np.arange(self._batch)
    epochs = positions // n
    index = np.empty(self._batch, np.int64)
    for epoch in np.unique(epochs):
      where = epochs == epoch
      index[where] = self._perm(int(epoch))[positions[where] % n]
    share = self._batch // jax.process_count()
    mine = index[jax.process_index() * share:(jax.process_index() + 1) * share]
    return parallel.to_global({"features": self._x[mine], "label": self._y[mine],
                               "valid": np.ones(len(mine), bool)}, self._mesh)


def _split_counts(config, split: str, logits_fn, params, mesh, process_batch: int,
                  image_size: int, what: str) -> dict[str, np.ndarray]:
  total = pipeline.num_examples(config, split)
  batches = pipeline.eval_batches(config, split=split, batch_size=process_batch,
                                  image_size=image_size)
  return accuracy.count_split(logits_fn, params, batches, mesh,
                              progress=Progress(f"{what} ({split})", total))


def _feature_counts(heads_params, features: np.ndarray, labels: np.ndarray, num_classes: int,
                    chunk: int = 4096) -> dict[str, np.ndarray]:
  """Exact counts of the stacked heads on cached features (every example once)."""
  fn = jax.jit(lambda p, x, y: accuracy.correct_counts(
      linear_heads.heads_logits(p, x, num_classes), y, jnp.ones(y.shape, bool)))
  totals = None
  for i in range(0, len(features), chunk):
    counts = jax.device_get(fn(heads_params, features[i:i + chunk], labels[i:i + chunk]))
    totals = counts if totals is None else jax.tree.map(np.add, totals, counts)
  return totals


def run(config, workdir: str) -> dict[str, Any]:
  """Trains the heads, selects the rate on the hold-out, reports the test split."""
  config = eval_examples.eval_data_config(config)
  lp = config.linear_probe
  encoder, variables, info = eval_pretrained.load_pretrained(config)
  mesh = parallel.make_mesh()
  process_batch = parallel.check_batch_size(lp.batch_size, mesh, "linear_probe.batch_size")
  num_classes = int(pipeline.num_classes(config))
  fit_split, holdout_split = fit_and_holdout_splits(config)
  num_fit = pipeline.num_examples(config, fit_split)
  total = schedules.epochs_to_steps(lp.num_epochs, num_fit, lp.batch_size)
  rates = peak_rates(config)
  optimizer = linear_heads.heads_optimizer(lp.momentum, lp.weight_decay)
  state = linear_heads.init_heads(len(rates), encoder.num_features, num_classes, optimizer,
                                  init=lp.head_init, rng=jax.random.key(config.seed))
  frozen = parallel.replicate(variables, mesh)
  logging.info("Linear probe: %d heads (peak rates %s) on %s (%d examples), %d steps of batch "
               "%d, %d classes, hold-out %s.", len(rates), rates, fit_split, num_fit, total,
               lp.batch_size, num_classes, holdout_split)

  cached: dict[str, tuple[np.ndarray, np.ndarray]] = {}
  if lp.precompute_features:
    for name, split in (("fit", fit_split), ("holdout", holdout_split),
                        ("test", config.data.eval_split)):
      if split is not None:
        batches = pipeline.eval_batches(config, split=split, batch_size=process_batch,
                                        image_size=lp.image_size)
        cached[name] = features_lib.extract_features(encoder, variables, batches, mesh)
        logging.info("Cached %d features of %s.", len(cached[name][0]), split)
    features_fn = lambda frozen, batch: batch["features"]
    draw = _CachedBatches(*cached["fit"], lp.batch_size, config.seed, mesh)
    batches = lambda start: (draw(step) for step in itertools.count(start))
  else:
    features_fn = lambda frozen, batch: encoder.apply(frozen, batch["image"], train=False)
    batches = lambda start: pipeline.device_prefetch(
        pipeline.eval_batches(config, split=fit_split, batch_size=process_batch,
                              image_size=lp.image_size, train_augment=lp.train_augment,
                              seed=config.seed, repeat=True, start_step=start),
        mesh, config.data.prefetch_to_device, num_batches=total - start)

  replicated, sharded = parallel.replicated(mesh), parallel.data_sharding(mesh)
  heads_step = jax.jit(divergence.guarded(
      linear_heads.make_train_step(num_classes=num_classes, learning_rates=rates,
                                   total_steps=total, optimizer=optimizer,
                                   features_fn=features_fn), config.train.nan_policy),
      in_shardings=(replicated, replicated, sharded), out_shardings=(replicated, replicated),
      donate_argnums=0)
  labels = [f"lr{base:g}" for base in lp.lr_grid]
  outcome = loop.train(loop.encoder_run(
      config, "linear_probe", info, None, _RESUME_FIELDS,
      name="The linear probe", workdir=workdir, state=parallel.replicate(state, mesh),
      step_fn=lambda state, batch: heads_step(state, frozen, batch), batches=batches,
      total_steps=total, global_batch=lp.batch_size,
      log_metrics=lambda m: {f"{k}_{name}": m[k][i]
                             for k in ("loss", "accuracy", "learning_rate")
                             for i, name in enumerate(labels)}))
  if outcome.stopped:
    return {}
  state = outcome.state
  # The encoder is an input of the step, never an output; check it anyway before reporting.
  on_host = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), frozen)
  if eval_pretrained.fingerprint(on_host) != info["fingerprint"]:
    raise RuntimeError("The frozen encoder changed during linear probing.")

  results = _evaluate(config, encoder, state, frozen, mesh, process_batch, num_classes,
                      holdout_split, cached, info, rates)
  _save_head(workdir, config, state, results, info, num_classes)
  eval_results.write_results(workdir, results, results_markdown(results))
  return results


def _evaluate(config, encoder, state, frozen, mesh, process_batch: int, num_classes: int,
              holdout_split: str | None, cached: dict, info: dict, rates: list[float]
              ) -> dict[str, Any]:
  """Hold-out top-1 of every head, then the test split for the selected head."""
  lp = config.linear_probe
  heads = state.params

  def logits_fn(params, images):
    return linear_heads.heads_logits(params["heads"],
                                     encoder.apply(params["encoder"], images, train=False),
                                     num_classes)

  params = {"encoder": frozen, "heads": heads}

  def counts(name: str, split: str, head_params) -> dict:
    if name in cached:
      return _feature_counts(head_params, *cached[name], num_classes)
    p = params if head_params is heads else {"encoder": frozen, "heads": head_params}
    return _split_counts(config, split, logits_fn, p, mesh, process_batch, lp.image_size, name)

  sweep = [{"base_lr": float(b), "peak_lr": r} for b, r in zip(lp.lr_grid, rates)]
  selected = 0
  holdout = None
  if holdout_split is not None:
    holdout = accuracy.accuracies(counts("holdout", holdout_split, heads))
    for entry, top1, top5 in zip(sweep, holdout["top1"], holdout["top5"]):
      entry.update(holdout_top1=top1, holdout_top5=top5)
    selected = sweep_lib.select(holdout["top1"], rates)
  best = jax.tree.map(lambda x: x[selected:selected + 1], heads)
  test = accuracy.accuracies(counts("test", config.data.eval_split, best))
  test = {"top1": test["top1"][0], "top5": test["top5"][0], "num_examples": test["num_examples"]}
  return {
      "protocol": "linear_probe", "encoder": info,
      "data": {"dataset": eval_examples.dataset_name(config), "source": config.data.source,
               "fit_split": fit_and_holdout_splits(config)[0], "holdout_split": holdout_split,
               "test_split": config.data.eval_split,
               "num_holdout": holdout["num_examples"] if holdout else 0},
      "selected": {"base_lr": float(lp.lr_grid[selected]), "peak_lr": rates[selected],
                   "index": selected},
      "sweep": sweep, "test": test, "encoder_unchanged": True,
      "settings": {"batch_size": lp.batch_size, "num_epochs": lp.num_epochs,
                   "train_augment": lp.train_augment, "image_size": lp.image_size,
                   "precompute_features": lp.precompute_features, "head_init": lp.head_init},
  }


def _save_head(workdir: str, config, state, results: dict, info: dict, num_classes: int) -> None:
  """The head of the selected rate and its record (:mod:`relic.checkpoints.probe_head`)."""
  head = linear_heads.select_head(state.params, results["selected"]["index"])
  save_probe_head(workdir, head, {
      "num_classes": num_classes, "num_features": int(head["linear"]["kernel"].shape[0]),
      "image_size": config.linear_probe.image_size, "selected": results["selected"],
      "test": results["test"], "encoder": info,
      "data": {"source": config.data.source, "dataset": eval_examples.dataset_name(config)},
  })


def results_markdown(results: dict[str, Any]) -> str:
  """The sweep (hold-out top-1 per rate, selected marked) and the test accuracy."""
  enc = results["encoder"]
  data = results["data"]
  lines = [f"# Linear probe: {enc['architecture']} from {enc['path']}", "",
           f"Test ({data['dataset']} {data['test_split']}, {results['test']['num_examples']} "
           f"images): **top-1 {results['test']['top1']:.2f}%**, top-5 "
           f"{results['test']['top5']:.2f}% at base lr {results['selected']['base_lr']:g} "
           f"(peak {results['selected']['peak_lr']:g}).", ""]
  lines.append(f"Rate selection on {data['holdout_split'] or '(no hold-out)'}:")
  lines.append("")
  lines.append(sweep_lib.table(results["sweep"], results["selected"]["base_lr"], "base lr",
                               [("peak lr", "peak_lr"), ("hold-out top-1 (%)", "holdout_top1")]))
  return "\n".join(lines)
