"""Checksums of every array of a checkpoint: computed before the save, stored in its JSON
``meta`` item (under :data:`relic.checkpoints.layout.CHECKSUMS_KEY`) and verified on restore.

Why: a committed checkpoint can be damaged later (bit rot, a bad copy, a file of another step)
in ways that leave every file readable. Orbax and TensorStore then restore wrong values without
a word: zstd stores incompressible weights as raw blocks and OCDBT checks no value. A checksum
of the values themselves does not depend on Orbax's file layout and covers every file that
holds them.

The checksum of an array: its bits as little-endian uint32 words ``w_i`` in C order (1- and
2-byte elements widened to one word each, 8-byte elements as two words), each mixed with its
position ``i`` by murmur3's 32-bit finaliser ``fmix`` (a bijection of uint32 that spreads every
bit over the word), and two sums modulo 2**32, written as 16 hex digits::

    s1 = sum_i fmix(w_i ^ i * 0x9E3779B9)        s2 = sum_i fmix((w_i ^ 0x5BD1E995) + i * 0xC2B2AE3D)

Integer sums wrap exactly, so neither depends on the order of the reduction: not on the
sharding, the device count or the number of processes. A change of one word always changes both
sums (``fmix`` is a bijection); words that moved, or several changed words, leave both sums
unchanged with a chance of about 2**-64. A plain sum of the words would miss sign bits flipped
in pairs (they cancel modulo 2**32), and a float sum worse: ``-0.0`` and ``0.0`` add the same,
and rounding hides small changes.

Device arrays are summed on their devices by a jitted reduction per leaf (compiled once per
shape, dtype and sharding; then one pass over the state in memory, far cheaper than the write);
host arrays by NumPy. Both give the same digits for the same values.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

ALGORITHM = "fmix32-position-sums/v1"
_MOD = 2**32
_POSITION_1, _FLIP_2, _POSITION_2 = 0x9E3779B9, 0x5BD1E995, 0xC2B2AE3D
_HOST_CHUNK = 1 << 22   # host arrays are summed in chunks of this many words (bounded memory)


class CheckpointIntegrityError(ValueError):
  """A checkpoint's arrays differ from the checksums written with them."""


def _name(path: tuple[Any, ...]) -> str:
  """``online_params/encoder/conv_init/kernel``: the same for a saved tree, its restore and a
  partial read of it (dict keys, sequence indices and attribute names alike)."""
  parts = []
  for key in path:
    for attribute in ("key", "idx", "name"):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def _summable(dtype: Any) -> bool:
  """Plain numbers and booleans; not PRNG keys, strings or complex numbers (never in a state)."""
  try:
    dtype = np.dtype(dtype)
  except TypeError:
    return False
  return (dtype.itemsize in (1, 2, 4, 8) and not jnp.issubdtype(dtype, jnp.complexfloating)
          and (dtype == np.bool_ or jnp.issubdtype(dtype, jnp.number)))


def _host_words(array: np.ndarray) -> np.ndarray:
  """The array's uint32 words, flat, in C order."""
  flat = np.ascontiguousarray(array).reshape(-1)
  if flat.dtype.byteorder == ">":
    flat = flat.astype(flat.dtype.newbyteorder("<"))
  size = flat.dtype.itemsize
  if size == 1:
    return flat.view(np.uint8).astype(np.uint32)
  if size == 2:
    return flat.view(np.uint16).astype(np.uint32)
  return flat.view(np.uint32)   # 4 bytes: one word; 8 bytes: two words, the low one first


def _fmix(h: Any, xp: Any) -> Any:
  """murmur3's 32-bit finaliser on uint32 arrays (``xp``: numpy or jax.numpy; both wrap)."""
  h = h ^ (h >> xp.uint32(16))
  h = h * xp.uint32(0x85EBCA6B)
  h = h ^ (h >> xp.uint32(13))
  h = h * xp.uint32(0xC2B2AE35)
  return h ^ (h >> xp.uint32(16))


