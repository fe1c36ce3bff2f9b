"""Exports a pretrained encoder (and optionally its linear head) as a torchvision state dict.

  python -m relic.interop.export_torch --pretrained=WORKDIR_OR_CHECKPOINT_OR_PKL --out=r50.pth \
      [--probe=WORKDIR_OR_NPZ] [--arch=resnet50] [--check_size=64] [--format=pth|safetensors] \
      [--projector]

Writes ``r50.pth`` (``torch.save`` of a torchvision-named state dict; ``fc.*`` only with a
probe) and ``r50.json`` (the :func:`relic.interop.torch_resnet` arguments that take it, the
feature size, the input convention and the export check). ``--out=r50.safetensors`` (or
``--format=safetensors``) writes the same state dict as a safetensors file instead, whose
metadata also holds the ``torch_resnet`` arguments (key ``relic``, JSON). Then, in PyTorch::

  model = relic.interop.torch_resnet(**json.load(open('r50.json'))['torch_resnet'])
  model.load_state_dict(torch.load('r50.pth'))          # strict
  model.load_state_dict(safetensors.torch.load_file('r50.safetensors'))  # or this

A relic-trained ResNet-50 1x also loads as it is into ``timm.create_model('resnet50',
num_classes=0)``, whose parameter names are torchvision's.

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

from relic import errors
from relic.checkpoints.probe_head import load_probe_head
from relic.interop.architecture import spec_from_variables
from relic.interop.load import load_encoder
from relic.interop.torchvision_names import head_from_params, to_torchvision_state_dict
from relic.models.resnet import IMAGENET_MEAN, IMAGENET_STD

TOLERANCE = 1e-3
TORCH_INSTALL = ('pip install torch torchvision (CPU wheels suffice), or pip install -e ".[test]" '
                 "in a relic checkout")
FORMATS = ("pth", "safetensors")


def output_format(out: str, file_format: str | None = None) -> str:
  """``file_format`` if given, else from ``out``'s suffix: '.safetensors' or 'pth' otherwise."""
  if file_format is None or file_format == "":
    return "safetensors" if str(out).endswith(".safetensors") else "pth"
  if file_format not in FORMATS:
    raise ValueError(f"format must be one of {FORMATS}, got {file_format!r}.")
  return file_format


def _safetensors_torch():
  return errors.require_module("safetensors.torch", "Writing or reading .safetensors files",
                               'pip install safetensors, or pip install -e ".[test]" in a relic '
                               "checkout")


def save_state_dict(state: dict[str, Any], out: str, file_format: str,
                    metadata: dict[str, str] | None = None) -> None:
  """Writes a NumPy state dict as torch tensors (``torch.save``) or as safetensors."""
  import torch  # pylint: disable=import-outside-toplevel

  tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
  with epath.Path(out).open("wb") as f:
    if file_format == "safetensors":
      f.write(_safetensors_torch().save(tensors, metadata={"format": "pt", **(metadata or {})}))
    else:
      torch.save(tensors, f)


def load_state_dict_file(path: str, file_format: str | None = None) -> dict[str, Any]:
  """The torch state dict of a ``.pth`` or ``.safetensors`` file written by the export."""
  import torch  # pylint: disable=import-outside-toplevel

  with epath.Path(path).open("rb") as f:
    if output_format(path, file_format) == "safetensors":
      return _safetensors_torch().load(f.read())
    return torch.load(f)


def sidecar_path(out: str) -> epath.Path:
  path = epath.Path(out)
  return path.with_suffix(".json") if path.suffix else epath.Path(f"{out}.json")


