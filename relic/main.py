"""Entry point: ``relic --config=NAME[:ARG] --workdir=DIR``, the same as ``python -m relic.main``.

``--config`` names a shipped config (``quickstart``, ``resnet50:epochs=300``; ``relic --help``
lists them) or a config file; ``--config.a.b=value`` overrides any field. Starts JAX's
distributed runtime when several processes take part, checks the config, the data and the
pretrained encoder before any compute (and before TensorFlow is imported), refuses to continue
another run's workdir before anything is written there (:func:`relic.resume_check.check_workdir`),
writes the config into the workdir and runs the job named by ``config.job``; a finished run
prints its results.

Every user error (a config file that is missing or does not load, a misspelled or mistyped
override, a value the checks refuse, missing data or a missing pretrained encoder, a missing
optional package) ends the run the same way: one message on stderr, ``relic: <field>:
<problem>. Fix: <fix>.``, exit code 2 (:data:`relic.errors.EXIT_CODE`), no traceback; the
problems of the start-up checks are reported together.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import re
import textwrap
import traceback

# TensorFlow only feeds the input pipeline: it must never take accelerator memory.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from relic import compile_cache, distributed, errors  # noqa: E402
from relic.errors import ConfigError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The experiment: a shipped config by name (listed above), e.g. quickstart or "
    "resnet50:epochs=300, or a config file, e.g. configs/quickstart.py or my_config.py:ARG.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory: checkpoints, metrics, "
                               "results; rerun with the same one to resume.")
_FLAGS_SHOWN = ("config", "workdir", "coordinator_address", "num_processes", "process_id")
_HELP_ARGS = ("-h", "-help", "--help", "-?", "--helpshort", "-helpshort")
# The config file's own values (before the --config.* overrides), for the start-up summary.
_file_config: ml_collections.ConfigDict | None = None


def run(config, workdir: str, *, defaults: ml_collections.ConfigDict | None = None) -> None:
  """Checks ``config`` and runs its job in ``workdir`` (also usable from Python); a run that
  finished already prints its results instead. ``defaults``: what the start-up log compares the
  config with (the config file's own values; None: ``base_config()``)."""
  from relic import checkpoints, resume_check  # pylint: disable=import-outside-toplevel

  job = check(config)
  distributed.hide_accelerators_from_tensorflow()  # TensorFlow may load from here on
  distributed.log_devices()
  if _finished(config, workdir):
    return
  # Before the first write to the workdir: a refused run leaves it as it found it.
  resume_check.check_workdir(config, workdir)
  checkpoints.write_config(config, workdir)
  logging.info("%s", startup_summary(config, workdir, defaults))
  job.run(config, workdir)


def check(config):
  """Every start-up check of ``config`` (the shared fields, then the job's: its settings, the
  data, the pretrained encoder), before any compute; returns the job's module.

  Raises one ConfigError listing every problem found. No TensorFlow is imported unless the data
  is present and the job needs its metadata (the split sizes, the classes of a tfds dataset).
  """
  from relic import config as config_lib  # pylint: disable=import-outside-toplevel
  from relic import jobs

  problems = errors.Problems()
  problems.check(config_lib.validate, config)
  job = problems.check(jobs.get_job, config.job)
  if job is not None and hasattr(job, "validate"):
    try:
      job.validate(config)
    except ConfigError as e:
      problems.add(e)
    except Exception:  # pylint: disable=broad-except
      if not problems.messages:
        raise
      # A field already reported (an unknown depth, say) can break a job's check in other
      # ways: the problems found so far are the ones to fix first.
  problems.raise_if_any()
  return job


# Fields a finished run's results do not depend on: a rerun that changes only these prints them.
RESULT_NEUTRAL = ("*.log_every_steps", "*.checkpoint_every_steps", "*.eval_every_steps",
                  "*.keep_checkpoints", "*.keep_every_steps", "train.stop_at_step",
                  "train.view_images", "model.remat")


def _same_results(saved: dict, config) -> bool:
  """Whether ``config`` computes what the config ``saved`` (a config.json) computed."""
  import fnmatch  # pylint: disable=import-outside-toplevel
  differ = set(config_changes(ml_collections.ConfigDict(saved), config, names_only=True))
  differ |= set(config_changes(config, ml_collections.ConfigDict(saved), names_only=True))
  return all(any(fnmatch.fnmatchcase(f, p) for p in RESULT_NEUTRAL) for f in differ)


def _finished(config, workdir: str) -> bool:
  """Prints the results of a finished run of this config and returns True: results.json and
  results.md exist, newer than the workdir's latest config file, and that config computes what
  ``config`` computes (it differs at most in :data:`RESULT_NEUTRAL` fields). A rerun of the
  same command (a pretraining's, whose final evaluation follows its last checkpoint, too) so
  does not recompute; another config does."""
  import jax  # pylint: disable=import-outside-toplevel
  from etils import epath
  from relic.checkpoints import layout

  path = epath.Path(workdir)
  done = False
  if jax.process_index() == 0:
    results, markdown = path / layout.RESULTS_JSON, path / layout.RESULTS_MD
    configs = [c for c in (path / layout.CONFIG_JSON, path / layout.CONFIG_RESUMED_JSON)
               if c.exists()]
    if configs and results.exists() and markdown.exists():
      latest = max(configs, key=lambda c: c.stat().mtime)
      done = (min(results.stat().mtime, markdown.stat().mtime) >= latest.stat().mtime and
              _same_results(json.loads(latest.read_text()), config))
  if jax.process_count() > 1:  # every process takes the lead's decision
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    done = bool(multihost_utils.broadcast_one_to_all(done))
  if done:
    logging.info("%s: this config's run finished already; its results (%s) follow. Delete "
                 "them to recompute.", workdir, path / layout.RESULTS_MD)
    if jax.process_index() == 0:
      print((path / layout.RESULTS_MD).read_text(), flush=True)
  return done


def _flat(config) -> dict[str, object]:
  """``{'model.depth': 50, ...}`` of a ConfigDict (leaves only)."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      flat.update({f"{key}.{k}": v for k, v in _flat(value).items()})
    else:
      flat[key] = value
  return flat


def config_changes(config, defaults, *, names_only: bool = False) -> list[str]:
  """``'FIELD=VALUE (was DEFAULT)'`` (or ``FIELD``) for every field of ``config`` that differs
  from ``defaults``."""
  now, before = _flat(config), _flat(defaults)
  differ = [k for k in sorted(now) if k not in before or _plain(now[k]) != _plain(before[k])]
  if names_only:
    return differ
  return [f"{k}={now[k]!r}" + (f" (was {before[k]!r})" if k in before else "") for k in differ]


def _plain(value):
  """Tuples and lists alike (a config read back from JSON has lists)."""
  return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def startup_summary(config, workdir: str, defaults=None) -> str:
  """The job, the workdir and the config as its difference from ``defaults`` (the config
  file's values; None: ``base_config()``): the full config is in WORKDIR/config.json."""
  from relic import config as config_lib  # pylint: disable=import-outside-toplevel
  reference = "the config file" if defaults is not None else "base_config()"
  changes = config_changes(config, defaults if defaults is not None else config_lib.base_config())
  head = f"Job {config.job} in {workdir} (full config: {os.path.join(workdir, 'config.json')})"
  if not changes:
    return f"{head}; the config is {reference} as it is."
  return (f"{head}; {len(changes)} field(s) differ from {reference}:\n  "
          + "\n  ".join(changes))


def _quiet_checkpoint_library_logs() -> None:
  """Orbax logs every file operation at INFO; keep its warnings and errors, drop the rest, so
  the console shows the run's own progress lines."""
  import logging as std_logging  # pylint: disable=import-outside-toplevel

  class _Filter(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
      return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname

  logging.get_absl_handler().addFilter(_Filter())


def main(argv) -> None:
  with errors.exit_on_user_error():
    if len(argv) > 1:
      raise ConfigError(f"unexpected arguments {argv[1:]}: relic takes flags only. Fix: write "
                        "them as --NAME=VALUE (relic --help lists the flags).")
    _quiet_checkpoint_library_logs()
    compile_cache.enable()
    distributed.maybe_initialize()
    run(_CONFIG.value, _WORKDIR.value, defaults=_file_config)


def usage() -> str:
  """``relic --help``: the jobs, the shipped configs, the flags and two example commands."""
  from relic import config_files, jobs  # pylint: disable=import-outside-toplevel

  width = max(map(len, jobs.SUMMARIES)) + 2
  job_lines = [f"  {name:<{width}}{summary}" for name, summary in jobs.SUMMARIES.items()]
  values = {"config": "NAME[:ARG]", "workdir": "DIR", "coordinator_address": "HOST:PORT",
            "num_processes": "N", "process_id": "I"}
  described = [(f"--{name}={values[name]}", flags.FLAGS[name].help) for name in _FLAGS_SHOWN]
  described.insert(1, ("--config.FIELD=VALUE", "Overrides one field of the config, e.g. "
                       "--config.train.batch_size=256 (every field and its default: "
                       "relic/config.py)."))
  described.append(("--helpfull", "Every flag, absl's own included."))
  flag_lines = [f"  {flag}\n" + textwrap.fill(text, 96, initial_indent=" " * 6,
                                              subsequent_indent=" " * 6)
                for flag, text in described]
  return "\n".join([
      "relic: ReLICv2 self-supervised learning for ResNets (JAX/Flax), one job per run.",
      "",
      "Usage: relic --config=NAME[:ARG] --workdir=DIR [--config.FIELD=VALUE ...]",
      "       (python -m relic.main takes the same flags)",
      "",
      "Jobs (config.job, set by the config):",
      *job_lines,
      "",
      "Shipped configs (--config=NAME[:ARG]; each file's docstring has its command, expected "
      "result and compute):",
      config_files.listing("  "),
      "",
      "Flags:",
      *flag_lines,
      "",
      "Examples:",
      "  # Pretraining on the built-in dataset, then linear + kNN on its frozen features "
      "(minutes on a CPU):",
      "  relic --config=quickstart --workdir=/tmp/relic_quickstart",
      "  # ImageNet pretraining (ResNet-50, 1000 epochs), then the linear probe of its encoder:",
      "  relic --config=resnet50 --config.data.data_dir=TFDS_DIR --config.data.mask_path=MASKS "
      "--workdir=RUNS/r50",
      "  relic --config=linear_probe --config.data.data_dir=TFDS_DIR --config.pretrained=RUNS/r50 "
      "--workdir=RUNS/r50_probe",
      "",
      "A mistake in the command line, the config, the data or the pretrained encoder stops the",
      'run before any compute with one message, "relic: <field>: <problem>. Fix: <fix>.", and',
      "exit code 2.",
  ])


def _flag_value(args: list[str], name: str) -> tuple[int, str | None, bool]:
  """``(index, value, inline)`` of flag ``--name`` in ``args`` (the last one, as absl takes):
  ``--name=value`` (inline) or ``--name value``; ``(-1, None, False)`` when absent."""
  found: tuple[int, str | None, bool] = (-1, None, False)
  for i, arg in enumerate(args):
    if arg in (f"--{name}", f"-{name}"):
      found = (i + 1, args[i + 1], False) if i + 1 < len(args) else (i, "", True)
    elif arg.startswith((f"--{name}=", f"-{name}=")):
      found = (i, arg.partition("=")[2], True)
  return found


def _override_fields(args: list[str]) -> list[tuple[str, str | None]]:
  """``(FIELD, VALUE or None)`` of every ``--config.FIELD[=VALUE]`` (and ``--noconfig.FIELD``)."""
  fields = []
  for arg in args:
    name = arg.lstrip("-")
    if arg.startswith("-") and name.startswith(("config.", "noconfig.")):
      field, equals, value = name.partition(".")[2].partition("=")
      fields.append((field, value if equals else None))
  return fields


def _error_location(error: BaseException, path: str) -> str:
  """``TYPE: MESSAGE (PATH:LINE)``, the line being the deepest one of ``path`` involved."""
  line = getattr(error, "lineno", None) if isinstance(error, SyntaxError) else None
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if os.path.abspath(f.filename) == os.path.abspath(path)]
  line = frames[-1].lineno if frames else line
  where = f" ({path}:{line})" if line else ""
  message = error.msg if isinstance(error, SyntaxError) else str(error)
  return f"{type(error).__name__}: {message}{where}"


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """``get_config(ARG)`` of the config file ``PATH[:ARG]``, loaded as ml_collections loads it;
  a ConfigError names the file, the line and the error when it does not load."""
  from importlib import machinery  # pylint: disable=import-outside-toplevel

  path, _, arg = spec.partition(":")
  try:
    loader = machinery.SourceFileLoader(f"relic_config_file_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  (the user's file: any error is theirs)
    raise ConfigError(f"--config={spec}: the config file does not load "
                      f"({_error_location(e, path)}). Fix: correct {path}.") from None
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"--config={spec}: {path} has no get_config function. Fix: define "
                      "get_config(arg=None) returning an ml_collections.ConfigDict, as the shipped "
                      "configs do (e.g. configs/quickstart.py).")
  try:
    return module.get_config(arg) if arg else module.get_config()
  except ConfigError as e:
    raise ConfigError(f"--config={spec}: {e}") from None
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"--config={spec}: get_config failed ({_error_location(e, path)}). Fix: "
                      f"correct {path}, or the argument after ':'.") from None


def check_field(config: ml_collections.ConfigDict, field: str, value: str | None = None) -> None:
  """ConfigError unless ``config.FIELD`` exists: a misspelled ``--config.FIELD`` override,
  with the closest field names."""
  node, parents = config, []
  for part in field.split("."):
    where = ".".join(["config", *parents])
    if not isinstance(node, ml_collections.ConfigDict):
      raise ConfigError(f"config.{field}: {where} is {_a(type(node).__name__)}, not a section "
                        f"with fields. Fix: override {where} itself, e.g. --{where}=VALUE.")
    if part not in node:
      names = sorted(node.keys())
      close = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
      hint = f' Did you mean "{close[0]}" instead of "{part}"?' if close else ""
      fix = (f"--{where}.{close[0]}={value if value is not None else 'VALUE'}" if close else
             "one of its fields")
      raise ConfigError(f"config.{field}: {where} has no field {part!r}.{hint} Fix: use {fix} "
                        f"(the fields of {where}: {', '.join(names)}).")
    node = node[part]
    parents.append(part)


def _a(noun: str) -> str:
  return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _example(value) -> str:
  """A command-line spelling of ``value``."""
  text = str(value)
  return f'"{text}"' if any(c in text for c in " ()[],'") else text


def _flag_error(error: Exception) -> ConfigError:
  """absl's flag error (a value it cannot parse, an unknown flag) as a ConfigError."""
  text = str(error).strip()
  match = re.match(r"flag --(config\.[\w.]+)=(.*?): (.*)$", text, re.S)
  if match and _file_config is not None:
    field, value, reason = match.groups()
    current = _file_config
    for part in field.split(".")[1:]:
      current = current[part]
    return ConfigError(f"{field}: cannot take the value {value!r} ({reason.strip()}). Fix: give "
                       f"{_a(type(current).__name__)}, e.g. --{field}={_example(current)} (the "
                       "config file's value).")
  return ConfigError(f"{text.rstrip('.')}. Fix: use the flags that relic --help lists.")


def check_command_line(args: list[str]) -> list[str]:
  """relic's checks of the command line before absl parses it, reported together:
  ``--config`` and ``--workdir`` are given, the config (a shipped config's name or a file,
  :func:`relic.config_files.resolve`) loads, every ``--config.FIELD`` override names a field
  that exists, no renamed field is used. Returns ``args`` with ``--config`` as its file's path.
  """
  global _file_config
  from relic import config_files  # pylint: disable=import-outside-toplevel
  from relic.config import RENAMED, check_renamed

  problems = errors.Problems()
  index, spec, inline = _flag_value(args, "config")
  if not spec:
    problems.add(ConfigError("--config is missing. Fix: pass --config=NAME, e.g. "
                             "--config=quickstart (relic --help lists the shipped configs)."))
  if not _flag_value(args, "workdir")[1]:
    problems.add(ConfigError("--workdir is missing. Fix: pass --workdir=DIR, the run's "
                             "directory (checkpoints, metrics, results; the same one resumes)."))
  problems.check(check_renamed, args)
  if spec:
    try:
      resolved = config_files.resolve(spec)
    except ConfigError:
      problems.add(ConfigError(
          f"--config={spec}: no such config file (looked in {os.getcwd()}) and no shipped "
          f"config of that name. Fix: name a shipped config, e.g. --config=quickstart or "
          f"--config=resnet50:runlocal (shipped: {', '.join(config_files.names())}), or give "
          "the path of a config file (a Python file with get_config(arg=None))."))
    else:
      args = list(args)
      args[index] = f"--config={resolved}" if inline else resolved
      _file_config = problems.check(load_config_file, resolved)
      if _file_config is not None:
        for field, value in _override_fields(args):
          if field not in RENAMED:
            problems.check(check_field, _file_config, field, value)
  problems.raise_if_any()
  return args


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, after relic's own checks of the command line, so that every mistake in
  it ends as one ``relic: ...`` message (exit code 2); ``--help`` prints :func:`usage`."""
  if any(arg in _HELP_ARGS for arg in argv[1:]):
    print(usage(), flush=True)
    raise SystemExit(0)
  with errors.exit_on_user_error():
    args = check_command_line(argv[1:])
    try:
      return flags.FLAGS([argv[0], *args])
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
      raise _flag_error(e) from None


def cli() -> None:
  """Console script ``relic``, identical to ``python -m relic.main``."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  cli()
