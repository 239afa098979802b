#!/usr/bin/env bash
# GPU throughput, one JSON per model into OUT_DIR (default $OUT): full-size SD 1.5 architecture (random
# weights) at 512 px, bf16, batch 1/4/8/16, engine ± compile / channels-last / math attention / log_every=1,
# against the plain loop and the diffusers example's step; then SDXL at 1024 px batch 1/4 (± regional compile,
# gradient checkpointing on). Each JSON carries images/s, peak VRAM and (plain loop) model TFLOP/s from torch's
# FLOP counter: divide by the GPU's bf16 peak (H100 SXM: 989 TFLOP/s dense) for the fraction of peak.
#   bash bench/gpu_throughput.sh [OUT_DIR]
set -uo pipefail
out=${1:-${OUT:-/tmp/bench-out}}
mkdir -p "$out"
export PYTHONPATH="${PYTHONPATH:-}:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 LORA_STUDIO_CACHE=/tmp/lora-cache
steps=${STEPS:-20}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 bench/random_models.py sd15 /tmp/sd15-random --device cuda
python3 bench/throughput.py --model /tmp/sd15-random --resolution 512 --mixed-precision bf16 --batches 1,4,8,16 \
  --steps "$steps" --warmup 5 --rounds 1 --levers compile=regional,channels_last=on,attention=math,log_every=1,fused=off,pin_memory=off \
  --out "$out/sd15-512.json" > /dev/null
rm -rf /tmp/sd15-random
python3 bench/random_models.py sdxl /tmp/sdxl-random --device cuda
python3 bench/throughput.py --model /tmp/sdxl-random --resolution 1024 --mixed-precision bf16 --batches 1,4 \
  --gradient-checkpointing --steps "$steps" --warmup 5 --rounds 1 --levers compile=regional \
  --out "$out/sdxl-1024.json" > /dev/null
python3 bench/estimate_error.py --measured "$out"/*.json | tee "$out/estimate_error.txt"
