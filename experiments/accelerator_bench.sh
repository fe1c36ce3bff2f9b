#!/usr/bin/env bash
# ResNet-50 pretraining-step numbers on one accelerator, most important setting first, in a
# few minutes: each setting is written to OUT_DIR as soon as it finishes, so a run cut short
# keeps what it measured. Needs only jax, flax, optax, chex, absl-py and ml_collections.
#
#   bash experiments/accelerator_bench.sh OUT_DIR [SECONDS_PER_SETTING]
#
#   1. bfloat16, 128 then 64 images per device, no remat, with the per-piece breakdown
#      (the target: >= 20% MFU for 4x224 + 2x96 views);
#   2. float32 (TF32 on NVIDIA), 128 per device;
#   3. bfloat16 with remat, 128 per device (memory against speed);
#   4. the segmentation-transfer step (ResNet-50 FCN-16s, 513 px crops), bfloat16, 8 per device.
# The full grid (32/64/128 x float32/bfloat16 x remat off/on) is `bench_step --sweep`.
set -euo pipefail
out=${1:?usage: bash experiments/accelerator_bench.sh OUT_DIR [SECONDS_PER_SETTING]}
per_setting=${2:-240}
out=$(mkdir -p "$out" && cd "$out" && pwd)   # absolute: the script runs from the repository root
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  python -c "import jax; print(jax.__version__, jax.devices())"; } | tee "$out/device.txt"
bench() { python -m experiments.bench_step --sweep --setting_timeout "$per_setting" "$@"; }
bench --sweep_batches 128,64 --sweep_dtypes bfloat16 --sweep_remat off --pieces \
    --out "$out/bench_step_bf16.json"
bench --sweep_batches 128 --sweep_dtypes float32 --sweep_remat off --out "$out/bench_step_f32.json"
bench --sweep_batches 128 --sweep_dtypes bfloat16 --sweep_remat on --out "$out/bench_step_remat.json"
timeout "$per_setting" python -m experiments.bench_segmentation --depth 50 --crop 513 \
    --per_device_batch 8 --dtype bfloat16 --out "$out/bench_segmentation_bf16.json" || true
