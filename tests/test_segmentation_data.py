"""Segmentation input pipeline: VOC 2012 folders, Cityscapes (tfds mock), built-in shapes;
joint image / mask augmentation, evaluation crops, determinism, resumption and sharding."""

import io
import itertools

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from relic import config as config_lib
from relic.errors import ConfigError
from relic.data import builtin, cityscapes, pipeline, seeds, voc2012
from relic.data import segmentation as seg
from tests import voc2012_data

IGNORE = seg.IGNORE
MEAN = np.array(seg.MEAN_RGB, np.float32)


@pytest.fixture
def config(tmp_path):
  config = config_lib.base_config()
  config.data.cache_dir = str(tmp_path / "cache")
  config.data.builtin.update(dict(num_train=40, num_test=12, image_size=32, seed=0))
  config.data.update(dict(source="builtin", train_split="train", eval_split="test"))
  config.segmentation.update(dict(crop_size=24, eval_size=(32, 32)))
  return config


def expected_eval(image: np.ndarray, mask: np.ndarray, size) -> tuple[np.ndarray, np.ndarray]:
  """Central crop where larger, mean colour / IGNORE padding bottom-right where smaller."""
  height, width = size
  keep_h, keep_w = min(mask.shape[0], height), min(mask.shape[1], width)
  top, left = (mask.shape[0] - keep_h) // 2, (mask.shape[1] - keep_w) // 2
  out_image = np.broadcast_to(MEAN, (height, width, 3)).copy()
  out_mask = np.full((height, width), IGNORE, np.int64)
  out_image[:keep_h, :keep_w] = image[top:top + keep_h, left:left + keep_w] / np.float32(255)
  out_mask[:keep_h, :keep_w] = mask[top:top + keep_h, left:left + keep_w]
  return out_image, out_mask


# ---- VOC 2012 --------------------------------------------------------------------------------

EVAL_SIZE = (40, 48)
# Smaller than EVAL_SIZE, larger, taller but narrower, equal, and wide but short.
VOC_SIZES = {"2007_000001": (30, 36), "2007_000002": (50, 60), "2007_000003": (45, 30),
             "2007_000004": (40, 48), "2007_000005": (21, 70)}


def voc_examples(seed: int = 0):
  rng = np.random.default_rng(seed)
  return {i: (voc2012_data.smooth_image(rng, *hw), voc2012_data.blocky_mask(rng, *hw))
          for i, hw in VOC_SIZES.items()}


def test_voc_eval_batches_reproduce_masks_with_central_crop_and_padding(config, tmp_path):
  examples = voc_examples()
  ids = list(examples)
  # 2007_000003 only has the official palette mask; 2007_000004 has both (Aug preferred).
  decoy = np.zeros(VOC_SIZES["2007_000004"], np.uint8)
  path = voc2012_data.write_voc(tmp_path, examples, {"val": ids, "train": ids[:2]},
                                palette_ids={"2007_000003"},
                                aug_overrides={"2007_000004": decoy})
  config.data.update(dict(source="voc2012", path=str(path), train_split="train", eval_split="val"))
  config.segmentation.eval_size = EVAL_SIZE
  seg.check(config)
  assert seg.num_examples(config, "val") == 5
  assert seg.num_examples(config, "validation[1:3]") == 2
  assert seg.num_examples(config, "val[:40%]") == 2 and seg.num_examples(config, "val[2:]") == 3
  batches = list(seg.eval_batches(config, split="val", batch_size=2))
  assert len(batches) == 3
  np.testing.assert_array_equal(np.concatenate([b["valid"] for b in batches]),
                                [True] * 5 + [False])
  images = np.concatenate([b["image"] for b in batches])
  masks = np.concatenate([b["mask"] for b in batches])
  assert images.shape == (6, *EVAL_SIZE, 3) and images.dtype == np.float32
  assert masks.shape == (6, *EVAL_SIZE) and masks.dtype == np.int32
  for k, image_id in enumerate(ids):      # stored order, each exactly once
    want_image, want_mask = expected_eval(*examples[image_id], EVAL_SIZE)
    np.testing.assert_array_equal(masks[k], want_mask)
    padded = np.zeros(EVAL_SIZE, bool)
    padded[min(VOC_SIZES[image_id][0], EVAL_SIZE[0]):] = True
    padded[:, min(VOC_SIZES[image_id][1], EVAL_SIZE[1]):] = True
    np.testing.assert_array_equal(images[k][padded], want_image[padded])   # exact mean colour
    error = np.abs(images[k][~padded] - want_image[~padded])   # JPEG
    assert error.mean() < 0.01 and error.max() < 0.08, (image_id, error.mean(), error.max())
  assert (masks[5] == IGNORE).all() and np.allclose(images[5], MEAN)


