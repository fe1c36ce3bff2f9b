"""The guarantees of the one training loop (relic/train/loop.py), checked for every job that
trains: pretrain, linear_probe, finetune (so the transfer job's fine-tuning) and segmentation.

For each job, on 8 simulated devices with a tiny encoder at 32 px:
  * SIGTERM in the middle of training checkpoints the current step and the job returns
    normally; rerunning the same command ends bit-identical to an uninterrupted run;
  * a NaN injected at step k stops the run naming step k and the last good checkpoint, and no
    later checkpoint is written; with ``train.nan_policy='skip'`` the run finishes, finite,
    with the learning rate of every step on the uninterrupted run's schedule;
  * after the job returns, no thread it started is alive.
"""

import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from relic import config as config_lib, metrics, presets
from relic.checkpoints import Checkpointer, read_results
from relic.main import run as run_job
from relic.train import divergence, loop
from tests.test_eval_jobs import TINY_MODEL, eval_config, restore_tree, write_pretrained

NUM_STEPS = 6
CHECKPOINT_EVERY = 2


def pretrain_config(_):
  config = config_lib.base_config()
  presets.apply_runlocal(config)
  config.train.update(dict(num_steps=NUM_STEPS, checkpoint_every_steps=CHECKPOINT_EVERY,
                           log_every_steps=1, eval_every_steps=0))
  config.data.augment_on_device = False   # float pixels, which can carry an injected NaN
  return config


def linear_probe_config(pretrained):
  config = eval_config("linear_probe", pretrained)
  # 160 fit images / 32 = 5 steps per epoch: 6 steps cross an epoch boundary of the stream.
  config.linear_probe.update(dict(batch_size=32, num_epochs=1.2, lr_grid=(0.1, 1.0),
                                  holdout_examples=40, image_size=32, log_every_steps=1,
                                  checkpoint_every_steps=CHECKPOINT_EVERY))
  return config


def finetune_config(pretrained):
  config = eval_config("finetune", pretrained)
  config.finetune.update(dict(batch_size=32, num_epochs=0.96, image_size=32, base_lr=0.05,
                              log_every_steps=1, checkpoint_every_steps=CHECKPOINT_EVERY))
  return config


def segmentation_config(pretrained):
  config = eval_config("segmentation", pretrained)
  config.data.update(dict(train_split="train", eval_split="test"))
  config.segmentation.update(dict(crop_size=32, eval_size=(32, 32), batch_size=8,
                                  num_steps=NUM_STEPS, base_lr=0.05, log_every_steps=1,
                                  checkpoint_every_steps=CHECKPOINT_EVERY))
  return config


CONFIGS = {"pretrain": pretrain_config, "linear_probe": linear_probe_config,
           "finetune": finetune_config, "segmentation": segmentation_config}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> str:
  return write_pretrained(tmp_path_factory.mktemp("pretrained"), TINY_MODEL)


@pytest.fixture(scope="module")
def uninterrupted(pretrained, tmp_path_factory):
  """One uninterrupted run of each job (run on first use), and the threads it left."""
  runs = {}

  def get(job: str):
    if job not in runs:
      workdir = tmp_path_factory.mktemp(f"uninterrupted_{job}")
      before = set(threading.enumerate())
      run_job(CONFIGS[job](pretrained), str(workdir))
      left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
      runs[job] = workdir, left
    return runs[job]

  return get


def final_step(workdir) -> int:
  with Checkpointer(workdir, keep=2) as ckpt:
    return ckpt.latest_step()


