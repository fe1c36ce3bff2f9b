"""Evaluation jobs end to end on 8 simulated devices: built-in dataset (32 px) and tfds mock data.

The pretrained encoder is a tiny ResNet written straight into a relic workdir in the train-state
dict format (what a pretraining run leaves), with NumPy-drawn weights: no pretraining and no
random-init compilation in the test's time budget.
"""

import json

import jax
import numpy as np
import pytest
from etils import epath

from relic import checkpoints, config as config_lib
from relic.errors import ConfigError
from relic import parallel
from relic.data import pipeline
from relic.evaluators import frozen, linear, multilabel
from relic.train import heads_step as linear_heads
from relic.data import transfer_datasets
from relic.jobs import linear_probe
from relic.checkpoints import read_results
from relic.main import run as run_job
from relic.models import LinearHead, encoder_from_config
from tests import aircraft_data, objectnet_data, voc2007_data

TINY_MODEL = dict(depth=18, stage_sizes=(1, 1, 1, 1), base_width=4, small_images=True)
NUM_TRAIN, NUM_TEST = 200, 100    # 100 test images: not a multiple of the global batch (32)


def numpy_variables(encoder, seed: int = 0) -> dict:
  """Variables of ``encoder`` drawn with NumPy (shapes from abstract evaluation)."""
  shapes = jax.eval_shape(encoder.init, jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def write_pretrained(workdir, model: dict, step: int = 7) -> str:
  """A relic workdir holding one checkpoint of a ``model`` encoder with NumPy weights, in the
  train-state dict format a pretraining run leaves."""
  config = config_lib.base_config()
  config.model.update(model)
  variables = numpy_variables(encoder_from_config(config.model))
  state = {"online_params": {"encoder": variables["params"]},
           "online_batch_stats": {"encoder": variables["batch_stats"]}, "step": np.int32(step)}
  checkpoints.write_config(config, str(workdir))
  with checkpoints.Checkpointer(workdir, keep=1, async_save=False) as ckpt:
    ckpt.save(step, state, extra_json={"config": checkpoints.config_to_json(config)})
  return str(workdir)


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory) -> str:
  """A relic workdir holding one checkpoint of a tiny encoder, as pretraining writes it."""
  return write_pretrained(tmp_path_factory.mktemp("pretrained"), TINY_MODEL)


def run(config, workdir: str) -> dict:
  """``relic.main.run`` (validation, then the job), then the job's results.json."""
  run_job(config, workdir)
  return read_results(workdir)


def eval_config(job: str, pretrained: str):
  config = config_lib.base_config()
  config.job = job
  config.pretrained = pretrained
  config.data.source = "builtin"
  config.data.mask_prob = 0.0
  config.data.builtin.update(dict(num_train=NUM_TRAIN, num_test=NUM_TEST, image_size=32))
  return config


@pytest.fixture(scope="module")
def probe(pretrained, tmp_path_factory):
  """One finished linear probe: 2 rates side by side, hold-out train[:40], 5 steps of 32."""
  config = eval_config("linear_probe", pretrained)
  config.linear_probe.update(dict(batch_size=32, num_epochs=1.0, lr_grid=(0.1, 1.0),
                                  holdout_examples=40, image_size=32, log_every_steps=1,
                                  checkpoint_every_steps=3))
  workdir = str(tmp_path_factory.mktemp("probe"))
  return workdir, run(config, workdir), config


def test_linear_probe_end_to_end(probe, pretrained):
  workdir, results, config = probe
  assert results["test"]["num_examples"] == NUM_TEST          # every test image exactly once
  assert results["data"]["num_holdout"] == 40
  assert results["data"]["fit_split"] == "train[40:200]"
  assert [e["base_lr"] for e in results["sweep"]] == [0.1, 1.0]
  assert all(0.0 <= e["holdout_top1"] <= 100.0 for e in results["sweep"])
  assert results["selected"]["peak_lr"] == results["selected"]["base_lr"] * 32 / 256
  # The frozen encoder: checked by the job on its device copy, and the checkpoint is intact.
  assert results["encoder_unchanged"]
  _, variables = checkpoints.restore_encoder(pretrained)
  assert checkpoints.fingerprint(variables) == results["encoder"]["fingerprint"]
  head, record = checkpoints.load_probe_head(workdir, linear_probe_only=True)
  assert head["linear"]["kernel"].shape == (32, 10) and head["linear"]["bias"].shape == (10,)
  assert record["encoder"]["fingerprint"] == results["encoder"]["fingerprint"]
  steps = [m["step"] for m in map(json.loads, (epath.Path(workdir) / "metrics.jsonl")
                                  .read_text().splitlines()) if "train/loss_lr0.1" in m]
  assert steps == [1, 2, 3, 4, 5]       # ceil(160 / 32) steps, logged with both rates
  assert "(selected)" in (epath.Path(workdir) / "results.md").read_text()
  # Rerunning the command resumes the finished heads from their checkpoint: same numbers.
  again = run(config, workdir)
  assert again["sweep"] == results["sweep"] and again["test"] == results["test"]