def test_voc_mask_decoding_of_palette_grey_and_unknown_colours():
  palette = voc2012_data.voc_palette()
  ids = np.array([list(range(11)) + [255], list(range(11, 21)) + [0, 255]], np.uint8)

  def decode(data: bytes) -> np.ndarray:
    return voc2012.voc_mask(tf.constant(data)).numpy()

  np.testing.assert_array_equal(decode(voc2012_data.palette_png(ids, palette)), ids)
  # Only black and car-grey (128, 128, 128): VOC colours, not grey indices.
  car = np.array([[0, 7], [7, 0]], np.uint8)
  np.testing.assert_array_equal(decode(voc2012_data.palette_png(car, palette)), car)
  grey = [v for i in range(256) for v in (i, i, i)]
  np.testing.assert_array_equal(decode(voc2012_data.palette_png(ids, grey)), ids)

  def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()

  single = np.array([[0, 5, 20, 21, 100, 255]], np.uint8)
  np.testing.assert_array_equal(decode(png(single)), [[0, 5, 20, IGNORE, IGNORE, IGNORE]])
  colours = np.array(palette, np.uint8).reshape(256, 3)
  rgb = np.stack([colours[15], colours[1], colours[255], [1, 2, 3], colours[21]])[None]
  rgb = rgb.astype(np.uint8)
  np.testing.assert_array_equal(decode(png(rgb)), [[15, 1, IGNORE, IGNORE, IGNORE]])


def test_voc_image_and_mask_of_different_sizes_fail_loudly(config, tmp_path):
  rng = np.random.default_rng(3)
  examples = {"2009_000001": (voc2012_data.smooth_image(rng, 30, 40),
                              voc2012_data.blocky_mask(rng, 30, 41))}
  path = voc2012_data.write_voc(tmp_path, examples, {"train": list(examples)})
  config.data.update(dict(source="voc2012", path=str(path), train_split="train",
                          eval_split="train"))
  with pytest.raises(tf.errors.InvalidArgumentError, match="Image and mask sizes differ"):
    list(seg.eval_batches(config, split="train", batch_size=1))
  with pytest.raises(RuntimeError, match="cannot be read.*sizes differ"):
    seg.train_batches(config, batch_size=1, seed=0)


# ---- joint augmentation ----------------------------------------------------------------------

def coded_example(rng, height=48, width=64):
  """Mask of 8-px class blocks; red = 12 x class, green = 4 x column (a ramp that shows flips
  and the scale), blue constant."""
  mask = voc2012_data.blocky_mask(rng, height, width, void=False)
  image = np.stack([12 * mask, np.broadcast_to(4 * np.arange(width), (height, width)),
                    np.full_like(mask, 128)], axis=-1).astype(np.uint8)
  return image, mask


def check_aligned(image: np.ndarray, mask: np.ndarray, crop: int) -> tuple[bool, float]:
  """Asserts that image and mask went through the same window; returns (flipped, scale)."""
  assert image.shape == (crop, crop, 3) and mask.shape == (crop, crop)
  pad = mask == IGNORE              # the coded examples have no void pixels
  np.testing.assert_array_equal(image[pad], np.broadcast_to(MEAN, image[pad].shape))
  # Pixels whose 3x3 mask neighbourhood is one class: the bilinear image there only mixes
  # pixels of that class, so its red channel is exactly 12 x class. (The crop's border pixels
  # mix pixels outside the crop, whose classes are unknown: a -1 frame leaves them out.)
  edge = np.pad(mask, 1, constant_values=-1)
  interior = ~pad
  for dy, dx in itertools.product(range(3), range(3)):
    interior &= edge[dy:dy + crop, dx:dx + crop] == mask
  assert interior.sum() >= 40
  np.testing.assert_allclose(image[..., 0][interior] * 255, 12 * mask[interior], atol=1e-3)
  both = ~pad[:, 1:] & ~pad[:, :-1]
  slope = np.median((image[:, 1:, 1] - image[:, :-1, 1])[both]) * 255 / 4
  return bool(slope < 0), float(1 / abs(slope))


