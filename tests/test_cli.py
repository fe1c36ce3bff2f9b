"""The command line: ``--help``, the one error path of every user error (one ``relic:`` message,
exit code 2, no traceback, before TensorFlow is imported), the console output of a run."""

import json
import logging as std_logging
import os
import pathlib
import subprocess
import sys
import time

import pytest

from relic import config_files, errors, jobs, main
from relic import config as config_lib

ROOT = pathlib.Path(main.__file__).resolve().parents[1]
# Runs a module as ``python -m MODULE`` does, then reports whether TensorFlow was imported.
# ``BLOCK`` (comma-separated) names packages made unimportable, as if not installed.
_WRAPPER = """
import atexit, os, runpy, sys
for name in filter(None, os.environ.get("BLOCK", "").split(",")):
  sys.modules[name] = None
atexit.register(lambda: sys.stderr.write(
    "tensorflow imported: %s\\n" % ("tensorflow" in sys.modules)))
module = sys.argv.pop(1)
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def run_module(module: str, *args: str, block: str = "", **env: str):
  return subprocess.run([sys.executable, "-c", _WRAPPER, module, *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "BLOCK": block, **env})


def user_error(result) -> str:
  """The one ``relic:`` message of a run that stopped on a user error before TensorFlow."""
  assert result.returncode == errors.EXIT_CODE, result.stderr
  assert "Traceback" not in result.stderr + result.stdout
  assert result.stderr.rstrip().endswith("tensorflow imported: False"), result.stderr
  messages = [line for line in result.stderr.splitlines() if line.startswith("relic:")]
  assert len(messages) == 1, result.stderr
  message = result.stderr[result.stderr.index("relic:"):].rsplit("tensorflow imported:", 1)[0]
  assert message.count("Fix:") == max(1, message.count("\n- ")), message
  return message


def test_help_lists_jobs_configs_and_examples():
  as_module = run_module("relic.main", "--help")
  # The console script `relic` runs relic.main.cli from another main module: the same text.
  script = subprocess.run([sys.executable, "-c", "import sys; sys.argv[0] = 'relic'; "
                           "from relic.main import cli; cli()", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert as_module.returncode == script.returncode == 0, as_module.stderr + script.stderr
  assert as_module.stdout == script.stdout
  text = as_module.stdout
  for name, summary in jobs.SUMMARIES.items():
    assert f"  {name}" in text and summary in text
  assert set(jobs.SUMMARIES) == set(jobs.JOBS)
  for name, line in config_files.shipped().items():
    assert f"  {name}" in text and line in text
  assert "relic --config=quickstart --workdir=" in text
  assert "relic --config=resnet50" in text and "relic --config=linear_probe" in text
  assert "--config.FIELD=VALUE" in text and "--workdir=DIR" in text and "exit code 2" in text


def test_unloadable_config_file(tmp_path):
  broken = tmp_path / "broken.py"
  broken.write_text("from relic.config import base_config\n\ndef get_config(arg=None:\n")
  message = user_error(run_module("relic.main", f"--config={broken}", f"--workdir={tmp_path}/w"))
  assert f"--config={broken}: the config file does not load (SyntaxError" in message
  assert f"{broken}:3" in message and f"Fix: correct {broken}" in message
  assert not (tmp_path / "w").exists()
  # A config argument it does not take, and one that fails inside get_config: as messages.
  with pytest.raises(errors.ConfigError, match=r"--config=.*resnet50.py:epocs=3: resnet50: "
                     r"unknown config argument.*Fix: this config accepts \['epochs', 'runlocal'\]"):
    main.load_config_file(config_files.resolve("resnet50:epocs=3"))
  failing = tmp_path / "failing.py"
  failing.write_text("def get_config(arg=None):\n  return {}['x']\n")
  with pytest.raises(errors.ConfigError, match=rf"get_config failed \(KeyError: 'x' \({failing}:2"):
    main.load_config_file(str(failing))


def test_refused_values_missing_folder_and_encoder_in_one_message(tmp_path):
  message = user_error(run_module(
      "relic.main", "--config=linear_probe:runlocal", f"--workdir={tmp_path}/w",
      f"--config.pretrained={tmp_path}/no_run", "--config.linear_probe.batch_size=0",
      "--config.loss.temperature=0", "--config.data.source=folder",
      f"--config.data.path={tmp_path}/no_images"))
  assert message.startswith("relic: 4 problems:\n")
  assert "- config.loss.temperature: must be > 0, got 0.0. Fix:" in message
  assert f"- config.pretrained={tmp_path}/no_run does not exist. Fix: pass" in message
  assert "- config.linear_probe.batch_size: must be > 0, got 0. Fix:" in message
  assert f"- config.data.path: image folder '{tmp_path}/no_images' not found. Fix:" in message
  assert not (tmp_path / "w").exists()


def test_missing_dataset_and_masks_together_naming_the_directory_searched(tmp_path):
  # ImageNet pretraining on a machine without ImageNet or saliency masks: both at once.
  message = user_error(run_module("relic.main", "--config=resnet50", f"--workdir={tmp_path}/w",
                                  TFDS_DATA_DIR=str(tmp_path / "tfds")))
  assert message.startswith("relic: 2 problems:\n")
  assert "- config.data.mask_prob: is 0.1 but the 'tfds' source has no saliency masks" in message
  assert "set config.data.mask_path=DIR" in message
  # ... naming the job that makes them, for the same data.
  assert ("`python -m relic.main --config=saliency --config.data.source=tfds "
          "--config.data.dataset=imagenet2012 --workdir=MASKS_RUN`") in message
  assert (f"- config.data.dataset: tfds dataset 'imagenet2012' is not prepared in "
          f"data_dir='{tmp_path}/tfds'") in message
  assert f"tfds build imagenet2012 --data_dir={tmp_path}/tfds" in message
  assert "~/tensorflow_datasets" not in message
  # A folder run: the missing mask folder and the missing image folder, together.
  config = config_lib.base_config()
  config.data.update(dict(source="folder", path=str(tmp_path / "images"), mask_prob=0.1,
                          mask_path=str(tmp_path / "masks")))
  with pytest.raises(errors.ConfigError) as error:
    main.check(config)
  assert [p.split(":")[0] for p in error.value.problems] == ["config.data.mask_path",
                                                             "config.data.path"]


def test_missing_torch_names_the_install_command(tmp_path):
  message = user_error(run_module("relic.interop.export_torch", f"--pretrained={tmp_path}",
                                  f"--out={tmp_path}/r50.pth", block="torch"))
  assert "The PyTorch export needs the Python package 'torch', which is not installed" in message
  assert "Fix: pip install torch torchvision" in message
  assert not (tmp_path / "r50.pth").exists()


def test_batch_not_divisible_by_the_devices_is_a_user_error(tmp_path):
  # Found as the job builds its mesh (TensorFlow may be loaded by then), on the same path.
  result = run_module("relic.main", "--config=quickstart:runlocal", f"--workdir={tmp_path}/w",
                      "--config.train.batch_size=60")
  assert result.returncode == errors.EXIT_CODE, result.stderr
  assert "Traceback" not in result.stderr + result.stdout
  messages = [line for line in result.stderr.splitlines() if line.startswith("relic:")]
  assert messages == ["relic: config.train.batch_size: 60 is not divisible by the 8 devices. "
                      "Fix: use a multiple of 8 (e.g. 56)."], result.stderr


def test_misspelled_field_names_the_closest_ones():
  config = config_files.resolve("quickstart")
  loaded = main.load_config_file(config)
  with pytest.raises(errors.ConfigError, match=r'config.model.detph: config.model has no field '
                     r"'detph'. Did you mean \"depth\" instead of \"detph\"\? Fix: use "
                     r"--config.model.depth=18 \(the fields of config.model: base_width"):
    main.check_field(loaded, "model.detph", "18")
  with pytest.raises(errors.ConfigError, match=r"config.nosuch.x: config has no field 'nosuch'\. "
                     r"Fix: use one of its fields \(the fields of config: "):
    main.check_field(loaded, "nosuch.x")
  with pytest.raises(errors.ConfigError, match="config.model.depth is an int, not a section"):
    main.check_field(loaded, "model.depth.x")
  main.check_field(loaded, "data.views.large.num")


def test_one_console_line_per_logged_step(tmp_path, caplog):
  from relic.metrics import MetricsLogger
  caplog.set_level(std_logging.INFO)
  logger = MetricsLogger(str(tmp_path), total_steps=4, global_batch_size=8)
  logger.start(0)
  for step in (1, 2, 3, 4):
    logger.write(step, {"loss": 1.0 / step})
  logger.write(4, {"knn_top1": 10.0}, prefix="monitor")
  logger.close()
  # relic's line of each step, and no second one from clu's logging writer ("[1] loss=1.0").
  lines = [r.getMessage() for r in caplog.records if "loss" in r.getMessage()
           or "knn_top1" in r.getMessage()]
  assert [line.split(" |")[0] for line in lines] == [
      "[train] step 1/4", "[train] step 2/4", "[train] step 3/4", "[train] step 4/4",
      "[monitor] step 4/4"]
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 5     # files unchanged
  assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())


def test_devices_line_and_cpu_wheel_warning(monkeypatch, caplog):
  from relic import distributed
  caplog.set_level(std_logging.INFO)
  monkeypatch.setattr(distributed, "_gpu_hint", lambda: "nvidia-smi is on PATH")
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  distributed.log_devices()
  assert any(r.getMessage().startswith("JAX devices: 8 x cpu (cpu); 8 on this process, 1 "
                                        "process(es).") for r in caplog.records)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == std_logging.WARNING]
  assert len(warnings) == 1 and 'pip install -U "jax[cuda12]"' in warnings[0]
  assert "nvidia-smi is on PATH" in warnings[0]
  caplog.clear()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")       # the CPU on purpose: no warning
  distributed.log_devices()
  assert not [r for r in caplog.records if r.levelno == std_logging.WARNING]


def test_startup_summary_is_the_difference_from_the_config_file():
  defaults = main.load_config_file(config_files.resolve("quickstart:runlocal"))
  config = main.load_config_file(config_files.resolve("quickstart:runlocal"))
  config.train.stop_at_step = 2
  summary = main.startup_summary(config, "/tmp/w", defaults)
  assert summary == ("Job pretrain in /tmp/w (full config: /tmp/w/config.json); 1 field(s) differ "
                     "from the config file:\n  train.stop_at_step=2 (was 0)")
  assert summary.count("\n") == 1                   # not the whole config
  assert "the config is the config file as it is" in main.startup_summary(defaults, "/w", defaults)


def test_a_finished_run_prints_its_results_instead_of_recomputing(tmp_path, capsys):
  from relic import checkpoints
  config = main.load_config_file(config_files.resolve("quickstart:runlocal"))
  checkpoints.write_config(config, str(tmp_path))
  assert not main._finished(config, str(tmp_path))               # no results yet
  (tmp_path / "results.json").write_text(json.dumps({"top1": 1.0}))
  (tmp_path / "results.md").write_text("| the table |")
  assert main._finished(config, str(tmp_path))
  assert "| the table |" in capsys.readouterr().out
  config.train.log_every_steps = 1                                 # changes no result
  assert main._finished(config, str(tmp_path))
  config.loss.temperature = 0.5                                    # another experiment
  assert not main._finished(config, str(tmp_path))
  # Results older than the latest config written (that run has not finished): recompute.
  config.loss.temperature = 0.2
  checkpoints.write_config(config, str(tmp_path))                  # config.json, again
  old = time.time() - 100
  for name in ("results.json", "results.md"):
    os.utime(tmp_path / name, (old, old))
  assert not main._finished(config, str(tmp_path))
