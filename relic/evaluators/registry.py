"""Evaluators of a pretraining run, chosen by name from the config (big_vision's evaluators).

``config.evaluators.periodic`` run every ``train.eval_every_steps`` steps and after the last
one (their scalars go to the metrics log); ``config.evaluators.final`` run once after
pretraining and write ``results.json`` / ``results.md``. Each name maps to a module with an
``Evaluator(config, encoder, mesh, num_classes)`` class whose ``run(variables)`` returns its
results and whose ``markdown(results)`` renders them; a new evaluator is a new module and one
line here. Modules are imported on demand.
"""

from __future__ import annotations

import importlib

from relic.errors import require

EVALUATORS = {
    "knn": "relic.evaluators.knn_monitor",      # kNN top-1 of the encoder, on a bank of train
    "frozen": "relic.evaluators.frozen",        # linear + kNN on frozen features, vs random init
}


def check_names(names, field: str) -> None:
  for name in names:
    require(name in EVALUATORS, field, f"unknown evaluator {name!r}",
            f"choose from {sorted(EVALUATORS)}")


def get(name: str, config, encoder, mesh, num_classes: int):
  """An instance of the evaluator ``name``."""
  check_names((name,), "evaluators")
  return importlib.import_module(EVALUATORS[name]).Evaluator(config, encoder, mesh, num_classes)
