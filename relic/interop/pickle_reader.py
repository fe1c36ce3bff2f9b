"""Reads DeepMind's experiment pickles without their code and without running theirs.

BYOL and ReLICv2 checkpoints are ``dill`` pickles of ``dict(experiment_state=..., step=...,
rng=...)``. Unpickling them normally needs the exact classes they were written with (BYOL's
``_ByolExperimentState`` namedtuple, its LARS optimiser state, optax states, Haiku's old
``FlatMapping``), i.e. the BYOL package, dill and a compatible Haiku, and it would execute
whatever callable the file names. This reader rebuilds only plain data: numpy arrays,
Python containers and Haiku's mappings (as dicts). Every other class becomes an inert
:class:`Opaque` placeholder that keeps its constructor arguments, so an experiment-state
namedtuple still yields its fields in order, and nothing else from the file ever runs.
"""

from __future__ import annotations

import codecs
import collections
import copyreg
import pickle
from typing import Any, BinaryIO, Callable

import numpy as np

_NUMPY_2 = int(np.__version__.split(".")[0]) >= 2


class Opaque:
  """Stand-in for a class the reader does not rebuild; records what the pickle gave it.

  ``args`` are the constructor arguments (a namedtuple's fields, in order), ``state`` what
  ``__setstate__`` received, ``items``/``values`` what the pickle set or appended.
  """
  pickled_as = "?"
  args: tuple = ()
  state: Any = None

  def __new__(cls, *args, **kwargs):
    # dill rebuilds some classes through a factory call: then ``cls`` is an instance.
    klass = cls if isinstance(cls, type) else type(cls)
    obj = object.__new__(klass)
    obj.args = args + tuple(kwargs.values())
    return obj

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __call__(self, *args, **kwargs):
    return type(self)(*args, **kwargs)

  def __setstate__(self, state):
    self.state = state

  def __setitem__(self, key, value):
    self.__dict__.setdefault("items", {})[key] = value

  def append(self, value):
    self.__dict__.setdefault("values", []).append(value)

  def extend(self, values):
    self.__dict__.setdefault("values", []).extend(values)

  def children(self) -> list[Any]:
    """Everything the pickle stored in this object, in order."""
    out = list(self.args) + list(self.__dict__.get("items", {}).values())
    out += self.__dict__.get("values", [])
    state = self.state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
      state = {**(state[0] or {}), **state[1]}  # (dict state, slots state)
    if isinstance(state, dict):
      out += list(state.values())
    elif state is not None:
      out.append(state)
    return out

  def __repr__(self):
    return f"Opaque({self.pickled_as})"


def _to_dict(*args, **kwargs) -> dict:
  return dict(*args, **kwargs)


def _create_namedtuple(name, fieldnames, modulename=None, defaults=None):
  """dill's namedtuple factory, rebuilt: field names are all the reader needs."""
  del modulename, defaults
  return collections.namedtuple(name, fieldnames)


_BUILTINS = {name: getattr(__import__("builtins"), name) for name in (
    "dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "bytes",
    "bytearray", "slice", "range", "object")}
_HAIKU_MAPPINGS = ("FlatMapping", "FlatMap", "frozendict")
_NUMPY = {"_reconstruct", "scalar", "ndarray", "dtype", "_frombuffer"}


class SafeUnpickler(pickle.Unpickler):
  """Rebuilds numpy arrays, containers and Haiku mappings; placeholders for the rest."""

  def __init__(self, file: BinaryIO):
    super().__init__(file)
    self._placeholders: dict[str, type] = {}

  def find_class(self, module: str, name: str) -> Callable[..., Any]:
    if module in ("builtins", "__builtin__") and name in _BUILTINS:
      return _BUILTINS[name]
    if module == "copyreg" and name == "_reconstructor":
      return copyreg._reconstructor
    if module == "_codecs" and name == "encode":  # protocol 2 writes bytes through it
      return codecs.encode
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module.startswith("haiku.") and name in _HAIKU_MAPPINGS:
      return _to_dict
    if module.startswith("dill.") and name == "_create_namedtuple":
      return _create_namedtuple
    if module.split(".")[0] == "numpy" and (name in _NUMPY or name.endswith("DType")):
      if _NUMPY_2 and module.startswith("numpy.core"):
        module = "numpy._core" + module[len("numpy.core"):]  # numpy 1.x pickles under numpy 2
      return super().find_class(module, name)
    return self._placeholder(module, name)

  def _placeholder(self, module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in self._placeholders:
      self._placeholders[key] = type(name, (Opaque,), {"pickled_as": key})
    return self._placeholders[key]


def load(file: BinaryIO) -> Any:
  """Unpickles ``file`` with :class:`SafeUnpickler`."""
  return SafeUnpickler(file).load()
