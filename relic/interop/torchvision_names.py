"""relic ResNet variables -> a torchvision ``ResNet`` state dict (numpy; torch not needed).

Names follow torchvision's ``ResNet``: ``conv1``/``bn1`` (stem), ``layer{1..4}.{block}``
with ``conv1..3``/``bn1..3`` (bottleneck) or ``conv1..2``/``bn1..2`` (basic) and
``downsample.0``/``downsample.1`` (projection shortcut), ``fc`` (classifier). torchvision adds a
downsample exactly where relic adds a shortcut (stride or channel change), so the keys match
one to one. Flax convolution kernels are HWIO, torch weights OIHW; Dense kernels are (in, out),
torch Linear weights (out, in).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from relic.interop.architecture import BLOCK_NAME, spec_from_variables

_BOTTLENECK = {"conv_0": "conv1", "bn_0": "bn1", "conv_1": "conv2", "bn_1": "bn2",
               "conv_2": "conv3", "bn_2": "bn3", "shortcut_conv": "downsample.0",
               "shortcut_bn": "downsample.1"}


def _conv(kernel: Any) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(kernel, np.float32).transpose(3, 2, 0, 1))


def _batchnorm(params: Mapping[str, Any], stats: Mapping[str, Any]) -> dict[str, np.ndarray]:
  vector = lambda x: np.asarray(x, np.float32).reshape(-1)
  return {"weight": vector(params["scale"]), "bias": vector(params["bias"]),
          "running_mean": vector(stats["mean"]), "running_var": vector(stats["var"]),
          # torch keeps a step count; eval-mode BatchNorm never reads it.
          "num_batches_tracked": np.zeros((), np.int64)}


def head_from_params(head_params: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  """(kernel, bias) of a relic ``LinearHead`` (``{'linear': {...}}``, optionally in 'params')."""
  head = head_params.get("params", head_params)
  head = head.get("linear", head)
  if "kernel" not in head or "bias" not in head:
    raise ValueError(f"Not LinearHead parameters: expected {{'linear': {{'kernel', 'bias'}}}}, "
                     f"found keys {sorted(head_params)}.")
  return np.asarray(head["kernel"], np.float32), np.asarray(head["bias"], np.float32)


def encoder_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
  """The encoder's ``{'params', 'batch_stats'}``, also from a whole network's variables."""
  params, stats = variables["params"], variables["batch_stats"]
  if "conv_init" not in params and "encoder" in params:
    params, stats = params["encoder"], stats["encoder"]
  return {"params": params, "batch_stats": stats}


def to_torchvision_state_dict(variables: Mapping[str, Any],
                              head_params: Mapping[str, Any] | None = None
                              ) -> dict[str, np.ndarray]:
  """torchvision-named state dict of a relic ResNet (and optionally its linear probe).

  Args:
    variables: ``{'params': ..., 'batch_stats': ...}`` of a relic ``ResNet`` (depth and width
      are read from the shapes; ResNet-18/34 basic blocks too). Variables of a whole network
      with the encoder under 'encoder' are accepted.
    head_params: a relic ``LinearHead``'s params, exported as ``fc``; None leaves ``fc`` out,
      so the trunk loads strictly into a model whose ``fc`` is ``torch.nn.Identity()``.

  Returns:
    name -> float32 (int64 for ``num_batches_tracked``) numpy array, in torch layouts.
  """
  variables = encoder_variables(variables)
  params, stats = variables["params"], variables["batch_stats"]
  spec = spec_from_variables(variables)
  if len(spec.blocks) != 4:
    raise ValueError(f"torchvision's ResNet has 4 stages; this encoder has {len(spec.blocks)}.")
  state = {"conv1.weight": _conv(params["conv_init"]["kernel"])}
  state.update({f"bn1.{k}": v for k, v in _batchnorm(params["bn_init"], stats["bn_init"]).items()})
  for module, layers in params.items():
    match = BLOCK_NAME.match(module)
    if not match:
      continue
    prefix = f"layer{int(match.group(1)) + 1}.{int(match.group(2))}"
    for layer, values in layers.items():
      name = f"{prefix}.{_BOTTLENECK[layer]}"
      if "kernel" in values:
        state[f"{name}.weight"] = _conv(values["kernel"])
      else:
        for key, value in _batchnorm(values, stats[module][layer]).items():
          state[f"{name}.{key}"] = value
  if head_params is not None:
    kernel, bias = head_from_params(head_params)
    features = params["bn_init"]["scale"].shape[-1] * 8 * (4 if spec.bottleneck else 1)
    if kernel.shape[0] != features:
      raise ValueError(f"The linear head expects {kernel.shape[0]} features; the encoder gives "
                       f"{features}.")
    state["fc.weight"] = np.ascontiguousarray(kernel.T)
    state["fc.bias"] = bias
  return state
