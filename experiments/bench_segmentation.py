"""Speed, FLOPs, MFU and memory of one segmentation-transfer training step (FCN-16s on a dilated
ResNet, relic/train/segmentation_step.py), on fake data already on device.

The step is the job's own (relic/train/segmentation_step.py: forward in train mode with global BatchNorm,
per-pixel cross-entropy, SGD + momentum + weight decay, donation), so the numbers are what a
``segmentation`` run gets without its input pipeline. Prints one JSON line; ``--out`` also
writes it to a file.

Run from the repository root:
  # BYOL's VOC setting: ResNet-50, 513 px crops, output stride 16, 2 images per device:
  python -m experiments.bench_segmentation --depth 50 --crop 513 --per_device_batch 2
  # bfloat16 on an accelerator:
  python -m experiments.bench_segmentation --depth 50 --crop 513 --per_device_batch 8 \
      --dtype bfloat16 --out /tmp/bench_segmentation.json
  # A tiny encoder on the CPU (seconds):
  python -m experiments.bench_segmentation --tiny

Fields: step_time_s (median of --steps timed steps after --warmup), images_per_s (global batch /
step time), flops_per_image (XLA's cost analysis of the lowered step / global batch), mfu
(against the device's peak, see experiments/bench_step.py; null on CPU unless --peak_flops),
peak_memory_bytes (accelerator allocator peak, or the compiled step's memory analysis on CPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench_step import cost_value, peak_flops_per_device, peak_memory_bytes, timed
from experiments import machine
from relic import config as config_lib, parallel
from relic.train import segmentation_step as seg_step
from relic.models import encoder_from_config, segmentation_net

TINY = dict(depth=18, stage_sizes=(1, 1, 1, 1), base_width=8, small_images=True)


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--depth", type=int, default=50)
  parser.add_argument("--width_multiplier", type=int, default=1)
  parser.add_argument("--crop", type=int, default=513)
  parser.add_argument("--per_device_batch", type=int, default=2)
  parser.add_argument("--output_stride", type=int, default=16, choices=(8, 16, 32))
  parser.add_argument("--num_classes", type=int, default=21)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--remat", action="store_true")
  parser.add_argument("--tiny", action="store_true",
                      help="a one-block-per-stage ResNet-18 of width 8 at 64 px (CPU check)")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--peak_flops", type=float, default=0.0,
                      help="peak FLOP/s per device, for devices missing from bench_step's table")
  parser.add_argument("--out", default="", help="also write the JSON record to this file")
  return parser.parse_args(argv)


def build_config(args: argparse.Namespace):
  config = config_lib.base_config()
  config.model.update(dict(depth=args.depth, width_multiplier=args.width_multiplier,
                           dtype=args.dtype, remat=args.remat))
  crop = args.crop
  if args.tiny:
    config.model.update(TINY)
    crop = 64
  config.segmentation.update(dict(crop_size=crop, output_stride=args.output_stride,
                                  batch_size=args.per_device_batch * jax.device_count()))
  return config


def fake_batch(batch_size: int, crop: int, num_classes: int, mesh) -> dict[str, jax.Array]:
  """Random images and masks (10% void pixels), generated on the devices in the step's layout."""
  def generate(key):
    keys = jax.random.split(key, 3)
    mask = jax.random.randint(keys[1], (batch_size, crop, crop), 0, num_classes, jnp.int32)
    void = jax.random.uniform(keys[2], mask.shape) < 0.1
    return {"image": jax.random.uniform(keys[0], (batch_size, crop, crop, 3)),
            "mask": jnp.where(void, 255, mask), "valid": jnp.ones((batch_size,), bool)}
  shapes = jax.eval_shape(generate, jax.random.key(0))
  shardings = jax.tree.map(lambda _: parallel.data_sharding(mesh), shapes)
  return jax.jit(generate, out_shardings=shardings)(jax.random.key(0))


def run(args: argparse.Namespace) -> dict[str, Any]:
  config = build_config(args)
  s = config.segmentation
  mesh = parallel.make_mesh()
  device = jax.devices()[0]
  encoder = encoder_from_config(config.model)
  # Random encoder weights stand in for a pretrained checkpoint (same shapes, same work).
  variables = jax.jit(lambda key: encoder.init(key, jnp.zeros((1, 32, 32, 3)), train=False))(
      jax.random.key(0))
  net = segmentation_net(encoder, config.segmentation, args.num_classes)
  optimizer, schedule = seg_step.make_optimizer(config, 0.01)
  state = parallel.replicate(seg_step.init_state(net, variables, optimizer, config), mesh)
  batch = fake_batch(s.batch_size, s.crop_size, args.num_classes, mesh)
  replicated = parallel.replicated(mesh)
  step = jax.jit(seg_step.make_train_step(net, optimizer, schedule),
                 in_shardings=(replicated, parallel.data_sharding(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=0)
  start = time.perf_counter()
  lowered = step.lower(state, batch)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  flops = cost_value(lowered.cost_analysis())
  for _ in range(args.warmup):
    state, metrics = jax.block_until_ready(compiled(state, batch))
  peak_memory, memory_source = peak_memory_bytes(device, compiled)
  times = []
  for _ in range(args.steps):
    (state, metrics), dt = timed(compiled, state, batch)
    times.append(dt)
  loss = float(jax.device_get(metrics["loss"]))
  if not np.isfinite(loss):
    raise FloatingPointError(f"non-finite loss {loss}")
  step_time = statistics.median(times)
  peak, basis = ((args.peak_flops, "--peak_flops") if args.peak_flops
                 else peak_flops_per_device(device, args.dtype))
  if device.platform == "cpu" and not args.peak_flops:
    peak, basis = None, "no peak for CPU; pass --peak_flops"
  flops_per_image = flops / s.batch_size if flops else None
  return dict(
      benchmark="segmentation_step",
      model=dict(depth=config.model.depth, width_multiplier=config.model.width_multiplier,
                 stage_sizes=list(config.model.stage_sizes) or None,
                 base_width=config.model.base_width, small_images=config.model.small_images),
      crop=s.crop_size, output_stride=s.output_stride, num_classes=args.num_classes,
      dtype=args.dtype, remat=bool(args.remat), global_batch=s.batch_size,
      per_device_batch=args.per_device_batch, step_time_s=step_time,
      step_time_min_s=min(times), images_per_s=s.batch_size / step_time,
      flops_per_image=flops_per_image,
      mfu=(flops_per_image * s.batch_size / step_time / (peak * jax.device_count())
           if peak and flops_per_image else None),
      peak_flops_per_device=peak, peak_flops_basis=basis, peak_memory_bytes=peak_memory,
      peak_memory_source=memory_source, compile_time_s=compile_s, loss=loss,
      timed_steps=args.steps, warmup_steps=args.warmup, device_kind=device.device_kind,
      platform=device.platform, device_count=jax.device_count(), **machine.host_fields(),
      jax_version=jax.__version__,
      python=platform.python_version())


def main(argv=None) -> None:
  args = parse_args(argv)
  record = run(args)
  line = json.dumps(record)
  print(line, flush=True)
  if args.out:
    with open(args.out, "w") as f:
      f.write(line + "\n")


if __name__ == "__main__":
  main()
