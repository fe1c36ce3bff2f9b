"""DeepMind's released BYOL / ReLICv2 checkpoints -> relic ResNet variables.

The released files (``pretrain_res50x1.pkl`` ..., ReLICv2's ResNet-50 1x/2x/4x, 101, 152, 200,
200 2x) pickle ``dict(experiment_state=..., step=..., rng=...)``. The experiment state holds the
online network as Haiku dicts, ``online_params`` and ``online_state``: a namedtuple of numpy
arrays in BYOL's files (``checkpoint['experiment_state'].online_params``), a dict whose arrays
keep a leading per-device axis in ReLICv2's (its evaluation code indexes
``['experiment_state']['online_params']`` and takes element 0). Both are handled.

Haiku layout (BYOL's ``ResNetTorso`` with Haiku's v1 ``BlockV1``, the encoder module named
after its class, e.g. ``res_net50``; the v1.5 stride sits on the 3x3 ``conv_1``, as in relic)::

  res_net50/~/initial_conv                          {'w': HWIO}
  res_net50/~/initial_batchnorm                     {'scale', 'offset'}: (1, 1, 1, C)
  res_net50/~/block_group_0/~/block_0/~/conv_0      {'w'}  (conv_0..2, shortcut_conv)
  res_net50/~/block_group_0/~/block_0/~/batchnorm_0 (batchnorm_0..2, shortcut_batchnorm)
  state: <batchnorm>/~/mean_ema, <batchnorm>/~/var_ema {'hidden', 'average', 'counter'}

BatchNorm inference in Haiku reads the EMA's ``average`` (the zero-debiased ``hidden``), so that
is what becomes relic's ``batch_stats``. Heads in the same dicts are not part of the encoder:
the projector and predictor MLPs are read by relic/interop/projector.py, the classifier is
ignored. The encoders were trained with TF 'SAME' padding: the imported model
uses ``ResNet(padding='same')`` and reproduces their features exactly.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import numpy as np
from etils import epath

from relic.interop import pickle_reader, pickle_scan
from relic.interop.architecture import EncoderSpec, parse_arch, spec_from_variables
from relic.interop.shapes import check_variables
from relic.models.resnet import ResNet

SEP = "/~/"
PADDING = "same"
_BLOCK = re.compile(r"^block_group_(\d+)/~/block_(\d+)/~/(\w+)$")
_LAYER = {"batchnorm_0": "bn_0", "batchnorm_1": "bn_1", "batchnorm_2": "bn_2",
          "shortcut_batchnorm": "shortcut_bn"}
_IGNORED_ENCODER_MODULES = ("logits",)  # BYOL's encoder declares a classifier it never uses
# References the search for the online network may follow. A ResNet-200 2x experiment state
# (online and target networks, their BatchNorm state, the optimiser's momentum) holds a few
# thousand arrays in about ten thousand dicts and tuples, and the search stops at the online
# network, which comes first; a million takes about a second to walk.
MAX_TREE_REFERENCES = 1_000_000
# The online network's arrays may take as many bytes as the file (each array's data is in the
# file once) plus this: Python numbers among them take more memory than their pickled bytes.
ARRAY_BYTES_SLACK = 1 << 20


def _is_params(tree: Any) -> bool:
  return isinstance(tree, Mapping) and any(
      isinstance(k, str) and (k == "initial_conv" or k.endswith(SEP + "initial_conv"))
      and isinstance(v, Mapping) and "w" in v for k, v in tree.items())


def _is_state(tree: Any) -> bool:
  return isinstance(tree, Mapping) and any(
      isinstance(k, str) and k.endswith("initial_batchnorm" + SEP + "mean_ema")
      for k in tree)


def _children(node: Any) -> list[Any]:
  if isinstance(node, Mapping):
    return list(node.values())
  if isinstance(node, (list, tuple)):
    return list(node)
  if isinstance(node, pickle_reader.Opaque):
    return node.children()
  return []


def _find(tree: Any, field: str, predicate: Callable[[Any], bool], path: str) -> Any:
  """The experiment state's ``field``, by name where the pickle kept names, else by shape.

  Without names (BYOL's namedtuple read without BYOL installed) the first match in pickling
  order is taken: the online network comes before the target in both experiment states.
  The search visits each object once however often it is referenced (a pickle can share one
  object at every level, 2**64 paths in a few hundred bytes), refuses cycles (an experiment
  state is a tree) and follows at most :data:`MAX_TREE_REFERENCES` references,
  ``pickle_scan.MAX_NESTING`` deep.
  """
  state = tree.get("experiment_state", tree) if isinstance(tree, Mapping) else tree
  named = state.get(field) if isinstance(state, Mapping) else getattr(state, field, None)
  if predicate(named):
    return named
  seen: set[int] = set()  # ids stay unique: every object is alive in ``tree``
  path_ids: set[int] = set()  # the objects from ``tree`` down to the current one
  references = 0
  stack: list[tuple[Any, bool]] = [(tree, False)]  # (object, leaving it)
  while stack:
    node, leaving = stack.pop()
    if leaving:
      path_ids.discard(id(node))
      continue
    if id(node) in path_ids:
      raise pickle_reader.UnsafePickleError(
          f"{path}: the pickled objects form a cycle (a {type(node).__name__} inside itself). "
          f"DeepMind's experiment states are trees of dicts, tuples and arrays; a cycle is "
          f"made to hang a reader that follows references.")
    if id(node) in seen:
      continue
    seen.add(id(node))
    if predicate(node):
      return node
    children = _children(node)
    if not children:
      continue
    references += len(children)
    if references > MAX_TREE_REFERENCES:
      raise pickle_reader.UnsafePickleError(
          f"{path}: more than {MAX_TREE_REFERENCES:,} references followed without finding "
          f"'{field}'; DeepMind's largest checkpoints hold a few thousand arrays in about ten "
          f"thousand containers.")
    if len(path_ids) >= pickle_scan.MAX_NESTING:
      raise pickle_reader.UnsafePickleError(
          f"{path}: objects nested more than {pickle_scan.MAX_NESTING} levels deep; DeepMind "
          f"checkpoints nest at most about twenty.")
    path_ids.add(id(node))
    stack.append((node, True))
    stack.extend((child, False) for child in reversed(children))  # in pickling order
  return None


def _check_arrays(trees: Mapping[str, Mapping[str, Any]], path: str, file_bytes: int) -> None:
  """Every value of the online network is a numeric array (or number), and all of them take no
  more bytes than the file holds: :func:`_as_numpy` copies each, so one array named under many
  keys would otherwise be copied as often."""
  limit, total = file_bytes + ARRAY_BYTES_SLACK, 0
  for field, tree in trees.items():
    for module, values in tree.items():
      if not isinstance(values, Mapping):
        continue
      for name, value in values.items():
        if not isinstance(value, (np.ndarray, np.generic, bool, int, float)):
          raise ValueError(f"{path}: {field}[{module!r:.100}][{name!r:.100}] is a "
                           f"{type(value).__name__}, not an array; DeepMind checkpoints keep "
                           f"numpy arrays there.")
        array = np.asarray(value)  # no copy of an array; numbers become 0-d arrays
        if array.dtype.kind not in "biuf" or array.dtype.fields is not None:
          raise ValueError(f"{path}: {field}[{module!r:.100}][{name!r:.100}] has dtype "
                           f"{array.dtype.str}; DeepMind's parameters are numeric.")
        total += array.nbytes
        if total > limit:
          raise pickle_reader.UnsafePickleError(
              f"{path}: the online network's arrays take more array bytes than the file holds "
              f"(over {limit:,}: its {file_bytes:,} bytes + {ARRAY_BYTES_SLACK:,}): an array "
              f"stored once is named many times and would be copied for each name (a pickle "
              f"bomb).")


def _as_numpy(tree: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
  """Plain dicts of numpy arrays; floating point as float32 (relic's parameter dtype)."""
  def convert(value):
    value = np.asarray(value)
    return value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value
  return {module: {name: convert(value) for name, value in values.items()}
          for module, values in tree.items() if isinstance(values, Mapping)}


def read_deepmind_pickle(path: str) -> tuple[dict[str, dict[str, np.ndarray]],
                                             dict[str, dict[str, np.ndarray]]]:
  """The online network's Haiku ``(params, state)`` from a BYOL / ReLICv2 checkpoint.

  Returns flat Haiku dicts (``{'res_net50/~/initial_conv': {'w': array}}``) of numpy arrays
  with any leading per-device axis removed.

  Raises:
    ValueError: the file is not such a checkpoint, or (``pickle_reader.UnsafePickleError``) it
      asks the reader for something it refuses: a name outside its allow-list, or more
      objects, nesting or bytes than the file size allows (relic/interop/pickle_reader.py).
  """
  with epath.Path(path).open("rb") as f:
    file_bytes = pickle_scan.stream_size(f)
    tree = pickle_reader.load(f, source=str(path))
  params = _find(tree, "online_params", _is_params, path)
  state = _find(tree, "online_state", _is_state, path)
  if params is None or state is None:
    raise ValueError(f"{path}: no Haiku ResNet found (expected 'online_params' with an "
                     f"'.../initial_conv' module and 'online_state' with BatchNorm EMAs, as in "
                     f"DeepMind's BYOL/ReLICv2 checkpoints).")
  _check_arrays({"online_params": params, "online_state": state}, path, file_bytes)
  params, state = _as_numpy(params), _as_numpy(state)
  stem = next(v["w"] for k, v in params.items() if _is_params({k: v}))
  if stem.ndim == 5:  # ReLICv2 files keep the per-device copies: take device 0, like its eval
    params = {m: {n: v[0] for n, v in d.items()} for m, d in params.items()}
    state = {m: {n: v[0] for n, v in d.items()} for m, d in state.items()}
  elif stem.ndim != 4:
    raise ValueError(f"{path}: the stem convolution has shape {stem.shape}; expected HWIO.")
  return params, state


def _encoder_prefix(params: Mapping[str, Any]) -> str:
  prefixes = sorted(k[:-len("initial_conv")] for k in params
                    if k == "initial_conv" or k.endswith(SEP + "initial_conv"))
  if len(prefixes) != 1:
    raise ValueError(f"Expected one Haiku ResNet in the parameters, found {len(prefixes)}: "
                     f"{[p + 'initial_conv' for p in prefixes]}.")
  return prefixes[0]


def _relic_layer(module: str) -> tuple[str, str] | None:
  """Haiku module (without the encoder prefix) -> (relic module, relic layer)."""
  if module == "initial_conv":
    return "conv_init", ""
  if module == "initial_batchnorm":
    return "bn_init", ""
  match = _BLOCK.match(module)
  if match:
    group, block, layer = match.groups()
    return f"block_group_{group}_block_{block}", _LAYER.get(layer, layer)
  return None


def haiku_to_relic(params: Mapping[str, Mapping[str, Any]], state: Mapping[str, Mapping[str, Any]],
                   arch: str | None = None) -> tuple[EncoderSpec, dict[str, Any]]:
  """Maps Haiku ResNet ``(params, state)`` onto relic's names and checks every shape.

  Args:
    params, state: flat Haiku dicts as in :func:`read_deepmind_pickle`.
    arch: 'resnet50', 'resnet200x2', ...; None infers it from the shapes.

  Returns:
    The encoder's spec and ``{'params': ..., 'batch_stats': ...}`` for
    ``spec.model(padding='same')``.

  Raises:
    ValueError: naming expected and found shapes when the checkpoint is not ``arch``.
  """
  prefix = _encoder_prefix(params)
  relic_params: dict[str, dict[str, Any]] = {}
  stats: dict[str, dict[str, Any]] = {}
  sources: dict[str, str] = {}

  def put(tree, kind, module, layer, name, value, source):
    target = tree.setdefault(module, {})
    if layer:
      target = target.setdefault(layer, {})
    target[name] = value
    sources["/".join(p for p in (kind, module, layer, name) if p)] = source

  for key, values in params.items():
    if not key.startswith(prefix):
      continue  # projector, predictor, classifier
    module = key[len(prefix):]
    if module in _IGNORED_ENCODER_MODULES:
      continue
    where = _relic_layer(module)
    for name, value in values.items():
      if where is None:  # not part of a relic ResNet: reported by the shape check
        put(relic_params, "params", key, "", name, value, f"{key}/{name}")
      elif name == "w":
        put(relic_params, "params", *where, "kernel", value, f"{key}/w")
      elif name in ("scale", "offset"):
        put(relic_params, "params", *where, "scale" if name == "scale" else "bias",
            value.reshape(-1), f"{key}/{name}")
      else:
        put(relic_params, "params", *where, name, value, f"{key}/{name}")
  for key, values in state.items():
    if not key.startswith(prefix) or not key.endswith(("mean_ema", "var_ema")):
      continue
    module, ema = key[len(prefix):].rsplit(SEP, 1)
    where = _relic_layer(module)
    if where is None:
      continue
    # 'average' is what Haiku's BatchNorm uses at inference; 'hidden' equals it after training.
    value = values["average"] if "average" in values else values["hidden"]
    put(stats, "batch_stats", *where, "mean" if ema == "mean_ema" else "var", value.reshape(-1),
        f"{key}/average")

  variables = {"params": relic_params, "batch_stats": stats}
  try:
    found = spec_from_variables(variables)
  except (KeyError, ValueError, IndexError):
    found = None
  spec = parse_arch(arch) if arch else found
  if spec is None:
    raise ValueError(f"Could not read the architecture of the Haiku ResNet '{prefix}...'; "
                     f"pass arch (e.g. 'resnet50').")
  hint = ""
  if found is not None and not found.same_shapes(spec):
    hint = (f"The checkpoint looks like {found.describe()} (Haiku module "
            f"'{prefix.rstrip('/~')}'); pass that arch or none to infer it.")
  check_variables(spec.model(padding=PADDING), variables, model_name=spec.describe(),
                  what=f"The Haiku checkpoint '{prefix.rstrip('/~')}'", source_names=sources,
                  hint=hint)
  return spec, variables


def load_deepmind_encoder(path: str, arch: str | None = None) -> tuple[ResNet, dict[str, Any]]:
  """(model, variables) of the online encoder in a DeepMind BYOL / ReLICv2 pickle."""
  params, state = read_deepmind_pickle(path)
  spec, variables = haiku_to_relic(params, state, arch)
  return spec.model(padding=PADDING), variables
