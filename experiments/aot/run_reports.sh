#!/usr/bin/env bash
# Regenerates the committed AOT reports (README.md here): each compiles the
# real MRL train step for a TPU slice on this CPU-only machine (libtpu:
# pip install '.[aot]') and writes experiments/aot/<name>/aot_report.{json,txt}.
# Usage: bash experiments/aot/run_reports.sh [name ...]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}

declare -A ARGS=(
  [vit_b16_jft_b4096_v5e_16x16]="--config=configs/vit_b16_jft.py --topology=v5e:16x16 --config.batch_size=4096"
  [vit_b16_jft_b4096_v4_8x8x4]="--config=configs/vit_b16_jft.py --topology=v4:8x8x4 --config.batch_size=4096"
  [rn50_imagenet_b1024_v4_2x2x2]="--config=configs/resnet50_imagenet.py --topology=v4:2x2x2"
  [rn50_imagenet_b4096_v5e_8x8]="--config=configs/resnet50_imagenet.py --topology=v5e:8x8 --config.batch_size=4096"
  [bert_base_mlm_b1024_v4_2x2x4]="--config=configs/bert_base_mlm.py --topology=v4:2x2x4"
  [bert_base_mlm_ff_b1024_v4_2x2x4]="--config=configs/bert_base_mlm.py:head=ff --topology=v4:2x2x4"
  [bert_base_mlm_dp_b1024_v4_2x2x4]="--config=configs/bert_base_mlm.py --topology=v4:2x2x4 --config.mesh=(('data',-1),) --config.sharding.strategy=dp"
  [bert_base_mlm_ff_dp_b1024_v4_2x2x4]="--config=configs/bert_base_mlm.py:head=ff --topology=v4:2x2x4 --config.mesh=(('data',-1),) --config.sharding.strategy=dp"
  [align_vit_b16_bert_b4096_v4_4x4x4]="--config=configs/align_vit_b16_bert.py --topology=v4:4x4x4"
  [align_vit_b16_bert_ff_b4096_v4_4x4x4]="--config=configs/align_vit_b16_bert.py:head=ff --topology=v4:4x4x4"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(vit_b16_jft_b4096_v5e_16x16 vit_b16_jft_b4096_v4_8x8x4
                                 rn50_imagenet_b1024_v4_2x2x2 rn50_imagenet_b4096_v5e_8x8
                                 bert_base_mlm_b1024_v4_2x2x4 bert_base_mlm_ff_b1024_v4_2x2x4
                                 bert_base_mlm_dp_b1024_v4_2x2x4 bert_base_mlm_ff_dp_b1024_v4_2x2x4
                                 align_vit_b16_bert_b4096_v4_4x4x4 align_vit_b16_bert_ff_b4096_v4_4x4x4)
for name in "${names[@]}"; do
  echo "== $name" >&2
  # shellcheck disable=SC2086
  $PYTHON -m mrl_jax.main --mode=aot --workdir="experiments/aot/$name" ${ARGS[$name]}
done
