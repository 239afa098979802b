#!/usr/bin/env bash
# Full-size SD 1.5 architecture (random weights) at 512 px on one GPU: fp16 / bf16, AdamW / 8-bit AdamW,
# with and without gradient checkpointing; then full-size SDXL at 1024 px, batch 1, UNet only, bf16,
# gradient checkpointing, 8-bit AdamW. One JSON line per setting to $OUT/{sd15,sdxl}.jsonl. The plain-loop
# baseline (for the speed/memory ratio) runs for the no-checkpointing AdamW settings only, to save GPU time.
#   bash bench/gpu_matrix.sh [OUT_DIR]
set -uo pipefail
out=${1:-${OUT:-/tmp/bench-out}}
mkdir -p "$out"
export PYTHONPATH="${PYTHONPATH:-}:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 LORA_STUDIO_CACHE=/tmp/lora-cache
steps=${STEPS:-20}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 bench/random_models.py sd15 /tmp/sd15-random --device cuda
for mp in bf16 fp16; do
  for opt in adamw adamw8bit; do
    for gc in "" "--gradient-checkpointing"; do
      baseline="--no-baseline"
      [ "$opt" = adamw ] && [ -z "$gc" ] && baseline=""
      python3 bench/train_speed.py --model /tmp/sd15-random --resolution 512 --mixed-precision "$mp" \
        --optimizer "$opt" $gc $baseline --steps "$steps" --warmup 5 --json | tee -a "$out/sd15.jsonl"
    done
  done
done
rm -rf /tmp/sd15-random
python3 bench/random_models.py sdxl /tmp/sdxl-random --device cuda
python3 bench/train_speed.py --model /tmp/sdxl-random --resolution 1024 --mixed-precision bf16 \
  --optimizer adamw8bit --gradient-checkpointing --no-baseline --steps "$steps" --warmup 5 --json | tee -a "$out/sdxl.jsonl"
