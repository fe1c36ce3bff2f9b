"""``config.job = 'transfer'``: linear and fine-tune transfer to other datasets, one or many.

Protocols (relic's reading of the BYOL / SimCLR transfer appendices, which the paper's transfer
table follows [recon]):
  * ``'linear'``: L2-regularised multinomial logistic regression on frozen features of the
    centre crop (BN in inference mode); the L2 strength is chosen on a held-out
    ``transfer.val_fraction`` of the train split, the classifier refit on the whole train split
    and scored on the test split (relic/evaluators/linear.py). Top-1 and mean per-class
    accuracy are both reported; the literature uses the latter for Pets, Caltech-101, Flowers.
    A multi-label dataset (VOC2007) gets one-vs-rest logistic regression scored by 11-point
    mAP instead (relic/evaluators/multilabel.py).
  * ``'finetune'``: the whole network + a new head, trained with ``config.finetune`` (the same
    code as the finetune job; ``finetune.lr_grid`` enables its hold-out rate selection, by the
    dataset's metric). VOC2007 gets a one-vs-rest head scored by 11-point mAP, and its rates are
    compared on its official validation split.

One command scores one dataset or a list (``transfer.datasets``, see
relic/data/transfer_datasets.py for the names, the tfds mapping and the substitutes).
Each dataset writes ``WORKDIR/<name>/results.json``; a restarted command skips the datasets that
are finished for the same encoder. The top-level ``results.json`` / ``results.md`` hold the
summary table across datasets.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import jax
import numpy as np
from absl import logging
from etils import epath

from relic import checkpoints, parallel
from relic.checkpoints.results import METRIC_KEYS
from relic.errors import ConfigError, Problems, check_each
from relic.data import examples, pipeline
from relic.evaluators import features as features_lib, linear, multilabel
from relic.evaluators.progress import Progress
from relic.data.examples import split_named_part
from relic.data.transfer_datasets import TransferDataset, dataset_config, expand, resolve
from relic.train import finetune

PROTOCOLS = ("linear", "finetune")


def datasets(config) -> list[TransferDataset]:
  entries = expand(config.transfer.datasets)
  if not entries:
    raise ConfigError("config.transfer.datasets is empty. Fix: name at least one dataset, e.g. "
                      "--config.transfer.datasets=cifar10 (or 'cifar10,dtd').")
  return [resolve(entry) for entry in entries]


def protocols(config) -> list[str]:
  chosen = expand(config.transfer.protocols)
  unknown = sorted(set(chosen) - set(PROTOCOLS))
  if not chosen or unknown:
    raise ConfigError(f"config.transfer.protocols: unknown or empty {chosen}. Fix: use "
                      f"'linear', 'finetune' or both, e.g. 'linear,finetune'.")
  return chosen


def validate(config) -> None:
  """Every dataset must be readable before the first one is evaluated; the encoder's path, the
  settings and every dataset are checked together."""
  t = config.transfer
  problems = Problems()
  problems.check(checkpoints.check_pretrained, config)
  if t.batch_size <= 0 or t.image_size <= 0 or not 0 < t.val_fraction < 1 or t.max_iter <= 0:
    problems.add(ConfigError(
        f"config.transfer: need batch_size > 0, image_size > 0, 0 < val_fraction < 1, "
        f"max_iter > 0; got {t.batch_size}, {t.image_size}, {t.val_fraction}, {t.max_iter}. "
        "Fix: e.g. 256, 224, 0.2, 1000."))
  if "finetune" in protocols(config):
    problems.check(finetune.check_settings, config)

  def check(dataset: TransferDataset) -> None:
    cfg = examples.eval_data_config(dataset_config(config, dataset))
    pipeline.check_data_config(cfg)
    if "finetune" in protocols(config):
      finetune.check_data(cfg)

  problems.check(lambda: check_each({d.name: d for d in datasets(config)}, check,
                                    "transfer datasets cannot be read", "transfer.datasets"))
  problems.raise_if_any()


def _counted(batches: Iterable[dict], progress: Progress) -> Iterator[dict]:
  for batch in batches:
    progress.update(int(np.asarray(batch["valid"]).sum()) * jax.process_count())
    yield batch


def _features(config, encoder, variables, mesh, split: str, max_examples: int, what: str):
  t = config.transfer
  process_batch = parallel.check_batch_size(t.batch_size, mesh, "transfer.batch_size")
  total = pipeline.num_examples(config, split)
  if max_examples:
    total = min(total, max_examples)
  batches = pipeline.eval_batches(config, split=split, batch_size=process_batch,
                                  image_size=t.image_size)
  return features_lib.extract_features(encoder, variables,
                                       _counted(batches, Progress(what, total)), mesh,
                                       max_examples=max_examples)


def linear_transfer(config, encoder, variables, mesh, dataset: TransferDataset) -> dict[str, Any]:
  """Logistic regression on frozen features; L2 chosen on the dataset's official validation
  split (``dataset.holdout_split``) or a random part of train, by the dataset's metric."""
  t, name = config.transfer, dataset.name
  num_classes = int(pipeline.num_classes(config))
  fit_split, holdout_split = config.data.train_split, None
  if dataset.holdout_split:
    fit_split, holdout_split = split_named_part(config.data.train_split, dataset.holdout_split)
  train_x, train_y = _features(config, encoder, variables, mesh, fit_split,
                               t.num_train_examples, f"{name} {fit_split} features")
  holdout = None
  if holdout_split:
    holdout = _features(config, encoder, variables, mesh, holdout_split, 0,
                        f"{name} {holdout_split} features")
  test_x, test_y = _features(config, encoder, variables, mesh, config.data.eval_split, 0,
                             f"{name} test features")
  l2_grid = tuple(t.l2_grid) or linear.DEFAULT_L2_GRID
  sizes = {"num_train": int(len(train_x) + (len(holdout[0]) if holdout else 0)),
           "num_test": int(len(test_x)), "num_classes": num_classes,
           "selected_on": holdout_split or f"random {t.val_fraction:g} of {fit_split}"}
  if train_y.ndim == 2:  # multi-label targets (N, num_classes)
    result = multilabel.select_and_evaluate(train_x, train_y, test_x, test_y, l2_grid=l2_grid,
                                            val_fraction=t.val_fraction, seed=config.seed,
                                            max_iter=t.max_iter, holdout=holdout)
    return {**result, **sizes}
  model, chosen = linear.select_and_fit(train_x, train_y, num_classes=num_classes,
                                        l2_grid=l2_grid, val_fraction=t.val_fraction,
                                        seed=config.seed, max_iter=t.max_iter, holdout=holdout,
                                        metric=dataset.metric)
  predictions = linear.logits(model, test_x).argmax(-1)
  return {"top1": linear.accuracy(model, test_x, test_y),
          "top5": linear.accuracy(model, test_x, test_y, 5),
          "mean_per_class": linear.mean_per_class_accuracy(predictions, test_y), **chosen, **sizes}


