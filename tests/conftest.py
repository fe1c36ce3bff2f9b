"""Test set-up: 8 simulated CPU devices so sharding code runs as on a real 8-device host."""

import os
import pathlib
import sys

# Must happen before JAX is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The repository root, so tests import experiments/ (and configs/ paths resolve) however
# pytest is started.
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

# torchvision (interop tests) must be loaded before TensorFlow: importing it after TensorFlow
# in one process crashes while torch probes its triton package.
try:
  import torchvision  # noqa: F401,E402
except ImportError:
  pass


import functools  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def synchronous_checkpoints(monkeypatch):
  """The training loop writes each checkpoint before it goes on. Needed under
  ``tfds.testing.mock_data``: while it builds a dataset it swaps the file system (epath, gfile)
  for a temporary one, and a checkpoint finishing in the background at that moment would be
  written there and fail."""
  from relic.checkpoints import Checkpointer
  from relic.train import loop
  monkeypatch.setattr(loop, "Checkpointer", functools.partial(Checkpointer, async_save=False))
