r"""The paper's claims at CPU scale: ReLICv2, its baselines and its ablations on the built-in data.

Run from the repository root. On a 2-core Intel Xeon a 2-epoch run takes 59-110 s, a 4x run
178-286 s and the saliency job of 'job_masks' about 20 minutes, so every setting for the
default 3 seeds is about 2 h 25 min (117 minutes without job_masks); --settings picks a subset:
  python -m experiments.ablations --workdir=/tmp/relic_ablations
  python -m experiments.ablations --workdir=/tmp/relic_ablations --seeds=0 --epochs=1  # a smoke run
  python -m experiments.ablations --workdir=/tmp/relic_ablations --settings=relicv2,byol,simclr,supervised

Every setting pretrains the quickstart encoder (configs/quickstart.py) with the quickstart
recipe for 2 epochs (``--epochs``; 313 steps of 64 images; the quickstart itself runs 3),
changing only what the setting names, then scores frozen features with the quickstart's final
evaluation (L2 logistic regression and weighted kNN, k=20, fit on 5,000 training images) on the
in-distribution 'test' split and the 'test_ood' split (background textures never seen in
training):

  relicv2          the quickstart recipe: 2 large + 2 small views, saliency masking, beta = 1
  byol, simclr     BYOL's and SimCLR's objectives (loss.objective) on the same views, masking,
                   network and schedule: the paper's comparison in one pipeline
  byol_ema         byol with its own slow target (ema.base_rate 0.99) instead of the recipe's 0
  supervised       cross-entropy on the labels, same views, network and schedule (reference)
  no_invariance    beta = 0: the contrastive (InfoNCE) term alone
  beta_0.3, beta_3 the invariance weight beta (0 = no_invariance, 1 = relicv2)
  negatives_10, negatives_50    n_e sampled negatives per anchor (relicv2: all 63 other images of
                   the batch of 64; 50 keeps the share of 100 in a batch of 128)
  no_small_views   the 2 large views only (no multi-crop)
  two_view_byol    BYOL's view setting: 2 large views, no small views, no masking
  no_masking       p_m = 0: no saliency-masked views
  job_masks        p_m = 0.1 with the saliency job's masks (configs/saliency.py:builtin: classical
                   cues + FCN refinement, no labels) instead of the built-in exact object masks;
                   the job runs once, into --workdir/saliency_job
  relicv2_long, no_invariance_long, no_masking_long, no_small_views_long, simclr_long
                   4x the schedule (--epochs x 4: 1,250 steps at the default 2 epochs), for
                   the verdicts that may depend on training length
  random_init      the random-init encoder of each run's own seed (reference, no training)

Each (setting, seed) is one ``python -m relic.main`` process with its own workdir under
``--workdir``; finished runs (``results.json`` present) are not repeated, so rerunning the
command after an interruption continues where it stopped. The summary goes to ``--out`` as
ablations.json, ablations.md and ablations.png: per setting the mean, standard deviation and
per-seed values, the steps trained, and the seed-by-seed differences to its reference
(``PAIRED_WITH``).
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

SPLITS = ("test", "test_ood")
METRICS = ("linear_top1", "knn_top1")

EPOCHS_FACTOR = "epochs_factor"   # a setting's schedule length relative to --epochs
LONG_FACTOR = 4
# Overrides of configs/quickstart.py per setting (config paths as on the command line).
SETTINGS: dict[str, dict[str, object]] = {
    "relicv2": {},
    # The paper's comparison in one pipeline: same views (masking included), encoder, schedule.
    "byol": {"loss.objective": "byol", "model.predictor": True},   # BYOL needs its predictor
    "simclr": {"loss.objective": "simclr"},
    # BYOL with its own slow target (its 300-epoch preset) instead of the recipe's, which starts
    # at the online network (ema.base_rate 0): is the comparison decided by the shared EMA?
    "byol_ema": {"loss.objective": "byol", "model.predictor": True, "ema.base_rate": 0.99},
    "supervised": {"loss.objective": "supervised", "model.projector_output_dim": 10},
    # beta in {0, 0.3, 1 (relicv2), 3}.
    "no_invariance": {"loss.beta": 0.0},
    "beta_0.3": {"loss.beta": 0.3},
    "beta_3": {"loss.beta": 3.0},
    # n_e in {all (relicv2: 63), 10, 50}: a batch of 64 has 63 other images per anchor, so 100
    # (of 127 at batch 128) becomes 50.
    "negatives_10": {"loss.num_negatives": 10},
    "negatives_50": {"loss.num_negatives": 50},
    # Views and masking.
    "no_small_views": {"data.views.small.num": 0},
    "two_view_byol": {"data.views.small.num": 0, "data.mask_prob": 0.0},
    "no_masking": {"data.mask_prob": 0.0},
    "job_masks": {"data.mask_path": "{saliency_masks}"},
    # The verdicts that may depend on training length, on a LONG_FACTOR x longer schedule.
    "relicv2_long": {EPOCHS_FACTOR: LONG_FACTOR},
    "no_invariance_long": {"loss.beta": 0.0, EPOCHS_FACTOR: LONG_FACTOR},
    "no_masking_long": {"data.mask_prob": 0.0, EPOCHS_FACTOR: LONG_FACTOR},
    "no_small_views_long": {"data.views.small.num": 0, EPOCHS_FACTOR: LONG_FACTOR},
    "simclr_long": {"loss.objective": "simclr", EPOCHS_FACTOR: LONG_FACTOR},
}
REFERENCE = "random_init"   # read from every run's results (same architecture, same seed)
SALIENCY_RUN = "saliency_job"   # below --workdir: the saliency job's run for 'job_masks'


def make_saliency_masks(root: pathlib.Path) -> None:
  """Runs the saliency job on the built-in data once (about 15 minutes on 2 cores)."""
  workdir = root / SALIENCY_RUN
  if not (workdir / "results.json").exists():
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "log.txt", "w") as log:
      subprocess.run([sys.executable, "-m", "relic.main", "--config=configs/saliency.py:builtin",
                      f"--workdir={workdir}"], stdout=log, stderr=subprocess.STDOUT, check=True)
ORDER = tuple(SETTINGS) + (REFERENCE,)


def quickstart_epochs() -> float:
  """The quickstart's own schedule (configs/quickstart.py), the base of ``--epochs=0``."""
  from relic import main as relic_main  # pylint: disable=import-outside-toplevel
  return float(relic_main.load_config_file("configs/quickstart.py").train.num_epochs)


