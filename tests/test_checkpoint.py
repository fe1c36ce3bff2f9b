"""Checkpoints: sharded round trip, retention, integrity, failed saves, resume checks, encoder
export, and stopping on SIGTERM."""

import errno
import logging
import os
import signal
import threading

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from flax import traverse_util

from relic import checkpoints as ckpt
from relic import resume_check
from relic.config import base_config
from relic.errors import ConfigError
from relic.models import MLP, ResNet
from relic.parallel import data_sharding, make_mesh, replicated
from relic.preemption import PreemptionGuard


@pytest.fixture(scope="module")
def mesh():
  assert jax.device_count() == 8
  return make_mesh()


def _state(mesh, value: float = 1.0):
  return {
      "online_params": {"w": jax.device_put(jnp.full((4, 3), value), replicated(mesh))},
      "batch": jax.device_put(jnp.arange(16.0).reshape(8, 2) * value, data_sharding(mesh)),
      "step": jax.device_put(jnp.int32(7), replicated(mesh)),
  }


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _save(checkpointer, step, state, **meta):
  assert checkpointer.save(step, state, extra_json=meta or {"step": step})
  checkpointer.wait()


def test_sharded_round_trip_keeps_values_and_shardings(tmp_path, mesh):
  state = _state(mesh, 2.0)
  extra = {"data": {"epoch": 3, "position": 1234}, "rng": {"seed": 0},
           "config": ckpt.config_to_json(base_config())}
  with ckpt.Checkpointer(tmp_path, keep=2) as checkpointer:
    assert checkpointer.latest_step() is None
    assert checkpointer.save(10, state, extra_json=extra)
  # A new Checkpointer, as in a restarted process.
  with ckpt.Checkpointer(tmp_path, keep=2) as checkpointer:
    assert checkpointer.latest_step() == 10
    restored, meta = checkpointer.restore(_abstract(state))
  assert meta == extra
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    assert isinstance(got, jax.Array)
    assert got.sharding == want.sharding
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert restored["batch"].sharding.spec == data_sharding(mesh).spec
  assert len(restored["batch"].addressable_shards) == 8

  # The target's shardings win: restore the data-sharded leaf replicated, from an example tree.
  target = dict(state, batch=jax.device_put(jnp.zeros((8, 2)), replicated(mesh)))
  with ckpt.Checkpointer(tmp_path, keep=2) as checkpointer:
    restored, _ = checkpointer.restore(target, step=10)
  assert restored["batch"].sharding == replicated(mesh)
  np.testing.assert_array_equal(np.asarray(restored["batch"]), np.asarray(state["batch"]))


def test_retention_keeps_last_n_plus_every_kth(tmp_path, mesh):
  state = _state(mesh)
  with ckpt.Checkpointer(tmp_path, keep=2, keep_every_steps=4) as checkpointer:
    for step in range(1, 11):
      checkpointer.save(step, state)
    checkpointer.wait()
    assert checkpointer.all_steps() == [4, 8, 9, 10]
  on_disk = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert on_disk == [4, 8, 9, 10]
  # Saving an existing step again (a preemption save right after a periodic one) is a no-op.
  with ckpt.Checkpointer(tmp_path, keep=2, keep_every_steps=4) as checkpointer:
    assert checkpointer.save(10, state) is False


# Orbax leaves a pending asyncio callback behind when a read fails; Python reports it as an
# "unraisable" exception (event loop closed) after the test. Expected here, not an error.
_failed_reads_leave_pending_callbacks = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")


def _truncate_array_files(step_dir: epath.Path) -> int:
  count = 0
  for root, _, files in os.walk(step_dir / "state"):
    if os.path.basename(root) == "d":       # OCDBT data files
      for name in files:
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(8)
        count += 1
  return count


