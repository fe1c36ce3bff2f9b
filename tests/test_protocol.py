"""The evaluation protocol is DeepMind's, value by value.

The reference is DeepMind's released ReLICv2 evaluation code, github.com/google-deepmind/relicv2
(commit a154e4b "Opensourcing ReLICv2 checkpoints and evaluation code"):
  configs/eval.py      get_config(checkpoint_to_evaluate, batch_size, num_epochs)
  main_loop.py         the flags that call it (--batch_size, --num_epochs)
  eval_experiment.py   how the config is executed (optimiser, head, data splits, BN mode)
  utils/schedules.py   learning_schedule; utils/dataset.py  Split sizes and tfds splits
Each value below is copied from those files, with where it is and what it is there.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import finetune as finetune_config
from configs import linear_probe as linear_probe_config
from relic import schedules
from relic.models import linear_head_params
from relic.train import heads_step

DEEPMIND_EVAL = {
    # configs/eval.py: config['random_seed']; eval_experiment.py seeds the head's init with
    # jax.random.PRNGKey(self._random_seed).
    "random_seed": 0,
    # main_loop.py: flags.DEFINE_integer('batch_size', 1024, 'Total batch size').
    "batch_size": 1024,
    # main_loop.py: flags.DEFINE_integer('num_epochs', 100, 'Number of training epochs ...').
    "num_epochs": 100,
    # configs/eval.py: train_images_per_epoch = dataset.Split.TRAIN_AND_VALID.num_examples,
    # = 1281167 in utils/dataset.py (all of tfds imagenet2012 'train': no hold-out).
    "train_images_per_epoch": 1_281_167,
    # configs/eval.py: max_steps=num_epochs * train_images_per_epoch // batch_size.
    "max_steps": 100 * 1_281_167 // 1024,
    # configs/eval.py: freeze_backbone=True ("linear evaluation"); eval_experiment.py runs the
    # backbone with is_training=not freeze_backbone: BatchNorm in inference mode.
    "freeze_backbone": True,
    # configs/eval.py: optimizer_config=dict(momentum=0.9, nesterov=True), passed to
    # optax.sgd(learning_rate, **optimizer_config) in eval_experiment.py _optimizer (no decay).
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 0.0,
    # configs/eval.py: lr_schedule_config=dict(base_learning_rate=0.3, warmup_steps=0);
    # utils/schedules.py learning_schedule: scaled_lr = base * batch_size / 256, cosine decay to
    # 0 over total_steps (= max_steps) after the (empty) warm-up.
    "base_learning_rate": 0.3,
    "warmup_steps": 0,
    # configs/eval.py: evaluation_config=dict(subset='test', ...); utils/dataset.py
    # _to_tfds_split maps TEST to tfds.Split.VALIDATION (the ImageNet validation set).
    "eval_tfds_split": "validation",
    # eval_experiment.py _build_train_input: dataset.Split.TRAIN_AND_VALID -> tfds 'train'.
    "train_tfds_split": "train",
    # utils/dataset.py _preprocess_image: 224 px (random crop + flip to train, centre crop of
    # 224 / (224 + 32) of the short side to test).
    "image_size": 224,
    # eval_experiment.py _classif_fn: hk.Linear(output_size=num_classes), Haiku's default init.
    "head_init": "haiku",
}


def test_default_linear_probe_is_deepminds_eval_config():
  config = linear_probe_config.get_config()
  lp = config.linear_probe
  assert config.seed == DEEPMIND_EVAL["random_seed"]
  assert lp.batch_size == DEEPMIND_EVAL["batch_size"]
  assert lp.num_epochs == DEEPMIND_EVAL["num_epochs"]
  assert lp.lr_grid == (DEEPMIND_EVAL["base_learning_rate"],)       # one rate: no sweep
  assert lp.holdout_examples == 0                                      # TRAIN_AND_VALID
  assert config.data.train_split == DEEPMIND_EVAL["train_tfds_split"]
  assert config.data.eval_split == DEEPMIND_EVAL["eval_tfds_split"]
  assert (config.data.source, config.data.dataset) == ("tfds", "imagenet2012")
  assert lp.momentum == DEEPMIND_EVAL["momentum"]
  assert lp.weight_decay == DEEPMIND_EVAL["weight_decay"]
  assert lp.image_size == DEEPMIND_EVAL["image_size"]
  assert lp.train_augment and not lp.precompute_features
  assert lp.head_init == DEEPMIND_EVAL["head_init"]
  # Training length: relic rounds epochs * examples / batch up, DeepMind's code down.
  steps = schedules.epochs_to_steps(lp.num_epochs, DEEPMIND_EVAL["train_images_per_epoch"],
                                    lp.batch_size)
  assert 0 <= steps - DEEPMIND_EVAL["max_steps"] <= 1
  # Nesterov is the heads optimiser's default (the job passes only momentum and decay).
  import inspect
  assert inspect.signature(heads_step.heads_optimizer).parameters["nesterov"].default is True


def test_sweep_variant_is_the_named_option():
  lp = linear_probe_config.get_config("sweep").linear_probe
  assert lp.lr_grid == (0.1, 0.2, 0.3, 0.5, 1.0) and lp.holdout_examples == 10_000


def deepmind_learning_schedule(step, batch_size, base_learning_rate, total_steps, warmup_steps):
  """utils/schedules.py learning_schedule, copied (numpy)."""
  scaled_lr = base_learning_rate * batch_size / 256.
  learning_rate = step / int(warmup_steps) * scaled_lr if warmup_steps > 0 else scaled_lr
  if step < warmup_steps:
    return learning_rate
  step = min(step - warmup_steps, total_steps - warmup_steps)
  return scaled_lr * 0.5 * (1 + np.cos(np.pi * step / (total_steps - warmup_steps)))


def test_heads_step_is_deepminds_update():
  """relic's heads step on the default config = eval_experiment.py's _update_func on the same
  features: optax.sgd(lr_t, momentum=0.9, nesterov=True) on the mean softmax cross-entropy,
  lr_t from learning_schedule, the same start."""
  lp = linear_probe_config.get_config().linear_probe
  batch, dim, classes, total = 16, 6, 5, 4
  rng = np.random.default_rng(0)
  features = rng.normal(size=(batch, dim)).astype(np.float32)
  labels = rng.integers(0, classes, batch).astype(np.int32)
  rates = [base * lp.batch_size / 256 for base in lp.lr_grid]
  optimizer = heads_step.heads_optimizer(lp.momentum, lp.weight_decay)
  state = heads_step.init_heads(1, dim, classes, optimizer, init=lp.head_init,
                                rng=jax.random.key(0))
  step = jax.jit(heads_step.make_train_step(num_classes=classes, learning_rates=rates,
                                            total_steps=total, optimizer=optimizer,
                                            features_fn=lambda frozen, b: b["features"]))
  params = jax.tree.map(lambda x: np.asarray(x[0]), state.params)["linear"]
  params = {"w": params["kernel"], "b": params["bias"]}
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
      features @ p["w"] + p["b"], labels).mean()
  opt_state = optax.sgd(0.0, momentum=0.9, nesterov=True).init(params)
  for t in range(total):
    state, _ = step(state, None, {"features": features, "label": labels,
                                  "valid": np.ones(batch, bool)})
    lr = deepmind_learning_schedule(t, lp.batch_size, 0.3, total, 0)
    updates, opt_state = optax.sgd(lr, momentum=0.9, nesterov=True).update(
        jax.grad(loss)(params), opt_state)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(state.params["linear"]["kernel"][0], params["w"], atol=1e-5)
  np.testing.assert_allclose(state.params["linear"]["bias"][0], params["b"], atol=1e-5)


def _ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
  grid = np.sort(np.concatenate([a, b]))
  cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)
  return float(np.max(np.abs(cdf(a) - cdf(b))))


def test_haiku_head_init_has_haikus_distribution():
  fan_in, classes = 2048, 100
  params = linear_head_params("haiku", jax.random.key(0), fan_in, classes)["linear"]
  kernel, bias = np.asarray(params["kernel"], np.float64), np.asarray(params["bias"])
  assert kernel.shape == (fan_in, classes) and bias.shape == (classes,)
  np.testing.assert_array_equal(bias, 0.0)
  stddev = 1.0 / math.sqrt(fan_in)       # hk.Linear: TruncatedNormal(stddev=1/sqrt(fan_in))
  # A standard normal truncated to [-2, 2] (Haiku's bounds, not rescaled) has standard
  # deviation sqrt(1 - 4 phi(2) / (Phi(2) - Phi(-2))) = 0.87962.
  phi2 = math.exp(-2.0) / math.sqrt(2 * math.pi)
  mass = math.erf(2 / math.sqrt(2))
  truncated_std = math.sqrt(1 - 4 * phi2 / mass)
  assert abs(truncated_std - 0.87962) < 1e-4
  n = kernel.size
  assert abs(kernel.mean()) < 4 * truncated_std * stddev / math.sqrt(n)
  np.testing.assert_allclose(kernel.std(), truncated_std * stddev, rtol=0.01)
  assert np.abs(kernel).max() <= 2 * stddev * (1 + 1e-6)
  assert np.abs(kernel).max() > 1.95 * stddev          # the tails reach the truncation
  # Against Haiku's own initialiser: the same distribution (two-sample Kolmogorov-Smirnov,
  # rejected at 0.1% when D > 1.949 sqrt(2 / n)).
  hk = pytest.importorskip("haiku")
  linear = hk.transform(lambda x: hk.Linear(classes)(x))
  theirs = linear.init(jax.random.key(1), jnp.zeros((1, fan_in)))["linear"]
  np.testing.assert_array_equal(theirs["b"], 0.0)
  assert _ks_statistic(kernel.ravel(), np.asarray(theirs["w"], np.float64).ravel()) < (
      1.949 * math.sqrt(2.0 / n))
  # Zero init differs (the KS test is not vacuous) and seeding: config.seed -> the same draw.
  assert _ks_statistic(kernel.ravel(), np.zeros(n)) > 0.4
  again = linear_head_params("haiku", jax.random.key(0), fan_in, classes)["linear"]["kernel"]
  other = linear_head_params("haiku", jax.random.key(1), fan_in, classes)["linear"]["kernel"]
  np.testing.assert_array_equal(again, params["kernel"])
  assert not np.array_equal(other, params["kernel"])
  np.testing.assert_array_equal(
      linear_head_params("zeros", jax.random.key(0), fan_in, classes)["linear"]["kernel"], 0.0)


def test_sweep_heads_share_one_draw():
  optimizer = heads_step.heads_optimizer(0.9)
  state = heads_step.init_heads(3, 8, 4, optimizer, init="haiku", rng=jax.random.key(5))
  kernel = np.asarray(state.params["linear"]["kernel"])
  assert kernel.shape == (3, 8, 4) and np.abs(kernel).max() > 0
  np.testing.assert_array_equal(kernel[0], kernel[1])
  np.testing.assert_array_equal(kernel[0], kernel[2])


def test_linear_probe_job_starts_from_the_haiku_head(tmp_path):
  """The job with DeepMind's defaults (one rate, no hold-out, haiku head seeded by
  config.seed) on the built-in data; a vanishing rate leaves the saved head at its init."""
  from relic import checkpoints
  from tests.test_eval_jobs import TINY_MODEL, eval_config, run, write_pretrained
  pretrained = write_pretrained(tmp_path / "pretrained", TINY_MODEL)
  config = eval_config("linear_probe", pretrained)
  config.linear_probe.update(dict(batch_size=32, num_epochs=1.0, lr_grid=(1e-12,),
                                  image_size=32, train_augment=False, precompute_features=True))
  assert config.linear_probe.holdout_examples == 0 and config.linear_probe.head_init == "haiku"
  results = run(config, str(tmp_path / "probe"))
  assert results["data"]["holdout_split"] is None and results["data"]["fit_split"] == "train"
  assert results["settings"]["head_init"] == "haiku"
  head, _ = checkpoints.load_probe_head(str(tmp_path / "probe"), linear_probe_only=True)
  expected = linear_head_params("haiku", jax.random.key(config.seed), 32, 10)["linear"]
  np.testing.assert_allclose(head["linear"]["kernel"], expected["kernel"], atol=1e-6)
  np.testing.assert_allclose(head["linear"]["bias"], 0.0, atol=1e-6)


def test_finetune_defaults_mirror_deepminds_fine_tuning_mode():
  """eval_experiment.py with freeze_backbone=False: one optax.sgd(momentum 0.9, Nesterov) at
  one rate for backbone and head, no decay, no warm-up, hk.Linear's head."""
  ft = finetune_config.get_config().finetune
  assert (ft.momentum, ft.weight_decay, ft.warmup_epochs, ft.head_lr_multiplier) == (
      DEEPMIND_EVAL["momentum"], DEEPMIND_EVAL["weight_decay"], 0.0, 1.0)
  assert ft.head_init == DEEPMIND_EVAL["head_init"]
  deepmind = finetune_config.get_config("deepmind").finetune
  assert (deepmind.subset, deepmind.base_lr, deepmind.num_epochs, deepmind.batch_size) == (
      "full", DEEPMIND_EVAL["base_learning_rate"], DEEPMIND_EVAL["num_epochs"],
      DEEPMIND_EVAL["batch_size"])
  with pytest.raises(ValueError, match="all labels"):
    finetune_config.get_config("deepmind,subset=1pct")
