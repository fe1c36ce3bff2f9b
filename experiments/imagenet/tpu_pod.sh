#!/usr/bin/env bash
# ReLICv2 ImageNet pretraining + linear evaluation on a Cloud TPU VM pod slice.
# Usage: TPU_NAME=my-v4-64 ZONE=us-central2-b BUCKET=my-bucket CONFIG=resnet50 bash tpu_pod.sh
# The same command runs on every worker (--worker=all); JAX detects the pod and calls
# jax.distributed.initialize() itself; each host reads its own share of ImageNet.
set -euo pipefail
: "${TPU_NAME:?}" "${ZONE:?}" "${BUCKET:?}"
CONFIG=${CONFIG:-resnet50}            # resnet50, resnet50_2x, resnet50_4x, resnet101, ...
PRESET=${PRESET:-}                    # '' (1000 epochs), ':epochs=300' or ':epochs=100'
TFDS_DIR=${TFDS_DIR:-gs://$BUCKET/tensorflow_datasets}
WORKDIR=gs://$BUCKET/relic_${CONFIG}
ssh_all() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"; }

# 1. Install (once): the same checkout on every worker.
ssh_all "test -d relic || git clone https://github.com/ORG/relic.git; cd relic && pip install -e '.[tpu]'"
# 2. Saliency masks (ReLICv2 cuts 10% of the large views from the background-removed image):
# made once, without labels, by the saliency job (README.md here, step 1b), each host masking
# its own share; a rerun skips the masks already written. MASKS=DIR uses masks you have;
# MASKS=off pretrains without masked views.
MASKS=${MASKS:-${WORKDIR}_saliency/masks}
if [ "$MASKS" = off ]; then
  MASK_ARGS=--config.data.mask_prob=0
else
  if [ "$MASKS" = "${WORKDIR}_saliency/masks" ]; then
    ssh_all "cd relic && python -m relic.main --config=configs/saliency.py \
      --workdir=${WORKDIR}_saliency --config.data.data_dir=${TFDS_DIR}"
  fi
  MASK_ARGS=--config.data.mask_path=$MASKS
fi
# 3. Pretrain (resumes automatically from the latest checkpoint in WORKDIR after preemption).
ssh_all "cd relic && python -m relic.main --config=configs/${CONFIG}.py${PRESET} \
  --workdir=${WORKDIR} --config.data.data_dir=${TFDS_DIR} ${MASK_ARGS}"
# 4. Linear evaluation of the pretrained encoder.
ssh_all "cd relic && python -m relic.main --config=configs/linear_probe.py \
  --config.pretrained=${WORKDIR} --workdir=${WORKDIR}_linear --config.data.data_dir=${TFDS_DIR}"
