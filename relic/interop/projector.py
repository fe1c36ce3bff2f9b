"""The projector ("comparison net") in and out: DeepMind's Haiku MLP <-> relic's MLP <-> torch.

DeepMind's projector is BYOL's ``networks.MLP`` (byol/utils/networks.py, copied unchanged into
ReLICv2's released utils/networks.py): ``hk.Linear(hidden, with_bias=True)`` ->
``hk.BatchNorm`` -> ReLU -> ``hk.Linear(output, with_bias=False)``, a module named 'projector'
(the predictor is the same MLP named 'predictor'). Its Linear and BatchNorm modules are created
inside ``__call__``, so Haiku names them ``projector/linear``, ``projector/batch_norm`` and
``projector/linear_1`` (``projector/~/...`` is accepted too), the BatchNorm EMAs
``projector/batch_norm/~/mean_ema`` / ``var_ema``.

relic's :class:`relic.models.MLP` names the same layers ``linear_0``, ``bn_0``, ``linear_1``;
``model.projector_last_bias`` says whether ``linear_1`` has a bias. Every reader here takes the
layout from the weights (the sizes from the kernels, the last bias from its presence), never
from a flag, so checkpoints with and without the bias both load.

torch: ``nn.Sequential(Linear(D, H), BatchNorm1d(H), ReLU(), Linear(H, O, bias=last_bias))``
(:func:`relic.interop.torch_models.torch_projector`), state-dict keys ``0.*``, ``1.*``, ``3.*``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
from absl import logging
from etils import epath

_HAIKU_LAYERS = (("linear_0", "linear"), ("bn_0", "batch_norm"), ("linear_1", "linear_1"))
_SEPARATORS = ("/", "/~/")


@dataclasses.dataclass(frozen=True)
class ProjectorSpec:
  """What fixes the shapes of a projector (or predictor) MLP."""
  input_dim: int
  hidden_dim: int
  output_dim: int
  last_bias: bool

  def model_config(self, prefix: str = "projector") -> dict[str, Any]:
    """The ``config.model`` fields of this MLP as the projector (or as the predictor)."""
    if prefix == "predictor":
      return {"predictor": True, "predictor_hidden_dim": self.hidden_dim}
    return {"projector_hidden_dim": self.hidden_dim, "projector_output_dim": self.output_dim,
            "projector_last_bias": self.last_bias}

  def torch_kwargs(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def spec_from_mlp_variables(variables: Mapping[str, Any]) -> ProjectorSpec:
  """The layout of relic MLP variables (``{'params': ...}`` or the params themselves)."""
  params = variables.get("params", variables)
  first, last = np.shape(params["linear_0"]["kernel"]), np.shape(params["linear_1"]["kernel"])
  if len(first) != 2 or len(last) != 2 or first[1] != last[0]:
    raise ValueError(f"Not an MLP: linear_0 kernel {first}, linear_1 kernel {last}.")
  return ProjectorSpec(input_dim=int(first[0]), hidden_dim=int(first[1]),
                       output_dim=int(last[1]), last_bias="bias" in params["linear_1"])


def _haiku_module(tree: Mapping[str, Any], name: str, layer: str) -> tuple[str, Any] | None:
  for separator in _SEPARATORS:
    key = f"{name}{separator}{layer}"
    if key in tree:
      return key, tree[key]
  return None


def haiku_mlp_to_relic(params: Mapping[str, Mapping[str, Any]],
                       state: Mapping[str, Mapping[str, Any]], name: str = "projector"
                       ) -> tuple[ProjectorSpec, dict[str, Any]] | None:
  """DeepMind's Haiku MLP ``name`` -> (spec, relic MLP ``{'params', 'batch_stats'}``).

  Returns None when the checkpoint has no complete MLP of that name (a warning names what is
  missing when part of one is there). Raises ValueError on inconsistent shapes.
  """
  found = {relic: _haiku_module(params, name, haiku) for relic, haiku in _HAIKU_LAYERS}
  present = [relic for relic, hit in found.items() if hit is not None]
  stats_key = found["bn_0"][0] if found["bn_0"] else None
  means = state.get(f"{stats_key}/~/mean_ema") if stats_key else None
  variances = state.get(f"{stats_key}/~/var_ema") if stats_key else None
  missing = [relic for relic in ("linear_0", "bn_0", "linear_1") if relic not in present]
  if not missing:
    linear_0, bn_0, linear_1 = (found[k][1] for k in ("linear_0", "bn_0", "linear_1"))
    for what, module, keys in (("linear", linear_0, ("w", "b")), ("batch_norm", bn_0,
                                                                 ("scale", "offset")),
                               ("linear_1", linear_1, ("w",))):
      missing += [f"{name}/{what}/{k}" for k in keys if k not in module]
    if means is None or variances is None:
      missing.append(f"{stats_key}/~/mean_ema and var_ema (BatchNorm statistics)")
  if missing:
    if present:
      logging.warning("The checkpoint's '%s' is incomplete (missing %s); it is not imported.",
                      name, ", ".join(missing))
    return None
  average = lambda ema: np.asarray(ema["average"] if "average" in ema else ema["hidden"],
                                   np.float32).reshape(-1)
  vector = lambda x: np.asarray(x, np.float32).reshape(-1)
  mlp = {"linear_0": {"kernel": np.asarray(linear_0["w"], np.float32),
                      "bias": vector(linear_0["b"])},
         "bn_0": {"scale": vector(bn_0["scale"]), "bias": vector(bn_0["offset"])},
         "linear_1": {"kernel": np.asarray(linear_1["w"], np.float32)}}
  if "b" in linear_1:
    mlp["linear_1"]["bias"] = vector(linear_1["b"])
  variables = {"params": mlp,
               "batch_stats": {"bn_0": {"mean": average(means), "var": average(variances)}}}
  spec = spec_from_mlp_variables(variables)
  check_mlp_variables(spec, variables, what=f"The Haiku MLP '{name}'")
  return spec, variables


def check_mlp_variables(spec: ProjectorSpec, variables: Mapping[str, Any], what: str) -> None:
  """ValueError naming every array whose shape does not fit ``spec``."""
  expected = {("params", "linear_0", "kernel"): (spec.input_dim, spec.hidden_dim),
              ("params", "linear_0", "bias"): (spec.hidden_dim,),
              ("params", "bn_0", "scale"): (spec.hidden_dim,),
              ("params", "bn_0", "bias"): (spec.hidden_dim,),
              ("params", "linear_1", "kernel"): (spec.hidden_dim, spec.output_dim),
              ("batch_stats", "bn_0", "mean"): (spec.hidden_dim,),
              ("batch_stats", "bn_0", "var"): (spec.hidden_dim,)}
  if spec.last_bias:
    expected[("params", "linear_1", "bias")] = (spec.output_dim,)
  problems = []
  for (group, layer, name), shape in expected.items():
    value = variables.get(group, {}).get(layer, {}).get(name)
    if value is None:
      problems.append(f"{group}/{layer}/{name}: missing, expected {shape}")
    elif tuple(np.shape(value)) != shape:
      problems.append(f"{group}/{layer}/{name}: expected {shape}, found {tuple(np.shape(value))}")
  if problems:
    raise ValueError(f"{what} does not fit an MLP {spec.input_dim} -> {spec.hidden_dim} -> "
                     f"{spec.output_dim}:\n  " + "\n  ".join(problems))


def relic_mlp_module(spec: ProjectorSpec, dtype: str = "float32"):
  """The relic MLP that takes variables of this layout."""
  from relic.models.heads import MLP  # pylint: disable=import-outside-toplevel
  return MLP(spec.hidden_dim, spec.output_dim, dtype=dtype, last_bias=spec.last_bias)


def to_torch_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """relic MLP variables -> the state dict of :func:`relic.interop.torch_projector` (numpy)."""
  params, stats = variables["params"], variables["batch_stats"]
  vector = lambda x: np.asarray(x, np.float32).reshape(-1)
  linear = lambda kernel: np.ascontiguousarray(np.asarray(kernel, np.float32).T)
  state = {"0.weight": linear(params["linear_0"]["kernel"]),
           "0.bias": vector(params["linear_0"]["bias"]),
           "1.weight": vector(params["bn_0"]["scale"]), "1.bias": vector(params["bn_0"]["bias"]),
           "1.running_mean": vector(stats["bn_0"]["mean"]),
           "1.running_var": vector(stats["bn_0"]["var"]),
           "1.num_batches_tracked": np.zeros((), np.int64),
           "3.weight": linear(params["linear_1"]["kernel"])}
  if "bias" in params["linear_1"]:
    state["3.bias"] = vector(params["linear_1"]["bias"])
  return state


def _relic_projector(path: str) -> tuple[ProjectorSpec, dict[str, Any]] | None:
  from relic.checkpoints import read_state_part, step_dirs  # pylint: disable=import-outside-toplevel
  for step_dir in step_dirs(path):
    try:
      part = read_state_part(step_dir, lambda tree: {
          group: {"projector": tree[group]["projector"]}
          for group in ("online_params", "online_batch_stats")})
    except KeyError:
      return None  # an encoder-only checkpoint
    variables = {"params": part["online_params"]["projector"],
                 "batch_stats": part["online_batch_stats"]["projector"]}
    return spec_from_mlp_variables(variables), variables
  return None


def load_projector(path: str) -> tuple[ProjectorSpec, dict[str, Any]] | None:
  """The online projector of a relic workdir / checkpoint or of a DeepMind pickle, its layout
  read from the weights; None when the checkpoint holds none."""
  from relic.interop.deepmind import read_deepmind_pickle  # pylint: disable=import-outside-toplevel
  from relic.interop.load import is_deepmind_pickle  # pylint: disable=import-outside-toplevel
  if is_deepmind_pickle(path):
    return haiku_mlp_to_relic(*read_deepmind_pickle(path))
  return _relic_projector(path)


def projector_path(out: str) -> epath.Path:
  """``r50.pth`` -> ``r50.projector.pth`` (``.safetensors`` likewise)."""
  path = epath.Path(out)
  return path.with_name(f"{path.stem}.projector{path.suffix}") if path.suffix else epath.Path(
      f"{out}.projector")


def export_projector(pretrained: str, out: str, file_format: str, check: bool = True,
                     tolerance: float = 1e-3) -> dict[str, Any]:
  """Writes the projector of ``pretrained`` next to the encoder export ``out``; returns its
  sidecar entry (file, :func:`torch_projector` arguments, check)."""
  from relic.interop.export_torch import load_state_dict_file, save_state_dict  # pylint: disable=import-outside-toplevel
  found = load_projector(pretrained)
  if found is None:
    raise ValueError(f"{pretrained} holds no projector (no complete 'projector' MLP); export "
                     f"the encoder alone (without --projector).")
  spec, variables = found
  target = projector_path(out)
  save_state_dict(to_torch_state_dict(variables), str(target), file_format)
  entry: dict[str, Any] = {"file": target.name, "torch_projector": spec.torch_kwargs()}
  if check:
    import jax  # pylint: disable=import-outside-toplevel
    from relic.interop.torch_models import torch_projector  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
    features = np.array(jax.random.normal(jax.random.key(0), (4, spec.input_dim)), np.float32)
    ours = np.asarray(relic_mlp_module(spec).apply(variables, features, train=False))
    net = torch_projector(**spec.torch_kwargs())
    net.load_state_dict(load_state_dict_file(str(target), file_format), strict=True)
    with torch.no_grad():
      theirs = net.eval()(torch.from_numpy(features)).numpy()
    error = float(np.max(np.abs(ours - theirs)))
    entry["check"] = {"max_abs_diff": error}
    if error > tolerance:
      raise RuntimeError(f"Exported projector disagrees with relic by {error:.2e} "
                         f"(> {tolerance}); {target} is not trustworthy.")
  return entry


def deepmind_heads(params: Mapping[str, Mapping[str, Any]], state: Mapping[str, Mapping[str, Any]],
                   num_features: int) -> dict[str, tuple[ProjectorSpec, dict[str, Any]]]:
  """The complete 'projector' (and 'predictor') MLPs of a DeepMind checkpoint that fit a relic
  online network on an encoder of ``num_features`` features: ``{name: (spec, variables)}``.
  A head that does not fit is left out with a warning (the encoder is imported either way)."""
  heads: dict[str, tuple[ProjectorSpec, dict[str, Any]]] = {}
  projector = haiku_mlp_to_relic(params, state, "projector")
  if projector is not None and projector[0].input_dim != num_features:
    logging.warning("The checkpoint's projector takes %d features, the encoder gives %d; the "
                    "projector is not imported.", projector[0].input_dim, num_features)
    projector = None
  if projector is None:
    return heads
  heads["projector"] = projector
  predictor = haiku_mlp_to_relic(params, state, "predictor")
  if predictor is not None:
    out = projector[0].output_dim
    fits = (predictor[0].input_dim == out == predictor[0].output_dim
            and predictor[0].last_bias == projector[0].last_bias)
    if fits:
      heads["predictor"] = predictor
    else:
      logging.warning("The checkpoint's predictor (%s) does not fit relic's predictor on a "
                      "projector of %d outputs with last_bias=%s; it is not imported.",
                      predictor[0], out, projector[0].last_bias)
  return heads