def linear_score(entry: dict[str, Any]) -> float:
  """The literature's number (TransferDataset.metric) of a dataset's linear result, in %."""
  return float(entry["linear"][METRIC_KEYS[entry["metric"]]])


def run(config, workdir: str) -> dict[str, Any]:
  encoder, variables, info = checkpoints.load_pretrained(config)
  mesh = parallel.make_mesh()
  chosen = protocols(config)
  summary: dict[str, Any] = {"protocol": "transfer", "encoder": info, "protocols": chosen,
                             "datasets": {}}
  for dataset in datasets(config):
    directory = epath.Path(workdir) / dataset.name
    previous = checkpoints.read_results(str(directory)) or {}
    if previous.get("fingerprint") != info["fingerprint"]:
      previous = {}  # another encoder's results: nothing to reuse
    if previous and all(p in previous for p in chosen):
      logging.info("Transfer to %s already done in %s; reusing it.", dataset.name, directory)
      summary["datasets"][dataset.name] = previous
      continue
    cfg = examples.eval_data_config(dataset_config(config, dataset))
    entry: dict[str, Any] = {"dataset": dataset.dataset, "source": dataset.source,
                             "train_split": dataset.train_split, "test_split": dataset.test_split,
                             "metric": dataset.metric, "note": dataset.note,
                             "fingerprint": info["fingerprint"]}
    if "linear" in chosen:
      entry["linear"] = previous.get("linear") or linear_transfer(cfg, encoder, variables, mesh,
                                                                  dataset)
      logging.info("Transfer %s linear: %s %.2f%%.", dataset.name, dataset.metric,
                   linear_score(entry))
    if "finetune" in chosen:
      result = finetune.finetune_and_evaluate(cfg, str(directory / "finetune"), encoder,
                                              variables, info, mesh, metric=dataset.metric)
      test = dict(result["test"])
      entry["finetune"] = {**test, "score": result["score"], "num_test": test.pop("num_examples"),
                           "base_lr": result["selected"]["base_lr"], "sweep": result["sweep"],
                           "train": result["data"]["train"]}
      logging.info("Transfer %s fine-tune: %s %.2f%%.", dataset.name, dataset.metric,
                   result["score"])
    if jax.process_index() == 0:
      directory.mkdir(parents=True, exist_ok=True)
    checkpoints.write_results(str(directory), entry, results_markdown(
        {"encoder": info, "protocols": chosen, "datasets": {dataset.name: entry}}))
    summary["datasets"][dataset.name] = entry
  checkpoints.write_results(workdir, summary, results_markdown(summary))
  return summary


def results_markdown(summary: dict[str, Any]) -> str:
  """One row per dataset: the literature's metric and its linear value, linear top-1 / mean
  per-class (single-label datasets), the metric and top-1 fine-tuned."""
  enc = summary["encoder"]
  header = ["dataset", "tfds / source", "metric"]
  if "linear" in summary["protocols"]:
    header += ["linear, metric (%)", "linear top-1 (%)", "linear mean per-class (%)"]
  if "finetune" in summary["protocols"]:
    header += ["fine-tune, metric (%)", "fine-tune top-1 (%)"]
  header.append("note")
  rows = []
  for name, entry in summary["datasets"].items():
    row = [name, entry["dataset"], entry["metric"]]
    if "linear" in summary["protocols"]:
      linear_entry = entry["linear"]
      row += [linear_score(entry), float(linear_entry.get("top1", "nan")),
              float(linear_entry.get("mean_per_class", "nan"))]
    if "finetune" in summary["protocols"]:
      tuned = entry["finetune"]
      score = tuned["score"] if "score" in tuned else tuned["top1"]  # results before 'score'
      row += [float(score), float(tuned.get("top1", "nan"))]
    rows.append(row + [entry.get("note", "")])
  return (f"# Transfer: {enc['architecture']} from {enc['path']}\n\n" +
          checkpoints.table(header, rows))
