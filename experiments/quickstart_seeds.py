r"""The quickstart over several seeds: per-seed and mean gain of ReLICv2 over random init, and the
wall time of each whole command (fresh workdir: data generation, pretraining, both evaluations).

Run from the repository root:
  python -m experiments.quickstart_seeds --workdir=/tmp/qs_seeds --seeds=0,1,2
  python -m experiments.quickstart_seeds --workdir=/tmp/qs_seeds --seeds=0 \
      --override=train.num_epochs=2        # any --config.KEY=VALUE of configs/quickstart.py

Each seed is one ``python -m relic.main --config=configs/quickstart.py --config.seed=S`` process
in its own fresh workdir (an existing one is deleted first, so every wall time is a full run;
the built-in dataset itself is cached in $RELIC_CACHE, as for a user's second run, unless
--cold_cache has each seed generate it inside its timed command, as on a first run). Prints one
JSON object: per seed the linear and kNN top-1 of both encoders on 'test' and 'test_ood', the
linear gain on 'test', the pretraining images/s (median of the logged steps) and the wall
seconds; then the mean and minimum gain and the CPU the numbers were measured on.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

from experiments.machine import cpu_model

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_seed(seed: int, workdir: pathlib.Path, overrides: list[str], cold_cache: bool,
             config: str = "configs/quickstart.py") -> dict:
  if workdir.exists():
    shutil.rmtree(workdir)
  workdir.mkdir(parents=True)
  env = dict(os.environ)
  if cold_cache:   # the built-in dataset is generated inside the timed command, as on a first run
    env["RELIC_CACHE"] = str(workdir / "cache")
  command = [sys.executable, "-m", "relic.main", f"--config={config}",
             f"--workdir={workdir}", f"--config.seed={seed}"]
  command += [f"--config.{item}" for item in overrides]
  start = time.perf_counter()
  with open(workdir.parent / f"seed{seed}.log", "w") as log:
    proc = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False,
                          env=env)
  wall = time.perf_counter() - start
  if proc.returncode != 0:
    raise RuntimeError(f"seed {seed} failed (exit {proc.returncode}); see "
                       f"{workdir.parent / f'seed{seed}.log'}")
  results = json.loads((workdir / "results.json").read_text())
  speeds = [m["train/images_per_s"] for m in map(json.loads, (workdir / "metrics.jsonl")
                                                 .read_text().splitlines())
            if "train/images_per_s" in m]
  row = {"seed": seed, "wall_s": round(wall, 1),
         "images_per_s": round(float(np.median(speeds)), 1) if speeds else None}
  for encoder in ("pretrained", "random_init"):
    for split, r in results[encoder].items():
      row[f"{encoder}/{split}/linear_top1"] = round(r["linear_top1"], 2)
      row[f"{encoder}/{split}/knn_top1"] = round(r["knn_top1"], 2)
  row["gain_linear_test"] = round(row["pretrained/test/linear_top1"]
                                  - row["random_init/test/linear_top1"], 2)
  return row


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--override", action="append", default=[],
                      help="KEY=VALUE of the quickstart config, e.g. train.num_epochs=2")
  parser.add_argument("--config", default="configs/quickstart.py",
                      help="the config (e.g. configs/quickstart.py:runlocal for a smoke run)")
  parser.add_argument("--cold_cache", action="store_true",
                      help="each seed generates the built-in dataset itself (a first run's wall "
                           "time); default: $RELIC_CACHE, generated once")
  args = parser.parse_args(argv)
  root = pathlib.Path(args.workdir)
  rows = [run_seed(int(s), root / f"seed{s}", args.override, args.cold_cache, args.config)
          for s in args.seeds.split(",")]
  gains = [r["gain_linear_test"] for r in rows]
  print(json.dumps({"cpu": cpu_model(), "config": args.config, "overrides": args.override,
                    "cold_cache": args.cold_cache, "seeds": rows,
                    "mean_gain_linear_test": round(float(np.mean(gains)), 2),
                    "min_gain_linear_test": round(float(np.min(gains)), 2),
                    "mean_wall_s": round(float(np.mean([r["wall_s"] for r in rows])), 1)},
                   indent=2))


if __name__ == "__main__":
  main()
