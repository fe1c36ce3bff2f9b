"""Checks variables against the shapes a model expects, with an error a user can act on.

Flax would accept a checkpoint of the wrong architecture until the first matmul fails deep
inside a block; checking every name and shape up front turns that into one message naming the
expected and found shapes (and, for imported checkpoints, the name in the source file).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

_MAX_LINES = 12


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x}."""
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten(value, path + "/"))
    else:
      flat[path] = value
  return flat


def _layer_order(path: str) -> tuple:
  """params before batch_stats, stem before blocks, block_2 before block_10: the model's order."""
  parts = path.split("/")
  stem = {"conv_init": 0, "bn_init": 1}.get(parts[1] if len(parts) > 1 else "", 2)
  natural = tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", path))
  return parts[0] != "params", stem, natural


def expected_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
  """'params/conv_init/kernel' -> shape, from abstract evaluation (nothing is allocated)."""
  tree = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                           train=False))
  return {path: tuple(leaf.shape) for path, leaf in flatten(tree).items()}


def _describe(model: nn.Module) -> str:
  depth, width = getattr(model, "depth", None), getattr(model, "width_multiplier", None)
  if depth is None:
    return type(model).__name__
  return f"ResNet-{depth} {width}x"


def check_variables(model: nn.Module, variables: Mapping[str, Any], *, model_name: str = "",
                    what: str = "The checkpoint", source_names: Mapping[str, str] | None = None,
                    hint: str = "") -> None:
  """Raises ValueError unless ``variables`` has exactly the names and shapes ``model`` uses.

  Args:
    model: the relic model the variables are meant for.
    variables: ``{'params': ..., 'batch_stats': ...}``.
    model_name: how to call the model in the message (e.g. 'ResNet-50 1x').
    what: how to call the variables' origin in the message.
    source_names: relic path -> the name the value had in the source file, quoted in the
      message so the user can find it there.
    hint: a last line for the message (e.g. the architecture the checkpoint looks like).
  """
  expected = expected_shapes(model)
  found = {path: tuple(getattr(value, "shape", ())) for path, value in flatten(variables).items()}
  source_names = source_names or {}

  def where(path):
    return f"  [{source_names[path]}]" if path in source_names else ""

  missing = sorted((p for p in expected if p not in found), key=_layer_order)
  unexpected = sorted((p for p in found if p not in expected), key=_layer_order)
  mismatched = sorted((p for p in expected if p in found and found[p] != expected[p]),
                      key=_layer_order)
  if not (missing or unexpected or mismatched):
    return
  model_name = model_name or _describe(model)
  lines = [f"{what} does not fit {model_name}: "
           f"{len(mismatched)} shape mismatches, {len(missing)} missing and {len(unexpected)} "
           f"unexpected entries."]
  lines += [f"  {p}: expected {expected[p]}, found {found[p]}{where(p)}"
            for p in mismatched[:_MAX_LINES]]
  lines += [f"  {p}: expected {expected[p]}, missing" for p in missing[:_MAX_LINES]]
  lines += [f"  {p}: unexpected, found {found[p]}{where(p)}" for p in unexpected[:_MAX_LINES]]
  if max(len(mismatched), len(missing), len(unexpected)) > _MAX_LINES:
    lines.append(f"  ... (at most {_MAX_LINES} lines of each kind shown)")
  if hint:
    lines.append(hint)
  raise ValueError("\n".join(lines))
