"""Training length from the split actually read (a config's stated size only warns; an explicit
train.num_train_examples is honoured; a resume whose length changed is refused), and what a run
writes for TensorBoard (evaluation results, hparams, the augmented views at step 0), read back
with TensorBoard's own event reader."""

import importlib.util
import math
import pathlib
import shutil

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

from relic import config as config_lib, presets
from relic import checkpoints, errors, main, metrics, schedules
from relic.data import pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGENET = 1_281_167
BUILTIN_TRAIN = 512   # apply_runlocal's built-in split
BATCH = 64


def resnet50_on_builtin(**train):
  """configs/resnet50.py (which states ImageNet's 1,281,167 examples) on the built-in data."""
  spec = importlib.util.spec_from_file_location("resnet50", ROOT / "configs" / "resnet50.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  assert config.data.expected_train_examples == IMAGENET == presets.IMAGENET_TRAIN_EXAMPLES
  assert config.train.num_train_examples == 0      # the length is not fixed by the config
  presets.apply_runlocal(config)                 # tiny model, built-in data ...
  config.data.expected_train_examples = IMAGENET    # ... with ImageNet's size still stated
  config.train.update(dict(num_steps=0, num_epochs=1.0, batch_size=BATCH, log_every_steps=1,
                           checkpoint_every_steps=2, eval_every_steps=0, view_images=3))
  config.optim.warmup_epochs = 0.25
  config.evaluators.update(dict(periodic=(), final=("frozen",)))
  config.final_eval.update(dict(num_train_examples=256, num_test_examples=128))
  config.train.update(train)
  return config


def last_step(workdir):
  return max(m["step"] for m in metrics.read_metrics(str(workdir)) if "train/loss" in m)


def recorder(seen):
  """absl's logging.warning, keeping the stated-size warnings (the patch is module-wide)."""
  real = schedules.logging.warning

  def warning(msg, *args, **kwargs):
    if "data.expected_train_examples" in str(msg):
      seen.append(msg % args)
    return real(msg, *args, **kwargs)

  return warning


@pytest.fixture
def warnings(monkeypatch):
  seen = []
  monkeypatch.setattr(schedules.logging, "warning", recorder(seen))
  return seen


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """One epoch of the built-in split, stopped at step 2 and resumed: (workdir, warnings)."""
  workdir = tmp_path_factory.mktemp("stated_imagenet")
  seen = []
  real = schedules.logging.warning
  schedules.logging.warning = recorder(seen)
  try:
    main.run(resnet50_on_builtin(stop_at_step=2), str(workdir))
    assert last_step(workdir) == 2
    main.run(resnet50_on_builtin(), str(workdir))
  finally:
    schedules.logging.warning = real
  return workdir, seen


def test_epochs_count_the_split_read_and_a_stated_size_warns(run):
  workdir, seen = run
  assert last_step(workdir) == math.ceil(BUILTIN_TRAIN / BATCH) == 8  # not 1,281,167 / 64
  assert seen and all("1,281,167" in w and "512" in w for w in seen)
  assert "data.expected_train_examples" in seen[0]
  assert "--config.train.num_train_examples=1281167" in seen[0]
  assert "1 epochs = 8 steps" in seen[0]


def test_explicit_num_train_examples_is_honoured(tmp_path, warnings):
  config = resnet50_on_builtin(num_train_examples=128)
  config.evaluators.final = ()
  main.run(config, str(tmp_path))
  assert last_step(tmp_path) == 2                                    # 128 / 64
  assert len(warnings) == 1 and "train.num_train_examples=128 examples per epoch (explicit)" in (
      warnings[0])


def test_no_statement_no_warning(warnings):
  config = resnet50_on_builtin()
  config.data.expected_train_examples = 0
  assert schedules.resolve_num_train_examples(config, BUILTIN_TRAIN) == BUILTIN_TRAIN
  config.data.expected_train_examples = BUILTIN_TRAIN
  assert schedules.resolve_num_train_examples(config, BUILTIN_TRAIN) == BUILTIN_TRAIN
  assert not warnings


def test_resume_refused_when_the_split_gives_another_length(run, monkeypatch, tmp_path):
  """Same config, but the split now holds twice the images (an image folder that grew):
  the schedule saved with the checkpoint differs, so the resume is refused before any step."""
  workdir = tmp_path / "run"
  shutil.copytree(run[0], workdir)
  for name in ("results.json", "results.md"):  # not finished: the rerun resumes
    (workdir / name).unlink()
  monkeypatch.setattr(pipeline, "num_examples", lambda config, split: 2 * BUILTIN_TRAIN)
  with pytest.raises(errors.ConfigError) as err:
    main.run(resnet50_on_builtin(), str(workdir))
  message = str(err.value)
  assert "num_train_examples: saved 512, now 1024" in message
  assert "total_steps: saved 8, now 16" in message
  assert "--config.train.num_train_examples=512" in message
  assert last_step(workdir) == 8                                     # nothing ran


def events(workdir):
  acc = event_accumulator.EventAccumulator(
      str(workdir), size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  return acc


def scalar(acc, tag):
  return [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]


def test_tensorboard_has_evaluation_results_hparams_and_view_images(run):
  workdir, _ = run
  acc = events(workdir)
  tags = acc.Tags()["tensors"]
  # The final evaluator's numbers, at the last step, equal to results.json.
  results = checkpoints.read_results(str(workdir))
  linear = scalar(acc, "eval/pretrained/test/linear_top1")
  assert linear == [(8, pytest.approx(results["pretrained"]["test"]["linear_top1"]))]
  assert scalar(acc, "eval/random_init/test/knn_top1")[0][0] == 8
  assert "train/loss" in tags
  # The hparams plugin's session: the flattened config.
  content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
  hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
  assert hparams["model.depth"].number_value == 50
  assert hparams["data.source"].string_value == "builtin"
  assert hparams["data.expected_train_examples"].number_value == IMAGENET
  assert hparams["evaluators.final"].string_value == '["frozen"]'
  # Step 0's views: one grid per group (3 images x views), written once (not on resume).
  for tag, views, size in (("views/large", 4, 32), ("views/small", 2, 16),
                           ("views/large_crops", 4, 32)):
    found = acc.Tensors(tag)
    assert [e.step for e in found] == [0], tag
    width, height, png = tensor_util.make_ndarray(found[0].tensor_proto)
    assert (int(width), int(height)) == (views * (size + 1) + 1, 3 * (size + 1) + 1), tag
    assert png[:4] == b"\x89PNG"


def test_evaluation_job_scores_are_scalars(run, tmp_path):
  workdir, _ = run
  config = config_lib.base_config()
  config.job = "knn"
  config.pretrained = str(workdir)
  config.data.update(dict(source="builtin", train_split="train", eval_split="test",
                          mask_prob=0.0))
  config.data.builtin.update(dict(num_train=BUILTIN_TRAIN, num_test=256, image_size=32))
  config.data.views.large.size = 32
  config.knn.num_train_examples = 256
  config.final_eval.num_test_examples = 128
  main.run(config, str(tmp_path))
  knn = scalar(events(tmp_path), "eval/test/knn_top1")
  assert knn == [(0, pytest.approx(checkpoints.read_results(str(tmp_path))["test"]["knn_top1"]))]


def test_eval_scalars_and_grid_units():
  results = {"encoder": {"depth": 50}, "settings": {"batch_size": 8}, "protocol": "x",
             "test": {"top1": 71.5, "num_examples": 10, "ok": True}, "sweep": [{"top1": 1.0}],
             "sets": {"imagenet_v2": {"top1": np.float32(60.0)}}}
  assert metrics.eval_scalars(results) == {"eval/test/top1": 71.5, "eval/test/num_examples": 10.0,
                                           "eval/sets/imagenet_v2/top1": 60.0}
  grid = metrics.image_grid(np.zeros((2, 3, 4, 5, 3), np.float32))
  assert grid.shape == (2 * 5 + 1, 3 * 6 + 1, 3) and grid.dtype == np.uint8
  assert grid[0].min() == 255 and grid[1, 1].max() == 0
  flat = metrics.flatten_hparams({"a": {"b": (1, 2), "c": None, "d": 0.5}})
  assert flat == {"a.b": "[1, 2]", "a.c": "", "a.d": 0.5}
