#!/usr/bin/env bash
# Small-scale reproduction of the MRL paper on Fashion-MNIST: trains MRL,
# MRL-E and FF-k (k = 8..128) with the default recipe, plus the low-dim
# operating point (MRL and MRL-E nested down to 1 dim, `min_dim=1`, and
# FF-1, FF-2, FF-4), exports embeddings,
# runs every evaluator and baseline, then writes the table and the plots to
# experiments/fashion_mnist/ (results.md, results.json, *.png). The search
# benchmark runs on a 2048-d MRL model (`mrl2048`, the same recipe with
# dim=2048, the paper's ResNet-50 width), with two databases: the 60k train
# embeddings and 16 augmented views of the train split (960k real
# embeddings, config.export.views).
#
#   bash experiments/fashion_mnist/reproduce.sh
#
# Workdirs go to $MRL_REPRO_ROOT (default workdirs/repro), results to
# $MRL_REPRO_OUT (default experiments/fashion_mnist); finished steps are
# skipped on a rerun (training resumes, export skips finished shards).
# STAGES (default "train eval bench report") and MODELS select what runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ -n ${PY:-} ]] || bash scripts/setup.sh  # PY: an existing interpreter
PY=${PY:-.venv/bin/python}
ROOT=${MRL_REPRO_ROOT:-workdirs/repro}
STAGES=${STAGES:-train eval bench report}
OUT=${MRL_REPRO_OUT:-experiments/fashion_mnist}
MODELS=${MODELS-mrl mrl_e ff8 ff16 ff32 ff64 ff128 mrl_min1 mrl_e_min1 ff1 ff2 ff4 mrl2048}

args() {  # config flags of each model: identical recipe, only the head differs
  case $1 in
    mrl) echo "--config=configs/default.py:head=mrl" ;;
    mrl_e) echo "--config=configs/default.py:head=mrl_e" ;;
    mrl_min1) echo "--config=configs/default.py:head=mrl,min_dim=1" ;;
    mrl_e_min1) echo "--config=configs/default.py:head=mrl_e,min_dim=1" ;;
    mrl2048) echo "--config=configs/default.py:dim=2048 --config.export.views.count=16" ;;
    # min_dim=1 leaves an FF-k model as it is and runs FF-128's SVD /
    # random-feature baselines at 1, 2, 4, ..., 128 dims.
    ff*) echo "--config=configs/default.py:head=ff,min_dim=1 --config.mrl.ff_dim=${1#ff}" ;;
  esac
}
launch() {  # launch MODEL MODE
  # shellcheck disable=SC2046
  $PY -m mrl_jax.main $(args "$1") --workdir="$ROOT/$1" --mode="$2"
}

for name in $MODELS; do
  if [[ " $STAGES " == *" train "* && ! -f $ROOT/$name/eval_summary.json ]]; then
    launch "$name" train
  fi
  if [[ " $STAGES " == *" eval "* && -f $ROOT/$name/eval_summary.json ]]; then
    launch "$name" export
    [[ $name == mrl2048 ]] && continue  # the search benchmark's database
    launch "$name" knn
    launch "$name" pairs
    case $name in
      mrl|mrl_e) for mode in retrieval adaptive probe; do launch "$name" $mode; done ;;
      mrl_min1|mrl_e_min1) for mode in adaptive probe; do launch "$name" $mode; done ;;
      ff128) launch "$name" baselines ;;
    esac
  fi
done
if [[ " $STAGES " == *" bench "* && -f $ROOT/mrl2048/embeddings/fashion_mnist/train/metadata.json ]]; then
  $PY experiments/bench/search_bench.py --out="$OUT/search_bench.json" \
      --embeddings="$ROOT/mrl2048/embeddings/fashion_mnist" --shortlist_dims=8,16,32,64 \
      --databases=train,train_views16 --num_queries=2000
fi
if [[ " $STAGES " == *" report "* ]]; then
  $PY experiments/fashion_mnist/report.py --root="$ROOT" --out="$OUT"
fi