def assert_identical(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


def learning_rates(workdir) -> dict[int, list[float]]:
  return {m["step"]: [v for k, v in sorted(m.items()) if "learning_rate" in k]
          for m in metrics.read_metrics(str(workdir)) if any("learning_rate" in k for k in m)}


def at_step(monkeypatch, step: int, action):
  """Runs ``action(batch) -> batch`` on the batch of loop step ``step`` (0-based)."""
  original = loop._next_batch

  def patched(batches, current):
    batch = original(batches, current)
    return action(batch) if current == step else batch

  monkeypatch.setattr(loop, "_next_batch", patched)


def poison(batch):
  return jax.tree.map(lambda x: x * jnp.nan if jnp.issubdtype(x.dtype, jnp.floating) else x,
                      batch)


@pytest.mark.parametrize("job", list(CONFIGS))
def test_no_thread_outlives_the_job(uninterrupted, job):
  workdir, left = uninterrupted(job)
  assert final_step(workdir) == NUM_STEPS     # the run finished
  assert not left, [t.name for t in left]


@pytest.mark.parametrize("job", list(CONFIGS))
def test_sigterm_checkpoints_the_step_and_the_rerun_is_bit_identical(pretrained, uninterrupted,
                                                                      tmp_path, monkeypatch, job):
  reference, _ = uninterrupted(job)
  config = CONFIGS[job](pretrained)

  def sigterm(batch):
    signal.raise_signal(signal.SIGTERM)   # the scheduler's eviction notice, mid-training
    return batch

  at_step(monkeypatch, 2, sigterm)
  run_job(config, str(tmp_path))                      # returns normally: the CLI exits 0
  assert final_step(tmp_path) == 3                    # the current step, not a periodic one
  monkeypatch.undo()
  run_job(config, str(tmp_path))
  last = final_step(reference)
  assert final_step(tmp_path) == last
  assert_identical(restore_tree(tmp_path, last), restore_tree(reference, last))
  if job != "pretrain":
    assert read_results(str(tmp_path))["test"] == read_results(str(reference))["test"]


@pytest.mark.parametrize("job", list(CONFIGS))
def test_nan_stops_naming_the_step_and_the_last_good_checkpoint(pretrained, tmp_path,
                                                                monkeypatch, job):
  at_step(monkeypatch, 3, poison)
  with pytest.raises(divergence.DivergenceError, match="at step 3") as err:
    run_job(CONFIGS[job](pretrained), str(tmp_path))
  assert "last good checkpoint is step 2" in str(err.value)
  assert final_step(tmp_path) == 2                    # no diverged state was saved


@pytest.mark.parametrize("job", list(CONFIGS))
def test_skip_drops_the_nan_update_and_keeps_the_schedule(pretrained, uninterrupted, tmp_path,
                                                          monkeypatch, job):
  reference, _ = uninterrupted(job)
  config = CONFIGS[job](pretrained)
  config.train.update(dict(nan_policy="skip", max_skipped_steps=1))
  at_step(monkeypatch, 3, poison)
  run_job(config, str(tmp_path))
  last = final_step(reference)
  assert final_step(tmp_path) == last
  state = restore_tree(tmp_path, last)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state)
             if np.issubdtype(np.asarray(x).dtype, np.floating))
  # The same rate at every step as the uninterrupted run: the skipped step still advanced the
  # schedule (a lagging schedule would repeat step 3's rate at step 4).
  assert learning_rates(tmp_path) == learning_rates(reference)
  assert len(learning_rates(tmp_path)) == last
  # The update of step 3 was dropped, so the weights differ from the uninterrupted run's.
  differ = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state),
                                                    jax.tree.leaves(restore_tree(reference, last)))]
  assert any(differ)


def test_more_nans_than_allowed_stop_a_skipping_run(pretrained, tmp_path, monkeypatch):
  config = finetune_config(pretrained)
  config.train.update(dict(nan_policy="skip", max_skipped_steps=1))
  original = loop._next_batch
  monkeypatch.setattr(loop, "_next_batch",
                      lambda batches, step: poison(original(batches, step)) if step in (1, 3)
                      else original(batches, step))
  with pytest.raises(divergence.DivergenceError, match="at step 1 \\(2 non-finite"):
    run_job(config, str(tmp_path))