def run_command(setting: str, seed: int, workdir: pathlib.Path, epochs: float) -> list[str]:
  """The ``relic.main`` command line of one run.

  The random-init encoder is scored in the relicv2 runs only (it is the same for every
  setting of a seed), and the probes fit on 5,000 training images, to keep the set near an hour.
  """
  masks = workdir.parents[1] / SALIENCY_RUN / "masks"    # workdir = ROOT/setting/seedN
  overrides = {k: v.format(saliency_masks=masks) if isinstance(v, str) else v
               for k, v in SETTINGS[setting].items()}
  factor = overrides.pop(EPOCHS_FACTOR, 1)
  overrides["seed"] = seed
  overrides["final_eval.compare_random_init"] = setting == "relicv2"
  overrides["final_eval.num_train_examples"] = 5000
  if epochs or factor != 1:
    overrides["train.num_epochs"] = (epochs or quickstart_epochs()) * factor
  return ([sys.executable, "-m", "relic.main", "--config=configs/quickstart.py",
           f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()])


def run_one(setting: str, seed: int, root: pathlib.Path, epochs: float) -> dict:
  """Runs (or reuses) one pretraining + evaluation and returns its results.json."""
  workdir = root / setting / f"seed{seed}"
  results = workdir / "results.json"
  if not results.exists():
    if "{saliency_masks}" in SETTINGS[setting].values():
      make_saliency_masks(root)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(workdir / "log.txt", "w") as log:
      proc = subprocess.run(run_command(setting, seed, workdir, epochs), stdout=log,
                            stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0 or not results.exists():
      raise RuntimeError(f"{setting} seed {seed} failed (exit {proc.returncode}); see "
                         f"{workdir / 'log.txt'}.")
    print(json.dumps(dict(setting=setting, seed=seed, seconds=round(time.time() - start, 1))),
          flush=True)
  return dict(json.loads(results.read_text()), steps=trained_steps(workdir))


def trained_steps(workdir: pathlib.Path) -> int | None:
  """The last training step logged in a run's metrics.jsonl (None when there is none)."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return None
  steps = [json.loads(line).get("step") for line in path.read_text().splitlines() if line]
  return max((s for s in steps if s is not None), default=None)


# Seed-by-seed references other than the default: ReLICv2 against the random-init encoder (the
# gain from pretraining), its 4x schedule against its own, BYOL's slow target against BYOL.
# Every other 4x-schedule setting is compared with relicv2_long, every other one with relicv2.
PAIRED_WITH = {"relicv2": REFERENCE, "relicv2_long": "relicv2", "byol_ema": "byol"}


def paired_reference(setting: str) -> str | None:
  """The setting that ``setting`` is compared with seed by seed (same seed, same data)."""
  if setting == REFERENCE:
    return None
  if setting in PAIRED_WITH:
    return PAIRED_WITH[setting]
  return "relicv2_long" if EPOCHS_FACTOR in SETTINGS.get(setting, {}) else "relicv2"


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict]:
  """{setting: {split: {metric: stats}, 'steps': n, 'paired': {...}}} from each run's results.

  ``runs[s]`` holds the results of setting s, one per seed; the random-init reference is the
  'random_init' entry of the relicv2 runs (each seed's own random encoder). Every stats entry is
  {mean, std, values}; 'paired' holds the per-seed differences to ``paired_reference`` (setting
  minus reference, same seed), which cancel what a seed shares: the data order, the
  initialisation and the evaluation subset.
  """
  def entry(values: list[float]) -> dict:
    return dict(mean=float(np.mean(values)), std=float(np.std(values, ddof=1))
                if len(values) > 1 else 0.0, values=[float(v) for v in values])

  def scores(setting: str) -> list[dict] | None:
    source, key = (("relicv2", REFERENCE) if setting == REFERENCE else (setting, "pretrained"))
    return [r[key] for r in runs[source]] if source in runs else None

  summary = {}
  for setting in ORDER:
    own = scores(setting)
    if own is None:
      continue
    summary[setting] = {split: {m: entry([r[split][m] for r in own]) for m in METRICS}
                        for split in SPLITS}
    summary[setting]["steps"] = 0 if setting == REFERENCE else runs[setting][0].get("steps")
    reference = paired_reference(setting)
    other = scores(reference) if reference else None
    if other is not None and len(other) == len(own):
      summary[setting]["paired"] = dict(reference=reference, **{
          split: {m: entry([a[split][m] - b[split][m] for a, b in zip(own, other)])
                  for m in METRICS} for split in SPLITS})
  return summary


def markdown(summary: dict[str, dict], num_seeds: int, command: str) -> str:
  header = ("| setting | steps | linear top-1 test | per seed | linear top-1 test_ood | "
            "kNN top-1 test | kNN top-1 test_ood | paired Δ vs | Δ linear test | Δ kNN test |\n"
            + "|---" * 10 + "|\n")
  stat = lambda e: f"{e['mean']:.1f} ± {e['std']:.1f}"
  signed = lambda e: f"{e['mean']:+.1f} ± {e['std']:.1f}"
  rows = []
  for setting, result in summary.items():
    per_seed = " / ".join(f"{v:.1f}" for v in result["test"]["linear_top1"]["values"])
    steps = "" if result.get("steps") is None else str(result["steps"])
    paired = result.get("paired")
    delta = ([paired["reference"], signed(paired["test"]["linear_top1"]),
              signed(paired["test"]["knn_top1"])] if paired else ["", "", ""])
    cells = ([setting, steps, stat(result["test"]["linear_top1"]), per_seed,
              stat(result["test_ood"]["linear_top1"]), stat(result["test"]["knn_top1"]),
              stat(result["test_ood"]["knn_top1"])] + delta)
    rows.append("| " + " | ".join(cells) + " |")
  return (f"Top-1 (%) on the built-in dataset, mean ± standard deviation over {num_seeds} "
          f"seed(s), measured on {machine.cpu_model()}. Δ: the setting minus the named one, "
          f"seed by seed (mean ± standard deviation of the differences).\n"
          f"Command: `{command}`\n\n" + header + "\n".join(rows) + "\n")


def plot(summary: dict[str, dict], path: pathlib.Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  settings = list(summary)
  fig, axes = plt.subplots(1, 2, figsize=(max(11, 0.8 * len(settings)), 4.5), sharey=True)
  for ax, metric, title in zip(axes, METRICS, ("linear probe", "kNN (k=20)")):
    x = np.arange(len(settings))
    for offset, split in ((-0.2, "test"), (0.2, "test_ood")):
      means = [summary[s][split][metric]["mean"] for s in settings]
      stds = [summary[s][split][metric]["std"] for s in settings]
      ax.bar(x + offset, means, 0.4, yerr=stds, capsize=3, label=split)
    ax.set_xticks(x, settings, rotation=30, ha="right")
    ax.set_title(title)
    ax.axhline(10.0, color="gray", lw=0.8, ls=":")   # chance, 10 classes
  axes[0].set_ylabel("top-1 (%)")
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="/tmp/relic_ablations")
  parser.add_argument("--out", default="experiments/results")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--settings", default=",".join(SETTINGS))
  parser.add_argument("--epochs", type=float, default=2.0,
                      help="pretraining epochs (0 = the quickstart's own)")
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  settings = args.settings.split(",")
  unknown = sorted(set(settings) - set(SETTINGS))
  if unknown:
    parser.error(f"unknown settings {unknown}; choose from {sorted(SETTINGS)}")
  if "relicv2" not in settings:
    parser.error("the 'relicv2' runs are needed (they also give the random-init reference)")
  root = pathlib.Path(args.workdir)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # Seed-major, so that an interrupted set already has every setting for its first seeds.
  runs = {s: [] for s in settings}
  for seed in seeds:
    for s in settings:
      runs[s].append(run_one(s, seed, root, args.epochs))
  summary = summarize(runs)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  command = "python -m experiments.ablations " + " ".join(argv or sys.argv[1:])
  (out / "ablations.json").write_text(json.dumps(dict(seeds=seeds, cpu=machine.cpu_model(),
                                                     summary=summary), indent=1))
  (out / "ablations.md").write_text(markdown(summary, len(seeds), command.strip()))
  plot(summary, out / "ablations.png")
  print((out / "ablations.md").read_text())


if __name__ == "__main__":
  main()