def test_probe_step_leaves_encoder_params_and_bn_statistics_unchanged():
  encoder = encoder_from_config(TINY_MODEL)
  variables = numpy_variables(encoder, seed=1)
  before = checkpoints.fingerprint(variables)
  frozen = jax.device_put(variables)
  optimizer = linear_heads.heads_optimizer(0.9)
  step = jax.jit(linear_heads.make_train_step(
      num_classes=3, learning_rates=(1.0,), total_steps=5, optimizer=optimizer,
      features_fn=lambda enc, batch: encoder.apply(enc, batch["image"], train=False)),
      donate_argnums=0)
  state = linear_heads.init_heads(1, encoder.num_features, 3, optimizer)
  images = np.random.default_rng(0).uniform(size=(16, 32, 32, 3)).astype(np.float32)
  for _ in range(3):
    state, _ = step(state, frozen, {"image": images, "label": np.arange(16) % 3,
                                    "valid": np.ones(16, bool)})
  assert checkpoints.fingerprint(jax.device_get(frozen)) == before
  assert np.abs(np.asarray(state.params["linear"]["kernel"])).sum() > 0


def test_robustness_scores_the_probe_head_on_test_and_test_ood(probe, tmp_path):
  probe_dir, probe_results, _ = probe
  config = eval_config("robustness", "")        # the encoder comes from the probe's record
  config.robustness.update(dict(probe=probe_dir, batch_size=32))
  results = run(config, str(tmp_path))
  assert list(results["sets"]) == ["test", "test_ood"]
  assert all(r["num_examples"] == NUM_TEST for r in results["sets"].values())
  # The same head on the same split gives the probe's own test accuracy.
  assert results["sets"]["test"]["top1"] == pytest.approx(probe_results["test"]["top1"])
  assert results["sets"]["test"]["top5"] == pytest.approx(probe_results["test"]["top5"])
  assert (tmp_path / "results.md").exists()


def write_imagenet_head(workdir, pretrained: str, bias: np.ndarray) -> str:
  """A finished 1000-class (ImageNet) linear probe of the ``pretrained`` encoder, as
  ``linear_probe`` leaves it: kernel ~1e-4 so that ``bias`` decides every prediction."""
  _, variables = checkpoints.restore_encoder(pretrained)
  num_features = encoder_from_config(TINY_MODEL).num_features
  kernel = 1e-4 * np.random.default_rng(0).normal(size=(num_features, 1000)).astype(np.float32)
  workdir.mkdir()
  np.savez(workdir / checkpoints.PROBE_HEAD_NPZ, kernel=kernel, bias=bias.astype(np.float32))
  (workdir / checkpoints.PROBE_HEAD_JSON).write_text(json.dumps({
      "num_classes": 1000, "num_features": num_features, "image_size": 32,
      "selected": {"base_lr": 0.1, "peak_lr": 0.0125, "index": 0},
      "test": {"top1": 0.0, "top5": 0.0},
      "encoder": {"path": pretrained, "fingerprint": checkpoints.fingerprint(variables)},
      "data": {"source": "tfds", "dataset": "imagenet2012"}}))
  return str(workdir)