def test_train_augmentation_keeps_image_and_mask_aligned():
  rng = np.random.default_rng(1)
  crop, flips, scales = 40, [], []
  root = seeds.root_key(7, 0)
  for position in range(24):
    image, mask = coded_example(rng)
    key = seeds.example_key(root, tf.constant(0, tf.int64), tf.constant(position, tf.int64))
    out_image, out_mask = seg.train_example(tf.constant(image), tf.constant(mask), key,
                                            crop_size=crop, min_scale=0.5, max_scale=2.0)
    flipped, scale = check_aligned(out_image.numpy(), out_mask.numpy(), crop)
    flips.append(flipped)
    scales.append(scale)
  assert any(flips) and not all(flips)
  # Class ids are resized nearest-neighbour, never blended: two classes stay two classes.
  two = np.where(voc2012_data.blocky_mask(rng, 48, 64, void=False) % 2 == 0, 1, 20)
  for position in range(4):
    key = seeds.example_key(root, tf.constant(1, tf.int64), tf.constant(position, tf.int64))
    _, out_mask = seg.train_example(tf.constant(image), tf.constant(two.astype(np.uint8)), key,
                                    crop_size=crop, min_scale=0.5, max_scale=2.0)
    assert set(np.unique(out_mask.numpy())) <= {1, 20, IGNORE}
  assert 0.5 * 0.95 <= min(scales) and max(scales) <= 2.0 * 1.05
  assert max(scales) / min(scales) > 2.0, scales


def test_train_batches_from_a_voc_folder_are_aligned(config, tmp_path):
  rng = np.random.default_rng(2)
  examples = {f"2008_{i:06d}": coded_example(rng) for i in range(3)}
  path = voc2012_data.write_voc(tmp_path, examples, {"train": list(examples)},
                                exact_images=True)
  config.data.update(dict(source="voc2012", path=str(path), train_split="train",
                          eval_split="train"))
  config.segmentation.crop_size = 40
  flips = []
  for batch in itertools.islice(seg.train_batches(config, batch_size=4, seed=3), 3):
    assert batch["valid"].all() and batch["mask"].dtype == np.int32
    for image, mask in zip(batch["image"], batch["mask"]):
      flips.append(check_aligned(image, mask, 40)[0])
  assert any(flips) and not all(flips)


# ---- determinism, resumption, sharding -------------------------------------------------------

def take(iterator, n: int) -> list[dict]:
  return list(itertools.islice(iterator, n))


