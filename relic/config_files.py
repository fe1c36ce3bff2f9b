"""The experiment configs shipped with relic, found by name from any working directory.

``--config=quickstart`` (or ``quickstart.py``, ``configs/quickstart.py``, ``resnet50:runlocal``)
names a config of the repository's top-level ``configs/`` folder, which is installed with the
package as ``relic/configs/``. Any other value is a path to the user's own config file. A file
that exists at the given path always wins over a shipped config of the same name.

Pure Python (no JAX, TensorFlow or ml_collections import), so the entry point can resolve
``--config`` before absl parses its flags::

  from relic import config_files
  config_files.resolve("resnet50:runlocal")  # '/.../relic/configs/resnet50.py:runlocal'
  config_files.shipped()                     # {'finetune': 'Semi-supervised fine-tuning ...', ...}
"""

from __future__ import annotations

import ast
import functools
import os
import pathlib
import re

from relic.errors import ConfigError

_HERE = pathlib.Path(__file__).resolve().parent


class ConfigFileNotFoundError(ConfigError):
  """``--config`` names neither an existing file nor a shipped config."""


def config_dir() -> pathlib.Path:
  """The folder of shipped configs: ``relic/configs/`` in an installed package, else the
  ``configs/`` folder next to the ``relic/`` package (a source checkout or an editable install)."""
  for candidate in (_HERE / "configs", _HERE.parent / "configs"):
    if (candidate / "quickstart.py").is_file():
      return candidate
  raise FileNotFoundError(f"relic's configs are missing: neither {_HERE / 'configs'} nor "
                          f"{_HERE.parent / 'configs'} holds quickstart.py. Reinstall relic.")


def _paths() -> dict[str, pathlib.Path]:
  """Shipped config name -> file, sorted by name (files starting with '_' are not configs)."""
  return {p.stem: p for p in sorted(config_dir().glob("*.py")) if not p.name.startswith("_")}


def names() -> list[str]:
  """The shipped config names, sorted."""
  return list(_paths())


def _split(spec: str) -> tuple[str, str]:
  """``'path:ARG'`` -> ``('path', ':ARG')`` at the first ':' (as ml_collections splits it),
  leaving a Windows drive letter (``C:\\...``) in the path."""
  start = 2 if re.match(r"^[A-Za-z]:[\\/]", spec) else 0
  colon = spec.find(":", start)
  return (spec, "") if colon < 0 else (spec[:colon], spec[colon:])


def _shipped_name(path: str) -> str | None:
  """``quickstart``, ``quickstart.py``, ``configs/quickstart.py`` (also ``./configs/...``) ->
  ``quickstart``; None for anything else (absolute paths, other folders)."""
  parts = pathlib.PurePath(path.replace("\\", "/")).parts
  if not parts or pathlib.PurePath(path).is_absolute():
    return None
  if len(parts) == 2 and parts[0] == "configs":
    parts = parts[1:]
  if len(parts) != 1:
    return None
  return parts[0][:-3] if parts[0].endswith(".py") else parts[0]


def resolve(spec: str) -> str:
  """The config file ``spec`` stands for, as an absolute path, with its ``:ARG`` suffix kept.

  ``spec`` is an existing file (absolute or relative to the working directory), or the name of a
  shipped config in any of the forms ``NAME``, ``NAME.py`` and ``configs/NAME.py``. Raises
  :class:`ConfigFileNotFoundError` (a :class:`relic.errors.ConfigError`) naming the shipped
  configs when it is neither.
  """
  path, arg = _split(spec.strip())
  if not path:
    raise ConfigFileNotFoundError(f"no config given. {_choices()}")
  own = os.path.expanduser(path)
  if os.path.isfile(own):
    return os.path.abspath(own) + arg
  name = _shipped_name(path)
  shipped_paths = _paths()
  if name in shipped_paths:
    return str(shipped_paths[name]) + arg
  raise ConfigFileNotFoundError(
      f"config {path!r} is neither a file (looked in {os.getcwd()}) nor a config shipped with "
      f"relic. {_choices()}")


def _choices() -> str:
  return (f"Shipped configs (in {config_dir()}): {', '.join(names())}. Pass one by name, e.g. "
          f"--config=quickstart or --config=resnet50:runlocal, or the path of your own config "
          f"file (a Python file with get_config(arg=None)).")


@functools.cache
def _first_docstring_line(path: pathlib.Path) -> str:
  docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"), str(path))) or ""
  return docstring.strip().splitlines()[0].strip() if docstring.strip() else ""


def shipped() -> dict[str, str]:
  """Shipped config name -> the first line of its docstring, sorted by name."""
  return {name: _first_docstring_line(path) for name, path in _paths().items()}


def listing(indent: str = "  ") -> str:
  """One line per shipped config, ``NAME  summary``, aligned: for ``--help``."""
  summaries = shipped()
  width = max(map(len, summaries), default=0)
  return "\n".join(f"{indent}{name:<{width}}  {line}" for name, line in summaries.items())
