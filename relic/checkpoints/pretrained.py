"""The pretrained encoder of an evaluation job (``config.pretrained``): checks and loading.

The architecture comes from the checkpoint (a relic run stores its ``config.model``; a DeepMind
pickle is read from its shapes), so a probe needs nothing but the path. ``config.model`` is
then only a check: every architecture field a user changed from its default must agree with
the checkpoint, otherwise the job stops before any compute and names the expected and the
found value. ``config.model.dtype`` and ``remat`` are compute choices and are taken from the
evaluation config.

Two stages: :func:`check_pretrained` runs from ``job.validate`` (cheap: the path, the presence
of a checkpoint, the architecture recorded in the run's ``config.json``); :func:`load_pretrained`
loads the variables in ``job.run`` and repeats the architecture check on what was loaded.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import numpy as np
from absl import logging
from etils import epath

from relic.checkpoints.layout import read_config, step_dirs, workdir_of
from relic.config import base_config
from relic.errors import ConfigError
from relic.models.resnet import STAGE_SIZES, ResNet

ARCH_FIELDS = ("depth", "width_multiplier", "stage_sizes", "base_width", "small_images")
COMPUTE_FIELDS = ("dtype", "remat")
_HOW_TO = ("pass --config.pretrained=WORKDIR (a relic pretraining workdir), a step directory "
           "WORKDIR/checkpoints/STEP, or a DeepMind BYOL/ReLICv2 .pkl file")


def _effective(model_config: Mapping[str, Any], field: str) -> Any:
  """A field's value as it shapes the network (``stage_sizes=()`` = the depth's layout)."""
  if field == "stage_sizes":
    return tuple(model_config.get("stage_sizes") or STAGE_SIZES[int(model_config["depth"])])
  return model_config[field]


def requested_architecture(config) -> dict[str, Any]:
  """The ``config.model`` architecture fields the user changed from their defaults."""
  default = base_config().model
  raw = lambda model, f: tuple(model[f] or ()) if f == "stage_sizes" else model[f]
  return {f: config.model[f] for f in ARCH_FIELDS if raw(config.model, f) != raw(default, f)}


def describe(model_config: Mapping[str, Any]) -> str:
  depth, width = model_config["depth"], model_config["width_multiplier"]
  text = f"ResNet-{depth} {width}x"
  extra = []
  if model_config.get("stage_sizes"):
    extra.append(f"stage_sizes={tuple(model_config['stage_sizes'])}")
  if model_config.get("base_width", 64) != 64:
    extra.append(f"base_width={model_config['base_width']}")
  if model_config.get("small_images"):
    extra.append("small_images=True")
  return text + (f" ({', '.join(extra)})" if extra else "")


def check_architecture(config, found: Mapping[str, Any], path: str) -> None:
  """Raises ConfigError when a changed ``config.model`` field contradicts the checkpoint."""
  wrong = [(f, value, found.get(f)) for f, value in requested_architecture(config).items()
           if f not in found or _effective(config.model, f) != _effective(found, f)]
  if wrong:
    lines = "; ".join(f"config.model.{f}: expected {exp!r}, found {got!r}" for f, exp, got in wrong)
    raise ConfigError(
        f"config.pretrained={path} holds a {describe(found)} encoder, not the architecture the "
        f"config asks for ({lines}). Fix: drop the config.model overrides (the architecture is "
        "read from the checkpoint) or point config.pretrained at an encoder of that "
        "architecture.")


class PretrainedNotFoundError(ConfigError, FileNotFoundError):
  """``config.pretrained`` names no file and no workdir with a checkpoint: a user error (a
  ConfigError, reported with the fix) that is also a FileNotFoundError."""


def check_pretrained(config) -> None:
  """Validate-time checks of ``config.pretrained`` (no arrays are read, no TensorFlow)."""
  if not config.pretrained:
    raise ConfigError(f"config.pretrained is empty: the {config.job} job evaluates a pretrained "
                      f"encoder. Fix: {_HOW_TO}.")
  path = epath.Path(config.pretrained)
  if not path.exists():
    raise PretrainedNotFoundError(f"config.pretrained={config.pretrained} does not exist. "
                                  f"Fix: {_HOW_TO}.")
  if path.is_file():
    return  # a DeepMind pickle: its architecture is read from its shapes when it is loaded.
  try:
    workdir = workdir_of(step_dirs(path)[0])
  except FileNotFoundError as e:
    raise PretrainedNotFoundError(f"config.pretrained={e} Or pass a DeepMind BYOL/ReLICv2 "
                                  ".pkl file.") from None
  saved = read_config(workdir)
  if saved is not None and saved.get("job", "pretrain") != "pretrain":
    raise ConfigError(
        f"config.pretrained={config.pretrained} is the workdir of a {saved.job!r} job, not of a "
        f"pretraining run. Fix: pass the pretraining workdir it evaluated"
        f"{' (' + saved.pretrained + ')' if saved.get('pretrained') else ''}.")
  if saved is not None and "model" in saved:
    check_architecture(config, saved.model.to_dict(), config.pretrained)


def fingerprint(variables: Mapping[str, Any]) -> str:
  """sha256 of every array (sorted by path): identifies the exact encoder a head was fit on."""
  from relic.interop.shapes import flatten  # pylint: disable=import-outside-toplevel
  digest = hashlib.sha256()
  for name, value in sorted(flatten(variables).items()):
    array = np.ascontiguousarray(np.asarray(value))
    digest.update(name.encode())
    digest.update(str(array.dtype).encode() + str(array.shape).encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def _load(path: str) -> tuple[ResNet, dict[str, Any]]:
  """A relic run (through :func:`relic.checkpoints.restore_encoder`) or a DeepMind pickle."""
  from relic.interop.load import load_encoder  # pylint: disable=import-outside-toplevel
  try:
    return load_encoder(path)
  except ValueError as e:  # shapes that do not fit the recorded architecture
    raise ConfigError(f"config.pretrained={path}: {e}") from e


def load_pretrained(config) -> tuple[ResNet, dict[str, Any], dict[str, Any]]:
  """``(encoder, variables, info)`` for ``config.pretrained``, checked against ``config.model``.

  ``info`` records what was evaluated: path, architecture, model fields and the fingerprint.
  """
  check_pretrained(config)
  model, variables = _load(config.pretrained)
  found = {f: getattr(model, f) for f in ARCH_FIELDS + ("padding",)}
  found["stage_sizes"] = tuple(found["stage_sizes"] or ())
  check_architecture(config, found, config.pretrained)
  model = model.clone(**{f: config.model[f] for f in COMPUTE_FIELDS})
  variables = {k: variables[k] for k in ("params", "batch_stats")}
  info = {"path": str(config.pretrained), "architecture": describe(found),
          "model": {k: list(v) if isinstance(v, tuple) else v for k, v in found.items()},
          "num_features": model.num_features, "fingerprint": fingerprint(variables)}
  logging.info("Evaluating the %s encoder of %s (fingerprint %s).", info["architecture"],
               config.pretrained, info["fingerprint"][:12])
  return model, variables, info