def test_robustness_objectnet_scores_the_imagenet_head_through_class_groups(pretrained, probe,
                                                                            tmp_path):
  """The head's biases fix its ranking (tench > digital clock > wok > banana > mitten >
  backpack), so the expected ObjectNet top-k follows from the image counts. Tench, the head's
  favourite, stands for no ObjectNet class and must never be predicted."""
  bias = np.zeros(1000)
  bias[[0, 530, 909, 954, 658, 414]] = [100.0, 50.0, 40.0, 30.0, 20.0, 10.0]
  head_dir = write_imagenet_head(tmp_path / "probe", pretrained, bias)
  config = eval_config("robustness", "")
  config.data.cache_dir = str(tmp_path / "cache")
  config.robustness.update(dict(probe=head_dir, batch_size=32, datasets=("objectnet",),
                                objectnet_path=str(objectnet_data.write_objectnet(tmp_path))))
  results = run(config, str(tmp_path / "run"))
  objectnet = results["sets"]["objectnet"]
  # 8 images: alarm_clock 2, banana 3, chair 2, wok 1 (squeegee's 2 are not ImageNet classes).
  assert objectnet["num_examples"] == 8
  assert objectnet["top1"] == 25.0              # every image -> alarm clock (digital clock)
  assert objectnet["top5"] == 75.0              # alarm clock, wok, banana in the top 5; chair not
  assert objectnet["mean_per_class"] == 25.0    # alarm_clock 100%, the other 3 classes 0%
  assert "| objectnet | test | objectnet | 8 |" in (tmp_path / "run" / "results.md").read_text()
  # A head of another label space (the built-in dataset's 10 classes) is refused up front.
  config.robustness.probe = probe[0]
  with pytest.raises(ConfigError, match="1000-class ImageNet head"):
    run(config, str(tmp_path / "refused"))


def test_finetune_subset_changes_the_encoder_and_resumes(pretrained, tmp_path):
  config = eval_config("finetune", pretrained)
  config.finetune.update(dict(subset="10pct", batch_size=16, num_epochs=2.0, image_size=32,
                              lr_grid=(0.5, 0.05), holdout_examples=4, log_every_steps=1,
                              checkpoint_every_steps=2))
  results = run(config, str(tmp_path))
  train = results["data"]["train"]
  assert train["num_examples"] == NUM_TRAIN // 10 and train["per_class"] == [2] * 10
  # The sweep: each rate trained on 16 of the 20 examples, scored on a balanced hold-out of 4;
  # the best rate (ties: the smaller) then trained on all 20.
  assert [s["base_lr"] for s in results["sweep"]] == [0.5, 0.05]
  assert all(s["num_holdout"] == 4 for s in results["sweep"])
  best = max(results["sweep"], key=lambda s: (s["holdout_top1"], -s["base_lr"]))
  assert results["selected"]["base_lr"] == best["base_lr"]
  for s in results["sweep"]:
    with checkpoints.Checkpointer(tmp_path / "sweep" / f"lr_{s['base_lr']:g}", keep=2) as ckpt:
      assert ckpt.latest_step() == 2                     # ceil(2 epochs * 16 / 16)
  assert results["test"]["num_examples"] == NUM_TEST
  with checkpoints.Checkpointer(tmp_path, keep=2) as ckpt:
    assert ckpt.latest_step() == 3                       # ceil(2 epochs * 20 / 16)
  _, start = checkpoints.restore_encoder(pretrained)
  tuned = restore_tree(tmp_path, step=3)
  for group in ("params", "batch_stats"):
    changed = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(start[group]),
                                                      jax.tree.leaves(tuned[group]["encoder"]))]
    assert any(changed), group
  # Rerunning the command resumes the finished run: no training, same numbers.
  again = run(config, str(tmp_path))
  assert again["test"] == results["test"]


def restore_tree(workdir, step: int) -> dict:
  """The state a training run (fine-tuning, segmentation) saved at ``step``, as NumPy arrays."""
  import orbax.checkpoint as ocp
  step_dir = epath.Path(workdir) / "checkpoints" / str(step) / "state"
  handler = ocp.PyTreeCheckpointHandler()
  metadata = handler.metadata(step_dir).tree
  tree = handler.restore(step_dir, args=ocp.args.PyTreeRestore(restore_args=jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)))
  handler.close()
  return tree


