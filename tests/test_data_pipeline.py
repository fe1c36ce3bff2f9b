"""Pretraining and evaluation batches: shapes, determinism, exact resumption, process shares,
padding, fake data and device prefetch (on the built-in dataset, 32 px)."""

import itertools
import threading

import jax
import numpy as np
import pytest

from relic import config as config_lib, parallel
from relic.data import builtin, pipeline

NUM_TRAIN, NUM_TEST = 40, 37


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  config = config_lib.base_config()
  config.data.source = "builtin"
  config.data.builtin.update(dict(num_train=NUM_TRAIN, num_test=NUM_TEST, image_size=32))
  config.data.views.large.update(dict(num=3, size=32))
  config.data.views.small.update(dict(num=2, size=16))
  config.data.cache_dir = str(tmp_path_factory.mktemp("cache"))
  return config


def take(iterator, n):
  return list(itertools.islice(iterator, n))


def test_pretrain_batches_shapes_dtypes_and_ranges(config):
  batch = next(pipeline.pretrain_batches(config, batch_size=4, seed=0))
  assert set(batch) == {"large", "small", "label"}
  assert batch["large"].shape == (4, 3, 32, 32, 3) and batch["large"].dtype == np.uint8
  assert batch["small"].shape == (4, 2, 16, 16, 3) and batch["small"].dtype == np.uint8
  assert batch["label"].dtype == np.int32 and ((0 <= batch["label"]) & (batch["label"] < 10)).all()
  assert batch["large"].std() > 10                     # real pixels, not a constant
  host = config.copy_and_resolve_references()
  host.data.augment_on_device = False
  host.data.views.small.num = 0
  batch = next(pipeline.pretrain_batches(host, batch_size=4, seed=0))
  assert set(batch) == {"large", "label"}              # no small views: no key
  assert batch["large"].dtype == np.float32
  assert 0.0 <= batch["large"].min() and batch["large"].max() <= 1.0


