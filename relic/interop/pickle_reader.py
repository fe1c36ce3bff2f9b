"""Reads DeepMind's experiment pickles without their code and without running anything a file names.

BYOL and ReLICv2 checkpoints are ``dill`` pickles of ``dict(experiment_state=..., step=...,
rng=...)``. Unpickling them normally needs the exact classes they were written with (BYOL's
``_ByolExperimentState`` namedtuple, its LARS optimiser state, optax states, Haiku's old
``FlatMapping``), i.e. the BYOL package, dill and a compatible Haiku, and it would import every
module and call every callable the file names. This reader rebuilds only plain data: numeric
numpy arrays, Python containers and Haiku's mappings (as dicts). Every other class becomes an
inert :class:`Opaque` placeholder that keeps its constructor arguments, so an experiment-state
namedtuple still yields its fields in order.

What a file can make it do, and no more:

* **Names.** A GLOBAL resolves through an exact list of (module, name) pairs to objects this
  module took from numpy and the standard library when it was imported; the reader imports
  nothing at load time. Names under ``numpy`` outside the list are refused (``numpy.f2py``,
  ``numpy.load``, ...: importing a module runs it). Other unknown names become placeholders,
  which are never imported or called. The callables the list resolves to cannot be given
  attributes (BUILD on one is refused).
* **Size.** Everything the resolved callables and placeholders build (container slots, bytes,
  arguments) is charged against :data:`ITEMS_PER_FILE_BYTE` items per byte of the file, so a few
  bytes that call a constructor many times on one shared object cannot expand into gigabytes.
  Arrays are rebuilt only from their own bytes, in plain numeric dtypes.
* **Structure.** Before unpickling, relic/interop/pickle_scan.py scans the opcode stream for more
  than :data:`MAX_OPCODES` opcodes, nesting deeper than :data:`MAX_NESTING` and dict keys or
  set items larger than :data:`MAX_KEY_SIZE`: hashing a tuple is recursive and uncached, so a
  deep or self-sharing key would crash the process or hash for ever.

What the reader returns may still share objects or hold cycles (placeholders, lists); its
callers walk it once per object (relic/interop/deepmind.py).

Errors are :class:`UnsafePickleError` (a ``ValueError``) naming the file and what it asked for.
"""

from __future__ import annotations

import codecs
import collections
import io
import pickle
import sys
from typing import Any, BinaryIO, Callable, Iterable

import numpy as np

from relic.interop import pickle_scan
from relic.interop.pickle_scan import MAX_KEY_SIZE, UnsafePickleError, describe

# Every container slot, byte or argument the file may have built per byte of the file. A
# genuine checkpoint builds each item from its own bytes (an item takes at least one byte of
# pickle): a ResNet-50 experiment state in DeepMind's protocol 2 uses 1.0 per byte, nearly all
# of it array data copied once from text to bytes. Four leaves room, and memory stays within a
# small multiple of the file size.
ITEMS_PER_FILE_BYTE = 4
# ...plus this many for any file, so that small pickles never come near the limit; it is still
# only some tens of MB of memory.
MIN_ITEMS = 1 << 20
# What creating a placeholder class costs, in items: a class object takes about 2 KB.
_CLASS_ITEMS = 256




class _Budget:
  """Items (container slots, bytes, arguments) the file may still have built; see
  :data:`ITEMS_PER_FILE_BYTE`."""

  def __init__(self, file_bytes: int):
    self.file_bytes = file_bytes
    self.limit = ITEMS_PER_FILE_BYTE * file_bytes + MIN_ITEMS
    self.used = 0

  def charge(self, items: int, what: str) -> None:
    self.used += items
    if self.used > self.limit:
      raise UnsafePickleError(
          f"building {what} takes the file past {self.limit:,} items (container slots, bytes, "
          f"arguments), the most a {self.file_bytes:,}-byte file may build "
          f"({ITEMS_PER_FILE_BYTE} per byte + {MIN_ITEMS:,}): it calls constructors on shared "
          f"or counted data to expand in memory (a pickle bomb). A genuine checkpoint builds "
          f"each item from its own bytes; check where this file came from.")


