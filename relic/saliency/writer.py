"""Mask files: written once, atomically, in the layout ``config.data.mask_path`` reads.

A mask is ``<folder>/<name>.png``, 8-bit grayscale, 255 = foreground. Each file is written to a
temporary name and renamed into place, so a killed run leaves either the whole file or none,
and a rerun skips every name already present (:func:`finished`) without opening it.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib

import numpy as np
from PIL import Image

SUFFIX = ".png"
_MAX_QUEUED = 4096


def finished(folder: str) -> frozenset[str]:
  """The mask names already written below ``folder`` (relative paths without the suffix)."""
  root = pathlib.Path(folder)
  names = []
  for dirpath, _, filenames in os.walk(root):
    prefix = pathlib.Path(dirpath).relative_to(root)
    names.extend(str(prefix / f[:-len(SUFFIX)]) if str(prefix) != "." else f[:-len(SUFFIX)]
                 for f in filenames if f.endswith(SUFFIX))
  return frozenset(names)


def check_writable(folder: str) -> str:
  """'' when masks can be written below ``folder`` (created if needed), else the reason."""
  try:
    path = pathlib.Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
    return ""
  except OSError as e:
    return f"{type(e).__name__}: {e.strerror or e}"


def write(folder: str, name: str, mask: np.ndarray) -> None:
  """Writes the (H, W) uint8 ``mask`` as ``folder/name.png``, atomically."""
  target = pathlib.Path(folder) / (name + SUFFIX)
  target.parent.mkdir(parents=True, exist_ok=True)
  temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
  Image.fromarray(np.asarray(mask, np.uint8), mode="L").save(temporary, format="PNG")
  os.replace(temporary, target)


class Writer:
  """Writes masks on a few threads (PNG encoding and file I/O overlap the next batch)."""

  def __init__(self, folder: str, threads: int = 8):
    self._folder = folder
    self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="masks")
    self._pending: list[concurrent.futures.Future] = []

  def submit(self, names: np.ndarray, masks: np.ndarray) -> None:
    """Queues ``masks[i]`` as ``names[i]``; raises the error of an earlier failed write."""
    waiting = []
    for future in self._pending:
      if future.done():
        future.result()
      else:
        waiting.append(future)
    while len(waiting) > _MAX_QUEUED:   # bounded memory when the disk is slower than compute
      waiting.pop(0).result()
    self._pending = waiting
    for name, mask in zip(names, masks):
      self._pending.append(self._pool.submit(
          write, self._folder, name.decode() if isinstance(name, bytes) else str(name), mask))

  def close(self) -> None:
    """Waits for every write; raises the first error."""
    try:
      for future in self._pending:
        future.result()
    finally:
      self._pool.shutdown(wait=True)
