"""Exports a pretrained encoder (and optionally its linear head) as a torchvision state dict.

  python -m relic.interop.export_torch --pretrained=WORKDIR_OR_CHECKPOINT_OR_PKL --out=r50.pth \
      [--probe=WORKDIR_OR_NPZ] [--arch=resnet50] [--check_size=64]

Writes ``r50.pth`` (``torch.save`` of a torchvision-named state dict; ``fc.*`` only with a
probe) and ``r50.json`` (the :func:`relic.interop.torch_resnet` arguments that take it, the
feature size, the input convention and the export check). Then, in PyTorch::

  model = relic.interop.torch_resnet(**json.load(open('r50.json'))['torch_resnet'])
  model.load_state_dict(torch.load('r50.pth'))          # strict

For relic-trained 1x encoders that model *is* ``torchvision.models.resnet50()`` (with
``fc = nn.Identity()`` when no probe is exported). DeepMind-imported encoders come with
``padding='same'``. Before returning, the export runs both models on the same random images and
fails if their outputs differ by more than ``TOLERANCE``.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging
from etils import epath

from relic.checkpoints.probe_head import load_probe_head
from relic.interop.architecture import spec_from_variables
from relic.interop.load import load_encoder
from relic.interop.torchvision_names import head_from_params, to_torchvision_state_dict
from relic.models.resnet import IMAGENET_MEAN, IMAGENET_STD

TOLERANCE = 1e-3


def sidecar_path(out: str) -> epath.Path:
  path = epath.Path(out)
  return path.with_suffix(".json") if path.suffix else epath.Path(f"{out}.json")


def _check(model, variables, head, torch_kwargs: dict[str, Any], out: str, size: int) -> float:
  """Max |relic - torch| on 2 random images of ``size`` px, torch loading the written files."""
  import torch  # pylint: disable=import-outside-toplevel

  from relic.interop.torch_models import run_nhwc, torch_resnet

  images = np.asarray(jax.random.uniform(jax.random.key(0), (2, size, size, 3)))
  ours = np.asarray(model.clone(dtype="float32").apply(variables, images, train=False))
  if head is not None:
    kernel, bias = head_from_params(head)
    ours = ours @ kernel + bias
  net = torch_resnet(**torch_kwargs)
  with epath.Path(out).open("rb") as f:
    net.load_state_dict(torch.load(f), strict=True)
  return float(np.max(np.abs(ours - run_nhwc(net.eval(), images))))


def export_torch(pretrained: str, out: str, probe: str | None = None, arch: str | None = None,
                 check_size: int = 64) -> dict[str, Any]:
  """Writes ``out`` (state dict) and its JSON sidecar; returns the sidecar's content."""
  import torch  # pylint: disable=import-outside-toplevel

  model, variables = load_encoder(pretrained, arch)
  head = load_probe_head(probe)[0] if probe else None
  state = to_torchvision_state_dict(variables, head)
  spec = spec_from_variables(variables)
  num_classes = int(state["fc.bias"].shape[0]) if head is not None else 0
  torch_kwargs = dict(depth=spec.depth, width_multiplier=spec.width_multiplier,
                      stage_sizes=list(spec.stage_sizes) if spec.stage_sizes else None,
                      base_width=spec.base_width, small_images=spec.small_images,
                      num_classes=num_classes, padding=model.padding)
  meta: dict[str, Any] = {
      "torch_resnet": torch_kwargs,
      "architecture": spec.describe(),
      "feature_dim": int(model.num_features),
      "input": {"layout": "NCHW float32", "range": [0.0, 1.0], "normalize_mean": IMAGENET_MEAN,
                "normalize_std": IMAGENET_STD},
      "source": str(pretrained),
      "probe": str(probe) if probe else None,
  }
  out_path = epath.Path(out)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  with out_path.open("wb") as f:
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, f)
  if check_size:
    error = _check(model, variables, head, torch_kwargs, out, check_size)
    meta["check"] = {"image_size": check_size, "max_abs_diff": error}
    if error > TOLERANCE:
      raise RuntimeError(f"Exported model disagrees with relic by {error:.2e} (> {TOLERANCE}) on "
                         f"{check_size}px images; {out} is not trustworthy.")
  sidecar_path(out).write_text(json.dumps(meta, indent=2, sort_keys=True))
  logging.info("Exported %s to %s (%s).", spec.describe(), out, meta.get("check"))
  return meta


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  values = flags.FLAGS
  meta = export_torch(values.pretrained, values.out, values.probe or None, values.arch or None,
                      values.check_size)
  print(json.dumps(meta, indent=2, sort_keys=True))


if __name__ == "__main__":
  flags.DEFINE_string("pretrained", None, "relic workdir/checkpoint or DeepMind .pkl.")
  flags.DEFINE_string("out", None, "Output .pth file; its .json sidecar is written next to it.")
  flags.DEFINE_string("probe", None, "Optional linear head: a linear probe's workdir, a .npz, "
                      "or a pretraining workdir/checkpoint (its online probe).")
  flags.DEFINE_string("arch", None, "Architecture check/choice, e.g. resnet50x2 (pickles).")
  flags.DEFINE_integer("check_size", 64, "Image size of the relic-vs-torch check; 0 skips it.")
  flags.mark_flags_as_required(["pretrained", "out"])
  app.run(main)