def _length(value: Any) -> int:
  """How many items building from ``value`` copies: its length; 1 for what has none."""
  try:
    return len(value)
  except TypeError:
    return 1
  except OverflowError:  # len(range(10**30))
    return sys.maxsize


def _key_size(key: Any, limit: int = MAX_KEY_SIZE) -> int:
  """Objects that hashing ``key`` visits (tuples element by element); past ``limit``, limit + 1."""
  count, pending = 0, [key]
  while pending:
    value = pending.pop()
    count += 1
    if isinstance(value, tuple):
      if count + len(pending) + len(value) > limit:
        return limit + 1
      pending.extend(value)
  return count




def _check_keys(keys: Iterable[Any], what: str) -> None:
  for key in keys:
    if _key_size(key) > MAX_KEY_SIZE:
      raise UnsafePickleError(
          f"{what} has a key of more than {MAX_KEY_SIZE} nested objects; hashing it would visit "
          f"every path through it (a pickle bomb). DeepMind checkpoints key their dicts by "
          f"strings.")


class Opaque:
  """Stand-in for a class the reader does not rebuild; records what the pickle gave it.

  ``args`` are the constructor arguments (a namedtuple's fields, in order), ``state`` what
  ``__setstate__`` received, ``items``/``values`` what the pickle set or appended.
  """
  pickled_as = "?"
  args: tuple = ()
  state: Any = None
  _budget: _Budget | None = None  # set on the placeholder classes of one load

  def __new__(cls, *args, **kwargs):
    # dill rebuilds some classes through a factory call: then ``cls`` is an instance.
    klass = cls if isinstance(cls, type) else type(cls)
    if klass._budget is not None:
      klass._budget.charge(1 + len(args) + len(kwargs), klass.pickled_as)
    obj = object.__new__(klass)
    obj.args = args + tuple(kwargs.values())
    return obj

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __call__(self, *args, **kwargs):
    return type(self)(*args, **kwargs)

  def __setstate__(self, state):
    self.state = state

  def __setitem__(self, key, value):  # the structure scan checked the key
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
    if (isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict)
        and isinstance(state[0], (dict, type(None)))):
      state = {**(state[0] or {}), **state[1]}  # (dict state, slots state)
    if isinstance(state, dict):
      out += list(state.values())
    elif state is not None:
      out.append(state)
    return out

  def __repr__(self):
    return f"Opaque({self.pickled_as})"


class _NamedTuple(tuple):
  """What dill's namedtuple factory rebuilds: a tuple whose fields read by name. Built without
  ``collections.namedtuple``, which compiles source text made from the file's field names."""
  __slots__ = ()
  _fields: tuple[str, ...] = ()
  _budget: _Budget | None = None

  def __new__(cls, *args):
    if cls._budget is not None:
      cls._budget.charge(1 + len(args), cls.__name__)
    return tuple.__new__(cls, args)

  def __getattr__(self, name: str) -> Any:
    fields = type(self)._fields
    if name in fields and fields.index(name) < len(self):
      return self[fields.index(name)]
    raise AttributeError(name)

  def __setstate__(self, state):
    raise UnsafePickleError(f"the pickle gives the namedtuple {type(self).__name__} a state; "
                            f"namedtuples have none.")


class _Resolved:
  """A callable the file may name: ``fn`` behind ``check``, which validates the arguments and
  charges what the call builds. It has no attributes a file could set (BUILD is refused)."""
  __slots__ = ("name", "_fn", "_check")

  def __init__(self, name: str, fn: Callable[..., Any] | None,
               check: Callable[[str, tuple, dict], None]):
    self.name, self._fn, self._check = name, fn, check

  def __call__(self, *args, **kwargs):
    self._check(self.name, args, kwargs)
    return self._fn(*args, **kwargs)

  def renamed(self, name: str) -> _Resolved:
    return _Resolved(name, self._fn, self._check)

  def __setstate__(self, state):
    raise UnsafePickleError(f"the pickle gives {self.name} attributes (BUILD on a function); "
                            f"that would change it for the whole process, not rebuild data.")

  def __repr__(self):
    return f"<{self.name}, as resolved by relic's pickle reader>"


