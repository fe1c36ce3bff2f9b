"""Entry point: ``python -m relic.main --config=configs/NAME.py[:ARG] --workdir=DIR``.

Parses the ml_collections config (``--config.a.b=value`` overrides any field), starts JAX's
distributed runtime when several processes take part, validates the config before any compute,
writes it into the workdir and runs the job named by ``config.job``.
"""

from __future__ import annotations

import os

# TensorFlow only feeds the input pipeline: it must never take accelerator memory.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from relic import distributed  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/quickstart.py or configs/resnet50.py:epochs=300.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str) -> None:
  """Validates ``config`` and runs its job in ``workdir`` (also usable from Python)."""
  from relic import config as config_lib  # pylint: disable=import-outside-toplevel
  from relic import checkpoints, jobs

  config_lib.validate(config)
  job = jobs.get_job(config.job)
  if hasattr(job, "validate"):
    job.validate(config)
  checkpoints.write_config(config, workdir)
  logging.info("Job %s in %s with config:\n%s", config.job, workdir, config)
  job.run(config, workdir)


def _quiet_checkpoint_library_logs() -> None:
  """Orbax logs every file operation at INFO; keep its warnings and errors, drop the rest, so
  the console shows the run's own progress lines."""
  import logging as std_logging  # pylint: disable=import-outside-toplevel

  class _Filter(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
      return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname

  logging.get_absl_handler().addFilter(_Filter())


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from relic.errors import ConfigError  # pylint: disable=import-outside-toplevel
  _quiet_checkpoint_library_logs()
  distributed.hide_accelerators_from_tensorflow()
  distributed.maybe_initialize()
  try:
    run(_CONFIG.value, _WORKDIR.value)
  except ConfigError as e:
    # A bad config is the user's to fix: say what and how, without a stack trace.
    logging.error("%s", e)
    raise SystemExit(f"relic: invalid config: {e}") from None


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, after relic.config.check_renamed (for a clear message on old fields)."""
  from relic.config import ConfigError, check_renamed  # pylint: disable=import-outside-toplevel
  try:
    check_renamed(argv[1:])
  except ConfigError as e:
    raise SystemExit(f"relic: invalid config: {e}") from None
  return app.parse_flags_with_usage(argv)


def cli() -> None:
  """Console script ``relic``, identical to ``python -m relic.main``."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  cli()
