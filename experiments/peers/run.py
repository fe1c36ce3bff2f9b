r"""relic side by side with lightly: the same recipe, the same data, the same machine, one table.

  pip install -e ".[peers]"          # torch, torchvision and lightly at the tested versions
  python -m experiments.peers.run --data=CIFAR10_DIR --workdir=/tmp/relic_peers --seeds=0,1,2

``CIFAR10_DIR`` holds ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (README, "Side by side
with lightly", says where to get it). For every seed, objective and library, back to back:

1. training, as its own process, timed from start to exit (the whole command):
   relic: ``python -m relic.main --config=configs/quickstart.py`` with the recipe's overrides
   (recipe.py); lightly: ``python -m experiments.peers.lightly_train`` (lightly_train.py);
2. one evaluation for both (evaluate.py): the encoder as a torchvision model (relic's through
   its PyTorch export), features of the folder's train and test images, linear and kNN top-1.

Objectives: SimCLR and BYOL in both libraries, ReLICv2 in relic. A random-init encoder of the
same architecture per seed is the untrained reference. Each run's JSON goes to
``WORKDIR/<library>/<objective>/seed<S>/run.json`` (a rerun of the command skips finished runs);
the summary to ``--out``: peers.json (every value of every run) and peers.md (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

from experiments import machine
from experiments.peers import evaluate, recipe   # evaluate first: torch before TensorFlow

LIBRARIES = {"relic": recipe.OBJECTIVES, "lightly": ("simclr", "byol")}
METRICS = ("linear_top1", "knn_top1", "images_per_s", "process_seconds")


def relic_images_per_s(workdir: pathlib.Path, batch: int, after_step: int) -> float:
  """Training images/s over the steps after ``after_step``, from relic's metrics.jsonl (each
  logged line covers the steps since the previous one at its ``steps_per_s``)."""
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  logged = [m for m in lines if "train/steps_per_s" in m]
  seconds, steps, previous = 0.0, 0, None
  for m in logged:
    if previous is not None and previous >= after_step:
      seconds += (m["step"] - previous) / m["train/steps_per_s"]
      steps += m["step"] - previous
    previous = m["step"]
  if not steps:
    raise RuntimeError(f"{workdir}: no logged training steps after step {after_step}.")
  return steps * batch / seconds


def train_command(library: str, objective: str, data: str, seed: int, run_dir: pathlib.Path,
                  extra: list[str]) -> list[str]:
  if library == "relic":
    return ([sys.executable, "-m", "relic.main", f"--workdir={run_dir / 'workdir'}"]
            + recipe.relic_flags(objective, data, seed) + [f"--config.{o}" for o in extra])
  return ([sys.executable, "-m", "experiments.peers.lightly_train", f"--objective={objective}",
           f"--data={data}", f"--seed={seed}", f"--out={run_dir / 'workdir'}"]
          + [f"--override={o}" for o in extra])


def train_timed(command: list[str], run_dir: pathlib.Path, what: str) -> float:
  """Runs one training command (output to ``run_dir/log.txt``); its whole-process seconds."""
  started = time.perf_counter()
  with open(run_dir / "log.txt", "w") as log:
    proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False,
                          cwd=recipe.ROOT)
  seconds = time.perf_counter() - started
  if proc.returncode != 0:
    raise RuntimeError(f"{what} failed (exit {proc.returncode}); see {run_dir / 'log.txt'}.")
  return seconds


def training_speed(library: str, workdir: pathlib.Path, batch: int) -> float:
  """Training images/s over the steps after ``recipe.TIMED_FROM_STEP``, as each side logs it."""
  if library == "relic":
    return relic_images_per_s(workdir, batch, after_step=recipe.TIMED_FROM_STEP)
  return json.loads((workdir / "train.json").read_text())["images_per_s"]


def run_one(library: str, objective: str, seed: int, args, images: dict) -> dict:
  """Trains (unless run.json exists) and evaluates one (library, objective, seed)."""
  run_dir = pathlib.Path(args.workdir) / library / objective / f"seed{seed}"
  done = run_dir / "run.json"
  if done.exists():
    return json.loads(done.read_text())
  run_dir.mkdir(parents=True, exist_ok=True)
  process_seconds = train_timed(
      train_command(library, objective, args.data, seed, run_dir, args.override), run_dir,
      f"{library} {objective} seed {seed}")
  workdir = run_dir / "workdir"
  config = recipe.peer_config(objective, args.data, seed, **recipe.parse_overrides(args.override))
  speed = training_speed(library, workdir, int(config.train.batch_size))
  model = (evaluate.relic_encoder(workdir) if library == "relic"
           else evaluate.lightly_encoder(config, workdir))
  scores = evaluate.evaluate(model, images, run_dir / "eval.json")
  result = dict(library=library, objective=objective, seed=seed, images_per_s=speed,
                process_seconds=process_seconds, **scores)
  done.write_text(json.dumps(result, indent=1))
  print(json.dumps(result), flush=True)
  return result


def random_init(seed: int, args, images: dict) -> dict:
  path = pathlib.Path(args.workdir) / "random_init" / f"seed{seed}.json"
  if path.exists():
    return json.loads(path.read_text())
  config = recipe.peer_config("simclr", args.data, seed, **recipe.parse_overrides(args.override))
  result = dict(library="-", objective="random init", seed=seed,
                **evaluate.evaluate(evaluate.random_encoder(config, seed), images, path))
  path.write_text(json.dumps(result, indent=1))
  return result


def stats(values: list[float]) -> dict:
  return dict(mean=float(np.mean(values)),
              std=float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
              values=[float(v) for v in values])


def summarize(runs: list[dict]) -> dict:
  """Per (objective, library): every metric's mean, std and per-seed values; per objective
  that both libraries ran: relic minus lightly (accuracy) and relic / lightly (speed, wall),
  seed by seed."""
  groups: dict[tuple[str, str], list[dict]] = {}
  for r in runs:
    groups.setdefault((r["objective"], r["library"]), []).append(r)
  rows = {f"{o}/{lib}": {m: stats([r[m] for r in rs]) for m in METRICS if m in rs[0]}
          for (o, lib), rs in groups.items()}
  paired = {}
  for objective in LIBRARIES["lightly"]:
    ours, theirs = groups.get((objective, "relic")), groups.get((objective, "lightly"))
    if not ours or not theirs:
      continue
    by_seed = {r["seed"]: r for r in theirs}
    pairs = [(r, by_seed[r["seed"]]) for r in ours if r["seed"] in by_seed]
    paired[objective] = {
        "linear_top1_diff": stats([a["linear_top1"] - b["linear_top1"] for a, b in pairs]),
        "knn_top1_diff": stats([a["knn_top1"] - b["knn_top1"] for a, b in pairs]),
        "images_per_s_ratio": stats([a["images_per_s"] / b["images_per_s"] for a, b in pairs]),
        "process_seconds_ratio": stats([a["process_seconds"] / b["process_seconds"]
                                        for a, b in pairs]),
    }
  return dict(rows=rows, relic_vs_lightly=paired)


def markdown(summary: dict, seeds: list[int], command: str) -> str:
  def cell(entry: dict | None, digits: int = 1) -> str:
    if entry is None:
      return "-"
    per_seed = " / ".join(f"{v:.{digits}f}" for v in entry["values"])
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f} ({per_seed})"

  lines = [f"Measured on {machine.cpu_model()}, {len(seeds)} seed(s) ({seeds}); "
           f"mean ± standard deviation (per seed).", f"Command: `{command}`", "",
           "| objective | library | linear top-1 (%) | kNN top-1 (%) | training images/s | "
           "whole process (s) |", "|---|---|---|---|---|---|"]
  for key, row in summary["rows"].items():
    objective, library = key.split("/")
    lines.append(f"| {objective} | {library} | {cell(row['linear_top1'])} | "
                 f"{cell(row['knn_top1'])} | {cell(row.get('images_per_s'), 0)} | "
                 f"{cell(row.get('process_seconds'), 0)} |")
  lines += ["", "relic vs lightly, seed by seed (same seed, same data):", "",
            "| objective | Δ linear (points) | Δ kNN (points) | images/s relic / lightly | "
            "whole process relic / lightly |", "|---|---|---|---|---|"]
  for objective, p in summary["relic_vs_lightly"].items():
    lines.append(f"| {objective} | {cell(p['linear_top1_diff'])} | {cell(p['knn_top1_diff'])} | "
                 f"{cell(p['images_per_s_ratio'], 2)} | {cell(p['process_seconds_ratio'], 2)} |")
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", required=True, help="folder with train/ and test/ class folders")
  parser.add_argument("--workdir", default="/tmp/relic_peers")
  parser.add_argument("--out", default="experiments/results/peers")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--objectives", default=",".join(recipe.OBJECTIVES))
  parser.add_argument("--override", action="append", default=[],
                      help="KEY=VALUE for both libraries' recipe, e.g. train.num_epochs=0.2")
  args = parser.parse_args(argv)
  args.data = os.path.abspath(args.data)
  seeds = [int(s) for s in args.seeds.split(",")]
  objectives = args.objectives.split(",")
  unknown = sorted(set(objectives) - set(recipe.OBJECTIVES))
  if unknown:
    parser.error(f"unknown objectives {unknown}; choose from {list(recipe.OBJECTIVES)}")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  config = recipe.peer_config("simclr", args.data, 0, **recipe.parse_overrides(args.override))
  cache = pathlib.Path(args.workdir) / "eval_images"
  images = {split: evaluate.eval_images(config, split, cache)
            for split in (config.data.train_split, config.data.eval_split)}
  images = {"train": images[config.data.train_split], "test": images[config.data.eval_split]}
  runs = []
  for seed in seeds:                       # seed-major: an interrupted set has whole seeds
    for objective in objectives:
      for library, supported in LIBRARIES.items():   # back to back, relic first
        if objective in supported:
          runs.append(run_one(library, objective, seed, args, images))
    runs.append(random_init(seed, args, images))
  summary = summarize(runs)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  command = "python -m experiments.peers.run " + " ".join(argv if argv is not None
                                                           else sys.argv[1:])
  (out / "peers.json").write_text(json.dumps(dict(
      cpu=machine.cpu_model(), seeds=seeds, runs=runs, summary=summary), indent=1))
  (out / "peers.md").write_text(markdown(summary, seeds, command.strip()))
  print((out / "peers.md").read_text())


if __name__ == "__main__":
  main()