# ----------------------------------------------------------------------------- numpy


def _check_dtype(dtype: Any) -> np.dtype:
  """``dtype`` if it is a plain numeric dtype (what DeepMind's checkpoints hold), else raises."""
  if not (isinstance(dtype, np.dtype) and dtype.kind in "biufc" and dtype.fields is None
          and dtype.subdtype is None and dtype.metadata is None and not dtype.hasobject):
    shown = dtype.str if isinstance(dtype, np.dtype) else type(dtype).__name__
    raise UnsafePickleError(
        f"an array or scalar of dtype {shown}: the reader rebuilds plain numeric arrays only "
        f"(bool, integer, float, complex; no object, structured or sub-array dtypes), the only "
        f"kind DeepMind's checkpoints hold.")
  return dtype


def _elements(shape: Any) -> int:
  if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
    raise UnsafePickleError(f"an array's shape is {describe(shape)}, not a tuple of sizes.")
  count = 1
  for n in shape:
    count *= n
  return count


def _check_size(shape: tuple, dtype: np.dtype, data: Any) -> None:
  nbytes = _elements(shape) * dtype.itemsize
  if not isinstance(data, (bytes, bytearray)) or nbytes != len(data):
    held = f"{len(data):,} bytes" if isinstance(data, (bytes, bytearray)) else type(data).__name__
    raise UnsafePickleError(
        f"an array claims shape {shape} of {dtype.str} ({nbytes:,} bytes) but holds {held} "
        f"of data; an array is rebuilt only from its own bytes.")


class _DType:
  """``numpy.dtype(...)`` as numpy pickles it (name, then state), rebuilt without numpy's
  ``dtype.__setstate__``: that takes fields, which a file could nest or share without bound
  (numpy hashes and compares them recursively), and flags, which can mark a float dtype as
  holding Python objects, so that numpy would read an array's bytes as object pointers. Of the
  state only the byte order is used. Arrays and scalars take the checked ``value``."""
  __slots__ = ("_base", "value")

  def __init__(self, base: Any, align: Any = False, copy: Any = False):
    del align, copy
    if not (isinstance(base, str) and len(base) <= 32):
      raise UnsafePickleError(f"numpy.dtype({describe(base)}): numpy pickles a dtype by its "
                              f"short name ('f4', '<i8').")
    self._base = base
    self.value = _check_dtype(np.dtype(base))

  def __setstate__(self, state: Any) -> None:
    # (version, byte order, sub-array, names, fields, item size, alignment, flags[, metadata])
    # numpy writes item size and alignment -1 and flags 0 for every numeric dtype.
    if not (isinstance(state, tuple) and len(state) in (8, 9)
            and all(part is None for part in state[2:5] + state[8:])
            and all(type(part) is int for part in state[5:8]) and state[5:8] == (-1, -1, 0)
            and isinstance(state[1], str) and state[1] in ("<", ">", "|", "=")):
      raise UnsafePickleError(f"the pickle gives dtype {self._base!r} sub-arrays, fields, "
                              f"flags, metadata or an unknown byte order; the reader rebuilds "
                              f"plain numeric arrays only.")
    value = np.dtype(self._base)
    self.value = value.newbyteorder(state[1]) if state[1] in ("<", ">") else value


def _dtype_of(value: Any) -> np.dtype:
  return value.value if isinstance(value, _DType) else _check_dtype(value)


class _PickledArray(np.ndarray):
  """The arrays the reader rebuilds (``np.asarray`` gives the plain array): numpy pickles an
  array as an empty one and its state; this checks the state before numpy takes it."""

  def __setstate__(self, state: Any) -> None:
    if not (isinstance(state, tuple) and len(state) in (4, 5)):
      raise UnsafePickleError(f"an array's state is a {type(state).__name__}, not numpy's.")
    shape, dtype, fortran, data = state[-4:]
    dtype = _dtype_of(dtype)
    _check_size(shape, dtype, data)
    super().__setstate__(state[:-3] + (dtype, bool(fortran), data))


