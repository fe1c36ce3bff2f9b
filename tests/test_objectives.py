"""The ReLICv2 loss against an independent NumPy implementation of the written equations."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from relic import objectives, parallel


def numpy_relicv2(online, target, temperature, beta):
  """Algorithm 1 written out with loops: sum over (v, u) pairs / ((L + S) * L)."""
  online = online / np.linalg.norm(online, axis=-1, keepdims=True)
  target = target / np.linalg.norm(target, axis=-1, keepdims=True)
  num_online, batch, _ = online.shape
  num_target = target.shape[0]
  total = 0.0
  for v in range(num_online):
    for u in range(num_target):
      pair = 0.0
      s = np.array([[online[v, i] @ target[u, k] / temperature for k in range(batch)]
                    for i in range(batch)], dtype=np.float64)
      for i in range(batch):
        p = np.exp(s[i] - s[i].max())
        p /= p.sum()
        q = np.exp(s[:, i] - s[:, i].max())
        q /= q.sum()
        contrastive = -np.log(p[i])
        kl = np.sum(p * (np.log(p) - np.log(q)))
        pair += contrastive + beta * kl
      total += pair / batch
  return total / (num_online * num_target)


@pytest.mark.parametrize("num_large,num_small,beta,temperature", [
    (1, 0, 1.0, 0.1), (2, 0, 0.5, 0.2), (2, 3, 1.0, 0.1), (4, 2, 2.0, 0.05), (3, 1, 0.0, 0.3)])
def test_matches_numpy_reference(num_large, num_small, beta, temperature):
  rng = np.random.default_rng(num_large * 10 + num_small)
  online = rng.normal(size=(num_large + num_small, 12, 16)).astype(np.float32)
  target = rng.normal(size=(num_large, 12, 16)).astype(np.float32)
  # Correlate the views so the loss is not just log(B).
  online[:num_large] += 2 * target
  loss, metrics = objectives.relicv2_loss(jnp.asarray(online), jnp.asarray(target),
                                          temperature=temperature, beta=beta)
  expected = numpy_relicv2(online.astype(np.float64), target.astype(np.float64), temperature,
                           beta)
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(metrics["contrastive"] + beta * metrics["invariance"], loss,
                             rtol=1e-5, atol=1e-5)


def test_beta_zero_is_infonce():
  rng = np.random.default_rng(0)
  online = jnp.asarray(rng.normal(size=(1, 10, 8)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(1, 10, 8)), jnp.float32)
  loss, _ = objectives.relicv2_loss(online, target, temperature=0.1, beta=0.0)
  o = objectives.l2_normalize(online[0])
  t = objectives.l2_normalize(target[0])
  logits = o @ t.T / 0.1
  infonce = -jnp.mean(jnp.diag(jax.nn.log_softmax(logits, axis=1)))
  np.testing.assert_allclose(loss, infonce, rtol=1e-6)


def test_invariance_term_non_negative_and_zero_for_symmetric_similarities():
  rng = np.random.default_rng(1)
  for seed in range(5):
    online = jnp.asarray(rng.normal(size=(3, 16, 8)), jnp.float32)
    target = jnp.asarray(rng.normal(size=(2, 16, 8)), jnp.float32)
    _, metrics = objectives.relicv2_loss(online, target, temperature=0.1 + seed / 10, beta=1.0)
    assert metrics["invariance"] >= 0
  # When online == target the similarity matrix is symmetric: p_i == q_i and the KL vanishes.
  same = jnp.asarray(rng.normal(size=(1, 16, 8)), jnp.float32)
  _, metrics = objectives.relicv2_loss(same, same, temperature=0.1, beta=1.0)
  np.testing.assert_allclose(metrics["invariance"], 0.0, atol=1e-6)


def test_no_gradient_into_target():
  rng = np.random.default_rng(2)
  online = jnp.asarray(rng.normal(size=(3, 8, 8)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(2, 8, 8)), jnp.float32)
  loss = lambda o, t: objectives.relicv2_loss(o, t, temperature=0.1, beta=1.0)[0]
  g_online, g_target = jax.grad(loss, argnums=(0, 1))(online, target)
  assert np.abs(g_online).max() > 0
  np.testing.assert_array_equal(g_target, 0.0)


def test_sampled_negatives_exact_count_distinct_never_positive():
  batch, n = 32, 7
  negatives = np.asarray(objectives.sample_negatives(jax.random.key(0), batch, n))
  assert negatives.shape == (batch, n)
  for i in range(batch):
    assert i not in negatives[i]
    assert len(set(negatives[i])) == n
    assert negatives[i].min() >= 0 and negatives[i].max() < batch
  # Over many draws every other image gets sampled (uniform, not a fixed subset).
  many = np.concatenate([np.asarray(objectives.sample_negatives(jax.random.key(s), batch, n))[0]
                         for s in range(50)])
  assert set(many) == set(range(1, batch))
  with pytest.raises(ValueError, match="num_negatives"):
    objectives.sample_negatives(jax.random.key(0), batch, batch)


def test_sampled_negatives_logits_use_exactly_n_plus_one_candidates():
  rng = np.random.default_rng(3)
  online = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
  o, t = objectives.l2_normalize(online), objectives.l2_normalize(target)
  negatives = objectives.sample_negatives(jax.random.key(1), 8, 3)
  loss, _ = objectives.pair_loss(o, t, temperature=0.1, beta=0.0, negatives=negatives)
  s = np.asarray(o @ t.T / 0.1, np.float64)
  expected = np.mean([np.log(np.sum(np.exp(s[i, [i, *np.asarray(negatives[i])]]))) - s[i, i]
                      for i in range(8)])
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_all_other_negatives_equals_full_batch():
  rng = np.random.default_rng(4)
  online = jnp.asarray(rng.normal(size=(3, 8, 6)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(2, 8, 6)), jnp.float32)
  full, _ = objectives.relicv2_loss(online, target, temperature=0.2, beta=1.0)
  sampled, _ = objectives.relicv2_loss(online, target, temperature=0.2, beta=1.0,
                                       num_negatives=7, rng=jax.random.key(0))
  np.testing.assert_allclose(full, sampled, rtol=1e-5)


def test_float32_math_for_bfloat16_inputs():
  rng = np.random.default_rng(5)
  online = jnp.asarray(rng.normal(size=(4, 64, 32)), jnp.float32)
  target = online[:2] + 0.1 * jnp.asarray(rng.normal(size=(2, 64, 32)), jnp.float32)
  full, _ = objectives.relicv2_loss(online, target, temperature=0.05, beta=1.0)
  half, _ = objectives.relicv2_loss(online.astype(jnp.bfloat16), target.astype(jnp.bfloat16),
                                    temperature=0.05, beta=1.0)
  assert half.dtype == jnp.float32 and np.isfinite(half)
  np.testing.assert_allclose(half, full, rtol=2e-2)


def test_loss_and_gradients_global_over_devices():
  """Same global batch on 1 and 8 devices: same loss and gradients, and they differ from a
  per-device loss (which is what silently-local negatives would compute)."""
  rng = np.random.default_rng(6)
  online = jnp.asarray(rng.normal(size=(3, 32, 16)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(2, 32, 16)), jnp.float32)
  loss_fn = functools.partial(objectives.relicv2_loss, temperature=0.1, beta=1.0)
  value_and_grad = jax.jit(jax.value_and_grad(lambda o, t: loss_fn(o, t)[0]))
  loss1, grad1 = value_and_grad(online, target)
  mesh = parallel.make_mesh()
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
  online8, target8 = jax.device_put(online, sharding), jax.device_put(target, sharding)
  assert len(online8.sharding.device_set) == 8
  loss8, grad8 = value_and_grad(online8, target8)
  np.testing.assert_allclose(loss1, loss8, atol=1e-5)
  np.testing.assert_allclose(grad1, grad8, atol=1e-5)
  per_device = np.mean([loss_fn(online[:, i:i + 4], target[:, i:i + 4])[0]
                        for i in range(0, 32, 4)])
  assert abs(per_device - float(loss8)) > 1e-2


def test_supervised_loss_matches_numpy_and_ignores_unlabelled():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(3, 6, 5)).astype(np.float32)   # 3 views, 6 images, 5 classes
  labels = np.array([0, 4, -1, 2, 2, 1], np.int32)
  loss, metrics = objectives.supervised_loss(jnp.asarray(logits), jnp.asarray(labels))
  terms, hits = [], []
  for v in range(3):
    for i in range(6):
      if labels[i] < 0:
        continue
      z = logits[v, i].astype(np.float64)
      terms.append(np.log(np.exp(z - z.max()).sum()) + z.max() - z[labels[i]])
      hits.append(np.argmax(z) == labels[i])
  np.testing.assert_allclose(loss, np.mean(terms), rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], np.mean(hits), rtol=1e-6)


# ----------------------------------------------------------------------------- baselines


def numpy_byol(online, target):
  """BYOL's published loss (Grill et al. 2020, eq. 2: ||q/|q| - z/|z|||^2, summed over the two
  directions), written with loops; more views: 2 x the mean over pairs (i, k), i != k."""
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  terms = []
  for i in range(online.shape[0]):
    for k in range(target.shape[0]):
      if i != k:
        terms.append(np.mean([np.sum((unit(online[i, b]) - unit(target[k, b])) ** 2)
                              for b in range(online.shape[1])]))
  return 2.0 * np.mean(terms)


def numpy_nt_xent(z_a, z_b, temperature):
  """SimCLR's NT-Xent (Chen et al. 2020, eq. 1) on the 2N embeddings [z_a; z_b], averaged over
  the N anchors of z_a: l(i, j) = -log exp(s_ij / t) / sum_{k != i} exp(s_ik / t)."""
  z = np.concatenate([z_a, z_b]) / np.linalg.norm(np.concatenate([z_a, z_b]), axis=-1,
                                                   keepdims=True)
  n = len(z_a)
  s = z @ z.T / temperature
  losses = []
  for i in range(n):
    j = i + n
    others = [k for k in range(2 * n) if k != i]
    losses.append(-(s[i, j] - np.log(np.sum(np.exp(s[i, others])))))
  return np.mean(losses)


def numpy_simclr(online, num_large, temperature):
  """Mean of NT-Xent over the ordered pairs (view i, large view k), i != k. Two views: the
  paper's L = 1 / 2N sum_k [l(2k-1, 2k) + l(2k, 2k-1)]."""
  return np.mean([numpy_nt_xent(online[i], online[k], temperature)
                  for i in range(online.shape[0]) for k in range(num_large) if i != k])


