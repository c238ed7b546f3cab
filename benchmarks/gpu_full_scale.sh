#!/usr/bin/env bash
# One GPU, DenseNet-121 at 224 px: 8 hospitals (one vmapped stack) and the centralized loop.
# Prints img/s of each, their ratio, peak GPU memory and the projected wall time of the full
# NIH study (every default method, --epochs passes; 10 unless given). Refuses without CUDA.
# Extra flags go to benchmarks/bench_gpu.py, e.g. --precision fp32 --channels-last --epochs 20.
# Capped at 8 minutes (each phase stops timing after --max-seconds, 150 s by default).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
exec timeout 480 "$PYTHON" -m benchmarks.bench_gpu --device cuda --architecture densenet121 \
    --image-size 224 --hospitals 8 --batch-size 16 --precision bf16 --epochs 10 \
    --out benchmarks/results/gpu_full_scale.json "$@"
