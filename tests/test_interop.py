"""DeepMind Haiku pickles -> relic (same features) -> PyTorch with 'SAME' padding (same again).

The DeepMind side is a Haiku ResNet built here the way BYOL/ReLICv2 build theirs
(byol/utils/networks.py ``ResNetTorso``: Haiku's v1 ``BlockGroup``, stride on the 3x3, 'SAME'
padding, module named after its class), with random weights and moved BatchNorm EMAs, pickled
the way their checkpointers do. relic-trained encoders -> torchvision: test_interop_torch.py.
"""

import collections
import json
import os
import pickle
import re
import subprocess
import sys
import types

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from relic.interop import (EncoderSpec, check_variables, haiku_to_relic, load_encoder,
                           parse_arch, read_deepmind_pickle, spec_from_variables)
from relic.interop.import_deepmind import import_deepmind
from relic.models import ResNet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BN_CONFIG = dict(decay_rate=0.9, eps=1e-5, create_scale=True, create_offset=True)
BYOL_MEAN, BYOL_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # byol/utils/dataset.py


# ----------------------------------------------------------------------------- Haiku side


class ResNetTorso(hk.Module):
  """BYOL's ResNetTorso (resnet_v2=False), with the stem width a parameter for tiny tests."""

  def __init__(self, blocks_per_group, bottleneck=True, channels_per_group=(256, 512, 1024, 2048),
               width_multiplier=1, stem=64, name=None):
    super().__init__(name=name)
    self.initial_conv = hk.Conv2D(stem * width_multiplier, 7, stride=2, with_bias=False,
                                  padding="SAME", name="initial_conv")
    self.initial_batchnorm = hk.BatchNorm(name="initial_batchnorm", **BN_CONFIG)
    self.block_groups = [
        hk.nets.ResNet.BlockGroup(channels=width_multiplier * channels, num_blocks=blocks,
                                  stride=stride, bn_config=BN_CONFIG, resnet_v2=False,
                                  bottleneck=bottleneck, use_projection=True,
                                  name=f"block_group_{i}")
        for i, (channels, blocks, stride) in enumerate(zip(channels_per_group, blocks_per_group,
                                                           (1, 2, 2, 2)))]

  def __call__(self, inputs, is_training):
    out = jax.nn.relu(self.initial_batchnorm(self.initial_conv(inputs), is_training))
    out = hk.max_pool(out, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")
    for group in self.block_groups:
      out = group(out, is_training, False)
    return jnp.mean(out, axis=(1, 2))


class ResNet50(ResNetTorso):  # Haiku names the module 'res_net50', like DeepMind's
  def __init__(self, width_multiplier=1):
    super().__init__((3, 4, 6, 3), width_multiplier=width_multiplier)


class TinyResNet(ResNetTorso):  # 'tiny_res_net': bottleneck blocks, stem of 4 channels
  def __init__(self):
    super().__init__((1, 1, 1, 1), channels_per_group=(16, 32, 64, 128), stem=4)



def _running_statistics(forward, params, state, images, steps: int):
  """BatchNorm running statistics after ``steps`` training-mode passes from zero (so inference
  mode sees real statistics)."""
  state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state)
  apply = jax.jit(forward.apply, static_argnums=3)
  for _ in range(steps):
    _, state = apply(params, state, images(), True)
  return jax.tree.map(np.asarray, state)

def byol_normalize(images):
  return (images - jnp.array(BYOL_MEAN)) / jnp.array(BYOL_STD)


def haiku_encoder(encoder_cls, size, seed=0, steps=3):
  """(forward, params, state): random weights, BN EMAs moved by training-mode forwards.

  Weights are drawn with numpy from the abstract init (a jitted Haiku init of a ResNet-50 is
  slow on CPU); BN affine parameters are random too (Haiku zero-initialises the last scale of
  each block), kept small on the residual branch as in trained networks.
  """
  forward = hk.without_apply_rng(hk.transform_with_state(
      lambda images, is_training: encoder_cls()(byol_normalize(images), is_training)))
  rng = np.random.default_rng(seed)
  images = lambda: rng.uniform(size=(4, size, size, 3)).astype(np.float32)
  shapes, state = jax.eval_shape(lambda: forward.init(jax.random.key(0), images(), True))

  def fill(path, leaf):
    module, name = path[0].key, path[-1].key
    if name == "w":
      fan_out = np.prod(leaf.shape[:-2]) * leaf.shape[-1]
      return rng.normal(0, np.sqrt(2 / fan_out), leaf.shape).astype(np.float32)
    if name == "scale":
      low = 0.1 if module.endswith(("batchnorm_1", "batchnorm_2")) else 0.5
      return rng.uniform(low, 3 * low, leaf.shape).astype(np.float32)
    return rng.normal(0, 0.1, leaf.shape).astype(np.float32)  # offset

  params = jax.tree_util.tree_map_with_path(fill, shapes)
  return forward, params, _running_statistics(forward, params, state, images, steps)


