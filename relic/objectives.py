"""The ReLICv2 objective (Tomasev et al. 2022, Algorithm 1) and the baselines of the paper's
comparison (BYOL, SimCLR; a supervised reference) as pure functions on (views, batch, dim) arrays.

For one pair (online view v, target view u), with o_i the L2-normalised online projection of
image i and t_k the L2-normalised target projection of image k over the *global* batch:

    s_ik = <o_i, t_k> / tau
    p_i  = softmax_k(s_ik)            which target matches online query i
    q_i  = softmax_k(s_ki)            which online query matches target i (same s, transposed)
    pair_loss = mean_i [ -log p_ii  +  beta * KL(p_i || sg(q_i)) ]

The first term is the contrastive (InfoNCE) term with the same image as the positive; the
second is the invariance term. ``relicv2_loss`` sums the pair loss over every online view (all
L large + S small) and every target view (the L large ones), *including* v == u, and divides by
(L + S) * L.

All math is float32 whatever the input dtype (bfloat16 logits at tau = 0.05 overflow the
softmax's precision), and the target carries no gradient. The functions are written on global
arrays: under ``jax.jit`` with the batch axis sharded over a mesh, the similarity matrix spans
the global batch, so the negatives are all images on all devices.

Baselines in the same pipeline (``config.loss.objective``; same views, encoder, projector,
optimiser and schedule; see relic/train/pretrain_step.py):

* ``byol_loss`` (Grill et al. 2020, eq. 2 and the symmetrised loss after it; DeepMind's
  byol/byol_experiment.py ``loss_fn`` with byol/utils/helpers.py ``regression_loss``): the
  normalised MSE ``||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z)`` between the online *prediction* of one
  view and the stop-gradient target *projection* of another. Two views: ``mean_b[l(p_1, z_2) +
  l(p_2, z_1)]``, exactly BYOL's value (their code sums the two directions). Multi-crop
  (relic's definition): ``2 x`` the mean over all ordered pairs (online view i, target large view
  k) with i != k, so that two views give BYOL's number and more views keep its scale.
* ``simclr_loss`` (Chen et al. 2020, NT-Xent, eq. 1 and the mean over the 2N anchors after it):
  no target network, both branches are the online network. For a pair of views (i, k), anchor b
  of view i has its positive at b in view k and 2B - 2 negatives: every other image of views i
  and k. Two views: exactly the paper's loss (the mean over the 2N anchors; SimCLR's TF code
  reports the sum of the two directions' means, twice this). Multi-crop (relic's definition):
  the mean over all ordered pairs (view i, large view k) with i != k, the pair structure of
  ReLICv2 and BYOL (small views are anchors against the large ones, never the other way).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def invariance_kl(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
  """KL(p || sg(q)) per row from log-probabilities: sum_k p_k (log p_k - log q_k).

  ``q`` is a fixed target (stop-gradient), so the term pulls the online distribution p_i towards
  the reverse-direction distribution q_i without moving q_i towards p_i. Kept as a small
  swappable function: the paper's exact KL form is not fully specified.
  """
  log_q = jax.lax.stop_gradient(log_q)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def sample_negatives(rng: jax.Array, batch_size: int, num_negatives: int) -> jax.Array:
  """(B, n) indices: for anchor i, n distinct images other than i, uniformly at random."""
  if not 0 < num_negatives < batch_size:
    raise ValueError(f"num_negatives must be in [1, batch_size - 1] = [1, {batch_size - 1}], "
                     f"got {num_negatives}; use 0 for the whole batch.")
  scores = jax.random.uniform(rng, (batch_size, batch_size - 1))
  _, picks = jax.lax.top_k(scores, num_negatives)  # n distinct slots out of the B - 1 others
  anchors = jnp.arange(batch_size)[:, None]
  return picks + (picks >= anchors)  # skip over the anchor itself


def pair_loss(online: jax.Array, target: jax.Array, *, temperature: float, beta: float,
              negatives: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """ReLICv2 loss of one (online view, target view) pair on normalised (B, D) embeddings.

  Args:
    online: (B, D) L2-normalised online projections (float32).
    target: (B, D) L2-normalised target projections (float32, already stop-gradient).
    temperature: tau.
    beta: weight of the invariance term.
    negatives: None for the whole batch, or (B, n) indices from ``sample_negatives``: anchor i
      then compares against {i} + negatives[i] only, in both directions.

  Returns:
    (mean loss over anchors, metrics with the contrastive/invariance parts and accuracy).
  """
  sims = online @ target.T / temperature  # s[i, k]
  if negatives is None:
    forward = sims                  # row i: s_i. over targets k
    backward = sims.T               # row i: s_.i over online queries k
    positive = jnp.arange(sims.shape[0])
    accuracy = jnp.mean(jnp.argmax(forward, axis=-1) == positive)
  else:
    candidates = jnp.concatenate([jnp.arange(sims.shape[0])[:, None], negatives], axis=1)
    forward = jnp.take_along_axis(sims, candidates, axis=1)
    backward = jnp.take_along_axis(sims.T, candidates, axis=1)
    positive = jnp.zeros(sims.shape[0], jnp.int32)
    accuracy = jnp.mean(jnp.argmax(forward, axis=-1) == 0)
  log_p = jax.nn.log_softmax(forward, axis=-1)
  log_q = jax.nn.log_softmax(backward, axis=-1)
  contrastive = -jnp.take_along_axis(log_p, positive[:, None], axis=1)[:, 0]
  invariance = invariance_kl(log_p, log_q)
  loss = jnp.mean(contrastive + beta * invariance)
  return loss, dict(contrastive=jnp.mean(contrastive), invariance=jnp.mean(invariance),
                    accuracy=accuracy)


def relicv2_loss(online: jax.Array, target: jax.Array, *, temperature: float, beta: float,
                 num_negatives: int | None = None,
                 rng: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The ReLICv2 loss over all (online view, target view) pairs.

  Args:
    online: (L + S, B, D) online projections (or predictions): the L large views first, in the
      same order as ``target``, then the S small views. Not normalised.
    target: (L, B, D) target projections of the large views. Not normalised; no gradient flows
      into it.
    temperature: tau > 0.
    beta: weight of the invariance term (0 gives InfoNCE).
    num_negatives: None (or 0) compares every anchor against the whole global batch; n > 0
      samples n negatives per anchor (never the positive), fresh for each pair.
    rng: PRNG key, required when ``num_negatives`` is set.

  Returns:
    (loss, metrics): the loss is sum over pairs / ((L + S) * L); metrics hold the loss, its
    contrastive and invariance parts and the positive-retrieval accuracy, averaged over pairs.
  """
  num_online, num_target = online.shape[0], target.shape[0]
  if num_online < num_target:
    raise ValueError(f"online has {num_online} views but target has {num_target}: online must "
                     "hold the L large views (first) plus the S small views.")
  if num_negatives and rng is None:
    raise ValueError("relicv2_loss: num_negatives needs an rng key.")
  online = l2_normalize(online)
  target = jax.lax.stop_gradient(l2_normalize(target))
  total = jnp.zeros((), jnp.float32)
  parts = dict(contrastive=0.0, invariance=0.0, accuracy=0.0)
  for v in range(num_online):
    for u in range(num_target):
      negatives = None
      if num_negatives:
        negatives = sample_negatives(jax.random.fold_in(rng, v * num_target + u),
                                     online.shape[1], num_negatives)
      loss, metrics = pair_loss(online[v], target[u], temperature=temperature, beta=beta,
                                negatives=negatives)
      total += loss
      parts = {k: parts[k] + metrics[k] for k in parts}
  num_pairs = num_online * num_target
  loss = total / num_pairs
  return loss, dict(loss=loss, **{k: v / num_pairs for k, v in parts.items()})


