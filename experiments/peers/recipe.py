"""The one recipe that relic and the PyTorch side (lightly) both train, read from one config.

The recipe is relic's quickstart (configs/quickstart.py) restricted to its two large views,
pointed at an image folder: a ResNet-18 layout with one block per stage and a 16-channel stem
(CIFAR stem), projector and predictor 128 -> 512 -> 128, two 24 px random-resized crops of 40-100%
of the image (presets A and B: BYOL's colour jitter, B solarises with probability 0.2; no blur,
no grayscale), AdamW at 1e-2 x batch / 256 with weight decay 1e-4 on the weight matrices, linear
warm-up over 0.3 epochs then cosine to 0, batch 64, one epoch; temperature 0.2; for BYOL an EMA
target starting at the online network (base rate 0, cosine to 1).

Both sides read every value from :func:`peer_config` (relic's config object), so the recipe
cannot drift apart; relic gets the same values as command-line overrides (:func:`relic_flags`).
No TensorFlow or torch here: the PyTorch side imports this module too.
"""

from __future__ import annotations

import math
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
BASE_CONFIG = "configs/quickstart.py"
OBJECTIVES = ("simclr", "byol", "relicv2")   # lightly has SimCLR and BYOL; ReLICv2 is relic's

# What the comparison changes in the quickstart recipe, for every objective: two large views
# only (no multi-crop, no saliency masking: lightly's SimCLR and BYOL have neither), one epoch of
# the folder's 'train', and no labelled work during training (relic's online linear probe and
# periodic kNN use labels that lightly's training never sees; the shared evaluation scores both).
COMMON = {
    "data.source": "folder",
    "data.train_split": "train",
    "data.eval_split": "test",
    "data.views.small.num": 0,
    "data.mask_prob": 0.0,
    "train.num_epochs": 1.0,
    "probe.enabled": False,
    "evaluators.periodic": (),
    "evaluators.final": (),
}
PER_OBJECTIVE = {
    "simclr": {"loss.objective": "simclr"},
    "byol": {"loss.objective": "byol", "model.predictor": True},
    "relicv2": {"loss.objective": "relicv2"},
}


def overrides(objective: str, data_path: str, seed: int, **extra) -> dict[str, object]:
  """Every config field the comparison sets, as ``{dotted.name: value}``."""
  if objective not in PER_OBJECTIVE:
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
  return {**COMMON, **PER_OBJECTIVE[objective], "data.path": str(data_path), "seed": int(seed),
          **extra}


def parse_overrides(items: list[str]) -> dict[str, object]:
  """``['train.num_epochs=0.2', ...]`` -> ``{'train.num_epochs': 0.2}`` (Python literals, else
  strings)."""
  import ast  # pylint: disable=import-outside-toplevel

  parsed = {}
  for item in items:
    key, equals, text = item.partition("=")
    if not equals:
      raise ValueError(f"--override {item!r}: expected KEY=VALUE, e.g. train.num_epochs=0.2.")
    try:
      parsed[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      parsed[key] = text
  return parsed


def _flag_value(value: object) -> str:
  if isinstance(value, tuple):
    return "(" + "".join(f"{v!r}," for v in value) + ")"
  return str(value)


def relic_flags(objective: str, data_path: str, seed: int, **extra) -> list[str]:
  """``--config=... --config.X=V`` arguments of ``python -m relic.main`` for this recipe."""
  return [f"--config={ROOT / BASE_CONFIG}"] + [
      f"--config.{k}={_flag_value(v)}" for k, v in overrides(objective, data_path, seed,
                                                             **extra).items()]


def peer_config(objective: str, data_path: str, seed: int, **extra):
  """relic's config of the recipe (an ``ml_collections.ConfigDict``): both sides read it."""
  from relic import main as relic_main  # pylint: disable=import-outside-toplevel

  config = relic_main.load_config_file(str(ROOT / BASE_CONFIG))
  with config.unlocked():
    for key, value in overrides(objective, data_path, seed, **extra).items():
      node = config
      *parents, leaf = key.split(".")
      for name in parents:
        node = node[name]
      node[leaf] = value
  return config


# Training images/s count the steps after this one on both sides (start-up and the first,
# slower steps excluded).
TIMED_FROM_STEP = 20


def num_steps(config, num_train_examples: int) -> int:
  """Training steps: relic's own rule (relic.schedules), for both sides."""
  from relic import schedules  # pylint: disable=import-outside-toplevel
  return schedules.total_steps(config, num_train_examples)


def warmup_steps(config, num_train_examples: int) -> int:
  from relic import schedules  # pylint: disable=import-outside-toplevel
  return schedules.warmup_steps(config, num_train_examples)


def learning_rate(step: int, peak: float, total: int, warmup: int) -> float:
  """Linear warm-up from 0 over ``warmup`` steps, then half a cosine to 0 at ``total``: the rate
  of the update that turns step k into k + 1 (relic.schedules.warmup_cosine, written again)."""
  if step < warmup:
    return peak * step / max(warmup, 1)
  progress = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
  return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def peak_learning_rate(config) -> float:
  return config.optim.base_lr * config.train.batch_size / 256.0
