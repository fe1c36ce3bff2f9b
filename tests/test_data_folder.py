"""Folder source: labels from sub-folders, bad and odd files, and start-up checks."""

import io
import itertools
import logging

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from relic import config as config_lib
from relic.errors import ConfigError
from relic.data import objectnet_classes, pipeline, sources
from tests import aircraft_data, objectnet_data


def write(path, array, **kwargs):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)


def folder_config(root, **data):
  config = config_lib.base_config()
  config.data.update({**dict(source="folder", path=str(root), mask_prob=0.0,
                             cache_dir=str(root.parent / "cache")), **data})
  config.data.views.large.update(dict(num=2, size=16))
  config.data.views.small.update(dict(num=1, size=8))
  return config


def test_odd_and_broken_files_are_converted_or_skipped_and_counted(tmp_path, caplog):
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
  root = tmp_path / "images"
  write(root / "good.jpg", rgb)
  Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
  write(root / "gray.jpg", rgb[..., 0])
  write(root / "rgba.png", np.concatenate([rgb, rgb[..., :1]], axis=-1))
  write(root / "tiny.png", rgb[:5, :5])
  write(root / "scan.tiff", rgb)                                   # TF cannot read TIFF
  tf.io.write_file(str(root / "deep.png"), tf.io.encode_png(           # 16-bit RGB
      tf.constant(rng.integers(0, 65536, (30, 30, 3)), tf.uint16)))
  (root / "random.jpg").write_bytes(rng.bytes(2000))
  jpeg = io.BytesIO()
  Image.fromarray(rgb).save(jpeg, format="JPEG")
  (root / "truncated.jpg").write_bytes(jpeg.getvalue()[:len(jpeg.getvalue()) // 2])
  (root / "empty.png").write_bytes(b"")
  (root / "notes.txt").write_text("not an image")                  # ignored by extension
  config = folder_config(root)
  pipeline.check_data_config(config)
  with caplog.at_level(logging.WARNING):
    assert pipeline.num_examples(config, "train") == 7             # 10 image files, 3 broken
  assert "Skipping 3 of 10" in caplog.text and "Converted 1 of 10" in caplog.text
  assert pipeline.num_classes(config) == 0
  batches = list(itertools.islice(pipeline.pretrain_batches(config, batch_size=4, seed=0), 4))
  assert all(b["large"].shape == (4, 2, 16, 16, 3) for b in batches)   # 16 views from 7 files
  assert all((b["label"] == -1).all() for b in batches)               # no class folders
  evals = list(pipeline.eval_batches(config, split="train", batch_size=4, image_size=16))
  assert sum(b["valid"].sum() for b in evals) == 7


def test_class_folders_splits_and_masks_by_stem(tmp_path):
  rng = np.random.default_rng(1)
  root, masks = tmp_path / "data", tmp_path / "masks"
  for split, counts in (("train", {"cat": 3, "dog": 2}), ("val", {"cat": 1, "dog": 2})):
    for name, count in counts.items():
      for i in range(count):
        write(root / split / name / f"{i}.png", rng.integers(0, 256, (20, 20, 3), np.uint8))
  write(root / "train" / "loose.png", rng.integers(0, 256, (20, 20, 3), np.uint8))
  write(masks / "train" / "cat" / "0.jpg", np.full((10, 10), 255, np.uint8))  # any size/format
  config = folder_config(root, eval_split="validation", mask_path=str(masks), mask_prob=0.5)
  pipeline.check_data_config(config)
  assert pipeline.num_classes(config) == 2
  assert pipeline.num_examples(config, "train") == 6
  assert pipeline.num_examples(config, "validation") == 3          # 'val' folder
  assert pipeline.num_examples(config, "train[1:]") == 5
  labels = np.concatenate([b["label"][b["valid"]] for b in pipeline.eval_batches(
      config, split="train", batch_size=4, image_size=8)])
  # Stored in the fixed pseudo-random order of the paths below the split folder.
  names = ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png", "loose.png"]
  sorted_labels = np.array([0, 0, 0, 1, 1, -1])
  train_order = sources.stored_order(names)
  np.testing.assert_array_equal(labels, sorted_labels[train_order])
  # '+' joins whole splits, in order: train's files, then val's (classes from train's folders).
  assert pipeline.num_examples(config, "train+validation") == 9
  joined = np.concatenate([b["label"][b["valid"]] for b in pipeline.eval_batches(
      config, split="train+val", batch_size=4, image_size=8)])
  val_labels = np.array([0, 1, 1])[sources.stored_order(["cat/0.png", "dog/0.png", "dog/1.png"])]
  np.testing.assert_array_equal(joined, np.concatenate([sorted_labels[train_order], val_labels]))
  with pytest.raises(ConfigError, match="Cannot slice the parts"):
    pipeline.check_data_config(folder_config(root, train_split="train[:2]+val"))
  from relic.data.sources import get_source
  reader = get_source(config).reader("train", process_index=0, process_count=1, with_masks=True)
  assert reader.has_masks
  batch = next(pipeline.pretrain_batches(config, batch_size=6, seed=0))
  assert batch["large"].shape == (6, 2, 16, 16, 3)


def test_missing_data_fails_at_start_up_with_the_fix(tmp_path):
  with pytest.raises(ConfigError, match="not found"):
    pipeline.check_data_config(folder_config(tmp_path / "nowhere"))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ConfigError, match="no image files"):
    pipeline.check_data_config(folder_config(empty))
  write(tmp_path / "ok" / "a.png", np.zeros((8, 8, 3), np.uint8))
  with pytest.raises(ConfigError, match="mask_path=DIR"):
    pipeline.check_data_config(folder_config(tmp_path / "ok", mask_prob=0.1))
  with pytest.raises(ConfigError, match="mask folder"):
    pipeline.check_data_config(folder_config(tmp_path / "ok", mask_prob=0.1,
                                             mask_path=str(tmp_path / "no_masks")))
  config = folder_config(tmp_path / "ok")
  config.data.path = ""
  with pytest.raises(ConfigError, match="config.data.path"):
    pipeline.check_data_config(config)


def test_unreadable_data_fails_at_start_instead_of_skipping_forever(tmp_path):
  root = tmp_path / "vanishing"
  for i in range(2):
    write(root / f"{i}.png", np.zeros((8, 8, 3), np.uint8))
  config = folder_config(root)
  assert pipeline.num_examples(config, "train") == 2       # listed and validated
  for path in root.iterdir():
    path.unlink()                                           # then the disk goes away
  with pytest.raises(RuntimeError, match="None of the first 2 examples"):
    pipeline.pretrain_batches(config, batch_size=2, seed=0)


def test_objectnet_reads_the_imagenet_classes_only_and_cuts_the_border(tmp_path, caplog):
  base = objectnet_data.write_objectnet(tmp_path)
  for path in (base, base / "images"):            # the download folder or its images/ folder
    config = folder_config(path, source="objectnet", eval_split="test")
    with caplog.at_level(logging.WARNING):
      pipeline.check_data_config(config)
    assert "Only 4 of the 113" in caplog.text       # a partial download is reported
    assert pipeline.num_classes(config) == 113
    assert pipeline.num_examples(config, "test") == 8                 # squeegee is not read
    reader = sources.get_source(config).reader("test", process_index=0, process_count=1,
                                               with_masks=False)
    seen = []
    for index in range(reader.size):
      example = reader.load(tf.constant(index, tf.int64))
      image, label = example["image"].numpy(), int(example["label"])
      folder_index, image_index = int(image[0, 0, 0]), int(image[0, 0, 1])
      folder = list(objectnet_data.COUNTS)[folder_index]
      assert label == objectnet_classes.CLASSES.index(folder)
      # Exactly the photograph: the 2 px red frame is gone and nothing else is.
      np.testing.assert_array_equal(image, objectnet_data.content(folder_index, image_index))
      seen.append((folder, image_index))
    assert sorted(seen) == sorted((f, i) for f, n in objectnet_data.COUNTS.items()
                                  for i in range(n) if f != "squeegee")
  batches = list(pipeline.eval_batches(config, split="test[:5]", batch_size=4, image_size=16))
  assert sum(int(b["valid"].sum()) for b in batches) == 5
  (tmp_path / "other").mkdir()
  write(tmp_path / "other" / "squeegee" / "a.png", np.zeros((8, 8, 3), np.uint8))
  with pytest.raises(ConfigError, match="objectnet-1.0 folder"):
    pipeline.check_data_config(folder_config(tmp_path / "other", source="objectnet"))


def test_fgvc_aircraft_reads_the_official_splits_and_cuts_the_banner(tmp_path):
  base, expected = aircraft_data.write_aircraft(tmp_path)
  config = folder_config(base, source="fgvc_aircraft", train_split="train+val", eval_split="test")
  pipeline.check_data_config(config)
  assert pipeline.num_classes(config) == len(aircraft_data.VARIANTS)
  sizes = {split: pipeline.num_examples(config, split)
           for split in ("train", "val", "validation", "trainval", "train+val", "test[:3]")}
  assert sizes == {"train": 6, "val": 4, "validation": 4, "trainval": 10, "train+val": 10,
                   "test[:3]": 3}
  source = sources.get_source(config)
  for split, rows in (("train+val", expected["trainval"]), ("test", expected["test"])):
    reader = source.reader(split, process_index=0, process_count=1, with_masks=False)
    labels = []
    for index in range(reader.size):
      example = reader.load(tf.constant(index, tf.int64))
      image = example["image"].numpy()
      # The photograph only: 20 banner rows (white) gone, its dark pixels all kept.
      assert image.shape == (aircraft_data.HEIGHT, aircraft_data.WIDTH, 3)
      assert image.mean(axis=(1, 2)).max() < 120
      assert int(example["label"]) == aircraft_data.decode_label(image)   # 'F/A-18' included
      labels.append(int(example["label"]))
    assert sorted(labels) == sorted(label for _, label in rows)
    # Stored shuffled, not in the annotation file's by-variant order.
    assert labels != [label for _, label in rows]
    assert sorted(source.example_names(split)) == sorted(f"{i}.jpg" for i, _ in rows)
  with pytest.raises(ValueError, match="Cannot slice the parts"):
    pipeline.num_examples(config, "train[:2]+val")
  (base / "data" / "images_variant_val.txt").unlink()
  with pytest.raises(ConfigError, match="images_variant_val.txt.*fgvc-aircraft-2013b"):
    pipeline.check_data_config(config)
  with pytest.raises(ConfigError, match="has no split 'minival'"):
    pipeline.check_data_config(folder_config(base, source="fgvc_aircraft",
                                             train_split="minival"))


def test_a_slice_of_a_class_folder_split_samples_every_class(tmp_path):
  """Stored in a fixed pseudo-random order (as tfds stores a prepared split), the first files of
  a split come from every class, not from the first class folders: the linear probe's hold-out
  train[:N] and a fine-tuning hold-out prefix stay representative."""
  for c in range(5):
    for i in range(20):
      write(tmp_path / "data" / "train" / f"class_{c}" / f"{i:02d}.png",
            np.full((8, 8, 3), c, np.uint8))
  config = folder_config(tmp_path / "data")
  first = np.concatenate([b["label"][b["valid"]] for b in pipeline.eval_batches(
      config, split="train[:25]", batch_size=5, image_size=8)])
  assert len(first) == 25 and len(set(first.tolist())) == 5   # sorted by path: 2 classes
  again = np.concatenate([b["label"][b["valid"]] for b in pipeline.eval_batches(
      config, split="train[:25]", batch_size=5, image_size=8)])
  np.testing.assert_array_equal(first, again)                  # the same order every time