def relicv2_pickle(path, params, state, devices=2, target_params=True):
  """ReLICv2's layout: a dict experiment state whose arrays keep a per-device axis."""
  replicate = lambda tree: jax.tree.map(lambda x: np.stack([x] * devices), tree)
  experiment_state = dict(online_params=replicate(params), online_state=replicate(state),
                          target_state=replicate(state))
  if target_params:
    experiment_state["target_params"] = replicate(params)
  with open(path, "wb") as f:
    pickle.dump(dict(experiment_state=experiment_state, step=np.int64(1000),
                     rng=np.zeros(2, np.uint32)), f, protocol=2)


class _OldHaikuMapping(dict):
  """Pickles like the FlatMapping of the Haiku versions BYOL's checkpoints were written with."""

  def __reduce__(self):
    from haiku._src import data_structures
    return data_structures.FlatMapping, (dict(self),)


class _Evil:
  def __reduce__(self):
    return os.system, ("touch /tmp/relic_interop_pwned",)


def byol_pickle(path, params, state):
  """BYOL's layout: a namedtuple of a module (byol.byol_experiment) that is not installed."""
  package, fake = types.ModuleType("byol"), types.ModuleType("byol.byol_experiment")
  state_cls = collections.namedtuple("_ByolExperimentState", ["online_params", "target_params",
                                                              "online_state", "target_state",
                                                              "opt_state"])
  lars_cls = collections.namedtuple("LarsState", ["momentum"])
  state_cls.__module__ = lars_cls.__module__ = fake.__name__
  fake._ByolExperimentState, fake.LarsState = state_cls, lars_cls
  old = lambda tree: _OldHaikuMapping({k: _OldHaikuMapping(v) for k, v in tree.items()})
  zeros = {k: {n: np.zeros_like(v) for n, v in d.items()} for k, d in params.items()}
  sys.modules.update({package.__name__: package, fake.__name__: fake})
  try:
    # Online real, target zeros: the reader must take the online network.
    experiment_state = state_cls(old(params), old(zeros), old(state), old(state),
                                 lars_cls(old(zeros)))
    with open(path, "wb") as f:
      pickle.dump(dict(experiment_state=experiment_state, step=7, rng=_Evil()), f, protocol=2)
  finally:
    del sys.modules[fake.__name__], sys.modules[package.__name__]


@pytest.fixture(scope="module")
def haiku_r50(tmp_path_factory):
  """A DeepMind-style ResNet-50 pickle (ReLICv2 layout) and its Haiku forward."""
  forward, params, state = haiku_encoder(ResNet50, size=64)
  # A BYOL-like projector next to the encoder must be ignored.
  params["projector/~/linear"] = {"w": np.ones((2048, 8), np.float32)}
  path = str(tmp_path_factory.mktemp("dm") / "pretrain.pkl")
  # One device copy and no target weights keep the file at 100 MB (the tiny tests use two).
  relicv2_pickle(path, params, state, devices=1, target_params=False)
  return forward, params, state, path


def relic_features(model, variables, images):
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))


def haiku_features(forward, params, state, images):
  return np.asarray(jax.jit(forward.apply, static_argnums=3)(params, state, images, False)[0])


# ----------------------------------------------------------------------------- import


def test_relicv2_resnet50_pickle_gives_the_same_features(haiku_r50):
  forward, params, state, path = haiku_r50
  model, variables = load_encoder(path)  # arch inferred
  assert (model.depth, model.width_multiplier, model.padding) == (50, 1, "same")
  assert model.stage_sizes is None and model.base_width == 64
  images = jax.random.uniform(jax.random.key(7), (2, 64, 64, 3))
  expected = haiku_features(forward, params, state, images)
  ours = relic_features(model, variables, images)
  assert ours.shape == (2, 2048)
  assert np.abs(expected).max() > 0.1  # features are not trivially zero
  np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)
  # Inference used the EMA 'average' (debiased), not 'hidden'.
  key = "res_net50/~/initial_batchnorm/~/mean_ema"
  np.testing.assert_allclose(variables["batch_stats"]["bn_init"]["mean"],
                             state[key]["average"].reshape(-1))
  assert not np.allclose(state[key]["average"], state[key]["hidden"])