@_failed_reads_leave_pending_callbacks
def test_corrupt_latest_falls_back_to_previous_with_warning(tmp_path, mesh, caplog):
  with ckpt.Checkpointer(tmp_path, keep=3) as checkpointer:
    for step in (1, 2, 3):
      _save(checkpointer, step, _state(mesh, float(step)))
  assert _truncate_array_files(tmp_path / "checkpoints" / "3") > 0
  # A half-written step left by a killed job: Orbax's temporary directory, never a step.
  junk = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1234567"
  (junk / "state").mkdir(parents=True)
  (junk / "state" / "garbage").write_text("x")

  with ckpt.Checkpointer(tmp_path, keep=3) as checkpointer:
    assert checkpointer.latest_step() == 3
    with pytest.raises(ckpt.CheckpointRestoreError, match="step 3"):
      checkpointer.restore(_abstract(_state(mesh)), step=3)
    with caplog.at_level(logging.WARNING):
      restored, meta = checkpointer.restore(_abstract(_state(mesh)))
    assert meta == {"step": 2}
    np.testing.assert_array_equal(np.asarray(restored["batch"]),
                                  np.asarray(_state(mesh, 2.0)["batch"]))
    assert any("step 3" in r.getMessage() and "cannot be restored" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    # The bad step is kept aside, not deleted, and the run can save step 3 again.
    assert checkpointer.all_steps() == [1, 2]
    assert (tmp_path / "checkpoints_corrupt" / "3").is_dir()
    _save(checkpointer, 3, _state(mesh, 3.0))
    restored, meta = checkpointer.restore(_abstract(_state(mesh)))
    assert meta == {"step": 3}
  assert not junk.exists()


@_failed_reads_leave_pending_callbacks
def test_restore_raises_when_every_step_is_unreadable(tmp_path, mesh):
  with ckpt.Checkpointer(tmp_path, keep=2) as checkpointer:
    _save(checkpointer, 1, _state(mesh))
  _truncate_array_files(tmp_path / "checkpoints" / "1")
  with ckpt.Checkpointer(tmp_path, keep=2) as checkpointer:
    with pytest.raises(ckpt.CheckpointRestoreError, match="None of the checkpoints"):
      checkpointer.restore(_abstract(_state(mesh)))
    assert checkpointer.all_steps() == [1]  # nothing moved when no step could be read


def test_missing_checkpoint_errors(tmp_path, mesh):
  with ckpt.Checkpointer(tmp_path, keep=1) as checkpointer:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "checkpoints")):
      checkpointer.restore(_abstract(_state(mesh)))
  with pytest.raises(FileNotFoundError) as info:
    ckpt.restore_encoder(tmp_path / "empty_workdir")
  message = str(info.value)
  assert str(tmp_path / "empty_workdir" / "checkpoints") in message
  assert "python -m relic.main" in message


def test_step_dirs_from_a_workdir_its_checkpoints_or_a_step(tmp_path):
  with ckpt.Checkpointer(tmp_path, keep=2, async_save=False) as checkpointer:
    for step in (3, 12):
      checkpointer.save(step, {"w": np.zeros(2, np.float32)})
  steps = [tmp_path / "checkpoints" / "12", tmp_path / "checkpoints" / "3"]   # newest first
  assert ckpt.step_dirs(tmp_path) == steps
  assert ckpt.step_dirs(tmp_path / "checkpoints") == steps
  assert ckpt.step_dirs(tmp_path / "checkpoints" / "3") == [steps[1]]
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "notes.txt").write_text("")
  with pytest.raises(FileNotFoundError, match=r"holds no checkpoint.*found \['notes.txt'\]"):
    ckpt.step_dirs(tmp_path / "other")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    ckpt.step_dirs(tmp_path / "missing")


def test_probe_head_round_trip(tmp_path):
  head = {"linear": {"kernel": np.arange(6, dtype=np.float32).reshape(3, 2),
                     "bias": np.ones(2, np.float32)}}
  record = {"num_classes": 2, "encoder": {"fingerprint": "abc"}}
  with pytest.raises(FileNotFoundError, match="No linear probe head"):
    ckpt.load_probe_head(tmp_path, linear_probe_only=True)
  ckpt.save_probe_head(str(tmp_path), head, record)
  for path in (tmp_path, tmp_path / ckpt.PROBE_HEAD_NPZ):
    loaded, loaded_record = ckpt.load_probe_head(path, linear_probe_only=True)
    assert loaded_record == record
    for k in ("kernel", "bias"):
      np.testing.assert_array_equal(loaded["linear"][k], head["linear"][k])


