"""Encoders and heads."""

from relic.models.heads import HEAD_INITS, MLP, LinearHead, linear_head_params
from relic.models.pretrain import RelicNetwork, encoder_from_config, networks_from_config
from relic.models.resnet import STAGE_SIZES, ResNet, feature_dim
from relic.models.segmentation import FCNHead, SegmentationNet, segmentation_net

__all__ = ["ResNet", "MLP", "LinearHead", "HEAD_INITS", "linear_head_params", "RelicNetwork",
           "STAGE_SIZES", "feature_dim",
           "encoder_from_config", "networks_from_config", "FCNHead", "SegmentationNet",
           "segmentation_net"]