def test_same_seed_same_batches_and_exact_resumption(config):
  batches = take(pipeline.pretrain_batches(config, batch_size=16, seed=3), 6)  # 2.4 epochs
  again = take(pipeline.pretrain_batches(config, batch_size=16, seed=3), 6)
  for a, b in zip(batches, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  resumed = take(pipeline.pretrain_batches(config, batch_size=16, seed=3, start_step=4), 2)
  for a, b in zip(batches[4:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  other = next(pipeline.pretrain_batches(config, batch_size=16, seed=4))
  assert not np.array_equal(other["large"], batches[0]["large"])
  # Each epoch visits every example once, in a new order.
  labels = np.concatenate([b["label"] for b in batches])
  split = builtin.load("train", num_examples=NUM_TRAIN, image_size=32, seed=0,
                       cache_dir=config.data.cache_dir)["label"]
  for epoch in range(2):
    np.testing.assert_array_equal(np.bincount(labels[epoch * NUM_TRAIN:(epoch + 1) * NUM_TRAIN],
                                              minlength=10), np.bincount(split, minlength=10))
  assert not np.array_equal(labels[:NUM_TRAIN], labels[NUM_TRAIN:2 * NUM_TRAIN])


def image_ids(batches):
  return [b["image"][i].tobytes() for b in batches for i in np.nonzero(b["valid"])[0]]


def test_eval_batches_pad_so_every_example_counts_once(config):
  batches = list(pipeline.eval_batches(config, split="test", batch_size=8, image_size=32))
  assert len(batches) == 5                             # ceil(37 / 8)
  valid = np.concatenate([b["valid"] for b in batches])
  assert valid.sum() == NUM_TEST and not valid[NUM_TEST:].any()
  last = batches[-1]
  assert (last["label"][~last["valid"]] == -1).all() and (last["image"][~last["valid"]] == 0).all()
  assert batches[0]["image"].shape == (8, 32, 32, 3) and batches[0]["image"].dtype == np.float32
  assert 0.0 <= min(b["image"].min() for b in batches) and max(b["image"].max()
                                                                for b in batches) <= 1.0
  assert len(set(image_ids(batches))) == NUM_TEST
  assert pipeline.num_examples(config, "test") == NUM_TEST
  assert pipeline.num_examples(config, "validation") == NUM_TEST    # alias
  assert pipeline.num_examples(config, "train[:25%]") == NUM_TRAIN // 4
  assert pipeline.num_classes(config) == 10
  # Train mode: endless, all valid, augmented (differs from the centre crops).
  train = take(pipeline.eval_batches(config, split="test", batch_size=8, image_size=32,
                                     train_augment=True, repeat=True), 6)
  assert all(b["valid"].all() for b in train)
  assert not set(image_ids(train)) & set(image_ids(batches))


def test_processes_read_disjoint_shares_that_cover_the_split(config, monkeypatch):
  everything = set(image_ids(pipeline.eval_batches(config, split="test", batch_size=4,
                                                   image_size=32)))
  shares, lengths = [], set()
  for index in range(3):
    monkeypatch.setattr(pipeline, "_process", lambda i=index: (i, 3))
    batches = list(pipeline.eval_batches(config, split="test", batch_size=4, image_size=32))
    lengths.add(len(batches))
    shares.append(set(image_ids(batches)))
  assert lengths == {4}                        # ceil(ceil(37 / 3) / 4): same on every process
  assert sum(len(s) for s in shares) == NUM_TEST
  assert set.union(*shares) == everything
  # Pretraining streams of different processes differ too.
  firsts = []
  for index in range(2):
    monkeypatch.setattr(pipeline, "_process", lambda i=index: (i, 2))
    firsts.append(next(pipeline.pretrain_batches(config, batch_size=4, seed=0))["large"])
  assert not np.array_equal(*firsts)


def test_fake_batches_need_no_data(config):
  fake = config.copy_and_resolve_references()
  fake.data.update(dict(fake=True, source="folder", path="/does/not/exist"))
  pipeline.check_data_config(fake)
  batch = next(pipeline.pretrain_batches(fake, batch_size=2, seed=0))
  assert batch["large"].shape == (2, 3, 32, 32, 3) and batch["large"].dtype == np.uint8
  assert batch["small"].shape == (2, 2, 16, 16, 3)
  assert pipeline.num_classes(fake) == 1000
  evals = list(pipeline.eval_batches(fake, split="validation", batch_size=4096, image_size=8))
  assert sum(b["valid"].sum() for b in evals) == pipeline.num_examples(fake, "validation")


def test_device_prefetch_makes_global_sharded_batches(config):
  mesh = parallel.make_mesh()
  host = take(pipeline.pretrain_batches(config, batch_size=8, seed=1), 3)
  device = list(pipeline.device_prefetch(iter(host), mesh, size=2))
  assert len(device) == 3
  for h, d in zip(host, device):
    assert isinstance(d["large"], jax.Array) and d["large"].sharding == parallel.data_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(d["large"]), h["large"])

  def broken():
    yield host[0]
    raise OSError("disk gone")

  stream = pipeline.device_prefetch(broken(), mesh, size=1)
  next(stream)
  with pytest.raises(OSError, match="disk gone"):
    next(stream)

  # Closing an endless stream stops and joins its thread (a thread left inside TensorFlow's
  # iterator at interpreter exit aborts the process).
  before = {t for t in threading.enumerate() if t.name == "relic-device-prefetch"}
  endless = pipeline.device_prefetch(pipeline.pretrain_batches(config, batch_size=8, seed=1),
                                     mesh, size=2)
  next(endless)
  running = {t for t in threading.enumerate() if t.name == "relic-device-prefetch"} - before
  assert len(running) == 1
  endless.close()
  assert not any(t.is_alive() for t in running)


def test_device_prefetch_reads_no_batch_past_the_runs_last(config):
  """With ``num_batches`` (a run's remaining steps) the thread reads exactly that many batches
  and ends by itself: after the last step nothing is left inside the input pipeline for the
  close to wait on."""
  mesh = parallel.make_mesh()
  read = []

  def counted():
    for batch in pipeline.pretrain_batches(config, batch_size=8, seed=1):
      read.append(1)
      yield batch

  before = {t for t in threading.enumerate() if t.name == "relic-device-prefetch"}
  stream = pipeline.device_prefetch(counted(), mesh, size=2, num_batches=3)
  assert len([next(stream) for _ in range(3)]) == 3
  threads = {t for t in threading.enumerate() if t.name == "relic-device-prefetch"} - before
  for thread in threads:
    thread.join(timeout=30)
  assert not any(t.is_alive() for t in threads)   # ended without a close
  assert len(read) == 3
  with pytest.raises(StopIteration):
    next(stream)
  unthreaded = pipeline.device_prefetch(iter([{"x": np.zeros((8,))}] * 5), mesh, size=0,
                                       num_batches=2)
  assert len(list(unthreaded)) == 2
