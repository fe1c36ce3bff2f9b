"""Durations and schedules: every conversion between epochs, steps and examples, and every value
that changes over training, as pure functions of the step.

Why pure functions of the step: the step is stored in the train state, so a run resumed at step k
computes exactly the learning rate and EMA rate it would have computed without the interruption
(relic's choice: a counter kept beside the state would miscount the EMA schedule after a resume).
Nothing here keeps a counter.

Rounding rule (one rule for every conversion): a duration in epochs becomes
``ceil(epochs * examples / batch_size)`` steps, so a fractional last step is trained rather than
dropped and a positive duration never rounds to zero steps.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from relic.errors import ConfigError

# Float noise in ``epochs * examples / batch`` (e.g. 3.0000000000000004) must not add a step.
_ROUNDING_DIGITS = 6


def epochs_to_steps(epochs: float, num_train_examples: int, batch_size: int) -> int:
  """``ceil(epochs * examples / batch_size)``: the single epochs -> steps conversion."""
  if num_train_examples <= 0 or batch_size <= 0:
    raise ValueError(f"need positive num_train_examples ({num_train_examples}) and batch_size "
                     f"({batch_size}) to convert {epochs} epochs into steps")
  return math.ceil(round(epochs * num_train_examples / batch_size, _ROUNDING_DIGITS))


def resolve_num_train_examples(config: ml_collections.ConfigDict, split_size: int) -> int:
  """Examples per epoch: the size of the training split as read, unless
  ``config.train.num_train_examples`` is set (an explicit override: a subset run that should
  count epochs of the full dataset).

  A config may state the size it was written for (``config.data.expected_train_examples``:
  ImageNet's 1,281,167 in the ImageNet configs); it never sets the length, but a split of
  another size (an image folder, a slice, another dataset) logs a warning naming both numbers
  and the resulting length, so "1000 epochs" of a 50,000-image folder is not a surprise.
  """
  explicit = int(config.train.num_train_examples)
  stated = int(config.data.get("expected_train_examples", 0))
  used = explicit or int(split_size)
  if stated and stated != int(split_size):
    length = (f"{config.train.num_steps} steps (train.num_steps)" if config.train.num_steps > 0
              else f"{config.train.num_epochs:g} epochs = "
                   f"{epochs_to_steps(config.train.num_epochs, used, config.train.batch_size):,} "
                   f"steps of batch {config.train.batch_size}")
    counted = (f"train.num_train_examples={explicit:,} examples per epoch (explicit)" if explicit
               else f"the split's {int(split_size):,} examples per epoch")
    fix = ("" if explicit else
           f" To count epochs of {stated:,} examples instead, set "
           f"--config.train.num_train_examples={stated}.")
    logging.warning(
        "The config states %s training examples (data.expected_train_examples) but "
        "data.train_split=%r of data.source=%r has %s; training for %s, counting %s.%s",
        f"{stated:,}", config.data.train_split, config.data.source, f"{int(split_size):,}",
        length, counted, fix)
  return used


def total_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
  """Length of training: ``train.num_steps`` if > 0, else ``train.num_epochs`` converted."""
  if config.train.num_steps > 0:
    return int(config.train.num_steps)
  return epochs_to_steps(config.train.num_epochs, num_train_examples, config.train.batch_size)


def warmup_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
  """Linear learning-rate warm-up length, from ``optim.warmup_epochs``."""
  if config.optim.warmup_epochs <= 0:
    return 0
  return epochs_to_steps(config.optim.warmup_epochs, num_train_examples, config.train.batch_size)


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
  """``base_lr * batch_size / 256``: the linear scaling rule of the BYOL/ReLICv2 code."""
  return config.optim.base_lr * config.train.batch_size / 256.0


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int,
                           warmup_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to the peak rate over ``warmup_steps``, then cosine to 0 at
  ``total_steps`` (BYOL's ``learning_schedule``); constant 0 after ``total_steps``.

  Returns:
    A jittable function of the (integer) step, the step *before* the update is applied: the
    update that turns step k into step k + 1 uses ``schedule(k)``.
  """
  if total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {total_steps}")
  if not 0 <= warmup_steps <= total_steps:
    raise ConfigError(
        f"config.optim.warmup_epochs: the warm-up ({warmup_steps} steps) is longer than training "
        f"({total_steps} steps). Fix: lower optim.warmup_epochs or train longer.")
  return warmup_cosine(peak_learning_rate(config), total_steps, warmup_steps)


def warmup_cosine(peak: float, total_steps: int, warmup_steps: int = 0) -> optax.Schedule:
  """The one warm-up + cosine shape of every job: linear from 0 to ``peak`` over
  ``warmup_steps``, then a half cosine to 0 at ``total_steps``, 0 after. Jittable."""
  decay_steps = max(total_steps - warmup_steps, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * step / max(warmup_steps, 1)
    progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
    cosine = peak * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(step < warmup_steps, warm, cosine)

  return schedule


def ema_rate(step, total_steps: int, base_rate: float):
  """Target-network EMA decay ``1 - (1 - base) * (cos(pi k / K) + 1) / 2`` (BYOL).

  ``base_rate`` at k = 0, rising monotonically to exactly 1 at k = K (and staying 1 after), so
  the target freezes as the online network converges. Jittable; ``step`` may be traced.
  """
  progress = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0.0, 1.0)
  return 1.0 - (1.0 - base_rate) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0
