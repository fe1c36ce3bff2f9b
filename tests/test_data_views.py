"""Multi-crop views: presets, crop boxes, and saliency masking of large views only."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from relic import config as config_lib
from relic.data import crops, pipeline, views


def test_presets_cycle_over_each_group():
  config = config_lib.base_config()
  assert views.view_presets(config) == ("ABAB", "AB")
  config.data.views.large.num = 3
  config.data.views.small.update(dict(num=6, presets="B"))
  assert views.view_presets(config) == ("ABA", "BBBBBB")
  large, small = views.view_specs(config)
  assert [s.preset for s in large] == list("ABA") and all(s.maskable for s in large)
  assert len(small) == 6 and not any(s.maskable for s in small)
  assert {(s.size, s.min_scale, s.max_scale) for s in small} == {(96, 0.05, 0.14)}
  config.data.views.small.num = 0
  assert views.view_presets(config)[1] == ""


@pytest.mark.parametrize("height,width", [(375, 500), (5, 5), (12, 300), (64, 64)])
def test_random_resized_crop_boxes(height, width):
  rng = np.random.default_rng(height * width)
  u = tf.constant(rng.random((300, crops.CROP_UNIFORMS), dtype=np.float32))
  sample = tf.function(lambda v: tf.stack(crops.random_resized_crop_box(v, height, width,
                                                                       0.08, 1.0)))
  boxes = tf.data.Dataset.from_tensor_slices(u).map(sample).batch(300).get_single_element()
  boxes = boxes.numpy()
  top, left, h, w = boxes.T
  assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
  assert (top + h <= height).all() and (left + w <= width).all()
  if height * width > 1000 and max(height, width) / min(height, width) < 2:
    area = h * w / (height * width)
    assert 0.06 < area.min() and area.max() <= 1.0
    aspect = w / h
    assert (aspect > 0.7).all() and (aspect < 1.45).all()
    assert area.std() > 0.15                       # areas really are spread over (0.08, 1)
  top, left, h, w = crops.center_crop_box(tf.constant(height), tf.constant(width), 0.875)
  assert int(h) == int(w) == max(1, round(0.875 * min(height, width)))


def _folder_config(root, masks, **data):
  config = config_lib.base_config()
  config.data.update(dict(source="folder", path=str(root), mask_path=str(masks), **data))
  config.data.views.large.update(dict(num=4, size=24))
  config.data.views.small.update(dict(num=2, size=12))
  config.data.cache_dir = str(root.parent / "cache")
  return config


def test_masked_large_views_are_exactly_the_crop_of_the_mask(tmp_path):
  """Run 1 cuts views from a flat image with its mask (mask_prob=1, fill 0); run 2, same seed,
  cuts them from an image that *is* the mask (scaled to 160 so bicubic overshoot is not
  clipped; colour channels <= 160 so rounding cannot lift an empty pixel). Crop boxes depend
  only on the seed and image size, so every large view of run 1 must be the object colour
  times run 2's mask crop, with mask_fill exactly wherever the cropped mask is empty; small
  views are never masked."""
  height, width, colour = 40, 48, np.array([160, 100, 40], np.uint8)
  yy, xx = np.mgrid[:height, :width]
  mask = (((yy - 18) ** 2 + (xx - 20) ** 2) < 150).astype(np.uint8) * 255
  for name, image in (("flat", np.broadcast_to(colour, (height, width, 3))),
                      ("maskimage", np.repeat(mask[..., None] // 255 * 160, 3, axis=-1))):
    (tmp_path / name / "img").mkdir(parents=True)
    Image.fromarray(np.ascontiguousarray(image)).save(tmp_path / name / "img" / "x.png")
  (tmp_path / "masks").mkdir()
  Image.fromarray(mask).save(tmp_path / "masks" / "x.bmp")   # matched by stem
  masked = next(pipeline.pretrain_batches(
      _folder_config(tmp_path / "flat" / "img", tmp_path / "masks", mask_prob=1.0),
      batch_size=3, seed=5))
  reference = next(pipeline.pretrain_batches(
      _folder_config(tmp_path / "maskimage" / "img", tmp_path / "masks", mask_prob=0.0),
      batch_size=3, seed=5))
  expected = reference["large"] / 160.0 * colour
  assert np.abs(masked["large"] - expected).max() <= 1.5
  empty = reference["large"].max(axis=-1) == 0
  assert empty.mean() > 0.1 and (masked["large"][empty] == 0).all()
  # Small views: the plain image, never masked.
  assert (masked["small"] == colour).all()
  # With mask_prob=0 the large views are the plain image too.
  plain = next(pipeline.pretrain_batches(
      _folder_config(tmp_path / "flat" / "img", tmp_path / "masks", mask_prob=0.0),
      batch_size=3, seed=5))
  assert (plain["large"] == colour).all()
