"""Up-front validation of image files, so that no bad file can stop a run mid-training.

Every file of a folder source is decoded once with the very decoder training uses
(:func:`relic.data.decode.decode_image`), in parallel in tf.data (JPEGs at 1/8 scale, which
still reads every byte, so truncation is caught). A file TensorFlow cannot decode but Pillow
can (TIFF, some exotic JPEG/PNG variants) is converted once to PNG in the cache; a file neither
can read (corrupt, truncated, empty, not an image) is skipped. Both are counted and reported
with absl logging. The result is cached on disk, keyed by each file's path, size and mtime, so
later runs (and the other processes of a multi-host run on a shared disk) only stat the files.

Validating before the stream is built keeps the number of examples fixed, which the exact
resumption of :func:`relic.data.pipeline.pretrain_batches` relies on.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import pathlib
import tempfile

from absl import logging

from relic.data.lazy_tf import tf
from relic.data import decode


def _fingerprint(paths: list[str]) -> str:
  digest = hashlib.sha1()
  for path in paths:
    try:
      stat = os.stat(path)
      digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    except OSError:
      digest.update(f"{path}\0missing\n".encode())
  return digest.hexdigest()


def _tf_decodable(paths: list[str]) -> set[int]:
  """Indices of the files tf.io decodes to a non-empty image."""
  def check(index: tf.Tensor, path: tf.Tensor) -> tf.Tensor:
    data = tf.io.read_file(path)
    image = tf.cond(tf.io.is_jpeg(data),
                    lambda: tf.io.decode_jpeg(data, channels=3, ratio=8),
                    lambda: decode.decode_image(data))
    tf.debugging.assert_positive(tf.reduce_prod(tf.shape(image)))
    return index

  ds = tf.data.Dataset.from_tensor_slices(paths).enumerate()
  ds = ds.map(check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  ds = ds.ignore_errors()
  return {int(i) for i in ds.as_numpy_iterator()}


def _convert_with_pil(path: str, target: pathlib.Path) -> str:
  """Decodes ``path`` with Pillow and writes it as RGB PNG to ``target``; '' if unreadable."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  try:
    with Image.open(path) as image:
      image.load()
      if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
      rgb = image.convert("RGB")
    if min(rgb.size) < 1:
      return ""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".png", delete=False) as f:
      rgb.save(f, format="PNG")
    os.replace(f.name, target)
    return str(target)
  except Exception:  # pylint: disable=broad-except  # any failure means "unreadable"
    return ""


def validate(paths: list[str], cache_dir: pathlib.Path, what: str) -> dict[str, str]:
  """Maps each path to the file to read instead: itself, a converted PNG, or '' (skip).

  Args:
    paths: files to check.
    cache_dir: where the verdicts and converted files are kept.
    what: description for the log, e.g. 'images of /data/train'.
  """
  if not paths:
    return {}
  key = _fingerprint(paths)
  record = cache_dir / "image_check" / f"{key}.json"
  verdicts: dict[str, str] | None = None
  if record.exists():
    verdicts = json.loads(record.read_text())
    if any(v and v != p and not os.path.exists(v) for p, v in verdicts.items()):
      verdicts = None                                   # a converted file was deleted
  if verdicts is None:
    good = _tf_decodable(paths)
    failed = [p for i, p in enumerate(paths) if i not in good]
    verdicts = {p: p for i, p in enumerate(paths) if i in good}
    targets = [cache_dir / "converted" / (hashlib.sha1(p.encode()).hexdigest() + ".png")
               for p in failed]
    with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
      verdicts.update(zip(failed, pool.map(_convert_with_pil, failed, targets)))
    record.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=record.parent, suffix=".json", delete=False) as f:
      json.dump(verdicts, f)
    os.replace(f.name, record)
  skipped = sorted(p for p, v in verdicts.items() if not v)
  converted = sorted(p for p, v in verdicts.items() if v and v != p)
  if skipped:
    logging.warning("Skipping %d of %d %s that cannot be decoded (corrupt, truncated, empty or "
                    "not an image), e.g. %s", len(skipped), len(paths), what, skipped[:5])
  if converted:
    logging.warning("Converted %d of %d %s that TensorFlow cannot decode to PNG in %s, e.g. %s",
                    len(converted), len(paths), what, cache_dir / "converted", converted[:5])
  return {p: verdicts.get(p, "") for p in paths}
