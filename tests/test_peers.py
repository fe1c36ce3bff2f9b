"""experiments/peers: the parts that relic and the PyTorch (lightly) side must share are the same.

The views, the schedules and the losses of the PyTorch side are written again in torch/NumPy
(experiments/peers/torch_views.py, recipe.py, lightly_train.py); here each is checked numerically
against relic's own function. Tests that need lightly skip without it (it is the optional
``[peers]`` extra); the rest need only torch (``[test]``).
"""

from __future__ import annotations

import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from experiments.peers import recipe, run, torch_views  # noqa: E402
from relic import objectives, schedules  # noqa: E402
from relic.data import augment, augment_spec, crops  # noqa: E402

needs_lightly = pytest.mark.skipif(importlib.util.find_spec("lightly") is None,
                                   reason="lightly is not installed (pip install -e '.[peers]')")


def config(objective="simclr", **extra):
  return recipe.peer_config(objective, "/data/cifar10", 0, **extra)


def test_recipe_is_the_quickstart_restricted_to_two_large_views():
  c = config("byol")
  assert (c.data.views.large.num, c.data.views.large.size, c.data.views.small.num) == (2, 24, 0)
  assert (c.data.source, c.data.path, c.data.mask_prob) == ("folder", "/data/cifar10", 0.0)
  assert (c.loss.objective, c.model.predictor, c.probe.enabled) == ("byol", True, False)
  assert tuple(c.evaluators.periodic) == () and tuple(c.evaluators.final) == ()
  assert (c.optim.name, c.train.batch_size, c.train.num_epochs) == ("adamw", 64, 1.0)
  # The command-line form carries the same values (tuples as Python literals).
  flags = recipe.relic_flags("byol", "/data/cifar10", 3)
  assert "--config.evaluators.periodic=()" in flags and "--config.seed=3" in flags
  assert "--config.model.predictor=True" in flags
  assert recipe.parse_overrides(["train.num_epochs=0.2", "data.path=/x"]) == {
      "train.num_epochs": 0.2, "data.path": "/x"}
  with pytest.raises(ValueError, match="KEY=VALUE"):
    recipe.parse_overrides(["train.num_epochs"])


def test_schedule_lengths_and_learning_rate_match_relic():
  c = config()
  for examples in (50_000, 9_469, 1_000):
    assert recipe.num_steps(c, examples) == schedules.total_steps(c, examples)
    assert recipe.warmup_steps(c, examples) == schedules.warmup_steps(c, examples)
  total, warmup = recipe.num_steps(c, 50_000), recipe.warmup_steps(c, 50_000)
  relic_schedule = schedules.learning_rate_schedule(c, total, warmup)
  steps = np.arange(total + 3)
  ours = np.array([recipe.learning_rate(int(k), recipe.peak_learning_rate(c), total, warmup)
                   for k in steps])
  np.testing.assert_allclose(ours, np.asarray(jax.vmap(relic_schedule)(steps)), rtol=1e-5,
                             atol=1e-9)
  assert ours[0] == 0.0 and ours.max() == pytest.approx(1e-2 * 64 / 256)


@needs_lightly
def test_lightly_momentum_schedule_matches_relic_ema_rate():
  from lightly.utils.scheduler import cosine_schedule

  total = 782
  for base in (0.0, 0.99):
    ours = [cosine_schedule(k, total + 1, base, 1.0) for k in range(total + 1)]
    np.testing.assert_allclose(ours, [float(schedules.ema_rate(k, total, base))
                                      for k in range(total + 1)], atol=1e-6)


@pytest.mark.parametrize("shape", [(32, 32), (37, 53), (300, 20), (20, 300)])
def test_crop_box_matches_relic(shape):
  height, width = shape
  rng = np.random.default_rng(height * width)
  for _ in range(25):
    u = rng.random(torch_views.CROP_UNIFORMS, dtype=np.float32)
    expected = [int(v) for v in crops.random_resized_crop_box(u, height, width, 0.4, 1.0)]
    assert list(torch_views.random_resized_crop_box(u, height, width, 0.4, 1.0)) == expected
  assert torch_views.CROP_UNIFORMS == crops.CROP_UNIFORMS


def test_crop_and_resize_is_torch_bicubic():
  image = np.random.default_rng(0).integers(0, 256, (37, 41, 3), dtype=np.uint8)
  box = (3, 5, 30, 27)
  patch = torch.from_numpy(image[3:33, 5:32].copy()).permute(2, 0, 1)[None].float()
  expected = torch.nn.functional.interpolate(patch, size=(24, 24), mode="bicubic",
                                             align_corners=False)[0]
  got = torch_views.crop_and_resize(image, box, 24)
  assert got.dtype == torch.uint8 and got.shape == (3, 24, 24)
  np.testing.assert_array_equal(got.numpy(), expected.clamp(0, 255).round().to(torch.uint8))


@pytest.mark.parametrize("grayscale_prob", [0.0, 0.5])
def test_photometric_matches_relic(grayscale_prob):
  params = augment_spec.Photometric(color_strength=1.0, grayscale_prob=grayscale_prob,
                                    blur=False)
  rng = np.random.default_rng(1)
  images = rng.random((64, 12, 12, 3), dtype=np.float32)
  u = rng.random((64, augment_spec.NUM_UNIFORMS), dtype=np.float32)
  presets = "AB" * 32
  solarize = jnp.array([augment_spec.PRESETS[p].solarize_prob for p in presets])
  expected = jax.vmap(lambda x, v, s: augment.augment_image(x, v, 0.0, s, 1, params))(
      images, u, solarize)
  got = torch_views.photometric(torch.from_numpy(images.transpose(0, 3, 1, 2)),
                                torch.from_numpy(u), presets, params)
  np.testing.assert_allclose(got.numpy().transpose(0, 2, 3, 1), np.asarray(expected), atol=2e-5)
  # The draw covers every branch: jitter, flip, solarisation (and grayscale when enabled).
  p = augment_spec.photometric_params(u, params)
  assert p["jitter"].any() and p["flip"].any()
  assert bool(p["grayscale"].any()) == (grayscale_prob > 0)
  with pytest.raises(NotImplementedError, match="Blur"):
    torch_views.photometric(torch.zeros(2, 3, 4, 4), torch.zeros(2, 14), "AB")


