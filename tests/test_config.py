"""Configs: every shipped config builds and validates; bad configs fail before any compute."""

import pathlib
import subprocess
import sys

import pytest
from ml_collections import config_flags  # noqa: F401  (the loader used by relic.main)

from relic import errors
from relic import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRETRAIN_CONFIGS = ["resnet50", "resnet50_2x", "resnet50_4x", "resnet101", "resnet152",
                    "resnet200", "resnet200_2x"]


def load(name, arg=None):
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("name", PRETRAIN_CONFIGS)
def test_pretrain_configs_follow_the_paper(name):
  config = load(name)
  config_lib.validate(config)
  assert config.job == "pretrain"
  assert config.train.batch_size == 4096 and config.train.num_epochs == 1000
  assert (config.optim.base_lr, config.optim.weight_decay, config.ema.base_rate) == (
      0.2, 1.5e-6, 0.996)
  assert (config.loss.temperature, config.loss.beta) == (0.1, 1.0)
  assert (config.data.views.large.num, config.data.views.large.size) == (4, 224)
  assert (config.data.views.small.num, config.data.views.small.size) == (2, 96)
  depth = int(name.split("_")[0].removeprefix("resnet"))
  width = int(name.split("_")[1][0]) if "_" in name else 1
  assert (config.model.depth, config.model.width_multiplier) == (depth, width)
  assert "python -m relic.main --config=configs/" + name in load.__globals__["ROOT"].joinpath(
      "configs", f"{name}.py").read_text()


@pytest.mark.parametrize("epochs,expected", [(300, (0.3, 1e-6, 0.99)), (100, (0.45, 1e-6, 0.99))])
def test_epoch_presets(epochs, expected):
  config = load("resnet50", f"epochs={epochs}")
  assert config.train.num_epochs == epochs
  assert (config.optim.base_lr, config.optim.weight_decay, config.ema.base_rate) == expected


def test_unknown_preset_and_argument_fail_with_choices():
  with pytest.raises(ValueError, match=r"choose one of \[100, 300, 1000\]"):
    load("resnet50", "epochs=7")
  with pytest.raises(ValueError, match="accepts"):
    load("resnet50", "epocs=300")


def test_config_is_locked_against_typos():
  config = config_lib.base_config()
  with pytest.raises(AttributeError, match="depth"):
    config.model.detph = 50
  with pytest.raises(TypeError, match="int"):
    config.model.depth = "fifty"


@pytest.mark.parametrize("field,value,message", [
    ("model.depth", 42, "choose one of"),
    ("model.dtype", "float16", "bfloat16"),
    ("model.padding", "valid", "torchvision"),
    ("loss.temperature", 0.0, "must be > 0"),
    ("loss.beta", -1.0, "must be >= 0"),
    ("data.mask_prob", 1.5, r"\[0, 1\]"),
    ("data.source", "s3", "choose one of 'tfds', 'folder', 'builtin', 'objectnet'"),
    ("data.views.large.num", 0, "at least one large view"),
    ("data.views.small.presets", "AC", "'A'/'B'"),
    ("train.batch_size", 0, "must be > 0"),
])
def test_validate_names_field_and_fix(field, value, message):
  config = config_lib.base_config()
  *parents, leaf = field.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(errors.ConfigError, match=message) as err:
    config_lib.validate(config)
  assert f"config.{field}" in str(err.value) and "Fix:" in str(err.value)


def test_unknown_job_names_field_and_fix():
  from relic import jobs
  with pytest.raises(errors.ConfigError, match="config.job: unknown job 'pretrian'.*Fix:"):
    jobs.get_job("pretrian")


def run_main(*args):
  return subprocess.run([sys.executable, "-m", "relic.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def one_message(result) -> str:
  """A user error's output: exit code 2 and one ``relic: ... Fix: ...`` message, no traceback
  (tests/test_cli.py also checks that TensorFlow was not imported)."""
  assert result.returncode == errors.EXIT_CODE, result.stderr
  assert "Traceback" not in result.stderr
  messages = [line for line in result.stderr.splitlines() if line.startswith("relic:")]
  assert len(messages) == 1 and "Fix:" in messages[0], result.stderr
  return messages[0]


def test_cli_errors_before_compute(tmp_path):
  misspelled = one_message(run_main("--config=configs/resnet50.py:runlocal",
                                    f"--workdir={tmp_path}/a", "--config.model.detph=18"))
  assert misspelled.startswith("relic: config.model.detph: config.model has no field 'detph'. "
                               'Did you mean "depth" instead of "detph"? Fix: use '
                               "--config.model.depth=18")
  wrong_type = one_message(run_main("--config=resnet50:runlocal", f"--workdir={tmp_path}/b",
                                    "--config.model.depth=fifty"))
  assert wrong_type.startswith("relic: config.model.depth: cannot take the value 'fifty'")
  assert "Fix: give an int, e.g. --config.model.depth=50" in wrong_type
  missing = one_message(run_main("--config=configs/nope.py", f"--workdir={tmp_path}/c"))
  assert missing.startswith("relic: --config=configs/nope.py: ") and "quickstart" in missing
  unknown_job = one_message(run_main("--config=configs/resnet50.py:runlocal",
                                     f"--workdir={tmp_path}/d", "--config.job=pretrian"))
  assert unknown_job.startswith("relic: config.job: unknown job 'pretrian'")
  assert "'pretrain'" in unknown_job
  # Nothing ran: no workdir content beyond what validation needs.
  assert not any((tmp_path / d).exists() for d in "abcd")


def test_renamed_segmentation_fields_name_the_new_ones(tmp_path):
  renamed = run_main("--config=configs/segmentation.py:runlocal", "--config.segmentation.path=/x",
                     f"--workdir={tmp_path}/w")
  message = one_message(renamed)
  assert message.startswith("relic: config.segmentation.path: was renamed")
  assert "--config.data.source=voc2012 --config.data.path=/x" in message
  assert not (tmp_path / "w").exists()
  # The other old fields, also with the value as the next argument.
  for old, value, new in (("dataset", "cityscapes", "--config.data.source=cityscapes"),
                          ("data_dir", "/tfds", "--config.data.data_dir=/tfds"),
                          ("train_split", "train", "--config.data.train_split=train"),
                          ("eval_split", "val", "--config.data.eval_split=val")):
    with pytest.raises(errors.ConfigError, match=new):
      config_lib.check_renamed(["--workdir=/w", f"--config.segmentation.{old}", value])
  config_lib.check_renamed(["--config.data.path=/x", "--config.segmentation.crop_size=9"])
  # The shipped config reads its data from config.data.
  config = load("segmentation")
  assert (config.data.source, config.data.train_split, config.data.eval_split) == (
      "voc2012", "train_aug", "val")
  assert load("segmentation", "cityscapes").data.source == "cityscapes"
  assert load("segmentation", "runlocal").data.source == "builtin"