def _check(model, variables, head, torch_kwargs: dict[str, Any], out: str, size: int,
           file_format: str) -> float:
  """Max |relic - torch| on 2 random images of ``size`` px, torch loading the written files."""
  from relic.interop.torch_models import run_nhwc, torch_resnet

  images = np.asarray(jax.random.uniform(jax.random.key(0), (2, size, size, 3)))
  ours = np.asarray(model.clone(dtype="float32").apply(variables, images, train=False))
  if head is not None:
    kernel, bias = head_from_params(head)
    ours = ours @ kernel + bias
  net = torch_resnet(**torch_kwargs)
  net.load_state_dict(load_state_dict_file(out, file_format), strict=True)
  return float(np.max(np.abs(ours - run_nhwc(net.eval(), images))))


def export_torch(pretrained: str, out: str, probe: str | None = None, arch: str | None = None,
                 check_size: int = 64, file_format: str | None = None,
                 projector: bool = False) -> dict[str, Any]:
  """Writes ``out`` (state dict) and its JSON sidecar; returns the sidecar's content.

  ``file_format``: 'pth' (``torch.save``) or 'safetensors'; None chooses by ``out``'s suffix.
  ``projector``: also write the checkpoint's projector MLP as ``OUT_STEM.projector.EXT`` (for
  :func:`relic.interop.torch_projector`, with or without its last bias as the weights say;
  see relic/interop/projector.py); the sidecar's 'projector' entry holds its arguments.
  """
  errors.require_module("torch", "The PyTorch export", TORCH_INSTALL)  # imported before TF
  if check_size:
    errors.require_module("torchvision", "The export's check in PyTorch", TORCH_INSTALL)

  file_format = output_format(out, file_format)
  if file_format == "safetensors":
    _safetensors_torch()  # before the slow part
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
      "format": file_format,
  }
  out_path = epath.Path(out)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  described = {k: meta[k] for k in ("torch_resnet", "architecture", "feature_dim", "input")}
  save_state_dict(state, out, file_format, {"relic": json.dumps(described, sort_keys=True)})
  if check_size:
    error = _check(model, variables, head, torch_kwargs, out, check_size, file_format)
    meta["check"] = {"image_size": check_size, "max_abs_diff": error}
    if error > TOLERANCE:
      raise RuntimeError(f"Exported model disagrees with relic by {error:.2e} (> {TOLERANCE}) on "
                         f"{check_size}px images; {out} is not trustworthy.")
  if projector:
    from relic.interop.projector import export_projector  # pylint: disable=import-outside-toplevel
    meta["projector"] = export_projector(pretrained, out, file_format, check=bool(check_size))
  sidecar_path(out).write_text(json.dumps(meta, indent=2, sort_keys=True))
  logging.info("Exported %s to %s (%s).", spec.describe(), out, meta.get("check"))
  return meta


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  values = flags.FLAGS
  with errors.exit_on_user_error():  # e.g. torch not installed: one message, exit code 2
    meta = export_torch(values.pretrained, values.out, values.probe or None,
                        values.arch or None, values.check_size, values.format or None,
                        projector=values.projector)
  print(json.dumps(meta, indent=2, sort_keys=True))


if __name__ == "__main__":
  flags.DEFINE_string("pretrained", None, "relic workdir/checkpoint or DeepMind .pkl.")
  flags.DEFINE_string("out", None, "Output .pth or .safetensors file; its .json sidecar is "
                      "written next to it.")
  flags.DEFINE_string("probe", None, "Optional linear head: a linear probe's workdir, a .npz, "
                      "or a pretraining workdir/checkpoint (its online probe).")
  flags.DEFINE_string("arch", None, "Architecture check/choice, e.g. resnet50x2 (pickles).")
  flags.DEFINE_integer("check_size", 64, "Image size of the relic-vs-torch check; 0 skips it.")
  flags.DEFINE_enum("format", None, list(FORMATS), "File format; default: by --out's suffix "
                    "(.safetensors, else pth).")
  flags.DEFINE_boolean("projector", False, "Also export the projector MLP (next to --out as "
                       "OUT_STEM.projector.EXT).")
  flags.mark_flags_as_required(["pretrained", "out"])
  app.run(main)
