"""relic: ReLICv2 self-supervised learning for ResNets in JAX/Flax."""

import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent


def requirements() -> list[str]:
  lines = (HERE / "requirements.txt").read_text().splitlines()
  return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


setup(
    name="relic",
    version="0.1.0",
    description="ReLICv2 self-supervised learning for ResNets in JAX/Flax: pretraining, "
                "linear probe, fine-tuning, transfer.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["relic", "relic.*"]),
    python_requires=">=3.11",
    install_requires=requirements(),
    extras_require={
        # Accelerator wheels of the same JAX version (jaxlib stays pinned by requirements.txt).
        "cuda12": ["jax[cuda12]==0.10.2"],
        "cuda13": ["jax[cuda13]==0.10.2"],
        "tpu": ["jax[tpu]==0.10.2"],
        # Interop tests and the PyTorch export need CPU torch/torchvision and Haiku; the
        # ablation script plots with matplotlib; tfds's builders (the VOC2007 tests prepare
        # voc/2007 from a tiny devkit) need importlib_resources.
        "test": ["pytest", "ruff", "dm-haiku==0.0.17", "torch==2.14.1",
                 "torchvision==0.29.1", "scikit-image", "matplotlib", "importlib_resources"],
        "experiments": ["matplotlib"],
    },
    entry_points={"console_scripts": ["relic=relic.main:cli"]},
)