@pytest.mark.parametrize("num_large,num_small", [(2, 0), (2, 2), (1, 2), (4, 2)])
def test_byol_loss_matches_numpy_reference(num_large, num_small):
  rng = np.random.default_rng(20 + num_large * 10 + num_small)
  online = rng.normal(size=(num_large + num_small, 12, 16)).astype(np.float32)
  target = rng.normal(size=(num_large, 12, 16)).astype(np.float32)
  online[:num_large] += target[::-1]  # correlated views: cosines away from 0
  loss, metrics = objectives.byol_loss(jnp.asarray(online), jnp.asarray(target))
  expected = numpy_byol(online.astype(np.float64), target.astype(np.float64))
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(loss, 2 * (2 - 2 * metrics["cosine"]), rtol=1e-5, atol=1e-5)


def test_byol_two_views_is_byols_symmetrised_loss():
  """Two views: exactly byol_experiment.py's repr_loss = mean_b[regression_loss(p1, sg z2) +
  regression_loss(p2, sg z1)], with helpers.regression_loss = sum((x/|x| - y/|y|)^2)."""
  rng = np.random.default_rng(7)
  p = rng.normal(size=(2, 9, 5)).astype(np.float32)
  z = rng.normal(size=(2, 9, 5)).astype(np.float32)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  regression = lambda x, y: np.sum((unit(x) - unit(y)) ** 2, axis=-1)
  repr_loss = np.mean(regression(p[0], z[1]) + regression(p[1], z[0]))
  loss, _ = objectives.byol_loss(jnp.asarray(p), jnp.asarray(z))
  np.testing.assert_allclose(loss, repr_loss, rtol=1e-5)