_NDARRAY = "numpy.ndarray"
# The functions numpy pickles arrays and scalars with, taken from numpy itself: numpy 1 names
# their module numpy.core.multiarray, numpy 2 numpy._core.multiarray; a file may use either.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_SCALAR = np.float32(0).__reduce__()[0]


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
  numpys = isinstance(typecode, (bytes, str)) and typecode in (b"b", "b")
  if not (isinstance(subtype, _Resolved) and subtype.name == _NDARRAY and numpys):
    raise UnsafePickleError(f"_reconstruct is asked for {describe(subtype)} of "
                            f"{describe(typecode)}; numpy pickles numpy.ndarray of 'b' there.")
  if _elements(shape) != 0:  # numpy writes (0,): the shape comes with the data
    raise UnsafePickleError(f"an array claims shape {shape} before its data; numpy pickles "
                            f"an empty array and sets shape and data together.")
  return _RECONSTRUCT(_PickledArray, (0,), typecode)


def _scalar(dtype: Any, data: Any) -> np.generic:
  dtype = _dtype_of(dtype)
  _check_size((), dtype, data)
  return _SCALAR(dtype, data)


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
  dtype = _dtype_of(dtype)
  _check_size(shape, dtype, buffer)
  return np.frombuffer(buffer, dtype).reshape(shape, order="F" if order == "F" else "C")


# ----------------------------------------------------------------------------- the allow-list


_BUILTINS = ("dict", "list", "set", "frozenset", "int", "float", "complex", "bool", "str",
             "bytes", "bytearray", "range", "object")
# Not tuple or slice: built by a call from a list, they could hold what the structure scan
# never saw inside a dict key (a slice hashes its members from Python 3.12).
_HASHING = {"dict", "set", "frozenset"}
_HAIKU_MAPPINGS = ("FlatMapping", "FlatMap", "frozendict")
_NUMPY_ALLOWED = "numpy.core.multiarray._reconstruct/scalar, numpy.core.numeric._frombuffer " \
                 "(or numpy._core.*), numpy.ndarray, numpy.dtype and numpy.dtypes.*DType"


def _check_copy(budget: _Budget, hashing: bool) -> Callable[[str, tuple, dict], None]:
  """Charges a constructor that copies its argument; checks the keys it will hash."""
  def check(name: str, args: tuple, kwargs: dict) -> None:
    budget.charge(1 + sum(_length(a) for a in args) + len(kwargs), name)
    if hashing and len(args) == 1 and isinstance(args[0], (list, tuple, set, frozenset)):
      items = args[0]
      if name.endswith(("dict", "FlatMapping", "OrderedDict")):
        items = (p[0] for p in items if isinstance(p, (list, tuple)) and len(p) == 2)
      _check_keys(items, name)
  return check


def _check_buffer(budget: _Budget) -> Callable[[str, tuple, dict], None]:
  """bytes(n) and bytearray(n) allocate n zero bytes: charge them as such."""
  copy = _check_copy(budget, hashing=False)

  def check(name: str, args: tuple, kwargs: dict) -> None:
    if args and isinstance(args[0], int):
      budget.charge(max(args[0], 0), f"{name}({args[0]:,})")
    copy(name, args, kwargs)
  return check


def _scalar_args(budget: _Budget) -> Callable[[str, tuple, dict], None]:
  """int, float, str ...: only from numbers, strings and bytes. ``str(a list)`` would write
  out every path through it, and a shared structure has exponentially many."""
  def check(name: str, args: tuple, kwargs: dict) -> None:
    for value in (*args, *kwargs.values()):
      if not isinstance(value, (str, bytes, bytearray, int, float, complex, type(None))):
        raise UnsafePickleError(f"{name}() is called on a {type(value).__name__}; the reader "
                                f"builds it from numbers, strings and bytes only.")
    budget.charge(1 + sum(_length(a) for a in args if isinstance(a, (str, bytes, bytearray))),
                  name)
  return check


