#!/usr/bin/env bash
# The offline benchmark: multilingual-e5-small on ../shared/data, 5 schedules x 3 seeds,
# task adapters without language adapters (the model has no MLM head to train them with).
# Resumable: run it again (any session) and finished runs are skipped, interrupted ones resumed. A finished
# run keeps its config/log/schedule/summary/results JSON under bench/results/offline (committed), so a later
# session, even on a fresh clone, skips it.
#   bash experiments/offline_benchmark.sh            # everything: 3 h 7 min wall on a 2-core CPU (measured; 125 min of it training)
#   bash experiments/offline_benchmark.sh xcopa      # one task
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
ROOT=${ROOT:-bench/results/offline}  # each run's JSON is committed there; weights are git-ignored
MODEL=../shared/models/multilingual-e5-small
DATA=../shared/data
SCHEDULES=standard,lpft,gu,rand,fun
SEEDS=${SEEDS:-1,2,3}
# identical for every schedule; k=8 finishes GU's 11 unfreezes at step 88 (kL < N, paper §7)
COMMON="--model $MODEL --k 8 --fisher-log-batches 1 --fisher-batches 4 --threads 2 --no-progress --save-every 50"

TASKS=" ${*:-xcopa xnli} "

if [[ $TASKS == *" xcopa "* ]]; then
  $PY -m experiments.sweep --tasks xcopa --schedules $SCHEDULES --seeds $SEEDS --root $ROOT/xcopa \
    --extra "$COMMON --train-file $DATA/copa/train.jsonl --dev-file $DATA/copa/val.jsonl \
             --max-steps 200 --batch-size 16 --max-length 64 --lr 1e-4 --lr-schedule constant \
             --eval-every 50 --fisher-every 25" \
    --evaluate "--test-dir $DATA/xcopa --source-file $DATA/copa/test.jsonl --threads 2 --no-progress"
fi
if [[ $TASKS == *" xnli "* ]]; then
  $PY -m experiments.sweep --tasks xnli --schedules $SCHEDULES --seeds $SEEDS --root $ROOT/xnli \
    --extra "$COMMON --train-file $DATA/mnli/train.jsonl --dev-file $DATA/xnli/dev-en.tsv \
             --max-steps 150 --batch-size 16 --max-length 128 --lr 5e-4 --lr-schedule linear \
             --eval-every 50 --max-dev-samples 500 --fisher-every 25" \
    --evaluate "--test-dir $DATA/xnli --test-split dev --max-samples 250 --threads 2 --no-progress \
                --languages ar,bg,de,el,es,fr,hi,ru,sw,th,tr,ur,vi,zh"
fi
$PY -m experiments.aggregate $ROOT/xcopa --split test --out $ROOT/xcopa/tables || true
$PY -m experiments.aggregate $ROOT/xnli --split dev --out $ROOT/xnli/tables || true
