"""Checkpoint integrity: a checkpoint is complete or absent, and a damaged one is never restored.

  * A step directory without Orbax's commit marker (a deletion or a save cut short) is moved
    aside when a Checkpointer opens the workdir and never listed, restored or read as an encoder.
  * Old checkpoints are deleted by first renaming them out of the listing: a SIGKILL in the middle
    of a deletion leaves no listed, half-deleted step.
  * Every array is checksummed when it is saved and verified when it is restored (the train
    state and ``restore_encoder`` alike): damage that leaves every file readable and the same
    size falls back to the previous step like a truncated file. Checkpoints written without
    checksums still restore, with a log line saying so.
  * A failed asynchronous save is reported at the next step boundary that polls it, and once:
    Orbax's writer threads add no tracebacks of their own.
"""

import errno
import logging
import os
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from relic import checkpoints as ckpt
from relic.parallel import data_sharding, make_mesh, replicated

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A failed read leaves Orbax's asyncio callbacks behind; Python may report them as "unraisable"
# after the test. Expected where a damaged file is read, not an error.
_failed_reads_leave_pending_callbacks = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def mesh():
  assert jax.device_count() == 8
  return make_mesh()


def _bits(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
  """Finite float32 values with random mantissas: incompressible, as trained weights are to
  zstd, so their bytes lie in the data files as they are in memory (a zeroed block there reads
  back as zeros instead of failing to decompress)."""
  words = rng.integers(0, 2**32, size=shape, dtype=np.uint64).astype(np.uint32)
  return (words & np.uint32(0xBFFFFFFF)).view(np.float32)  # exponent < 128: finite, |x| < 2


def _host_state(seed: int) -> dict:
  rng = np.random.default_rng(seed)
  return {"online_params": {"encoder": {"kernel": _bits(rng, (256, 128)),
                                        "scale": _bits(rng, (4096,))}},
          "online_batch_stats": {"encoder": {"mean": _bits(rng, (16,))}},
          "step": np.int32(seed)}


def _state(mesh, seed: int) -> dict:
  """The host state on the devices: the kernel sharded over the data axis, the rest replicated."""
  host = _host_state(seed)
  encoder = host["online_params"]["encoder"]
  return {"online_params": {"encoder": {
              "kernel": jax.device_put(encoder["kernel"], data_sharding(mesh)),
              "scale": jax.device_put(encoder["scale"], replicated(mesh))}},
          "online_batch_stats": {"encoder": {
              "mean": jax.device_put(host["online_batch_stats"]["encoder"]["mean"],
                                     replicated(mesh))}},
          "step": jax.device_put(jnp.int32(seed), replicated(mesh))}


def _meta(step: int) -> dict:
  return {"config": {"model": {"depth": 18}}, "step": step}


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _assert_bits_equal(got, want) -> None:
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def _encoder_of(seed: int) -> dict:
  host = _host_state(seed)
  return {"params": host["online_params"]["encoder"],
          "batch_stats": host["online_batch_stats"]["encoder"]}


@pytest.fixture(scope="module")
def pristine(mesh, tmp_path_factory) -> epath.Path:
  """A workdir with committed steps 2 and 3 (copied, never changed, by the tests)."""
  workdir = epath.Path(tmp_path_factory.mktemp("pristine"))
  with ckpt.Checkpointer(workdir, keep=3) as checkpointer:
    for step in (2, 3):
      assert checkpointer.save(step, _state(mesh, step), extra_json=_meta(step))
  return workdir


def _copy(pristine: epath.Path, tmp_path) -> epath.Path:
  workdir = epath.Path(tmp_path) / "run"
  shutil.copytree(pristine, workdir)
  return workdir


def _data_files(step_dir: epath.Path) -> list[str]:
  """The OCDBT data files of a step's train state, largest first."""
  files = [os.path.join(root, name) for root, _, names in os.walk(step_dir / "state")
           if os.path.basename(root) == "d" for name in names]
  return sorted(files, key=os.path.getsize, reverse=True)


def _zero_block(workdir: epath.Path) -> None:
  """4 KiB of stored values zeroed in the newest step (bit rot): inside one shard of the
  kernel, wherever its 16 KiB lie in the data files. (Zeroing a fixed offset instead may hit
  one of zstd's frame headers, which lie every few KiB, and then the read fails: a damage any
  reader notices, not the silent one this case is about.)"""
  kernel = _host_state(3)["online_params"]["encoder"]["kernel"]
  shards = [kernel[i:i + 32].tobytes() for i in range(0, kernel.shape[0], 32)]  # 8 x 16 KiB
  for path in _data_files(workdir / "checkpoints" / "3"):
    with open(path, "r+b") as f:
      data = f.read()
      for shard in shards:
        at = data.find(shard)
        if at >= 0:
          f.seek(at + 6144)
          f.write(b"\0" * 4096)
          return
  raise AssertionError("no kernel shard is stored verbatim in the checkpoint's data files")


def _flip_small_array(workdir: epath.Path) -> None:
  """Two bytes flipped in the stored values 100-107 of a 16 KiB array (out of the 128 KiB of
  the state), wherever they are stored."""
  pattern = _host_state(3)["online_params"]["encoder"]["scale"].tobytes()[400:432]
  found = 0
  for path in _data_files(workdir / "checkpoints" / "3") + [
      os.path.join(root, name) for root, _, names in os.walk(workdir / "checkpoints" / "3")
      for name in names if os.path.basename(root) != "d"]:
    with open(path, "r+b") as f:
      data = bytearray(f.read())
      at = data.find(pattern)
      while at >= 0:
        data[at + 21] ^= 0x10   # value 105: a bit in each of two of its bytes
        data[at + 22] ^= 0x01
        found += 1
        at = data.find(pattern, at + 1)
      f.seek(0)
      f.write(data)
  assert found > 0, "the small array's bytes were not found in the checkpoint"


def _swap_data_file(workdir: epath.Path) -> None:
  """The largest data file of step 3 replaced by step 2's (a bad copy from another step).

  Orbax writes the shards concurrently, so the two files rarely share a layout: the read then
  usually fails, and restores step 2's values where they do."""
  shutil.copyfile(_data_files(workdir / "checkpoints" / "2")[0],
                  _data_files(workdir / "checkpoints" / "3")[0])


def _swap_state_item(workdir: epath.Path) -> None:
  """Step 3's train state replaced by step 2's, every file intact (a copy that mixed steps)."""
  shutil.rmtree(workdir / "checkpoints" / "3" / "state")
  shutil.copytree(workdir / "checkpoints" / "2" / "state", workdir / "checkpoints" / "3" / "state")


CORRUPTIONS = {"zeroed_block": _zero_block, "flipped_bytes": _flip_small_array,
               "swapped_data_file": _swap_data_file, "swapped_state_item": _swap_state_item}
KEEP_SIZES = ("zeroed_block", "flipped_bytes")
# Read back without an error: only the checksums can tell (the swapped file mostly fails to read).
UNNOTICED_BY_READS = ("zeroed_block", "flipped_bytes", "swapped_state_item")


def _sizes(step_dir: epath.Path) -> dict[str, int]:
  return {os.path.relpath(os.path.join(root, name), step_dir):
          os.path.getsize(os.path.join(root, name))
          for root, _, names in os.walk(step_dir) for name in names}


def test_checksums_are_bit_exact_and_independent_of_sharding(mesh):
  from relic.checkpoints import integrity  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  values = {"f32": rng.normal(size=(16, 6)).astype(np.float32),
            "bf16": rng.normal(size=(8, 4)).astype(jnp.bfloat16),
            "f16": rng.normal(size=(8,)).astype(np.float16),
            "i32": rng.integers(-2**31, 2**31, size=(8, 3), dtype=np.int64).astype(np.int32),
            "u32": rng.integers(0, 2**32, size=(8,), dtype=np.uint64).astype(np.uint32),
            "i8": rng.integers(-128, 128, size=(16,)).astype(np.int8),
            "bool": rng.random(size=(8,)) > 0.5, "scalar": np.float32(3.5)}
  on_host = integrity.checksums(values)
  assert set(on_host) == set(values)
  # The same values on the devices, sharded over the data axis or replicated: the same sums.
  sharded = {k: jax.device_put(v, data_sharding(mesh) if v.ndim and v.shape[0] % 8 == 0
                               else replicated(mesh)) for k, v in values.items()}
  assert jax.tree.leaves(sharded)[0].sharding.spec == data_sharding(mesh).spec
  assert integrity.checksums(sharded) == on_host
  assert integrity.checksums(jax.device_put(values, replicated(mesh))) == on_host

  # Every change of bits changes the sum, including ones a float sum would not see.
  def changed(array: np.ndarray) -> bool:
    return integrity.checksums({"f32": array})["f32"] != on_host["f32"]
  base = values["f32"]
  zeroed, flipped, swapped = base.copy(), base.copy(), base.copy()
  zeroed[3:5] = 0
  flipped.view(np.uint32)[7, 2] ^= 1             # one bit of one mantissa
  swapped[[0, 1]] = swapped[[1, 0]]              # the same values, in another order
  assert changed(zeroed) and changed(flipped) and changed(swapped)
  zeros = np.zeros(4, np.float32)
  negative_zeros = -zeros
  assert (integrity.checksums({"z": zeros})["z"] != integrity.checksums({"z": negative_zeros})["z"])


@_failed_reads_leave_pending_callbacks
@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_damaged_newest_step_falls_back_on_restore(mesh, pristine, tmp_path, caplog, corruption):
  workdir = _copy(pristine, tmp_path)
  sizes = _sizes(workdir / "checkpoints" / "3")
  CORRUPTIONS[corruption](workdir)
  if corruption in KEEP_SIZES:
    assert _sizes(workdir / "checkpoints" / "3") == sizes   # every file there, the same size

  with ckpt.Checkpointer(workdir, keep=3) as checkpointer:
    assert checkpointer.latest_step() == 3
    why = "checksum" if corruption in UNNOTICED_BY_READS else ""
    with pytest.raises(ckpt.CheckpointRestoreError, match=f"step 3.*{why}"):
      checkpointer.restore(_abstract(_state(mesh, 0)), step=3)
    with caplog.at_level(logging.WARNING):
      restored, meta = checkpointer.restore(_abstract(_state(mesh, 0)))
    assert meta == _meta(2)
    _assert_bits_equal(restored, _state(mesh, 2))
    assert any("step 3" in r.getMessage() and "cannot be restored" in r.getMessage()
               and why in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    # Never the last good checkpoint again: moved aside, and step 3 can be saved anew.
    assert checkpointer.latest_step() == 2 and checkpointer.all_steps() == [2]
  assert (workdir / "checkpoints_corrupt" / "3").is_dir()


@_failed_reads_leave_pending_callbacks
@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_damaged_newest_step_falls_back_in_restore_encoder(pristine, tmp_path, caplog, corruption):
  workdir = _copy(pristine, tmp_path)
  CORRUPTIONS[corruption](workdir)
  with caplog.at_level(logging.WARNING):
    model_config, variables = ckpt.restore_encoder(workdir)
  assert model_config == {"depth": 18}
  _assert_bits_equal(variables, _encoder_of(2))
  why = "checksum" if corruption in UNNOTICED_BY_READS else ""
  assert any(str(workdir / "checkpoints" / "3") in r.getMessage() and why in r.getMessage()
             for r in caplog.records if r.levelno == logging.WARNING)
  with pytest.raises(ckpt.CheckpointRestoreError, match=why or None):
    ckpt.restore_encoder(workdir / "checkpoints" / "3")


def test_checkpoints_without_checksums_restore_unverified(mesh, tmp_path, caplog):
  """A checkpoint written before checksums existed: the same two Orbax items, no checksums."""
  directory = epath.Path(tmp_path) / "checkpoints"
  manager = ocp.CheckpointManager(directory, item_names=("state", "meta"),
                                  options=ocp.CheckpointManagerOptions(create=True))
  manager.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(_state(mesh, 4)),
                                          meta=ocp.args.JsonSave(_meta(4))))
  manager.wait_until_finished()
  manager.close()

  with caplog.at_level(logging.INFO):
    with ckpt.Checkpointer(tmp_path, keep=2) as checkpointer:
      restored, meta = checkpointer.restore(_abstract(_state(mesh, 0)))
    _, variables = ckpt.restore_encoder(tmp_path)
  assert meta == _meta(4)
  _assert_bits_equal(restored, _state(mesh, 4))
  _assert_bits_equal(variables, _encoder_of(4))
  unverified = [r.getMessage() for r in caplog.records
                if "step 4" in r.getMessage() and "not verified" in r.getMessage()]
  assert len(unverified) == 2, unverified   # one for the train state, one for the encoder


