"""The built-in shapes dataset: deterministic, balanced, exact masks, a real OOD split."""

import numpy as np

from relic.data import builtin

SIZE = 32


def test_generation_is_deterministic_and_balanced():
  a = builtin.generate("train", num_examples=60, image_size=SIZE, seed=3)
  b = builtin.generate("train", num_examples=60, image_size=SIZE, seed=3)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert a["image"].shape == (60, SIZE, SIZE, 3) and a["image"].dtype == np.uint8
  assert a["mask"].shape == (60, SIZE, SIZE) and set(np.unique(a["mask"])) <= {0, 255}
  np.testing.assert_array_equal(np.bincount(a["label"]), [6] * builtin.NUM_CLASSES)
  other = builtin.generate("train", num_examples=60, image_size=SIZE, seed=4)
  assert not np.array_equal(a["image"], other["image"])
  test = builtin.generate("test", num_examples=60, image_size=SIZE, seed=3)
  assert not np.array_equal(a["image"], test["image"])    # splits are different images


def test_masks_cover_exactly_the_object():
  data = builtin.generate("train", num_examples=50, image_size=64, seed=0)
  for image, mask, colour, center, radius in zip(data["image"], data["mask"], data["color"],
                                                 data["center"], data["radius"]):
    inside = mask > 0
    # Pixels of the mask, away from its antialiased edge, have the object's colour (+ noise).
    core = inside & np.roll(inside, 1, 0) & np.roll(inside, -1, 0) & \
        np.roll(inside, 1, 1) & np.roll(inside, -1, 1)
    assert core.sum() > 10
    error = np.abs(image[core] / 255.0 - colour).max(axis=-1)
    assert np.mean(error < 0.1) > 0.97
    # The mask lies within the object's extent (every shape fits 1.3 radii of its centre).
    ys, xs = np.nonzero(inside)
    distance = np.hypot(xs + 0.5 - center[0], ys + 0.5 - center[1])
    assert distance.max() <= 1.3 * radius + 1.0


def test_ood_split_has_unseen_background_textures():
  train = builtin.generate("train", num_examples=200, image_size=SIZE, seed=0)
  ood = builtin.generate("test_ood", num_examples=200, image_size=SIZE, seed=0)
  assert set(train["texture"]).isdisjoint(set(ood["texture"]))
  assert set(train["label"]) == set(ood["label"])          # same classes, new backgrounds


def test_load_caches_on_disk(tmp_path, monkeypatch):
  first = builtin.load("test", num_examples=20, image_size=SIZE, seed=1, cache_dir=str(tmp_path))
  assert list((tmp_path / "builtin").glob("*.npz"))

  def fail(*args, **kwargs):
    raise AssertionError("regenerated instead of loading the cache")

  monkeypatch.setattr(builtin, "generate", fail)
  again = builtin.load("test", num_examples=20, image_size=SIZE, seed=1, cache_dir=str(tmp_path))
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  monkeypatch.setenv("RELIC_CACHE", str(tmp_path))
  assert builtin.cache_root("") == tmp_path


def test_generation_does_not_depend_on_the_number_of_threads(monkeypatch):
  # 3 chunks of up to 500 images, rendered by 4 threads vs 1: the same arrays, bit for bit.
  monkeypatch.setattr(builtin.os, "cpu_count", lambda: 4)
  threaded = builtin.generate("train", num_examples=1200, image_size=SIZE, seed=5)
  monkeypatch.setattr(builtin.os, "cpu_count", lambda: 1)
  single = builtin.generate("train", num_examples=1200, image_size=SIZE, seed=5)
  assert set(threaded) == set(single)
  for key in threaded:
    np.testing.assert_array_equal(threaded[key], single[key], err_msg=key)
