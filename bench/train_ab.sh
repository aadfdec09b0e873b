#!/bin/sh
# bench/train_ab.sh OLD NEW [REPS]: training speed of two moelm binaries, interleaved (old, new, old,
# new, ...), REPS runs each (default 5), 2 threads, OpenBLAS's kernel for this CPU (OPENBLAS_CORETYPE set
# for these commands only, from /proc/cpuinfo: Cooperlake with AVX-512 BF16, SkylakeX with AVX-512,
# Haswell with AVX2; CORETYPE=NAME overrides it, CORETYPE=env keeps the environment's); prints every
# run's ms/step, sgemm peak and share of it
# (`moelm bench --steps 5 --warmup 1 -n 0`), then the median and minimum per binary and config.
# CONFIGS (default "dense"): dense, switch32, soft32, switch128 as in bench/compare.sh.
set -u
OLD=$1; NEW=$2; REPS=${3:-5}
CONFIGS=${CONFIGS:-dense}
if [ -z "${CORETYPE:-}" ]; then
    flags=$(grep -m 1 '^flags' /proc/cpuinfo 2>/dev/null)
    case " $flags " in
    *" avx512_bf16 "*) CORETYPE=Cooperlake ;;
    *" avx512f "*) CORETYPE=SkylakeX ;;
    *" avx2 "*) CORETYPE=Haswell ;;
    *) CORETYPE=env ;;
    esac
fi
if [ "$CORETYPE" = env ]; then CT=""; else CT="OPENBLAS_CORETYPE=$CORETYPE"; fi
echo "OpenBLAS core type: ${CT:-as the environment sets it (${OPENBLAS_CORETYPE:-unset})}" >&2
args() {
    case $1 in
    dense) echo "--config seed-moe --set num_experts=1" ;;
    switch32) echo "--config seed-switch" ;;
    soft32) echo "--config seed-gating" ;;
    switch128) echo "--config seed-switch --set num_experts=128" ;;
    *) echo "unknown config $1" >&2; exit 2 ;;
    esac
}
for cfg in $CONFIGS; do
    r=0
    while [ "$r" -lt "$REPS" ]; do
        for side in old new; do
            if [ "$side" = old ]; then bin=$OLD; else bin=$NEW; fi
            # shellcheck disable=SC2046
            line=$(env $CT "$bin" bench $(args "$cfg") -t 2 --steps 5 --warmup 1 -n 0 2>&1 | grep '^RESULT')
            ms=$(echo "$line" | sed -E 's/.* train_ms_step=([0-9.]+).*/\1/')
            pk=$(echo "$line" | sed -E 's/.* sgemm_peak_gflops=([0-9.]+).*/\1/')
            sh=$(echo "$line" | sed -E 's/.* peak_share=([0-9.]+).*/\1/')
            echo "$side $cfg $ms $pk $sh"
        done
        r=$((r + 1))
    done
done | tee /dev/stderr | awk '
    { k = $1 " " $2; if (!(k in n)) order[++no] = k; n[k]++; ms[k, n[k]] = $3; sh[k, n[k]] = $5 }
    function sorted(a, k, m, v,   i, j, t) { for (i = 1; i <= m; i++) v[i] = a[k, i]
        for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t } }
    function med(v, m) { return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2 }
    END { printf "%-4s %-10s %12s %12s %12s %12s\n", "bin", "config", "ms/step med", "ms/step min", "share med", "share max"
          for (i = 1; i <= no; i++) { k = order[i]; split(k, p, " "); m = n[k]
              sorted(ms, k, m, a); sorted(sh, k, m, b)
              printf "%-4s %-10s %12.1f %12.1f %12.3f %12.3f\n", p[1], p[2], med(a, m), a[1], med(b, m), b[m] } }'
