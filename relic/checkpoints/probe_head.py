"""Linear heads (``LinearHead`` params ``{'linear': {'kernel': (D, C), 'bias': (C,)}}``): the one
writer and reader of ``probe_head.npz`` + ``probe_head.json``, the head a linear probe selected
and its record (rate, image size, the encoder it was fit on, with its fingerprint). The PyTorch
export also reads a plain ``.npz`` or a pretraining run's online probe (``probe_params``); a
linear probe's checkpoints (all its heads, stacked) are read only by the probe, to resume.
"""

from __future__ import annotations

import io
import json
from typing import Any, Mapping

import jax
import numpy as np
from etils import epath

from relic.checkpoints.encoder import read_state_part
from relic.checkpoints.layout import PROBE_HEAD_JSON, PROBE_HEAD_NPZ, step_dirs

ONLINE_PROBE = "probe_params"


def save_probe_head(workdir: str, head: Mapping[str, Any], record: Mapping[str, Any]) -> None:
  """Writes ``head`` (LinearHead params) and its JSON ``record`` into ``workdir``, from process
  0 only."""
  if jax.process_index() != 0:
    return
  linear = jax.device_get(head)["linear"]
  buffer = io.BytesIO()
  np.savez(buffer, kernel=np.asarray(linear["kernel"]), bias=np.asarray(linear["bias"]))
  path = epath.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  (path / PROBE_HEAD_NPZ).write_bytes(buffer.getvalue())
  (path / PROBE_HEAD_JSON).write_text(json.dumps(dict(record), indent=2))


def _online_probe(path: epath.Path) -> dict[str, Any] | None:
  """The online probe of the newest checkpoint under ``path``, or None if it has none."""
  pick = lambda tree: {ONLINE_PROBE: {"linear": {k: tree[ONLINE_PROBE]["linear"][k]
                                                 for k in ("kernel", "bias")}}}
  try:
    return read_state_part(step_dirs(path)[0], pick)[ONLINE_PROBE]
  except (FileNotFoundError, KeyError, TypeError):
    return None


def load_probe_head(path: str | epath.PathLike, *, linear_probe_only: bool = False
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
  """``(LinearHead params, record)`` from ``path``.

  Args:
    path: the workdir of a finished linear probe (``probe_head.npz`` + ``probe_head.json``), a
      ``.npz`` with ``kernel`` and ``bias`` (its record: the ``.json`` of the same name, if
      any), or, unless ``linear_probe_only``, a pretraining workdir / checkpoint whose state
      holds the online probe (record ``{}``).
    linear_probe_only: require a linear probe's head and record.

  Raises:
    FileNotFoundError: no such head (the probe has not finished); the message says how to
      make one.
  """
  path = epath.Path(path)
  npz = path if path.suffix == ".npz" else path / PROBE_HEAD_NPZ
  record_path = npz.with_suffix(".json")
  if npz.is_file() and (record_path.exists() or not linear_probe_only):
    with npz.open("rb") as f:
      data = np.load(io.BytesIO(f.read()))
      head = {"linear": {"kernel": data["kernel"], "bias": data["bias"]}}
    return head, json.loads(record_path.read_text()) if record_path.exists() else {}
  if not linear_probe_only and path.is_dir():
    head = _online_probe(path)
    if head is not None:
      return head, {}
  raise FileNotFoundError(
      f"No linear probe head in {path} (expected {PROBE_HEAD_NPZ} and {PROBE_HEAD_JSON}, "
      "written when a linear_probe job finishes"
      f"{'' if linear_probe_only else ', or a pretraining checkpoint with an online probe'}). "
      "Fix: run `python -m relic.main --config=configs/linear_probe.py "
      f"--config.pretrained=ENCODER --workdir={path}` to the end, or pass the workdir of a "
      "finished probe.")
