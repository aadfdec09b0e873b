#!/bin/sh
# test_gguf_js.sh: moelm's GGUF writer against an independent reader, @huggingface/gguf (npm, pinned
# in tests/js/package.json, installed into tests/js/node_modules by scripts/deps.sh and .ci/run).
# test_gguf --write-fixtures writes the file with every metadata type and every tensor type (at
# alignment 32 and 64) and the values it came from; tests/js/gguf_check.mjs reads them with the
# package and checks keys, values, types, tensor infos, offsets and the data bytes.
# Skips (passing) only when node or npm is not installed; ends with "gguf_js: N passed, N failed".
TMP=build/tmp/gguf_js
rm -rf "$TMP"; mkdir -p "$TMP"
. "$(dirname "$0")/lib.sh"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "SKIP gguf_js: node or npm is not installed (the @huggingface/gguf oracle needs both)"
    finish gguf_js
    exit $?
fi
[ -d tests/js/node_modules/@huggingface/gguf ] ||
    (cd tests/js && npm install --no-audit --no-fund --silent >/dev/null 2>&1)
check "@huggingface/gguf installed in tests/js" test -d tests/js/node_modules/@huggingface/gguf
# the test binaries sit beside the moelm binary the Makefile passes (build-san/moelm), or in build/
bindir=$(dirname "${MOELM_BIN:-./moelm}")
[ -x "$bindir/tests/test_gguf" ] || bindir=build
check "fixtures written" "$bindir/tests/test_gguf" --write-fixtures "$TMP"
check "alignment 32 reads as written" node tests/js/gguf_check.mjs "$TMP/rich.gguf" 32 "$TMP/rich.json"
check "alignment 64 reads as written" node tests/js/gguf_check.mjs "$TMP/rich64.gguf" 64 "$TMP/rich.json"
# the check can fail: one Q8_0 weight of the last block set to -128 (the quantizer never writes it)
cp "$TMP/rich.gguf" "$TMP/bad.gguf"
size=$(wc -c <"$TMP/rich.gguf")
printf '\200' | dd of="$TMP/bad.gguf" bs=1 seek=$((size - 10)) conv=notrunc 2>/dev/null
if node tests/js/gguf_check.mjs "$TMP/bad.gguf" 32 "$TMP/rich.json" 2>"$TMP/err"; then bad "a changed weight is caught"
else grep -q "blk.0.ffn_up.weight block 14" "$TMP/err" && ok "a changed weight is caught" || bad "a changed weight is caught: $(cat "$TMP/err")"; fi
finish gguf_js
