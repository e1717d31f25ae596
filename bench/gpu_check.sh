#!/usr/bin/env bash
# The GPU check in one command, on an offline GPU machine that has torch and transformers (a stock
# PyTorch CUDA image): installs nanoseek's other dependencies from the wheelhouse that
# ../shared/gpu/wheels.sh (or any pip download of them) built into .gpu-wheels, then runs
# bench/gpu_check.py. Arguments go to it, e.g.:
#   bash bench/gpu_check.sh                      # precision, train, decode, grpo (~8 min on an H100)
#   bash bench/gpu_check.sh --pipeline           # and the gpu-100m pipeline (~10 min more)
set -euo pipefail
cd "$(dirname "$0")/.."
site=${NANOSEEK_SITE:-/tmp/nanoseek-site}
if [ -d .gpu-wheels ] && [ ! -d "$site" ]; then
    python3 -m pip install -q --no-index --no-deps --target "$site" .gpu-wheels/*.whl
fi
export PYTHONPATH="$site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
out=${OUT:-.}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 bench/gpu_check.py --out "$out/gpu_check.json" "$@" 2>&1 | tee "$out/gpu_check.log"
