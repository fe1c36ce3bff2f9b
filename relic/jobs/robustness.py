"""``config.job = 'robustness'``: the ImageNet linear head, unchanged, on shifted test sets.

Protocol (the paper's robustness evaluation as relic reads it: the ImageNet linear head without
fine-tuning; the sets and how each is scored are relic's choices [recon]): the head a
linear_probe run selected (``probe_head.npz``) on
the encoder it was fit on, no fine-tuning, scored on ImageNet-V2 (three variants), ImageNet-R
(predictions restricted to its 200 classes), ImageNet-Sketch, ImageNet-C (15 corruptions x
5 severities; per corruption and mean) and ObjectNet (its 113 ImageNet classes, each scored by
the highest logit of its ImageNet classes). The built-in dataset's version is its 'test' and
'test_ood' splits. The test sets are listed in relic/data/robustness_sets.py.

Pointing the job at the probe is enough: ``probe_head.json`` names the encoder and holds a
fingerprint of its weights, and the job refuses an encoder whose weights differ (a head is
only meaningful on the features it was fit on). ``config.pretrained`` overrides the path
(e.g. the same checkpoint copied elsewhere). Finished test sets are kept in
``results.partial.json``: a restarted run scores only the remaining ones.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath

from relic import checkpoints, parallel
from relic.errors import ConfigError, Problems, check_each
from relic.data import examples, pipeline, splits
from relic.evaluators import accuracy, class_subsets
from relic.evaluators.progress import Progress
from relic.data.robustness_sets import TestSet, resolve, set_config
from relic.models import LinearHead

PARTIAL = "results.partial.json"


def _with_pretrained(config, record: dict[str, Any]):
  """``config`` whose ``pretrained`` is the probe's encoder unless one was given."""
  config = examples.eval_data_config(config)
  if not config.pretrained:
    config.pretrained = record["encoder"]["path"]
  return config


def _load_probe(config) -> tuple[dict[str, Any], dict[str, Any]]:
  if not config.robustness.probe:
    raise ConfigError("config.robustness.probe is empty: the robustness job scores the head of a "
                      "finished linear probe. Fix: pass --config.robustness.probe=WORKDIR of a "
                      "linear_probe run (it holds probe_head.npz and probe_head.json).")
  try:
    return checkpoints.load_probe_head(config.robustness.probe, linear_probe_only=True)
  except FileNotFoundError as e:  # a user error: reported as one, with its fix
    raise ConfigError(f"config.robustness.probe: {e}") from None


def _split(test_set: TestSet, max_examples: int) -> str:
  if not max_examples:
    return test_set.split
  name, start, stop = splits.parse(test_set.split)
  if start is not None or stop is not None:
    raise ConfigError(f"config.robustness.max_examples cannot be combined with the sliced split "
                      f"{test_set.split!r}. Fix: slice the split directly, or set it to 0.")
  return f"{name}[:{max_examples}]"


def validate(config) -> None:
  """Checks the probe, the encoder and that every test set is readable, before any compute."""
  r = config.robustness
  _, record = _load_probe(config)
  problems = Problems()  # the encoder, the settings and every test set, reported together
  problems.check(checkpoints.check_pretrained, _with_pretrained(config, record))
  if r.batch_size <= 0 or r.image_size < 0 or r.max_examples < 0:
    problems.add(ConfigError(
        f"config.robustness: batch_size must be > 0 and image_size, max_examples >= 0, got "
        f"{r.batch_size}, {r.image_size}, {r.max_examples}. Fix: use e.g. batch_size=1024, "
        "image_size=0 (the probe's), max_examples=0."))

  def check(test_set: TestSet) -> None:
    cfg = set_config(examples.eval_data_config(config), test_set)
    cfg.data.train_split = cfg.data.eval_split = _split(test_set, r.max_examples)
    pipeline.check_data_config(cfg)
    _check_label_space(test_set, int(pipeline.num_classes(cfg)), int(record["num_classes"]))

  problems.check(lambda: check_each({t.name: t for t in resolve(config)}, check,
                                    "robustness test sets cannot be used", "robustness.datasets"))
  problems.raise_if_any()


