"""JAX's persistent compilation cache, on by default for relic's commands.

A command compiles its programs (the training step, the evaluators) before its first step: 10-12
s of a short CPU run, minutes for a large model on an accelerator. The same command again (a
resume after preemption, the next seed of a sweep, a rerun with another evaluation) compiles
the same programs, so the command line keeps them in ``$RELIC_CACHE/jax/CPU_KIND`` (default
``~/.cache/relic/jax/...``, next to the built-in dataset's cache) and loads them instead.

* Your own setting wins: ``JAX_COMPILATION_CACHE_DIR`` (or ``jax_compilation_cache_dir`` set in
  Python) is left as it is; ``RELIC_COMPILATION_CACHE=off`` turns the default off.
* The cache is trusted code, like the Python environment (JAX's documentation): it lives in your
  home directory, created readable by you alone; never point it at a directory others can write.
* It is bounded: JAX drops the least recently used programs beyond :data:`MAX_BYTES` (with the
  filelock package, which relic requires).
* One subdirectory per kind of CPU (its instruction-set flags): a home directory shared by
  machines with different CPUs never hands one of them a program built for the other's
  instructions. The results are the same with or without the cache.

Only :func:`relic.main.main` (the ``relic`` command) calls :func:`enable`; ``relic.main.run``
from Python leaves JAX's configuration to the caller.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import platform

import jax
from absl import logging

from relic.data import builtin

MAX_BYTES = 4 << 30
OFF = "off"


def cpu_kind() -> str:
  """A short name for this machine's instruction set: the architecture and a hash of the CPU
  flags the kernel reports (where there is no /proc/cpuinfo, only the architecture tells
  machines apart)."""
  flags = ""
  with contextlib.suppress(OSError):   # no /proc/cpuinfo (macOS, Windows): the flags stay ""
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
      flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
  return f"{platform.machine() or 'cpu'}-{hashlib.sha256(flags.encode()).hexdigest()[:12]}"


def default_dir() -> str:
  return str(builtin.cache_root() / "jax" / cpu_kind())


def enable() -> str | None:
  """Points JAX at the cache (before the first compilation); returns the directory in use, or
  None when it is off."""
  if os.environ.get("RELIC_COMPILATION_CACHE", "").lower() == OFF:
    return None
  chosen = jax.config.jax_compilation_cache_dir   # JAX_COMPILATION_CACHE_DIR lands here too
  if chosen:
    return chosen
  path = default_dir()
  try:
    os.makedirs(path, mode=0o700, exist_ok=True)
  except OSError as e:   # a read-only home: run without the cache rather than not at all
    logging.warning("No compilation cache (cannot create %s: %s); every program is compiled.",
                    path, e)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  # JAX bounds the cache only with filelock (a dependency of relic): without it, JAX would fail
  # to open a bounded cache, so an environment that lacks it gets an unbounded one.
  if importlib.util.find_spec("filelock") is not None:
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  return path
