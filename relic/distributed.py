"""Multi-process start-up: JAX's own distributed runtime, no launcher of our own.

``jax.distributed.initialize()`` is called when more than one process takes part:
  * explicit flags ``--coordinator_address``, ``--num_processes``, ``--process_id``;
  * SLURM (``SLURM_NTASKS > 1``) and Open MPI launches, which JAX detects itself;
  * TPU VM pod slices (more than one worker in ``TPU_WORKER_HOSTNAMES``), also auto-detected.
A single process on one machine starts nothing.
"""

from __future__ import annotations

import os

import jax
from absl import flags, logging

_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (multi-process runs without SLURM/TPU).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process.")


def hide_accelerators_from_tensorflow() -> None:
  """tf.data runs on the host; TensorFlow must not reserve GPU/TPU memory JAX needs."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.set_visible_devices([], "GPU")
  try:
    tf.config.set_visible_devices([], "TPU")
  except (RuntimeError, ValueError):
    pass


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
      raise ValueError("--coordinator_address needs --num_processes and --process_id too.")
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
