#!/bin/sh
# bench/llamacpp_cpu.sh [REPS] [THREADS...]: the CPU time of one generated token, moelm against llama.cpp,
# from the same GGUF files (f32 and q8_0), batch 1 (issue 29, "Speed"). On a machine shared with other
# jobs, wall-clock rates measure the share of the cores each process got; CPU time (perf stat's task-clock
# of the whole process, every thread) measures the work. Each program runs at two lengths and the
# difference is the CPU time of 384 tokens, set-up and loading cancelled:
#   moelm:     moelm generate -m FILE -p the -n 64|448 --temp 0 -t T      (greedy: argmax of the logits)
#   llama.cpp: llama-perplexity -m FILE -f TEXT -c 128|512 -b 1 -ub 1 -t T --chunks 1
#              (64 positions as one batch, then 64|448 single-token decodes through the KV cache; see
#              bench/llamacpp_compare.sh for why this tool)
# At 2 threads the CPU time includes what each program's threads spend waiting for each other (both spin).
# The models are bench/llamacpp_compare.sh's (made by it when missing: llama-7M, mixtral-16M, mixtral-78M),
# exported again as q8_0. MOELM_BASE=BINARY adds a second moelm (an older build) to every round, run
# between the two, so a change is measured against its baseline in the same conditions.
# Prints every round (ms of CPU a token) and, per model, type and thread count, min/median/max of each
# and the ratio of medians llama.cpp / moelm (> 1: moelm needs less CPU a token).
set -u
REPS=${1:-5}; shift 2>/dev/null
THREADS=${*:-1 2}
BIN=${MOELM_BIN:-./moelm}
BASE=${MOELM_BASE:-}
LC=${LLAMACPP_DIR:-../shared/tools/llama.cpp}
D=${BENCH_DIR:-build/bench_llamacpp}
MODELS=${MODELS:-llama-7M mixtral-16M mixtral-78M}
sh "$(dirname "$0")/llamacpp_compare.sh" 0 >/dev/null || exit 1   # makes the models, measures nothing
for name in $MODELS; do
    [ -s "$D/$name.q8.gguf" ] || $BIN export -m "$D/$name" --format gguf --dtype q8_0 -o "$D/$name.q8.gguf" \
        >>"$D/$name.log" 2>&1 || { echo "cannot export $name as q8_0"; exit 1; }
done

cpu_ms() { perf stat -x, -e task-clock -o "$D/perf.txt" "$@" >/dev/null 2>&1; awk -F, '/task-clock/ { print $1 }' "$D/perf.txt"; }
per_tok() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", (b - a) / 384 }'; }   # ms of CPU a token
moelm_tok() {   # binary file threads
    a=$(cpu_ms "$1" generate -m "$2" -p the -n 64 --temp 0 -t "$3")
    b=$(cpu_ms "$1" generate -m "$2" -p the -n 448 --temp 0 -t "$3")
    per_tok "$a" "$b"
}

for name in $MODELS; do
    for ty in f32 q8_0; do
        f=$D/$name.gguf
        [ "$ty" = q8_0 ] && f=$D/$name.q8.gguf
        for t in $THREADS; do
            r=0
            while [ "$r" -lt "$REPS" ]; do
                m=$(moelm_tok "$BIN" "$f" "$t")
                o=-
                [ -n "$BASE" ] && o=$(moelm_tok "$BASE" "$f" "$t")
                a=$(cpu_ms "$LC/llama-perplexity" -m "$f" -f "$D/text.txt" -c 128 -b 1 -ub 1 -t "$t" --chunks 1)
                b=$(cpu_ms "$LC/llama-perplexity" -m "$f" -f "$D/text.txt" -c 512 -b 1 -ub 1 -t "$t" --chunks 1)
                echo "$name $ty t=$t moelm $m base $o llama.cpp $(per_tok "$a" "$b")"
                r=$((r + 1))
            done
        done
    done
done | tee "$D/cpu_runs.txt" | awk '
    { k = $1 " " $2 " " $3; if (!(k in n)) order[++no] = k; n[k]++; a[k, n[k]] = $5; o[k, n[k]] = $7; b[k, n[k]] = $9 }
    function sortv(x, k, m, v,   i, j, t) { for (i = 1; i <= m; i++) v[i] = x[k, i]
        for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t } }
    function med(v, m) { return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2 }
    { print }
    END { printf "\nms of CPU a token, min/med/max\n%-12s %-5s %-4s %20s %20s %20s %9s %9s\n", "model", "type", "thr",
                 "moelm", "moelm base", "llama.cpp", "llama/m", "base/m"
          for (i = 1; i <= no; i++) { k = order[i]; split(k, p, " "); m = n[k]
              sortv(a, k, m, va); sortv(o, k, m, vo); sortv(b, k, m, vb)
              base = vo[1] == "-" ? "-" : sprintf("%.3f/%.3f/%.3f", vo[1], med(vo, m), vo[m])
              rb = vo[1] == "-" ? "-" : sprintf("%.2fx", med(vo, m) / med(va, m))
              printf "%-12s %-5s %-4s %20s %20s %20s %8.2fx %9s\n", p[1], p[2], p[3],
                     sprintf("%.3f/%.3f/%.3f", va[1], med(va, m), va[m]), base,
                     sprintf("%.3f/%.3f/%.3f", vb[1], med(vb, m), vb[m]), med(vb, m) / med(va, m), rb } }'
