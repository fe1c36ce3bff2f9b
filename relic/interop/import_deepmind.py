"""Turns a DeepMind BYOL/ReLICv2 pickle into a relic encoder checkpoint.

  python -m relic.interop.import_deepmind --checkpoint=pretrain.pkl [--arch=resnet50] --out=DIR

DIR then loads like a relic pretraining workdir (``--config.pretrained=DIR``,
``relic.interop.load_encoder(DIR)``), without the pickle or its unpickling cost:
  DIR/config.json               relic.config.base_config() with config.model set to the
                                encoder (depth, width_multiplier, ..., padding='same'),
                                written by relic.checkpoints.write_config;
  DIR/checkpoints/0/            a relic checkpoint (relic.checkpoints.Checkpointer, step 0):
    state                       Orbax StandardSave of
                                {'online_params': {'encoder': params},
                                 'online_batch_stats': {'encoder': batch_stats}},
                                the pretraining state's names, encoder only;
    meta                        JSON {'config': <the same config>}.
"""

from __future__ import annotations

from typing import Any, Mapping

from absl import app, flags, logging

from relic.interop.architecture import EncoderSpec
from relic.interop.deepmind import PADDING, haiku_to_relic, read_deepmind_pickle

STEP = 0


def write_encoder_checkpoint(out: str, spec: EncoderSpec, variables: Mapping[str, Any],
                             padding: str) -> None:
  """Writes ``variables`` of ``spec.model(padding)`` as a relic workdir (see module docstring)."""
  from relic import checkpoints, config as config_lib  # pylint: disable=import-outside-toplevel

  config = config_lib.base_config()
  for key, value in spec.model_config(padding).items():
    config.model[key] = value
  state = {"online_params": {checkpoints.ENCODER: dict(variables["params"])},
           "online_batch_stats": {checkpoints.ENCODER: dict(variables["batch_stats"])}}
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
  write_encoder_checkpoint(out, spec, variables, PADDING)
  logging.info("Imported %s from %s into %s.", spec.describe(), checkpoint, out)
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
