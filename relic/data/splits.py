"""Split strings for the non-tfds sources, in tfds's slicing syntax.

``'train'``, ``'train[:10000]'``, ``'train[10000:]'``, ``'test[:50%]'``: the same strings work
for every source, so a config (e.g. the linear probe's held-out ``train[:10000]``) does not
change with it. The tfds source passes them to tfds unchanged. The folder sources (image
folder, FGVC-Aircraft) also join whole splits with '+' (``'train+val'``), as tfds does.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

_SPEC = re.compile(r"^(?P<name>[\w\-]+)(\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")

# Names a config may use for a split the source calls differently.
ALIASES = {"validation": ("val", "test"), "val": ("validation", "test"),
           "test": ("validation", "val")}


def parse(spec: str) -> tuple[str, str | None, str | None]:
  """'train[:10%]' -> ('train', None, '10%'); raises ValueError on anything else."""
  match = _SPEC.match(spec.replace(" ", ""))
  if not match:
    raise ValueError(f"Cannot parse split {spec!r}; use NAME or NAME[start:stop] with integer "
                     "or percent bounds, e.g. 'train[:10000]' or 'train[90%:]'.")
  return match["name"], match["start"], match["stop"]


def resolve_name(name: str, available: tuple[str, ...]) -> str | None:
  """``name`` if available, else the first available alias, else None."""
  if name in available:
    return name
  return next((alias for alias in ALIASES.get(name, ()) if alias in available), None)


def bounds(start: str | None, stop: str | None, size: int) -> tuple[int, int]:
  """Absolute [start, stop) of a slice of a split with ``size`` examples (Python semantics)."""
  def absolute(bound: str | None, default: int) -> int:
    if bound is None:
      return default
    value = round(int(bound[:-1]) * size / 100) if bound.endswith("%") else int(bound)
    return value + size if value < 0 else value

  first, last = absolute(start, 0), absolute(stop, size)
  return max(0, min(first, size)), max(0, min(last, size))


def parts(spec: str) -> list[str]:
  """The splits a '+' join names (``'train+val'`` -> ``['train', 'val']``); ``[spec]`` for a
  single, possibly sliced, split. The parts of a join are whole splits."""
  items = spec.replace(" ", "").split("+")
  if len(items) > 1 and any(parse(item)[1:] != (None, None) for item in items):
    raise ValueError(f"Cannot slice the parts of the joined split {spec!r}; join whole splits "
                     "('train+val') or slice a single one ('train[:100]').")
  return items


def select(spec: str, listing: Callable[[str], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """The columns of ``spec`` given ``listing(name)``, a split's columns in its stored order: the
  listings of a join one after the other, or the slice of one split."""
  names = parts(spec)
  if len(names) > 1:
    listings = [listing(name) for name in names]
    return {k: np.concatenate([columns[k] for columns in listings]) for k in listings[0]}
  name, start, stop = parse(spec)
  columns = listing(name)
  first, last = bounds(start, stop, len(next(iter(columns.values()))))
  return {k: v[first:last] for k, v in columns.items()}