def supervised_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy over every view: the supervised reference trained exactly like ReLICv2.

  Args:
    logits: (V, B, C) class logits of all V views (the online network's output with
      ``projector_output_dim = C``).
    labels: (B,) integer labels; -1 marks an unlabelled image, which is ignored.

  Returns:
    (mean cross-entropy over labelled (view, image) pairs, metrics with the loss and top-1).
  """
  logits = logits.astype(jnp.float32)
  labels = jnp.broadcast_to(labels, logits.shape[:2])
  valid = labels >= 0
  safe = jnp.where(valid, labels, 0)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  losses = -jnp.take_along_axis(log_p, safe[..., None], axis=-1)[..., 0]
  count = jnp.maximum(valid.sum(), 1)
  loss = jnp.sum(jnp.where(valid, losses, 0.0)) / count
  accuracy = jnp.sum(valid & (jnp.argmax(logits, axis=-1) == safe)) / count
  return loss, dict(loss=loss, accuracy=accuracy)


OBJECTIVES = ("relicv2", "byol", "simclr", "supervised")
# Objectives with an EMA target network (the others never read or update the target).
TARGET_OBJECTIVES = ("relicv2", "byol")


def _cross_view_pairs(num_online: int, num_target: int) -> list[tuple[int, int]]:
  """Ordered pairs (online view i, large view k), i != k: the baselines' pair structure."""
  if num_online < num_target:
    raise ValueError(f"online has {num_online} views but the large views are {num_target}: "
                     "online must hold the L large views (first) plus the S small views.")
  pairs = [(i, k) for i in range(num_online) for k in range(num_target) if i != k]
  if not pairs:
    raise ValueError(f"{num_online} online view(s) and {num_target} large view(s) give no pair "
                     "of different views; BYOL and SimCLR need at least two views.")
  return pairs