def test_byol_namedtuple_pickle_reads_without_byol_and_runs_nothing(tmp_path):
  forward, params, state = haiku_encoder(TinyResNet, size=32, seed=1)
  path = str(tmp_path / "byol.pkl")
  byol_pickle(path, params, state)
  if os.path.exists("/tmp/relic_interop_pwned"):
    os.remove("/tmp/relic_interop_pwned")
  model, variables = load_encoder(path)
  assert not os.path.exists("/tmp/relic_interop_pwned")
  assert model.stage_sizes == (1, 1, 1, 1) and model.base_width * model.width_multiplier == 4
  images = jax.random.uniform(jax.random.key(3), (2, 32, 32, 3))
  np.testing.assert_allclose(relic_features(model, variables, images),
                             haiku_features(forward, params, state, images), atol=1e-5, rtol=0)


def haiku_shapes(depth, width):
  """Abstract Haiku (params, state) of a DeepMind ResNet, as zero-cost broadcast arrays."""
  blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
  cls = type(f"ResNet{depth}", (ResNetTorso,),
             {"__init__": lambda self: ResNetTorso.__init__(self, blocks[depth],
                                                            width_multiplier=width)})
  forward = hk.transform_with_state(lambda x: cls()(x, True))
  shapes = jax.eval_shape(lambda: forward.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  zeros = lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape)
  return jax.tree.map(zeros, shapes[0]), jax.tree.map(zeros, shapes[1])


@pytest.mark.parametrize("depth,width", [(50, 1), (50, 2), (50, 4), (101, 1), (152, 1), (200, 1),
                                         (200, 2)])
def test_every_released_architecture_is_inferred_and_fits(depth, width):
  params, state = haiku_shapes(depth, width)
  assert f"res_net{depth}/~/block_group_2/~/block_0/~/shortcut_batchnorm" in params
  spec, variables = haiku_to_relic(params, state)  # checks every name and shape
  assert spec == EncoderSpec(depth=depth, width_multiplier=width)
  assert spec == parse_arch(f"resnet{depth}x{width}") == spec_from_variables(variables)


def test_wrong_architecture_names_expected_and_found_shapes():
  params, state = haiku_shapes(101, 1)
  with pytest.raises(ValueError) as error:
    haiku_to_relic(params, state, arch="resnet50")
  message = str(error.value)
  assert "does not fit ResNet-50 1x" in message and "looks like ResNet-101 1x" in message
  assert re.search(r"params/block_group_2_block_(\d+)/conv_0/kernel: unexpected, found "
                   r"\(1, 1, 1024, 256\)  \[res_net101/~/block_group_2/~/block_\1/~/conv_0/w\]",
                   message), message
  params, state = haiku_shapes(50, 2)
  with pytest.raises(ValueError) as error:
    haiku_to_relic(params, state, arch="resnet50")
  message = str(error.value)
  assert ("params/conv_init/kernel: expected (7, 7, 3, 64), found (7, 7, 3, 128)  "
          "[res_net50/~/initial_conv/w]") in message
  assert "265 shape mismatches, 0 missing and 0 unexpected" in message
  assert "looks like ResNet-50 2x" in message


def test_wrong_shapes_in_relic_variables_are_named():
  zeros = lambda model: jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))))
  model = ResNet(depth=18, base_width=4)
  check_variables(model, zeros(model))  # fits
  with pytest.raises(ValueError, match=r"params/conv_init/kernel: expected \(7, 7, 3, 4\), "
                                       r"found \(7, 7, 3, 8\)"):
    check_variables(model, zeros(ResNet(depth=18, base_width=8)))


def test_arch_names():
  assert parse_arch("resnet50") == EncoderSpec(50, 1)
  assert parse_arch("ResNet-200_2x") == parse_arch("resnet200x2") == EncoderSpec(200, 2)
  assert parse_arch("r50x4") == EncoderSpec(50, 4)
  with pytest.raises(ValueError, match="Unknown architecture 'resnet42'"):
    parse_arch("resnet42")


