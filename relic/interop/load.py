"""One loader for every pretrained encoder a user may hold: relic runs and DeepMind pickles."""

from __future__ import annotations

from typing import Any, Mapping

from etils import epath

from relic.interop.architecture import parse_arch, spec_from_variables
from relic.interop.deepmind import load_deepmind_encoder
from relic.interop.shapes import check_variables
from relic.models.pretrain import encoder_from_config
from relic.models.resnet import ResNet

_PICKLE_PROTOCOL_2_PLUS = b"\x80"


def model_from_config(model_config: Mapping[str, Any]) -> ResNet:
  """The encoder described by ``config.model`` (a ConfigDict or the dict in config.json)."""
  return encoder_from_config(model_config)


def is_deepmind_pickle(path: str) -> bool:
  """A file starting with a pickle header (relic checkpoints are directories)."""
  path = epath.Path(path)
  if not path.is_file():
    return False
  with path.open("rb") as f:
    return f.read(1) == _PICKLE_PROTOCOL_2_PLUS


def load_encoder(path: str, arch: str | None = None) -> tuple[ResNet, dict[str, Any]]:
  """Pretrained encoder from a relic workdir / checkpoint or a DeepMind BYOL/ReLICv2 pickle.

  ``model.apply(variables, images, train=False)`` gives the pooled features of NHWC images in
  [0, 1]; the ImageNet mean/std normalisation (BYOL's too) happens inside the model.

  Args:
    path: a relic workdir, a checkpoint directory in it, or a DeepMind ``.pkl`` file.
    arch: optional check (relic runs) or choice (pickles) of the architecture, e.g.
      'resnet50', 'resnet200x2'; None reads it from the config or the parameter shapes.

  Raises:
    ValueError: the checkpoint does not fit ``arch`` or its own config; the message names the
      expected and found shapes.
  """
  if is_deepmind_pickle(path):
    return load_deepmind_encoder(path, arch)
  if epath.Path(path).is_file():
    raise ValueError(f"{path} is neither a relic workdir/checkpoint directory nor a DeepMind "
                     f"pickle.")
  from relic.checkpoints.encoder import restore_encoder  # pylint: disable=import-outside-toplevel
  model_config, variables = restore_encoder(str(path))
  model = model_from_config(model_config)
  if arch is not None:
    expected = parse_arch(arch)
    found = spec_from_variables(variables)
    if not expected.same_shapes(found):
      raise ValueError(f"{path} holds a {found.describe()} encoder (config.model: depth "
                       f"{model.depth}, width_multiplier {model.width_multiplier}), not "
                       f"{expected.describe()} as requested by arch={arch!r}.")
  check_variables(model, variables, what=f"The checkpoint in {path}",
                  hint="The workdir's config.json and its checkpoint disagree.")
  return model, variables
