"""``config.job = 'knn'``: weighted kNN top-1 of a pretrained encoder's frozen features (the
``knn`` evaluator of pretraining, on any pretrained workdir, checkpoint or DeepMind pickle).

A labelled bank of ``knn.num_train_examples`` images of ``data.labelled_split`` (default:
``data.train_split``; 0 = all) votes for each image of ``data.eval_split`` with weight
exp(cosine / ``knn.temperature``) among its ``knn.k`` nearest (Wu et al. 2018); centre crops of
``data.views.large.size`` pixels.
"""

from __future__ import annotations

from typing import Any

from relic import checkpoints, parallel
from relic.data import examples, pipeline
from relic.errors import Problems
from relic.evaluators import frozen, registry


def validate(config) -> None:
  """The encoder's path and the data's presence, reported together (no TensorFlow); then the
  labels."""
  problems = Problems()
  problems.check(checkpoints.check_pretrained, config)
  problems.check(pipeline.check_data_config, examples.eval_data_config(config))
  problems.raise_if_any()
  pipeline.check_single_label(config, "the knn job")


def run(config, workdir: str) -> dict[str, Any]:
  config = examples.eval_data_config(config)
  encoder, variables, info = checkpoints.load_pretrained(config)
  evaluator = registry.get("knn", config, encoder, parallel.make_mesh(),
                           int(pipeline.num_classes(config)))
  bank = frozen.labelled_split(config)
  results = {"protocol": "knn", "encoder": info, "test": evaluator.run(variables),
             "data": {"dataset": examples.dataset_name(config), "bank": bank,
                      "test_split": config.data.eval_split},
             "settings": {k: config.knn[k] for k in ("k", "temperature", "num_train_examples")}}
  checkpoints.write_results(workdir, results, (
      f"# kNN: {info['architecture']} from {info['path']}\n\n"
      f"{results['data']['dataset']} {config.data.eval_split}, bank {bank}: "
      + evaluator.markdown(results["test"])))
  return results