def test_import_cli_round_trip(haiku_r50, tmp_path):
  forward, params, state, path = haiku_r50
  out = tmp_path / "imported"
  result = subprocess.run(
      [sys.executable, "-m", "relic.interop.import_deepmind", f"--checkpoint={path}",
       "--arch=resnet50", f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  assert (out / "config.json").exists() and (out / "checkpoints" / "0" / "state").is_dir()
  model, variables = load_encoder(str(out))  # through relic.checkpoints.restore_encoder
  assert (model.depth, model.width_multiplier, model.padding) == (50, 1, "same")
  images = jax.random.uniform(jax.random.key(5), (2, 64, 64, 3))
  np.testing.assert_allclose(relic_features(model, variables, images),
                             haiku_features(forward, params, state, images), atol=1e-4, rtol=0)
  with pytest.raises(ValueError, match="holds a ResNet-50 1x encoder.*not ResNet-101 1x"):
    load_encoder(str(out), arch="resnet101")
  with pytest.raises(ValueError, match="already holds checkpoints"):
    import_deepmind(path, str(out))


def test_read_deepmind_pickle_strips_the_device_axis(haiku_r50):
  _, params, _, path = haiku_r50
  read_params, read_state = read_deepmind_pickle(path)
  w = read_params["res_net50/~/initial_conv"]["w"]
  assert w.shape == (7, 7, 3, 64) and w.dtype == np.float32
  np.testing.assert_array_equal(w, params["res_net50/~/initial_conv"]["w"])
  assert read_state["res_net50/~/initial_batchnorm/~/mean_ema"]["counter"].shape == ()




# ----------------------------------------------------------------------------- export ('SAME')


@pytest.fixture(scope="module")
def torch():
  torch = pytest.importorskip("torch")
  torch.set_num_threads(2)
  return torch


@pytest.fixture(scope="module")
def imported_r50(haiku_r50):
  return load_encoder(haiku_r50[3])


@pytest.mark.parametrize("size", [224, 97])
def test_imported_deepmind_export_with_same_padding_matches(torch, imported_r50, size):
  from relic.interop import run_nhwc, to_torch
  model, variables = imported_r50
  images = jax.random.uniform(jax.random.key(size), (2, size, size, 3))
  ours = relic_features(model, variables, images)
  same = run_nhwc(to_torch(variables, padding="same"), images)
  np.testing.assert_allclose(same, ours, atol=1e-4, rtol=0)
  plain = run_nhwc(to_torch(variables), images)  # what plain torchvision would give
  error = np.abs(plain - ours).max()
  cosine = np.sum(plain * ours, -1) / np.linalg.norm(plain, axis=-1) / np.linalg.norm(ours, axis=-1)
  print(f"plain torchvision on a SAME encoder at {size}px: max |diff| {error:.3g} "
        f"(features up to {np.abs(ours).max():.3g}), cosine {cosine.min():.4f}")
  if size % 2:
    # 97 -> 49 -> 25 -> 13 -> 7 -> 4: every strided layer sees an odd size, where TF 'SAME'
    # pads symmetrically, exactly like torchvision.
    np.testing.assert_allclose(plain, ours, atol=1e-4, rtol=0)
  else:
    assert error > 1e-2  # even sizes: every strided layer is shifted by a pixel


def test_export_cli_round_trip(torch, tmp_path):
  forward, params, state = haiku_encoder(TinyResNet, size=32, seed=2)
  pkl = tmp_path / "tiny.pkl"
  relicv2_pickle(pkl, params, state)
  import_deepmind(str(pkl), str(tmp_path / "workdir"))
  kernel = np.random.default_rng(0).normal(size=(128, 3)).astype(np.float32)
  np.savez(tmp_path / "head.npz", kernel=kernel, bias=np.arange(3, dtype=np.float32))
  out = tmp_path / "export" / "tiny.pth"
  result = subprocess.run(
      [sys.executable, "-m", "relic.interop.export_torch", f"--pretrained={tmp_path / 'workdir'}",
       f"--out={out}", f"--probe={tmp_path / 'head.npz'}", "--check_size=33"], cwd=REPO,
      capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  from relic.interop import run_nhwc, torch_resnet
  meta = json.loads((tmp_path / "export" / "tiny.json").read_text())
  assert meta["torch_resnet"]["padding"] == "same" and meta["torch_resnet"]["num_classes"] == 3
  assert meta["check"]["max_abs_diff"] < 1e-4 and meta["feature_dim"] == 128
  net = torch_resnet(**meta["torch_resnet"]).eval()
  net.load_state_dict(torch.load(out), strict=True)
  images = jax.random.uniform(jax.random.key(9), (2, 40, 40, 3))
  expected = haiku_features(forward, params, state, images) @ kernel + np.arange(3)
  np.testing.assert_allclose(run_nhwc(net, images), expected, atol=1e-4, rtol=0)
  # Straight from the pickle (no probe): the same trunk weights.
  from relic.interop.export_torch import export_torch
  meta = export_torch(str(pkl), str(tmp_path / "direct.pth"), check_size=0)
  assert meta["torch_resnet"]["num_classes"] == 0 and "check" not in meta
  direct, via_workdir = torch.load(tmp_path / "direct.pth"), torch.load(out)
  assert set(via_workdir) - set(direct) == {"fc.weight", "fc.bias"}
  assert all(torch.equal(direct[k], via_workdir[k]) for k in direct)


def test_probe_head_is_found_in_a_relic_checkpoint(tmp_path):
  from relic import checkpoints
  head = {"linear": {"kernel": np.full((8, 2), 3.0, np.float32), "bias": np.ones(2, np.float32)}}
  momentum = {"linear": {"kernel": np.zeros((8, 2), np.float32), "bias": np.zeros(2, np.float32)}}
  state = {"probe_opt_state": [{"trace": momentum}], "probe_params": head,
           "online_params": {"projector": {"linear_0": {"kernel": np.zeros((8, 4), np.float32),
                                                        "bias": np.zeros(4, np.float32)}}}}
  with checkpoints.Checkpointer(tmp_path, keep=1, async_save=False) as checkpointer:
    checkpointer.save(5, state, extra_json={})
  for path in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "5"):
    found, record = checkpoints.load_probe_head(str(path))
    assert record == {}  # the online probe of a pretraining state has no record
    np.testing.assert_array_equal(found["linear"]["kernel"], head["linear"]["kernel"])


# ----------------------------------------------------------------------------- projector


class ByolMLP(hk.Module):
  """DeepMind's networks.MLP (byol/utils/networks.py = relicv2/utils/networks.py); the last
  Linear's bias is a parameter here (theirs: with_bias=False)."""

  def __init__(self, name, hidden_size, output_size, last_bias=False):
    super().__init__(name=name)
    self._hidden_size, self._output_size, self._last_bias = hidden_size, output_size, last_bias

  def __call__(self, inputs, is_training):
    out = hk.Linear(output_size=self._hidden_size, with_bias=True)(inputs)
    out = hk.BatchNorm(**BN_CONFIG)(out, is_training=is_training)
    out = jax.nn.relu(out)
    return hk.Linear(output_size=self._output_size, with_bias=self._last_bias)(out)


def haiku_network(last_bias, seed=0, size=32, steps=3):
  """BYOL's online network (tiny encoder -> projector -> predictor), random weights, moved BN
  EMAs: (forward, params, state)."""
  def net(images, is_training):
    features = TinyResNet()(byol_normalize(images), is_training)
    projection = ByolMLP("projector", 24, 8, last_bias)(features, is_training)
    prediction = ByolMLP("predictor", 16, 8, last_bias)(projection, is_training)
    return dict(features=features, projection=projection, prediction=prediction)

  forward = hk.without_apply_rng(hk.transform_with_state(net))
  rng = np.random.default_rng(seed)
  images = lambda: rng.uniform(size=(4, size, size, 3)).astype(np.float32)
  shapes, state = jax.eval_shape(lambda: forward.init(jax.random.key(0), images(), True))
  fill = lambda leaf: rng.normal(0.3, 0.5, leaf.shape).astype(np.float32)
  params = jax.tree.map(fill, shapes)
  return forward, params, _running_statistics(forward, params, state, images, steps)


@pytest.mark.parametrize("last_bias", [False, True])
def test_projector_round_trips_through_import_and_export(torch, tmp_path, last_bias):
  from relic import config as config_lib
  from relic.checkpoints import read_config
  from relic.interop import load_projector, torch_projector
  from relic.interop.export_torch import export_torch
  from relic.interop.projector import projector_path
  from relic.models import networks_from_config
  forward, params, state = haiku_network(last_bias, seed=int(last_bias))
  assert ("b" in params["projector/linear_1"]) == last_bias   # Haiku's own naming
  pkl = tmp_path / "byol.pkl"
  relicv2_pickle(pkl, params, state)
  workdir = tmp_path / "workdir"
  import_deepmind(str(pkl), str(workdir))

  # The layout is read from the weights and written into the imported run's config.
  model_config = read_config(workdir).model
  assert (model_config.projector_hidden_dim, model_config.projector_output_dim,
          model_config.projector_last_bias) == (24, 8, last_bias)
  assert model_config.predictor and model_config.predictor_hidden_dim == 16
  for source in (str(pkl), str(workdir)):
    spec, variables = load_projector(source)
    assert (spec.input_dim, spec.hidden_dim, spec.output_dim, spec.last_bias) == (
        128, 24, 8, last_bias)
    assert set(variables["params"]["linear_1"]) == ({"kernel", "bias"} if last_bias
                                                    else {"kernel"})

  # relic's whole online network, built from the imported config, gives Haiku's outputs.
  config = config_lib.base_config()
  config.model.update(model_config.to_dict())
  online, _ = networks_from_config(config.model)
  from relic import checkpoints
  restored = checkpoints.read_state_part(checkpoints.step_dirs(workdir)[0], lambda tree: {
      g: tree[g] for g in ("online_params", "online_batch_stats")})
  images = jax.random.uniform(jax.random.key(4), (3, 32, 32, 3))
  expected, _ = forward.apply(params, state, images, False)
  features, projection, prediction = online.apply(
      {"params": restored["online_params"], "batch_stats": restored["online_batch_stats"]},
      images, train=False)
  for ours, name in ((features, "features"), (projection, "projection"),
                     (prediction, "prediction")):
    np.testing.assert_allclose(ours, expected[name], atol=1e-4, rtol=1e-4, err_msg=name)

  # Export: the projector next to the encoder, loaded strictly into torch_projector.
  out = tmp_path / "export" / "tiny.pth"
  meta = export_torch(str(workdir), str(out), check_size=33, projector=True)
  entry = meta["projector"]
  assert entry["torch_projector"] == {"input_dim": 128, "hidden_dim": 24, "output_dim": 8,
                                      "last_bias": last_bias}
  assert entry["check"]["max_abs_diff"] < 1e-4
  saved = torch.load(projector_path(str(out)))
  assert ("3.bias" in saved) == last_bias
  assert tuple(saved["0.weight"].shape) == (24, 128) and tuple(saved["3.weight"].shape) == (8, 24)
  net = torch_projector(**entry["torch_projector"]).eval()
  net.load_state_dict(saved, strict=True)
  with torch.no_grad():
    ours = net(torch.from_numpy(np.array(expected["features"]))).numpy()
  np.testing.assert_allclose(ours, expected["projection"], atol=1e-4, rtol=1e-4)


def test_projector_parameter_shapes_with_and_without_last_bias():
  from relic import config as config_lib
  from relic.models import networks_from_config
  counts = {}
  for last_bias in (False, True):
    config = config_lib.base_config()
    config.model.update(dict(stage_sizes=(1, 1, 1, 1), base_width=4, small_images=True,
                             projector_hidden_dim=24, projector_output_dim=8, predictor=True,
                             predictor_hidden_dim=16, projector_last_bias=last_bias))
    online, target = networks_from_config(config.model)
    params = jax.eval_shape(online.init, jax.random.key(0), jnp.zeros((2, 8, 8, 3)))["params"]
    shapes = jax.tree.map(lambda x: x.shape, {k: params[k] for k in ("projector", "predictor")})
    expected_last = {"kernel": (24, 8)} | ({"bias": (8,)} if last_bias else {})
    assert shapes["projector"] == {"linear_0": {"kernel": (128, 24), "bias": (24,)},
                                   "bn_0": {"scale": (24,), "bias": (24,)},
                                   "linear_1": expected_last}
    assert set(shapes["predictor"]["linear_1"]) == set(expected_last)
    target_params = jax.eval_shape(target.init, jax.random.key(0),
                                   jnp.zeros((2, 8, 8, 3)))["params"]
    assert set(target_params["projector"]["linear_1"]) == set(expected_last)
    counts[last_bias] = sum(np.prod(x.shape) for x in jax.tree.leaves(params))
  assert counts[True] - counts[False] == 2 * 8   # the projector's and predictor's last biases
  # The default is BYOL's MLP, and configs saved before the field existed keep their bias.
  assert config_lib.base_config().model.projector_last_bias is False
  from relic.models.pretrain import networks_from_config as build
  old = {k: v for k, v in config_lib.base_config().model.to_dict().items()
         if k != "projector_last_bias"}
  assert build(old)[0].projector_last_bias is True