def test_transfer_linear_on_tfds_mock_data(pretrained, tmp_path):
  import tensorflow_datasets as tfds
  config = eval_config("transfer", pretrained)
  config.transfer.update(dict(datasets=("cifar10", "oxford_flowers102"), protocols=("linear",),
                              batch_size=16, image_size=32, l2_grid=(1e-3, 1.0), max_iter=20))
  with tfds.testing.mock_data(num_examples=44):          # 44: not a multiple of 16
    results = run(config, str(tmp_path))
  entry = results["datasets"]["cifar10"]
  assert entry["linear"]["num_train"] == 44 and entry["linear"]["num_test"] == 44
  assert entry["linear"]["l2"] in (1e-3, 1.0) and entry["linear"]["num_val"] == 8  # 20% of 44
  assert entry["linear"]["selected_on"] == "random 0.2 of train"
  assert 0.0 <= entry["linear"]["mean_per_class"] <= 100.0
  # Flowers-102: L2 chosen by mean per-class accuracy on the official validation split, the
  # classifier refit on train + validation.
  flowers = results["datasets"]["oxford_flowers102"]["linear"]
  assert flowers["selected_on"] == "validation" and flowers["num_val"] == 44
  assert flowers["num_train"] == 88 and set(flowers["val_mean_per_class"]) == {"0.001", "1.0"}
  table = (tmp_path / "results.md").read_text()
  assert "| cifar10 | cifar10 | top1 |" in table
  assert "| oxford_flowers102 | oxford_flowers102 | mean_per_class |" in table
  assert (tmp_path / "cifar10" / "results.json").exists()


def test_transfer_voc2007_linear_and_finetune_map(pretrained, tmp_path):
  voc2007_data.write_devkit(tmp_path / "devkit")
  voc2007_data.prepare(tmp_path / "tfds", tmp_path / "devkit")
  config = eval_config("transfer", pretrained)
  config.data.data_dir = str(tmp_path / "tfds")
  config.transfer.update(dict(datasets=("voc2007",), protocols=("linear", "finetune"),
                              batch_size=8, image_size=32, l2_grid=(1e-3, 1.0), max_iter=20))
  config.finetune.update(dict(subset="full", batch_size=8, num_epochs=2.0, image_size=32,
                              lr_grid=(0.5, 0.05), log_every_steps=1))
  workdir = tmp_path / "transfer"
  results = run(config, str(workdir))
  entry = results["datasets"]["voc2007"]
  assert entry["metric"] == "map11" and entry["linear"]["num_train"] == 16
  assert entry["linear"]["selected_on"] == "validation" and entry["linear"]["num_val"] == 6
  assert entry["linear"]["num_test"] == 9 and entry["linear"]["num_classes"] == 20
  assert 0.0 < entry["linear"]["map"] <= 100.0 and len(entry["linear"]["per_class_ap"]) == 20

  # Fine-tuning: rates trained on 'train' (10 images) and compared by mAP on the official
  # 'validation' split (6), the chosen one trained on 'train+validation' (16), scored on test.
  tuned = entry["finetune"]
  assert [s["base_lr"] for s in tuned["sweep"]] == [0.5, 0.05]
  assert all(s["holdout_split"] == "validation" and s["num_holdout"] == 6 for s in tuned["sweep"])
  best = max(tuned["sweep"], key=lambda s: (s["holdout_map"], -s["base_lr"]))
  assert tuned["base_lr"] == best["base_lr"]
  for s in tuned["sweep"]:
    with checkpoints.Checkpointer(workdir / "voc2007" / "finetune" / "sweep" /
                                 f"lr_{s['base_lr']:g}", keep=2) as ckpt:
      assert ckpt.latest_step() == 3                     # ceil(2 epochs * 10 / 8)
  assert tuned["train"]["num_examples"] == 16 and tuned["num_test"] == 9
  assert tuned["score"] == tuned["map"] and len(tuned["per_class_ap"]) == 20

  # The reported mAP, recomputed from the final checkpoint (step ceil(2 * 16 / 8) = 4) on the
  # test images, with the devkit's targets ("difficult"-only classes ignored).
  state = restore_tree(workdir / "voc2007" / "finetune", step=4)
  encoder = encoder_from_config(TINY_MODEL)
  cfg = transfer_datasets.dataset_config(config, transfer_datasets.resolve("voc2007"))
  scores, targets = [], []
  for batch in pipeline.eval_batches(cfg, split="test", batch_size=8, image_size=32):
    features = encoder.apply({"params": state["params"]["encoder"],
                              "batch_stats": state["batch_stats"]["encoder"]},
                             batch["image"], train=False)
    logits = LinearHead(20).apply({"params": state["params"]["head"]}, features)
    scores.append(np.asarray(logits)[batch["valid"]])
    targets.append(batch["labels"][batch["valid"]])
  recomputed, _ = multilabel.mean_average_precision(np.concatenate(scores),
                                                    np.concatenate(targets))
  assert tuned["map"] == pytest.approx(recomputed, abs=1e-3)
  table = (workdir / "results.md").read_text()
  assert (f"| voc2007 | voc/2007 | map11 | {entry['linear']['map']:.1f} | - | - | "
          f"{tuned['map']:.1f} | - |") in table

  # Rerunning the command reuses both results.
  assert run(config, str(workdir))["datasets"]["voc2007"] == entry

  # Settings a multi-label dataset cannot follow stop before any compute.
  refused = tmp_path / "refused"
  config.finetune.subset = "10pct"
  with pytest.raises(ConfigError, match="voc2007: .*multi-label.*finetune.subset='full'"):
    run(config, str(refused))
  finetune_config = eval_config("finetune", pretrained)
  finetune_config.data.update(dict(source="tfds", dataset="voc/2007",
                                   data_dir=str(tmp_path / "tfds"),
                                   train_split="train+validation", eval_split="test"))
  finetune_config.finetune.update(dict(subset="full", lr_grid=(0.5, 0.05), holdout_split="test"))
  with pytest.raises(ConfigError, match="hold-out split 'test' is not a part of the training"):
    run(finetune_config, str(refused))
  probe_config = eval_config("linear_probe", pretrained)
  probe_config.data.update(finetune_config.data)
  with pytest.raises(ConfigError, match="multi-label"):
    run(probe_config, str(refused))
  assert not refused.exists()


