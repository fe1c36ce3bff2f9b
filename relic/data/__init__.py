"""Input data: sources (tfds, image folders, built-in shapes), multi-crop views and masks,
photometric augmentation (JAX and tf.data), and the pipelines in :mod:`relic.data.pipeline`."""
