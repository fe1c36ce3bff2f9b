r"""The compared recipe (experiments/peers/recipe.py) trained in PyTorch with lightly.

  python -m experiments.peers.lightly_train --objective=simclr --data=CIFAR10_DIR --seed=0 \
      --out=/tmp/peers/lightly/simclr/seed0

Written the way a lightly user writes it: lightly's heads (``BYOLProjectionHead``,
``BYOLPredictionHead``), losses (``NTXentLoss``, ``NegativeCosineSimilarity``) and momentum
helpers (``update_momentum``, ``cosine_schedule``), a torch DataLoader whose worker decodes,
crops and augments, AdamW. What is relic's: the encoder (``relic.interop.torch_resnet``, plain
torchvision modules) and the view formulas (torch_views.py), so that both libraries train the same
network on the same distribution of views. Writes ``backbone.pth`` (torchvision names, loadable
into ``torch_resnet``) and ``train.json`` (steps, images/s over steps 21 to the end, seconds).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import pathlib
import time

import numpy as np
import torch
from PIL import Image
from torch import nn

from experiments.peers import recipe, torch_views
from relic.data import augment_spec
from relic.data.views import cycle_presets

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# One DataLoader worker beside the main process's 2 torch threads: on 2 cores the fastest
# setting measured (SimCLR, 150 steps, AMD EPYC Zen 4: 426 images/s with 1 worker, 368 with 2,
# 419 with none).
WORKERS = 1


def list_images(split_dir: pathlib.Path) -> list[pathlib.Path]:
  files = sorted(p for p in split_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
  if not files:
    raise FileNotFoundError(f"No images under {split_dir}. Fix: point --data at a folder with a "
                            "train/ sub-folder of images (class folders or not).")
  return files


class ViewStream(torch.utils.data.Dataset):
  """Item j of the training stream: image ``order(epoch)[j % N]`` as its large views, uint8
  (V, 3, S, S). Every random number is a function of (seed, j), whatever the worker."""

  def __init__(self, files: list[pathlib.Path], config, num_steps: int):
    self.files = files
    self.seed = int(config.seed)
    self.length = num_steps * int(config.train.batch_size)
    large = config.data.views.large
    self.size, self.num_views = int(large.size), int(large.num)
    self.scale = (float(large.min_scale), float(large.max_scale))

  def __len__(self) -> int:
    return self.length

  @functools.lru_cache(maxsize=2)
  def order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.files))

  def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
    epoch, position = divmod(j, len(self.files))
    with Image.open(self.files[self.order(epoch)[position]]) as f:
      image = np.asarray(f.convert("RGB"))
    rng = np.random.default_rng([self.seed, 1, j])
    crop_u = rng.random((self.num_views, torch_views.CROP_UNIFORMS), dtype=np.float32)
    photometric_u = rng.random((self.num_views, augment_spec.NUM_UNIFORMS), dtype=np.float32)
    views = torch.stack([
        torch_views.crop_and_resize(image, torch_views.random_resized_crop_box(
            crop_u[v], image.shape[0], image.shape[1], *self.scale), self.size)
        for v in range(self.num_views)])
    return views, torch.from_numpy(photometric_u)


class Collate:
  """Stacks a batch and applies BYOL's photometric augmentation to it, in the worker, as relic's
  step does to its uint8 crops: (V, B, 3, S, S) float32 in [0, 1]."""

  def __init__(self, config):
    self.presets = cycle_presets(config.data.views.large.presets, config.data.views.large.num)
    self.params = augment_spec.Photometric.from_config(config.data)

  def __call__(self, items: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    views = torch.stack([v for v, _ in items], dim=1).float() / 255.0   # (V, B, 3, S, S)
    u = torch.stack([u for _, u in items], dim=1)                       # (V, B, NUM_UNIFORMS)
    return torch.stack([torch_views.photometric(views[v], u[v], self.presets[v] * views.shape[1],
                                                self.params) for v in range(views.shape[0])])


def build_networks(config) -> dict[str, nn.Module]:
  from lightly.models.modules import heads  # pylint: disable=import-outside-toplevel
  from relic.interop.torch_models import torch_resnet  # pylint: disable=import-outside-toplevel

  m = config.model
  backbone = torch_resnet(m.depth, m.width_multiplier, stage_sizes=list(m.stage_sizes) or None,
                          base_width=m.base_width, small_images=m.small_images, num_classes=0)
  features = m.base_width * m.width_multiplier * 8 * (4 if m.depth >= 50 else 1)
  # lightly's BYOL heads are relic's MLP: Linear -> BatchNorm1d -> ReLU -> Linear (with bias).
  # (SimCLRProjectionHead would add a BatchNorm1d after its last Linear, which relic has not.)
  nets = {"backbone": backbone,
          "projector": heads.BYOLProjectionHead(features, m.projector_hidden_dim,
                                                m.projector_output_dim)}
  if config.loss.objective == "byol":
    nets["predictor"] = heads.BYOLPredictionHead(m.projector_output_dim, m.predictor_hidden_dim,
                                                 m.projector_output_dim)
  return nets


def make_loss(config):
  """The objective with relic's value: SimCLR's NT-Xent over 2B - 2 negatives (lightly's
  ``NTXentLoss``, its mean over the 2B anchors, as relic's), BYOL's
  ``2 * mean(2 - 2 cos)`` over the two directions (lightly's ``NegativeCosineSimilarity`` is
  ``-cos``: relic's value is ``4 + 2 * (l(p0, z1) + l(p1, z0))``, same gradient direction)."""
  from lightly import loss as lightly_loss  # pylint: disable=import-outside-toplevel

  if config.loss.objective == "simclr":
    nt_xent = lightly_loss.NTXentLoss(temperature=float(config.loss.temperature))
    return lambda z, p=None, targets=None: nt_xent(z[0], z[1])
  if config.loss.objective == "byol":
    negative_cosine = lightly_loss.NegativeCosineSimilarity()
    return lambda z, p, targets: 4.0 + 2.0 * (negative_cosine(p[0], targets[1])
                                              + negative_cosine(p[1], targets[0]))
  raise ValueError(f"lightly has no {config.loss.objective!r} objective; the PyTorch side runs "
                   "'simclr' and 'byol'.")


def adamw(nets: dict[str, nn.Module], config) -> torch.optim.AdamW:
  """AdamW with relic's decay mask: weight matrices (conv and linear kernels) decay, biases and
  BatchNorm parameters do not (relic.optim.weight_decay_mask)."""
  params = [p for net in nets.values() for p in net.parameters() if p.requires_grad]
  return torch.optim.AdamW(
      [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.optim.weight_decay},
       {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
      lr=recipe.peak_learning_rate(config), betas=(0.9, 0.999), eps=1e-8)


def fake_batches(config, num_steps: int):
  """One fixed batch of random augmented views, ``num_steps`` times: the step without the input
  pipeline (as relic's ``data.fake``), for the profile."""
  large = config.data.views.large
  views = torch.rand(int(large.num), int(config.train.batch_size), 3, int(large.size),
                     int(large.size))
  return (views for _ in range(num_steps))


def train(config, data: pathlib.Path, out: pathlib.Path, workers: int = 1,
          fake: bool = False) -> dict:
  from lightly.models.utils import update_momentum  # pylint: disable=import-outside-toplevel
  from lightly.utils.scheduler import cosine_schedule  # pylint: disable=import-outside-toplevel

  started = time.perf_counter()
  torch.manual_seed(int(config.seed))
  files = list_images(data / config.data.train_split)
  total = recipe.num_steps(config, len(files))
  warmup = recipe.warmup_steps(config, len(files))
  peak = recipe.peak_learning_rate(config)
  nets = build_networks(config)
  uses_target = config.loss.objective == "byol"
  targets = {k: copy.deepcopy(nets[k]).requires_grad_(False)
             for k in ("backbone", "projector")} if uses_target else {}
  optimizer = adamw(nets, config)
  schedule = torch.optim.lr_scheduler.LambdaLR(
      optimizer, lambda k: recipe.learning_rate(k, peak, total, warmup) / peak)
  loss_fn = make_loss(config)
  loader = fake_batches(config, total) if fake else torch.utils.data.DataLoader(
      ViewStream(files, config, total), batch_size=int(config.train.batch_size), shuffle=False,
      num_workers=workers, collate_fn=Collate(config), persistent_workers=False,
      prefetch_factor=4 if workers else None)
  for net in [*nets.values(), *targets.values()]:
    net.train()
  timed_from, losses = None, []
  for step, views in enumerate(loader):
    num_views, batch = views.shape[:2]
    merged = views.flatten(0, 1)
    projections = nets["projector"](nets["backbone"](merged)).unflatten(0, (num_views, batch))
    if uses_target:
      predictions = nets["predictor"](projections.flatten(0, 1)).unflatten(0, (num_views, batch))
      with torch.no_grad():
        target_z = targets["projector"](targets["backbone"](merged)).unflatten(
            0, (num_views, batch))
      loss = loss_fn(projections, predictions, target_z)
    else:
      loss = loss_fn(projections)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()
    if uses_target:   # after the update, with the rate of this step (relic's order)
      rate = cosine_schedule(step, total + 1, float(config.ema.base_rate), 1.0)
      for name, target in targets.items():
        update_momentum(nets[name], target, m=rate)
    losses.append(loss.item())
    if step + 1 == recipe.TIMED_FROM_STEP:
      timed_from = time.perf_counter()
    if (step + 1) % int(config.train.log_every_steps) == 0:
      print(json.dumps({"step": step + 1, "loss": round(float(np.mean(losses[-20:])), 4)}),
            flush=True)
  finished = time.perf_counter()
  if not np.isfinite(losses[-1]):
    raise FloatingPointError(f"The loss is {losses[-1]} at the last step.")
  out.mkdir(parents=True, exist_ok=True)
  torch.save(nets["backbone"].state_dict(), out / "backbone.pth")
  timed_steps = total - recipe.TIMED_FROM_STEP
  result = dict(library="lightly", objective=config.loss.objective, seed=int(config.seed),
                steps=total, batch_size=int(config.train.batch_size),
                images_per_s=(timed_steps * int(config.train.batch_size) / (finished - timed_from)
                              if timed_steps > 0 else None),
                train_seconds=finished - started, final_loss=float(np.mean(losses[-20:])),
                torch=torch.__version__, torch_threads=torch.get_num_threads(),
                dataloader_workers=0 if fake else workers, fake_data=fake)
  (out / "train.json").write_text(json.dumps(result, indent=1))
  return result


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--objective", choices=("simclr", "byol"), required=True)
  parser.add_argument("--data", required=True, help="folder with train/ (and test/) images")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", required=True)
  parser.add_argument("--workers", type=int, default=WORKERS, help="DataLoader worker processes")
  parser.add_argument("--fake", action="store_true",
                      help="random views in memory, no input pipeline (the step alone)")
  parser.add_argument("--override", action="append", default=[],
                      help="KEY=VALUE of the recipe's config, e.g. train.num_steps=40")
  args = parser.parse_args(argv)
  config = recipe.peer_config(args.objective, args.data, args.seed,
                              **recipe.parse_overrides(args.override))
  print(json.dumps(train(config, pathlib.Path(args.data), pathlib.Path(args.out),
                         workers=args.workers, fake=args.fake)))


if __name__ == "__main__":
  main()
