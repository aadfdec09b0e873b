#!/bin/sh
# bench/gen_ab.sh OLD NEW [REPS] [THREADS]: generation speed of two moelm binaries, interleaved (old,
# new, old, new, ...) on the seed configs and a small mixtral, REPS runs each (default 3), THREADS
# threads (default 2); prints every run's float and bf16 tok/s (`moelm bench --steps 0 -n 100
# --no-peak`) and the medians per binary and config.
set -u
OLD=$1; NEW=$2; REPS=${3:-3}; THREADS=${4:-2}
for cfg in "seed-gating" "seed-switch" "seed-moe --set num_experts=1" "seed-switch --set num_experts=128" \
           "mixtral-ptb" "mixtral-tiny"; do
    r=0
    while [ "$r" -lt "$REPS" ]; do
        for side in old new; do
            if [ "$side" = old ]; then bin=$OLD; else bin=$NEW; fi
            # shellcheck disable=SC2086
            line=$("$bin" bench --config $cfg --steps 0 -n 100 -t "$THREADS" --no-peak 2>&1 | grep '^RESULT')
            f=$(echo "$line" | sed -E 's/.* gen_tok_s=([0-9.]+).*/\1/')
            b=$(echo "$line" | sed -E 's/.* gen_bf16_tok_s=([0-9.]+).*/\1/')
            echo "$side $(echo "$cfg" | tr ' ' '_') $f $b"
        done
        r=$((r + 1))
    done
done | tee /dev/stderr | awk '
    { k = $1 " " $2; if (!(k in n)) order[++no] = k; n[k]++; f[k, n[k]] = $3; b[k, n[k]] = $4 }
    function med(a, k, m,   i, j, t, v) { for (i = 1; i <= m; i++) v[i] = a[k, i]
        for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
        return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2 }
    END { printf "%-4s %-36s %10s %10s\n", "bin", "config", "float med", "bf16 med"
          for (i = 1; i <= no; i++) { k = order[i]; split(k, p, " ")
              printf "%-4s %-36s %10.1f %10.1f\n", p[1], p[2], med(f, k, n[k]), med(b, k, n[k]) } }'
