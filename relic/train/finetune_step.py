"""The fine-tuning training step (the whole encoder + a linear head), free of any input pipeline:
the optimiser and its schedule, the jitted-step body and the inference logits that
relic/jobs/finetune.py runs. Imports no TensorFlow.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from relic import optim, schedules
from relic.evaluators import linear
from relic.models import LinearHead
from relic.train.states import FinetuneState


def make_optimizer(config, total_steps: int, base_lr: float, num_train: int):
  """SGD + Nesterov with warm-up + cosine; decay on kernels; the head's rate multiplied."""
  ft = config.finetune
  peak = base_lr * ft.batch_size / 256.0
  warmup = (schedules.epochs_to_steps(ft.warmup_epochs, num_train, ft.batch_size)
            if ft.warmup_epochs > 0 else 0)
  schedule = schedules.warmup_cosine(peak, total_steps, min(warmup, total_steps))

  head_only = lambda params: {"encoder": jax.tree.map(lambda _: False, params["encoder"]),
                              "head": jax.tree.map(lambda _: True, params["head"])}
  parts = [optax.add_decayed_weights(ft.weight_decay, mask=optim.weight_decay_mask),
           optax.sgd(schedule, momentum=ft.momentum or None, nesterov=ft.momentum > 0)]
  if ft.head_lr_multiplier != 1.0:
    parts.append(optax.masked(optax.scale(ft.head_lr_multiplier), head_only))
  return optax.chain(*parts), schedule


def make_train_step(encoder, num_classes: int, optimizer, schedule, multilabel: bool = False):
  """``(state, batch) -> (state, metrics)`` on global arrays (BN statistics are global).

  ``multilabel``: targets are the batch's 'labels' (B, C) of 1 / 0 / -1 (ignored), trained
  one-vs-rest; else 'label' (B,) with a softmax cross-entropy.
  """
  head = LinearHead(num_classes)

  def step(state: FinetuneState, batch: dict):
    valid = batch["valid"].astype(jnp.float32)

    def loss_fn(params):
      features, updates = encoder.apply(
          {"params": params["encoder"], "batch_stats": state.batch_stats["encoder"]},
          batch["image"], train=True, mutable=["batch_stats"])
      logits = head.apply({"params": params["head"]}, features)
      if multilabel:
        loss = linear.multilabel_nll(logits, batch["labels"], valid)
      else:
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        loss = (ce * valid).sum() / jnp.maximum(valid.sum(), 1.0)
      return loss, (logits, updates["batch_stats"])

    (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               "learning_rate": schedule(state.step)}
    if not multilabel:
      correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
      metrics["accuracy"] = 100.0 * (correct * valid).sum() / jnp.maximum(valid.sum(), 1.0)
    return FinetuneState(step=state.step + 1, params=params, batch_stats={"encoder": stats},
                         opt_state=opt_state), metrics

  return step


@functools.lru_cache(maxsize=8)
def logits_fn(encoder, num_classes: int):
  """``(variables, images) -> logits`` in inference mode (running BN statistics); one function
  per model, so every evaluation of a sweep reuses one compiled computation."""
  head = LinearHead(num_classes)

  def apply(variables, images):
    features = encoder.apply({"params": variables["params"]["encoder"],
                              "batch_stats": variables["batch_stats"]["encoder"]},
                             images, train=False)
    return head.apply({"params": variables["params"]["head"]}, features)

  return apply


@functools.lru_cache(maxsize=8)
def jitted_logits(encoder, num_classes: int):
  """:func:`logits_fn` jitted, for callers that gather the logits themselves."""
  return jax.jit(logits_fn(encoder, num_classes))
