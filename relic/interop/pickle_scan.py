"""The structure scan of a pickle, before anything in it is built: how deep its objects nest,
how large its dict keys are and how many opcodes it has, followed through the stack and memo the
way the unpickler will, with data arguments skipped rather than read.

Hashing a tuple is recursive and uncached and printing or comparing nested objects recurses in
C, so a few hundred bytes of pickle can crash the process or hash for ever once unpickled; the
scan refuses such files first. relic/interop/pickle_reader.py runs it on every file it loads.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from typing import Any, BinaryIO

# Deepest nesting of objects. DeepMind's experiment states nest 9 (ReLICv2) to 16 (BYOL) levels,
# counting what rebuilds an array (dict, state namedtuple, optimiser state tuples, Haiku
# mappings, array state tuples); CPython's own recursion limit is 1,000, and the C stack
# overflows only at tens of thousands of levels.
MAX_NESTING = 1000
# Most objects hashing one dict key or set item may visit: tuples are hashed element by
# element with no cache. DeepMind's keys are strings (1); a small tuple of numbers fits easily.
MAX_KEY_SIZE = 256
# Most opcodes a file may have. A ResNet-200 2x experiment state (online and target networks,
# BatchNorm state, momentum) is about 6,000 arrays of some 25 opcodes each, a few hundred
# thousand in all; the structure scan takes about a second per million.
MAX_OPCODES = 10_000_000


class UnsafePickleError(pickle.UnpicklingError, ValueError):
  """The file asks for something the reader refuses to do; nothing of it was loaded."""


def describe(value: Any) -> str:
  """``value`` for a message, in bounded time: a repr of a shared structure can be huge."""
  if isinstance(value, (str, bytes)):
    return repr(value[:60])
  return f"a {type(value).__name__}"

# Opcodes whose argument is data of a length given first: (bytes of the length, signed).
_LENGTH_PREFIX = {pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
                  pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
                  pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
                  pickletools.TAKEN_FROM_ARGUMENT8U: (8, False)}
_MUTATORS = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})
# Which of the objects an opcode takes (after its MARK, if it has one) it hashes.
_KEYED = {"SETITEM": slice(1, 2), "SETITEMS": slice(0, None, 2), "DICT": slice(0, None, 2),
          "ADDITEMS": slice(None), "FROZENSET": slice(None)}
_SPECIAL = frozenset({"STOP", "MARK", "POP", "DUP", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT",
                      "GET", "BINGET", "LONG_BINGET", "PROTO", "FRAME"})


class _Op:
  """What the scan needs of an opcode, worked out once from ``pickletools``' description."""
  __slots__ = ("name", "arg", "leaf", "mark", "below", "pushes")

  def __init__(self, op: pickletools.OpcodeInfo):
    before = op.stack_before
    self.name, self.arg = op.name, op.arg
    self.mark = pickletools.markobject in before
    self.below = before.index(pickletools.markobject) if self.mark else len(before)
    self.pushes = len(op.stack_after)
    # Pushes a new object and takes none (NONE, BININT, BINUNICODE, EMPTY_LIST, GLOBAL ...).
    self.leaf = not before and self.pushes == 1 and op.name not in _SPECIAL


_OPS = {op.code.encode("latin-1"): _Op(op) for op in pickletools.opcodes}
_LEAF = (1, 1)  # (nesting depth, key size) of an object made from nothing


def _malformed(file: BinaryIO, what: str) -> UnsafePickleError:
  return UnsafePickleError(f"not a pickle the reader can check: {what} at byte {file.tell()}.")


def _argument(file: BinaryIO, op: _Op) -> bytes:
  """An opcode's argument; data arguments (bytes, strings) are skipped, not read."""
  arg = op.arg
  if arg is None:
    return b""
  if arg.n >= 0:
    data = file.read(arg.n)
  elif arg.n == pickletools.UP_TO_NEWLINE:
    data = file.readline()
    if arg.name == "stringnl_noescape_pair":  # GLOBAL and INST: module and name lines
      data += file.readline()
  else:
    width, signed = _LENGTH_PREFIX[arg.n]
    prefix = file.read(width)
    length = int.from_bytes(prefix, "little", signed=signed)
    if len(prefix) < width or length < 0:
      raise _malformed(file, f"a bad length for {op.name}")
    file.seek(length, io.SEEK_CUR)
    return b""
  if (arg.n >= 0 and len(data) < arg.n) or (arg.n < 0 and not data.endswith(b"\n")):
    raise _malformed(file, f"{op.name} cut short")
  return data


