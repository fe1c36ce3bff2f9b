"""Segmentation transfer: the mIoU counts against NumPy, the loss and schedule, and the job end
to end on the built-in dataset (object masks) with 8 simulated devices, resumed and swept."""

import jax.numpy as jnp
import numpy as np
import pytest

from relic import checkpoints, config as config_lib, parallel, resume_check
from relic.train import segmentation_step as seg_step
from relic.errors import ConfigError
from relic.data import segmentation as seg_data
from relic.evaluators import segmentation as seg_eval
from relic.jobs import segmentation as seg_job
from relic.checkpoints import read_results
from relic.main import run as run_job
from relic.models import segmentation_net
from tests.test_eval_jobs import TINY_MODEL, restore_tree, write_pretrained


def _numpy_confusion(logits, mask, valid, num_classes):
  confusion = np.zeros((num_classes, num_classes), np.int64)
  predicted = logits.argmax(-1)
  for b in range(len(mask)):
    if not valid[b]:
      continue
    for t, p in zip(mask[b].ravel(), predicted[b].ravel()):
      if t < num_classes:
        confusion[t, p] += 1
  return confusion


def test_confusion_matrix_is_exact_over_padded_sharded_batches():
  rng = np.random.default_rng(0)
  num_classes, batch, size = 5, 16, 6
  batches, expected = [], np.zeros((num_classes, num_classes), np.int64)
  for i in range(3):
    logits = rng.normal(size=(batch, size, size, num_classes)).astype(np.float32)
    mask = rng.integers(0, num_classes - 1, size=(batch, size, size)).astype(np.int32)  # no 4
    mask[rng.random(mask.shape) < 0.2] = 255                     # void pixels
    valid = np.arange(batch) < (batch if i < 2 else 5)            # a padded last batch
    batches.append({"image": logits, "mask": mask, "valid": valid})
    expected += _numpy_confusion(logits, mask, valid, num_classes)
  mesh = parallel.make_mesh()
  confusion = seg_eval.confusion_matrix(lambda v, images: images, {}, batches, mesh, num_classes)
  np.testing.assert_array_equal(confusion, expected)

  result = seg_eval.scores(confusion, [f"c{c}" for c in range(num_classes)])
  tp = np.diag(expected)
  union = expected.sum(0) + expected.sum(1) - tp
  present = union > 0
  assert result["miou"] == pytest.approx(100 * np.mean(tp[present] / union[present]))
  assert result["pixel_accuracy"] == pytest.approx(100 * tp.sum() / expected.sum())
  assert result["num_pixels"] == int(expected.sum())
  # Class 4 never occurs in the masks but is predicted: IoU 0, and it counts in the mean.
  assert result["per_class_iou"]["c4"] == 0.0


def test_scores_skip_classes_absent_from_truth_and_predictions():
  confusion = np.array([[3, 1, 0], [0, 4, 0], [0, 0, 0]])
  result = seg_eval.scores(confusion)
  assert result["per_class_iou"]["2"] is None
  assert result["miou"] == pytest.approx(100 * (3 / 4 + 4 / 5) / 2)


def test_pixel_cross_entropy_ignores_void_and_padding():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 4, 4, 5)).astype(np.float32)
  mask = rng.integers(0, 5, size=(3, 4, 4)).astype(np.int32)
  mask[0, :2] = 255
  valid = np.array([True, True, False])
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  keep = (mask < 5) & valid[:, None, None]
  expected = -np.mean(np.take_along_axis(log_probs, np.minimum(mask, 4)[..., None], -1)[..., 0][keep])
  loss = seg_step.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(mask), jnp.asarray(valid))
  assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_rate_is_divided_by_ten_at_70_and_90_percent():
  config = config_lib.base_config()
  config.segmentation.update(dict(num_steps=100, lr_decay_at=(0.7, 0.9)))
  schedule = seg_step.make_schedule(config, 0.02)
  rates = [float(schedule(s)) for s in (0, 69, 70, 89, 90, 99)]
  np.testing.assert_allclose(rates, [0.02, 0.02, 0.002, 0.002, 0.0002, 0.0002], rtol=1e-6)


NUM_TRAIN, NUM_TEST = 64, 20      # 20 test images: not a multiple of the global batch (8)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> str:
  return write_pretrained(tmp_path_factory.mktemp("pretrained"), TINY_MODEL, step=3)