def run(config, workdir: str) -> dict[str, Any]:
  r = config.robustness
  head, record = _load_probe(config)
  config = _with_pretrained(config, record)
  encoder, variables, info = checkpoints.load_pretrained(config)
  if info["fingerprint"] != record["encoder"]["fingerprint"]:
    raise ConfigError(
        f"the encoder at {config.pretrained} is not the one the probe in {r.probe} was fit on "
        f"(weights fingerprint {info['fingerprint'][:12]} vs {record['encoder']['fingerprint'][:12]}"
        f" recorded in {checkpoints.PROBE_HEAD_JSON}). Fix: point config.pretrained at that "
        f"encoder ({record['encoder']['path']}), or run a linear probe on this one first.")
  num_classes = int(record["num_classes"])
  image_size = r.image_size or int(record["image_size"])
  mesh = parallel.make_mesh()
  process_batch = parallel.check_batch_size(r.batch_size, mesh, "robustness.batch_size")
  params = parallel.replicate({"encoder": variables, "head": head}, mesh)
  linear = LinearHead(num_classes)

  def logits_fn(p, images):
    return linear.apply({"params": p["head"]}, encoder.apply(p["encoder"], images, train=False))

  test_sets = resolve(config)
  plan = []
  for test_set in test_sets:
    cfg = set_config(config, test_set)
    split = _split(test_set, r.max_examples)
    _check_label_space(test_set, int(pipeline.num_classes(cfg)), num_classes)
    plan.append((test_set, cfg, split, pipeline.num_examples(cfg, split)))

  partial_path = epath.Path(workdir) / PARTIAL
  done: dict[str, Any] = {}
  if partial_path.exists():
    saved = json.loads(partial_path.read_text())
    if saved.get("fingerprint") == info["fingerprint"] and saved.get("image_size") == image_size:
      done = saved["sets"]
      logging.info("Reusing %d finished test sets from %s.", len(done), partial_path)
  progress = Progress("robustness", sum(n for t, _, _, n in plan if t.name not in done))
  from relic.metrics import MetricsLogger  # pylint: disable=import-outside-toplevel
  logger = MetricsLogger(workdir, total_steps=len(plan), global_batch_size=r.batch_size)
  for index, (test_set, cfg, split, _) in enumerate(plan):
    if test_set.name not in done:
      batches = pipeline.eval_batches(cfg, split=split, batch_size=process_batch,
                                      image_size=image_size)
      counts = accuracy.count_split(_set_logits_fn(logits_fn, test_set), params, batches, mesh,
                                    progress=progress,
                                    class_indices=class_subsets.subset_indices(
                                        test_set.class_subset))
      done[test_set.name] = {**accuracy.accuracies(counts), "dataset": cfg.data.dataset
                             if cfg.data.source == "tfds" else cfg.data.source,
                             "split": split, "class_subset": test_set.class_subset,
                             "class_groups": test_set.class_groups, "group": test_set.group}
      if jax.process_index() == 0:
        partial_path.write_text(json.dumps({"fingerprint": info["fingerprint"],
                                            "image_size": image_size, "sets": done}))
    logger.write(index + 1, {"top1": done[test_set.name]["top1"],
                             "top5": done[test_set.name]["top5"]}, prefix=test_set.name)
  logger.close()
  results = {"protocol": "robustness", "encoder": info, "probe": {
      "workdir": r.probe, "selected": record["selected"], "test": record["test"],
      "data": record["data"]}, "image_size": image_size,
      "sets": {t.name: done[t.name] for t, _, _, _ in plan},
      "groups": group_means({t.name: done[t.name] for t, _, _, _ in plan})}
  checkpoints.write_results(workdir, results, results_markdown(results))
  return results


def _check_label_space(test_set: TestSet, set_classes: int, head_classes: int) -> None:
  """The test set's labels must be the head's classes, or groups of them (ObjectNet)."""
  if test_set.class_groups:
    groups = class_subsets.class_groups(test_set.class_groups)
    needed = 1 + max(i for g in groups for i in g)
    if head_classes < needed or set_classes != len(groups):
      raise ConfigError(f"{test_set.name} scores {len(groups)} classes by the logits of the "
                        f"ImageNet classes they stand for, which needs the 1000-class ImageNet "
                        f"head; the probe head has {head_classes} classes. Fix: use the head of "
                        "an ImageNet linear probe, or leave it out of config.robustness.datasets.")
  elif set_classes != head_classes:
    raise ConfigError(f"{test_set.name} has {set_classes} classes but the probe head has "
                      f"{head_classes}; its labels are not in the head's label space. Fix: "
                      "leave it out of config.robustness.datasets.")


def _set_logits_fn(logits_fn, test_set: TestSet):
  """``logits_fn``, or for a test set with class groups its per-group scores."""
  if not test_set.class_groups:
    return logits_fn
  groups = class_subsets.class_groups(test_set.class_groups)
  return lambda params, images: class_subsets.group_max(logits_fn(params, images), groups)


def group_means(sets: dict[str, Any]) -> dict[str, Any]:
  """Mean top-1/top-5 per group (an ImageNet-C corruption over its severities), and over all
  groups of a family ('imagenet_c': the mean over corruptions)."""
  groups: dict[str, list[dict]] = {}
  for result in sets.values():
    if result.get("group"):
      groups.setdefault(result["group"], []).append(result)
  means = {g: {k: float(np.mean([m[k] for m in members])) for k in ("top1", "top5")}
           | {"num_sets": len(members)} for g, members in groups.items()}
  families: dict[str, list[dict]] = {}
  for g, m in means.items():
    families.setdefault(g.split("/", 1)[0], []).append(m)
  for family, members in families.items():
    means[family] = {k: float(np.mean([m[k] for m in members])) for k in ("top1", "top5")}
    means[family]["num_sets"] = sum(m["num_sets"] for m in members)
  return means


def results_markdown(results: dict[str, Any]) -> str:
  probe = results["probe"]
  lines = [f"# Robustness: {results['encoder']['architecture']} + the linear head of "
           f"{probe['workdir']}", "",
           f"Head: base lr {probe['selected']['base_lr']:g}; in-distribution test top-1 "
           f"{probe['test']['top1']:.2f}% ({probe['data']['dataset']}). Images at "
           f"{results['image_size']} px, no fine-tuning.", ""]
  rows = [[name, r["split"], r["class_subset"] or r.get("class_groups") or "all",
           r["num_examples"], r["top1"], r["top5"]]
          for name, r in results["sets"].items() if not r.get("group")]
  rows += [[f"{g} (mean of {m['num_sets']})", "", "", "", m["top1"], m["top5"]]
           for g, m in results["groups"].items()]
  lines.append(checkpoints.table(["test set", "split", "classes", "images", "top-1 (%)",
                                 "top-5 (%)"], rows))
  return "\n".join(lines)
