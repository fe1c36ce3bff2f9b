"""tfds source on tfds.testing.mock_data (no files, no download)."""

import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds

from relic import config as config_lib
from relic.errors import ConfigError
from relic.data import pipeline, tfds_source
from relic.jobs import pretrain
from tests import voc2007_data

NUM = 13


@pytest.fixture
def config(tmp_path):
  config = config_lib.base_config()
  config.data.update(dict(source="tfds", dataset="imagenet2012", mask_prob=0.0,
                          shuffle_buffer=8, data_dir=str(tmp_path / "tfds")))
  config.data.views.large.update(dict(num=2, size=32))
  config.data.views.small.update(dict(num=2, size=16))
  return config


def mock():
  return tfds.testing.mock_data(num_examples=NUM, policy=tfds.testing.MockPolicy.USE_CODE)


def test_missing_imagenet_explains_the_manual_download(config):
  with pytest.raises(ConfigError) as error:
    pipeline.check_data_config(config)
  message = str(error.value)
  assert "downloads/manual" in message and "ILSVRC2012_img_train.tar" in message
  assert "tfds build imagenet2012" in message and config.data.data_dir in message
  config.data.dataset = "no_such_dataset_xyz"
  with pytest.raises(ConfigError, match="no tfds dataset named"):
    pipeline.check_data_config(config)


def test_mock_imagenet_batches_resume_and_pad(config):
  with mock():
    pipeline.check_data_config(config)
    assert pipeline.num_classes(config) == 1000
    assert pipeline.num_examples(config, "train") == NUM
    batches = list(itertools.islice(pipeline.pretrain_batches(config, batch_size=4, seed=0), 5))
    assert batches[0]["large"].shape == (4, 2, 32, 32, 3) and batches[0]["large"].dtype == np.uint8
    assert batches[0]["small"].shape == (4, 2, 16, 16, 3)
    assert all(((0 <= b["label"]) & (b["label"] < 1000)).all() for b in batches)
    resumed = next(pipeline.pretrain_batches(config, batch_size=4, seed=0, start_step=4))
    for key in resumed:                       # step 4 = element 16 = epoch 1, record 3
      np.testing.assert_array_equal(resumed[key], batches[4][key])
    evals = list(pipeline.eval_batches(config, split="validation", batch_size=5, image_size=24))
    assert len(evals) == 3 and sum(b["valid"].sum() for b in evals) == NUM
    assert evals[0]["image"].shape == (5, 24, 24, 3)


def test_mock_cifar10_and_masks_need_file_names(config, tmp_path):
  config.data.dataset = "cifar10"
  config.data.eval_split = "test"
  with mock():
    pipeline.check_data_config(config)
    assert pipeline.num_classes(config) == 10
    batch = next(pipeline.pretrain_batches(config, batch_size=3, seed=1))
    assert batch["large"].shape == (3, 2, 32, 32, 3)
    (tmp_path / "masks").mkdir()
    config.data.update(dict(mask_prob=0.5, mask_path=str(tmp_path / "masks")))
    with pytest.raises(ConfigError, match="file_name"):
      pipeline.check_data_config(config)
    config.data.dataset = "imagenet2012"              # has file_name: masks matched by stem
    config.data.eval_split = "validation"
    pipeline.check_data_config(config)
    batch = next(pipeline.pretrain_batches(config, batch_size=3, seed=1))
    assert batch["large"].shape == (3, 2, 32, 32, 3)


def test_processes_read_disjoint_even_splits(config, monkeypatch):
  requested = []
  real = tfds_source.TfdsSource.as_dataset

  def record(self, split):
    requested.append(split)
    return real(self, split)

  monkeypatch.setattr(tfds_source.TfdsSource, "as_dataset", record)
  monkeypatch.setattr(tfds_source, "_MIN_BLOCK_SIZE", 1)
  monkeypatch.setattr(tfds_source.TfdsSource, "num_examples", lambda self, split: 1000)
  with mock():
    shares = []
    for index in range(2):
      requested.clear()
      source = tfds_source.TfdsSource(config.data)
      source.reader("train", process_index=index, process_count=2, with_masks=False)
      shares.append({(s.index, s.count) for s in requested})
  blocks = tfds_source._BLOCKS_PER_PROCESS
  assert shares[0] == {(i, 2 * blocks) for i in range(blocks)}
  assert shares[1] == {(i, 2 * blocks) for i in range(blocks, 2 * blocks)}


def test_voc2007_is_multilabel_with_difficult_classes_ignored(tmp_path):
  """tfds's real voc/2007 builder on a tiny devkit: each image's targets are its classes (1),
  the others (0), and -1 for a class present only as "difficult" objects."""
  expected = voc2007_data.write_devkit(tmp_path / "devkit")
  voc2007_data.prepare(tmp_path / "tfds", tmp_path / "devkit")
  config = config_lib.base_config()
  config.data.update(dict(source="tfds", dataset="voc/2007", mask_prob=0.0,
                          data_dir=str(tmp_path / "tfds"), train_split="train+validation",
                          eval_split="test"))
  assert pipeline.is_multilabel(config) and pipeline.num_classes(config) == 20
  assert pipeline.num_examples(config, "train+validation") == 16
  batches = list(pipeline.eval_batches(config, split="test", batch_size=4, image_size=32))
  assert len(batches) == 3 and all(b["labels"].shape == (4, 20) for b in batches)
  assert not batches[-1]["valid"][1:].any() and (batches[-1]["labels"][1:] == -1).all()
  got = np.concatenate([b["labels"][b["valid"]] for b in batches])
  want = np.stack(list(expected["test"].values()))
  assert (want == -1).any()                                # the devkit has difficult-only classes
  rows = lambda a: sorted(map(tuple, a.tolist()))           # tfds stores examples shuffled
  assert rows(got) == rows(want)
  assert (np.concatenate([b["label"] for b in batches]) == -1).all()  # no single class
  # Pretraining reads its images but refuses what needs one class per image, before compute.
  with pytest.raises(ConfigError, match="multi-label.*pretraining with probe, evaluators needs"):
    pretrain.validate(config)
  config.probe.enabled = False
  config.evaluators.update(dict(periodic=(), final=()))
  pretrain.validate(config)
