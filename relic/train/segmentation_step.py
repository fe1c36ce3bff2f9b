"""The segmentation-transfer training step (FCN on a dilated encoder), free of any input
pipeline: the network, the per-pixel loss, the optimiser and its schedule, the initial state and
the jitted-step body that relic/jobs/segmentation.py runs and experiments/bench_segmentation.py
times. Imports no TensorFlow.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from relic import optim
from relic.models.segmentation import SegmentationNet
from relic.train.states import FinetuneState


def pixel_cross_entropy(logits: jax.Array, mask: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy over the scored pixels (class id in [0, C), valid example)."""
  num_classes = logits.shape[-1]
  scored = ((mask >= 0) & (mask < num_classes) & valid[:, None, None]).astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), jnp.clip(mask, 0, num_classes - 1))
  return jnp.sum(ce * scored) / jnp.maximum(jnp.sum(scored), 1.0)


def make_schedule(config, base_lr: float):
  """Constant ``base_lr``, times 0.1 at each fraction of ``lr_decay_at`` of the steps."""
  s = config.segmentation
  return optax.piecewise_constant_schedule(
      base_lr, {int(round(f * s.num_steps)): 0.1 for f in s.lr_decay_at})


def make_optimizer(config, base_lr: float):
  s = config.segmentation
  schedule = make_schedule(config, base_lr)
  return optax.chain(optax.add_decayed_weights(s.weight_decay, mask=optim.weight_decay_mask),
                     optax.sgd(schedule, momentum=s.momentum or None)), schedule


def make_train_step(net: nn.Module, optimizer, schedule):
  """``(state, batch) -> (state, metrics)`` on global arrays (BN statistics are global)."""
  def step(state: FinetuneState, batch: dict):
    def loss_fn(params):
      logits, updates = net.apply({"params": params, "batch_stats": state.batch_stats},
                                  batch["image"], train=True, mutable=["batch_stats"])
      return pixel_cross_entropy(logits, batch["mask"], batch["valid"]), updates["batch_stats"]

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return (FinetuneState(step=state.step + 1, params=params, batch_stats=stats,
                          opt_state=opt_state),
            {"loss": loss, "grad_norm": optax.tree.norm(grads),
             "learning_rate": schedule(state.step)})

  return step


def init_state(net: SegmentationNet, variables: dict, optimizer, config) -> FinetuneState:
  """Pretrained encoder weights and statistics, a freshly initialised head."""
  size = config.segmentation.crop_size
  shapes = jax.eval_shape(lambda: net.init(jax.random.key(config.seed),
                                           jnp.zeros((1, size, size, 3)), train=False))
  head_input = jnp.zeros((1, 8, 8, net.encoder.num_features))
  head = net.head.init(jax.random.key(config.seed), head_input, train=False)
  params = {"encoder": variables["params"], "head": head["params"]}
  stats = {"encoder": variables["batch_stats"], "head": head["batch_stats"]}
  expected = jax.tree_util.tree_structure(shapes["params"])
  if jax.tree_util.tree_structure(params) != expected:
    raise ValueError("The pretrained encoder's parameters do not fit the segmentation network.")
  return FinetuneState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats,
                       opt_state=optimizer.init(params))
