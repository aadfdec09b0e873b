#!/bin/sh
# Runs every test binary given, adds up their "X: N passed, N failed" lines, and ends with the
# suite's line "N passed, N failed". A binary that crashes or exits non-zero without a summary
# counts as one failure.
#
# MOELM_TEST_JOBS=N runs N tests at once (default 1). Every test binary runs at one thread
# (tests/test.h) and every shell test in its own build/tmp folder, so 2 use both cores of a two-core
# machine (make test: ~half the time); each one's output is kept and printed in the order given, as
# if they had run one after the other. Not the default: the few checks of wall-clock (--time-budget
# ending on time, bench's read bandwidth) have a second of slack, which a busy neighbour can use up
# (seen with test_mpi's four ranks beside test_cli on a shared machine).
jobs=${MOELM_TEST_JOBS:-1}
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for t in "$@"; do printf '%s\n' "$t"; done >"$out/list"
# each job: the i-th path of the list, run from the root, its output and exit status kept by i
seq 1 $# | xargs -P "$jobs" -I{} sh -c 't=$(sed -n "$2p" "$1/list"); cd "$0" && "$t" >"$1/$2.out" 2>&1; echo $? >"$1/$2.rc"' \
    "$root" "$out" {}
passed=0; failed=0; bad=""; i=0
for t in "$@"; do
    i=$((i + 1))
    name=$(basename "$t")
    rc=$(cat "$out/$i.rc" 2>/dev/null || echo 127)
    grep -v '^ok ' "$out/$i.out" 2>/dev/null
    line=$(grep -E '^[a-z_0-9]+: [0-9]+ passed, [0-9]+ failed' "$out/$i.out" 2>/dev/null | tail -n 1)
    if [ -n "$line" ]; then
        p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed.*/\1/')
        f=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed.*/\2/')
        passed=$((passed + p)); failed=$((failed + f))
        if [ "$rc" != 0 ] && [ "$f" = 0 ]; then failed=$((failed + 1)); bad="$bad $name(exit $rc)"; fi
    else
        failed=$((failed + 1)); bad="$bad $name(exit $rc, no summary)"
    fi
done
[ -n "$bad" ] && echo "broken test binaries:$bad"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
