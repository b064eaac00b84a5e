#!/usr/bin/env bash
# XNLI on a real multilingual encoder, on a CPU: does scheduled unfreezing change zero-shot transfer and tr(F)?
#
#   bash experiments/xnli_benchmark.sh curve    # 1. one standard run with English dev every 150 steps: the budget
#   bash experiments/xnli_benchmark.sh sweep    # 2. schedules x seeds at that budget, then zero-shot on 14 languages
#   bash experiments/xnli_benchmark.sh report   # 3. paired differences, Table-2 layout, tr(F) curves and orders
#
# multilingual-e5-small (12 layers, hidden 384) and the MultiNLI subset / XNLI dev sets of ../shared (see README:
# "Results"); task adapters without language adapters (the model has no MLM head). Every setting is identical across
# schedules and the seeds pair the runs: the same seed gives the same data order and the same initial adapters.
# Resumable: run it again and finished runs are skipped, interrupted ones resumed. Each run's JSON (config, log,
# schedule, summary, results) is kept under $ROOT and committed; weights and checkpoints are git-ignored.
#
# ADAPTER=lora: the same runs with a task LoRA instead of the bottleneck adapter, on query and value with r = 12,
# alpha = 12: 221,184 trainable LoRA parameters against the adapter's 226,080 (head: 148,995 in both), into
# ROOT=experiments/results/xnli-e5-lora, schedules standard, gu, fun. Its `report` also pairs standard-lora with the
# bottleneck runs under BOTTLENECK_ROOT (default experiments/results/xnli-e5) seed by seed ($ROOT/tables-vs-bottleneck).
# The budget is the bottleneck curve's, so `all` skips the curve there:
#   ADAPTER=lora bash experiments/xnli_benchmark.sh sweep && ADAPTER=lora bash experiments/xnli_benchmark.sh report
# Environment: PYTHON, ADAPTER, ROOT, BOTTLENECK_ROOT, MODEL, DATA, THREADS, SEEDS (default 1 2 3), SCHEDULES.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
ADAPTER=${ADAPTER:-bottleneck}
case "$ADAPTER" in
  bottleneck) ROOT=${ROOT:-experiments/results/xnli-e5}; SCHEDULES=${SCHEDULES:-standard,gu,fun,lpft,rand}
              ADAPTER_FLAGS=""; BASELINE=standard ;;
  lora) ROOT=${ROOT:-experiments/results/xnli-e5-lora}; SCHEDULES=${SCHEDULES:-standard,gu,fun}
        ADAPTER_FLAGS="--adapter lora --lora-rank 12 --lora-alpha 12"; BASELINE=standard-lora
        BOTTLENECK_ROOT=${BOTTLENECK_ROOT:-experiments/results/xnli-e5} ;;
  *) echo "ADAPTER=$ADAPTER: choose bottleneck or lora" >&2; exit 2 ;;
esac
MODEL=${MODEL:-../shared/models/multilingual-e5-small}
DATA=${DATA:-../shared/data}
THREADS=${THREADS:-2}
SEEDS=${SEEDS:-1 2 3}
# batch 32 x <= 128 tokens, lr 1e-3 (twice the paper's 5e-4 at a quarter of its batch of 128), English dev on a fixed
# 500-example subsample; batches of similar length (--group-by-length) halve the padding on this data
COMMON="--model $MODEL --train-file $DATA/mnli/train.jsonl --dev-file $DATA/xnli/dev-en.tsv --max-dev-samples 500 \
        --batch-size 32 --max-length 128 --lr 1e-3 --group-by-length --threads $THREADS --no-progress $ADAPTER_FLAGS"
# the budget the curve chose: N = 600 steps (2.1 epochs of the 9,000 examples), linear decay to 0 at N (paper §4.3);
# k = 22 ends GU's 11 unfreezes at step 242, 40% of N, as the paper's k·L ≈ 0.4·N; FUN ranks tr(F) on 8 batches per
# unfreeze (paper: 40; 8 keeps FUN's overhead at 11·8 = 88 batches, 15% of N); tr(F) curves every 30 steps
SWEEP="--max-steps 600 --lr-schedule linear --k 22 --eval-every 150 --save-every 150 \
       --fisher-every 30 --fisher-log-batches 2 --fisher-batches 8"
LANGS=ar,bg,de,el,es,fr,hi,ru,sw,th,tr,ur,vi,zh
EVAL="--test-dir $DATA/xnli --test-split dev --max-samples 1000 --languages $LANGS --threads $THREADS --no-progress"

case "${1:-all}" in
  curve|all)
    if [ "$ADAPTER" = lora ] && [ "${1:-all}" = all ]; then
      echo "ADAPTER=lora: the budget is the bottleneck curve's; no curve run (ask for it with: curve)" >&2
    else
      $PY -m experiments.sweep --tasks xnli --schedules standard --seeds 1 --root "$ROOT/curve" \
        --extra "$COMMON --max-steps 1800 --lr-schedule constant --eval-every 150 --save-every 150"
    fi ;;&
  sweep|all)
    for seed in $SEEDS; do  # seed by seed: every finished seed adds a complete set of paired runs
      $PY -m experiments.sweep --tasks xnli --schedules "$SCHEDULES" --seeds "$seed" --root "$ROOT/sweep" \
        --extra "$COMMON $SWEEP" --evaluate "$EVAL"
    done ;;&
  report|all)
    $PY -m experiments.aggregate "$ROOT/sweep" --split dev --paired $BASELINE --out "$ROOT/tables"
    $PY fisher.py plot "$ROOT"/sweep/*/seed* --out "$ROOT/plots" --window 3
    if [ "$ADAPTER" = lora ]; then  # standard-lora (and gu-lora, fun-lora) against bottleneck standard, by seed
      $PY -m experiments.aggregate "$ROOT/sweep" "$BOTTLENECK_ROOT/sweep" --split dev --paired standard \
        --out "$ROOT/tables-vs-bottleneck"
    fi ;;
  curve|sweep|report|all) ;;
  *) echo "usage: bash experiments/xnli_benchmark.sh [curve|sweep|report|all]" >&2; exit 2 ;;
esac
