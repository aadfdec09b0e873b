#!/bin/sh
# tokenizer_bench.sh: moelm's SentencePiece-compatible tokenizer side by side with sentencepiece's
# own tools, on PTB (../shared/data/ptb, read only):
#   training time at vocab 8000 (unigram and bpe): moelm tokenizer train vs spm_train
#   encoding speed (MB/s, best of 3) of ptb.train.txt with the same .model: moelm vs spm_encode
# and whether the ids are identical. Prints a Markdown table; writes scratch files to build/bench_tok.
# Usage: bench/tokenizer_bench.sh [MOELM_BINARY]   (default ./moelm, built with make if missing)
set -eu
cd "$(dirname "$0")/.."
M=${1:-./moelm}
[ -x "$M" ] || make -s >/dev/null
command -v spm_train >/dev/null || { echo "spm_train not installed (apt-get install sentencepiece)"; exit 1; }
D=../shared/data/ptb
T=build/bench_tok
mkdir -p "$T"
bytes=$(wc -c < $D/ptb.train.txt)

now() { date +%s.%N; }
best3() {  # command... -> best wall time of 3 runs, in seconds
    best=""
    for _ in 1 2 3; do
        t0=$(now); "$@" > /dev/null 2>&1; t1=$(now)
        t=$(echo "$t1 - $t0" | bc -l)
        if [ -z "$best" ] || [ "$(echo "$t < $best" | bc -l)" = 1 ]; then best=$t; fi
    done
    printf '%.3f' "$best"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')"
echo "sentencepiece: $(dpkg-query -W -f='${Version}' sentencepiece 2>/dev/null || echo unknown); corpus: ptb.train.txt, $bytes bytes"
echo
echo "| model | train: spm_train s | train: moelm s | encode: spm_encode MB/s | encode: moelm MB/s | ids identical | pieces on ptb.test (moelm / spm model) |"
echo "|---|---|---|---|---|---|---|"
for type in unigram bpe; do
    ts=$(best3 spm_train --input=$D/ptb.train.txt --model_prefix=$T/spm_$type --vocab_size=8000 --model_type=$type \
         --normalization_rule_name=identity --minloglevel=2)
    tm=$(best3 "$M" tokenizer train --input=$D/ptb.train.txt --model_prefix=$T/moelm_$type --vocab_size=8000 --model_type=$type)
    es=$(best3 sh -c "spm_encode --model=$T/spm_$type.model --output_format=id < $D/ptb.train.txt")
    em=$(best3 sh -c "$M tokenizer encode --model=$T/spm_$type.model --output_format=id $D/ptb.train.txt")
    spm_encode --model=$T/spm_$type.model --output_format=id < $D/ptb.train.txt > $T/a.ids
    "$M" tokenizer encode --model=$T/spm_$type.model --output_format=id $D/ptb.train.txt > $T/b.ids
    same=$(cmp -s $T/a.ids $T/b.ids && echo yes || echo NO)
    pm=$("$M" tokenizer encode --model=$T/moelm_$type.model --output_format=id $D/ptb.test.txt | wc -w)
    ps=$(spm_encode --model=$T/spm_$type.model --output_format=id < $D/ptb.test.txt | wc -w)
    mbs_s=$(echo "$bytes / $es / 1000000" | bc -l); mbs_m=$(echo "$bytes / $em / 1000000" | bc -l)
    printf '| %s, vocab 8000, identity | %s | %s | %.2f | %.2f | %s | %s / %s = %.4f |\n' "$type" "$ts" "$tm" \
        "$mbs_s" "$mbs_m" "$same" "$pm" "$ps" "$(echo "$pm / $ps" | bc -l)"
done