def test_unwritable_workdir_is_a_clear_error(tmp_path, mesh):
  a_file = tmp_path / "a_file"
  a_file.write_text("not a directory")
  with pytest.raises(ckpt.CheckpointSaveError) as info:
    ckpt.Checkpointer(a_file / "sub", keep=1)
  assert str(a_file / "sub" / "checkpoints") in str(info.value)
  assert "Not a directory" in str(info.value)


@pytest.mark.parametrize("async_save", [True, False])
def test_failed_save_reports_path_and_cause_and_keeps_previous(tmp_path, mesh, monkeypatch,
                                                                async_save):
  state = _state(mesh)
  checkpointer = ckpt.Checkpointer(tmp_path, keep=1, async_save=async_save)
  _save(checkpointer, 1, state)

  async def disk_full(self, x, directory):
    raise OSError(errno.ENOSPC, "No space left on device", str(directory))

  # The disk fills up while the metadata item of step 2 is written.
  monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "_save_fn", disk_full)
  threads_before = set(threading.enumerate())
  with pytest.raises(ckpt.CheckpointSaveError) as info:
    checkpointer.save(2, _state(mesh, 5.0), extra_json={"step": 2})
    checkpointer.wait()   # asynchronous writes report their failure here
  message = str(info.value)
  assert str(tmp_path / "checkpoints") in message
  assert "step 2" in message and "No space left on device" in message
  assert "previous checkpoint (step 1) is intact" in message
  # keep=1 would have deleted step 1 had step 2 been committed.
  assert checkpointer.all_steps() == [1]
  restored, meta = checkpointer.restore(_abstract(state))
  assert meta == {"step": 1}
  np.testing.assert_array_equal(np.asarray(restored["batch"]), np.asarray(state["batch"]))

  # The job is expected to stop: further saves are refused rather than racing the failed one.
  with pytest.raises(ckpt.CheckpointSaveError, match="an earlier save failed"):
    checkpointer.save(3, state)
  checkpointer.close()

  # The failed job's process ends here: its writer threads (Orbax stops waiting for the other
  # items at the first failure) must be gone before the rerun cleans the temporary directory.
  for thread in set(threading.enumerate()) - threads_before:
    thread.join(timeout=60)
  monkeypatch.undo()  # space freed; the rerun resumes from step 1 and saves again
  with ckpt.Checkpointer(tmp_path, keep=1, async_save=async_save) as rerun:
    assert rerun.latest_step() == 1
    _, meta = rerun.restore(_abstract(state))
    assert meta == {"step": 1}
    _save(rerun, 3, state)
    assert rerun.all_steps() == [3]


def test_check_resume_compatible_names_critical_fields_and_allows_harmless(tmp_path):
  saved = ckpt.config_to_json(base_config())
  config = base_config()
  config.train.log_every_steps = 7           # harmless changes
  config.train.checkpoint_every_steps = 11
  config.train.keep_checkpoints = 9
  config.data.data_dir = "/elsewhere"
  config.data.num_threads = 3
  config.train.eval_every_steps = 13
  config.model.remat = True
  resume_check.check_resume_compatible(saved, config)  # no error

  config.optim.base_lr = 0.3
  config.model.depth = 101
  config.data.views.large.num = 2
  config.train.batch_size = 1024
  config.ema.base_rate = 0.99
  config.seed = 1
  with pytest.raises(ConfigError) as info:
    resume_check.check_resume_compatible(saved, config)
  message = str(info.value)
  for line in ("optim.base_lr: saved 0.2, now 0.3", "model.depth: saved 50, now 101",
               "data.views.large.num: saved 4, now 2", "train.batch_size: saved 4096, now 1024",
               "ema.base_rate: saved 0.996, now 0.99", "seed: saved 0, now 1"):
    assert line in message
  for harmless in ("log_every_steps", "checkpoint_every_steps", "data_dir", "num_threads",
                   "remat", "keep_checkpoints"):
    assert harmless not in message
  # An evaluation job's own section is critical too (except cadences); other jobs' are not.
  job_config = lambda lr, every, grid: ml_collections.ConfigDict(dict(
      job="finetune", finetune=dict(base_lr=lr, log_every_steps=every),
      linear_probe=dict(lr_grid=grid)))
  saved_job = ckpt.config_to_json(job_config(0.05, 100, (0.1,)))
  resume_check.check_resume_compatible(saved_job, job_config(0.05, 10, (0.3, 1.0)))
  with pytest.raises(ConfigError, match=r"finetune\.base_lr: saved 0\.05, now 0\.1"):
    resume_check.check_resume_compatible(saved_job, job_config(0.1, 100, (0.1,)))
  # Tuples saved as JSON lists compare equal to the tuples of a fresh config.
  config = base_config()
  config.model.stage_sizes = (1, 1, 1, 1)
  resume_check.check_resume_compatible(ckpt.config_to_json(config), config)


