"""relic encoders -> torchvision: same features as relic, strict keys, wide models done right."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from relic.interop import spec_from_variables, to_torchvision_state_dict
from relic.models import LinearHead, ResNet
from tests.numpy_weights import numpy_variables, with_batch_statistics

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
torch.set_num_threads(2)

from relic.interop import run_nhwc, to_torch, torch_resnet  # noqa: E402  (needs torch)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def relic_encoder(seed=0, **kwargs):
  """A random relic ResNet whose BN statistics are those of a real batch."""
  model = ResNet(**kwargs)
  rng = np.random.default_rng(seed)
  variables = numpy_variables(model, jnp.zeros((1, 64, 64, 3)), rng)
  images = rng.uniform(size=(4, 64, 64, 3)).astype(np.float32)
  return model, with_batch_statistics(model, variables, images)


def features(model, variables, images):
  """relic's inference forward (jitted: faster on CPU than op-by-op for a whole ResNet)."""
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))


@pytest.fixture(scope="module")
def relic_r50():
  return relic_encoder(depth=50)


@pytest.mark.parametrize("size", [224, 97])
def test_resnet50_export_equals_plain_torchvision(relic_r50, size):
  model, variables = relic_r50
  net = torchvision.models.resnet50()
  net.fc = torch.nn.Identity()
  state = to_torchvision_state_dict(variables)
  net.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=True)
  images = jax.random.uniform(jax.random.key(size), (2, size, size, 3))
  ours = features(model, variables, images)
  assert np.abs(ours).max() > 0.1
  np.testing.assert_allclose(run_nhwc(net.eval(), images), ours, atol=1e-4, rtol=0)


def test_state_dict_names_and_layouts(relic_r50):
  _, variables = relic_r50
  state = to_torchvision_state_dict(variables)
  reference = torchvision.models.resnet50().state_dict()
  assert set(state) == set(reference) - {"fc.weight", "fc.bias"}
  assert all(tuple(state[k].shape) == tuple(reference[k].shape) for k in state)
  kernel = np.asarray(variables["params"]["block_group_1_block_0"]["conv_1"]["kernel"])
  np.testing.assert_array_equal(state["layer2.0.conv2.weight"], kernel.transpose(3, 2, 0, 1))
  np.testing.assert_array_equal(state["layer2.0.downsample.1.running_var"],
                                variables["batch_stats"]["block_group_1_block_0"]["shortcut_bn"]
                                ["var"])


@pytest.fixture(scope="module")
def relic_r18x2():
  return relic_encoder(depth=18, width_multiplier=2)


@pytest.mark.parametrize("size", [64, 97])
def test_2x_resnet18_export_matches(relic_r18x2, size):
  model, variables = relic_r18x2
  assert spec_from_variables(variables).describe() == "ResNet-18 2x"
  net = to_torch(variables)
  assert type(net) is torchvision.models.resnet.ResNet
  assert net.conv1.out_channels == 128 and net.layer4[1].conv2.out_channels == 1024
  images = jax.random.uniform(jax.random.key(size), (2, size, size, 3))
  np.testing.assert_allclose(run_nhwc(net, images), features(model, variables, images),
                             atol=1e-4, rtol=0)


def test_torch_resnet_widths_are_relics_not_wide_resnet():
  count = lambda net: sum(p.numel() for n, p in net.named_parameters() if not n.startswith("fc"))
  assert count(torch_resnet(50)) == 23_508_032 == count(torchvision.models.resnet50())
  assert count(torch_resnet(50, 2)) == 93_907_072  # relic's ResNet-50 2x (test_models.py)
  assert count(torchvision.models.wide_resnet50_2()) == 66_834_240  # a different network
  assert isinstance(torch_resnet(50, 2).fc, torch.nn.Identity)
  assert torch_resnet(50, num_classes=1000).fc.out_features == 1000


def test_probe_head_exports_as_fc_on_a_tiny_cifar_encoder():
  model, variables = relic_encoder(depth=50, stage_sizes=(1, 1, 1, 1), base_width=4,
                                   small_images=True)
  head = LinearHead(10)
  head_params = jax.tree.map(lambda x: np.asarray(jax.random.normal(jax.random.key(2), x.shape)),
                             head.init(jax.random.key(0), jnp.zeros((1, model.num_features))))
  net = to_torch(variables, head_params=head_params)
  assert net.fc.out_features == 10 and isinstance(net.maxpool, torch.nn.Identity)
  images = jax.random.uniform(jax.random.key(4), (2, 32, 32, 3))
  logits = head.apply(head_params, features(model, variables, images))
  np.testing.assert_allclose(run_nhwc(net, images), logits, atol=1e-4, rtol=0)
  with pytest.raises(ValueError, match="expects 7 features"):
    to_torchvision_state_dict(variables, {"linear": {"kernel": np.zeros((7, 3)),
                                                     "bias": np.zeros(3)}})


def test_same_padding_module_matches_tf_same_on_a_single_layer():
  from relic.interop import convert_to_same_padding
  conv = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False),
                             torch.nn.MaxPool2d(3, 2, 1))
  kernel = jax.random.normal(jax.random.key(0), (3, 3, 2, 3))
  conv[0].weight.data = torch.from_numpy(np.asarray(kernel).transpose(3, 2, 0, 1).copy())
  keys = set(conv.state_dict())
  convert_to_same_padding(conv)
  assert set(conv.state_dict()) == keys
  for size in (8, 9, 10):
    x = jax.random.normal(jax.random.key(size), (1, size, size, 2))
    y = jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")
    with torch.no_grad():
      ours = conv(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(ours.transpose(0, 2, 3, 1), y, atol=1e-5)


def test_importing_relic_interop_does_not_import_torch():
  code = ("import sys, relic, relic.interop, relic.interop.load; "
          "assert 'torch' not in sys.modules, 'torch imported'")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
