#!/usr/bin/env bash
# README command 1: set up, train MRL on Fashion-MNIST, print per-dim results.
# Rerunning resumes from workdirs/default (a finished run just re-evaluates).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m mrl_jax.main --config=configs/default.py \
  --workdir="${WORKDIR:-workdirs/default}" "$@"
