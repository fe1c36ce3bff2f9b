"""Speed, FLOPs, MFU and memory of one ReLICv2 pretraining step, on fake data already on device.

Measures the jitted step of relic/train/pretrain_step.py exactly as training runs it (LARS, EMA,
online probe, on-device photometric augmentation, donation, the state layout of
``config.train.fsdp``), with no input pipeline, and compares it with the bare network passes it
contains. Prints one JSON line per setting; ``--out`` also writes them to a JSON file.

Run from the repository root:
  # ResNet-50, default views (4x224 + 2x96), 64 images per device, bfloat16:
  python -m experiments.bench_step --depth 50 --per_device_batch 64 --dtype bfloat16
  # The runlocal tiny ResNet on CPU, without photometric augmentation:
  python -m experiments.bench_step --config_arg runlocal --batch_size 64 --augment off
  # The quickstart's step (its model, views, batch and optimiser), device vs host augmentation:
  python -m experiments.bench_step --config quickstart --augment on
  python -m experiments.bench_step --config quickstart --augment off
  # Where the step's time goes beyond the network passes (one setting per removed piece):
  python -m experiments.bench_step --config_arg runlocal --batch_size 64 --profile
  # Accelerator sweep (ResNet-50, per-device batch 32/64/128, remat off/on, f32/bf16), with
  # the per-piece breakdown:
  python -m experiments.bench_step --sweep --pieces --out experiments/results/bench_step_h100.json
  # A short accelerator check, most important setting first (bash experiments/accelerator_bench.sh):
  python -m experiments.bench_step --sweep --sweep_batches 128,64 --sweep_dtypes bfloat16 \
      --sweep_remat off --pieces --out /tmp/bench_step_gpu.json
  # FSDP on simulated CPU devices (layout check, not a speed number):
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m experiments.bench_step \
      --config_arg runlocal --batch_size 64 --fsdp on

Fields of a line:
  step_time_s      median wall time of one full train step (after warm-up, block_until_ready).
  network_time_s   median time of the bare network passes the step contains, jitted on their
                   own with the same shapes and shardings: online forward + backward on all
                   views (sum of outputs as the loss) and target forward on the large views.
  overhead_ratio   step_time_s / network_time_s: the cost of everything that is not the
                   networks (augmentation, loss, optimiser, EMA, probe, metrics). Goal <= 1.05.
                   Both are timed alternately in one loop so load drift hits both alike;
                   on a shared machine also read overhead_ratio_paired (median of per-iteration
                   ratios) and overhead_ratio_min (fastest step / fastest network passes).
  images_per_s     global batch (images, each giving L + S views) / step_time_s.
  flops_per_image  model FLOPs of the full step per image, from XLA's cost analysis of the
                   step lowered *without* remat (so remat's recomputation does not count as
                   useful work). executed_flops_per_image: what the compiled program actually
                   runs (per-device cost analysis x devices), remat included.
  mfu              flops_per_image * images_per_s / (peak_flops * device_count). peak_flops is
                   per device from the table below by device kind, or --peak_flops; null on CPU.
                   For float32 on NVIDIA GPUs the TF32 tensor-core peak is used, because XLA runs
                   float32 convolutions and matmuls in TF32 at JAX's default matmul precision;
                   with JAX_DEFAULT_MATMUL_PRECISION=highest the full-FP32 peak is used.
  peak_memory_bytes  GPU/TPU: ``peak_bytes_in_use`` of device 0's allocator after the step's
                   warm-up (each sweep setting runs in its own process, so the peak is that
                   setting's). CPU: the compiled step's temp + argument + output - alias sizes
                   (per device), see peak_memory_source.
  bytes_accessed_per_image, network_bytes_accessed_per_image  memory traffic of the compiled
                   step / network passes (XLA cost analysis): the non-network work is
                   memory-bound, so its share shows here, not in the FLOPs.
  entry_ops, network_entry_ops  top-level instructions of the compiled programs, about the
                   number of kernels launched per call: a fixed per-step cost that a larger
                   per-device batch amortises.
  pieces (--pieces) each non-network piece (augment, loss, optimizer, ema, probe) jitted and
                   timed alone with the step's shapes and layouts: time_s, flops,
                   bytes_accessed and entry_ops per step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import types
from typing import Any
from unittest import mock

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from experiments import machine
from relic import config as config_lib, presets
from relic import objectives, parallel, schedules
from relic.train import divergence, pretrain_step
from relic.models import LinearHead, networks_from_config
from relic.optim import make_optimizer, step_scheduled
from relic.train.states import create_train_state

# Dense peak FLOP/s per device: (bfloat16, float32 at default precision, float32 at 'highest'),
# matched on a lower-cased substring of ``device.device_kind``; first match wins.
PEAK_FLOPS = (
    ("h100 pcie", (756e12, 378e12, 51e12)),
    ("h100", (989e12, 495e12, 67e12)),       # H100 SXM: bf16 / tf32 / fp32, dense.
    ("h200", (989e12, 495e12, 67e12)),       # same compute as H100 SXM, more HBM.
    ("a100", (312e12, 156e12, 19.5e12)),
    ("tpu v4", (275e12, 275e12, 275e12 / 6)),  # TPU float32 at default precision = bf16 passes.
    ("tpu v5 lite", (197e12, 197e12, 197e12 / 6)),
    ("tpu v5e", (197e12, 197e12, 197e12 / 6)),
    ("tpu v5p", (459e12, 459e12, 459e12 / 6)),
    ("tpu v5", (459e12, 459e12, 459e12 / 6)),
    ("tpu v6 lite", (918e12, 918e12, 918e12 / 6)),
)

# Pieces of the step that --ablate / --profile can remove, to see where the time goes.
ABLATIONS = ("augment", "probe", "ema", "loss", "lars")

SWEEP_PER_DEVICE_BATCH = (32, 64, 128)
# Instructions that launch no kernel (buffer aliasing and plumbing).
FREE_OPCODES = ("parameter", "tuple", "get-tuple-element", "bitcast", "constant")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="",
                 help="a config file or shipped name (e.g. 'quickstart'): its model, views, "
                      "batch and optimiser instead of the ImageNet ResNet's; flags below "
                      "still override.")
  p.add_argument("--config_arg", default="", help="'runlocal' for the tiny CPU model.")
  p.add_argument("--depth", type=int, default=50)
  p.add_argument("--width_multiplier", type=int, default=1)
  p.add_argument("--stage_sizes", default="", help="e.g. '1,1,1,1' (default: the depth's).")
  p.add_argument("--base_width", type=int, default=None)
  p.add_argument("--small_images", choices=("on", "off"), default=None)
  p.add_argument("--batch_size", type=int, default=None, help="global batch (images).")
  p.add_argument("--per_device_batch", type=int, default=None,
                 help="images per device (global = this x device count).")
  p.add_argument("--num_large", type=int, default=None)
  p.add_argument("--large_size", type=int, default=None)
  p.add_argument("--num_small", type=int, default=None)
  p.add_argument("--small_size", type=int, default=None)
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--remat", choices=("on", "off"), default="off")
  p.add_argument("--fsdp", choices=("on", "off"), default="off")
  p.add_argument("--augment", choices=("on", "off"), default="on",
                 help="photometric augmentation inside the step (uint8 views in).")
  p.add_argument("--num_classes", type=int, default=None,
                 help="online probe classes (default: 10 on the built-in data, as with runlocal, "
                      "else 1000; 0 = none).")
  p.add_argument("--ablate", default="", help=f"comma list out of {ABLATIONS}.")
  p.add_argument("--steps", type=int, default=10, help="timed steps.")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation.")
  p.add_argument("--peak_flops", type=float, default=None, help="per device; overrides table.")
  p.add_argument("--pieces", action="store_true",
                 help="also time each non-network piece of the step jitted on its own.")
  p.add_argument("--trace_dir", default="", help="write a jax.profiler trace of 3 steps here.")
  p.add_argument("--name", default="", help="label stored in the JSON line.")
  p.add_argument("--out", default="", help="also write the JSON lines to this file (a list).")
  p.add_argument("--append", action="store_true", help="append to --out instead of replacing.")
  p.add_argument("--profile", action="store_true",
                 help="run the setting, then once per removed piece, then with all removed.")
  p.add_argument("--sweep", action="store_true",
                 help="ResNet-50 sweep for accelerators (see module docstring).")
  p.add_argument("--sweep_batches", default=",".join(map(str, SWEEP_PER_DEVICE_BATCH)),
                 help="per-device batches of --sweep.")
  p.add_argument("--sweep_dtypes", default="float32,bfloat16", help="dtypes of --sweep.")
  p.add_argument("--sweep_remat", default="off,on", help="remat settings of --sweep.")
  p.add_argument("--setting_timeout", type=int, default=1800,
                 help="seconds per setting in --profile / --sweep (each runs in a subprocess).")
  return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Building the step.


def build_config(args: argparse.Namespace):
  if args.config:
    from relic import config_files, main  # pylint: disable=import-outside-toplevel
    config = main.load_config_file(config_files.resolve(args.config))
  else:
    config = presets.imagenet_pretrain_config(
        args.config_arg or None, depth=args.depth, width_multiplier=args.width_multiplier,
        name="bench_step")
  if args.stage_sizes:
    config.model.stage_sizes = tuple(int(s) for s in args.stage_sizes.split(","))
  if args.base_width is not None:
    config.model.base_width = args.base_width
  if args.small_images is not None:
    config.model.small_images = args.small_images == "on"
  views = config.data.views
  for value, group, field in ((args.num_large, "large", "num"),
                              (args.large_size, "large", "size"),
                              (args.num_small, "small", "num"),
                              (args.small_size, "small", "size")):
    if value is not None:
      views[group][field] = value
  config.model.dtype = args.dtype
  config.model.remat = args.remat == "on"
  config.train.fsdp = args.fsdp == "on"
  config.data.augment_on_device = args.augment == "on" and "augment" not in ablations(args)
  num_devices = jax.device_count()
  if args.per_device_batch:
    config.train.batch_size = args.per_device_batch * num_devices
  elif args.batch_size:
    config.train.batch_size = args.batch_size
  return config


def ablations(args: argparse.Namespace) -> tuple[str, ...]:
  names = tuple(a.strip() for a in args.ablate.split(",") if a.strip())
  unknown = set(names) - set(ABLATIONS)
  if unknown:
    raise SystemExit(f"--ablate: unknown piece(s) {sorted(unknown)}; choose from {ABLATIONS}")
  return names


def augmentation_available() -> str:
  """'' when the on-device augmentation module imports, else why not."""
  try:
    from relic.data import augment, views  # noqa: F401  pylint: disable=import-outside-toplevel
  except ImportError as e:
    return f"relic.data.augment not importable ({e}); float views, no photometric augmentation"
  return ""


def _dummy_loss(online, target, **unused):
  """Stands in for the ReLICv2 loss when it is ablated: keeps both branches alive, nothing else."""
  del unused
  loss = jnp.mean(online.astype(jnp.float32)) + jnp.mean(target.astype(jnp.float32))
  return loss, dict(loss=loss)


@contextlib.contextmanager
def ablated(names: tuple[str, ...]):
  """Swaps the EMA update / the loss out while the step is traced (they are module-level
  functions looked up at trace time); the other ablations are plain config choices."""
  with contextlib.ExitStack() as stack:
    if "ema" in names:
      stack.enter_context(mock.patch.object(pretrain_step, "ema_update",
                                            lambda target, online, rate: target))
    if "loss" in names:
      stack.enter_context(mock.patch.object(objectives, "relicv2_loss", _dummy_loss))
    yield


def build_step(config, names: tuple[str, ...], num_classes: int):
  online, target = networks_from_config(config.model)
  total_steps, warmup = 10_000, 100
  learning_rate = schedules.learning_rate_schedule(config, total_steps, warmup)
  optimizer = step_scheduled(optax.sgd if "lars" in names else
                             lambda lr: make_optimizer(config, lr))
  probe_optimizer = optax.sgd(config.probe.lr, momentum=0.9, nesterov=True)  # as the job
  num_classes = 0 if "probe" in names else num_classes

  def ema(step):
    return schedules.ema_rate(step, total_steps, config.ema.base_rate)

  step = divergence.guarded(pretrain_step.make_pretrain_step(
      config, online=online, target=target, optimizer=optimizer,
      probe_optimizer=probe_optimizer, learning_rate=learning_rate, ema_rate=ema,
      num_classes=num_classes), config.train.nan_policy)   # as the job runs it

  def init(rng):
    return create_train_state(rng, online=online, target=target, optimizer=optimizer,
                              probe_optimizer=probe_optimizer, num_classes=num_classes,
                              image_size=config.data.views.large.size)

  return types.SimpleNamespace(online=online, target=target, step=step, init=init,
                               optimizer=optimizer, probe_optimizer=probe_optimizer,
                               num_classes=num_classes)


def make_network_passes(online, target):
  """The bare network work of one step: online forward + backward on every view (sum of the
  outputs as a stand-in loss) and target forward on the large views, with BatchNorm in
  training mode and its statistics updated, as in the step."""

  def merge(views):
    return views.reshape((-1,) + views.shape[2:])

  def passes(params, batch_stats, target_params, target_stats, large, small):
    def dummy_loss(p):
      variables = {"params": p, "batch_stats": batch_stats}
      (_, _, out), updates = online.apply(variables, merge(large), train=True,
                                          mutable=["batch_stats"])
      total = jnp.sum(out)
      if small is not None:
        (_, _, out_small), _ = online.apply(variables, merge(small), train=True,
                                            mutable=["batch_stats"])
        total += jnp.sum(out_small)
      return total, updates["batch_stats"]

    grads, stats = jax.grad(dummy_loss, has_aux=True)(params)
    (_, projection, _), target_updates = target.apply(
        {"params": target_params, "batch_stats": target_stats}, merge(large), train=True,
        mutable=["batch_stats"])
    return grads, stats, target_updates["batch_stats"], jnp.sum(projection)

  return passes


def fake_batch(config, mesh, num_classes: int, uint8: bool) -> dict[str, jax.Array]:
  """Random views generated on the devices, already in the data layout: no host in the loop."""
  batch_size = config.train.batch_size
  views = config.data.views

  def generate(rng):
    keys = jax.random.split(rng, 3)
    out = {}
    for key, group in zip(keys[:2], ("large", "small")):
      num, size = views[group].num, views[group].size
      if group == "small" and num == 0:
        continue
      shape = (batch_size, num, size, size, 3)
      if uint8:
        out[group] = jax.random.randint(key, shape, 0, 256, jnp.int32).astype(jnp.uint8)
      else:
        out[group] = jax.random.uniform(key, shape, jnp.float32)
    out["label"] = jax.random.randint(keys[2], (batch_size,), 0, max(num_classes, 1), jnp.int32)
    return out

  shapes = jax.eval_shape(generate, jax.random.key(1))
  shardings = jax.tree.map(lambda _: parallel.data_sharding(mesh), shapes)
  return jax.jit(generate, out_shardings=shardings)(jax.random.key(1))


# ---------------------------------------------------------------------------------------------
# Measuring.


def peak_flops_per_device(device, dtype: str) -> tuple[float | None, str]:
  kind = device.device_kind.lower()
  highest = str(jax.config.jax_default_matmul_precision or "").lower() in ("highest", "float32")
  for pattern, (bf16, f32_default, f32_highest) in PEAK_FLOPS:
    if pattern in kind:
      if dtype == "bfloat16":
        return bf16, f"{pattern} dense bfloat16"
      if highest:
        return f32_highest, f"{pattern} dense float32 (matmul precision 'highest')"
      return f32_default, (f"{pattern} dense float32 at default matmul precision "
                           "(TF32 on NVIDIA, bf16 passes on TPU)")
  return None, f"unknown device kind {device.device_kind!r}; pass --peak_flops"


def cost_value(cost: Any, key: str = "flops") -> float | None:
  """One entry of an XLA cost analysis (a dict, or a one-element list in older jax)."""
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost[key]) if cost and key in cost else None


def entry_ops(compiled) -> int | None:
  """Instructions of the compiled program's entry computation: after fusion, roughly the
  number of kernels an accelerator launches per call, i.e. the fixed per-step cost that small
  per-tensor updates (LARS norms, EMA, one fusion each) add regardless of the batch size."""
  try:
    text = compiled.as_text()
  except Exception:  # pylint: disable=broad-except
    return None
  lines = text.splitlines()
  start = next((i for i, line in enumerate(lines) if line.startswith("ENTRY")), None)
  if start is None:
    return None
  count = 0
  for line in lines[start + 1:]:
    if line.startswith("}"):
      break
    # "%name = TYPE opcode(operands), ..." with TYPE possibly a "(tuple, of, shapes)".
    match = re.search(r" ([a-z][a-z0-9_\-]*)\(", line.partition("=")[2])
    if match and match.group(1) not in FREE_OPCODES:
      count += 1
  return count


def memory_fields(compiled) -> dict[str, Any]:
  stats = compiled.memory_analysis()
  if stats is None:
    return {}
  fields = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
            "alias_size_in_bytes")
  return {f: int(getattr(stats, f)) for f in fields}


def peak_memory_bytes(device, compiled) -> tuple[int | None, str]:
  """``(bytes, source)``: the accelerator allocator's peak so far, or on CPU (no allocator
  statistics) the compiled program's temp + argument + output - alias sizes per device."""
  memory_stats = device.memory_stats() or {}
  if "peak_bytes_in_use" in memory_stats:
    return int(memory_stats["peak_bytes_in_use"]), "device memory_stats"
  m = memory_fields(compiled)
  total = (m["temp_size_in_bytes"] + m["argument_size_in_bytes"] + m["output_size_in_bytes"]
           - m["alias_size_in_bytes"]) if m else None
  return total, "compiled memory_analysis (temp+argument+output-alias, per device)"


