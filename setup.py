"""relic: ReLICv2 self-supervised learning for ResNets in JAX/Flax."""

import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent

# tensorflow-cpu has wheels for x86-64 only (Linux, Windows); aarch64 Linux and Apple-silicon
# macOS get the same CPU-capable TensorFlow from the 'tensorflow' distribution.
X86_64 = 'platform_machine == "x86_64" or platform_machine == "AMD64"'
NOT_X86_64 = 'platform_machine != "x86_64" and platform_machine != "AMD64"'

# Version ranges, so that relic installs into an existing environment without downgrading it
# needlessly: from the tested version (requirements.txt, the exact lock that CI installs first)
# up to the next release that may break the API (next minor for 0.x, next major otherwise).
# tests/test_packaging.py checks that every pin of the lock lies inside these ranges.
INSTALL_REQUIRES = [
    "jax>=0.10,<0.11",
    "jaxlib>=0.10,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "chex>=0.1.92,<0.2",
    "orbax-checkpoint>=0.12.8,<0.13",
    "ml_collections>=1.1,<2",
    "absl-py>=2.1,<3",
    "etils[epath]>=1.9.1,<2",
    f"tensorflow-cpu>=2.21,<3; {X86_64}",
    f"tensorflow>=2.21,<3; {NOT_X86_64}",
    "tensorflow-datasets>=4.9.10,<5",
    "clu>=0.0.12,<0.1",
    "tensorboard>=2.21,<3",
    "pillow>=10,<14",
    "numpy>=2.0,<3",
    # JAX needs it to bound the persistent compilation cache (relic/compile_cache.py).
    "filelock>=3.12,<5",
]


setup(
    # The import name is 'relic'; the distribution name 'relic' on PyPI is an unrelated project.
    name="relic-jax",
    version="0.1.0",
    description="ReLICv2 self-supervised learning for ResNets in JAX/Flax: pretraining, "
                "linear probe, fine-tuning, transfer.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Operating System :: POSIX :: Linux",
        "Operating System :: MacOS",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
    keywords="self-supervised learning, ReLICv2, ResNet, JAX, Flax",
    project_urls={
        "Paper (ReLICv2)": "https://arxiv.org/abs/2201.05119",
        "DeepMind's ReLICv2 checkpoints": "https://github.com/google-deepmind/relicv2",
    },
    # The top-level configs/ folder ships inside the package as relic.configs, so that
    # --config=quickstart finds it from any directory (relic/config_files.py).
    packages=find_packages(include=["relic", "relic.*"]) + ["relic.configs"],
    package_dir={"relic.configs": "configs"},
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # Accelerator wheels of the installed JAX version (jax's extras pin the matching
        # jaxlib and plugins).
        "cuda12": ["jax[cuda12]>=0.10,<0.11"],
        "cuda13": ["jax[cuda13]>=0.10,<0.11"],
        "tpu": ["jax[tpu]>=0.10,<0.11"],
        # Interop tests and the PyTorch export need CPU torch/torchvision and Haiku; the
        # ablation script plots with matplotlib; tfds's builders (the VOC2007 tests prepare
        # voc/2007 from a tiny devkit) need importlib_resources; the safetensors export and its
        # timm check need safetensors and timm.
        "test": ["pytest", "pytest-xdist==3.8.0", "ruff", "dm-haiku==0.0.17", "torch==2.14.1",
                 "torchvision==0.29.1", "safetensors==0.8.0", "timm==1.0.31", "scikit-image",
                 "matplotlib", "importlib_resources"],
        "experiments": ["matplotlib"],
        # experiments/peers/: the same recipe in PyTorch with lightly, next to relic.
        "peers": ["torch==2.14.1", "torchvision==0.29.1", "lightly==1.6.0"],
    },
    entry_points={"console_scripts": ["relic=relic.main:cli"]},
)
