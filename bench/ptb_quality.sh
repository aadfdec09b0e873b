#!/bin/sh
# ptb_quality.sh MINUTES [SEEDS] [THREADS] [PARALLEL]: issue 9's measurement. Trains dense-ptb and
# switch-ptb on Penn Treebank for MINUTES of wall-clock each (--time-budget: the schedule, the
# periodic evaluations and the final whole-split validation all fit in it), for every seed in SEEDS
# (default "1"), with THREADS threads (default 2); PARALLEL=2 trains dense and switch of one seed
# side by side (use THREADS=1 then: both get the same conditions). After training, each run's test
# split is evaluated once, with non-overlapping windows (as the validation) and with sliding windows
# (stride 16: each word sees at least 48 words before it). Runs go to $OUT/<model>-s<seed> (default runs/quality);
# a checkpoint every $CKPT steps (default 1000) and at the end.
# Prints one line per run and, with several seeds, the mean and spread (min..max) per model and of
# the switch - dense gap. The kernel (OPENBLAS_CORETYPE) is the caller's.
set -u
MIN=${1:-15}; SEEDS=${2:-1}; T=${3:-2}; PAR=${4:-1}
BIN=${MOELM_BIN:-./moelm}
DATA=${PTB:-../shared/data/ptb}
OUT=${OUT:-runs/quality}
CKPT=${CKPT:-1000}   # steps between checkpoints (a switch-ptb one with its Adam moments is 158 MB)
mkdir -p "$OUT"
train() {   # train MODEL SEED
    d="$OUT/$1-s$2"
    rm -rf "$d"
    "$BIN" train --data "$DATA" --config "$1-ptb" --seed "$2" --time-budget "$MIN" --steps 100000000 \
        --eval-interval 200 --eval-batches 20 --log-interval 50 --ckpt-interval "$CKPT" -t "$T" --quiet --out "$d" \
        >"$d.log" 2>&1
    "$BIN" eval -m "$d" --data "$DATA" -t "$T" >"$d.test" 2>&1
    "$BIN" eval -m "$d" --data "$DATA" --stride 16 -t "$T" >"$d.test16" 2>&1
}
for s in $SEEDS; do
    if [ "$PAR" -ge 2 ]; then train dense "$s" & train switch "$s"; wait
    else train dense "$s"; train switch "$s"; fi
done
printf '%-8s %5s %6s %8s %8s %10s %12s %14s\n' model seed steps tok/s minutes "valid ppl" "test ppl" "test ppl (s16)"
for m in dense switch; do
    for s in $SEEDS; do
        d="$OUT/$m-s$s"
        last=$(grep val_word_ppl "$d/metrics.jsonl" | tail -n 1)
        steps=$(echo "$last" | sed -E 's/.*"step": ([0-9]+).*/\1/')
        vp=$(echo "$last" | sed -E 's/.*"val_word_ppl": ([0-9.]+).*/\1/')
        el=$(grep -o '"elapsed_s": [0-9.]*' "$d/latest/state.json" | cut -d' ' -f2)
        tps=$(grep -o '"tokens_per_s": [0-9.]*' "$d/metrics.jsonl" | tail -n 10 | awk '{s+=$2; n++} END {printf "%.0f", n ? s/n : 0}')
        tp=$(grep 'word-level perplexity' "$d.test" | awk '{print $NF}')
        tp16=$(grep 'word-level perplexity' "$d.test16" | awk '{print $NF}')
        printf '%-8s %5s %6s %8s %8.2f %10.2f %12.2f %14.2f\n' "$m" "$s" "$steps" "$tps" "$(echo "$el / 60" | bc -l)" "$vp" "$tp" "$tp16"
    done
done | tee "$OUT/table.txt"
# mean and spread over seeds, per model and of the gap (switch - dense, per seed)
awk '{ v[$1, $2] = $6; t[$1, $2] = $7; seeds[$2] = 1; models[$1] = 1 }
     END {
        for (m in models) {
            n = 0; sv = 0; st = 0; lo = 1e9; hi = 0
            for (s in seeds) { n++; sv += v[m, s]; st += t[m, s]; if (v[m, s] < lo) lo = v[m, s]; if (v[m, s] > hi) hi = v[m, s] }
            if (n > 1) printf "%-8s valid ppl mean %.2f (min %.2f, max %.2f over %d seeds), test mean %.2f\n", m, sv / n, lo, hi, n, st / n
        }
        n = 0; g = 0; lo = 1e9; hi = -1e9
        for (s in seeds) { d = v["switch", s] - v["dense", s]; n++; g += d; if (d < lo) lo = d; if (d > hi) hi = d }
        if (n > 1) printf "gap switch - dense, valid ppl: mean %.2f (min %.2f, max %.2f over %d seeds)\n", g / n, lo, hi, n
     }' "$OUT/table.txt"