def segmentation_config(pretrained: str, **overrides):
  config = config_lib.base_config()
  config.job = "segmentation"
  config.pretrained = pretrained
  config.data.builtin.update(dict(num_train=NUM_TRAIN, num_test=NUM_TEST, image_size=32))
  config.data.update(dict(source="builtin", train_split="train", eval_split="test"))
  config.segmentation.update(dict(crop_size=32, eval_size=(32, 32), batch_size=8, num_steps=4,
                                  base_lr=0.05, log_every_steps=1, checkpoint_every_steps=2))
  config.segmentation.update(overrides)
  return config


def test_segmentation_job_sweeps_trains_and_scores_miou(pretrained, tmp_path):
  config = segmentation_config(pretrained, lr_grid=(0.05, 0.01), holdout_examples=16)
  run_job(config, str(tmp_path))
  results = read_results(str(tmp_path))
  # The sweep: each rate trained on train[16:], scored by mIoU on the first 16 images.
  assert [r["base_lr"] for r in results["sweep"]] == [0.05, 0.01]
  assert all(r["holdout_split"] == "train[:16]" and r["num_holdout"] == 16
             for r in results["sweep"])
  best = min(results["sweep"], key=lambda r: (-r["holdout_miou"], r["base_lr"]))
  assert results["selected"]["base_lr"] == best["base_lr"]
  test = results["test"]
  assert test["num_images"] == NUM_TEST and len(test["per_class_iou"]) == 11
  assert test["num_pixels"] == NUM_TEST * 32 * 32       # built-in masks have no void pixels

  # The reported mIoU, recomputed without the job's sharded counting: the final checkpoint
  # (step 4) applied image by image, the confusion matrix counted in NumPy.
  state = restore_tree(tmp_path, 4)
  encoder, _, _ = checkpoints.load_pretrained(config)
  net = segmentation_net(encoder, config.segmentation, 11)
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  confusion = np.zeros((11, 11), np.int64)
  for batch in seg_data.eval_batches(config, split="test", batch_size=8):
    logits = np.asarray(net.apply(variables, batch["image"], train=False))
    confusion += _numpy_confusion(logits, batch["mask"], batch["valid"], 11)
  assert test["miou"] == pytest.approx(seg_eval.scores(confusion)["miou"], abs=1e-4)
  assert "**mIoU" in (tmp_path / "results.md").read_text()
  # The encoder was trained (its first conv moved away from the pretrained weights).
  _, start = checkpoints.restore_encoder(pretrained)
  assert not np.allclose(state["params"]["encoder"]["conv_init"]["kernel"],
                         start["params"]["conv_init"]["kernel"])
  # Rerunning the command trains nothing and reports the same numbers.
  run_job(config, str(tmp_path))
  assert read_results(str(tmp_path))["test"] == test


@pytest.mark.parametrize("field,value,message", [
    ("output_stride", 4, "output_stride: 4 is not supported"),
    ("batch_size", 12, "multiple of the 8 devices"),
    ("lr_decay_at", (0.9, 0.7), "increasing fractions"),
])
def test_bad_settings_fail_before_compute(pretrained, tmp_path, field, value, message):
  config = segmentation_config(pretrained, **{field: value})
  with pytest.raises(ConfigError, match=message):
    run_job(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_missing_voc_folder_fails_before_compute(pretrained, tmp_path):
  config = segmentation_config(pretrained)
  config.data.update(dict(source="voc2012", path=str(tmp_path / "nowhere"),
                          train_split="train_aug", eval_split="val"))
  with pytest.raises(ConfigError, match="nowhere"):
    run_job(config, str(tmp_path / "run"))


def test_resume_refuses_other_data_but_accepts_a_moved_folder():
  config = segmentation_config("unused")
  config.data.update(dict(source="voc2012", path="/data/VOC2012", train_split="train_aug"))
  meta = {"config": checkpoints.config_to_json(config), "base_lr": 0.05, "fingerprint": "f"}

  def resume(**data):
    changed = segmentation_config("unused")
    changed.data.update({**dict(source="voc2012", path="/data/VOC2012", train_split="train_aug"),
                         **data})
    resume_check.check_run_resume(meta, changed, {"fingerprint": "f"}, 0.05, "segmentation",
                                  seg_job.RESUME_FIELDS)

  resume(path="/mnt/elsewhere/VOC2012")       # paths may change
  with pytest.raises(ConfigError, match="data.train_split: saved 'train_aug', now 'train'"):
    resume(train_split="train")
  with pytest.raises(ConfigError, match="data.source: saved 'voc2012', now 'builtin'"):
    resume(source="builtin")
