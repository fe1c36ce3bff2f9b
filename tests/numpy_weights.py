"""Random ResNet variables drawn with NumPy (jitted Flax initialisation takes seconds on a CPU),
shared by the tests that compare relic's networks with PyTorch's."""

import jax
import numpy as np


def numpy_variables(model, images, rng: np.random.Generator) -> dict:
  """Kaiming-normal kernels, random BN affine parameters and statistics for ``model`` applied to
  ``images`` (only their shape matters).

  The last BN scale of each residual branch is kept small, as in trained ResNets, so feature
  magnitudes stay realistic (a few units) and an absolute tolerance means something.
  """
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images))

  def fill(path, leaf):
    name, layer = path[-1].key, path[-2].key
    if name == "kernel":
      fan_out = np.prod(leaf.shape[:-2]) * leaf.shape[-1]
      return rng.normal(0, np.sqrt(2 / fan_out), leaf.shape).astype(np.float32)
    if name == "scale":
      low = 0.1 if layer in ("bn_2", "bn_1") and "block" in path[-3].key else 0.5
      return rng.uniform(low, 3 * low, leaf.shape).astype(np.float32)
    if name in ("bias", "mean"):
      return rng.normal(0, 0.1, leaf.shape).astype(np.float32)
    return np.ones(leaf.shape, np.float32)  # var

  return jax.tree_util.tree_map_with_path(fill, shapes)


def with_batch_statistics(model, variables: dict, images: np.ndarray) -> dict:
  """``variables`` whose BN running statistics are exactly those of ``images`` (one train-mode
  pass at momentum 0), as in a trained network rather than mean 0 / variance 1."""
  _, stats = jax.jit(lambda v: model.clone(bn_momentum=0.0).apply(
      v, images, train=True, mutable=["batch_stats"]))(variables)
  return {"params": variables["params"], "batch_stats": jax.tree.map(np.asarray,
                                                                       stats["batch_stats"])}
