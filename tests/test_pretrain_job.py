"""The pretraining job end to end: learning, checkpoints, exact resume, kill/preemption, failed
saves and config changes on resume (8 simulated devices). The loop's guarantees shared by every
job (SIGTERM, divergence, threads) are in test_loop.py."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from relic import errors
from relic import checkpoints, config as config_lib, main, metrics, presets
from relic.jobs import pretrain

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 12
# Every run below shares these overrides, so in-process and subprocess runs are the same
# experiment and must produce bit-identical parameters.
OVERRIDES = dict(num_steps=NUM_STEPS, checkpoint_every_steps=4, log_every_steps=1,
                 eval_every_steps=0)


def tiny_config(**train):
  config = config_lib.base_config()
  presets.apply_runlocal(config)
  config.train.update(OVERRIDES)
  config.train.update(train)
  return config


def cli_args(workdir):
  return [sys.executable, "-m", "relic.main", "--config=configs/resnet50.py:runlocal",
          f"--workdir={workdir}"] + [f"--config.train.{k}={v}" for k, v in OVERRIDES.items()]


def losses(workdir):
  return {m["step"]: m for m in metrics.read_metrics(str(workdir)) if "train/loss" in m}


def encoder(workdir):
  return checkpoints.restore_encoder(str(workdir))[1]


def assert_identical(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  main.run(tiny_config(), str(workdir))
  return workdir


def test_loss_decreases_and_checkpoint_restores(uninterrupted):
  logged = losses(uninterrupted)
  assert sorted(logged) == list(range(1, NUM_STEPS + 1))
  first = np.mean([logged[s]["train/loss"] for s in (1, 2, 3)])
  last = np.mean([logged[s]["train/loss"] for s in (10, 11, 12)])
  assert last < first - 0.05, (first, last)
  steps = sorted(int(p.name) for p in (uninterrupted / "checkpoints").iterdir() if p.name.isdigit())
  assert steps[-1] == NUM_STEPS and 8 in steps
  model_config, variables = checkpoints.restore_encoder(str(uninterrupted))
  assert model_config["stage_sizes"] == (1, 1, 1, 1)
  assert variables["params"]["conv_init"]["kernel"].shape[-1] == 8
  # The stored config is the run's.
  saved = json.loads((uninterrupted / "config.json").read_text())
  assert saved["train"]["num_steps"] == NUM_STEPS


def test_stopped_and_resumed_run_matches_uninterrupted(uninterrupted, tmp_path):
  main.run(tiny_config(stop_at_step=6), str(tmp_path))
  assert max(losses(tmp_path)) == 6
  main.run(tiny_config(), str(tmp_path))
  resumed, reference = losses(tmp_path), losses(uninterrupted)
  assert sorted(resumed) == list(range(1, NUM_STEPS + 1))
  for step in range(7, NUM_STEPS + 1):
    for key in ("train/loss", "train/learning_rate", "train/ema_rate", "train/probe_loss"):
      assert resumed[step][key] == reference[step][key], (step, key)
  assert_identical(encoder(tmp_path), encoder(uninterrupted))


def test_resume_with_changed_architecture_fails_before_compute(uninterrupted):
  config = tiny_config()
  config.model.base_width = 16
  config.train.num_steps = NUM_STEPS + 4
  with pytest.raises(errors.ConfigError) as err:
    main.run(config, str(uninterrupted))
  message = str(err.value)
  assert "model.base_width: saved 8, now 16" in message
  assert "train.num_steps: saved 12, now 16" in message
  assert max(losses(uninterrupted)) == NUM_STEPS  # nothing ran


def test_more_sampled_negatives_than_the_batch_holds_fails_before_compute(tmp_path):
  config = tiny_config()
  config.loss.num_negatives = config.train.batch_size   # 16 per anchor, 15 other images
  with pytest.raises(errors.ConfigError) as err:
    main.run(config, str(tmp_path))
  assert ("config.loss.num_negatives: 16 sampled negatives per anchor need more than 16 images "
          "in the global batch, got train.batch_size=16 (15 others)") in str(err.value)
  assert "Fix: use at most --config.loss.num_negatives=15" in str(err.value)
  assert not metrics.read_metrics(str(tmp_path))   # nothing ran
  config.loss.num_negatives = config.train.batch_size - 1
  pretrain.validate(config)   # the largest valid count passes


def test_failed_save_stops_cleanly_and_keeps_previous_checkpoint(tmp_path, monkeypatch):
  original = checkpoints.Checkpointer.save

  def full_disk(self, step, state, **kwargs):
    if step == 8:
      raise checkpoints.CheckpointSaveError(f"Saving checkpoint step {step} failed: OSError: "
                                           "[Errno 28] No space left on device")
    return original(self, step, state, **kwargs)

  monkeypatch.setattr(checkpoints.Checkpointer, "save", full_disk)
  with pytest.raises(checkpoints.CheckpointSaveError, match="No space left"):
    main.run(tiny_config(), str(tmp_path))
  model_config, variables = checkpoints.restore_encoder(str(tmp_path))
  assert model_config["depth"] == 50 and variables["params"]


def _wait_for_step(workdir, step, process, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if process.poll() is not None:
      raise AssertionError(f"run exited early with {process.returncode}: "
                           f"{process.stderr.read()[-3000:]}")
    if max(losses(workdir), default=0) >= step:
      return
    time.sleep(0.2)
  raise AssertionError(f"step {step} not reached in {timeout} s")


def test_sigterm_then_sigkill_then_resume_is_bit_identical(uninterrupted, tmp_path):
  """Preemption (SIGTERM) checkpoints the current step and exits 0; a SIGKILL at a random later
  step loses only the steps since the last checkpoint; the final parameters are bit-identical
  to the uninterrupted run's (data order included)."""
  rng = np.random.default_rng(int(time.time()))
  env = dict(os.environ)
  run = lambda: subprocess.Popen(cli_args(tmp_path), cwd=ROOT, env=env, text=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  first = run()
  _wait_for_step(tmp_path, 2, first)
  first.send_signal(signal.SIGTERM)
  assert first.wait(timeout=120) == 0
  preempted_at = max(losses(tmp_path))
  saved = checkpoints.Checkpointer(str(tmp_path), keep=3)
  assert saved.latest_step() == preempted_at  # the current step, not the last periodic one
  saved.close()

  second = run()
  kill_at = int(rng.integers(preempted_at + 1, NUM_STEPS - 1))
  _wait_for_step(tmp_path, kill_at, second)
  second.send_signal(signal.SIGKILL)
  second.wait(timeout=60)

  third = run()
  _, err = third.communicate(timeout=600)
  assert third.returncode == 0, err[-3000:]
  assert_identical(encoder(tmp_path), encoder(uninterrupted))