def _check_encode(budget: _Budget) -> Callable[[str, tuple, dict], None]:
  """Protocol 2 writes bytes as ``_codecs.encode(text, 'latin1')``; nothing else is accepted
  (another codec name would import its module)."""
  def check(name: str, args: tuple, kwargs: dict) -> None:
    if (len(args) != 2 or kwargs or not isinstance(args[0], str)
        or args[1] not in ("latin1", "latin-1")):
      given = ", ".join(describe(a) for a in args)
      raise UnsafePickleError(f"{name} is called with ({given}); pickles call it with (text, "
                              f"'latin1') only.")
    budget.charge(1 + len(args[0]), name)
  return check


def _charge_one(budget: _Budget) -> Callable[[str, tuple, dict], None]:
  return lambda name, args, kwargs: budget.charge(1 + len(args) + len(kwargs), name)


def _refuse_call(name: str, args: tuple, kwargs: dict) -> None:
  del args, kwargs
  raise UnsafePickleError(
      f"the pickle calls {name} directly; numpy's own pickles only pass it to _reconstruct, "
      f"and a direct call can view a few bytes as an array of any size (zero strides).")


def _dtype_class(cls: type) -> Callable[[], _DType]:
  return lambda: _DType(np.dtype(cls()).str)


def _allow_list(budget: _Budget) -> dict[tuple[str, str], Any]:
  """The exact (module, name) pairs a file may name, resolved for one load."""
  allowed: dict[tuple[str, str], Any] = {}
  builtins = __import__("builtins")
  for name in _BUILTINS:
    if name in ("dict", "list", "set", "frozenset"):
      check = _check_copy(budget, hashing=name in _HASHING)
    elif name in ("bytes", "bytearray"):
      check = _check_buffer(budget)
    elif name == "object":
      check = _charge_one(budget)
    else:
      check = _scalar_args(budget)
    allowed["builtins", name] = allowed["__builtin__", name] = _Resolved(
        f"builtins.{name}", getattr(builtins, name), check)
  base_object = allowed["builtins", "object"]

  def reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copyreg._reconstructor (protocol 0 and 1) for what it is used here: an instance of an
    unknown class made by ``object.__new__``, i.e. a placeholder."""
    del state  # copyreg ignores it for base object as well; BUILD follows
    if base is not base_object or not (isinstance(cls, type) and issubclass(cls, Opaque)):
      raise UnsafePickleError(f"copyreg._reconstructor({describe(cls)}, {describe(base)}, "
                              f"...): the reader rebuilds only instances of unknown classes "
                              f"this way, as placeholders.")
    return cls()

  def create_namedtuple(name: Any, fieldnames: Any, modulename: Any = None,
                        defaults: Any = None) -> type:
    """dill's namedtuple factory, rebuilt: field names are all the reader needs."""
    del modulename, defaults
    if isinstance(fieldnames, str):
      fieldnames = fieldnames.replace(",", " ").split()
    if not (isinstance(name, str) and isinstance(fieldnames, (list, tuple))
            and all(isinstance(f, str) for f in fieldnames)):
      raise UnsafePickleError(f"dill's namedtuple factory is given {describe(name)}, "
                              f"{describe(fieldnames)}; it takes a name and field names.")
    budget.charge(_CLASS_ITEMS + len(fieldnames), f"namedtuple {name:.60}")
    return type(name, (_NamedTuple,), {"__slots__": (), "_fields": tuple(fieldnames),
                                       "_budget": budget})

  copying = _check_copy(budget, hashing=True)
  allowed["copyreg", "_reconstructor"] = _Resolved("copyreg._reconstructor", reconstructor,
                                                   _charge_one(budget))
  allowed["_codecs", "encode"] = _Resolved("_codecs.encode", codecs.encode, _check_encode(budget))
  allowed["collections", "OrderedDict"] = _Resolved("collections.OrderedDict",
                                                    collections.OrderedDict, copying)
  allowed["haiku", "FlatMapping"] = _Resolved("haiku FlatMapping", dict, copying)
  allowed["dill", "_create_namedtuple"] = _Resolved("dill._create_namedtuple", create_namedtuple,
                                                    _charge_one(budget))
  numpy_functions = {"multiarray._reconstruct": _reconstruct, "multiarray.scalar": _scalar,
                     "numeric._frombuffer": _frombuffer}
  for where, fn in numpy_functions.items():
    module, name = where.split(".")
    resolved = _Resolved(f"numpy.core.{where}", fn, _charge_one(budget))
    allowed[f"numpy.core.{module}", name] = allowed[f"numpy._core.{module}", name] = resolved
  allowed["numpy", "ndarray"] = _Resolved(_NDARRAY, None, _refuse_call)
  allowed["numpy", "dtype"] = _Resolved("numpy.dtype", _DType, _charge_one(budget))
  dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25
  for name in dir(dtypes) if dtypes is not None else ():
    dtype_class = getattr(dtypes, name)
    if name.endswith("DType") and isinstance(dtype_class, type):
      # Called, a DType class gives its dtype; as a _DType, so BUILD cannot give it fields.
      allowed["numpy.dtypes", name] = _Resolved(f"numpy.dtypes.{name}", _dtype_class(dtype_class),
                                                _charge_one(budget))
  return allowed


