#!/usr/bin/env bash
# README command 2 (and CI): set up, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One pytest worker per core, at most 4 (each test process holds 8 fake XLA
# devices and spawns launcher subprocesses; more workers only add memory).
# --dist loadfile keeps a file's tests, and so its module fixtures, on one
# worker.
workers=$(nproc); workers=$(( workers > 4 ? 4 : workers ))
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile --durations=25 tests "$@"
