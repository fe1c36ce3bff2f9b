"""TensorFlow and TensorFlow Datasets for the input pipeline, imported on first use.

The data modules take ``tf`` and ``tfds`` from here, so importing them (the source registry,
the pipeline, every job) costs nothing: the start-up checks (the config, the data on disk, the
pretrained encoder) run and report before the ~10 s TensorFlow import, which happens at the
first ``tf.``/``tfds.`` attribute access. ``from __future__ import annotations`` keeps
annotations such as ``-> tf.data.Dataset`` from triggering it.

TensorFlow only feeds the input pipeline: when it loads through here, it is kept off the GPUs and
TPUs at once (:func:`hide_accelerators`), before any of its ops can reserve memory JAX needs.
"""

from __future__ import annotations

import importlib
import sys

from absl import logging
from etils import epy

_hidden = False


def hide_accelerators(_module_name: str = "") -> None:
  """Makes GPUs and TPUs invisible to TensorFlow (importing it); once per process."""
  global _hidden
  if _hidden:
    return
  _hidden = True
  real_tf = importlib.import_module("tensorflow")
  for kind in ("GPU", "TPU"):
    try:
      real_tf.config.set_visible_devices([], kind)
    except ValueError:  # no such device type in this TensorFlow build
      pass
    except RuntimeError as e:  # TensorFlow already initialised its devices
      if kind == "GPU" and real_tf.config.get_visible_devices("GPU"):
        logging.warning("TensorFlow already initialised its GPUs and may reserve GPU memory "
                        "JAX needs (%s).", e)


with epy.lazy_imports(success_callback=hide_accelerators):
  import tensorflow as tf  # noqa: F401
  import tensorflow_datasets as tfds  # noqa: F401


def loaded() -> bool:
  """Whether TensorFlow has been imported in this process (by relic or anything else)."""
  return "tensorflow" in sys.modules
