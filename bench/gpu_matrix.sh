#!/usr/bin/env bash
# Full-size SD 1.5 architecture (random weights) at 512 px on one GPU: fp16 / bf16, AdamW / 8-bit AdamW,
# with and without gradient checkpointing; one JSON line per setting (engine and plain loop) to $OUT.
#   bash bench/gpu_matrix.sh [OUT_DIR]
set -uo pipefail
out=${1:-${OUT:-/tmp/bench-out}}
mkdir -p "$out"
export PYTHONPATH="${PYTHONPATH:-}:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 LORA_STUDIO_CACHE=/tmp/lora-cache
python3 bench/random_models.py sd15 /tmp/sd15-random --device cuda
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
for mp in bf16 fp16; do
  for opt in adamw adamw8bit; do
    for gc in "" "--gradient-checkpointing"; do
      python3 bench/train_speed.py --model /tmp/sd15-random --resolution 512 --mixed-precision "$mp" \
        --optimizer "$opt" $gc --steps "${STEPS:-30}" --warmup 8 --json | tee -a "$out/sd15.jsonl"
    done
  done
done
