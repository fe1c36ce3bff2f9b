"""Folder source against hostile folders: pipes, sockets and devices named like images, directory
link loops, and images too large for the training decoder.

Each of these once broke a run: a named pipe hung the up-front check for ever, a link loop
multiplied the dataset, and a huge JPEG passed the check but failed in training (and with it the
exact resumption). The tests that could hang (a pipe that is opened, a loop that is followed)
run what might hang in a thread or a subprocess with a time limit.
"""

import json
import logging
import os
import pathlib
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from relic.data import decode, image_check, pipeline, sources
from tests.test_data_folder import folder_config, write

ROOT = pathlib.Path(__file__).resolve().parent.parent
LIMIT_S = 30  # what a check that does not hang finishes well within, even on a loaded machine


def uniform_jpeg(width: int, height: int, components: int = 3) -> bytes:
  """A valid baseline JPEG of a uniform grey image of any size, built without encoding pixels.

  Every 8x8 block of a uniform image codes as 'DC difference 0, end of block'; with one-code
  Huffman tables that is two zero bits, so a 13,500 x 13,500 RGB image is 2 MB of zeros, written
  in milliseconds (an encoder would first need the 550 MB of pixels).
  """
  def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload

  ids = range(1, components + 1)
  quantization = segment(0xDB, b"\x00" + b"\x01" * 64)
  frame = segment(0xC0, struct.pack(">BHHB", 8, height, width, components)
                  + b"".join(bytes([i, 0x11, 0]) for i in ids))
  one_code = b"\x01" + b"\x00" * 15 + b"\x00"        # one code of length 1, for symbol 0
  huffman = segment(0xC4, b"\x00" + one_code + b"\x10" + one_code)
  scan = segment(0xDA, bytes([components]) + b"".join(bytes([i, 0x00]) for i in ids) + b"\x00\x3f\x00")
  bits = 2 * -(-width // 8) * -(-height // 8) * components
  data = b"\x00" * (bits // 8) + (bytes([(1 << (8 - bits % 8)) - 1]) if bits % 8 else b"")
  return b"\xff\xd8" + quantization + frame + huffman + scan + data + b"\xff\xd9"


def uniform_png(width: int, height: int) -> bytes:
  """A valid 1-bit black PNG of any size, compressed row by row (never held as pixels)."""
  def chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))

  row = b"\x00" * (1 + -(-width // 8))
  packer = zlib.compressobj(9)
  data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
  header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
          + chunk(b"IEND", b""))


def image(path: pathlib.Path, size: int = 8, value: int = 0) -> pathlib.Path:
  write(path, np.full((size, size, 3), value, np.uint8))
  return path


def link(path: pathlib.Path, target) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.symlink_to(target)
  return path


def finishes(fn, pipes: list[pathlib.Path]):
  """``fn()``, which must return within :data:`LIMIT_S`.

  A reader that opens a named pipe waits for a writer for ever. When ``fn`` has not returned in
  time, each pipe is opened for writing and closed again until it does (the reader then sees an
  empty file), so that the failure is reported instead of hanging the test run (a thread still
  blocked after a second time limit is left behind).
  """
  outcome = {}

  def run():
    try:
      outcome["value"] = fn()
    except BaseException as e:  # pylint: disable=broad-except  # re-raised below
      outcome["error"] = e

  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(LIMIT_S)
  blocked = thread.is_alive()
  give_up = time.monotonic() + LIMIT_S
  while thread.is_alive() and time.monotonic() < give_up:
    for pipe in pipes:
      try:
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
      except OSError:          # ENXIO: nobody has it open for reading
        pass
    thread.join(0.2)
  assert not blocked, f"blocked for over {LIMIT_S} s opening a named pipe"
  if "error" in outcome:
    raise outcome["error"]
  return outcome["value"]


_LIST = ("import json, pathlib, sys\n"
         "from relic.data import folder_source\n"
         "print(json.dumps([str(p) for p in folder_source.list_images(pathlib.Path(sys.argv[1]))]))")


def listed(folder: pathlib.Path) -> list[str]:
  """The image files the folder source lists below ``folder``, relative to it, sorted; in a
  subprocess, so that a listing that follows a loop is stopped."""
  try:
    out = subprocess.run([sys.executable, "-c", _LIST, str(folder)], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=LIMIT_S)
  except subprocess.TimeoutExpired:
    pytest.fail(f"listing {folder} did not finish in {LIMIT_S} s: a link loop was followed")
  return sorted(str(pathlib.Path(p).relative_to(folder)) for p in json.loads(out.stdout))


def names(config, split: str = "train") -> list[str]:
  return sorted(sources.get_source(config).example_names(split).tolist())


# --- pipes, sockets, devices ---------------------------------------------------------------------

def test_pipes_sockets_and_device_links_are_skipped_unopened_and_counted(tmp_path, caplog,
                                                                         monkeypatch):
  root, masks = tmp_path / "data", tmp_path / "masks"
  good = [image(root / "train" / "c0" / "0.png"), image(root / "train" / "c0" / "1.png"),
          image(root / "train" / "c1" / "0.png")]
  pipes = [root / "train" / "c0" / "pipe.jpg", root / "train" / "pipe.png",
           root / "train" / "fifo", masks / "train" / "c0" / "0.png"]
  for pipe in pipes:
    pipe.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(pipe)
  image(masks / "train" / "c0" / "1.png")
  monkeypatch.chdir(root / "train" / "c1")    # a short relative name: socket paths are limited
  server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  server.bind("sock.png")
  link(root / "train" / "c1" / "null.jpg", "/dev/null")
  config = folder_config(root, mask_path=str(masks), mask_prob=0.5)

  def check():
    pipeline.check_data_config(config)
    source = sources.get_source(config)
    return source, source.reader("train", process_index=0, process_count=1, with_masks=True)

  try:
    with caplog.at_level(logging.WARNING):
      source, reader = finishes(check, pipes)
  finally:
    server.close()
  assert sorted(source.example_names("train").tolist()) == ["c0/0.png", "c0/1.png", "c1/0.png"]
  # 7 image names (the extension-less pipe is not listed), 4 of them no files to read.
  assert "Skipping 4 of 7 images under" in caplog.text and "not regular files" in caplog.text
  assert "Skipping 1 of 2 masks under" in caplog.text
  assert "2 of 3 images under" in caplog.text            # c0/0's mask is a pipe: used unmasked
  assert "cannot be decoded" not in caplog.text
  assert reader.size == len(good)
  for index in range(reader.size):                       # what is listed reads in training
    record = tf.constant(index, tf.int64)
    assert reader.load(record)["image"].shape == (8, 8, 3)
    assert reader.load_mask(record, 8, 8).shape == (8, 8, 1)


def test_a_pipe_given_by_path_is_skipped_and_the_cached_verdict_follows_the_file(tmp_path,
                                                                                caplog):
  """The check itself (as FGVC-Aircraft calls it, with paths from an annotation file)."""
  good, pipe = image(tmp_path / "a.png"), tmp_path / "b.png"
  os.mkfifo(pipe)
  paths = [str(good), str(pipe)]
  for _ in range(2):                                 # the second time from the cached record
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      usable = finishes(lambda: image_check.validate(paths, tmp_path / "cache", "test images"),
                        [pipe])
    assert usable == {str(good): str(good), str(pipe): ""}
    assert "Skipping 1 of 2 test images that are not regular files" in caplog.text
  pipe.unlink()
  image(pipe)                                        # the pipe replaced by an image
  assert image_check.validate(paths, tmp_path / "cache", "test images")[str(pipe)] == str(pipe)


_VALIDATE = ("import json, pathlib, sys\n"
             "from relic.data import image_check\n"
             "print(json.dumps(image_check.validate(sys.argv[2:], pathlib.Path(sys.argv[1]), 'x')))")


def test_links_to_endless_devices_are_never_read(tmp_path):
  """Read, /dev/zero never ends: in a subprocess with a time and memory limit, so that a check
  that reads it fails the test instead of exhausting the machine's memory."""
  files = [str(link(tmp_path / "zero.jpg", "/dev/zero")),
           str(link(tmp_path / "random.png", "/dev/urandom"))]
  limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # noqa: E731
  try:
    out = subprocess.run([sys.executable, "-c", _VALIDATE, str(tmp_path / "cache"), *files],
                         cwd=ROOT, capture_output=True, text=True, timeout=LIMIT_S,
                         preexec_fn=limit)
  except subprocess.TimeoutExpired:
    pytest.fail(f"the check of {files} did not finish in {LIMIT_S} s")
  assert out.returncode == 0, out.stderr[-2000:]
  assert json.loads(out.stdout.splitlines()[-1]) == {f: "" for f in files}
  assert "not regular files" in out.stderr


# --- link loops ----------------------------------------------------------------------------------

def test_directory_link_loops_neither_multiply_the_data_nor_hang(tmp_path, caplog):
  root = tmp_path / "data"
  train = root / "train"
  for name in ("c0/0.png", "c0/1.png", "c0/2.png", "c1/0.png", "c1/1.png"):
    image(train / name)
  image(root / "val" / "c0" / "0.png")
  link(train / "c0" / "back", "..")                      # the split folder
  link(train / "c0" / "self", ".")                       # its own folder
  link(train / "c1" / "a" / "b" / "up", "../../..")      # the split folder, three levels down
  link(train / "c1" / "a" / "b" / "c1", "../..")         # a class folder from below it
  link(train / "c1" / "root", "../..")                   # the data folder, an ancestor (val/)
  link(train / "c0" / "top", "../../../..")              # further up (the cache is there too)
  link(train / "mirror", "c0")                           # a class folder under a second name
  link(train / "c0" / "ouroboros.png", "ouroboros.png")  # a file link to itself
  link(root / "test", ".")                               # a 'split' holding the splits
  in_train = ["c0/0.png", "c0/1.png", "c0/2.png", "c0/ouroboros.png", "c1/0.png", "c1/1.png"]
  assert listed(train) == in_train
  assert listed(root) == [f"train/{name}" for name in in_train] + ["val/c0/0.png"]
  assert listed(root / "val") == ["c0/0.png"]
  config = folder_config(root)
  pipeline.check_data_config(config)
  with caplog.at_level(logging.WARNING):
    assert pipeline.num_examples(config, "train") == 5
  assert "Skipping 1 of 6" in caplog.text                 # the self-referential file link
  assert pipeline.num_examples(config, "val") == 1
  assert pipeline.num_classes(config) == 2                # 'mirror' is c0 again, not a class
  assert sources.get_source(config).split_names() == ("train", "val")
  labels = np.concatenate([b["label"][b["valid"]] for b in pipeline.eval_batches(
      config, split="train", batch_size=5, image_size=8)])
  np.testing.assert_array_equal(np.sort(labels), [0, 0, 0, 1, 1])


def test_links_out_of_the_split_still_work_and_each_file_counts_once(tmp_path):
  outside = tmp_path / "outside"
  image(outside / "x" / "0.png", value=10)
  image(outside / "x" / "1.png", value=20)
  image(outside / "y.png", value=30)
  link(outside / "x" / "again", ".")                       # a loop inside the linked folder
  link(outside / "x" / "into", "../../data/train")         # and a way back into the split
  root = tmp_path / "data"
  train = root / "train"
  image(train / "c0" / "0.png")
  link(train / "ext_a", "../../outside/x")                 # relative
  link(train / "ext_b", outside / "x")                     # absolute: the same folder again
  link(train / "c0" / "linked.png", "../../../outside/y.png")
  link(train / "c0" / "linked_too.png", outside / "y.png")  # the same file again
  link(train / "c0" / "alias.png", "0.png")                # a file of the split itself
  link(train / "c0" / "x0.png", outside / "x" / "0.png")   # a file of a linked folder
  expected = ["c0/0.png", "c0/linked.png", "c0/x0.png", "ext_a/1.png"]
  assert listed(train) == expected
  config = folder_config(root)
  pipeline.check_data_config(config)
  assert names(config) == expected
  source = sources.get_source(config)
  assert source.classes() == ["c0", "ext_a", "ext_b"]      # ext_b: a class, its files counted once
  reader = source.reader("train", process_index=0, process_count=1, with_masks=False)
  seen = {}
  for index in range(reader.size):
    example = reader.load(tf.constant(index, tf.int64))
    seen[int(example["image"][0, 0, 0])] = int(example["label"])
  assert seen == {0: 0, 30: 0, 10: 0, 20: 1}                # x/0.png met first as c0/x0.png
  # A symlinked dataset: the split folder itself a link, or only links below it.
  link(tmp_path / "linked_data" / "train", "../data/train")
  assert names(folder_config(tmp_path / "linked_data")) == expected
  image(outside / "z" / "0.png")
  link(tmp_path / "only_links" / "train" / "c0", outside / "z")
  only_links = folder_config(tmp_path / "only_links")
  pipeline.check_data_config(only_links)                   # finds the image behind the link
  assert names(only_links) == ["c0/0.png"]


# --- images too large for the training decoder ---------------------------------------------------

def test_jpegs_the_training_decoder_refuses_are_skipped_up_front(tmp_path, caplog):
  """TensorFlow refuses a JPEG with height * width * (components in the file) >= 2**29 ('Image
  too large', before decoding) or a side over 65,500 px (libjpeg); the check's 1/8-scale decode
  passes the first (and counted the second as corrupt)."""
  root = tmp_path / "images"
  root.mkdir()
  files = {"big.jpg": (13500, 13500, 3),        # the report's: 546,750,000 samples
           "wide.jpg": (65500, 2733, 3),        # 537,034,500: one row over
           "under.jpg": (65500, 2732, 3),       # 536,838,000: one row under, kept
           "gray.jpg": (13500, 13500, 1),       # one component: 182,250,000, kept
           "side.jpg": (65501, 8, 1),           # too wide
           "tall.jpg": (8, 65501, 1)}           # too tall
  for name, size in files.items():
    (root / name).write_bytes(uniform_jpeg(*size))
  image(root / "ok.png")
  config = folder_config(root)
  with caplog.at_level(logging.WARNING):
    kept = names(config)
  assert kept == ["gray.jpg", "ok.png", "under.jpg"]
  assert "Skipping 4 of 7 images under" in caplog.text
  assert "too large for the training decoder" in caplog.text and "big.jpg" in caplog.text
  # The stored order is that of the kept files alone: the refused ones change nothing.
  order = sources.get_source(config).example_names("train").tolist()
  assert order == [kept[i] for i in sources.stored_order(kept)]
  # The check agrees with the training decoder, file by file.
  for name in files:
    data = tf.io.read_file(str(root / name))
    if name in kept:
      # The training decoder's JPEG routine with the same size check, made before the crop;
      # a 1-pixel crop spares the 540 MB a full decode would take.
      assert tf.image.decode_and_crop_jpeg(data, [0, 0, 1, 1], channels=3).shape == (1, 1, 3)
    else:
      with pytest.raises(tf.errors.InvalidArgumentError):
        decode.decode_image(data)
  reader = sources.get_source(config).reader("train", process_index=0, process_count=1,
                                             with_masks=False)
  assert reader.load(tf.constant(order.index("ok.png"), tf.int64))["image"].shape == (8, 8, 3)


def test_the_size_check_holds_where_the_header_reader_finds_no_frame(tmp_path, caplog,
                                                                    monkeypatch):
  """The 1/8-scale decode of the check applies the full-size decode's limit itself, to libjpeg's
  reading of the header; Pillow then refuses the image as a decompression bomb."""
  monkeypatch.setattr(image_check, "image_header", lambda path: None)
  (tmp_path / "big.jpg").write_bytes(uniform_jpeg(13500, 13500))
  paths = [str(tmp_path / "big.jpg"), str(image(tmp_path / "ok.png"))]
  with caplog.at_level(logging.WARNING):
    usable = image_check.validate(paths, tmp_path / "cache", "test images")
  assert usable == {paths[0]: "", paths[1]: paths[1]}
  assert "Skipping 1 of 2 test images too large" in caplog.text


def test_pngs_and_conversions_over_the_decoder_limits_are_skipped_not_converted(tmp_path, caplog):
  """TensorFlow's PNG decoder refuses a side over 1,000,000 px (libpng's limit) or
  height * width >= 2**29; Pillow reads some of those, and a converted PNG as large would fail
  in training."""
  root = tmp_path / "images"
  root.mkdir()
  (root / "wide.png").write_bytes(uniform_png(1_000_001, 8))
  (root / "tall.png").write_bytes(uniform_png(8, 1_000_001))
  (root / "huge.png").write_bytes(uniform_png(23171, 23171))   # 536,895,241 pixels
  (root / "edge.png").write_bytes(uniform_png(1_000_000, 8))   # the widest kept
  Image.new("1", (1_000_001, 1)).save(root / "wide.tif")        # Pillow only: converted before
  image(root / "ok.tif")
  config = folder_config(root)
  with caplog.at_level(logging.WARNING):
    kept = names(config)
  assert kept == ["edge.png", "ok.tif"]
  assert "Skipping 4 of 6 images under" in caplog.text and "too large" in caplog.text
  assert "Converted 1 of 6" in caplog.text and "cannot be decoded" not in caplog.text
  reader = sources.get_source(config).reader("train", process_index=0, process_count=1,
                                             with_masks=False)
  shapes = sorted(tuple(reader.load(tf.constant(i, tf.int64))["image"].shape) for i in range(2))
  assert shapes == [(8, 8, 3), (8, 1_000_000, 3)]
  for name in ("wide.png", "tall.png", "huge.png"):
    with pytest.raises(tf.errors.InvalidArgumentError):
      decode.decode_image(tf.io.read_file(str(root / name)))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")   # meant: 400 > 200
def test_the_size_rules_of_every_format_read_from_the_header(tmp_path, caplog, monkeypatch):
  """TensorFlow's limits, lowered so that tiny files cross them: the header rules of each format
  and the conversion's limits, one side of each boundary."""
  monkeypatch.setattr(image_check, "JPEG_SAMPLE_LIMIT", 20 * 20 * 3)
  monkeypatch.setattr(image_check, "JPEG_MAX_SIDE", 60)
  monkeypatch.setattr(image_check, "PNG_PIXEL_LIMIT", 400)
  monkeypatch.setattr(image_check, "PNG_MAX_SIDE", 50)
  monkeypatch.setattr(image_check, "BMP_PIXEL_LIMIT", 300)
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)   # Pillow refuses over twice that
  root = tmp_path / "images"
  rgb = lambda w, h: np.full((h, w, 3), 100, np.uint8)  # noqa: E731
  refused = {"jpeg_samples.jpg", "jpeg_progressive_exif.jpg", "jpeg_wide.jpg", "png_pixels.png",
             "png_wide.png", "png_tall.png", "bmp_pixels.bmp", "bmp_top_down.bmp",
             "tiff_converted_too_big.tif", "tiff_pillow_bomb.tif"}
  write(root / "jpeg_samples.jpg", rgb(20, 20))                           # 1200 samples
  write(root / "jpeg_under.jpg", rgb(19, 20))                             # 1140
  write(root / "jpeg_gray.jpg", rgb(30, 20)[..., 0])                      # 600: one component
  exif = Image.Exif()
  exif[0x010E] = "x" * 3000                                               # a long APP1 first
  Image.fromarray(rgb(24, 24)).save(root / "jpeg_progressive_exif.jpg", progressive=True,
                                    exif=exif)
  (root / "jpeg_wide.jpg").write_bytes(uniform_jpeg(61, 1, 1))
  (root / "jpeg_side_ok.jpg").write_bytes(uniform_jpeg(60, 2, 1))
  write(root / "png_pixels.png", rgb(20, 20))                             # 400 pixels
  write(root / "png_under.png", rgb(20, 19))
  write(root / "png_wide.png", rgb(51, 2))
  write(root / "png_tall.png", rgb(2, 51))
  write(root / "png_side_ok.png", rgb(50, 2))
  write(root / "bmp_pixels.bmp", rgb(20, 15))                             # 300 pixels
  write(root / "bmp_under.bmp", rgb(20, 14))
  write(root / "bmp_top_down.bmp", rgb(20, 15))
  top_down = bytearray((root / "bmp_top_down.bmp").read_bytes())
  top_down[22:26] = struct.pack("<i", -15)                                # rows stored top first
  (root / "bmp_top_down.bmp").write_bytes(bytes(top_down))
  write(root / "gif_any.gif", rgb(30, 30))                                # no size limit
  write(root / "tiff_converted_too_big.tif", rgb(20, 20))                 # a 400-pixel PNG
  write(root / "tiff_converted.tif", rgb(10, 10))
  write(root / "tiff_pillow_bomb.tif", rgb(25, 20))                       # 500 > 2 * 200
  config = folder_config(root)
  with caplog.at_level(logging.WARNING):
    kept = names(config)
  everything = sorted(p.name for p in root.iterdir())
  assert kept == sorted(set(everything) - refused)
  assert f"Skipping {len(refused)} of {len(everything)} images under" in caplog.text
  assert "too large" in caplog.text and "cannot be decoded" not in caplog.text
  assert "Converted 1 of" in caplog.text