def _host_sums(array: np.ndarray) -> tuple[int, int]:
  words = _host_words(array)
  s1 = s2 = 0
  for start in range(0, words.size, _HOST_CHUNK):
    chunk = words[start:start + _HOST_CHUNK]
    index = np.arange(start, start + chunk.size, dtype=np.uint64).astype(np.uint32)
    s1 += int(_fmix(chunk ^ (index * np.uint32(_POSITION_1)), np).sum(dtype=np.uint64))
    s2 += int(_fmix((chunk ^ np.uint32(_FLIP_2)) + index * np.uint32(_POSITION_2),
                    np).sum(dtype=np.uint64))
  return s1 % _MOD, s2 % _MOD


def _device_words(x: jax.Array) -> jax.Array:
  """The uint32 words of ``x`` (8-byte elements: a trailing axis of two, low word first)."""
  size = np.dtype(x.dtype).itemsize
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  if size == 1:
    return jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
  if size == 2:
    return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
  return jax.lax.bitcast_convert_type(x, jnp.uint32)


@jax.jit
def _device_sums(x: jax.Array) -> jax.Array:
  words = _device_words(x)
  # The C-order flat index from one iota per axis: no reshape, so a sharded array is summed
  # where it lies and only the two partial sums per device are combined.
  index = jnp.zeros(words.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(words.ndim)):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * np.uint32(stride)
    stride = (stride * words.shape[axis]) % _MOD
  mixed_1 = _fmix(words ^ (index * np.uint32(_POSITION_1)), jnp)
  mixed_2 = _fmix((words ^ np.uint32(_FLIP_2)) + index * np.uint32(_POSITION_2), jnp)
  return jnp.stack([jnp.sum(mixed_1, dtype=jnp.uint32), jnp.sum(mixed_2, dtype=jnp.uint32)])


def checksums(tree: Any) -> dict[str, str]:
  """The checksum of every array leaf of ``tree`` (jax or NumPy), by its path name.

  With several processes every process must call it (device arrays are summed by one
  computation over all their shards); every process gets the same result.
  """
  result: dict[str, str] = {}
  on_devices: dict[str, jax.Array] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if isinstance(leaf, jax.Array):
      if _summable(leaf.dtype):
        # One small computation per leaf, compiled once per shape, dtype and sharding (a
        # ResNet-50 state has a few dozen): one computation over all leaves would take XLA
        # far longer to compile than it saves, and could not mix leaves on different devices.
        on_devices[_name(path)] = _device_sums(leaf)
    elif isinstance(leaf, (np.ndarray, np.generic)) and _summable(np.asarray(leaf).dtype):
      s1, s2 = _host_sums(np.asarray(leaf))
      result[_name(path)] = f"{s1:08x}{s2:08x}"
  for name, (s1, s2) in jax.device_get(on_devices).items():
    result[name] = f"{int(s1):08x}{int(s2):08x}"
  return result


def record(tree: Any) -> dict[str, Any]:
  """What is stored with a checkpoint: the algorithm and the checksum of every array."""
  return {"algorithm": ALGORITHM, "arrays": checksums(tree)}


def verify(tree: Any, stored: Mapping[str, Any] | None, where: str) -> bool:
  """Checks the arrays of ``tree`` (all of a checkpoint's state, or a part of it) against the
  checksums ``stored`` with it.

  Returns:
    True if every array with a stored checksum matched; False if there is nothing to verify
    against (a checkpoint written before checksums, or by another algorithm).

  Raises:
    CheckpointIntegrityError: an array differs; the message names ``where`` and the arrays.
  """
  if not stored or stored.get("algorithm") != ALGORITHM:
    return False
  expected = stored.get("arrays") or {}
  found = checksums(tree)
  bad = sorted(name for name, value in found.items()
               if name in expected and expected[name] != value)
  if bad:
    listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    raise CheckpointIntegrityError(
        f"{where} fails its checksum check: {len(bad)} of {len(found)} arrays differ from the "
        f"checksums written with it ({listed}). Its files changed after the save (a failing "
        "disk, a bad copy, a file of another checkpoint); it must not be used.")
  return any(name in expected for name in found)
