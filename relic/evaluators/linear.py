"""L2-regularised multinomial logistic regression on frozen features.

The transfer protocol's linear evaluation (and the quick end-of-pretraining probe): features are
standardised with the training statistics, the regularisation strength is chosen on a held-out
slice of the training set, then the classifier is refit on all training features. Full-batch
L-BFGS (optax) runs until the gradient norm falls below ``GRAD_TOL`` (1e-5) or for ``max_iter``
(300) iterations; strongly regularised fits stop after a few dozen, which halves the quickstart's
evaluation.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

DEFAULT_L2_GRID = tuple(10.0 ** p for p in range(-6, 1))
GRAD_TOL = 1e-5   # L-BFGS stops once the gradient norm is below this (or after max_iter)


def multilabel_nll(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None):
  """One-vs-rest loss: a sigmoid cross-entropy per class, summed over classes and averaged over
  examples (the scale of a softmax cross-entropy), over the known targets only.

  Args:
    logits: (N, C).
    targets: (N, C) 1 = present, 0 = absent, -1 = ignored (e.g. VOC's "difficult").
    weights: optional (N,) example weights (0 = padding).
  """
  known = (targets >= 0).astype(logits.dtype)
  if weights is not None:
    known = known * weights[:, None].astype(logits.dtype)
  losses = optax.sigmoid_binary_cross_entropy(logits, (targets > 0).astype(logits.dtype))
  return jnp.sum(losses * known) / jnp.maximum(jnp.sum(known), 1.0) * logits.shape[-1]


def _nll(logits, y, multilabel: bool):
  if not multilabel:
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return multilabel_nll(logits, y)


def _loss(params, x, y, l2, multilabel):
  logits = x @ params["w"] + params["b"]
  return _nll(logits, y, multilabel) + 0.5 * l2 * jnp.sum(params["w"] ** 2)


@functools.partial(jax.jit, static_argnames=("num_classes", "max_iter", "multilabel"))
def _fit(x, y, l2, *, num_classes: int, max_iter: int, multilabel: bool):
  params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
  fun = functools.partial(_loss, x=x, y=y, l2=l2, multilabel=multilabel)
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(fun)

  def body(_, carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
    return optax.apply_updates(params, updates), state

  def not_converged(carry):
    i, _, state = carry
    grad = optax.tree_utils.tree_get(state, "grad")
    return (i < max_iter) & ((i == 0) | (optax.tree_utils.tree_norm(grad) > GRAD_TOL))

  _, params, _ = jax.lax.while_loop(
      not_converged, lambda carry: (carry[0] + 1, *body(carry[0], carry[1:])),
      (0, params, opt.init(params)))
  return params


class Standardizer:
  """Per-dimension mean/std of the training features (applied to every split)."""

  def __init__(self, features: np.ndarray):
    self.mean = features.mean(0)
    self.std = features.std(0) + 1e-6

  def __call__(self, features: np.ndarray) -> jnp.ndarray:
    return jnp.asarray((features - self.mean) / self.std, jnp.float32)


def fit(train_x: np.ndarray, train_y: np.ndarray, *, num_classes: int, l2: float,
        max_iter: int = 300) -> dict:
  """Fits the classifier on standardised features; returns params incl. the standardiser.

  ``train_y`` of shape (N,) holds class indices (softmax classifier); of shape (N, C), per-class
  targets 1 / 0 / -1 = ignored (one sigmoid per class, the multi-label protocol). The loss per
  example is summed over classes in both cases, so an ``l2`` means the same for both.
  """
  standardize = Standardizer(train_x)
  multilabel = np.ndim(train_y) == 2
  params = _fit(standardize(train_x), jnp.asarray(train_y, jnp.int32), jnp.float32(l2),
                num_classes=num_classes, max_iter=max_iter, multilabel=multilabel)
  return {"params": params, "standardize": standardize}


def logits(model: dict, x: np.ndarray) -> np.ndarray:
  """Class scores of a fitted classifier."""
  return np.asarray(model["standardize"](x) @ model["params"]["w"] + model["params"]["b"])


def holdout_split(num: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """``(val_idx, fit_idx)``: a random ``val_fraction`` of ``range(num)`` (at least one) and the
  rest."""
  order = np.random.default_rng(seed).permutation(num)
  num_val = max(1, int(num * val_fraction))
  return order[:num_val], order[num_val:]


def accuracy(model: dict, x: np.ndarray, y: np.ndarray, top: int = 1) -> float:
  """Top-k accuracy (%) of a fitted classifier."""
  if len(x) == 0:
    return float("nan")
  scores = logits(model, x)
  topk = np.asarray(jax.lax.top_k(scores, min(top, scores.shape[-1]))[1])
  return float(100.0 * np.mean(np.any(topk == np.asarray(y)[:, None], axis=1)))


def mean_per_class_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
  """Mean over the classes present in ``labels`` of each class's accuracy (%)."""
  classes = np.unique(labels)
  return float(100.0 * np.mean([np.mean(predictions[labels == c] == c) for c in classes]))


# Selection scores of a fitted classifier on held-out (x, y), higher is better.
SCORES: dict[str, Callable[[dict, np.ndarray, np.ndarray], float]] = {
    "top1": accuracy,
    "mean_per_class": lambda model, x, y: mean_per_class_accuracy(logits(model, x).argmax(-1), y),
}


def select_and_fit(train_x: np.ndarray, train_y: np.ndarray, *, num_classes: int,
                   l2_grid: Sequence[float] = DEFAULT_L2_GRID, val_fraction: float = 0.2,
                   seed: int = 0, max_iter: int = 300,
                   holdout: tuple[np.ndarray, np.ndarray] | None = None,
                   metric: str = "top1", score: Callable | None = None) -> tuple[dict, dict]:
  """Chooses l2 on held-out examples and refits on all of them, once for any number of test
  sets.

  Args:
    holdout: ``(x, y)`` of an official validation split: every l2 is fit on ``train_*`` and
      scored on it, and the final classifier is fit on train + holdout. None: a random
      ``val_fraction`` of train is held out, and the final fit uses all of train.
    metric: the selection score's name (a key of :data:`SCORES` unless ``score`` is given).
    score: ``(model, x, y) -> float``, higher is better; NaN counts as the worst.

  Returns:
    ``(model, selection)``: the classifier of :func:`fit`, and 'l2' (chosen), 'val_<metric>'
    per l2, 'num_val' (held-out examples).
  """
  score = score or SCORES[metric]
  if holdout is None:
    val_idx, fit_idx = holdout_split(len(train_x), val_fraction, seed)
    fit_x, fit_y, val_x, val_y = train_x[fit_idx], train_y[fit_idx], train_x[val_idx], train_y[val_idx]
    all_x, all_y = train_x, train_y
  else:
    (fit_x, fit_y), (val_x, val_y) = (train_x, train_y), holdout
    all_x, all_y = np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y])
  val_scores = {}
  for l2 in l2_grid:
    model = fit(fit_x, fit_y, num_classes=num_classes, l2=l2, max_iter=max_iter)
    value = score(model, val_x, val_y)
    val_scores[l2] = -1.0 if np.isnan(value) else value
  best = max(val_scores, key=lambda l2: (val_scores[l2], l2))  # ties: stronger regularisation
  model = fit(all_x, all_y, num_classes=num_classes, l2=best, max_iter=max_iter)
  return model, {"l2": best, f"val_{metric}": {str(k): v for k, v in val_scores.items()},
                 "num_val": int(len(val_x))}
