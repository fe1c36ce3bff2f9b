"""Two processes x 4 CPU devices (JAX's distributed runtime on localhost, gloo collectives)
against one process x 8 devices: same losses on the same global batch, and a checkpoint written
by the 2-process run resumes in both layouts."""

import os
import pathlib
import shutil
import socket
import subprocess
import sys


from relic import metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--config=configs/resnet50.py:runlocal", "--config.data.fake=True",
        "--config.train.num_steps=6", "--config.train.log_every_steps=1",
        "--config.train.checkpoint_every_steps=3", "--config.train.eval_every_steps=0",
        "--config.evaluators.periodic=()", "--config.train.num_train_examples=256"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def env_with_devices(count: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def run_single(workdir, *extra):
  result = subprocess.run([sys.executable, "-m", "relic.main", *ARGS, f"--workdir={workdir}",
                           *extra], cwd=ROOT, env=env_with_devices(8), capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]


def run_two_processes(workdir, *extra):
  port = free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "relic.main", *ARGS, f"--workdir={workdir}", *extra,
       f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=ROOT, env=env_with_devices(4), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  errors = [p.communicate(timeout=600)[1] for p in procs]
  for p, err in zip(procs, errors):
    assert p.returncode == 0, err[-4000:]


def losses(workdir):
  return {m["step"]: m["train/loss"] for m in metrics.read_metrics(str(workdir))
          if "train/loss" in m}


def test_two_processes_match_one_process_and_share_checkpoints(tmp_path):
  single, multi = tmp_path / "single", tmp_path / "multi"
  run_single(single)
  run_two_processes(multi, "--config.train.stop_at_step=3")
  reference, first = losses(single), losses(multi)
  assert sorted(first) == [1, 2, 3]
  for step in (1, 2, 3):
    assert abs(first[step] - reference[step]) < 1e-5, (step, first[step], reference[step])
  # The checkpoint the 2-process run wrote resumes with 2 processes and with 1 process.
  shutil.copytree(multi, tmp_path / "multi_then_single")
  run_two_processes(multi)
  run_single(tmp_path / "multi_then_single")
  for workdir in (multi, tmp_path / "multi_then_single"):
    resumed = losses(workdir)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
      assert abs(resumed[step] - reference[step]) < 1e-5, (workdir.name, step)