def test_transfer_fgvc_aircraft_from_its_download_folder(pretrained, tmp_path):
  """SimCLR's Aircraft protocol on the dataset's own files: hyper-parameters chosen by mean
  per-class accuracy on 'val' (fit on 'train'), the final fit on 'train+val', scored on 'test'."""
  base, _ = aircraft_data.write_aircraft(tmp_path)
  config = eval_config("transfer", pretrained)
  config.data.cache_dir = str(tmp_path / "cache")
  config.transfer.update(dict(datasets=(f"fgvc_aircraft:{base}",),
                              protocols=("linear", "finetune"), batch_size=8, image_size=32,
                              l2_grid=(1e-3, 1.0), max_iter=20))
  config.finetune.update(dict(subset="full", batch_size=8, num_epochs=1.0, image_size=32,
                              lr_grid=(0.5, 0.05), log_every_steps=1))
  results = run(config, str(tmp_path / "transfer"))
  entry = results["datasets"]["fgvc_aircraft"]
  assert entry["metric"] == "mean_per_class" and entry["source"] == "fgvc_aircraft"
  linear_result = entry["linear"]
  assert linear_result["selected_on"] == "val" and linear_result["num_val"] == 4
  assert linear_result["num_train"] == 10 and linear_result["num_test"] == 5
  assert set(linear_result["val_mean_per_class"]) == {"0.001", "1.0"}
  tuned = entry["finetune"]
  assert all(s["holdout_split"] == "val" and s["num_holdout"] == 4 for s in tuned["sweep"])
  assert tuned["train"]["num_examples"] == 10 and tuned["num_test"] == 5
  assert tuned["score"] == tuned["mean_per_class"]
  assert "| fgvc_aircraft |" in (tmp_path / "transfer" / "results.md").read_text()


def test_final_evaluation_fits_one_classifier_for_every_split(pretrained):
  """The end-of-pretraining summary: the L2 strength is chosen once on train, and the classifier
  refit on all of train with it scores each split."""
  config = eval_config("pretrain", pretrained)
  config.model.update(TINY_MODEL)
  config.data.views.large.size = 32
  config.final_eval.update(dict(num_train_examples=0, extra_splits=("test_ood",)))
  encoder = encoder_from_config(config.model)
  _, variables = checkpoints.restore_encoder(pretrained)
  mesh = parallel.make_mesh()
  results = frozen.evaluate_frozen(config, encoder, variables, mesh, 10)
  splits = (config.data.eval_split, "test_ood")
  assert set(results) == set(splits)
  assert results[splits[0]]["linear_l2"] == results["test_ood"]["linear_l2"]
  train_x, train_y = frozen.split_features(config, encoder, variables, mesh, "train", 0)
  model = linear.fit(train_x, train_y, num_classes=10, l2=results["test_ood"]["linear_l2"])
  for split in splits:
    test_x, test_y = frozen.split_features(config, encoder, variables, mesh, split, 0)
    assert results[split]["num_test"] == NUM_TEST and results[split]["num_train"] == NUM_TRAIN
    assert results[split]["linear_top1"] == pytest.approx(linear.accuracy(model, test_x, test_y))
    assert 0.0 <= results[split]["knn_top1"] <= 100.0


