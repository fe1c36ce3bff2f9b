"""Test set-up: 8 simulated CPU devices so sharding code runs as on a real 8-device host."""

import atexit
import os
import pathlib
import shutil
import sys
import tempfile

# Must happen before JAX is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache per test run, shared by this process, pytest-xdist's workers
# and every process a test starts (they inherit the environment): the suite's many tiny runs of
# a job compile the same few hundred programs, so each compiles once (a 6-step pretraining run
# spends about two thirds of its time compiling). A fresh directory per run: no run reads
# another run's executables. Small programs too (JAX caches only those over 1 s by default).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE_DIR = tempfile.mkdtemp(prefix="relic-tests-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
# XLA's backend optimisation off for the suite's programs (JAX's own switch: LLVM level 0, no
# expensive passes): they are tiny and run a few steps, so compiling them is most of their cost,
# and the switch cuts that by about a third (a 6-step pretraining run: 41 s -> 28 s of
# compiling). The same computation, so every comparison a test makes holds as before; what users
# run is tested as shipped by the tests that start a job the way a user does (the quickstart, the
# installed package), which drop it (``USER_ENV_DROPS``).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
USER_ENV_DROPS = ("XLA_FLAGS", "JAX_DISABLE_MOST_OPTIMIZATIONS")

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


import pytest  # noqa: E402


@pytest.fixture
def synchronous_checkpoints(monkeypatch):
  """The training loop's checkpointer does no file-system work in the background. Needed under
  ``tfds.testing.mock_data``: while it builds a dataset it swaps the file system (epath, gfile)
  for a temporary one, and Orbax work running in another thread at that moment reads and writes
  there and fails. Two such pieces: each asynchronous save, and the clean-up of unfinished
  temporary checkpoints that ``CheckpointManager`` starts in a thread when it opens (the loop
  builds its input pipeline right after)."""
  from relic.checkpoints import Checkpointer
  from relic.train import loop

  def synchronous(*args, **kwargs):
    ckpt = Checkpointer(*args, async_save=False, **kwargs)
    manager = ckpt._manager  # pylint: disable=protected-access
    # Orbax's own hook (CheckpointManager.save calls it first); fail loudly if it is renamed.
    manager._maybe_await_cleanup_tmp_directory()  # pylint: disable=protected-access
    return ckpt

  monkeypatch.setattr(loop, "Checkpointer", synchronous)
