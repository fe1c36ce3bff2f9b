r"""Where each library's time goes on the compared recipe: the step alone, the step fed by the input
pipeline, and the fixed cost of a whole command, measured back to back in one run.

  python -m experiments.peers.profile --data=CIFAR10_DIR --workdir=/tmp/relic_peers_profile

For SimCLR and BYOL, each library trains ``--steps`` steps twice, as its own process: on one
fixed batch of random views in memory ('step alone': relic's ``data.fake``, lightly_train's
``--fake``; relic's step still runs its photometric augmentation, which is part of the step) and
on the folder ('with data'). Each line: images/s over the steps after step 20 and the whole
process's seconds; ``fixed_seconds`` is the whole process minus the time its steps take at that
speed (start-up, imports, data listing, compilation, slower first steps, checkpoints, exit).
Writes profile.json and profile.md to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys

from experiments import machine
from experiments.peers import recipe, run

MODES = {"step alone": True, "with data": False}


def measure(library: str, objective: str, fake: bool, args) -> dict:
  run_dir = pathlib.Path(args.workdir) / library / objective / ("fake" if fake else "data")
  if run_dir.exists():
    shutil.rmtree(run_dir)
  run_dir.mkdir(parents=True)
  extra = [f"train.num_steps={args.steps}"]
  if fake and library == "relic":
    # Fake data counts as ImageNet-sized; epochs (the warm-up's) count the folder's examples.
    extra += ["data.fake=True", f"train.num_train_examples={args.examples}"]
  command = run.train_command(library, objective, args.data, 0, run_dir, extra)
  if fake and library == "lightly":
    command.append("--fake")
  seconds = run.train_timed(command, run_dir, f"{library} {objective}")
  config = recipe.peer_config(objective, args.data, 0, **{"train.num_steps": args.steps})
  batch = int(config.train.batch_size)
  speed = run.training_speed(library, run_dir / "workdir", batch)
  result = dict(library=library, objective=objective, mode="step alone" if fake else "with data",
                steps=args.steps, images_per_s=speed, process_seconds=seconds,
                fixed_seconds=seconds - args.steps * batch / speed)
  print(json.dumps(result), flush=True)
  return result


def markdown(results: list[dict], command: str) -> str:
  lines = [f"Measured on {machine.cpu_model()}, one process per line, back to back.",
           f"Command: `{command}`", "",
           "| objective | library | mode | images/s (steps 21+) | whole process (s) | fixed (s) |",
           "|---|---|---|---|---|---|"]
  for r in results:
    lines.append(f"| {r['objective']} | {r['library']} | {r['mode']} | {r['images_per_s']:.0f} | "
                 f"{r['process_seconds']:.1f} | {r['fixed_seconds']:.1f} |")
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", required=True)
  parser.add_argument("--workdir", default="/tmp/relic_peers_profile")
  parser.add_argument("--out", default="experiments/results/peers")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--objectives", default="simclr,byol")
  parser.add_argument("--examples", type=int, default=50_000,
                      help="training examples of --data (CIFAR-10: 50,000), for relic's fake runs")
  args = parser.parse_args(argv)
  args.data = os.path.abspath(args.data)
  results = [measure(library, objective, fake, args)
             for objective in args.objectives.split(",")
             for fake in MODES.values()
             for library in ("relic", "lightly")]
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  command = "python -m experiments.peers.profile " + " ".join(argv if argv is not None else sys.argv[1:])
  (out / "profile.json").write_text(json.dumps(dict(cpu=machine.cpu_model(), results=results),
                                               indent=1))
  (out / "profile.md").write_text(markdown(results, command.strip()))
  print((out / "profile.md").read_text())


if __name__ == "__main__":
  main()
