"""User errors: a config that cannot work, reported before any compute with the field and the fix.

Its own module, importing nothing of relic, so data sources, schedules and jobs can raise it
without importing the config schema. Every command line tool ends a user error the same way,
:func:`exit_with`: one message on stderr, ``relic: <field>: <problem>. Fix: <fix>.``, no
traceback, exit code :data:`EXIT_CODE`.
"""

import contextlib
import importlib
import sys
from types import ModuleType
from typing import NoReturn

EXIT_CODE = 2  # a user error (as argparse's usage errors); 1 stays a crash's


class ConfigError(ValueError):
  """A config value that cannot work; raised before any compute starts.

  ``problems`` holds its messages, each naming a field and the fix: one, or several when
  :class:`Problems` collected the failures of independent checks, to be fixed in one go.
  """

  def __init__(self, *problems: str):
    self.problems = list(problems)
    if len(problems) > 1:
      problems = (f"{len(problems)} problems:\n" + "\n".join(f"- {_indent(p)}" for p in problems),)
    super().__init__(*problems)


def _indent(text: str, prefix: str = "  ") -> str:
  return text.replace("\n", "\n" + prefix)


class Problems:
  """Collects the ConfigErrors of independent checks, so a run reports them all at once.

    problems = Problems()
    problems.require(config.loss.temperature > 0, "loss.temperature", ...)
    problems.check(source_check, config.data)
    problems.raise_if_any()   # one ConfigError holding every message, in order
  """

  def __init__(self):
    self.messages: list[str] = []
    self._first: ConfigError | None = None

  def add(self, error: ConfigError) -> None:
    self._first = self._first or error
    for message in getattr(error, "problems", None) or [str(error)]:
      if message not in self.messages:  # the same finding reached by two checks
        self.messages.append(message)

  def check(self, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; its ConfigError is collected (then None is returned)."""
    try:
      return fn(*args, **kwargs)
    except ConfigError as e:
      self.add(e)
      return None

  def require(self, ok: bool, field: str, problem: str, fix: str) -> bool:
    """:func:`require`, collected; returns ``ok``."""
    self.check(require, ok, field, problem, fix)
    return bool(ok)

  def raise_if_any(self) -> None:
    """A single problem is raised as it came (its type kept: e.g. a FileNotFoundError too)."""
    if self._first is not None and self.messages == (self._first.problems or [str(self._first)]):
      raise self._first
    if self.messages:
      raise ConfigError(*self.messages)


def require(ok: bool, field: str, problem: str, fix: str) -> None:
  """Raises ``ConfigError("config.FIELD: PROBLEM. Fix: FIX.")`` unless ``ok``."""
  if not ok:
    raise ConfigError(f"config.{field}: {problem}. Fix: {fix}.")


def check_each(items: dict, check, what: str, field: str) -> None:
  """``check(item)`` for every ``name: item``; one ConfigError names every item that failed."""
  problems = []
  for name, item in items.items():
    try:
      check(item)
    except ConfigError as e:
      problems.append(f"  {name}: {_indent(str(e), '    ')}")
  if problems:
    raise ConfigError(f"some {what}:\n" + "\n".join(problems) + "\nFix: prepare them (the "
                      f"messages say how) or leave them out of config.{field}.")


class MissingDependencyError(ConfigError, ImportError):
  """An optional package a feature needs is not installed (also an ImportError)."""


def require_module(name: str, purpose: str, install: str) -> ModuleType:
  """Imports module ``name``; MissingDependencyError naming ``install`` (the command that
  provides it) when it is not installed."""
  try:
    return importlib.import_module(name)
  except ImportError as e:
    raise MissingDependencyError(f"{purpose} needs the Python package {name.split('.')[0]!r}, "
                                 f"which is not installed ({e}). Fix: {install}.") from None


def exit_with(error: ConfigError) -> NoReturn:
  """Prints ``relic: MESSAGE`` once on stderr and exits with :data:`EXIT_CODE`."""
  sys.stdout.flush()
  sys.stderr.write(f"relic: {error}\n")
  sys.stderr.flush()
  raise SystemExit(EXIT_CODE)


@contextlib.contextmanager
def exit_on_user_error():
  """A command line tool's body: a ConfigError raised in it ends the process by
  :func:`exit_with`."""
  try:
    yield
  except ConfigError as e:
    exit_with(e)