def _no_metadata_file(step_dir: epath.Path) -> None:
  """What a SIGKILL in Orbax's deletion left: no _CHECKPOINT_METADATA, truncated data."""
  (step_dir / "_CHECKPOINT_METADATA").unlink()
  for path in _data_files(step_dir):
    with open(path, "r+b") as f:
      f.truncate(8)


def _no_commit_marker(step_dir: epath.Path) -> None:
  (step_dir / "commit_success.txt").unlink()
  with open(_data_files(step_dir)[0], "r+b") as f:
    f.truncate(100)


def _empty(step_dir: epath.Path) -> None:
  shutil.rmtree(step_dir)
  step_dir.mkdir()


HALF_DELETED = {"no_metadata_file": _no_metadata_file, "no_commit_marker": _no_commit_marker,
                "empty_directory": _empty}


@_failed_reads_leave_pending_callbacks
@pytest.mark.parametrize("shape", sorted(HALF_DELETED) + ["unfinished_tmp_directory"])
def test_step_without_commit_marker_is_never_listed(mesh, pristine, tmp_path, caplog, shape):
  workdir = _copy(pristine, tmp_path)
  checkpoints = workdir / "checkpoints"
  if shape == "unfinished_tmp_directory":
    leftover = checkpoints / "5.orbax-checkpoint-tmp-1234567"
    shutil.copytree(checkpoints / "3", leftover)
    _no_commit_marker(leftover)
  else:
    leftover = checkpoints / "5"     # newer than the complete steps: it would be resumed from
    shutil.copytree(checkpoints / "3", leftover)
    HALF_DELETED[shape](leftover)

  # Read-only users (evaluation jobs, export) skip it and leave it where it is.
  assert ckpt.step_dirs(workdir) == [checkpoints / "3", checkpoints / "2"]
  _, variables = ckpt.restore_encoder(workdir)
  _assert_bits_equal(variables, _encoder_of(3))
  if shape != "unfinished_tmp_directory":
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
      ckpt.restore_encoder(leftover)

  # A training run moves it aside at start-up, with a warning; it is never restored.
  with caplog.at_level(logging.WARNING):
    with ckpt.Checkpointer(workdir, keep=3) as checkpointer:
      assert checkpointer.all_steps() == [2, 3]
      assert checkpointer.latest_step() == 3
      restored, meta = checkpointer.restore(_abstract(_state(mesh, 0)))
  assert meta == _meta(3)
  _assert_bits_equal(restored, _state(mesh, 3))
  assert sorted(p.name for p in checkpoints.iterdir()) == ["2", "3"]
  if shape != "unfinished_tmp_directory":
    assert (workdir / "checkpoints_corrupt" / "5").is_dir()
    assert any("step 5" in r.getMessage() and "incomplete" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)