def timed(fn, *args) -> tuple[Any, float]:
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - start


def run_setting(args: argparse.Namespace) -> dict[str, Any]:
  names = ablations(args)
  note = augmentation_available() if args.augment == "on" and "augment" not in names else ""
  config = build_config(args)
  if note:
    config.data.augment_on_device = False
  config_lib.validate(config)
  num_classes = args.num_classes
  if num_classes is None:
    num_classes = 10 if config.data.source == "builtin" else 1000   # runlocal is built-in too
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.train.batch_size, mesh)
  device = jax.devices()[0]
  num_devices = jax.device_count()
  batch_size = config.train.batch_size

  with ablated(names):
    built = build_step(config, names, num_classes)
    online, target, step, init = built.online, built.target, built.step, built.init
    # The state is created in place with its final layout (FSDP: each device only ever holds
    # its shards), as a training job would.
    state_shapes = jax.eval_shape(init, jax.random.key(0))
    shardings = parallel.state_sharding(state_shapes, mesh, fsdp=config.train.fsdp)
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
    batch = fake_batch(config, mesh, num_classes, uint8=config.data.augment_on_device)
    jitted = pretrain_step.jit_pretrain_step(step, shardings, parallel.data_sharding(mesh))
    start = time.perf_counter()
    lowered = jitted.lower(state, batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    if config.model.remat:
      # Model FLOPs must not count remat's recomputation: lower the same step without it.
      config_no_remat = config.copy_and_resolve_references()
      config_no_remat.model.remat = False
      step_no_remat = build_step(config_no_remat, names, num_classes).step
      model_lowered = pretrain_step.jit_pretrain_step(
          step_no_remat, shardings, parallel.data_sharding(mesh)).lower(state, batch)
    else:
      model_lowered = lowered
  model_flops = cost_value(model_lowered.cost_analysis())
  executed_cost = compiled.cost_analysis()
  executed_flops = cost_value(executed_cost)

  for _ in range(args.warmup):
    state, metrics = jax.block_until_ready(compiled(state, batch))
  # Peak memory of the step alone: read before the bare network passes allocate anything.
  peak_memory, memory_source = peak_memory_bytes(device, compiled)

  # The bare network passes get their own copy of the networks (the step donates, i.e.
  # deletes, the state it is given) and float views, in the same layouts as in the step.
  data = parallel.data_sharding(mesh)
  net_shardings = (shardings.online_params, shardings.online_batch_stats,
                   shardings.target_params, shardings.target_batch_stats)
  networks = jax.jit(lambda *trees: jax.tree.map(jnp.copy, trees), out_shardings=net_shardings)(
      state.online_params, state.online_batch_stats, state.target_params,
      state.target_batch_stats)
  to_float = jax.jit(lambda v: v.astype(jnp.float32) / (255.0 if v.dtype == jnp.uint8 else 1.0),
                     out_shardings=data)
  large = to_float(batch["large"])
  small = to_float(batch["small"]) if "small" in batch else None
  passes_jitted = jax.jit(
      make_network_passes(online, target),
      in_shardings=(*net_shardings, data, None if small is None else data),
      out_shardings=(shardings.online_params, shardings.online_batch_stats,
                     shardings.target_batch_stats, parallel.replicated(mesh)))
  passes_args = (*networks, large, small)
  passes_lowered = passes_jitted.lower(*passes_args)
  passes_compiled = passes_lowered.compile()
  network_flops = cost_value(passes_lowered.cost_analysis())
  network_cost = passes_compiled.cost_analysis()
  for _ in range(args.warmup):
    jax.block_until_ready(passes_compiled(*passes_args))
  if args.trace_dir:
    with jax.profiler.trace(args.trace_dir):
      for _ in range(3):
        state, metrics = jax.block_until_ready(compiled(state, batch))
        jax.block_until_ready(passes_compiled(*passes_args))

  step_times, network_times = [], []
  for _ in range(args.steps):
    (state, metrics), dt = timed(compiled, state, batch)
    step_times.append(dt)
    _, dt = timed(passes_compiled, *passes_args)
    network_times.append(dt)
  if not bool(metrics["finite"]):
    raise FloatingPointError(f"non-finite step: {jax.device_get(metrics)}")

  def per_image(value):
    return value * num_devices / batch_size if value is not None else None

  pieces = measure_pieces(config, built, state, batch, mesh, args.steps) if args.pieces else None
  step_time = statistics.median(step_times)
  network_time = statistics.median(network_times)
  peak, peak_basis = ((args.peak_flops, "--peak_flops") if args.peak_flops
                      else peak_flops_per_device(device, config.model.dtype))
  if device.platform == "cpu" and not args.peak_flops:
    peak, peak_basis = None, "no peak for CPU; pass --peak_flops"
  flops_per_image = model_flops / batch_size if model_flops else None
  mfu = (flops_per_image * batch_size / step_time / (peak * num_devices)
         if peak and flops_per_image else None)
  views = config.data.views
  return dict(
      name=args.name or None,
      model=dict(depth=config.model.depth, width_multiplier=config.model.width_multiplier,
                 stage_sizes=list(config.model.stage_sizes) or None,
                 base_width=config.model.base_width, small_images=config.model.small_images),
      global_batch=batch_size, per_device_batch=batch_size // num_devices,
      views=f"{views.large.num}x{views.large.size}+{views.small.num}x{views.small.size}",
      dtype=config.model.dtype, remat=bool(config.model.remat), fsdp=bool(config.train.fsdp),
      augment_on_device=bool(config.data.augment_on_device), augment_note=note or None,
      probe_classes=0 if "probe" in names else num_classes, ablated=list(names),
      step_time_s=step_time, step_time_min_s=min(step_times), step_time_max_s=max(step_times),
      network_time_s=network_time, overhead_ratio=step_time / network_time,
      # Noise-robust variants for shared machines: per-iteration ratios of adjacent timings
      # (same load), and the ratio of the fastest runs.
      overhead_ratio_paired=statistics.median(s / n for s, n in zip(step_times, network_times)),
      overhead_ratio_min=min(step_times) / min(network_times),
      images_per_s=batch_size / step_time,
      flops_per_image=flops_per_image,
      executed_flops_per_image=(executed_flops * num_devices / batch_size
                                if executed_flops else None),
      network_flops_per_image=network_flops / batch_size if network_flops else None,
      # Memory traffic of the compiled programs (per device x devices): the non-network parts
      # of the step are memory-bound, so their share shows here rather than in the FLOPs.
      bytes_accessed_per_image=per_image(cost_value(executed_cost, "bytes accessed")),
      network_bytes_accessed_per_image=per_image(cost_value(network_cost, "bytes accessed")),
      entry_ops=entry_ops(compiled), network_entry_ops=entry_ops(passes_compiled),
      achieved_flops_per_s=flops_per_image * batch_size / step_time if flops_per_image else None,
      peak_flops_per_device=peak, peak_flops_basis=peak_basis, mfu=mfu,
      peak_memory_bytes=peak_memory, peak_memory_source=memory_source,
      compiled_memory=memory_fields(compiled), compile_time_s=compile_s, pieces=pieces,
      timed_steps=args.steps, warmup_steps=args.warmup,
      device_kind=device.device_kind, platform=device.platform, device_count=num_devices,
      process_count=jax.process_count(), **machine.host_fields(),
      jax_version=jax.__version__, python=platform.python_version(),
  )


def measure_pieces(config, built, state, batch, mesh, num_steps: int) -> dict[str, Any]:
  """Each non-network piece of the step jitted and timed on its own, with the step's shapes
  and layouts: where the time beyond the network passes goes, without a profiler.

  Pieces: 'augment' (photometric augmentation of all views), 'loss' (ReLICv2 loss and its
  gradient w.r.t. the online outputs), 'optimizer' (the optimiser update and its application),
  'ema' (target update), 'probe' (online probe loss, gradient and update).
  """
  views = config.data.views
  num_views, num_large = views.large.num + views.small.num, views.large.num
  batch_size, dim = config.train.batch_size, config.model.projector_output_dim
  view_major = NamedSharding(mesh, P(None, parallel.DATA_AXIS))
  make = jax.jit(lambda rng: (jax.random.normal(rng, (num_views, batch_size, dim)),
                              jax.random.normal(jax.random.fold_in(rng, 1),
                                                (num_large, batch_size, dim))),
                 out_shardings=(view_major, view_major))
  online_out, target_out = make(jax.random.key(2))
  loss_cfg = config.loss
  num_negatives = int(loss_cfg.num_negatives) or None

  def loss_and_grad(online, target, rng):
    return jax.value_and_grad(lambda o: objectives.relicv2_loss(
        o, target, temperature=loss_cfg.temperature, beta=loss_cfg.beta,
        num_negatives=num_negatives, rng=rng)[0])(online)

  def optimizer_update(params, opt_state):
    updates, opt_state = built.optimizer.update(params, opt_state, params)  # params as grads
    return optax.apply_updates(params, updates), opt_state

  pieces = dict(
      loss=(loss_and_grad, (online_out, target_out, state.rng)),
      optimizer=(optimizer_update, (state.online_params, state.opt_state)),
      ema=(lambda target, online: pretrain_step.ema_update(target, online, jnp.float32(0.99)),
           (state.target_params, state.online_params)),
  )
  if config.data.augment_on_device:
    from relic.data import augment as augment_lib  # pylint: disable=import-outside-toplevel
    from relic.data import views as views_lib  # pylint: disable=import-outside-toplevel
    large_presets, small_presets = views_lib.view_presets(config)

    def augment(rng, large, small):
      out = [augment_lib.augment_views(rng, large, large_presets)]
      if small is not None:
        out.append(augment_lib.augment_views(jax.random.fold_in(rng, 1), small, small_presets))
      return out

    pieces["augment"] = (augment, (state.rng, batch["large"], batch.get("small")))
  if built.num_classes:
    probe = LinearHead(built.num_classes)
    features = jax.jit(
        lambda rng: jax.random.normal(rng, (batch_size * num_large, built.online.encoder.num_features)),
        out_shardings=parallel.data_sharding(mesh))(jax.random.key(3))
    labels = jax.jit(lambda b: jnp.repeat(b["label"], num_large),
                     out_shardings=parallel.data_sharding(mesh))(batch)

    def probe_update(params, opt_state, features, labels):
      (loss, _), grads = jax.value_and_grad(
          lambda p: pretrain_step.probe_loss_and_top1(probe, p, features, labels),
          has_aux=True)(params)
      updates, opt_state = built.probe_optimizer.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    pieces["probe"] = (probe_update, (state.probe_params, state.probe_opt_state, features, labels))

  results = {}
  for name, (fn, fn_args) in pieces.items():
    compiled = jax.jit(fn).lower(*fn_args).compile()
    jax.block_until_ready(compiled(*fn_args))
    times = [timed(compiled, *fn_args)[1] for _ in range(num_steps)]
    cost = compiled.cost_analysis()
    num_devices = mesh.devices.size
    results[name] = dict(
        time_s=statistics.median(times),
        flops=(cost_value(cost) or 0.0) * num_devices,
        bytes_accessed=(cost_value(cost, "bytes accessed") or 0.0) * num_devices,
        entry_ops=entry_ops(compiled))
  return results


# ---------------------------------------------------------------------------------------------
# Several settings: each in its own process (isolated peak memory, an OOM fails one setting).


def sweep_argvs(args: argparse.Namespace) -> list[list[str]]:
  argvs = []
  for per_device in (int(b) for b in args.sweep_batches.split(",")):
    for remat in args.sweep_remat.split(","):
      for dtype in args.sweep_dtypes.split(","):
        argvs.append(["--depth", "50", "--per_device_batch", str(per_device), "--remat", remat,
                      "--dtype", dtype, "--fsdp", args.fsdp, "--augment", args.augment,
                      "--steps", str(args.steps), "--warmup", str(args.warmup),
                      "--name", f"sweep_r50_b{per_device}_{dtype}_remat_{remat}"
                      + ("_fsdp" if args.fsdp == "on" else "")]
                     + (["--peak_flops", str(args.peak_flops)] if args.peak_flops else [])
                     + (["--pieces"] if args.pieces else []))
  return argvs


def profile_argvs(argv: list[str]) -> list[list[str]]:
  """The setting as given, minus each piece in turn, then minus all of them."""
  base = [a for a in argv if a not in ("--profile", "--append")]
  base = _drop_flag(_drop_flag(base, "--out"), "--name")
  runs = [base + ["--name", "full"]]
  runs += [base + ["--ablate", piece, "--name", f"no_{piece}"] for piece in ABLATIONS]
  runs.append(base + ["--ablate", ",".join(ABLATIONS), "--name", "no_" + "_no_".join(ABLATIONS)])
  return runs


def _drop_flag(argv: list[str], flag: str) -> list[str]:
  out, skip = [], False
  for a in argv:
    if skip:
      skip = False
      continue
    if a == flag:
      skip = True
      continue
    if not a.startswith(flag + "="):
      out.append(a)
  return out


def run_subprocesses(argvs: list[list[str]], timeout: int, out: str = "",
                     append: bool = False) -> list[dict[str, Any]]:
  """Runs each setting in its own process; with ``out``, the file is rewritten after every
  setting, so a sweep cut short (time limit, lost machine) keeps the settings it finished."""
  records = []
  for argv in argvs:
    cmd = [sys.executable, "-m", "experiments.bench_step", *argv]
    name = argv[argv.index("--name") + 1] if "--name" in argv else ""
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                            cwd=REPO_ROOT)
      lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
      if proc.returncode == 0 and lines:
        record = json.loads(lines[-1])
      else:
        record = dict(name=name, argv=argv, error=proc.stderr.strip().splitlines()[-5:])
    except subprocess.TimeoutExpired:
      record = dict(name=name, argv=argv, error=f"timed out after {timeout}s")
    print(json.dumps(record), flush=True)
    records.append(record)
    write(records, out, append)
  return records


def write(records: list[dict[str, Any]], path: str, append: bool) -> None:
  if not path:
    return
  existing = []
  if append and os.path.exists(path):
    with open(path) as f:
      existing = json.load(f)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    json.dump(existing + records, f, indent=1)
    f.write("\n")


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  if args.sweep:
    run_subprocesses(sweep_argvs(args), args.setting_timeout, args.out, args.append)
  elif args.profile:
    run_subprocesses(profile_argvs(argv), args.setting_timeout, args.out, args.append)
  else:
    records = [run_setting(args)]
    print(json.dumps(records[0]), flush=True)
    write(records, args.out, args.append)


if __name__ == "__main__":
  main()
