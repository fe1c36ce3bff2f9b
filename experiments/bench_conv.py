"""The weight gradient of a convolution, XLA's native rule against relic's chunked one
(relic/models/conv.py), per convolution shape of an encoder; the forward pass for scale.

On XLA:CPU the native weight gradient over a large batch is one to two orders of magnitude
slower than the forward pass (openxla/xla#34273); over batch chunks of ``relic.models.conv.CHUNK``
examples it is not. This script shows it per layer and for chunk sizes around the default. On a
GPU or TPU relic uses the native rule (the two columns then time the same computation). Imports
no TensorFlow. Prints one JSON line per shape; ``--out`` also writes them to a file.

Run from the repository root:
  # The quickstart encoder's convolutions (32 px, 2 views x 128 images):
  python -m experiments.bench_conv
  # Other chunk sizes, and ResNet-50's first stages at 224 px (batch 16 per device):
  python -m experiments.bench_conv --chunks 8,16,32,64
  python -m experiments.bench_conv --shapes resnet50 --batch 16

Fields: forward_ms, native_ms, chunked_ms (chunk size CHUNK), chunk_<n>_ms (--chunks), speedup
(native / chunked), max_rel_diff (chunked vs native weight gradient, relative to its largest
entry): medians of --repeats timed calls after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax

from experiments import machine
from relic.models import conv as conv_lib

NHWC = ("NHWC", "HWIO", "NHWC")
# (size, channels in, channels out, kernel, stride) of each distinct convolution.
SHAPES = {
    # ResNet-18 with stage sizes (1, 1, 1, 1), base width 16, small-image stem, 32 px views.
    "quickstart": [(32, 3, 16, 3, 1), (32, 16, 16, 3, 1), (32, 16, 32, 3, 2), (32, 16, 32, 1, 2),
                   (16, 32, 32, 3, 1), (16, 32, 64, 3, 2), (8, 64, 64, 3, 1),
                   (8, 64, 128, 3, 2), (4, 128, 128, 3, 1)],
    # ResNet-50's stem and first bottleneck stage at 224 px.
    "resnet50": [(224, 3, 64, 7, 2), (56, 64, 64, 1, 1), (56, 64, 64, 3, 1), (56, 64, 256, 1, 1),
                 (56, 256, 64, 1, 1)],
}


def timed_ms(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def measure(shape, batch: int, chunks: list[int], repeats: int) -> dict:
  size, c_in, c_out, k, stride = shape
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (batch, size, size, c_in))
  w = jax.random.normal(kw, (k, k, c_in, c_out)) * 0.1
  pad = ((k // 2, k // 2),) * 2
  args = dict(window_strides=(stride, stride), padding=pad, dimension_numbers=NHWC)
  out_size = -(-size // stride)
  g = jax.random.normal(kg, (batch, out_size, out_size, c_out))
  params = conv_lib._Params((stride, stride), pad, None, None,  # pylint: disable=protected-access
                            lax.conv_dimension_numbers(x.shape, w.shape, NHWC), 1, 1, None, None)
  forward = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, **args))
  native = jax.jit(lambda x, w, g: conv_lib._native_weight_grad(params, x, w, g))  # pylint: disable=protected-access

  def chunked_fn(chunk: int):
    return jax.jit(lambda x, w, g: jax.vjp(lambda w: conv_lib.conv_general_dilated(
        x, w, weight_grad_chunk=chunk, **args), w)[1](g)[0])

  reference = native(x, w, g)
  chunked = chunked_fn(conv_lib.CHUNK)
  line = dict(shape=dict(size=size, c_in=c_in, c_out=c_out, kernel=k, stride=stride),
              batch=batch, backend=jax.default_backend(), chunk=conv_lib.CHUNK,
              forward_ms=round(timed_ms(forward, x, w, repeats=repeats), 2),
              native_ms=round(timed_ms(native, x, w, g, repeats=repeats), 2),
              chunked_ms=round(timed_ms(chunked, x, w, g, repeats=repeats), 2))
  line["speedup"] = round(line["native_ms"] / line["chunked_ms"], 2)
  line["max_rel_diff"] = float(jnp.abs(chunked(x, w, g) - reference).max()
                               / jnp.abs(reference).max())
  for chunk in chunks:
    line[f"chunk_{chunk}_ms"] = round(timed_ms(chunked_fn(chunk), x, w, g, repeats=repeats), 2)
  return line


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shapes", choices=sorted(SHAPES), default="quickstart")
  p.add_argument("--batch", type=int, default=256, help="examples (quickstart: 2 views x 128).")
  p.add_argument("--chunks", default="", help="extra chunk sizes to time, e.g. '8,32'.")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", default="", help="also write the JSON lines to this file (a list).")
  args = p.parse_args(argv)
  chunks = [int(c) for c in args.chunks.split(",") if c]
  lines = []
  for shape in SHAPES[args.shapes]:
    line = dict(measure(shape, args.batch, chunks, args.repeats), **machine.host_fields())
    print(json.dumps(line), flush=True)
    lines.append(line)
  total = {key: round(sum(line[key] for line in lines), 1)
           for key in ("forward_ms", "native_ms", "chunked_ms")}
  print(json.dumps(dict(total=total, speedup=round(total["native_ms"] / total["chunked_ms"], 2),
                        shapes=args.shapes, batch=args.batch, **machine.host_fields())))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(lines, f, indent=1)


if __name__ == "__main__":
  main()
