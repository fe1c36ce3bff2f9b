"""The experiment scripts: every ablation setting is a valid config and the summary is right;
the step benchmark's sweep selection and its results file kept up to date setting by setting;
the segmentation-step benchmark end to end on a tiny encoder."""

import importlib.util
import json

import numpy as np
import pytest

from experiments import ablations, bench_step
from relic import config as config_lib
from relic.jobs import pretrain


def quickstart_config():
  spec = importlib.util.spec_from_file_location("quickstart", "configs/quickstart.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("setting", list(ablations.SETTINGS))
def test_every_setting_is_a_valid_config(setting, tmp_path):
  (tmp_path / ablations.SALIENCY_RUN / "masks").mkdir(parents=True)   # job_masks reads them
  command = ablations.run_command(setting, seed=2, workdir=tmp_path / setting / "seed2",
                                  epochs=1.5)
  assert command[1:4] == ["-m", "relic.main", "--config=configs/quickstart.py"]
  config = quickstart_config()
  for flag in command[5:]:
    path, value = flag[len("--config."):].split("=", 1)
    *parents, leaf = path.split(".")
    node = config
    for name in parents:
      node = node[name]
    assert leaf in node, f"{setting}: no config field {path}"   # a typo would fail here
    current = node[leaf]
    if isinstance(current, bool):
      assert value in ("True", "False"), flag
      node[leaf] = value == "True"
    else:
      node[leaf] = value if isinstance(current, str) else type(current)(value)
  factor = ablations.SETTINGS[setting].get(ablations.EPOCHS_FACTOR, 1)
  assert config.seed == 2 and config.train.num_epochs == 1.5 * factor
  assert config.final_eval.compare_random_init == (setting == "relicv2")
  config_lib.validate(config)
  pretrain.validate(config)   # e.g. supervised needs projector_output_dim == classes


def test_long_settings_run_four_times_the_schedule(tmp_path):
  def epochs(setting, base):
    command = ablations.run_command(setting, seed=0, workdir=tmp_path / setting / "seed0",
                                    epochs=base)
    flags = [f for f in command if f.startswith("--config.train.num_epochs=")]
    return float(flags[0].split("=", 1)[1]) if flags else None
  assert epochs("relicv2_long", 2.0) == 8.0 and epochs("relicv2", 2.0) == 2.0
  assert epochs("no_invariance_long", 0) == 4 * quickstart_config().train.num_epochs
  assert epochs("relicv2", 0) is None   # --epochs=0: the quickstart's own schedule


def fake_results(pretrained, random_init):
  def splits(value):
    return {s: {"linear_top1": value, "knn_top1": value - 1.0} for s in ablations.SPLITS}
  return {"pretrained": splits(pretrained), "random_init": splits(random_init)}


def test_summary_means_spreads_and_reference(tmp_path):
  runs = {"relicv2": [fake_results(40.0, 20.0), fake_results(44.0, 22.0),
                      fake_results(45.0, 21.0)],
          "no_masking": [fake_results(30.0, 20.0), fake_results(32.0, 22.0),
                         fake_results(34.0, 21.0)]}
  summary = ablations.summarize(runs)
  assert list(summary) == ["relicv2", "no_masking", "random_init"]
  relic = summary["relicv2"]["test"]["linear_top1"]
  assert relic["mean"] == pytest.approx(43.0)
  assert relic["std"] == pytest.approx(np.std([40, 44, 45], ddof=1))
  assert summary["random_init"]["test_ood"]["knn_top1"]["mean"] == pytest.approx(20.0)
  assert summary["relicv2"]["steps"] is None and summary["random_init"]["steps"] == 0
  summary["relicv2"]["steps"] = 313
  table = ablations.markdown(summary, 3, "python -m experiments.ablations")
  assert "| relicv2 | 313 | 43.0 ± 2.6 | 40.0 / 44.0 / 45.0 |" in table
  assert "| random_init | 0 | 21.0 ± 1.0 | 20.0 / 22.0 / 21.0 |" in table
  # Seed-by-seed differences: relicv2 - random init = 20, 22, 24; no_masking - relicv2 = -10.
  gain = summary["relicv2"]["paired"]
  assert gain["reference"] == "random_init" and gain["test"]["linear_top1"]["values"] == [
      20.0, 22.0, 24.0]
  drop = summary["no_masking"]["paired"]["test_ood"]["knn_top1"]
  assert drop["values"] == [-10.0, -12.0, -11.0] and drop["std"] == pytest.approx(1.0)
  assert "paired" not in summary["random_init"]
  # Every 4x-schedule ablation is compared with ReLICv2 on the same schedule.
  assert {s: ablations.paired_reference(s) for s in ablations.SETTINGS
          if s.endswith("_long")} == {"relicv2_long": "relicv2", "no_invariance_long":
                                      "relicv2_long", "no_masking_long": "relicv2_long",
                                      "no_small_views_long": "relicv2_long",
                                      "simclr_long": "relicv2_long"}
  assert "| random_init | 0 | 21.0 ± 1.0 | 20.0 / 22.0 / 21.0 | 21.0 ± 1.0 | 20.0 ± 1.0 " \
         "| 20.0 ± 1.0 |  |  |  |" in table
  assert "| random_init | +22.0 ± 2.0 | +22.0 ± 2.0 |" in table
  ablations.plot(summary, tmp_path / "plot.png")
  assert (tmp_path / "plot.png").stat().st_size > 1000


def test_finished_runs_are_reused_not_repeated(tmp_path, monkeypatch):
  workdir = tmp_path / "relicv2" / "seed0"
  workdir.mkdir(parents=True)
  (workdir / "results.json").write_text(json.dumps(fake_results(50.0, 20.0)))

  def no_subprocess(*args, **kwargs):
    raise AssertionError("a finished run was started again")

  monkeypatch.setattr(ablations.subprocess, "run", no_subprocess)
  assert ablations.run_one("relicv2", 0, tmp_path, 0.0) == dict(fake_results(50.0, 20.0),
                                                                steps=None)
  # The steps trained are the last step of the run's metrics log.
  (workdir / "metrics.jsonl").write_text("\n".join(
      json.dumps(r) for r in ({"step": 20, "loss": 3.0}, {"note": "eval"}, {"step": 313})))
  assert ablations.run_one("relicv2", 0, tmp_path, 0.0)["steps"] == 313


def test_bench_sweep_selects_settings_and_keeps_each_finished_one(tmp_path, monkeypatch):
  args = bench_step.parse_args(["--sweep", "--sweep_batches", "128,64", "--sweep_dtypes",
                                "bfloat16", "--sweep_remat", "off"])
  argvs = bench_step.sweep_argvs(args)
  names = [argv[argv.index("--name") + 1] for argv in argvs]
  assert names == ["sweep_r50_b128_bfloat16_remat_off", "sweep_r50_b64_bfloat16_remat_off"]
  assert all(argv[argv.index("--dtype") + 1] == "bfloat16" for argv in argvs)
  assert len(bench_step.sweep_argvs(bench_step.parse_args(["--sweep"]))) == 12  # full grid

  # The second setting never finishes: the file still holds the first one's numbers.
  out = tmp_path / "bench.json"
  finished = []

  class Finished:
    returncode, stderr = 0, ""
    stdout = json.dumps({"name": "first", "images_per_s": 1.0}) + "\n"

  def fake_run(cmd, **unused):
    if finished:
      assert json.loads(out.read_text()) == [{"name": "first", "images_per_s": 1.0}]
      raise bench_step.subprocess.TimeoutExpired(cmd, 1)
    finished.append(cmd)
    return Finished()

  monkeypatch.setattr(bench_step.subprocess, "run", fake_run)
  records = bench_step.run_subprocesses(argvs, timeout=1, out=str(out))
  assert records[1]["error"] == "timed out after 1s"
  assert [r["name"] for r in json.loads(out.read_text())] == [
      "first", "sweep_r50_b64_bfloat16_remat_off"]


def test_segmentation_step_benchmark_measures_the_jobs_step():
  from experiments import bench_segmentation
  args = ["--tiny", "--steps", "2", "--warmup", "1", "--per_device_batch", "1"]
  dilated = bench_segmentation.run(bench_segmentation.parse_args(args))
  plain = bench_segmentation.run(bench_segmentation.parse_args(args + ["--output_stride", "32"]))
  assert dilated["global_batch"] == 8 and dilated["crop"] == 64       # 8 simulated devices
  assert dilated["images_per_s"] > 0 and dilated["peak_memory_bytes"] > 0
  assert 2.0 < dilated["loss"] < 5.0                                   # about ln(21) at init
  # The dilated last stage runs on a 2x larger feature map: more FLOPs per image.
  assert dilated["flops_per_image"] > 1.2 * plain["flops_per_image"]
  assert dilated["mfu"] is None                                        # no CPU peak


def test_bench_step_measures_a_config_file_as_it_is():
  config = bench_step.build_config(bench_step.parse_args(["--config", "quickstart"]))
  quickstart = quickstart_config()
  for section in ("model", "optim", "loss", "ema"):
    assert config[section].to_dict() == quickstart[section].to_dict(), section
  assert config.data.views.to_dict() == quickstart.data.views.to_dict()
  assert config.train.batch_size == quickstart.train.batch_size == 64
  # A flag still overrides the file.
  larger = bench_step.build_config(bench_step.parse_args(["--config", "quickstart",
                                                         "--large_size", "32"]))
  assert quickstart.data.views.large.size == 24
  assert larger.data.views.large.size == 32 and larger.model.base_width == 16


def test_quickstart_seeds_reports_each_seed_with_its_wall_time_and_machine(tmp_path, capsys):
  from experiments import quickstart_seeds
  root = tmp_path / "seeds"
  quickstart_seeds.main(["--workdir", str(root), "--seeds", "3",
                         "--config", "configs/quickstart.py:runlocal", "--cold_cache"])
  out = json.loads(capsys.readouterr().out)
  row, = out["seeds"]
  assert out["cpu"].endswith("cores") and out["cold_cache"] and row["seed"] == 3
  assert row["wall_s"] > 0 and row["images_per_s"] > 0
  # Each number is the run's own results.json, and the gain is pretrained - random init.
  results = json.loads((root / "seed3" / "results.json").read_text())
  for encoder in ("pretrained", "random_init"):
    for split in ("test", "test_ood"):
      assert row[f"{encoder}/{split}/linear_top1"] == round(
          results[encoder][split]["linear_top1"], 2)
  assert row["gain_linear_test"] == pytest.approx(
      row["pretrained/test/linear_top1"] - row["random_init/test/linear_top1"], abs=0.011)
  assert out["mean_gain_linear_test"] == out["min_gain_linear_test"] == row["gain_linear_test"]
  # --cold_cache: the run generated the built-in dataset inside its own timed command.
  assert list((root / "seed3" / "cache" / "builtin").glob("*.npz"))