# Saves steps 1 and 2 (keep=2), then step 3, whose commit deletes step 1: the process kills itself
# with SIGKILL right after the first file of step 1 is unlinked, wherever the deleter put it.
_KILL_DURING_DELETION = r"""
import os, signal, sys
import jax, numpy as np
from relic import checkpoints as ckpt

workdir = sys.argv[1]
directory = os.path.join(workdir, "checkpoints")
state = {"w": jax.numpy.arange(4096.0).reshape(64, 64), "step": np.int32(0)}
checkpointer = ckpt.Checkpointer(workdir, keep=2, async_save=False)
for step in (1, 2):
  checkpointer.save(step, state, extra_json={"step": step})
checkpointer.wait()
unlink = os.unlink

def unlink_then_die(path, *, dir_fd=None):
  full = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path) if dir_fd is not None else path
  unlink(path, dir_fd=dir_fd)
  parts = os.path.relpath(os.path.abspath(full), directory).split(os.sep)
  if "1" in parts[:2]:
    print("killed while deleting", full, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

os.unlink = unlink_then_die
checkpointer.save(3, state, extra_json={"step": 3})
checkpointer.wait()
print("step 1 deleted without a kill", flush=True)
"""


def test_sigkill_during_deletion_leaves_no_listed_step(tmp_path):
  result = subprocess.run([sys.executable, "-c", _KILL_DURING_DELETION, str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == -9, result.stdout + result.stderr[-3000:]
  assert "killed while deleting" in result.stdout
  checkpoints = epath.Path(tmp_path) / "checkpoints"
  # What Orbax lists right after the kill (a read-only listing: nothing moved or cleaned yet).
  assert ckpt.step_dirs(tmp_path) == [checkpoints / "3", checkpoints / "2"]
  assert sorted(ocp.path.step.checkpoint_steps(checkpoints)) == [2, 3]
  with ckpt.Checkpointer(tmp_path, keep=2) as checkpointer:
    assert checkpointer.all_steps() == [2, 3]
    _, meta = checkpointer.restore({"w": np.zeros((64, 64), np.float32),
                                    "step": np.zeros((), np.int32)})
    assert meta == {"step": 3}
  # The half-deleted remains are gone once a run opens the workdir.
  assert sorted(p.name for p in checkpoints.iterdir()) == ["2", "3"]
  assert not (epath.Path(tmp_path) / "checkpoints_corrupt").exists()


def test_failed_async_save_is_reported_at_the_next_poll(mesh, tmp_path, monkeypatch):
  checkpointer = ckpt.Checkpointer(tmp_path, keep=2)
  assert checkpointer.save(1, _state(mesh, 1), extra_json=_meta(1))
  checkpointer.check_save()          # nothing failed: returns at once, however often polled
  checkpointer.wait()
  checkpointer.check_save()

  async def disk_full(self, x, directory):
    raise OSError(errno.ENOSPC, "No space left on device", str(directory))

  monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "_save_fn", disk_full)
  assert checkpointer.save(2, _state(mesh, 2), extra_json=_meta(2))  # the write goes on behind
  deadline = time.monotonic() + 60
  with pytest.raises(ckpt.CheckpointSaveError) as info:
    while time.monotonic() < deadline:   # the training loop's step boundaries
      checkpointer.check_save()
      time.sleep(0.01)
  message = str(info.value)
  assert "step 2" in message and "No space left on device" in message
  assert "previous checkpoint (step 1) is intact" in message
  monkeypatch.undo()
  with pytest.raises(ckpt.CheckpointSaveError, match="an earlier save failed"):
    checkpointer.save(3, _state(mesh, 3))
  checkpointer.close()               # the failure was reported once, not again at close
  with ckpt.Checkpointer(tmp_path, keep=2) as rerun:
    assert rerun.all_steps() == [1]


# A real full disk for the big array's data file: a file size limit makes every write past
# 64 KiB fail (EFBIG), in Orbax's Python threads and in TensorStore's own alike.
_FULL_DISK = r"""
import resource, signal, sys, time
import jax, numpy as np
from relic import checkpoints as ckpt

rng = np.random.default_rng(0)
state = {"w%d" % i: rng.normal(size=(64, 64)).astype(np.float32) for i in range(8)}
state["big"] = jax.device_put(rng.normal(size=(512, 128)).astype(np.float32))
checkpointer = ckpt.Checkpointer(sys.argv[1], keep=1)
checkpointer.save(1, state, extra_json={"step": 1})
checkpointer.wait()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
checkpointer.save(2, state, extra_json={"step": 2})
try:
  for _ in range(6000):
    checkpointer.check_save()
    time.sleep(0.01)
  print("NO ERROR", flush=True)
except ckpt.CheckpointSaveError as e:
  print("RELIC ERROR:", e, flush=True)
time.sleep(1.0)        # Orbax's other writer threads finish failing
checkpointer.close()
print("END", flush=True)
"""


def test_full_disk_is_one_error_without_thread_tracebacks(tmp_path):
  result = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[-1] == "END", result.stdout
  assert lines[0].startswith("RELIC ERROR: Saving checkpoint step 2 in"), result.stdout
  assert "File too large" in lines[0] and "previous checkpoint (step 1) is intact" in lines[0]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert "Event loop is closed" not in result.stderr, result.stderr[-3000:]
  # Orbax's own report of the failing write, before relic's: a line or two, no traceback.
  orbax_errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
  assert len(orbax_errors) <= 1, orbax_errors