def test_byol_no_gradient_into_target():
  rng = np.random.default_rng(8)
  online = jnp.asarray(rng.normal(size=(4, 8, 6)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(2, 8, 6)), jnp.float32)
  g_online, g_target = jax.grad(lambda o, t: objectives.byol_loss(o, t)[0], argnums=(0, 1))(
      online, target)
  assert np.abs(g_online).max() > 0
  np.testing.assert_array_equal(g_target, 0.0)


@pytest.mark.parametrize("num_large,num_small,temperature", [
    (2, 0, 0.1), (2, 2, 0.2), (1, 3, 0.5), (3, 1, 0.1)])
def test_simclr_loss_matches_numpy_reference(num_large, num_small, temperature):
  rng = np.random.default_rng(40 + num_large * 10 + num_small)
  base = rng.normal(size=(1, 10, 16))
  online = (base + 0.8 * rng.normal(size=(num_large + num_small, 10, 16))).astype(np.float32)
  loss, metrics = objectives.simclr_loss(jnp.asarray(online), num_large=num_large,
                                         temperature=temperature)
  expected = numpy_simclr(online.astype(np.float64), num_large, temperature)
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-5)
  assert 0.0 <= float(metrics["accuracy"]) <= 1.0


def test_simclr_two_views_uses_2n_minus_2_negatives_and_both_branches_learn():
  rng = np.random.default_rng(9)
  online = jnp.asarray(rng.normal(size=(2, 6, 4)), jnp.float32)
  z = objectives.l2_normalize(online)
  # Anchor 0 of view 0: 1 positive + 2 * 6 - 2 = 10 negatives, itself excluded.
  s = np.asarray(z[0, 0] @ jnp.concatenate([z[1], z[0]]).T / 0.1, np.float64)
  candidates = np.delete(s, 6)  # position 6 = the anchor itself
  assert len(candidates) == 11
  one = np.log(np.sum(np.exp(candidates))) - s[0]
  rows = [np.log(np.sum(np.exp(np.delete(np.asarray(z[0, b] @ jnp.concatenate(
      [z[1], z[0]]).T / 0.1, np.float64), 6 + b)))) - float(z[0, b] @ z[1, b] / 0.1)
          for b in range(6)]
  np.testing.assert_allclose(rows[0], one, rtol=1e-6)
  pair, _ = objectives.nt_xent_pair(z[0], z[1], 0.1)
  np.testing.assert_allclose(pair, np.mean(rows), rtol=1e-5)
  grad = jax.grad(lambda o: objectives.simclr_loss(o, num_large=2, temperature=0.1)[0])(online)
  assert np.abs(grad[0]).max() > 0 and np.abs(grad[1]).max() > 0


def test_baselines_refuse_a_single_view():
  one = jnp.ones((1, 4, 3))
  with pytest.raises(ValueError, match="at least two views"):
    objectives.byol_loss(one, one)
  with pytest.raises(ValueError, match="at least two views"):
    objectives.simclr_loss(one, num_large=1, temperature=0.1)


@pytest.mark.parametrize("objective", ["byol", "simclr"])
def test_baseline_losses_global_over_devices(objective):
  rng = np.random.default_rng(10)
  online = jnp.asarray(rng.normal(size=(3, 32, 16)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(2, 32, 16)), jnp.float32)
  if objective == "byol":
    loss_fn = lambda o, t: objectives.byol_loss(o, t)[0]
  else:
    loss_fn = lambda o, t: objectives.simclr_loss(o, num_large=2, temperature=0.1)[0]
  value_and_grad = jax.jit(jax.value_and_grad(loss_fn))
  loss1, grad1 = value_and_grad(online, target)
  mesh = parallel.make_mesh()
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
  loss8, grad8 = value_and_grad(jax.device_put(online, sharding),
                                jax.device_put(target, sharding))
  np.testing.assert_allclose(loss1, loss8, atol=1e-5)
  np.testing.assert_allclose(grad1, grad8, atol=1e-5)
