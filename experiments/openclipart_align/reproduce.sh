#!/usr/bin/env bash
# Nested two-tower contrastive learning (ALIGN-MRL) on openclipart
# (configs/align_openclipart.py: a small CNN on 32-px drawings + BERT-Tiny on
# their captions, d = 128): trains MRL (nested loss on both towers) and the
# plain two-tower model with one recipe; the eval scores both at the nesting
# dims (the plain model at its first m dims, the paper's baseline): Recall@K
# both ways, zero-shot over the 22 categories and the cosine span. Then it
# exports the image tower's embeddings and scores their categories by 1-NN
# (the plain model's by its truncated prefixes),
# and writes the tables and plots to experiments/openclipart_align/
# (results.md, results.json, align_vs_dim.png).
#
#   bash experiments/openclipart_align/reproduce.sh
#
# Workdirs go to $MRL_REPRO_ROOT (default workdirs/openclipart_align),
# results to $MRL_REPRO_OUT (default experiments/openclipart_align); finished
# steps are skipped on a rerun. STAGES (default "train eval report") and
# MODELS select what runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ -n ${PY:-} ]] || bash scripts/setup.sh  # PY: an existing interpreter
PY=${PY:-.venv/bin/python}
ROOT=${MRL_REPRO_ROOT:-workdirs/openclipart_align}
STAGES=${STAGES:-train eval report}
OUT=${MRL_REPRO_OUT:-experiments/openclipart_align}
MODELS=${MODELS-mrl ff}

launch() {  # launch MODEL MODE [FLAGS...]: one recipe, only the head differs
  local name=$1 mode=$2
  shift 2
  $PY -m mrl_jax.main --config="configs/align_openclipart.py:head=$name" \
      --workdir="$ROOT/$name" --mode="$mode" "$@"
}

for name in $MODELS; do
  if [[ " $STAGES " == *" train "* && ! -f $ROOT/$name/eval_summary.json ]]; then
    launch "$name" train
  fi
  if [[ " $STAGES " == *" eval "* && -f $ROOT/$name/eval_summary.json ]]; then
    launch "$name" export
    case $name in
      mrl) launch "$name" knn ;;
      # The plain model's first m dims (its export holds d only).
      ff) launch "$name" baselines ;;
    esac
  fi
done
if [[ " $STAGES " == *" report "* ]]; then
  $PY experiments/openclipart_align/report.py --root="$ROOT" --out="$OUT"
fi
