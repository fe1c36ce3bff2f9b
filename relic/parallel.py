"""Device mesh, shardings and the move from per-process data to global arrays.

relic uses ``jax.jit`` over a one-axis ``Mesh`` (the pjit style, no ``pmap``): the batch is
sharded over the ``data`` axis, parameters are replicated (or FSDP-sharded for the widest
encoders). Functions are written on *global* arrays, so global-batch quantities (BatchNorm
statistics, contrastive negatives) are global by construction: XLA inserts the collectives.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """All devices (of all processes) along one data-parallel axis."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  return Mesh(devices.reshape(-1), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh: Mesh, field: str = "train.batch_size") -> int:
  """Returns the per-process batch size; fails with the fix if the batch does not divide."""
  num_devices = mesh.devices.size
  if global_batch_size % num_devices:
    raise ValueError(
        f"config.{field}={global_batch_size} is not divisible by the {num_devices} devices; "
        f"use a multiple of {num_devices} (e.g. {max(1, global_batch_size // num_devices) * num_devices}).")
  return global_batch_size // jax.process_count()


def to_global(tree: Any, mesh: Mesh) -> Any:
  """Per-process numpy batch (leading axis = this process's share) -> global sharded arrays."""
  sharding = data_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a host pytree (identical on every process) replicated on all devices."""
  return jax.device_put(tree, replicated(mesh))
