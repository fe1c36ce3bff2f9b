"""Shipped configs found by name from any directory (relic/config_files.py)."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

from relic import config_files
from relic.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if not p.name.startswith("_"))


def run_python(code: str, cwd) -> subprocess.CompletedProcess:
  """``python -c code`` in ``cwd`` with this checkout's relic (and nothing of the repository
  root's working directory) on the path."""
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)


def test_quickstart_resolves_and_loads_from_outside_the_repository(tmp_path):
  code = """
import importlib.util, sys
from absl import flags
from ml_collections import config_flags
from relic import config_files
path = config_files.resolve("quickstart")
assert path.endswith("quickstart.py"), path
spec = importlib.util.spec_from_file_location("quickstart", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
assert module.get_config().job == "pretrain"
config_flags.DEFINE_config_file("config")
flags.FLAGS(["prog", "--config=" + config_files.resolve("configs/quickstart.py:runlocal")])
assert flags.FLAGS.config.job == "pretrain", flags.FLAGS.config.job
assert flags.FLAGS.config.train.batch_size == 64  # the runlocal variant
print(path)
"""
  result = run_python(code, tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert pathlib.Path(result.stdout.strip()) == ROOT / "configs" / "quickstart.py"


def test_resolving_imports_neither_jax_nor_tensorflow(tmp_path):
  code = ("import sys; from relic import config_files as c; c.resolve('resnet50:runlocal'); "
          "c.shipped(); heavy = {'jax', 'tensorflow', 'ml_collections', 'absl', 'numpy'} & "
          "set(sys.modules); assert not heavy, heavy")
  result = run_python(code, tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("spec", ["quickstart", "quickstart.py", "configs/quickstart.py",
                                  "./configs/quickstart.py", " quickstart "])
def test_name_forms_from_any_directory(spec, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert config_files.resolve(spec) == str(ROOT / "configs" / "quickstart.py")


def test_argument_suffix_is_kept(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert config_files.resolve("resnet50:runlocal") == f"{ROOT / 'configs' / 'resnet50.py'}:runlocal"
  assert config_files.resolve("configs/resnet50.py:epochs=300").endswith("resnet50.py:epochs=300")


def test_an_existing_file_wins_and_comes_back_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "quickstart.py").write_text('"""My own quickstart."""\n')
  assert config_files.resolve("quickstart.py:runlocal") == f"{tmp_path / 'quickstart.py'}:runlocal"
  assert config_files.resolve(str(tmp_path / "quickstart.py")) == str(tmp_path / "quickstart.py")
  assert config_files.resolve("quickstart") == str(ROOT / "configs" / "quickstart.py")


@pytest.mark.parametrize("spec", ["quickstrat", "resnet51:runlocal", "/nowhere/quickstart.py",
                                  "other/quickstart.py", ""])
def test_unknown_configs_fail_naming_the_shipped_ones(spec, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(config_files.ConfigFileNotFoundError) as error:
    config_files.resolve(spec)
  assert isinstance(error.value, ConfigError)  # relic.main reports it without a stack trace
  message = str(error.value)
  assert all(name in message for name in CONFIGS), message
  assert "--config=quickstart" in message


def test_every_shipped_config_has_a_one_line_summary():
  summaries = config_files.shipped()
  assert list(summaries) == CONFIGS == config_files.names()
  assert "quickstart" in summaries and "resnet50" in summaries
  for name, line in summaries.items():
    assert line, f"configs/{name}.py has no docstring"
    docstring = ast.get_docstring(ast.parse((ROOT / "configs" / f"{name}.py").read_text()))
    lines = docstring.splitlines()
    # PEP 257: the summary is the whole first line, so --help does not cut a sentence.
    assert len(lines) == 1 or not lines[1].strip(), f"configs/{name}.py: {lines[:2]}"
  listing = config_files.listing()
  assert len(listing.splitlines()) == len(CONFIGS) and "quickstart" in listing
