r"""Input pipeline throughput: host images/s of the full multi-crop pipeline.

Run from the repository root:
  python -m experiments.bench_input                       # 4x224 + 2x96, 256 photos
  python -m experiments.bench_input --large=2x224 --small=6x96 --seconds=30

Writes ImageNet-sized JPEGs (about 500x375, from scikit-image's sample photographs, randomly
cropped, flipped and rescaled so no two files are alike) and a parallel folder of saliency
masks to a temporary folder, then measures, on this machine's CPUs:
  * ``decode_once`` / ``decode_per_view``: decode each JPEG once and cut every view from it,
    against one ``tf.io.decode_and_crop_jpeg`` per view (crops + resize only, no masks).
  * ``host_all``: the real pretraining pipeline with ``augment_on_device=False`` (crops,
    masks and the photometric augmentation in tf.data).
  * ``host_split``: the same with ``augment_on_device=True`` (crops and masks on the host).
  * ``device_augment_cpu``: the other half of split mode, ``augment_views`` jitted on the CPU
    for every view of an image (on an accelerator it is much faster).
  * ``segmentation_train``: the segmentation job's training input (relic/data/segmentation.py:
    decode, random 0.5-2x rescaling with the mask, 513 px crop, flip) on the same photos laid
    out as a VOC2012 folder, with one object mask per image.
Prints one JSON line per setting and saves them all to --out.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402

from experiments import machine  # noqa: E402
from relic import config as config_lib  # noqa: E402
from relic.data import augment, crops, pipeline, seeds, views  # noqa: E402
from relic.data import segmentation as seg_data  # noqa: E402

_NUM_IMAGES = flags.DEFINE_integer("num_images", 256, "JPEG files to write.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Per-process batch size.")
_SECONDS = flags.DEFINE_float("seconds", 20.0, "Measuring time per setting (after warm-up).")
_LARGE = flags.DEFINE_string("large", "4x224", "Large views: NUMxSIZE.")
_SMALL = flags.DEFINE_string("small", "2x96", "Small views: NUMxSIZE (0x96 for none).")
_MASK_PROB = flags.DEFINE_float("mask_prob", 0.1, "Probability a large view is masked.")
_SEG_CROP = flags.DEFINE_integer("segmentation_crop", 513, "Segmentation training crop size.")
_OUT = flags.DEFINE_string("out", "experiments/results/bench_input.json", "JSON output.")

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina", "colorwheel")


def write_photos(folder: pathlib.Path, masks: pathlib.Path, num: int) -> None:
  """``num`` distinct ~500x375 JPEGs (quality 90) and an elliptical saliency mask for each."""
  rng = np.random.default_rng(0)
  sources = [Image.fromarray(getattr(skimage.data, name)()[..., :3]) for name in PHOTOS]
  folder.mkdir(parents=True)
  masks.mkdir(parents=True)
  for i in range(num):
    photo = sources[i % len(sources)]
    w, h = photo.size
    keep = rng.uniform(0.7, 1.0)
    cw, ch = int(w * keep), int(h * keep)
    left, top = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    size = (500, 375) if rng.random() < 0.75 else (375, 500)
    image = photo.crop((left, top, left + cw, top + ch)).resize(size, Image.BICUBIC)
    if rng.random() < 0.5:
      image = image.transpose(Image.FLIP_LEFT_RIGHT)
    image.save(folder / f"{i:05d}.jpg", quality=90)
    yy, xx = np.mgrid[:size[1], :size[0]]
    cy, cx = rng.uniform(0.3, 0.7) * size[1], rng.uniform(0.3, 0.7) * size[0]
    inside = ((yy - cy) / (0.3 * size[1])) ** 2 + ((xx - cx) / (0.3 * size[0])) ** 2 < 1
    Image.fromarray((inside * 255).astype(np.uint8)).save(masks / f"{i:05d}.png")


def write_voc_layout(root: pathlib.Path, photos: pathlib.Path, masks: pathlib.Path) -> None:
  """The photos as a VOC2012 folder: JPEGImages/ (links), SegmentationClassAug/ index masks (the
  saliency ellipse as one of 20 classes, a void ring around it) and a 'train' list."""
  from scipy import ndimage  # pylint: disable=import-outside-toplevel
  for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
    (root / sub).mkdir(parents=True)
  ids = sorted(p.stem for p in photos.glob("*.jpg"))
  for i, name in enumerate(ids):
    (root / "JPEGImages" / f"{name}.jpg").symlink_to(photos / f"{name}.jpg")
    inside = np.asarray(Image.open(masks / f"{name}.png")) > 127
    ring = ndimage.binary_dilation(inside, iterations=3) & ~inside
    classes = np.where(inside, 1 + i % 20, 0).astype(np.uint8)
    classes[ring] = 255
    Image.fromarray(classes).save(root / "SegmentationClassAug" / f"{name}.png")
  (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")


def segmentation_train(root: pathlib.Path, cache: pathlib.Path, seconds: float) -> dict:
  config = config_lib.base_config()
  config.data.cache_dir = str(cache)
  config.data.update(dict(source="voc2012", path=str(root), train_split="train",
                          eval_split="train"))
  config.segmentation.crop_size = _SEG_CROP.value
  seg_data.check(config)
  rate, count = measure(seg_data.train_batches(config, batch_size=_BATCH.value, seed=0),
                        _BATCH.value, seconds)
  return dict(setting="segmentation_train", crop=_SEG_CROP.value, images_per_s=round(rate, 1),
              images_per_s_per_core=round(rate / cores(), 1), images=count)


def parse_views(text: str) -> tuple[int, int]:
  num, size = text.lower().split("x")
  return int(num), int(size)


def make_config(folder: pathlib.Path, masks: pathlib.Path, cache: pathlib.Path,
                augment_on_device: bool):
  config = config_lib.base_config()
  config.data.update(dict(source="folder", path=str(folder), mask_path=str(masks),
                          mask_prob=_MASK_PROB.value, cache_dir=str(cache),
                          augment_on_device=augment_on_device))
  for group, flag in (("large", _LARGE), ("small", _SMALL)):
    num, size = parse_views(flag.value)
    config.data.views[group].update(dict(num=num, size=size))
  return config


def cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def measure(batches, batch_size: int, seconds: float, warmup: int = 3) -> tuple[float, int]:
  """images/s over ``seconds`` after ``warmup`` batches; returns (rate, images measured)."""
  for _ in range(warmup):
    next(batches)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next(batches)
    count += batch_size
  return count / (time.perf_counter() - start), count


def decode_strategies(folder: pathlib.Path, config, seconds: float) -> list[dict]:
  """Decode once and crop every view vs one decode_and_crop_jpeg per view (uint8 views)."""
  large, small = views.view_specs(config)
  specs = large + small
  files = sorted(str(p) for p in folder.glob("*.jpg"))

  def boxes(key, height, width):
    for i, spec in enumerate(specs):
      u = tf.random.stateless_uniform([crops.CROP_UNIFORMS],
                                      seed=seeds.fold_in(seeds.fold_in(key, i), seeds.CROP))
      yield spec, crops.random_resized_crop_box(u, height, width, spec.min_scale, spec.max_scale)

  def finish(patch, spec):
    return tf.cast(tf.round(tf.clip_by_value(crops.resize(patch, spec.size), 0, 255)), tf.uint8)

  def once(index, encoded):
    image = tf.io.decode_jpeg(encoded, channels=3)
    key = seeds.fold_in(tf.constant([0, 0], tf.int64), index)
    shape = tf.shape(image)
    return [finish(crops.crop(image, box), spec) for spec, box in boxes(key, shape[0], shape[1])]

  def per_view(index, encoded):
    shape = tf.image.extract_jpeg_shape(encoded)
    key = seeds.fold_in(tf.constant([0, 0], tf.int64), index)
    return [finish(tf.io.decode_and_crop_jpeg(encoded, tf.stack(box), channels=3), spec)
            for spec, box in boxes(key, shape[0], shape[1])]

  results = []
  for name, fn in (("decode_once", once), ("decode_per_view", per_view)):
    ds = tf.data.Dataset.from_tensor_slices(files).map(tf.io.read_file).cache().repeat()
    ds = ds.enumerate().map(tf.function(fn, autograph=False),
                            num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(_BATCH.value).prefetch(tf.data.AUTOTUNE)
    rate, count = measure(ds.as_numpy_iterator(), _BATCH.value, seconds)
    results.append(dict(setting=name, images_per_s=round(rate, 1),
                        images_per_s_per_core=round(rate / cores(), 1), images=count))
  return results


def device_augment(config, seconds: float) -> dict:

  presets = views.view_presets(config)
  batch = 16
  groups = []
  for group, preset in zip(("large", "small"), presets):
    v = config.data.views[group]
    if v.num:
      groups.append((jnp.zeros((batch, v.num, v.size, v.size, 3), jnp.uint8) + 128, preset))
  fn = jax.jit(augment.augment_views, static_argnums=2)

  def step(i):
    return [fn(jax.random.key(i), x, p) for x, p in groups]

  jax.block_until_ready(step(0))
  count, start, i = 0, time.perf_counter(), 1
  while time.perf_counter() - start < seconds:
    jax.block_until_ready(step(i))
    count += batch
    i += 1
  rate = count / (time.perf_counter() - start)
  return dict(setting="device_augment_cpu", images_per_s=round(rate, 1),
              images_per_s_per_core=round(rate / cores(), 1), images=count,
              backend=jax.default_backend())


def main(argv) -> None:
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    folder, masks, cache = tmp / "photos", tmp / "masks", tmp / "cache"
    write_photos(folder, masks, _NUM_IMAGES.value)
    common = dict(cores=cores(), large=_LARGE.value, small=_SMALL.value,
                  mask_prob=_MASK_PROB.value, batch_size=_BATCH.value,
                  num_files=_NUM_IMAGES.value, **machine.host_fields())
    results = decode_strategies(folder, make_config(folder, masks, cache, True), _SECONDS.value)
    for name, on_device in (("host_all", False), ("host_split", True)):
      config = make_config(folder, masks, cache, on_device)
      pipeline.check_data_config(config)
      batches = pipeline.pretrain_batches(config, batch_size=_BATCH.value, seed=0)
      rate, count = measure(batches, _BATCH.value, _SECONDS.value)
      results.append(dict(setting=name, images_per_s=round(rate, 1),
                          images_per_s_per_core=round(rate / cores(), 1), images=count))
    results.append(device_augment(make_config(folder, masks, cache, True), _SECONDS.value))
    write_voc_layout(tmp / "voc", folder, masks)
    results.append(segmentation_train(tmp / "voc", cache, _SECONDS.value))
  by_name = {r["setting"]: r for r in results}
  by_name["host_split"]["speedup_vs_host_all"] = round(
      by_name["host_split"]["images_per_s"] / by_name["host_all"]["images_per_s"], 2)
  lines = [json.dumps({**r, **common}) for r in results]
  print("\n".join(lines))
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  app.run(main)
