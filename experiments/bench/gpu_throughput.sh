#!/usr/bin/env bash
# Training throughput / MFU / MRL-vs-FF on one GPU: see the docstring of
# experiments/bench/gpu_throughput.py (targets, method, how to record).
#
#   bash experiments/bench/gpu_throughput.sh [extra flags, e.g. --steps=100]
#
# PYTHON: the interpreter (default: the repo's .venv; on a GPU machine it
#   needs jax's CUDA plugin for the pinned jax version, `jax[cuda12]` or
#   `jax[cuda13]` to match the driver).
# OUT_JSON: where the results go (default workdirs/gpu_throughput.json).
# JAX_COMPILATION_CACHE_DIR: set it (a directory) to reuse compiled
#   steps across runs on the same machine; jax reads it directly.
# Expected wall time on one H100: under 5 minutes (mostly compilation).
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON="${PYTHON:-.venv/bin/python}"
OUT_JSON="${OUT_JSON:-workdirs/gpu_throughput.json}"
mkdir -p "$(dirname "$OUT_JSON")"
# mrl_jax from this checkout, also with an interpreter it is not installed in.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== device"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
else
  echo "nvidia-smi: not found"
fi
"$PYTHON" -c 'import jax; print("jax", jax.__version__, jax.devices())'

echo "== benchmark"
exec "$PYTHON" experiments/bench/gpu_throughput.py \
  --models=resnet50,vit_b16 --steps=50 --warmup=10 --rounds=3 \
  --out="$OUT_JSON" "$@"
