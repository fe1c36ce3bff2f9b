"""Up-front validation of image files, so that no bad file can stop a run mid-training.

Every file of a folder source is checked once, in three steps:

1. Only regular files are read. A named pipe, a socket or a device (``x.jpg -> /dev/zero``) is
   skipped from its ``stat`` alone and never opened: opening a pipe waits for a writer for ever,
   and a device can be endless.
2. What the training decoder (:func:`relic.data.decode.decode_image`, i.e.
   ``tf.io.decode_image``) refuses for its size is skipped, decided from the file's header
   (:func:`decoder_refusal`; nothing is decoded): a check that decoded JPEGs at 1/8 scale used to
   pass a 13,500 x 13,500 JPEG which training then could not decode.
3. The rest is decoded with the very decoder training uses, in parallel in tf.data (JPEGs at
   1/8 scale, which still reads every byte, so truncation is caught). A file TensorFlow cannot
   decode but Pillow can (TIFF, some exotic JPEG/PNG variants) is converted once to PNG in the
   cache, unless that PNG would be too large for the training decoder or the image is over
   Pillow's decompression-bomb limit; a file neither can read (corrupt, truncated, empty, not an
   image) is skipped.

Skipped and converted files are counted and reported with absl logging, by reason. The result is
cached on disk, keyed by each file's path, type, size and mtime, so later runs (and the other
processes of a multi-host run on a shared disk) only stat the files.

Validating before the stream is built keeps the number of examples fixed, which the exact
resumption of :func:`relic.data.pipeline.pretrain_batches` relies on.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import pathlib
import stat
import struct
import tempfile
from typing import BinaryIO

from absl import logging

from relic.data.lazy_tf import tf
from relic.data import decode

# The size limits of the training decoder (tf.io.decode_image, TensorFlow 2.21), which it checks
# on the header before decoding anything. Measured against TensorFlow, see
# tests/test_data_folder_hostile.py.
# JPEG: tensorflow/core/lib/jpeg/jpeg_mem.cc refuses height * width * (components *in the file*:
# 1 grey, 3 YCbCr, 4 CMYK) >= 2**29 ("Image too large"), so a grey JPEG may have 3x the pixels of
# a colour one; libjpeg-turbo refuses a side over JPEG_MAX_DIMENSION.
JPEG_SAMPLE_LIMIT = 1 << 29
JPEG_MAX_SIDE = 65500
# PNG: decode_image_op.cc refuses height * width >= 2**29 ("PNG size too large for int"); libpng
# refuses a side over its default user limit ("Image width exceeds user limit in IHDR").
PNG_PIXEL_LIMIT = 1 << 29
PNG_MAX_SIDE = 1_000_000
# BMP: decode_image_op.cc refuses width * |height| >= INT32_MAX / 8.
BMP_PIXEL_LIMIT = (2**31 - 1) // 8
# GIF and WebP: no limit of TensorFlow's own (and WebP's format stops at 16,383 px a side); they
# are decoded in full by step 3, so its verdict is the training decoder's.

_NOT_REGULAR, _TOO_LARGE = "not a regular file", "too large"
_JPEG_FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                          0xCF})  # SOFn markers (0xC4 DHT, 0xC8 JPG, 0xCC DAC are not frames)
# Bumped when the verdicts change meaning: records of version 1 took JPEGs over the training
# decoder's size limit for readable and read named pipes.
_RECORD_VERSION = 2


def _file_kind(mode: int) -> str:
  for test, name in ((stat.S_ISFIFO, "named pipe"), (stat.S_ISSOCK, "socket"),
                     (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                     (stat.S_ISDIR, "directory")):
    if test(mode):
      return name
  return "special file"


def _jpeg_frame(f: BinaryIO) -> tuple[int, int, int] | None:
  """(width, height, components) of the frame header (SOFn) that follows the SOI marker, reading
  marker segments as libjpeg does; None if the markers end or break first (decoding decides)."""
  f.seek(2)
  while True:
    byte = f.read(1)
    while byte and byte != b"\xff":        # stray bytes between segments: libjpeg skips them
      byte = f.read(1)
    while byte == b"\xff":                 # fill bytes before a marker
      byte = f.read(1)
    if not byte:
      return None
    marker = byte[0]
    if marker in _JPEG_FRAMES:
      segment = f.read(8)                  # length, precision, height, width, components
      if len(segment) < 8:
        return None
      _, _, height, width, components = struct.unpack(">HBHHB", segment)
      return width, height, components
    if marker in (0xD8, 0xD9, 0xDA, 0x00):  # SOI, EOI, SOS or no marker before any frame
      return None
    if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # RSTn, TEM: no segment
      continue
    length = f.read(2)
    if len(length) < 2:
      return None
    f.seek(struct.unpack(">H", length)[0] - 2, os.SEEK_CUR)


def image_header(path: str) -> tuple[str, int, int, int] | None:
  """(format, width, height, components) from the first bytes of a JPEG, PNG or BMP file,
  recognised as tf.io.decode_image does (by content, not name); components is 0 where the limits
  do not use it. None for other formats and unreadable headers."""
  with open(path, "rb") as f:
    start = f.read(32)
    if start.startswith(b"\xff\xd8\xff"):
      frame = _jpeg_frame(f)
      return ("JPEG", *frame) if frame else None
    if start.startswith(b"\x89PNG\r\n\x1a\n") and start[12:16] == b"IHDR" and len(start) >= 24:
      return ("PNG", *struct.unpack(">II", start[16:24]), 0)
    if start.startswith(b"BM") and len(start) >= 26:
      return ("BMP", *struct.unpack("<ii", start[18:26]), 0)   # height < 0: stored top down
  return None


def png_refusal(width: int, height: int) -> str:
  """Why the training decoder refuses a PNG of this size ('' if it does not)."""
  if max(width, height) > PNG_MAX_SIDE or width * height >= PNG_PIXEL_LIMIT:
    return f"PNG {width} x {height}"
  return ""


def decoder_refusal(header: tuple[str, int, int, int] | None) -> str:
  """Why the training decoder refuses an image with this :func:`image_header` for its size, e.g.
  'JPEG 13500 x 13500 x 3'; '' if it does not (or the header says nothing)."""
  if header is None:
    return ""
  kind, width, height, components = header
  if kind == "JPEG":
    if (max(width, height) > JPEG_MAX_SIDE
        or width * height * components >= JPEG_SAMPLE_LIMIT):
      return f"JPEG {width} x {height} x {components}"
  elif kind == "PNG":
    return png_refusal(width, height)
  elif kind == "BMP" and width > 0 and width * abs(height) >= BMP_PIXEL_LIMIT:
    return f"BMP {width} x {abs(height)}"
  return ""


def _screen(path: str) -> tuple[str, str]:
  """(reason, detail) to skip ``path`` before any decoding, ('', '') to decode it."""
  try:
    mode = os.stat(path).st_mode         # never open(): a pipe would block, a device not end
  except OSError:
    return "", ""                        # missing or a broken link: decoding fails and counts it
  if not stat.S_ISREG(mode):
    return _NOT_REGULAR, _file_kind(mode)
  try:
    refusal = decoder_refusal(image_header(path))
  except OSError:
    return "", ""
  return (_TOO_LARGE, refusal) if refusal else ("", "")


def _fingerprint(paths: list[str]) -> str:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  digest = hashlib.sha1()
  limits = (JPEG_SAMPLE_LIMIT, JPEG_MAX_SIDE, PNG_PIXEL_LIMIT, PNG_MAX_SIDE, BMP_PIXEL_LIMIT,
            Image.MAX_IMAGE_PIXELS)
  digest.update(f"version {_RECORD_VERSION}, limits {limits}\n".encode())
  for path in paths:
    try:
      status = os.stat(path)
      digest.update(f"{path}\0{stat.S_IFMT(status.st_mode)}\0{status.st_size}\0"
                    f"{status.st_mtime_ns}\n".encode())
    except OSError:
      digest.update(f"{path}\0missing\n".encode())
  return digest.hexdigest()


def _tf_decodable(paths: list[str]) -> set[int]:
  """Indices of the files tf.io decodes to a non-empty image."""
  if not paths:
    return set()

  def check(index: tf.Tensor, path: tf.Tensor) -> tf.Tensor:
    data = tf.io.read_file(path)

    def jpeg() -> tf.Tensor:
      # The 1/8-scale decode passes images the full-size training decode refuses: apply the
      # latter's size check to libjpeg's own reading of the header, whatever image_header saw.
      samples = tf.reduce_prod(tf.image.extract_jpeg_shape(data, output_type=tf.int64))
      fits = tf.debugging.assert_less(samples, tf.constant(JPEG_SAMPLE_LIMIT, tf.int64))
      with tf.control_dependencies([fits]):
        return tf.io.decode_jpeg(data, channels=3, ratio=8)

    image = tf.cond(tf.io.is_jpeg(data), jpeg, lambda: decode.decode_image(data))
    tf.debugging.assert_positive(tf.reduce_prod(tf.shape(image)))
    return index

  ds = tf.data.Dataset.from_tensor_slices(paths).enumerate()
  ds = ds.map(check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  ds = ds.ignore_errors()
  return {int(i) for i in ds.as_numpy_iterator()}


def _convert_with_pil(path: str, target: pathlib.Path) -> tuple[str, str]:
  """Decodes ``path`` with Pillow and writes it as RGB PNG to ``target``.

  Returns:
    (the PNG's path, '') or ('', '') when unreadable, or ('', why) when the image is too large:
    over Pillow's decompression-bomb limit, or a PNG the training decoder would refuse.
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel
  try:
    with Image.open(path) as image:                 # reads the header only
      refusal = png_refusal(*image.size)
      if refusal:
        return "", f"{refusal} once converted"
      image.load()
      if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
      rgb = image.convert("RGB")
    if min(rgb.size) < 1:
      return "", ""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".png", delete=False) as f:
      rgb.save(f, format="PNG")
    os.replace(f.name, target)
    return str(target), ""
  except Image.DecompressionBombError:
    return "", f"over Pillow's limit of {2 * Image.MAX_IMAGE_PIXELS} pixels"
  except Exception:  # pylint: disable=broad-except  # any failure means "unreadable"
    return "", ""


