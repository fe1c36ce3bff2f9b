"""Orbax's threads after a failed checkpoint write or read: one line, not dozens of tracebacks.

When a write fails (a full disk), every Orbax thread that waited on it logs the same error with
its traceback, and TensorStore callbacks that arrive after Orbax closed their asyncio loop
print ``RuntimeError: Event loop is closed`` as "unraisable" exceptions, one per pending write;
a failed read leaves coroutines that print theirs when they are collected. Relic reports each
failure once (:class:`CheckpointSaveError`, or the warning of a restore that falls back), with
the step, the directory and the cause, Orbax's exception chained. So, process-wide, once
:func:`install` ran:
  * the first ERROR record with a traceback from Orbax's code keeps its message, shortened to
    one line, without the traceback (the first notice of a failing background write); the
    later ones, and all once relic has reported a failed save (:func:`failure_reported`), are
    dropped: they repeat the failure, which relic raises with its cause;
  * the unraisable leftovers above (and only those) are not printed.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

_ORBAX_SOURCE = f"{os.sep}orbax{os.sep}checkpoint{os.sep}"
_MAX_MESSAGE = 300
_lock = threading.Lock()
_shown = threading.Event()
_reported = threading.Event()


class _OrbaxErrorsInOneLine(logging.Filter):
  """Shortens the first of Orbax's error records that carry a traceback, drops the others."""

  def filter(self, record: logging.LogRecord) -> bool:
    if (record.levelno < logging.ERROR or not record.exc_info
        or _ORBAX_SOURCE not in (record.pathname or "")):
      return True
    with _lock:
      if _reported.is_set() or _shown.is_set():
        return False
      _shown.set()
    message = " ".join(record.getMessage().split())
    if len(message) > _MAX_MESSAGE:
      message = message[:_MAX_MESSAGE] + "..."
    record.msg = (f"{message} (Orbax's traceback and its further reports omitted: relic raises "
                  "the failure with its cause)")
    record.args = None
    record.exc_info = None
    record.exc_text = None
    return True


def _is_orbax_leftover(unraisable: Any) -> bool:
  """A TensorStore callback into Orbax's closed event loop, or a failed Orbax coroutine that was
  collected without being awaited."""
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
    frame = unraisable.exc_traceback
    while frame is not None and frame.tb_next is not None:
      frame = frame.tb_next
    return frame is None or frame.tb_frame.f_code.co_name == "_check_closed"
  code = getattr(unraisable.object, "cr_code", None)
  return code is not None and _ORBAX_SOURCE in code.co_filename


def install() -> None:
  """Installs the log filter and the unraisable hook (idempotent; other hooks are kept), and
  starts a new report: the next Orbax error is shown in one line again."""
  with _lock:
    _shown.clear()
    _reported.clear()
    logger = logging.getLogger("absl")   # Orbax logs through absl
    if not any(isinstance(f, _OrbaxErrorsInOneLine) for f in logger.filters):
      logger.addFilter(_OrbaxErrorsInOneLine())
    if getattr(sys.unraisablehook, "relic_orbax_noise", False):
      return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
      if not _is_orbax_leftover(unraisable):
        previous(unraisable)

    hook.relic_orbax_noise = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def failure_reported() -> None:
  """Relic has raised a failed save with its cause: Orbax's later reports of it are dropped."""
  _reported.set()
