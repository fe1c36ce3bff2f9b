"""Everything a run leaves on disk: ``config.json``, the Orbax checkpoints, the encoder read out
of them (the pretrained encoder of an evaluation job), the linear probe's head, the results.
No other module knows these directory and file names (:mod:`relic.checkpoints.layout`)."""

from relic.checkpoints.encoder import read_state_part, restore_encoder
from relic.checkpoints.integrity import CheckpointIntegrityError
from relic.checkpoints.layout import (CHECKPOINT_DIR, CONFIG_JSON, ENCODER, PROBE_HEAD_JSON,
                                      PROBE_HEAD_NPZ, RESULTS_JSON, RESULTS_MD, checkpoint_dir,
                                      read_config, step_dirs, write_config)
from relic.checkpoints.orbax_checkpointer import (CheckpointRestoreError, Checkpointer,
                                                  CheckpointSaveError, config_to_json)
from relic.checkpoints.pretrained import check_pretrained, fingerprint, load_pretrained
from relic.checkpoints.probe_head import load_probe_head, save_probe_head
from relic.checkpoints.results import read_results, table, write_results

__all__ = ["read_state_part", "restore_encoder", "CheckpointIntegrityError", "CHECKPOINT_DIR",
           "CONFIG_JSON", "ENCODER", "PROBE_HEAD_JSON", "PROBE_HEAD_NPZ", "RESULTS_JSON",
           "RESULTS_MD", "checkpoint_dir", "read_config", "step_dirs", "write_config",
           "CheckpointRestoreError", "Checkpointer", "CheckpointSaveError", "config_to_json",
           "check_pretrained", "fingerprint", "load_pretrained", "load_probe_head",
           "save_probe_head", "read_results", "table", "write_results"]
