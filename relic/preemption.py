"""Stopping cleanly on SIGTERM: save the current step, exit 0, resume later.

Cluster schedulers (Kubernetes, SLURM, preemptible cloud VMs) announce an eviction with
SIGTERM and kill the process a grace period later. The default action of SIGTERM kills the
process at once and loses everything since the last periodic checkpoint. With the guard
installed the signal only sets a flag; the train loop asks :meth:`PreemptionGuard.should_stop`
once per step, saves a checkpoint of that step and returns normally.

Multi-process runs must also agree on *which* step to stop at: a host that stopped one step
earlier than the others would leave them waiting forever in a collective. When JAX's
distributed runtime runs with its preemption service (the default after
``jax.distributed.initialize()``), JAX itself catches SIGTERM on every host and
:func:`jax.experimental.multihost_utils.reached_preemption_sync_point` returns True on all hosts
at the same step; the guard then uses that instead of its own handler (installing a Python
handler would replace JAX's and break the agreement).
"""

from __future__ import annotations

import signal
import threading
import types
from typing import Sequence

import jax
from absl import logging
from jax.experimental import multihost_utils


def _jax_preemption_service_active() -> bool:
  """True when JAX's coordination service will synchronise preemption across processes."""
  return jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)


class PreemptionGuard:
  """Turns SIGTERM into a flag the train loop polls; a context manager.

  Usage::

    with PreemptionGuard() as guard:
      for step in range(start, total):
        state = train_step(state, batch)
        if guard.should_stop(step + 1):
          checkpointer.save(step + 1, state)
          break

  The handler does no work (no I/O, no JAX calls): Python runs it between bytecodes of the
  main thread, possibly in the middle of a dispatch, so it only records the signal.
  """

  def __init__(self, signals: Sequence[int] = (signal.SIGTERM,)):
    self._signals = tuple(signals)
    self._previous: dict[int, object] = {}
    self._received: int | None = None
    self._use_jax_sync = False

  def install(self) -> "PreemptionGuard":
    """Installs the handlers (or defers to JAX's preemption service in multi-process runs)."""
    if _jax_preemption_service_active():
      self._use_jax_sync = True
      logging.info("Preemption: using JAX's preemption sync point (all processes stop at the "
                   "same step).")
      return self
    if threading.current_thread() is not threading.main_thread():
      logging.warning("Preemption: signal handlers can only be installed from the main thread; "
                      "SIGTERM will kill this process without a final checkpoint.")
      return self
    for signum in self._signals:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def uninstall(self) -> None:
    """Restores the handlers that were in place before :meth:`install`."""
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def __enter__(self) -> "PreemptionGuard":
    return self.install()

  def __exit__(self, *exc_info) -> None:
    self.uninstall()

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    del frame
    self._received = signum

  @property
  def received_signal(self) -> int | None:
    """The signal number this process received, or None (single-process mode only)."""
    return self._received

  def should_stop(self, step: int) -> bool:
    """Whether to save ``step`` and stop now. Call it at every step, on every process.

    Args:
      step: the train state's step after the update just made. In multi-process runs every
        process must pass the same sequence of steps (JAX's sync protocol picks one of them).
    """
    if self._use_jax_sync:
      return bool(multihost_utils.reached_preemption_sync_point(int(step)))
    if self._received is not None:
      logging.warning("Received signal %d: stopping at step %d after a checkpoint.",
                      self._received, step)
      return True
    return False