def test_train_batches_are_a_function_of_seed_and_step(config):
  first = take(seg.train_batches(config, batch_size=4, seed=5), 16)
  again = take(seg.train_batches(config, batch_size=4, seed=5), 3)
  other = take(seg.train_batches(config, batch_size=4, seed=6), 1)
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(first[0]["image"], other[0]["image"])
  # 40 images / 4 = 10 batches an epoch: step 13 resumes inside the second epoch.
  resumed = take(seg.train_batches(config, batch_size=4, seed=5, start_step=13), 3)
  for a, b in zip(first[13:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert first[0]["image"].shape == (4, 24, 24, 3) and first[0]["mask"].shape == (4, 24, 24)


def as_process(monkeypatch, index: int, count: int) -> None:
  monkeypatch.setattr(jax, "process_index", lambda: index)
  monkeypatch.setattr(jax, "process_count", lambda: count)


def test_process_shares_are_disjoint_and_cover_the_split(config, monkeypatch):
  whole = take(seg.eval_batches(config, split="test[:11]", batch_size=2), 100)
  everything = {b.tobytes() for batch in whole for b, v in zip(batch["image"], batch["valid"]) if v}
  assert len(everything) == 11
  shares = []
  for index in range(2):
    as_process(monkeypatch, index, 2)
    batches = list(seg.eval_batches(config, split="test[:11]", batch_size=2))
    assert len(batches) == 3      # ceil(ceil(11 / 2) / 2) on every process
    shares.append([b.tobytes() for batch in batches for b, v in
                   zip(batch["image"], batch["valid"]) if v])
  assert len(shares[0]) + len(shares[1]) == 11
  assert set(shares[0]).isdisjoint(shares[1]) and set(shares[0]) | set(shares[1]) == everything
  # Training shares: with scale 1 and full-size crops an example comes back as is or flipped.
  config.segmentation.update(dict(crop_size=32, min_scale=1.0, max_scale=1.0))
  images = builtin.load("train", num_examples=40, image_size=32, seed=0,
                        cache_dir=config.data.cache_dir)["image"][:10] / np.float32(255)
  seen = []
  for index in range(2):
    as_process(monkeypatch, index, 2)
    found = set()
    for batch in take(seg.train_batches(config, batch_size=4, seed=0, split="train[:10]"), 3):
      for image in batch["image"]:
        match = [i for i, x in enumerate(images)
                 if np.array_equal(x, image) or np.array_equal(x[:, ::-1], image)]
        assert len(match) == 1
        found.add(match[0])
    seen.append(found)
  assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(10))


# ---- built-in shapes -------------------------------------------------------------------------

def test_builtin_masks_are_label_plus_one_on_the_object(config):
  assert seg.num_classes(config) == 11 and seg.class_names(config)[0] == "background"
  assert seg.num_examples(config, "val") == 12 and seg.num_examples(config, "train[:25%]") == 10
  arrays = builtin.load("test", num_examples=12, image_size=32, seed=0,
                        cache_dir=config.data.cache_dir)
  batches = list(seg.eval_batches(config, split="validation", batch_size=5))
  masks = np.concatenate([b["mask"] for b in batches])[:12]
  images = np.concatenate([b["image"] for b in batches])[:12]
  for k in range(12):
    label = arrays["label"][k] + 1
    np.testing.assert_array_equal(masks[k], np.where(arrays["mask"][k] > 127, label, 0))
    assert set(np.unique(masks[k])) == {0, label}
    np.testing.assert_array_equal(images[k], arrays["image"][k] / np.float32(255))


# ---- Cityscapes ------------------------------------------------------------------------------

def test_cityscapes_label_ids_map_to_train_ids():
  ids = tf.constant([7, 8, 26, 0, 33, -1, 255, 34, 23, 24, 9, 1])
  np.testing.assert_array_equal(cityscapes.cityscapes_train_ids(ids).numpy(),
                                [0, 1, 13, IGNORE, 18, IGNORE, IGNORE, IGNORE, 10, 11, IGNORE,
                                 IGNORE])
  uint8 = cityscapes.cityscapes_train_ids(tf.constant([[7, 255]], tf.uint8)).numpy()
  np.testing.assert_array_equal(uint8, [[0, IGNORE]])


def test_cityscapes_reads_tfds_records(config, tmp_path):
  config.data.update(dict(source="cityscapes", data_dir=str(tmp_path / "tfds"),
                          train_split="train", eval_split="val"))
  config.segmentation.update(dict(crop_size=32, eval_size=(48, 64)))
  assert seg.num_classes(config) == 19 and seg.class_names(config)[13] == "car"
  with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
    seg.check(config)
    assert seg.num_examples(config, "val") == 2
    raw = list(tfds.builder(cityscapes.CITYSCAPES, data_dir=config.data.data_dir)
               .as_dataset(split="validation").as_numpy_iterator())
    (batch,) = list(seg.eval_batches(config, split="val", batch_size=2))
    for k, example in enumerate(raw):
      labels = tf.constant(example["segmentation_label"][..., 0])
      want_image, want_mask = expected_eval(example["image_left"],
                                            cityscapes.cityscapes_train_ids(labels).numpy(),
                                            (48, 64))
      np.testing.assert_array_equal(batch["mask"][k], want_mask)
      np.testing.assert_array_equal(batch["image"][k], want_image)
    train = next(seg.train_batches(config, batch_size=2, seed=0))
    assert train["image"].shape == (2, 32, 32, 3) and train["mask"].shape == (2, 32, 32)
    assert set(np.unique(train["mask"])) <= set(range(19)) | {IGNORE}


# ---- start-up checks -------------------------------------------------------------------------

def test_check_names_what_is_missing_and_the_fix(config, tmp_path):
  def error(**updates) -> str:
    config.data.update(updates)
    with pytest.raises(ConfigError) as raised:
      seg.check(config)
    return str(raised.value)

  assert "choose one of" in error(source="ade20k") and "voc2012" in error(source="ade20k")
  assert "set config.data.path=DIR" in error(source="voc2012", path="")
  assert "not found" in error(path=str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  assert "JPEGImages" in error(path=str(tmp_path / "empty"))
  examples = voc_examples()
  path = voc2012_data.write_voc(tmp_path, examples, {"val": list(examples)})
  message = error(path=str(path), train_split="train_aug", eval_split="val")
  assert "config.data.train_split" in message and "train_aug.txt" in message
  assert "SBD" in message and "train_split='train'" in message
  message = error(train_split="val", eval_split="tset")
  assert "config.data.eval_split" in message and "tset.txt" in message
  assert "cannot parse" in error(eval_split="val[::2]")
  (path / "SegmentationClassAug" / "2007_000002.png").unlink()
  message = error(eval_split="val")
  assert "1 of the 5 ids" in message and "2007_000002" in message
  message = error(source="cityscapes", data_dir=str(tmp_path / "tfds"), train_split="train")
  assert "downloads/manual" in message and "tfds build cityscapes/semantic_segmentation" in message
  message = error(train_split="train[::2]")
  assert "config.data.train_split" in message and "cannot parse" in message
  message = error(source="builtin", train_split="train", eval_split="holdout")
  assert "config.data.eval_split" in message and "test_ood" in message
  # A source without masks, and masks without image labels, name the sources that have them.
  message = error(source="tfds", eval_split="test")
  assert "config.data.source: 'tfds' has no per-pixel" in message
  assert "'builtin', 'voc2012', 'cityscapes'" in message
  config.data.source = "voc2012"
  with pytest.raises(ConfigError, match="'voc2012' has no images with labels.*'fgvc_aircraft'"):
    pipeline.check_data_config(config)
