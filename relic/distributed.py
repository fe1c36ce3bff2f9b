"""Multi-process start-up: JAX's own distributed runtime, no launcher of our own.

``jax.distributed.initialize()`` is called when more than one process takes part:
  * explicit flags ``--coordinator_address``, ``--num_processes``, ``--process_id``;
  * SLURM (``SLURM_NTASKS > 1``) and Open MPI launches, which JAX detects itself;
  * TPU VM pod slices (more than one worker in ``TPU_WORKER_HOSTNAMES``), also auto-detected.
A single process on one machine starts nothing.
"""

from __future__ import annotations

import os
import shutil

import jax
from absl import flags, logging

from relic.errors import ConfigError

_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (multi-process runs without SLURM/TPU).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process.")


def hide_accelerators_from_tensorflow() -> None:
  """tf.data runs on the host; TensorFlow must not reserve GPU/TPU memory JAX needs. (Relic's
  own first use of TensorFlow does this too: relic/data/lazy_tf.py.)"""
  from relic.data import lazy_tf  # pylint: disable=import-outside-toplevel
  lazy_tf.hide_accelerators()


def _gpu_hint() -> str | None:
  """Why this machine seems to have an NVIDIA GPU ('nvidia-smi on PATH', '/dev/nvidia0'), or
  None."""
  if shutil.which("nvidia-smi"):
    return "nvidia-smi is on PATH"
  if os.path.exists("/dev/nvidia0"):
    return "/dev/nvidia0 exists"
  return None


def log_devices() -> None:
  """One line with the devices JAX found; a warning when JAX runs on the CPU of a machine that
  seems to have a GPU (the CPU-only jaxlib installed), naming the fix."""
  devices = jax.devices()
  platform = devices[0].platform
  kinds = ", ".join(sorted({d.device_kind for d in devices}))
  logging.info("JAX devices: %d x %s (%s); %d on this process, %d process(es).",
               jax.device_count(), platform, kinds, jax.local_device_count(),
               jax.process_count())
  chosen = os.environ.get("JAX_PLATFORMS", "")  # the CPU on purpose: no warning
  hint = _gpu_hint() if platform == "cpu" and "cpu" not in chosen else None
  if hint:
    logging.warning(
        "JAX runs on the CPU, but this machine seems to have an NVIDIA GPU (%s): the installed "
        "jaxlib has no CUDA support, and training on the CPU is far slower. Fix: pip install -U "
        "\"jax[cuda12]\" (in a relic checkout: pip install -e \".[cuda12]\"), then check that "
        "python -c 'import jax; print(jax.devices())' lists the GPU; set JAX_PLATFORMS=cpu if "
        "the CPU is intended.", hint)


def _multi_process_environment() -> bool:
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1


def maybe_initialize() -> None:
  """Starts the distributed runtime when several processes take part."""
  if _COORDINATOR.value:
    if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
      raise ConfigError("--coordinator_address needs --num_processes and --process_id too. Fix: "
                        "pass all three, e.g. --coordinator_address=HOST:1234 --num_processes=2 "
                        "--process_id=0 (1 on the second process).")
    # CPU-only clusters (and local multi-process tests) need a cross-process collective
    # implementation; the setting does not affect GPU or TPU backends.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif _multi_process_environment():
    jax.distributed.initialize()
  else:
    return
  logging.info("Process %d of %d; %d local / %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