def _check(paths: list[str], cache_dir: pathlib.Path) -> tuple[dict[str, str], dict[str, list]]:
  """The verdicts of :func:`validate` and the skipped files with a reason: path -> [reason,
  detail] (the unreadable ones have none)."""
  workers = max(1, min(8, os.cpu_count() or 1))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    screens = list(pool.map(_screen, paths))
  skipped = {p: [reason, detail] for p, (reason, detail) in zip(paths, screens) if reason}
  candidates = [p for p in paths if p not in skipped]
  good = _tf_decodable(candidates)
  verdicts = {p: (p if i in good else "") for i, p in enumerate(candidates)}
  verdicts.update({p: "" for p in skipped})
  failed = [p for i, p in enumerate(candidates) if i not in good]
  targets = [cache_dir / "converted" / (hashlib.sha1(p.encode()).hexdigest() + ".png")
             for p in failed]
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for path, (converted, refusal) in zip(failed, pool.map(_convert_with_pil, failed, targets)):
      verdicts[path] = converted
      if refusal:
        skipped[path] = [_TOO_LARGE, refusal]
  return verdicts, skipped


def _report(verdicts: dict[str, str], skipped: dict[str, list], total: int, what: str,
            cache_dir: pathlib.Path) -> None:
  def examples(reason: str) -> list[str]:
    return sorted(f"{p} ({detail})" for p, (r, detail) in skipped.items() if r == reason)

  special, large = examples(_NOT_REGULAR), examples(_TOO_LARGE)
  if special:
    logging.warning("Skipping %d of %d %s that are not regular files (named pipes, sockets, "
                    "devices; never opened), e.g. %s. Fix: put the image files themselves there.",
                    len(special), total, what, special[:5])
  if large:
    logging.warning(
        "Skipping %d of %d %s too large for the training decoder (tf.io.decode_image), e.g. %s. "
        "Fix: downscale them; it takes JPEG height x width x components < %d with sides up to "
        "%d px, PNG height x width < %d with sides up to %d px, BMP height x width < %d.",
        len(large), total, what, large[:5], JPEG_SAMPLE_LIMIT, JPEG_MAX_SIDE, PNG_PIXEL_LIMIT,
        PNG_MAX_SIDE, BMP_PIXEL_LIMIT)
  unreadable = sorted(p for p, v in verdicts.items() if not v and p not in skipped)
  converted = sorted(p for p, v in verdicts.items() if v and v != p)
  if unreadable:
    logging.warning("Skipping %d of %d %s that cannot be decoded (corrupt, truncated, empty or "
                    "not an image), e.g. %s", len(unreadable), total, what, unreadable[:5])
  if converted:
    logging.warning("Converted %d of %d %s that TensorFlow cannot decode to PNG in %s, e.g. %s",
                    len(converted), total, what, cache_dir / "converted", converted[:5])


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
    saved = json.loads(record.read_text())
    verdicts, skipped = saved["verdicts"], saved["skipped"]
    if any(v and v != p and not os.path.exists(v) for p, v in verdicts.items()):
      verdicts = None                                   # a converted file was deleted
  if verdicts is None:
    verdicts, skipped = _check(paths, cache_dir)
    record.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=record.parent, suffix=".json", delete=False) as f:
      json.dump({"verdicts": verdicts, "skipped": skipped}, f)
    os.replace(f.name, record)
  _report(verdicts, skipped, len(paths), what, cache_dir)
  return {p: verdicts.get(p, "") for p in paths}
