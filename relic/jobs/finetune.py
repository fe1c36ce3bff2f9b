"""``config.job = 'finetune'``: the whole pretrained network + a new linear head, trained on labels
(the semi-supervised 1% / 10% protocol; relic/train/finetune.py has the protocol and the run).
"""

from __future__ import annotations

from typing import Any

from relic.checkpoints import pretrained as eval_pretrained, results as eval_results
from relic.data import pipeline
from relic.errors import Problems
from relic.train import finetune, sweep as sweep_lib


def validate(config) -> None:
  """Fine-tune-specific checks, before any compute: the encoder's path, the settings and the
  data's presence reported together (no TensorFlow), then the labelled subset."""
  problems = Problems()
  problems.check(eval_pretrained.check_pretrained, config)
  problems.check(finetune.check_settings, config)
  problems.check(pipeline.check_data_config, finetune.data_config(config))
  problems.raise_if_any()
  finetune.check_data(config)


def run(config, workdir: str) -> dict[str, Any]:
  encoder, variables, info = eval_pretrained.load_pretrained(config)
  results = finetune.finetune_and_evaluate(config, workdir, encoder, variables, info)
  if results is None:
    return {}
  eval_results.write_results(workdir, results, results_markdown(results))
  return results


def results_markdown(results: dict[str, Any]) -> str:
  data, test, metric = results["data"], results["test"], results["metric"]
  if "map" in test:
    scores = f"**11-point mAP {test['map']:.2f}%**"
  else:
    scores = (f"**top-1 {test['top1']:.2f}%**, top-5 {test['top5']:.2f}%, mean per-class "
              f"{test['mean_per_class']:.2f}%")
  lines = [f"# Fine-tuning: {results['encoder']['architecture']} from {results['encoder']['path']}",
           "", f"Trained on {data['train']['kind']} ({data['train']['num_examples']} examples "
           f"of {data['dataset']}) at base lr {results['selected']['base_lr']:g}.", "",
           f"Test ({data['test_split']}, {test['num_examples']} images): {scores}.", ""]
  if results["sweep"]:
    key = "holdout_" + eval_results.METRIC_KEYS[metric]
    lines += [f"Rate selection on the hold-out ({results['sweep'][0].get('holdout_split', '')}):",
              "", sweep_lib.table(results["sweep"], results["selected"]["base_lr"], "base lr",
                                  [(f"hold-out {eval_results.METRIC_NAMES[metric]} (%)", key)])]
  return "\n".join(lines)
