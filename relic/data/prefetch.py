"""Moving host batches onto the devices ahead of the step that needs them."""

from __future__ import annotations

import itertools
import queue
import threading
from typing import Any, Iterator

from absl import logging
from jax.sharding import Mesh

from relic import parallel

_DONE = object()
_JOIN_TIMEOUT_S = 60.0


def device_prefetch(iterator: Iterator[Any], mesh: Mesh, size: int = 2,
                    num_batches: int | None = None) -> Iterator[Any]:
  """Yields ``parallel.to_global(batch, mesh)`` for each per-process batch of ``iterator``,
  at most ``num_batches`` of them (a training run's remaining steps: the thread then ends by
  itself after the last step's batch instead of computing batches nobody will use, and the
  close at the end of the run has nothing to wait for).

  A background thread keeps ``size`` global batches ready, so host-to-device copies overlap
  the running step. ``size=0`` converts in the caller's thread. An exception in the input
  pipeline is raised in the consumer. Closing the generator stops the thread and waits for it:
  a thread left inside TensorFlow's iterator when the interpreter exits aborts the process.
  """
  if num_batches is not None:
    iterator = itertools.islice(iterator, max(0, num_batches))
  if size <= 0:
    for batch in iterator:
      yield parallel.to_global(batch, mesh)
    return
  ready: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def put(item: Any) -> bool:
    while not stop.is_set():
      try:
        ready.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce() -> None:
    try:
      for batch in iterator:
        if not put(parallel.to_global(batch, mesh)):
          return
      put(_DONE)
    except BaseException as e:  # pylint: disable=broad-except  # re-raised in the consumer
      put(e)

  thread = threading.Thread(target=produce, name="relic-device-prefetch", daemon=True)
  thread.start()
  try:
    while True:
      item = ready.get()
      if item is _DONE:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    thread.join(timeout=_JOIN_TIMEOUT_S)   # it finishes the batch it is reading, then returns
    if thread.is_alive():
      logging.warning("The input thread did not stop within %.0f s (still reading a batch); "
                      "going on without it.", _JOIN_TIMEOUT_S)
