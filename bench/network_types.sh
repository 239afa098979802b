#!/usr/bin/env bash
# it/s and peak VRAM per adapter type (LoRA, LoCon, LoHa, LoKr, DoRA) on a full-size SD 1.5 architecture
# (random weights) at 512 px, bf16, AdamW, batch 1, rank 16 on sd-scripts' default targets (conv layers at
# rank 8 for LoCon/LoHa/LoKr). One JSON line per type to $OUT/network_types.jsonl.
#   bash bench/network_types.sh [OUT_DIR]
set -uo pipefail
out=${1:-${OUT:-/tmp/bench-out}}
mkdir -p "$out"
export PYTHONPATH="${PYTHONPATH:-}:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 LORA_STUDIO_CACHE=/tmp/lora-cache
steps=${STEPS:-20}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 bench/random_models.py sd15 /tmp/sd15-random --device cuda
for type in lora locon loha lokr dora; do
  python3 bench/train_speed.py --model /tmp/sd15-random --resolution 512 --mixed-precision bf16 --targets kohya \
    --network-type "$type" --no-baseline --steps "$steps" --warmup 5 --json | tee -a "$out/network_types.jsonl"
done
rm -rf /tmp/sd15-random
