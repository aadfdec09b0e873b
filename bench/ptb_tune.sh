#!/bin/sh
# ptb_tune.sh [PARALLEL]: the tuning sweep behind the PTB presets (issue 9; bench/RESULTS.md).
# Each run trains on ../shared/data/ptb for a fixed number of tokens (about 1M, 1.1 epochs: 500
# steps of 32 x 64, 1000 of 16 x 64, ...), with the cosine schedule laid over those steps, and is
# scored on the whole validation split at its end. Fixed steps rather than a time budget: the
# result then does not depend on how busy the machine is, so PARALLEL runs (default 2, one thread
# each) can share it. Runs go to runs/tune/<name>; the table to runs/tune/RESULTS.
set -u
PAR=${1:-2}
BIN=${MOELM_BIN:-./moelm}
DATA=${PTB:-../shared/data/ptb}
OUT=runs/tune
mkdir -p "$OUT"
one() {   # one NAME STEPS ARGS...
    name=$1; steps=$2; shift 2
    rm -rf "$OUT/$name"
    "$BIN" train --data "$DATA" --steps "$steps" --eval-interval 0 --log-interval 50 -t 1 --quiet --keep 1 \
        --out "$OUT/$name" "$@" >"$OUT/$name.log" 2>&1
    vp=$(grep -o '"val_word_ppl": [0-9.]*' "$OUT/$name/metrics.jsonl" | tail -n 1 | cut -d' ' -f2)
    echo "$name | $steps steps | $* | valid word ppl $vp" >>"$OUT/RESULTS"
}
n=0
while read -r name steps args; do
    [ -z "$name" ] && continue
    # shellcheck disable=SC2086
    one "$name" "$steps" $args &
    n=$((n + 1))
    if [ "$n" -ge "$PAR" ]; then wait; n=0; fi
done <<'LIST'
b32-lr1e-3   500 --config dense-ptb -b 32 --set warmup_steps=50 --set dropout_rate=0.3
b32-lr5e-4   500 --config dense-ptb -b 32 --set warmup_steps=50 --set dropout_rate=0.3 --lr 5e-4
b32-lr2e-3   500 --config dense-ptb -b 32 --set warmup_steps=50 --set dropout_rate=0.3 --lr 2e-3
b32-lr3e-3   500 --config dense-ptb -b 32 --set warmup_steps=50 --set dropout_rate=0.3 --lr 3e-3
b16          1000 --config dense-ptb -b 16 --set warmup_steps=100 --set dropout_rate=0.3
b8           2000 --config dense-ptb -b 8 --set warmup_steps=200 --set dropout_rate=0.3
b16-t128     500 --config dense-ptb -b 16 --seq-len 128 --set warmup_steps=50 --set dropout_rate=0.3
b16-2layers  1400 --config dense-ptb -b 16 --set warmup_steps=100 --set dropout_rate=0.3 --set num_layers=2
b16-drop0.2  1000 --config dense-ptb -b 16 --set warmup_steps=100 --set dropout_rate=0.2
b16-drop0.1  1000 --config dense-ptb -b 16 --set warmup_steps=100 --set dropout_rate=0.1
switch-b16   1000 --config switch-ptb -b 16 --set warmup_steps=100 --set dropout_rate=0.3
switch-b16-drop0.2 1000 --config switch-ptb -b 16 --set warmup_steps=100 --set dropout_rate=0.2
LIST
wait
cat "$OUT/RESULTS"
