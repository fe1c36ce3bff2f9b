"""Divergence, handled the same way in every job: the step reports whether it was finite, a
'skip' policy drops a non-finite update on the device, and the loop stops a run that diverged
beyond the policy, naming the step and the last good checkpoint. Imports no TensorFlow (the
step benchmarks use :func:`guarded`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from absl import logging

class DivergenceError(RuntimeError):
  """The loss or the gradients became NaN/Inf (policy 'stop', or more skips than allowed)."""


def guarded(step_fn: Callable, nan_policy: str) -> Callable:
  """Adds ``metrics['finite']`` (loss and gradient norm finite) to an un-jitted step and, with
  ``nan_policy='skip'``, drops a non-finite step's whole update.

  A skipped step still advances ``state.step``, so the data and the learning rate stay on the
  schedule of the step; the optimiser statistics (momentum, Adam's count) are those of the
  applied updates only. The step's metrics must hold 'loss' (any shape) and 'grad_norm'.
  """
  def step(state, *inputs):
    new_state, metrics = step_fn(state, *inputs)
    finite = jnp.all(jnp.isfinite(metrics["loss"])) & jnp.isfinite(metrics["grad_norm"])
    if nan_policy == "skip":
      new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state,
                               state.replace(step=new_state.step))
    return new_state, {**metrics, "finite": finite}

  return step


class Divergence:
  """The first non-finite step and their count, kept on the device: the loop reads them only
  when it logs or saves, so it never waits for the step just dispatched."""

  def __init__(self, name: str, policy: str, max_skipped: int):
    self._name, self._policy, self._max_skipped = name, policy, max_skipped
    self.first_bad = jnp.asarray(-1, jnp.int32)
    self.count = jnp.asarray(0, jnp.int32)

  def update(self, step: int, finite: jax.Array) -> None:
    bad = jnp.logical_not(finite)
    self.first_bad = jnp.where((self.first_bad < 0) & bad, step, self.first_bad)
    self.count = self.count + bad.astype(jnp.int32)

  def check(self, last_good: int | None) -> None:
    """Raises DivergenceError when the policy says the run must stop."""
    first_bad, count = int(self.first_bad), int(self.count)
    if first_bad < 0:
      return
    if self._policy == "skip" and count <= self._max_skipped:
      logging.warning("%s: skipped %d non-finite step(s) so far (first at step %d).",
                      self._name, count, first_bad)
      return
    where = (f"the last good checkpoint is step {last_good}" if last_good is not None
             else "no checkpoint was written yet")
    raise DivergenceError(
        f"{self._name} diverged: NaN/Inf in the loss or gradients at step {first_bad} "
        f"({count} non-finite step(s)); {where}. Fix: lower the learning rate, or set "
        "train.nan_policy='skip' with train.max_skipped_steps; rerunning the command resumes "
        "from the last good checkpoint.")
