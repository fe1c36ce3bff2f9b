"""Interop: DeepMind's BYOL/ReLICv2 Haiku checkpoints in, PyTorch/torchvision out.

Import side (no torch): :func:`load_encoder` loads any pretrained encoder (relic run or DeepMind
pickle); ``python -m relic.interop.import_deepmind`` turns a pickle into a relic checkpoint.
Export side: :func:`to_torchvision_state_dict` (numpy) and ``python -m relic.interop.export_torch``;
the torch builders :func:`torch_resnet` and :func:`convert_to_same_padding` import torch only when
first used, so ``import relic`` never pulls torch in.
"""

from __future__ import annotations

import importlib
from typing import Any

from relic.interop.architecture import EncoderSpec, parse_arch, spec_from_variables
from relic.interop.deepmind import haiku_to_relic, load_deepmind_encoder, read_deepmind_pickle
from relic.interop.load import is_deepmind_pickle, load_encoder, model_from_config
from relic.interop.projector import ProjectorSpec, haiku_mlp_to_relic, load_projector
from relic.interop.shapes import check_variables
from relic.interop.torchvision_names import to_torchvision_state_dict

_TORCH_API = {
    "torch_resnet": "relic.interop.torch_models",
    "load_state_dict": "relic.interop.torch_models",
    "to_torch": "relic.interop.torch_models",
    "run_nhwc": "relic.interop.torch_models",
    "torch_projector": "relic.interop.torch_models",
    "convert_to_same_padding": "relic.interop.torch_same",
    "Conv2dSame": "relic.interop.torch_same",
    "MaxPool2dSame": "relic.interop.torch_same",
}

__all__ = ["EncoderSpec", "parse_arch", "spec_from_variables", "haiku_to_relic",
           "load_deepmind_encoder", "read_deepmind_pickle", "is_deepmind_pickle", "load_encoder",
           "model_from_config", "check_variables", "to_torchvision_state_dict", "ProjectorSpec",
           "haiku_mlp_to_relic", "load_projector", *_TORCH_API]


def __getattr__(name: str) -> Any:
  """Torch-backed names load torch on first access (PEP 562)."""
  if name in _TORCH_API:
    return getattr(importlib.import_module(_TORCH_API[name]), name)
  raise AttributeError(f"module 'relic.interop' has no attribute {name!r}")
