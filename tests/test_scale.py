"""Scale options of the pretraining step: FSDP layout, remat, bfloat16, buffer donation.

Each option may change where bytes live and how long a step takes, never what the step
computes (beyond float tolerance); these tests pin that down on 8 simulated CPU devices.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from relic import optim, parallel
from relic.models import networks_from_config
from relic.train.pretrain_step import jit_pretrain_step, make_pretrain_step
from relic.train.states import create_train_state
from tests import test_pretrain_step

NUM_CLASSES = 10
IMAGE_SIZE = 16


def tiny_config(**model):
  config = test_pretrain_step.tiny_config()
  config.model.update(model)
  return config


make_batch = test_pretrain_step.make_batch   # 16 px large, 8 px small views, 10 classes


def build(config):
  """State and step with LARS (weight decay + trust ratio): per-tensor norms must see the
  whole tensor, also when it is split over devices."""
  online, target = networks_from_config(config.model)
  optimizer = optim.step_scheduled(lambda lr: optax.lars(lr, weight_decay=1e-4, momentum=0.9))
  probe_optimizer = optax.sgd(0.1)
  state = create_train_state(jax.random.key(0), online=online, target=target,
                             optimizer=optimizer, probe_optimizer=probe_optimizer,
                             num_classes=NUM_CLASSES, image_size=IMAGE_SIZE)
  step = make_pretrain_step(config, online=online, target=target, optimizer=optimizer,
                            probe_optimizer=probe_optimizer,
                            learning_rate=lambda s: jnp.asarray(0.1),
                            ema_rate=lambda s: jnp.asarray(0.99), num_classes=NUM_CLASSES)
  return state, step


@functools.cache
def initial_state():
  """One host copy of the initial state, shared by every variant (remat and the compute dtype
  do not change the parameters), so all variants start from identical numbers. The key is kept
  as raw key data: a key array would be a device buffer that the first donating call deletes."""
  state, _ = build(tiny_config())
  return jax.device_get(state.replace(rng=jax.random.key_data(state.rng)))


def with_key(host_state):
  return host_state.replace(rng=jax.random.wrap_key_data(host_state.rng))


def fresh_state(shardings):
  """A new on-device copy of the initial state (each step call donates the one it is given)."""
  return parallel.shard_state(with_key(initial_state()), shardings)


@functools.cache
def lowered_on_mesh(*, fsdp=False, remat=False, dtype="float32"):
  """The step lowered once per variant on the 8-device mesh, with its state layout and a batch
  already on the devices."""
  mesh = parallel.make_mesh()
  _, step = build(tiny_config(remat=remat, dtype=dtype))
  shardings = parallel.state_sharding(jax.eval_shape(with_key, initial_state()), mesh, fsdp=fsdp)
  batch = jax.device_put(make_batch(), parallel.data_sharding(mesh))
  jitted = jit_pretrain_step(step, shardings, parallel.data_sharding(mesh))
  return jitted.lower(fresh_state(shardings), batch), shardings, batch


@functools.cache
def compiled_on_mesh(**variant):
  """The step compiled once per variant (compiling dominates the cost of these tests)."""
  lowered, shardings, batch = lowered_on_mesh(**variant)
  # LLVM -O0: a third less compile time; buffer assignment (the memory analysis) and the
  # numbers are unchanged, and these tests run only a couple of steps.
  compiled = lowered.compile(compiler_options={"xla_backend_optimization_level": 0})
  return compiled, shardings, batch


def operand_dtypes(lowered, op: str) -> list[str]:
  """Element type of the first operand of every ``stablehlo.<op>`` in the lowered step."""
  found = re.findall(rf"= stablehlo\.{op}\b.* : \(tensor<[^>]*?x?(bf16|f32|f16)>", lowered.as_text())
  assert found, f"no {op} in the step"
  return found


def run_steps(num_steps=2, **variant):
  compiled, shardings, batch = compiled_on_mesh(**variant)
  state = fresh_state(shardings)
  metrics = []
  for _ in range(num_steps):
    state, m = compiled(state, batch)
    metrics.append(jax.device_get(m))
  return state, metrics


def largest_leaf(tree):
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return max(leaves, key=lambda kv: kv[1].size)


def test_fsdp_matches_replicated_and_really_shards():
  state_rep, metrics_rep = run_steps(fsdp=False)
  state_fsdp, metrics_fsdp = run_steps(fsdp=True)
  for m_rep, m_fsdp in zip(metrics_rep, metrics_fsdp):
    for key in ("loss", "probe_loss", "grad_norm"):
      np.testing.assert_allclose(m_fsdp[key], m_rep[key], atol=1e-5, err_msg=key)
  for field in ("online_params", "online_batch_stats", "target_params", "target_batch_stats",
                "opt_state", "probe_params"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, err_msg=field),
                 jax.device_get(getattr(state_rep, field)),
                 jax.device_get(getattr(state_fsdp, field)))

  # The step's output keeps the FSDP layout: the biggest kernel of each network and its
  # momentum buffer are split 8 ways on one dimension, each device holding 1/8 of it.
  num_devices = jax.device_count()
  assert num_devices == 8
  for tree in (state_fsdp.online_params, state_fsdp.target_params, state_fsdp.opt_state):
    path, leaf = largest_leaf(tree)
    spec = tuple(leaf.sharding.spec)
    assert parallel.DATA_AXIS in spec, (jax.tree_util.keystr(path), spec)
    axis = spec.index(parallel.DATA_AXIS)
    shard_shapes = {shard.data.shape for shard in leaf.addressable_shards}
    expected = leaf.shape[:axis] + (leaf.shape[axis] // num_devices,) + leaf.shape[axis + 1:]
    assert shard_shapes == {expected}
  # Scalars and the key stay replicated; so does everything without FSDP.
  assert tuple(state_fsdp.step.sharding.spec) == ()
  assert tuple(state_fsdp.rng.sharding.spec) == ()
  _, leaf = largest_leaf(state_rep.online_params)
  assert leaf.sharding.is_fully_replicated
  # The point of FSDP: each device holds a fraction of the state (the batch is the same).
  argument_bytes = {fsdp: compiled_on_mesh(fsdp=fsdp)[0].memory_analysis().argument_size_in_bytes
                    for fsdp in (False, True)}
  assert argument_bytes[True] < 0.25 * argument_bytes[False], argument_bytes


def test_fsdp_layout_rule():
  assert parallel.fsdp_partition_spec((3, 3, 64, 256), 8) == jax.sharding.PartitionSpec(
      None, None, None, "data")
  assert parallel.fsdp_partition_spec((256, 64), 8) == jax.sharding.PartitionSpec("data", None)
  assert parallel.fsdp_partition_spec((7,), 8) == jax.sharding.PartitionSpec()    # indivisible
  assert parallel.fsdp_partition_spec((4,), 8) == jax.sharding.PartitionSpec()    # too small
  assert parallel.fsdp_partition_spec((64, 64), 1) == jax.sharding.PartitionSpec()  # one device
  # min_size keeps small vectors (BatchNorm scales) replicated.
  mesh = parallel.make_mesh()
  tree = dict(kernel=jax.ShapeDtypeStruct((64, 64), jnp.float32),
              scale=jax.ShapeDtypeStruct((64,), jnp.float32))
  specs = jax.tree.map(lambda s: tuple(s.spec),
                       parallel.state_sharding(tree, mesh, fsdp=True, min_size=1024))
  assert specs == dict(kernel=(None, "data"), scale=())  # ties: the later (output) dim


@pytest.mark.parametrize("option", ["remat", "bfloat16"])
def test_remat_and_bfloat16_keep_the_result(option):
  variant = dict(remat=True) if option == "remat" else dict(dtype="bfloat16")
  _, (ref_metrics,) = run_steps(num_steps=1)
  _, (new_metrics,) = run_steps(num_steps=1, **variant)
  if option == "remat":
    # Same math, recomputed: only float re-association can differ.
    np.testing.assert_allclose(new_metrics["loss"], ref_metrics["loss"], atol=1e-5)
    np.testing.assert_allclose(new_metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-4)
    # Rematerialisation trades recomputation for the activations saved for the backward pass,
    # so it must never need more scratch memory. (XLA:CPU already frees most activations early:
    # on this tiny model the saving is well under 1%, on an accelerator it is large, see
    # experiments/bench_step.py.)
    temp = {name: compiled_on_mesh(**v)[0].memory_analysis().temp_size_in_bytes
            for name, v in (("remat", variant), ("reference", {}))}
    assert temp["remat"] <= temp["reference"], temp
  else:
    np.testing.assert_allclose(new_metrics["loss"], ref_metrics["loss"], rtol=5e-2)
    np.testing.assert_allclose(new_metrics["grad_norm"], ref_metrics["grad_norm"], rtol=0.2)
    # What the accelerator is given: every convolution of the encoders (forward and backward)
    # in bfloat16, none in the float32 step. (XLA:CPU itself has no bfloat16 convolutions and
    # computes them in float32, so on this machine the option saves neither time nor memory.)
    ref_convs = operand_dtypes(lowered_on_mesh()[0], "convolution")
    convs = operand_dtypes(lowered_on_mesh(**variant)[0], "convolution")
    assert set(ref_convs) == {"f32"} and convs == ["bf16"] * len(ref_convs)
    # Projector and predictor matmuls too; the loss logits and the online probe stay float32.
    assert "bf16" in operand_dtypes(lowered_on_mesh(**variant)[0], "dot_general")


def test_state_is_donated_and_step_stays_on_device():
  compiled, shardings, batch = compiled_on_mesh(fsdp=True)
  state = fresh_state(shardings)
  old_leaves = jax.tree.leaves(state)
  # Any host<->device copy inside the call (a forgotten numpy constant, a host callback, a
  # metric pulled to the host) would raise here: inputs already live on the devices.
  with jax.transfer_guard("disallow"):
    new_state, metrics = compiled(state, batch)
    new_state, metrics = compiled(new_state, batch)
  # Donation: the step wrote the new state into the old state's buffers, so a training loop
  # holds one copy of the state, not two.
  assert all(leaf.is_deleted() for leaf in old_leaves)
  assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(new_state))
  assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(batch))
  assert int(new_state.step) == 2 and np.isfinite(float(metrics["loss"]))
