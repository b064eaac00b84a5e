#!/usr/bin/env bash
# MAD-X on a CPU: language adapters trained with MLM on real text, then the XNLI benchmark with Stack(language, task).
#
#   bash experiments/madx_benchmark.sh head       # 1. one MLM head on the frozen encoder, text of all 15 languages
#   bash experiments/madx_benchmark.sh adapters   # 2. a language adapter per language, against that frozen head
#   bash experiments/madx_benchmark.sh sweep      # 3. standard / gu / fun x seeds with Stack(en, task); zero-shot with
#                                                 #    each target's own adapter swapped in
#   bash experiments/madx_benchmark.sh check      # 4. standard seed 1 again, every target with the English adapter
#   bash experiments/madx_benchmark.sh report     # 5. paired differences, Stack vs task adapter alone, plots
#
# The sibling of experiments/xnli_benchmark.sh (same model, data, budget and seeds), with the part of MAD-X that one
# leaves out. multilingual-e5-small has no pretrained MLM head, and MAD-X trains every language adapter against the
# same frozen pretrained head, so that swapping adapters changes the language, not the output space the task adapter
# reads. We reproduce that: first fit one head (transform + output bias; the decoder is the tied, frozen input
# embeddings) on the frozen encoder without adapters, on ../shared/data/text (15 languages); freeze it; then train each
# language adapter against it (MAD-X's: reduction factor 2, invertible adapter). Every 20th line of each text file is
# held out (fun/mlm.py), so each language has its own dev MLM loss, logged before (step 0, with and without the
# adapter) and during training.
# Resumable: run it again and finished runs are skipped, interrupted ones resumed. Each run's JSON is kept and
# committed; weights and checkpoints are git-ignored. A clean checkout therefore has the committed runs' JSON but not
# their adapters: to reproduce everything, give a fresh ROOT (ROOT=runs/madx bash experiments/madx_benchmark.sh all).
# Environment: PYTHON, ROOT, MODEL, DATA, THREADS, SEEDS, SCHEDULES, LANGS (the target languages with an adapter).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
ROOT=${ROOT:-experiments/results/xnli-e5-madx}
MODEL=${MODEL:-../shared/models/multilingual-e5-small}
DATA=${DATA:-../shared/data}
THREADS=${THREADS:-2}
SEEDS=${SEEDS:-1 2 3}
SCHEDULES=${SCHEDULES:-standard,gu,fun}
# English plus six targets across resource levels (de, zh high; ar, hi, th mid; sw low): about 3 CPU-hours for the head
# and seven adapters on 2 cores; all 14 XNLI targets would halve each adapter's training in the same time
LANGS=${LANGS:-ar,de,hi,sw,th,zh}
ALL_TEXT=$(ls "$DATA"/text/*.txt | sort | paste -sd, -)
HEAD="$ROOT/mlm-head/mlm-standard/seed1"
la() { echo "$ROOT/lang-adapters/$1/mlm-standard/seed1/best"; }
MLM="--task mlm --model $MODEL --max-length 128 --group-by-length --threads $THREADS --no-progress"
# lr 1e-3 (App. B: 1e-4 over up to 100 epochs; these runs have a few hundred steps), constant
# the head: batch 64, 600 steps (38,400 sequences of the 520k lines), dev = 750 held-out lines of all languages
HEAD_FLAGS="--mlm-train head --mlm-head new --train-file $ALL_TEXT --batch-size 64 --lr 1e-3 --max-steps 600 \
            --eval-every 200 --save-every 100 --max-dev-samples 750"
# each adapter: batch 32, 300 steps (9,600 sequences), dev = 300 held-out lines of its language
ADAPTER_FLAGS="--batch-size 32 --lr 1e-3 --max-steps 300 --eval-every 100 --save-every 50 --max-dev-samples 300"

# the task runs: exactly xnli_benchmark.sh's settings, plus the English language adapter under the task adapter
COMMON="--model $MODEL --train-file $DATA/mnli/train.jsonl --dev-file $DATA/xnli/dev-en.tsv --max-dev-samples 500 \
        --batch-size 32 --max-length 128 --lr 1e-3 --group-by-length --threads $THREADS --no-progress"
SWEEP="--max-steps 600 --lr-schedule linear --k 22 --eval-every 150 --save-every 150 \
       --fisher-every 30 --fisher-log-batches 2 --fisher-batches 8"
weights() {  # the stages after `adapters` need the trained weights, which git does not keep
  local dir
  for dir in "$HEAD/best" "$(la en)" $(for l in ${LANGS//,/ }; do la "$l"; done); do
    if [ ! -f "$dir/adapter.safetensors" ]; then
      echo "madx_benchmark.sh: $dir has no adapter.safetensors. The committed results keep configs and logs," \
           "not weights; reproduce from scratch in a fresh directory:" \
           "ROOT=runs/madx bash experiments/madx_benchmark.sh all" >&2
      exit 1
    fi
  done
}
own_adapters() { local IFS=,; for l in $LANGS; do printf '%s=%s,' "$l" "$(la "$l")"; done | sed 's/,$//'; }
english_everywhere() { local IFS=,; for l in $LANGS; do printf '%s=%s,' "$l" "$(la en)"; done | sed 's/,$//'; }
EVAL="--test-dir $DATA/xnli --test-split dev --max-samples 1000 --threads $THREADS --no-progress --languages $LANGS"

case "${1:-all}" in
  head|all)
    $PY -m experiments.sweep --tasks mlm --schedules standard --seeds 1 --root "$ROOT/mlm-head" \
      --extra "$MLM $HEAD_FLAGS" ;;&
  adapters|all)
    for lang in en ${LANGS//,/ }; do
      $PY -m experiments.sweep --tasks mlm --schedules standard --seeds 1 --root "$ROOT/lang-adapters/$lang" \
        --extra "$MLM $ADAPTER_FLAGS --lang $lang --train-file $DATA/text/$lang.txt --mlm-head $HEAD/best"
    done ;;&
  sweep|all)
    weights
    for seed in $SEEDS; do  # seed by seed: every finished seed adds a complete set of paired runs
      $PY -m experiments.sweep --tasks xnli --schedules "$SCHEDULES" --seeds "$seed" --root "$ROOT/sweep" \
        --extra "$COMMON $SWEEP --lang-adapter en=$(la en)" --evaluate "$EVAL --lang-adapters $(own_adapters)"
    done ;;&
  check|all)  # do the adapters carry language? the same task adapter, each target with the English adapter instead
    out="$ROOT/check/standard-seed1-english-adapter.json"
    if [ ! -f "$out" ]; then
      weights
      $PY evaluate.py "$ROOT/sweep/xnli-standard/seed1" $EVAL --lang-adapters "$(english_everywhere)" --output "$out"
    fi ;;&
  report|all)
    $PY -m experiments.lang_adapters "$ROOT/mlm-head" "$ROOT/lang-adapters" --out "$ROOT/tables"
    $PY -m experiments.aggregate "$ROOT/sweep" --split dev --paired standard --out "$ROOT/tables"
    # the language adapters' own effect: Stack(language, task) against the task adapter alone (xnli_benchmark.sh's
    # runs), paired by seed, on the languages both evaluated
    $PY -m experiments.aggregate experiments/results/xnli-e5/sweep stack="$ROOT/sweep" --split dev --paired standard \
      --languages "$LANGS" --out "$ROOT/tables-vs-no-lang-adapter"
    $PY fisher.py plot "$ROOT"/sweep/*/seed* --out "$ROOT/plots" --window 3 ;;
  head|adapters|sweep|check|report|all) ;;
  *) echo "usage: bash experiments/madx_benchmark.sh [head|adapters|sweep|check|report|all]" >&2; exit 2 ;;
esac
