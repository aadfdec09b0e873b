#!/bin/sh
# test_determinism.sh: at a fixed thread count, two training runs give bit-identical losses (the
# OpenMP loops own whole rows or columns, reductions run in a fixed order, dropout draws are hashes of
# their places (rng_at: no thread draws another's), and BLAS is deterministic at a fixed thread count). Also `moelm bench` runs and
# prints its figures (with the sgemm peak, on 512^3 products, and the read bandwidth once). Ends with "determinism: N passed, N failed".
BIN=${MOELM_BIN:-./moelm}
TMP=build/tmp/determinism
rm -rf "$TMP"; mkdir -p "$TMP"
# The runs at 2 threads wait passively (a wait policy changes no result): on a shared two-core machine
# OpenMP's spinning waits took ~3 s of CPU for each 5-step run of tiny, ~0.3 s passive.
export OMP_WAIT_POLICY=PASSIVE
pass=0; fail=0
check() { name=$1; shift; if "$@"; then pass=$((pass + 1)); echo "ok   $name"; else fail=$((fail + 1)); echo "FAIL $name"; fi; }
losses() { sed -E 's/, "tokens_per_s".*//' "$1/metrics.jsonl"; }   # step, loss, aux_loss, lr, grad_norm

for t in 2 1; do
    for r in a b; do
        $BIN train --config tiny --steps 5 -t $t --log-interval 1 --eval-interval 0 --quiet --out "$TMP/t$t$r" >"$TMP/t$t$r.log" 2>&1
    done
    check "tiny, -t $t: 5 logged losses" test "$(losses "$TMP/t${t}a" | grep -c .)" -ge 5
    check "tiny, -t $t: identical losses in two runs" test "$(losses "$TMP/t${t}a")" = "$(losses "$TMP/t${t}b")"
done
# the seed stack with dropout and the switch router, through the bench command (synthetic tokens)
for r in a b; do
    $BIN bench --config seed-switch --set num_layers=1 --set d_model=64 --set num_heads=4 --set d_ff=128 \
        --set expert_d_ff=128 --set head_hidden=64 --set num_experts=8 --vocab 500 -b 8 --seq-len 12 \
        --steps 3 --warmup 0 -n 5 --no-peak -t 2 >"$TMP/bench$r.log" 2>&1
done
check "bench prints tok/s" grep -q "tok/s" "$TMP/bencha.log"
check "bench: identical loss in two runs" test "$(grep '^train:' "$TMP/bencha.log" | sed 's/.*loss //')" = \
    "$(grep '^train:' "$TMP/benchb.log" | sed 's/.*loss //')"
# with the measurements: the read bandwidth and generation's share of it are figures, and the share
# is generation's GB/s over the read's (kv_step_bytes per token times tok/s); the figures are printed
# to 2 decimals (GB/s) and 4 (the share), so g / r recomputed here is off by up to 0.005 / r from the
# rounding of g (on a busy machine g is ~0.1 GB/s and that is 2e-3) and 0.005 g / r^2 from r's (a slow
# read beside a fast generation: g / r 5.85 at r 4.31 is 7e-3 from r's rounding alone)
$BIN bench --config tiny --steps 1 --warmup 0 -n 20 -t 2 --peak-size 512 >"$TMP/peak.log" 2>&1
res=$(grep '^RESULT' "$TMP/peak.log")
val() { echo "$res" | sed -E "s/.* $1=([-0-9.e]+).*/\1/"; }
check "bench: read bandwidth measured" awk -v r="$(val read_gbs)" 'BEGIN { exit !(r > 0.5) }'
check "bench: generation's share of it" awk -v g="$(val gen_gbs)" -v r="$(val read_gbs)" -v s="$(val gen_read_share)" \
    'BEGIN { t = 0.005 / r + 0.005 * g / (r * r) + 1e-3; exit !(g > 0 && s > 0 && s - g / r < t && g / r - s < t) }'
echo "determinism: $pass passed, $fail failed"
[ "$fail" = 0 ]
