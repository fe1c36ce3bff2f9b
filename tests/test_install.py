"""Non-editable install check (about 30 s; no download).

``pip install .`` (not editable) of a copy of this checkout into a fresh virtual environment
created with ``--system-site-packages``, so the dependencies already installed are reused
(``--no-deps --no-build-isolation --no-index``). Then, from a directory outside the repository,
the installed package must resolve ``quickstart`` to its own shipped config and start the
runlocal quickstart until its first checkpoint. The current environment, the checkout and pip's
cache are left untouched: everything is built and written under pytest's temporary directory.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.conftest import USER_ENV_DROPS

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ["setup.py", "README.md", "requirements.txt", "LICENSE", "CITATION.cff", "relic",
           "configs"]


def clean_env(**extra) -> dict[str, str]:
  """This process's environment without what points at the checkout or is set for the suite
  only (simulated devices, XLA's optimisation off)."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and k not in USER_ENV_DROPS}
  return {**env, "JAX_PLATFORMS": "cpu", "PIP_NO_CACHE_DIR": "1",
          "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


def run(args, cwd, timeout=300, **env) -> subprocess.CompletedProcess:
  result = subprocess.run([str(a) for a in args], cwd=cwd, env=clean_env(**env),
                          capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, f"{args}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
  return result


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory):
  """The python of a fresh venv holding a non-editable install of a copy of this checkout."""
  tmp = tmp_path_factory.mktemp("install")
  source = tmp / "source"
  for name in SOURCES:
    path = ROOT / name
    if path.is_dir():
      shutil.copytree(path, source / name,
                      ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    else:
      source.mkdir(exist_ok=True)
      shutil.copy2(path, source / name)
  venv = tmp / "venv"
  # --without-pip: the system pip (visible through --system-site-packages) installs into the
  # venv, since it installs into sys.prefix.
  run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], cwd=tmp)
  python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
  run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
       "--no-index", "--ignore-installed", source], cwd=tmp)
  return python


def test_installed_package_resolves_its_own_configs(venv_python, tmp_path):
  code = ("import relic, relic.config_files as c; print(relic.__file__); "
          "print(c.resolve('quickstart')); print(c.resolve('resnet50:runlocal')); "
          "print(len(c.shipped()))")
  lines = run([venv_python, "-c", code], cwd=tmp_path).stdout.split()
  venv = venv_python.parent.parent
  package = pathlib.Path(lines[0]).parent
  assert package.is_relative_to(venv) and "site-packages" in package.parts, lines
  assert pathlib.Path(lines[1]) == package / "configs" / "quickstart.py"
  assert pathlib.Path(lines[1]).is_file()
  assert lines[2] == f"{package / 'configs' / 'resnet50.py'}:runlocal"
  assert int(lines[3]) == len([p for p in (ROOT / "configs").glob("*.py")
                               if not p.name.startswith("_")])


def test_installed_quickstart_starts_from_outside_the_repository(venv_python, tmp_path):
  main = run([venv_python, "-c", "import relic.main as m; print(m.__file__)"], cwd=tmp_path)
  assert pathlib.Path(main.stdout.strip()).is_relative_to(venv_python.parent.parent)
  wired = "config_files" in pathlib.Path(main.stdout.strip()).read_text()
  if wired:  # relic.main resolves names itself
    config = "quickstart:runlocal"
  else:
    config = run([venv_python, "-c", "import relic.config_files as c; "
                  "print(c.resolve('quickstart:runlocal'))"], cwd=tmp_path).stdout.strip()
  workdir = tmp_path / "workdir"
  run([venv_python, "-m", "relic.main", f"--config={config}", f"--workdir={workdir}",
       "--config.train.stop_at_step=1"], cwd=tmp_path, timeout=600,
      RELIC_CACHE=str(tmp_path / "cache"))
  assert (workdir / "config.json").is_file()
  assert (workdir / "checkpoints" / "1").is_dir(), sorted(p.name for p in workdir.iterdir())
