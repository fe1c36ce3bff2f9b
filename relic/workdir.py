"""The run's workdir: where the resolved config is stored and read back."""

from __future__ import annotations

import json

import jax
import ml_collections
from etils import epath

CONFIG_JSON = "config.json"


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the resolved config as JSON (machine-readable) from process 0 only.

  The first config is kept as ``config.json``; a resumed run writes its own next to it so
  nothing a user relies on to compare runs is overwritten.
  """
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  target = path / CONFIG_JSON
  if target.exists() and target.read_text() != text:
    target = path / "config.resumed.json"
  target.write_text(text)


def read_config(workdir: str) -> ml_collections.ConfigDict | None:
  """The config a workdir was created with, or None."""
  target = epath.Path(workdir) / CONFIG_JSON
  if not target.exists():
    return None
  return ml_collections.ConfigDict(json.loads(target.read_text()))
