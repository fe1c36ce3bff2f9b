"""User errors: a config that cannot work, reported before any compute with the field and the fix.

Its own module, importing nothing of relic, so data sources, schedules and jobs can raise it
without importing the config schema.
"""


class ConfigError(ValueError):
  """A config value that cannot work; raised before any compute starts."""


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
      problems.append(f"  {name}: {e}")
  if problems:
    raise ConfigError(f"some {what}:\n" + "\n".join(problems) + "\nFix: prepare them (the "
                      f"messages say how) or leave them out of config.{field}.")
