#!/bin/sh
# ptb_compare.sh MINUTES [THREADS] [PARALLEL]: trains each model of the comparison on Penn Treebank
# for the same wall-clock budget (evaluation included) and prints a table of validation word-level
# perplexity. Models at equal active FLOPs per token: dense, switch E=8 and E=32, top-2 (expert
# d_ff halved so that two experts cost one), hash E=8; and the tutorial's three seed presets at
# their own sizes. PARALLEL=2 runs two trainings at a time with THREADS each (default: 1 thread,
# 2 at a time, which uses both cores and gives every model the same conditions).
# Runs go to runs/compare/<name>; the kernel choice (OPENBLAS_CORETYPE) is the caller's.
set -u
MIN=${1:-5}; T=${2:-1}; PAR=${3:-2}
BIN=${MOELM_BIN:-./moelm}
DATA=${PTB:-../shared/data/ptb}
OUT=runs/compare
mkdir -p "$OUT"
run() {
    name=$1; shift
    rm -rf "$OUT/$name"
    "$BIN" train --data "$DATA" --time-budget "$MIN" --steps 100000000 --eval-interval 200 --log-interval 50 \
        -t "$T" --out "$OUT/$name" "$@" >"$OUT/$name.log" 2>&1
}
jobs_run=0
launch() {
    run "$@" &
    jobs_run=$((jobs_run + 1))
    if [ "$jobs_run" -ge "$PAR" ]; then wait; jobs_run=0; fi
}
launch dense       --config dense-ptb
launch switch-e8   --config switch-ptb
launch switch-e32  --config switch-ptb --set num_experts=32
launch top2-e8     --config switch-ptb --set router_type=topk --set num_experts_per_tok=2 --set expert_d_ff=512
launch hash-e8     --config switch-ptb --set router_type=hash
launch seed-moe    --config seed-moe
launch seed-gating --config seed-gating
launch seed-switch --config seed-switch
wait
printf '%-12s %8s %10s %12s %12s %s\n' model steps tok/s "val loss" "val word ppl" "moe (last eval): dropped, top-1 prob, dead"
for d in dense switch-e8 switch-e32 top2-e8 hash-e8 seed-moe seed-gating seed-switch; do
    f="$OUT/$d/metrics.jsonl"
    [ -f "$f" ] || { printf '%-12s (no run)\n' "$d"; continue; }
    last=$(grep val_word_ppl "$f" | tail -n 1)
    steps=$(echo "$last" | sed -E 's/.*"step": ([0-9]+).*/\1/')
    tps=$(grep -o '"tokens_per_s": [0-9.]*' "$f" | tail -n 5 | awk '{s+=$2; n++} END {printf "%.0f", n ? s/n : 0}')
    vl=$(echo "$last" | sed -E 's/.*"val_loss": ([0-9.]+).*/\1/')
    wp=$(echo "$last" | sed -E 's/.*"val_word_ppl": ([0-9.]+).*/\1/')
    moe=$(echo "$last" | grep -o '"dropped": [0-9.]*, "entropy": [0-9.]*, "top1": [0-9.]*, "dead": [0-9]*' | \
          sed -E 's/"dropped": ([0-9.]*), "entropy": [0-9.]*, "top1": ([0-9.]*), "dead": ([0-9]*)/\1 \2 \3/' | \
          awk '{printf "[%.3f %.3f %d] ", $1, $2, $3}')
    printf '%-12s %8s %10s %12s %12s %s\n' "$d" "$steps" "$tps" "$vl" "$wp" "$moe"
done