def byol_loss(online: jax.Array, target: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """BYOL's loss, symmetrised over views (see the module docstring for multi-crop).

  Args:
    online: (L + S, B, D) online predictions: the L large views first, in the order of
      ``target``, then the S small views. Not normalised.
    target: (L, B, D) target projections of the large views. Not normalised; no gradient flows
      into it.

  Returns:
    (loss, metrics): ``loss = 2 * mean_{(i, k), i != k} mean_b (2 - 2 cos(online[i, b],
    target[k, b]))``; two views give BYOL's ``l(p_1, z_2) + l(p_2, z_1)``. Metrics: the loss and
    the mean cosine over the same pairs.
  """
  pairs = _cross_view_pairs(online.shape[0], target.shape[0])
  p = l2_normalize(online)
  z = jax.lax.stop_gradient(l2_normalize(target))
  cosines = jnp.einsum("vbd,ubd->vub", p, z)                     # (L + S, L, B)
  per_pair = jnp.stack([jnp.mean(cosines[i, k]) for i, k in pairs])
  cosine = jnp.mean(per_pair)
  loss = 2.0 * (2.0 - 2.0 * cosine)
  return loss, dict(loss=loss, cosine=cosine)


def nt_xent_pair(anchor: jax.Array, other: jax.Array, temperature: float
                 ) -> tuple[jax.Array, jax.Array]:
  """NT-Xent of anchors ``anchor`` (B, D) against ``other`` (B, D), both L2-normalised.

  Anchor b's positive is ``other[b]``; its 2B - 2 negatives are ``other[c]`` and ``anchor[c]``
  for c != b (itself excluded). Returns (mean loss over anchors, positive-retrieval accuracy).
  """
  batch = anchor.shape[0]
  cross = anchor @ other.T / temperature                                    # positives: diagonal
  own = jnp.where(jnp.eye(batch, dtype=bool), -1e9, anchor @ anchor.T / temperature)
  logits = jnp.concatenate([cross, own], axis=1)                            # (B, 2B)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  positive = jnp.arange(batch)
  loss = -jnp.mean(log_p[positive, positive])
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == positive)
  return loss, accuracy


def simclr_loss(online: jax.Array, *, num_large: int, temperature: float
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """SimCLR's NT-Xent over the global batch (see the module docstring for multi-crop).

  Args:
    online: (L + S, B, D) online projections of every view, the L large views first. Not
      normalised; gradients flow into both sides of every pair (no target network).
    num_large: L.
    temperature: tau > 0.

  Returns:
    (loss, metrics): the mean of :func:`nt_xent_pair` over the ordered pairs (view i, large view
    k), i != k; metrics hold the loss and the positive-retrieval accuracy among the 2B - 1
    candidates, averaged over pairs.
  """
  pairs = _cross_view_pairs(online.shape[0], num_large)
  z = l2_normalize(online)
  losses, accuracies = zip(*(nt_xent_pair(z[i], z[k], temperature) for i, k in pairs))
  loss = jnp.mean(jnp.stack(losses))
  return loss, dict(loss=loss, accuracy=jnp.mean(jnp.stack(accuracies)))