def _memo_index(file: BinaryIO, name: str, argument: bytes) -> int:
  if name in ("GET", "PUT"):  # protocol 0 writes the index as text
    if not argument.strip().isdigit():
      raise _malformed(file, f"{name} of memo entry {describe(argument)}")
    return int(argument)
  return int.from_bytes(argument, "little")


def check_structure(file: BinaryIO) -> None:
  """Follows the opcodes the way the unpickler will, keeping for each object on its stack (and
  in its memo) how deep it nests and how many objects hashing it could visit; refuses nesting
  past :data:`MAX_NESTING`, dict keys or set items past :data:`MAX_KEY_SIZE` and more than
  :data:`MAX_OPCODES` opcodes.

  Both are upper bounds: an object built by an opcode counts everything the opcode took.
  Containers filled later (APPEND, SETITEM, BUILD) grow their depth, not their key size:
  they are unhashable or hashed by identity, and the tuples inside them were counted when made.
  """
  stack: list[tuple[int, int]] = []  # (nesting depth, key size) per object on the stack
  marks: list[int] = []
  memo: dict[int, tuple[int, int]] = {}
  read = file.read

  def pop(count: int) -> list[tuple[int, int]]:
    if len(stack) - (marks[-1] if marks else 0) < count:
      raise _malformed(file, "a stack underflow")
    popped = stack[len(stack) - count:]
    del stack[len(stack) - count:]
    return popped

  for _ in range(MAX_OPCODES):
    op = _OPS.get(read(1))
    if op is None:
      raise _malformed(file, "an unknown opcode or the end of the file before STOP")
    argument = _argument(file, op) if op.arg is not None else b""
    if op.leaf:  # most opcodes: the fast path
      stack.append(_LEAF)
      continue
    name = op.name
    if name == "STOP":
      return
    if name == "MARK":
      marks.append(len(stack))
    elif name == "POP":
      if marks and marks[-1] == len(stack):
        marks.pop()
      else:
        pop(1)
    elif name == "DUP":
      stack.extend(pop(1) * 2)
    elif name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
      if len(stack) <= (marks[-1] if marks else 0):
        raise _malformed(file, f"{name} with nothing to store")
      memo[len(memo) if name == "MEMOIZE" else _memo_index(file, name, argument)] = stack[-1]
    elif name in ("GET", "BINGET", "LONG_BINGET"):
      index = _memo_index(file, name, argument)
      if index not in memo:
        raise _malformed(file, f"{name} of memo entry {index}, never stored")
      stack.append(memo[index])
    elif name not in ("PROTO", "FRAME"):
      items: list[tuple[int, int]] = []
      if op.mark:
        if not marks:
          raise _malformed(file, f"{name} without a MARK")
        items = stack[marks[-1]:]
        del stack[marks.pop():]
      taken = pop(op.below) + items
      if name in _KEYED:
        for _, size in (items if op.mark else taken)[_KEYED[name]]:
          if size > MAX_KEY_SIZE:
            raise UnsafePickleError(
                f"a dict key or set item of more than {MAX_KEY_SIZE} nested objects at byte "
                f"{file.tell()}; hashing it would visit every path through it (a pickle "
                f"bomb). DeepMind checkpoints key their dicts by strings.")
      if name in _MUTATORS:
        (depth, size), rest = taken[0], taken[1:]
        cell = (max([depth] + [1 + d for d, _ in rest]), size)
      else:
        cell = (1 + max([d for d, _ in taken], default=0),
                min(1 + sum(s for _, s in taken), MAX_KEY_SIZE + 1))
      if cell[0] > MAX_NESTING:
        raise UnsafePickleError(
            f"objects nested more than {MAX_NESTING} levels deep at byte {file.tell()}; "
            f"DeepMind checkpoints nest at most about twenty, and deeper nesting is a pickle bomb "
            f"(hashing or printing it overflows the C stack).")
      stack.extend([cell] * op.pushes)
  raise UnsafePickleError(
      f"more than {MAX_OPCODES:,} opcodes; DeepMind's largest checkpoints have a few hundred "
      f"thousand (their bytes are in a few thousand arrays), so this file is not one of them.")


def stream_size(file: BinaryIO) -> int:
  """Bytes from the current position of seekable ``file`` to its end; the position is kept."""
  start = file.tell()
  end = file.seek(0, io.SEEK_END)
  file.seek(start)
  return end - start

