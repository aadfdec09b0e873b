#!/bin/sh
# bench/switch_compare.sh: moelm and PyTorch on the Switch Transformer encoder-decoder, side by side.
#
#   sh bench/switch_compare.sh [CONFIG]      CONFIG: seed-hf-switch (default), switch-t5-ptb, switch-t5-tiny
#   environment: THREADS (2), STEPS (3 timed training steps), WARMUP (1), GEN (30), REPS (2),
#                MOELM (./moelm), PY (/usr/bin/python3), OUT (build/switch_compare)
# Each program runs REPS times, alternating moelm and torch (bench/switch_torch.py, the same model as HF
# writes it); the table shows the medians of their RESULT lines and moelm's ratio to torch. Training:
# a step over batch x (encoder + decoder) tokens of span-corruption shapes (tokens/s counts both);
# generation: batch 1, the encoder once, GEN greedy decoder tokens with a KV cache.
set -u
CFG=${1:-seed-hf-switch}
THREADS=${THREADS:-2}; STEPS=${STEPS:-3}; WARMUP=${WARMUP:-1}; GEN=${GEN:-30}; REPS=${REPS:-2}
MOELM=${MOELM:-./moelm}; PY=${PY:-/usr/bin/python3}; OUT=${OUT:-build/switch_compare}
mkdir -p "$OUT"
JE=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
[ -e "$JE" ] && PRE="LD_PRELOAD=$JE" || PRE=""
: >"$OUT/moelm.$CFG"; : >"$OUT/torch.$CFG"
for r in $(seq "$REPS"); do
    $MOELM bench --config "$CFG" -t "$THREADS" --steps "$STEPS" --warmup "$WARMUP" -n "$GEN" --vocab 10100 --no-peak 2>&1 |
        grep '^RESULT' >>"$OUT/moelm.$CFG"
    env $PRE "$PY" bench/switch_torch.py --config "$CFG" -t "$THREADS" --steps "$STEPS" --warmup "$WARMUP" --gen "$GEN" \
        --vocab 10100 2>&1 | grep '^RESULT' >>"$OUT/torch.$CFG"
done
med() {  # med FILE KEY: the median of KEY=value over the file's lines
    sed -E "s/.* $2=([0-9.]+).*/\1/" "$1" | sort -g | awk '{v[NR]=$1} END{print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'
}
mt=$(med "$OUT/moelm.$CFG" train_tok_s); tt=$(med "$OUT/torch.$CFG" train_tok_s)
mg=$(med "$OUT/moelm.$CFG" gen_tok_s); tg=$(med "$OUT/torch.$CFG" gen_tok_s)
echo "config $CFG, $THREADS threads, $REPS runs each (medians):"
echo "| | moelm | torch | moelm / torch |"
echo "|---|---|---|---|"
awk -v a="$mt" -v b="$tt" 'BEGIN{printf "| train tok/s | %.0f | %.0f | %.2fx |\n", a, b, a / b}'
awk -v a="$mg" -v b="$tg" 'BEGIN{printf "| generate tok/s | %.1f | %.1f | %.2fx |\n", a, b, a / b}'