def test_every_data_field_is_classified_for_resume():
  """config.data fields are experiment-defining (refused on resume when changed) unless listed
  as free to change; the list names real fields, and a new field is critical by default."""
  flat = traverse_util.flatten_dict(ckpt.config_to_json(base_config()), sep=".")
  data_fields = {f for f in flat if f.startswith("data.")}
  free = set(resume_check.DATA_FIELDS_THAT_MAY_CHANGE)
  assert free <= data_fields, free - data_fields                 # no stale names
  critical = {f for f in data_fields if resume_check._is_critical(f, "pretrain")}
  assert critical == data_fields - free
  assert {"data.blur", "data.views.large.size", "data.builtin.seed", "data.mask_prob"} <= critical
  assert resume_check._is_critical("data.some_new_field", "pretrain")
  # The colour distortion defines the training data: a resumed run may not change it.
  config = base_config()
  config.data.color_jitter_strength, config.data.grayscale_prob = 0.5, 0.0
  with pytest.raises(ConfigError, match="data.color_jitter_strength: saved 1.0, now 0.5"):
    resume_check.check_resume_compatible(ckpt.config_to_json(base_config()), config)


def test_restore_encoder_from_workdir_and_step_dir(tmp_path):
  config = base_config()
  config.model.update(dict(stage_sizes=(1, 1, 1, 1), base_width=4, small_images=True,
                           projector_hidden_dim=8, projector_output_dim=4))
  encoder = ResNet(depth=config.model.depth, stage_sizes=config.model.stage_sizes,
                   base_width=4, small_images=True)
  # Real parameter trees (names, shapes) with random values: eval_shape compiles nothing.
  rng = np.random.default_rng(3)
  random_like = lambda tree: jax.tree.map(
      lambda x: rng.normal(size=x.shape).astype(x.dtype), tree)
  shapes = jax.eval_shape(encoder.init, jax.random.PRNGKey(0), np.zeros((2, 8, 8, 3)))
  projector = random_like(jax.eval_shape(MLP(8, 4).init, jax.random.PRNGKey(1),
                                         np.zeros((2, encoder.num_features))))
  encoder_vars = random_like({"params": shapes["params"], "batch_stats": shapes["batch_stats"]})
  online = {"encoder": encoder_vars["params"], "projector": projector["params"]}
  online_stats = {"encoder": encoder_vars["batch_stats"], "projector": projector["batch_stats"]}
  fives = lambda tree: jax.tree.map(lambda x: np.full_like(x, 5), tree)
  state = {
      "online_params": online, "online_batch_stats": online_stats,
      "target_params": fives(online), "target_batch_stats": fives(online_stats),
      "opt_state": jax.tree.map(np.zeros_like, online),
      "probe_params": {"linear": {"kernel": np.zeros((encoder.num_features, 3), np.float32)}},
      "probe_opt_state": {"mu": np.zeros((encoder.num_features, 3), np.float32)},
      "step": np.int32(20), "rng": np.asarray(jax.random.PRNGKey(0)),
  }
  # Host arrays: restore_encoder reads the stored tree, however it was placed when saved (the
  # sharded round trip is tested above; device arrays would add a compilation per leaf shape).
  zeros = jax.tree.map(np.zeros_like, state)
  with ckpt.Checkpointer(tmp_path, keep=2) as checkpointer:
    _save(checkpointer, 10, zeros, config=ckpt.config_to_json(config))
    _save(checkpointer, 20, state, config=ckpt.config_to_json(config))

  for path in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "20"):
    model_config, restored = ckpt.restore_encoder(path)
    assert model_config["stage_sizes"] == (1, 1, 1, 1) and model_config["base_width"] == 4
    assert jax.tree.structure(restored) == jax.tree.structure(encoder_vars)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(encoder_vars)):
      assert isinstance(got, np.ndarray)
      np.testing.assert_array_equal(got, want)
  # The stored model config rebuilds the same encoder, whose variables are what was restored.
  model = ResNet(**{k: model_config[k] for k in ("depth", "stage_sizes", "base_width",
                                                 "small_images")})
  assert model == encoder
  # An older step directory gives that step's encoder.
  _, old = ckpt.restore_encoder(tmp_path / "checkpoints" / "10")
  assert all(np.all(x == 0) for x in jax.tree.leaves(old))


