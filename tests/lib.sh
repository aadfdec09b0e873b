# lib.sh: the shell tests' harness, sourced by tests/test_*.sh after they set TMP.
#   ok NAME / bad NAME          count a result and print it
#   check NAME CMD...           ok when CMD succeeds
#   expect_error NAME ERE CMD...  ok when CMD exits 1..127 (exactly $EXPECT_RC when set), writes
#                               exactly one line to stderr, and that line matches the extended regex
#   finish SUITE                prints "SUITE: N passed, N failed"; exit status non-zero on failure
#   ptb_lines DIR               PTB's first lines as a small corpus folder (below)
#   mean_last_loss RUN          the mean of the last 5 steps' losses of a run's metrics.jsonl (one
#                               batch's loss moves by ~0.1 from step to step: a learning check's end)
#   oracle [-i FILE]... -- TOOL ARG...  runs an external oracle (reading the -i files) through
#                               tests/oracle.sh's cache of answers, logged to $TMP/oracle.log
#   oracle_count                prints how many oracle answers came from the cache and how many ran
pass=0; fail=0
ok()   { pass=$((pass + 1)); echo "ok   $1"; }
bad()  { fail=$((fail + 1)); echo "FAIL $1"; }
check() { name=$1; shift; if "$@"; then ok "$name"; else bad "$name"; fi; }
expect_error() {
    name=$1; pat=$2; shift 2
    "$@" >"$TMP/out" 2>"$TMP/err" </dev/null; rc=$?
    lines=$(wc -l <"$TMP/err")
    if [ "$rc" -gt 0 ] && [ "$rc" -lt 128 ] && { [ -z "${EXPECT_RC:-}" ] || [ "$rc" = "$EXPECT_RC" ]; } &&
       [ "$lines" = 1 ] && grep -qE -- "$pat" "$TMP/err"; then ok "$name"
    else bad "$name (rc=$rc, $lines stderr lines: $(head -c 300 "$TMP/err"))"; fi
}
# ptb_lines DIR: PTB's first lines (1,500 for training, 100 each for validation and test) as
# DIR/ptb.{train,valid,test}.txt, a corpus for runs whose checks need no larger one: on the built-in
# corpus each start tokenized it and each final evaluation took its whole split (~0.25 s of CPU a run)
ptb_lines() {
    mkdir -p "$1"
    for s in train:1500 valid:100 test:100; do head -n "${s#*:}" "../shared/data/ptb/ptb.${s%:*}.txt" >"$1/ptb.${s%:*}.txt"; done
}
mean_last_loss() { grep -o '"loss": [0-9.]*' "$1/metrics.jsonl" | tail -n 5 | awk '{ s += $2 } END { if (NR) printf "%.4f\n", s / NR }'; }
oracle() { MOELM_ORACLE_LOG="$TMP/oracle.log" sh tests/oracle.sh "$@"; }
oracle_count() {
    echo "oracle answers: $(cat "$TMP/oracle.log" 2>/dev/null | grep -c '^hit') from the cache" \
         "(${MOELM_ORACLE_CACHE:-build/oracle-cache}), $(cat "$TMP/oracle.log" 2>/dev/null | grep -c '^run') run"
}
finish() {
    echo "$1: $pass passed, $fail failed"
    [ "$fail" = 0 ]
}
