#!/bin/sh
# test_llamacpp.sh: llama.cpp as the oracle of moelm's GGUF export (tools in ../shared/tools/llama.cpp:
# llama-simple, llama-tokenize; skips, passing, only when they are absent). A mixtral-tiny model
# (4 experts top-2, 4 query heads over 2 kv heads, a BPE tokenizer with byte fallback) is trained 200
# steps on the built-in corpus and exported to GGUF (f32 and q8_0); llama.cpp loads both, tokenizes
# texts (characters outside the pieces included: byte fallback) into moelm's ids (texts without runs of
# spaces or line breaks: sentencepiece's normalizer collapses spaces and moelm encodes a line at a time,
# llama.cpp does neither), and its greedy
# continuations of several prompts from the f32 file are moelm's tokens (moelm generate --stop-eos: both
# stop at the end-of-text token); the q8_0 file generates too; @huggingface/gguf reads the f32 file's
# keys and tensor shapes against the model's config. llama-simple's answers go through tests/oracle.sh's
# cache (keyed by the file's, the tool's and the prompt's bytes: a later run of the same tree asks
# nothing new; the count is printed), and a changed prompt or one changed byte of the file is shown to
# miss it. Ends with "llamacpp: N passed, N failed".
BIN=${MOELM_BIN:-./moelm}
TMP=build/tmp/llamacpp
rm -rf "$TMP"; mkdir -p "$TMP"
. tests/lib.sh
LC=${LLAMACPP_DIR:-../shared/tools/llama.cpp}
if [ ! -x "$LC/llama-simple" ] || [ ! -x "$LC/llama-tokenize" ]; then
    echo "SKIP llamacpp: llama.cpp's llama-simple and llama-tokenize are not in $LC"
    finish llamacpp
    exit $?
fi
$BIN train --config mixtral-tiny --data builtin --steps 200 -t 1 --quiet --eval-interval 0 --out "$TMP/run" \
    >"$TMP/train.log" 2>&1
check "mixtral-tiny trained 200 steps" test -f "$TMP/run/latest/model.safetensors"
$BIN export -m "$TMP/run" --format gguf -o "$TMP/f32.gguf" >"$TMP/export.log" 2>&1
$BIN export -m "$TMP/run" --format gguf --type q8_0 -o "$TMP/q8.gguf" >>"$TMP/export.log" 2>&1
$BIN export -m "$TMP/run" --format hf -o "$TMP/hf" >>"$TMP/export.log" 2>&1
check "exported f32 and q8_0 GGUF" test -s "$TMP/f32.gguf" -a -s "$TMP/q8.gguf"
check "q8_0 is about a quarter of f32" awk -v a="$(wc -c <"$TMP/q8.gguf")" -v b="$(wc -c <"$TMP/f32.gguf")" 'BEGIN { exit !(a < 0.35 * b) }'

# tokenization: llama-tokenize (BOS first: the separator moelm starts a sequence with) against moelm's ids
tok="$TMP/run/latest/tokenizer.model"
i=0
for text in "the company said it would" "mr. smith 's shares rose 15 %" "naïve café — 3½ × 2 ≠ 7"; do
    i=$((i + 1))
    ours=$(printf '%s' "$text" | $BIN tokenizer encode --model "$tok" --output_format id | tr '\n' ' ' | sed 's/ *$//')
    theirs=$("$LC/llama-tokenize" -m "$TMP/f32.gguf" -p "$text" --ids --no-bos --log-disable 2>/dev/null | tail -1 |
             tr -d '[],' | sed 's/ *$//')
    check "tokenize text $i: llama.cpp's ids are moelm's ($ours)" test -n "$ours" -a "$ours" = "$theirs"
done

# greedy continuations: llama-simple prints "</s>" (its BOS, moelm's separator), the prompt and the text.
# 8 tokens each: llama-simple has no thread option and runs 4 threads that spin at every node's
# barrier, so on a 2-core machine each token costs about a second of CPU; the tiny model repeats a
# token within ~5 anyway (16 tokens cost 3x the whole rest of this test and checked nothing more).
for p in "the company" "in the first" "new york"; do
    oracle -i "$TMP/f32.gguf" -- "$LC/llama-simple" -m "$TMP/f32.gguf" -n 8 "$p" 2>/dev/null | sed 's/^<\/s> //' | tr -d '\n' >"$TMP/lc.txt"
    $BIN generate -m "$TMP/run" --prompt "$p" -n 8 --temp 0 --stop-eos -t 1 2>/dev/null | tr -d '\n' >"$TMP/ours.txt"
    check "greedy f32 '$p': llama.cpp's continuation is moelm's ($(cat "$TMP/ours.txt"))" cmp -s "$TMP/lc.txt" "$TMP/ours.txt"
done
oracle -i "$TMP/q8.gguf" -- "$LC/llama-simple" -m "$TMP/q8.gguf" -n 4 "the company" >"$TMP/q8.txt" 2>"$TMP/q8.err"
check "llama.cpp runs the q8_0 file" sh -c "grep -q 'the company' '$TMP/q8.txt' && grep -q 'decoded' '$TMP/q8.err'"
# the cache of llama.cpp's answers (tests/oracle.sh, keyed by the bytes asked about): another prompt,
# or a one-byte change to the file (its last byte, a weight's), is a question not answered yet
if [ "${MOELM_ORACLE_CACHE:-}" != off ]; then
    answered() { sh tests/oracle.sh -n -i "$TMP/f32.gguf" -- "$LC/llama-simple" -m "$TMP/f32.gguf" -n 8 "$1"; }
    not() { ! "$@"; }
    check "oracle cache: llama.cpp's answer for 'new york' is kept" answered "new york"
    check "oracle cache: another prompt is not answered" not answered "new yorks"
    cp "$TMP/f32.gguf" "$TMP/f32.keep"
    last=$(($(wc -c <"$TMP/f32.gguf") - 1))
    byte=$(od -An -tu1 -j $last "$TMP/f32.gguf" | tr -d ' ')
    printf "\\$(printf '%03o' $(((byte + 1) % 256)))" | dd of="$TMP/f32.gguf" bs=1 seek=$last conv=notrunc 2>/dev/null
    one_byte_miss() { test "$(cmp -l "$TMP/f32.gguf" "$TMP/f32.keep" | wc -l)" = 1 && not answered "new york"; }
    check "oracle cache: the file with one byte changed is not answered" one_byte_miss
    mv "$TMP/f32.keep" "$TMP/f32.gguf"
fi
oracle_count

if command -v node >/dev/null 2>&1 && [ -d tests/js/node_modules/@huggingface/gguf ]; then
    check "@huggingface/gguf reads the keys and shapes" node tests/js/llama_meta.mjs "$TMP/f32.gguf" "$TMP/hf/config.json"
else
    echo "SKIP @huggingface/gguf check: node or tests/js/node_modules missing (scripts/deps.sh installs it)"
fi
# (on PTB's first lines: the refusal needs only a tokenizer, and the built-in corpus's start cost ~1 s)
ptb_lines "$TMP/ptb"
expect_error "gguf of a tokenizer without byte pieces refused" "byte pieces" sh -c \
    "$BIN train --config mixtral-tiny --data '$TMP/ptb' --steps 1 -t 1 --quiet --tokenizer bpe:300 --out '$TMP/nobytes' >/dev/null 2>&1 && $BIN export -m '$TMP/nobytes' --format gguf -o '$TMP/x.gguf'"
finish llamacpp
