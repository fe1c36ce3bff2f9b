"""Export to safetensors: the torchvision-named state dict of the .pth export, which a relic
ResNet-50 1x loads strictly into timm's resnet50 with relic's features."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from relic.interop import spec_from_variables, to_torchvision_state_dict
from relic.interop.export_torch import export_torch, load_state_dict_file, output_format
from relic.interop.import_deepmind import write_encoder_checkpoint
from relic.models import ResNet
from tests.numpy_weights import numpy_variables, with_batch_statistics

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
timm = pytest.importorskip("timm")
torch.set_num_threads(2)

from relic.interop import run_nhwc  # noqa: E402  (needs torch)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """A random relic ResNet-50 (real BN statistics) as a relic workdir, exported by the CLI."""
  tmp = tmp_path_factory.mktemp("export")
  model = ResNet(depth=50)
  rng = np.random.default_rng(0)
  variables = numpy_variables(model, jnp.zeros((1, 64, 64, 3)), rng)
  variables = with_batch_statistics(model, variables, rng.uniform(size=(4, 64, 64, 3)).astype(
      np.float32))
  write_encoder_checkpoint(str(tmp / "workdir"), spec_from_variables(variables), variables,
                           "torchvision")
  out = tmp / "r50.safetensors"
  result = subprocess.run(
      [sys.executable, "-m", "relic.interop.export_torch", f"--pretrained={tmp / 'workdir'}",
       f"--out={out}", "--check_size=64"], cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  return model, variables, out


def test_output_format_by_suffix_or_flag():
  assert output_format("r50.safetensors") == "safetensors"
  assert output_format("r50.pth") == output_format("gs://bucket/r50") == "pth"
  assert output_format("r50.bin", "safetensors") == "safetensors"
  with pytest.raises(ValueError, match="pth"):
    output_format("r50.pth", "onnx")


def test_safetensors_file_is_the_torchvision_state_dict(exported, tmp_path):
  model, variables, out = exported
  meta = json.loads(out.with_suffix(".json").read_text())
  assert meta["format"] == "safetensors" and meta["check"]["max_abs_diff"] < 1e-4
  assert meta["torch_resnet"]["depth"] == 50 and meta["torch_resnet"]["num_classes"] == 0
  with safetensors_torch.safe_open(str(out), framework="pt") as f:
    described = json.loads(f.metadata()["relic"])
  assert described["torch_resnet"] == meta["torch_resnet"]
  assert described["architecture"] == "ResNet-50 1x" and described["feature_dim"] == 2048
  state = safetensors_torch.load_file(str(out))
  assert set(state) == set(to_torchvision_state_dict(variables))
  # The same tensors as the .pth export (in-process, no check).
  export_torch(str(out.parent / "workdir"), str(tmp_path / "r50.pth"), check_size=0)
  pth = load_state_dict_file(str(tmp_path / "r50.pth"))
  assert set(pth) == set(state)
  assert all(torch.equal(pth[k], state[k]) for k in state)


@pytest.mark.parametrize("size", [224, 97])
def test_timm_resnet50_loads_the_export_strictly_with_relics_features(exported, size):
  model, variables, out = exported
  net = timm.create_model("resnet50", num_classes=0, pretrained=False)
  net.load_state_dict(safetensors_torch.load_file(str(out)), strict=True)
  images = jax.random.uniform(jax.random.key(size), (3, size, size, 3))
  ours = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))
  assert ours.shape == (3, 2048) and np.abs(ours).max() > 0.1
  np.testing.assert_allclose(run_nhwc(net.eval(), images), ours, atol=1e-4, rtol=0)
