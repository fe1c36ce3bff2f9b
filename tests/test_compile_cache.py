"""The relic command's default persistent compilation cache (relic/compile_cache.py)."""

import os
import stat

import jax
import jax.numpy as jnp
import pytest
from jax.experimental.compilation_cache import compilation_cache

from relic import compile_cache


@pytest.fixture
def no_cache_chosen(monkeypatch, tmp_path):
  """JAX with no cache directory of its own and a fresh $RELIC_CACHE; the suite's cache is put
  back afterwards (JAX opens its cache once per process: reset_cache makes it open again)."""
  saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size)
  monkeypatch.setenv("RELIC_CACHE", str(tmp_path / "relic_cache"))
  monkeypatch.delenv("RELIC_COMPILATION_CACHE", raising=False)
  jax.config.update("jax_compilation_cache_dir", None)
  compilation_cache.reset_cache()
  yield tmp_path / "relic_cache" / "jax" / compile_cache.cpu_kind()
  jax.config.update("jax_compilation_cache_dir", saved[0])
  jax.config.update("jax_compilation_cache_max_size", saved[1])
  compilation_cache.reset_cache()


def test_on_by_default_private_bounded_and_filled_by_a_compilation(no_cache_chosen):
  path = compile_cache.enable()
  assert path == str(no_cache_chosen) == jax.config.jax_compilation_cache_dir
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o700          # the cache is trusted code
  assert jax.config.jax_compilation_cache_max_size == compile_cache.MAX_BYTES
  assert not os.listdir(path)
  jax.jit(lambda x: jnp.tanh(x) * 3.0 + 1.0)(jnp.arange(11.0)).block_until_ready()
  assert os.listdir(path)                                        # the program is kept


def test_one_directory_per_kind_of_cpu():
  kind = compile_cache.cpu_kind()
  assert kind == compile_cache.cpu_kind() and len(kind.rsplit("-", 1)[1]) == 12
  assert compile_cache.default_dir().endswith(os.path.join("jax", kind))


def test_a_directory_chosen_for_jax_wins(no_cache_chosen, tmp_path):
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
  assert compile_cache.enable() == str(tmp_path / "mine")
  assert not no_cache_chosen.exists()


def test_off_leaves_jax_without_a_cache(no_cache_chosen, monkeypatch):
  monkeypatch.setenv("RELIC_COMPILATION_CACHE", "off")
  assert compile_cache.enable() is None
  assert jax.config.jax_compilation_cache_dir is None and not no_cache_chosen.exists()


def test_an_unwritable_home_runs_without_a_cache(no_cache_chosen, monkeypatch, tmp_path):
  blocked = tmp_path / "file"
  blocked.write_text("")
  monkeypatch.setenv("RELIC_CACHE", str(blocked))               # a file where a folder must go
  assert compile_cache.enable() is None
  assert jax.config.jax_compilation_cache_dir is None


def test_the_relic_command_turns_it_on(tmp_path):
  """``relic`` opens the cache before its start-up checks (a refused config here: exit 2)."""
  import subprocess
  import sys
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env["RELIC_CACHE"] = str(tmp_path / "relic_cache")
  result = subprocess.run(
      [sys.executable, "-m", "relic.main", "--config=configs/resnet50.py:runlocal",
       f"--workdir={tmp_path / 'run'}", "--config.train.batch_size=-1"],
      env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and "train.batch_size" in result.stderr, result.stderr[-2000:]
  path = tmp_path / "relic_cache" / "jax" / compile_cache.cpu_kind()
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
