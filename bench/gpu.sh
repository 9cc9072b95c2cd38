#!/usr/bin/env bash
# The GPU checks in one go, for a CUDA machine: the gpu-marked tests, the training
# benchmark and the lookback windows' loader benchmark on the card. Results land in the
# folder given as the first argument.
#   bench/gpu.sh results/
set -uo pipefail
out="${1:?usage: bench/gpu.sh OUTDIR}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1
python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py tests/test_loader.py \
    tests/test_windows.py \
    2>&1 | tee "$out/pytest-gpu.log"
python3 bench/train.py --device cuda --days 4 --rows-per-day 850000 --batch 8192 --json \
    > "$out/bench-train-gpu.json" 2> "$out/bench-train-gpu.log"
python3 bench/train.py --device cuda --days 4 --rows-per-day 850000 --batch 8192 --window 32 \
    --json > "$out/bench-train-gpu-window-32.json" 2> "$out/bench-train-gpu-window-32.log"
python3 bench/loader.py --only windows --days 2 --rounds 2 --device cuda --data "$out/loader-data" \
    --json > "$out/bench-loader-windows-gpu.json" 2> "$out/bench-loader-windows-gpu.log"
rm -rf "$out/loader-data"
python3 bench/train.py --device cpu --days 2 --rows-per-day 200000 --json \
    > "$out/bench-train-cpu.json" 2> "$out/bench-train-cpu.log"
cat "$out"/*.json
