#!/usr/bin/env bash
# ReLICv2 ImageNet pretraining + linear evaluation on one 8-GPU node (one process, 8 devices).
# Usage: WORKDIR=/checkpoints/relic_r50 TFDS_DIR=/data/tensorflow_datasets bash gpu_node.sh
set -euo pipefail
: "${WORKDIR:?}" "${TFDS_DIR:?}"
CONFIG=${CONFIG:-resnet50}
pip install -e ".[cuda12]"
# Saliency masks (ReLICv2 cuts 10% of the large views from the background-removed image): made
# once, without labels, by the saliency job (README.md here, step 1b); a rerun skips the masks
# already written. MASKS=DIR uses masks you have; MASKS=off pretrains without masked views.
MASKS=${MASKS:-${WORKDIR}_saliency/masks}
if [ "$MASKS" = off ]; then
  MASK_ARGS=--config.data.mask_prob=0
else
  if [ "$MASKS" = "${WORKDIR}_saliency/masks" ]; then
    python -m relic.main --config=configs/saliency.py --workdir="${WORKDIR}_saliency" \
      --config.data.data_dir="$TFDS_DIR"
  fi
  MASK_ARGS=--config.data.mask_path=$MASKS
fi
# Batch 4096 = 512 per GPU does not fit 80 GB in float32 with 4x224 + 2x96 views: use bfloat16
# compute and per-block rematerialisation (results unchanged within tolerance, see README).
python -m relic.main --config=configs/${CONFIG}.py --workdir="$WORKDIR" \
  --config.data.data_dir="$TFDS_DIR" --config.model.dtype=bfloat16 --config.model.remat=True $MASK_ARGS
python -m relic.main --config=configs/linear_probe.py --config.pretrained="$WORKDIR" \
  --workdir="${WORKDIR}_linear" --config.data.data_dir="$TFDS_DIR"
