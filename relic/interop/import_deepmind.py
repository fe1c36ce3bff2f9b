"""Turns a DeepMind BYOL/ReLICv2 pickle into a relic encoder checkpoint.

  python -m relic.interop.import_deepmind --checkpoint=pretrain.pkl [--arch=resnet50] --out=DIR

DIR then loads like a relic pretraining workdir (``--config.pretrained=DIR``,
``relic.interop.load_encoder(DIR)``), without the pickle or its unpickling cost:
  DIR/config.json               relic.config.base_config() with config.model set to the
                                encoder (depth, width_multiplier, ..., padding='same'),
                                written by relic.checkpoints.write_config;
  DIR/checkpoints/0/            a relic checkpoint (relic.checkpoints.Checkpointer, step 0):
    state                       Orbax StandardSave of
                                {'online_params': {'encoder': params, ['projector': ...,
                                                   'predictor': ...]},
                                 'online_batch_stats': {the same groups}},
                                the pretraining state's names: the encoder, and the
                                pickle's projector (and predictor) MLP when it holds a
                                complete one, with config.model.projector_hidden_dim,
                                projector_output_dim and projector_last_bias read from its
                                weights (BYOL's MLP has no bias on its last Linear);
    meta                        JSON {'config': <the same config>}.
"""

from __future__ import annotations

from typing import Any, Mapping

from absl import app, flags, logging

from relic.interop.architecture import EncoderSpec
from relic.interop.deepmind import PADDING, haiku_to_relic, read_deepmind_pickle
from relic.interop.projector import deepmind_heads

STEP = 0


def write_encoder_checkpoint(out: str, spec: EncoderSpec, variables: Mapping[str, Any],
                             padding: str, heads: Mapping[str, Any] | None = None) -> None:
  """Writes ``variables`` of ``spec.model(padding)`` as a relic workdir (see module docstring);
  ``heads``: ``{'projector' | 'predictor': (ProjectorSpec, variables)}`` written beside it."""
  from relic import checkpoints, config as config_lib  # pylint: disable=import-outside-toplevel

  config = config_lib.base_config()
  for key, value in spec.model_config(padding).items():
    config.model[key] = value
  state = {"online_params": {checkpoints.ENCODER: dict(variables["params"])},
           "online_batch_stats": {checkpoints.ENCODER: dict(variables["batch_stats"])}}
  for name, (head_spec, head_variables) in (heads or {}).items():
    config.model.update(head_spec.model_config(name))
    state["online_params"][name] = dict(head_variables["params"])
    state["online_batch_stats"][name] = dict(head_variables["batch_stats"])
  with checkpoints.Checkpointer(out, keep=1, async_save=False) as checkpointer:
    if checkpointer.latest_step() is not None:
      raise ValueError(f"{checkpointer.directory} already holds checkpoints; choose an empty "
                       f"--out.")
    checkpoints.write_config(config, str(out))
    checkpointer.save(STEP, state, extra_json={"config": checkpoints.config_to_json(config)})


def import_deepmind(checkpoint: str, out: str, arch: str | None = None) -> EncoderSpec:
  """Converts ``checkpoint`` (a DeepMind pickle) into the relic workdir ``out``."""
  params, state = read_deepmind_pickle(checkpoint)
  spec, variables = haiku_to_relic(params, state, arch)
  heads = deepmind_heads(params, state, spec.model().num_features)
  write_encoder_checkpoint(out, spec, variables, PADDING, heads)
  logging.info("Imported %s%s from %s into %s.", spec.describe(),
               "".join(f" + {name} {head[0]}" for name, head in heads.items()), checkpoint, out)
  return spec


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  values = flags.FLAGS
  spec = import_deepmind(values.checkpoint, values.out, values.arch or None)
  print(f"Imported {spec.describe()} (padding 'same') into {values.out}")


if __name__ == "__main__":
  flags.DEFINE_string("checkpoint", None, "DeepMind BYOL/ReLICv2 pickle, e.g. pretrain.pkl.")
  flags.DEFINE_string("arch", None, "resnet50, resnet50x2, ..., resnet200x2; default: inferred.")
  flags.DEFINE_string("out", None, "Output directory (a relic workdir).")
  flags.mark_flags_as_required(["checkpoint", "out"])
  app.run(main)
