#!/bin/sh
# bench/llamacpp_compare.sh [REPS] [THREADS...]: batch-1 generation speed of moelm against llama.cpp on
# the same weights (issue 29, "Speed"). Three Llama-family models (untrained: one step, speed does not
# depend on the weights' values) are exported to f32 GGUF:
#   llama-7M      llama, d_model 256, 6 layers, 8 heads, d_ff 768, vocab 4000 (dense)
#   mixtral-16M   mixtral, d_model 256, 4 layers, 8 heads over 4 kv heads, 8 experts top-2, d_ff 512, vocab 4000
#   mixtral-78M   mixtral, d_model 256, 4 layers, 8 heads over 4 kv heads, 32 experts top-1, d_ff 768, vocab 4000
#                 (moelm's top-1 is router_type switch, which scales the expert by its probability where
#                 llama.cpp's renormalised top-1 scales it by 1: other outputs, the same work)
# Wall-clock: moelm: `moelm generate -m RUN -p the -n 128 --temp 0 -t T`, its own tok/s (the whole generation loop,
# the two prompt tokens included). llama.cpp: `llama-perplexity -m FILE.gguf -c 192 -b 1 -ub 1 -t T
# --chunks 1` on a text: llama.cpp raises the batch to 64 tokens, so it decodes the first 64 positions
# as one batch and then 128 positions one token at a time, each a decode of batch 1 through the KV cache
# (the work of a generated token less the sampling); its "eval time" line is those 128 single-token
# decodes. (`native/llama-bench` is built for AVX-512 and dies with SIGILL on an AVX2-only CPU;
# `llama-simple` takes no thread count and runs ggml's default 4 threads, whose spinning barrier on a
# 2-core machine shared with other jobs made 8 tokens take 45 s: neither measures anything here.)
# The two run in turn, REPS times each per thread count (default 5); prints every run and the min and
# median tok/s of each side and their ratio (moelm / llama.cpp).
# On a machine shared with other jobs wall-clock rates measure the share of the cores each got more
# than the programs, so the script also measures CPU time at 1 thread (perf stat's task-clock of the
# whole process) at two lengths, and takes the difference: moelm -n 64 and -n 320, llama.cpp -c 128 and
# -c 384 (64 and 320 single-token decodes): the CPU time of 256 tokens, set-up and loading cancelled.
set -u
REPS=${1:-5}; shift 2>/dev/null
THREADS=${*:-1 2}
BIN=${MOELM_BIN:-./moelm}
LC=${LLAMACPP_DIR:-../shared/tools/llama.cpp}
D=${BENCH_DIR:-build/bench_llamacpp}
mkdir -p "$D"
[ -x "$LC/llama-perplexity" ] || { echo "no $LC/llama-perplexity"; exit 1; }
# a text of more than 192 tokens for llama.cpp: the start of the README
[ -s "$D/text.txt" ] || awk 'NR <= 400' "$(dirname "$0")/../README.md" >"$D/text.txt"

make_model() {   # name config sets...
    name=$1; cfg=$2; shift 2
    [ -s "$D/$name.gguf" ] && return 0
    # shellcheck disable=SC2068
    $BIN train --config "$cfg" --data ${DATA:-../shared/data/ptb} --tokenizer bpe:4000:bytes --steps 1 -t 2 --quiet --eval-interval 0 \
        --set n_positions=512 $@ --out "$D/$name" >"$D/$name.log" 2>&1 &&
    $BIN export -m "$D/$name" --format gguf -o "$D/$name.gguf" >>"$D/$name.log" 2>&1 || { cat "$D/$name.log"; exit 1; }
}
make_model llama-7M llama-tiny --set d_model=256 --set num_layers=6 --set num_heads=8 --set num_key_value_heads=8 \
    --set d_ff=768
make_model mixtral-16M mixtral-tiny --set d_model=256 --set num_layers=4 --set num_heads=8 --set num_key_value_heads=4 \
    --set d_ff=512 --set num_experts=8 --set num_experts_per_tok=2
make_model mixtral-78M mixtral-tiny --set d_model=256 --set num_layers=4 --set num_heads=8 --set num_key_value_heads=4 \
    --set d_ff=768 --set num_experts=32 --set router_type=switch --set capacity_factor=0 --set eval_capacity_factor=0

# the task-clock (CPU ms) of a command's whole process
cpu_ms() { perf stat -x, -e task-clock -o "$D/perf.txt" "$@" >/dev/null 2>&1; awk -F, '/task-clock/ { print $1 }' "$D/perf.txt"; }

for name in llama-7M mixtral-16M mixtral-78M; do
    for t in $THREADS; do
        r=0
        while [ "$r" -lt "$REPS" ]; do
            m=$($BIN generate -m "$D/$name" -p the -n 128 --temp 0 -t "$t" 2>&1 >/dev/null |
                sed -n -E 's/^generated 128 tokens in .* \(([0-9.]+) tok\/s\)/\1/p')
            l=$("$LC/llama-perplexity" -m "$D/$name.gguf" -f "$D/text.txt" -c 192 -b 1 -ub 1 -t "$t" --chunks 1 2>&1 |
                sed -n -E 's/.* eval time = .* ([0-9.]+) tokens per second\)/\1/p' | grep -v prompt | tail -1)
            echo "$name t=$t moelm ${m:-fail} llama.cpp ${l:-fail}"
            r=$((r + 1))
        done
    done
    r=0
    while [ "$r" -lt "$REPS" ]; do   # CPU time of 256 tokens at 1 thread, as tok/s of CPU time
        m0=$(cpu_ms $BIN generate -m "$D/$name" -p the -n 64 --temp 0 -t 1)
        m1=$(cpu_ms $BIN generate -m "$D/$name" -p the -n 320 --temp 0 -t 1)
        l0=$(cpu_ms "$LC/llama-perplexity" -m "$D/$name.gguf" -f "$D/text.txt" -c 128 -b 1 -ub 1 -t 1 --chunks 1)
        l1=$(cpu_ms "$LC/llama-perplexity" -m "$D/$name.gguf" -f "$D/text.txt" -c 384 -b 1 -ub 1 -t 1 --chunks 1)
        echo "$name cpu1 moelm $(awk -v a="$m0" -v b="$m1" 'BEGIN { printf "%.1f", 256000 / (b - a) }')" \
             "llama.cpp $(awk -v a="$l0" -v b="$l1" 'BEGIN { printf "%.1f", 256000 / (b - a) }')"
        r=$((r + 1))
    done
done | tee "$D/runs.txt" | awk '
    { k = $1 " " $2; if (!(k in n)) order[++no] = k; n[k]++; a[k, n[k]] = $4; b[k, n[k]] = $6 }
    function sortv(x, k, m, v,   i, j, t) { for (i = 1; i <= m; i++) v[i] = x[k, i]
        for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t } }
    function med(v, m) { return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2 }
    { print }
    END { printf "\n%-12s %-5s %23s %23s %12s\n", "model", "how", "moelm tok/s min/med/max", "llama.cpp min/med/max", "ratio (med)"
          for (i = 1; i <= no; i++) { k = order[i]; split(k, p, " "); m = n[k]
              sortv(a, k, m, va); sortv(b, k, m, vb)
              printf "%-12s %-5s %7.0f/%7.0f/%7.0f %7.0f/%7.0f/%7.0f %11.2fx\n", p[1], p[2], va[1], med(va, m), va[m],
                     vb[1], med(vb, m), vb[m], med(va, m) / med(vb, m) } }'
