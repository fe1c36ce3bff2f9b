"""The networks of ReLICv2 pretraining, built from ``config.model``.

Online network: encoder + projector ("comparison net") [+ optional BYOL-style predictor].
Target network: the same encoder + projector, whose parameters are an EMA of the online ones
(see relic/train/states.py); it keeps its own BatchNorm statistics, as in BYOL.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax

from relic.models.heads import MLP
from relic.models.resnet import ResNet

ENCODER_FIELDS = ("depth", "width_multiplier", "stage_sizes", "base_width", "small_images",
                  "dtype", "padding", "remat", "zero_init_residual")


def encoder_from_config(model_config: Mapping[str, Any]) -> ResNet:
  """The ResNet described by ``config.model`` (a ConfigDict or the dict stored in a workdir)."""
  kwargs = {k: model_config[k] for k in ENCODER_FIELDS if k in model_config}
  kwargs["stage_sizes"] = tuple(kwargs.get("stage_sizes") or ()) or None
  return ResNet(**kwargs)


class RelicNetwork(nn.Module):
  """Encoder -> projector [-> predictor]; returns (features, projection, output).

  ``output`` is what enters the loss: the prediction when a predictor is used (online branch
  of the BYOL variant), otherwise the projection.
  """
  encoder: ResNet
  projector_hidden_dim: int = 4096
  projector_output_dim: int = 256
  predictor: bool = False
  predictor_hidden_dim: int = 4096
  # The last Linear of the projector and of the predictor: no bias, as BYOL's MLP.
  projector_last_bias: bool = False

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False):
    features = self.encoder(images, train=train)  # a submodule named "encoder"
    projection = MLP(self.projector_hidden_dim, self.projector_output_dim,
                     dtype=self.encoder.dtype, last_bias=self.projector_last_bias,
                     name="projector")(features, train=train)
    output = projection
    if self.predictor:
      output = MLP(self.predictor_hidden_dim, self.projector_output_dim,
                   dtype=self.encoder.dtype, last_bias=self.projector_last_bias,
                   name="predictor")(projection, train=train)
    return features, projection, output


def networks_from_config(model_config: Mapping[str, Any]) -> tuple[RelicNetwork, RelicNetwork]:
  """(online, target) networks. The target never has a predictor (BYOL/ReLICv2)."""
  encoder = encoder_from_config(model_config)
  common = dict(encoder=encoder, projector_hidden_dim=model_config["projector_hidden_dim"],
                projector_output_dim=model_config["projector_output_dim"],
                predictor_hidden_dim=model_config["predictor_hidden_dim"],
                # Configs saved before the field existed had the bias.
                projector_last_bias=bool(model_config.get("projector_last_bias", True)))
  return (RelicNetwork(predictor=bool(model_config["predictor"]), **common),
          RelicNetwork(predictor=False, **common))
