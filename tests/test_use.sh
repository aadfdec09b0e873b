#!/bin/sh
# test_use.sh: what a user meets after training: generation past the model's positions (the context
# slides), warnings for prompt words and eval text the vocabulary lacks, interactive generation with
# the KV cache kept between prompts. Ends with "use: N passed, N failed"; non-zero exit on failure.
BIN=${MOELM_BIN:-./moelm}
TMP=build/tmp/use
rm -rf "$TMP"; mkdir -p "$TMP"
. "$(dirname "$0")/lib.sh"

T="-t 1 --quiet"
# a small word model of the built-in corpus (64 positions)
$BIN train --config tiny --steps 200 -b 16 --seq-len 32 --eval-interval 0 --eval-batches 2 --out "$TMP/w" $T >/dev/null 2>&1
check "trained a tiny word model" test -f "$TMP/w/latest/model.safetensors"

# 1. -n past n_positions: the context slides and all the tokens come
$BIN generate -m "$TMP/w" -n 200 --seed 3 -t 1 >"$TMP/long.txt" 2>"$TMP/long.err"
check "generate -n 200 on 64 positions makes 200 tokens" grep -q "generated 200 tokens" "$TMP/long.err"
check "generate says the context slid" grep -q "context of 64 positions was full" "$TMP/long.err"
words=$(wc -w <"$TMP/long.txt")
check "generate -n 200 prints ~200 words ($words)" test "$words" -ge 150

# 2. prompt words outside the vocabulary: a warning naming how many
$BIN generate -m "$TMP/w" -n 3 -p "the zzqqxx king" -t 1 >/dev/null 2>"$TMP/oov.err"
check "generate warns about 1 unknown prompt word" grep -q "warning: 1 prompt token(s) are not in the model's vocabulary" "$TMP/oov.err"
$BIN generate -m "$TMP/w" -n 3 -p "the king" -t 1 >/dev/null 2>"$TMP/iv.err"
check "generate does not warn for known words" sh -c "! grep -q warning $TMP/iv.err"

# 3. eval prints the unknown-token rate and warns when it is high
printf 'the king of qqa qqb qqc qqd qqe qqf qqg\nthe queen of qqh qqi\n' >"$TMP/oov.txt"
$BIN eval -m "$TMP/w" --data "$TMP/oov.txt" -t 1 >"$TMP/eval.out" 2>"$TMP/eval.err"
check "eval prints the unknown-token rate (9 of 17)" grep -q "unknown tokens: 9 of 17 (52.94%)" "$TMP/eval.out"
check "eval warns when most tokens are <unk>" grep -q "warning: 52.9% of the tokens are <unk>" "$TMP/eval.err"
$BIN eval -m "$TMP/w" -t 1 >"$TMP/eval2.out" 2>"$TMP/eval2.err"
check "eval on the model's own test split does not warn" sh -c "grep -q 'unknown tokens:' $TMP/eval2.out && ! grep -q warning $TMP/eval2.err"

# 4. interactive: each stdin line continues one context (the KV cache kept): after two lines the
#    context holds <eos>, then each line's words and its <eos> (two greedy lines cut at -n 8)
printf 'the\na man\n' | $BIN generate -m "$TMP/w" -i -n 8 --temp 0 -t 1 >"$TMP/int.out" 2>"$TMP/int.err"
check "interactive: two lines out for two prompts" test "$(wc -l <"$TMP/int.out")" = 2
check "interactive: each line starts with its prompt" sh -c "head -n 1 $TMP/int.out | grep -q '^the' && tail -n 1 $TMP/int.out | grep -q '^a man'"
pos=$((1 + $(head -n 1 "$TMP/int.out" | wc -w) + 1 + $(tail -n 1 "$TMP/int.out" | wc -w) + 1))
check "interactive keeps the cache: the context holds $pos positions" grep -q "the context holds $pos of 64 positions" "$TMP/int.err"
first=$(head -n 1 "$TMP/int.out")
oneshot=$($BIN generate -m "$TMP/w" -p "$first
a man" -n 8 --temp 0 -t 1 2>/dev/null | tail -n 1)
check "interactive: the second line as a one-shot generation after the first" test "$(tail -n 1 "$TMP/int.out")" = "$oneshot"

# 5. a collapsed router warns at evaluation: the tiny word model (4 experts, switch) evaluated with
#    an eval capacity of 1 token per expert drops most tokens; at its own capacity it does not warn
$BIN eval -m "$TMP/w" -t 1 >"$TMP/ev_ok.out" 2>&1
check "eval: no collapse warning for a working router" sh -c "! grep -q collapsed $TMP/ev_ok.out"
$BIN train --config tiny --steps 20 -b 8 --seq-len 32 --set eval_capacity_factor=0.01 --set min_capacity=1 \
    --eval-interval 10 --eval-batches 2 --out "$TMP/drop" -t 1 >"$TMP/drop.log" 2>&1
check "train: a router dropping most tokens gets a warning at each evaluation" \
    test "$(grep -c "warning: moe layer 0's router has collapsed" "$TMP/drop.log")" -ge 2
# the random router gives each batch one expert: experts not drawn are "unused", not "dead"
$BIN train --config tiny --set router_type=random --steps 5 -b 8 --seq-len 32 --eval-interval 0 --eval-batches 3 \
    --out "$TMP/rnd" -t 1 >"$TMP/rnd.log" 2>&1
check "random router: 'unused i/E (random router: one expert per batch, N batches)'" \
    grep -Eq "unused [0-9]/4 \(random router: one expert per batch, [0-9]+ batches\)" "$TMP/rnd.log"
check "random router: no collapse warning" sh -c "! grep -q collapsed $TMP/rnd.log"

# 6. a SentencePiece model of a corpus that spells out <unk> (PTB) reads it as the unknown token,
#    not as "<", "unk", ">" (two unknown characters around a piece)
awk 'BEGIN { for (i = 0; i < 400; i++) print "the cat sat on the <unk> mat and the dog ran to the " (i % 7) " <unk> park" }' \
    >"$TMP/unkc.txt"
$BIN train --config tiny --data "$TMP/unkc.txt" --tokenizer unigram:26 --steps 2 -b 2 --seq-len 16 --eval-interval 0 \
    --eval-batches 1 --out "$TMP/spm" $T >"$TMP/spm.log" 2>&1
printf 'the <unk> cat\n' >"$TMP/unk1.txt"
$BIN eval -m "$TMP/spm" --data "$TMP/unk1.txt" -t 1 >"$TMP/spm_eval.out" 2>/dev/null
check "spm: the literal <unk> is one unknown token" grep -q "unknown tokens: 1 of" "$TMP/spm_eval.out"

# generation's default thread count: the tiny model (a quarter MB a token) takes 1 thread; -t 2 is kept
$BIN generate -m "$TMP/w" -n 3 >/dev/null 2>"$TMP/t_auto.err"
check "generate without -t: 1 thread for a small model" grep -q "tok/s, 1 thread, chosen" "$TMP/t_auto.err"
$BIN generate -m "$TMP/w" -n 3 -t 2 >/dev/null 2>"$TMP/t_2.err"
check "generate -t 2: 2 threads" grep -q "tok/s, 2 threads)" "$TMP/t_2.err"

finish use
