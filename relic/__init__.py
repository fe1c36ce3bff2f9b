"""relic: ReLICv2 self-supervised learning for ResNets in JAX/Flax."""

__version__ = "0.1.0"
