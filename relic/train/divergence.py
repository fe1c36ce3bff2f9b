"""Divergence, handled the same way in every job: the step reports whether it was finite (its
loss, its gradients and the train state it produced), a 'skip' policy drops a non-finite update
on the device, and the loop stops a run that diverged beyond the policy, naming the step and
the last good checkpoint. Imports no TensorFlow (the step benchmarks use :func:`guarded`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from absl import logging


class DivergenceError(RuntimeError):
  """The loss, the gradients or the updated train state became NaN/Inf (policy 'stop', or more
  skips than allowed)."""


def all_finite(tree: Any) -> jax.Array:
  """Whether every floating-point leaf of ``tree`` is free of NaN/Inf: one boolean scalar on
  the device (integer leaves, e.g. the step, and RNG keys cannot overflow and are left out)."""
  checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(getattr(x, "dtype", None), jnp.inexact)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


def non_finite_parts(state: Any) -> list[str]:
  """The names of the parts of a train state (``state.to_dict()``'s keys: ``online_params``,
  ``opt_state``, ...) that hold NaN/Inf; for error messages, so it reads the state back."""
  return [name for name, part in state.to_dict().items() if not bool(all_finite(part))]


def guarded(step_fn: Callable, nan_policy: str) -> Callable:
  """Adds ``metrics['finite']`` to an un-jitted step and, with ``nan_policy='skip'``, drops a
  non-finite step's whole update.

  A step is finite when its loss, its gradient norm *and every floating leaf of the state it
  returns* are: an update can overflow (a huge rate, a blown-up BatchNorm variance or Adam
  moment) although the loss and the gradients that produced it were finite, and that state is
  what the next step trains from and what a checkpoint would save. The reduction is part of the
  jitted step, so it costs one pass over the new state on the device and no synchronisation.

  A skipped step still advances ``state.step``, so the data and the learning rate stay on the
  schedule of the step; the optimiser statistics (momentum, Adam's count) are those of the
  applied updates only. The step's metrics must hold 'loss' (any shape) and 'grad_norm'.
  """
  def step(state, *inputs):
    new_state, metrics = step_fn(state, *inputs)
    finite = (jnp.all(jnp.isfinite(metrics["loss"])) & jnp.isfinite(metrics["grad_norm"])
              & all_finite(new_state))
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

  def check(self, last_good: int | None, state: Any = None) -> None:
    """Raises DivergenceError when the policy says the run must stop; the message names the
    parts of ``state`` (the current train state, when given) that hold NaN/Inf."""
    first_bad, count = int(self.first_bad), int(self.count)
    if first_bad < 0:
      return
    if self._policy == "skip" and count <= self._max_skipped:
      logging.warning("%s: skipped %d non-finite step(s) so far (first at step %d).",
                      self._name, count, first_bad)
      return
    raise DivergenceError(
        f"{self._name} diverged: NaN/Inf in the loss, the gradients or the updated train state "
        f"at step {first_bad} ({count} non-finite step(s)){_where(state)}; "
        f"{_last_good(last_good)}. Fix: lower the learning rate, or set "
        "train.nan_policy='skip' with train.max_skipped_steps; rerunning the command resumes "
        "from the last good checkpoint.")


_all_finite_on_device = jax.jit(all_finite)


def check_saveable(name: str, state: Any, step: int, last_good: int | None) -> None:
  """Refuses to checkpoint ``state`` (the train state of ``step``) unless every floating leaf
  is finite: the loop's own guard before a save, whatever the step function reported (one
  jitted reduction, read where the save synchronises anyway).

  Raises:
    DivergenceError: naming the step, the non-finite parts and the last good checkpoint.
  """
  if bool(_all_finite_on_device(state)):
    return
  raise DivergenceError(
      f"{name} diverged: the train state of step {step} holds NaN/Inf in "
      f"{', '.join(non_finite_parts(state))} although its step function reported it finite; it "
      f"was not saved, and {_last_good(last_good)}. "
      "Fix: wrap the step function with relic.train.divergence.guarded (it checks the updated "
      "state), and lower the learning rate; rerunning the command resumes from the last good "
      "checkpoint.")


def _where(state: Any) -> str:
  parts = non_finite_parts(state) if state is not None else []
  return f" (NaN/Inf now in {', '.join(parts)})" if parts else ""


def _last_good(last_good: int | None) -> str:
  return (f"the last good checkpoint is step {last_good}" if last_good is not None
          else "no checkpoint was written yet")
