#!/usr/bin/env bash
# GPU throughput, one JSON per model into OUT_DIR (default $OUT): the full-size SD 1.5 architecture (random
# weights) at 512 px, bf16, engine ± levers against the plain loop and the diffusers example's step; then SDXL at
# 1024 px (gradient checkpointing on). Images/s, peak VRAM and (plain loop) model TFLOP/s from torch's FLOP
# counter: divide by the GPU's bf16 dense peak (H100 SXM: 989 TFLOP/s) for the fraction of peak.
# The default fits about 10 minutes of an H100; FULL=1 runs the whole matrix (batch 1/4/8/16, every lever).
#   bash bench/gpu_throughput.sh [OUT_DIR]          FULL=1 bash bench/gpu_throughput.sh [OUT_DIR]
set -uo pipefail
out=${1:-${OUT:-/tmp/bench-out}}
mkdir -p "$out"
export PYTHONPATH="${PYTHONPATH:-}:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 LORA_STUDIO_CACHE=/tmp/lora-cache
steps=${STEPS:-15}
if [ "${FULL:-0}" = 1 ]; then
  sd15_batches=1,4,8,16; sd15_levers=compile=regional,compile=full,channels_last=on,attention=math,log_every=1,fused=off,pin_memory=off,allow_tf32=off
  sdxl_batches=1,4; sdxl_levers=compile=regional
else
  sd15_batches=1,8; sd15_levers=compile=regional,channels_last=on,log_every=1
  sdxl_batches=1; sdxl_levers=
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 bench/random_models.py sd15 /tmp/sd15-random --device cuda
python3 bench/throughput.py --model /tmp/sd15-random --resolution 512 --mixed-precision bf16 --batches "$sd15_batches" \
  --steps "$steps" --warmup 5 --rounds 1 --levers "$sd15_levers" --out "$out/sd15-512.json" > /dev/null
rm -rf /tmp/sd15-random
python3 bench/random_models.py sdxl /tmp/sdxl-random --device cuda
python3 bench/throughput.py --model /tmp/sdxl-random --resolution 1024 --mixed-precision bf16 --batches "$sdxl_batches" \
  --gradient-checkpointing --steps "$steps" --warmup 5 --rounds 1 --levers "$sdxl_levers" --out "$out/sdxl-1024.json" > /dev/null
python3 bench/estimate_error.py --measured "$out"/*.json | tee "$out/estimate_error.txt"