class SafeUnpickler(pickle.Unpickler):
  """Rebuilds numeric arrays, containers and Haiku mappings; inert placeholders for the rest.

  ``file_bytes``: the size of the file, which bounds what it may build (see
  :data:`ITEMS_PER_FILE_BYTE`); :func:`load` also checks the structure first, so use that.
  """

  def __init__(self, file: BinaryIO, file_bytes: int = 0):
    super().__init__(file)
    self._budget = _Budget(file_bytes)
    self._placeholders: dict[str, type] = {}
    self._allowed = _allow_list(self._budget)

  def find_class(self, module: str, name: str) -> Any:
    # Nothing here imports: every branch returns an object resolved when this module loaded,
    # or a placeholder class made here.
    if (module, name) in self._allowed:
      return self._allowed[module, name]
    # Haiku and dill moved these between modules over their versions.
    if module.startswith("haiku.") and name in _HAIKU_MAPPINGS:
      return self._allowed["haiku", "FlatMapping"].renamed(f"{module}.{name}")
    if module.startswith("dill.") and name == "_create_namedtuple":
      return self._allowed["dill", "_create_namedtuple"].renamed(f"{module}.{name}")
    if module.split(".")[0] == "numpy":
      raise UnsafePickleError(
          f"the pickle names '{module}.{name}'. Under numpy the reader resolves only "
          f"{_NUMPY_ALLOWED}, and it imports no module a file names: importing runs the module "
          f"(numpy.f2py.__main__ runs f2py). DeepMind's checkpoints name nothing else; if the "
          f"file is yours, save plain numpy arrays in it.")
    return self._placeholder(module, name)

  def _placeholder(self, module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in self._placeholders:
      self._budget.charge(_CLASS_ITEMS, f"placeholder class {key:.100}")
      self._placeholders[key] = type(name, (Opaque,), {"pickled_as": key,
                                                       "_budget": self._budget})
    return self._placeholders[key]



def load(file: BinaryIO, source: str = "<pickle>") -> Any:
  """Unpickles ``file`` with :class:`SafeUnpickler` after checking its structure.

  Args:
    file: a binary file (read into memory first if it cannot seek).
    source: how errors name the file, e.g. its path.

  Raises:
    UnsafePickleError: the file asks for something the reader refuses; the message says what.
  """
  if not getattr(file, "seekable", lambda: False)():
    file = io.BytesIO(file.read())
  start, size = file.tell(), pickle_scan.stream_size(file)
  try:
    pickle_scan.check_structure(file)
    file.seek(start)
    return SafeUnpickler(file, size).load()
  except UnsafePickleError as error:
    raise UnsafePickleError(f"{source}: {error}") from None