def test_sigterm_sets_should_stop_without_killing_the_process(tmp_path, mesh):
  previous = signal.getsignal(signal.SIGTERM)
  with PreemptionGuard() as guard, ckpt.Checkpointer(tmp_path, keep=1) as checkpointer:
    state, stopped_at = _state(mesh), None
    for step in range(1, 100):
      assert guard.received_signal is None or step > 3
      if step == 3:
        os.kill(os.getpid(), signal.SIGTERM)   # the scheduler's eviction notice
      if guard.should_stop(step):
        checkpointer.save(step, state, extra_json={"step": step})
        stopped_at = step
        break
    assert guard.received_signal == signal.SIGTERM
  assert stopped_at == 3  # Python runs the handler before the next bytecode, still at step 3
  assert signal.getsignal(signal.SIGTERM) == previous  # handler restored on exit
  with ckpt.Checkpointer(tmp_path, keep=1) as checkpointer:
    assert checkpointer.latest_step() == 3


def test_multi_process_guard_defers_to_jax_preemption_sync_point(monkeypatch):
  """With JAX's distributed runtime, all processes must stop at the step JAX agrees on, and a
  Python handler must not replace JAX's own SIGTERM handler."""
  from relic import preemption  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
  calls = []
  monkeypatch.setattr(preemption.multihost_utils, "reached_preemption_sync_point",
                      lambda step: calls.append(step) or step == 5)
  before = signal.getsignal(signal.SIGTERM)
  with PreemptionGuard() as guard:
    assert signal.getsignal(signal.SIGTERM) == before
    stops = [step for step in range(1, 8) if guard.should_stop(step)]
  assert stops == [5] and calls == list(range(1, 8))


def test_one_process_copies_each_array_whole_from_one_device(tmp_path, mesh, monkeypatch):
  """A replicated array is copied to the host once, not cut into one slice per device (each
  slice shape a program compiled on the first save); the round trip is unchanged."""
  from orbax.checkpoint._src.serialization import replica_slices
  copied = []
  real = replica_slices.transfer_arrays_to_host

  def spy(arrays, *args, **kwargs):
    out = real(arrays, *args, **kwargs)
    copied.extend((a.shape, len(s.replica_slices)) for a, s in zip(arrays, out))
    return out

  monkeypatch.setattr(replica_slices, "transfer_arrays_to_host", spy)
  state = {"kernel": jax.device_put(jnp.arange(64.0).reshape(16, 4), replicated(mesh)),
           "batch": jax.device_put(jnp.arange(16.0).reshape(8, 2), data_sharding(mesh))}
  with ckpt.Checkpointer(tmp_path, keep=1) as checkpointer:
    _save(checkpointer, 1, state)
    restored = checkpointer.restore(_abstract(state))[0]
  assert sorted(copied) == [((8, 2), 8), ((16, 4), 1)]   # the sharded batch: its 8 shards
  jax.tree.map(np.testing.assert_array_equal, restored, state)
