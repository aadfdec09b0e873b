#!/bin/sh
# Runs every test binary given, adds up their "X: N passed, N failed" lines, and ends with the
# suite's line "N passed, N failed". A binary that crashes or exits non-zero without a summary
# counts as one failure.
passed=0; failed=0; bad=""
for t in "$@"; do
    name=$(basename "$t")
    out=$(cd "$(dirname "$0")/.." && "$t" 2>&1); rc=$?
    printf '%s\n' "$out" | grep -v '^ok ' 
    line=$(printf '%s\n' "$out" | grep -E '^[a-z_0-9]+: [0-9]+ passed, [0-9]+ failed' | tail -n 1)
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
