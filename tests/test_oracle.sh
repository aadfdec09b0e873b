#!/bin/sh
# test_oracle.sh: the oracle cache (tests/oracle.sh) answers only the question it was asked. A fake
# tool (a shell script that counts its runs, reads a file and stdin, writes a file, prints on both
# streams and exits with a status it is given) is asked through the cache: the second identical call
# does not run it and replays stdout, stderr, the exit status and the written file byte for byte; a
# one-byte change to an input file, to stdin, to an argument or to the tool itself runs it again; a
# failing run is not kept; a damaged entry is a miss; MOELM_ORACLE_CACHE=off always runs; -n asks
# without running. Ends with "oracle: N passed, N failed".
TMP=build/tmp/oracle
rm -rf "$TMP"; mkdir -p "$TMP"
. tests/lib.sh
export MOELM_ORACLE_CACHE="$TMP/cache" MOELM_ORACLE_LOG="$TMP/log"
O=tests/oracle.sh

# the fake tool: tool IN OUT STATUS -> counts, prints IN's and stdin's bytes, writes OUT
cat >"$TMP/tool" <<'EOF'
#!/bin/sh
echo x >>"$(dirname "$0")/runs"
printf 'out:'; cat "$1"; cat
echo "err:$3" >&2
{ cat "$1"; echo written; } >"$2"
exit "$3"
EOF
chmod +x "$TMP/tool"
runs() { wc -l <"$TMP/runs" 2>/dev/null || echo 0; }
ask() { printf '%s' "$1" | $O -i "$TMP/in" -o "$TMP/out" -s -- "$TMP/tool" "$TMP/in" "$TMP/out" "$2" >"$TMP/stdout" 2>"$TMP/stderr"; }

printf 'abc\n' >"$TMP/in"
ask stdin1 0; rc1=$?
cp "$TMP/stdout" "$TMP/stdout1"; cp "$TMP/stderr" "$TMP/stderr1"; cp "$TMP/out" "$TMP/out1"
check "a first call runs the tool (runs: $(runs))" test "$(runs)" = 1 -a $rc1 = 0
rm -f "$TMP/out"
ask stdin1 0; rc2=$?
check "the same call again is answered from the cache (runs: $(runs))" test "$(runs)" = 1 -a $rc2 = 0
check "a hit replays stdout, stderr and the written file byte for byte" \
    sh -c "cmp -s '$TMP/stdout' '$TMP/stdout1' && cmp -s '$TMP/stderr' '$TMP/stderr1' && cmp -s '$TMP/out' '$TMP/out1'"
check "-n: the answer is cached" sh -c "printf stdin1 | $O -n -i '$TMP/in' -o '$TMP/out' -s -- '$TMP/tool' '$TMP/in' '$TMP/out' 0"
check "-n: another stdin's is not" sh -c "! printf stdin9 | $O -n -i '$TMP/in' -o '$TMP/out' -s -- '$TMP/tool' '$TMP/in' '$TMP/out' 0"
check "-n ran nothing, and the log counts one run and one hit" sh -c "test $(runs) = 1 && test \$(grep -c '^run tool' '$TMP/log') = 1 && test \$(grep -c '^hit tool' '$TMP/log') = 1"

printf 'abd\n' >"$TMP/in"
ask stdin1 0
check "a one-byte change to an input file runs the tool (runs: $(runs))" test "$(runs)" = 2
check "... and its answer is the new file's" grep -q abd "$TMP/stdout"
ask stdin2 0
check "a one-byte change to stdin runs the tool (runs: $(runs))" test "$(runs)" = 3
printf 'abd\n' | $O -i "$TMP/in" -o "$TMP/out" -s -- "$TMP/tool" "$TMP/in" "$TMP/out" 00 >/dev/null 2>&1
check "a changed argument runs the tool (runs: $(runs))" test "$(runs)" = 4
echo '# one more line' >>"$TMP/tool"
ask stdin2 0
check "a changed tool runs the tool (runs: $(runs))" test "$(runs)" = 5
ask stdin2 0
check "... and then hits again (runs: $(runs))" test "$(runs)" = 5

ask fail 3; rc=$?
check "a failing run returns its status ($rc) and stderr" sh -c "test $rc = 3 && grep -q 'err:3' '$TMP/stderr'"
ask fail 3
check "a failing run is not kept (runs: $(runs))" test "$(runs)" = 7

ask stdin2 0
for e in "$TMP"/cache/*/; do rm -f "$e/o1"; done
ask stdin2 0
check "an entry without its written file is a miss (runs: $(runs))" sh -c "test $(runs) = 8 && grep -q written '$TMP/out'"
MOELM_ORACLE_CACHE=off ask stdin2 0
MOELM_ORACLE_CACHE=off ask stdin2 0
check "MOELM_ORACLE_CACHE=off always runs the tool (runs: $(runs))" test "$(runs)" = 10
# the tool's hash is kept between calls (tests/oracle.sh's .tools): a one-byte change in place, with
# the size and modification time as before, still runs the tool (the file's change time moved)
r0=$(runs); ask stdin2 0
check "the kept answer hits (runs: $(runs))" test "$(runs)" = "$r0"
before=$(stat -c '%i %s %.9Y' "$TMP/tool"); cp -p "$TMP/tool" "$TMP/tool.ref"
at=$(grep -b -o 'one more line' "$TMP/tool" | cut -d: -f1)
printf 'O' | dd of="$TMP/tool" bs=1 seek="$at" conv=notrunc 2>/dev/null
touch -r "$TMP/tool.ref" "$TMP/tool"
check "the tool's bytes changed in place, its inode, size and modification time kept" \
    sh -c "! cmp -s '$TMP/tool' '$TMP/tool.ref' && test \"\$(stat -c '%i %s %.9Y' '$TMP/tool')\" = '$before'"
ask stdin2 0
check "... and the tool runs again (runs: $(runs))" test "$(runs)" = $((r0 + 1))
expect_error "a missing input file is refused" "input.*cannot be read" $O -i "$TMP/none" -- "$TMP/tool" "$TMP/none" "$TMP/out" 0
finish oracle
