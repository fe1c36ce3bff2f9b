"""Encoders and heads."""

from relic.models.heads import MLP, LinearHead
from relic.models.resnet import ResNet, STAGE_SIZES, feature_dim

__all__ = ["ResNet", "MLP", "LinearHead", "STAGE_SIZES", "feature_dim"]
