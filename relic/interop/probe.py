"""Finds a trained linear head (relic ``LinearHead`` params) to export as torchvision's ``fc``.

Heads live in different places: the online probe in a pretraining state (``probe_params``),
the classifier of a linear-probe run, or a plain ``.npz``. Rather than hard-code each job's
checkpoint layout, the restored tree is searched for ``{'linear': {'kernel', 'bias'}}``
outside optimiser states, preferring entries whose path names a probe or head.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from etils import epath

_PREFERRED = ("probe", "head", "classifier")


def _latest_step(directory: epath.Path) -> epath.Path | None:
  steps = [p for p in directory.iterdir() if p.name.isdigit()]
  return max(steps, key=lambda p: int(p.name)) if steps else None


def _orbax_item(path: epath.Path) -> epath.Path:
  """The Orbax item directory under a workdir, a checkpoints dir, a step dir or the item."""
  for _ in range(3):
    if (path / "_METADATA").exists():
      return path
    if (path / "checkpoints").is_dir():
      path = path / "checkpoints"
    elif (path / "state").is_dir():
      path = path / "state"
    else:
      step = _latest_step(path)
      if step is None:
        break
      path = step
  if (path / "_METADATA").exists():
    return path
  raise ValueError(f"No Orbax checkpoint found under {path}.")


def _heads(tree: Any, path: str = "") -> list[tuple[str, Mapping[str, Any]]]:
  if not isinstance(tree, Mapping) or "opt_state" in path:  # optimiser moments look alike
    return []
  linear = tree.get("linear")
  if isinstance(linear, Mapping) and "kernel" in linear and "bias" in linear:
    return [(path, {"linear": linear})]
  found = []
  for key, value in tree.items():
    found += _heads(value, f"{path}/{key}")
  return found


def load_probe_head(path: str) -> dict[str, Any]:
  """LinearHead params ``{'linear': {'kernel': (F, C), 'bias': (C,)}}`` from ``path``.

  Args:
    path: a ``.npz`` with ``kernel`` and ``bias``, or a relic workdir / checkpoint whose
      state holds a LinearHead (pretraining's online probe, a linear-probe run's classifier).
  """
  if str(path).endswith(".npz"):
    with epath.Path(path).open("rb") as f:
      data = np.load(f)
      return {"linear": {"kernel": data["kernel"], "bias": data["bias"]}}
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  item = _orbax_item(epath.Path(path))
  heads = _heads(ocp.StandardCheckpointer().restore(item))
  if not heads:
    raise ValueError(f"{item} holds no linear head ({{'linear': {{'kernel', 'bias'}}}}).")
  heads.sort(key=lambda h: not any(word in h[0] for word in _PREFERRED))
  return {"linear": {k: np.asarray(v) for k, v in heads[0][1]["linear"].items()}}
