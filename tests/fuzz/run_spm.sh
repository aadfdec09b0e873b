#!/bin/sh
# run_spm.sh SECONDS: builds the SentencePiece .model fuzz target (clang, libFuzzer + ASan + UBSan)
# and runs it for SECONDS seconds (default 60) on a seed corpus of small models: spm_train's when
# sentencepiece is installed, plus hand-made ones. Exits non-zero when the target finds a crash,
# a leak or a broken property (the reproducer is left in build/fuzz/).
set -eu
secs=${1:-60}
cd "$(dirname "$0")/../.."
out=build/fuzz
corpus=$out/corpus_spm
mkdir -p "$corpus"
CC=${CC_FUZZ:-clang}
flags="-std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -Wno-unknown-pragmas -Iinclude -Isrc"
# shellcheck disable=SC2086
$CC $flags tests/fuzz/fuzz_spm_model.c src/tokenizer/spm_model.c src/tokenizer/spm_core.c \
    src/tokenizer/tokenizer.c src/tokenizer/sentinels.c src/tokenizer/spm_train.c src/io/fileio.c src/common/util.c -o "$out/fuzz_spm_model" -lm

# ---- seeds: small real models (unigram/bpe, identity/nmt_nfkc, byte fallback, user symbols) ----
if command -v spm_train >/dev/null 2>&1; then
    txt=$out/spm_seed.txt
    printf 'the cat sat on the mat\nhello world\n\xef\xbd\x81\xe2\x91\xa0 caf\xc3\xa9\nthe end of the world\n' > "$txt"
    for i in 1 2 3 4 5 6; do cat "$txt"; done > "$txt.big"
    spm_train --input="$txt.big" --model_prefix="$corpus/uni" --vocab_size=40 --model_type=unigram \
        --hard_vocab_limit=false --minloglevel=2 >/dev/null 2>&1 || true
    spm_train --input="$txt.big" --model_prefix="$corpus/bpe" --vocab_size=40 --model_type=bpe \
        --normalization_rule_name=identity '--user_defined_symbols=<sep>' --hard_vocab_limit=false \
        --minloglevel=2 >/dev/null 2>&1 || true
    spm_train --input="$txt.big" --model_prefix="$corpus/bytes" --vocab_size=300 --model_type=bpe \
        --byte_fallback=true --hard_vocab_limit=false --minloglevel=2 >/dev/null 2>&1 || true
    rm -f "$corpus"/*.vocab
fi
# a minimal hand-made model: <unk>, <s>, </s>, U+2581, a, b
printf '\n\t\n\005<unk>\030\002\n\007\n\003<s>\030\003\n\010\n\004</s>\030\003\n\014\n\003\342\226\201\025\000\000\200\277\n\010\n\001a\025\000\000\000\300' > "$corpus/min"

"$out/fuzz_spm_model" -max_total_time="$secs" -max_len=400000 -timeout=20 -rss_limit_mb=4096 \
    -artifact_prefix="$out/" "$corpus"