@needs_lightly
@pytest.mark.parametrize("objective", ["simclr", "byol"])
def test_lightly_losses_have_relic_values(objective):
  from experiments.peers import lightly_train

  rng = np.random.default_rng(2)
  online = rng.normal(size=(2, 16, 8)).astype(np.float32)
  target = rng.normal(size=(2, 16, 8)).astype(np.float32)
  predictions = rng.normal(size=(2, 16, 8)).astype(np.float32)
  loss = lightly_train.make_loss(config(objective))
  if objective == "simclr":
    ours = loss(torch.from_numpy(online))
    expected, _ = objectives.simclr_loss(jnp.asarray(online), num_large=2, temperature=0.2)
  else:
    ours = loss(None, torch.from_numpy(predictions), torch.from_numpy(target))
    expected, _ = objectives.byol_loss(jnp.asarray(predictions), jnp.asarray(target))
  assert float(ours) == pytest.approx(float(expected), rel=1e-5)


@needs_lightly
def test_lightly_networks_are_relics_layout():
  from experiments.peers import lightly_train
  from relic.interop.torch_models import torch_resnet

  nets = lightly_train.build_networks(config("byol"))
  reference = torch_resnet(18, stage_sizes=[1, 1, 1, 1], base_width=16, small_images=True)
  assert nets["backbone"].state_dict().keys() == reference.state_dict().keys()
  x = torch.zeros(4, 3, 24, 24)
  assert nets["backbone"](x).shape == (4, 128)
  layers = [type(m).__name__ for m in nets["projector"].modules()][2:]
  assert layers == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
  assert nets["projector"](nets["backbone"](x)).shape == (4, 128)
  assert nets["predictor"](torch.zeros(4, 128)).shape == (4, 128)
  with pytest.raises(ValueError, match="no 'relicv2'"):
    lightly_train.make_loss(config("relicv2"))


def test_relic_images_per_s_counts_the_steps_after_warm_up(tmp_path):
  lines = [{"step": 20, "train/steps_per_s": 1.0}, {"step": 40, "train/steps_per_s": 4.0},
           {"step": 60, "train/steps_per_s": 2.0}, {"step": 60, "eval/x": 1.0}]
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in lines))
  # Steps 21-60: 20 steps at 4/s + 20 at 2/s = 15 s for 40 x 64 images.
  assert run.relic_images_per_s(tmp_path, 64, after_step=20) == pytest.approx(40 * 64 / 15)
  with pytest.raises(RuntimeError, match="no logged training steps"):
    run.relic_images_per_s(tmp_path, 64, after_step=60)


def test_summary_pairs_libraries_seed_by_seed():
  def result(library, objective, seed, linear, speed, seconds):
    return dict(library=library, objective=objective, seed=seed, linear_top1=linear,
                knn_top1=linear - 1, images_per_s=speed, process_seconds=seconds)

  runs = [result("relic", "simclr", 0, 50.0, 500.0, 150.0),
          result("lightly", "simclr", 0, 48.0, 400.0, 100.0),
          result("relic", "simclr", 1, 52.0, 450.0, 140.0),
          result("lightly", "simclr", 1, 53.0, 450.0, 140.0),
          result("relic", "relicv2", 0, 55.0, 480.0, 150.0)]
  summary = run.summarize(runs)
  paired = summary["relic_vs_lightly"]["simclr"]
  assert paired["linear_top1_diff"]["values"] == [2.0, -1.0]
  assert paired["images_per_s_ratio"]["values"] == [1.25, 1.0]
  assert paired["process_seconds_ratio"]["values"] == [1.5, 1.0]
  assert "relicv2" not in summary["relic_vs_lightly"]    # lightly has no ReLICv2
  assert summary["rows"]["simclr/relic"]["linear_top1"]["mean"] == 51.0
  table = run.markdown(summary, [0, 1], "python -m experiments.peers.run")
  assert "| simclr | relic | 51.0 ± 1.4 (50.0 / 52.0)" in table
  assert "| simclr | 0.5 ± 2.1 (2.0 / -1.0)" in table


@needs_lightly
def test_lightly_side_trains_on_a_generated_folder(tmp_path):
  from PIL import Image

  from experiments.peers import lightly_train
  from relic.interop.torch_models import torch_resnet

  rng = np.random.default_rng(0)
  for label in ("a", "b"):
    (tmp_path / "train" / label).mkdir(parents=True)
    for i in range(8):
      Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(
          tmp_path / "train" / label / f"{i}.png")
  c = recipe.peer_config("byol", str(tmp_path), 0, **{"train.num_steps": 3,
                                                       "train.batch_size": 8,
                                                       "optim.warmup_epochs": 0.0})
  result = lightly_train.train(c, tmp_path, tmp_path / "out", workers=0)
  assert (result["steps"], result["objective"], result["images_per_s"]) == (3, "byol", None)
  assert np.isfinite(result["final_loss"])
  model = torch_resnet(18, stage_sizes=[1, 1, 1, 1], base_width=16, small_images=True)
  model.load_state_dict(torch.load(tmp_path / "out" / "backbone.pth"), strict=True)
