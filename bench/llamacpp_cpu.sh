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
# Prints every round (CPU ms at the two lengths of moelm, the base, llama.cpp) and, per model, type and
# thread count, each program's CPU ms a token two ways: from the least CPU at each length over the
# rounds (set-up noise, e.g. page clearing, only adds, and it is as large as the tokens' own time for the
# 78M model), and the median of the rounds' own differences; then llama.cpp / moelm and base / moelm
# from the first (> 1: moelm needs less CPU a token).
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
least() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 < b + 0) ? a : b }'; }
# CPU ms at the short and the long length: short, long, short again, the lesser short kept (a first run
# after another program's pays for the pages that program left: 0.3-0.9 s of reclaim for the 78M model)
moelm_pair() {   # binary file threads
    a=$(cpu_ms "$1" generate -m "$2" -p the -n 64 --temp 0 -t "$3")
    b=$(cpu_ms "$1" generate -m "$2" -p the -n 448 --temp 0 -t "$3")
    echo "$(least "$a" "$(cpu_ms "$1" generate -m "$2" -p the -n 64 --temp 0 -t "$3")") $b"
}
llama_pair() {   # file threads
    a=$(cpu_ms "$LC/llama-perplexity" -m "$1" -f "$D/text.txt" -c 128 -b 1 -ub 1 -t "$2" --chunks 1)
    b=$(cpu_ms "$LC/llama-perplexity" -m "$1" -f "$D/text.txt" -c 512 -b 1 -ub 1 -t "$2" --chunks 1)
    echo "$(least "$a" "$(cpu_ms "$LC/llama-perplexity" -m "$1" -f "$D/text.txt" -c 128 -b 1 -ub 1 -t "$2" --chunks 1)") $b"
}

for name in $MODELS; do
    for ty in f32 q8_0; do
        f=$D/$name.gguf
        [ "$ty" = q8_0 ] && f=$D/$name.q8.gguf
        for t in $THREADS; do
            r=0
            while [ "$r" -lt "$REPS" ]; do
                m=$(moelm_pair "$BIN" "$f" "$t")
                o="- -"
                [ -n "$BASE" ] && o=$(moelm_pair "$BASE" "$f" "$t")
                echo "$name $ty t=$t moelm $m base $o llama.cpp $(llama_pair "$f" "$t")"
                r=$((r + 1))
            done
        done
    done
done | tee "$D/cpu_runs.txt" | awk '
    # per program: (the least CPU at 448 tokens - the least at 64) / 384: set-up noise only adds, so the
    # minima are its steadiest estimate; and the median of the rounds own differences
    { k = $1 " " $2 " " $3; if (!(k in n)) order[++no] = k; i = ++n[k]
      for (p = 0; p < 3; p++) { s[k, p, i] = $(5 + 3 * p); l[k, p, i] = $(6 + 3 * p); d[k, p, i] = (l[k, p, i] - s[k, p, i]) / 384 } }
    function mn(x, k, p, m,   i, v) { v = x[k, p, 1]; for (i = 2; i <= m; i++) if (x[k, p, i] + 0 < v + 0) v = x[k, p, i]; return v }
    function md(x, k, p, m,   i, j, t, v) { for (i = 1; i <= m; i++) v[i] = x[k, p, i]
        for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
        return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2 }
    function est(k, p, m) { return s[k, p, 1] == "-" ? "-" : sprintf("%.3f %.3f", (mn(l, k, p, m) - mn(s, k, p, m)) / 384, md(d, k, p, m)) }
    { print }
    END { printf "\nms of CPU a token: from the minima, and the median of the rounds\n%-12s %-5s %-4s %-13s %-13s %-13s %s\n",
                 "model", "type", "thr", "moelm", "moelm base", "llama.cpp", "llama.cpp/moelm, base/moelm (minima)"
          for (i = 1; i <= no; i++) { k = order[i]; split(k, q, " "); m = n[k]
              e0 = est(k, 0, m); e1 = est(k, 1, m); e2 = est(k, 2, m); split(e0, a0, " "); split(e1, a1, " "); split(e2, a2, " ")
              printf "%-12s %-5s %-4s %-13s %-13s %-13s %.2fx %s\n", q[1], q[2], q[3], e0, e1, e2, a2[1] / a0[1],
                     e1 == "-" ? "-" : sprintf("%.2fx", a1[1] / a0[1]) } }'