def test_missing_pretrained_fails_before_compute(tmp_path):
  config = eval_config("linear_probe", "")
  with pytest.raises(ConfigError, match="config.pretrained is empty"):
    run(config, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_workdir_without_checkpoint_fails_naming_expected_and_found(tmp_path):
  empty = tmp_path / "pretrain_run"
  empty.mkdir()
  (empty / "config.json").write_text("{}")
  config = eval_config("linear_probe", str(empty))
  with pytest.raises(FileNotFoundError) as error:
    run(config, str(tmp_path / "out"))
  message = str(error.value)
  assert "holds no checkpoint" in message and "checkpoints" in message
  assert "config.json" in message                      # what was found there
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("job", ["linear_probe", "finetune", "transfer"])
def test_other_architecture_fails_naming_expected_and_found(pretrained, tmp_path, job):
  config = eval_config(job, pretrained)
  config.model.width_multiplier = 2
  config.model.depth = 101
  with pytest.raises(ConfigError) as error:
    run(config, str(tmp_path / "out"))
  message = str(error.value)
  assert "config.model.width_multiplier: expected 2, found 1" in message
  assert "config.model.depth: expected 101, found 18" in message
  assert not (tmp_path / "out").exists()


def test_probe_workdir_is_not_taken_for_a_pretrained_encoder(probe, tmp_path):
  probe_dir, _, _ = probe
  config = eval_config("finetune", probe_dir)
  with pytest.raises(ConfigError, match="workdir of a 'linear_probe' job"):
    run(config, str(tmp_path / "out"))


def test_linear_probe_on_cached_features(pretrained, tmp_path):
  config = eval_config("linear_probe", pretrained)
  config.linear_probe.update(dict(batch_size=32, num_epochs=3.0, lr_grid=(0.3,),
                                  holdout_examples=0, image_size=32, train_augment=False,
                                  precompute_features=True, log_every_steps=5))
  results = run(config, str(tmp_path))
  assert results["data"]["holdout_split"] is None and results["data"]["fit_split"] == "train"
  assert results["test"]["num_examples"] == NUM_TEST and results["encoder_unchanged"]
  assert results["settings"]["precompute_features"]


def test_cached_batches_are_a_pure_function_of_the_step():
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  features = np.arange(50, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
  labels = np.arange(50, dtype=np.int32)
  draw = linear_probe._CachedBatches(features, labels, 16, seed=0, mesh=mesh)
  seen = np.concatenate([np.asarray(draw(step)["label"]) for step in range(25)])  # 8 epochs
  for epoch in range(8):
    assert sorted(seen[epoch * 50:(epoch + 1) * 50]) == list(range(50))   # each once per epoch
  fresh = linear_probe._CachedBatches(features, labels, 16, seed=0, mesh=mesh)
  np.testing.assert_array_equal(np.asarray(fresh(13)["label"]), seen[13 * 16:14 * 16])


def test_knn_job_matches_a_numpy_knn_on_the_encoder_features(pretrained, tmp_path):
  """The fifth job: the ``knn`` evaluator on a pretrained workdir, against a weighted kNN written
  out in NumPy on features computed image by image on one device."""
  config = eval_config("knn", pretrained)
  config.data.views.large.size = 32
  config.knn.update(dict(k=5, num_train_examples=0))
  results = run(config, str(tmp_path))
  encoder, variables, _ = checkpoints.load_pretrained(config)

  def features(split):
    xs, ys = [], []
    for batch in pipeline.eval_batches(config, split=split, batch_size=50, image_size=32):
      keep = batch["valid"]
      xs.append(np.asarray(encoder.apply(variables, batch["image"], train=False))[keep])
      ys.append(batch["label"][keep])
    x = np.concatenate(xs).astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.concatenate(ys)

  bank_x, bank_y = features("train")
  test_x, test_y = features("test")
  sims = test_x @ bank_x.T
  top = np.argsort(-sims, axis=1)[:, :5]
  votes = np.zeros((len(test_x), 10))
  for i, row in enumerate(top):
    for j in row:
      votes[i, bank_y[j]] += np.exp(sims[i, j] / config.knn.temperature)
  expected = 100.0 * np.mean(votes.argmax(1) == test_y)
  assert results["test"]["knn_top1"] == pytest.approx(expected, abs=1e-6)
  assert len(bank_y) == NUM_TRAIN and len(test_y) == NUM_TEST
  assert "kNN top-1" in (tmp_path / "results.md").read_text()
