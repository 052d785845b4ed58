#!/usr/bin/env bash
# Nested masked language modelling at small scale on the offline Debian
# corpus (configs/text_mlm.py: BERT-Tiny, 128-token sequences): trains MRL-E
# (the paper's form), MRL (untied per-dim decoders), MRL-E with per-prefix
# LayerNorm, and FF-k (k = 8, 32, 128; FF-128 is plain BERT MLM) with one
# recipe; evaluates MLM accuracy per dim on the validation split, exports
# mean-pooled sentence embeddings of WordNet glosses and scores their 45
# lexicographer classes per dim (1-NN and a linear probe), with FF-128's
# truncated prefixes and SVD as baselines; then writes the tables and plots
# to experiments/text_mlm/ (results.md, results.json, *.png).
#
#   bash experiments/text_mlm/reproduce.sh
#
# Workdirs go to $MRL_REPRO_ROOT (default workdirs/text_mlm), results to
# $MRL_REPRO_OUT (default experiments/text_mlm); finished steps are skipped
# on a rerun. STAGES (default "train eval report") and MODELS select what
# runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ -n ${PY:-} ]] || bash scripts/setup.sh  # PY: an existing interpreter
PY=${PY:-.venv/bin/python}
ROOT=${MRL_REPRO_ROOT:-workdirs/text_mlm}
STAGES=${STAGES:-train eval report}
OUT=${MRL_REPRO_OUT:-experiments/text_mlm}
MODELS=${MODELS-mrl_e mrl mrl_e_pn ff8 ff32 ff128}
DIMS="(8, 16, 32, 64, 128)"

args() {  # config flags of each model: identical recipe, only the head differs
  case $1 in
    mrl_e) echo "--config=configs/text_mlm.py:head=mrl_e" ;;
    mrl) echo "--config=configs/text_mlm.py:head=mrl" ;;
    mrl_e_pn) echo "--config=configs/text_mlm.py:head=mrl_e,prefix_norm" ;;
    ff*) echo "--config=configs/text_mlm.py:head=ff,ff_dim=${1#ff}" ;;
  esac
}
launch() {  # launch MODEL MODE [FLAGS...]
  local name=$1 mode=$2
  shift 2
  # shellcheck disable=SC2046
  $PY -m mrl_jax.main $(args "$name") --workdir="$ROOT/$name" --mode="$mode" "$@"
}

for name in $MODELS; do
  if [[ " $STAGES " == *" train "* && ! -f $ROOT/$name/eval_summary.json ]]; then
    launch "$name" train
  fi
  if [[ " $STAGES " == *" eval "* && -f $ROOT/$name/eval_summary.json ]]; then
    case $name in
      mrl_e|mrl|mrl_e_pn) launch "$name" export
                          launch "$name" knn
                          launch "$name" probe ;;
      # The plain model's prefixes: truncated and SVD, at the nested dims.
      ff128) launch "$name" export
             launch "$name" baselines "--config.baselines.dims=$DIMS" \
                 "--config.baselines.methods=('truncate', 'svd')" ;;
    esac
  fi
done
if [[ " $STAGES " == *" report "* ]]; then
  $PY experiments/text_mlm/report.py --root="$ROOT" --out="$OUT"
fi
