# lib.sh: the shell tests' harness, sourced by tests/test_*.sh after they set TMP.
#   ok NAME / bad NAME          count a result and print it
#   check NAME CMD...           ok when CMD succeeds
#   expect_error NAME ERE CMD...  ok when CMD exits 1..127 (exactly $EXPECT_RC when set), writes
#                               exactly one line to stderr, and that line matches the extended regex
#   finish SUITE                prints "SUITE: N passed, N failed"; exit status non-zero on failure
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
finish() {
    echo "$1: $pass passed, $fail failed"
    [ "$fail" = 0 ]
}
