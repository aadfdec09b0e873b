#!/bin/sh
# test_cli.sh: the moelm command end to end: learning on the built-in corpus, exact resume,
# metrics without duplicates, and bad input (one-line error, non-zero exit, nothing overwritten).
# Ends with "cli: N passed, N failed" and exits non-zero on failure.
BIN=${MOELM_BIN:-./moelm}
TMP=build/tmp/cli
rm -rf "$TMP"; mkdir -p "$TMP"
. "$(dirname "$0")/lib.sh"


T="-t 1 --quiet"
# 1. learning: validation loss falls well below the unigram entropy of the built-in corpus
#    (5.34 nats/token, measured on the valid split with train frequencies; see tests/test_data.c).
#    The tiny preset at lr 1e-2: 120 steps end near 3.45 (~1.3 s of CPU); after one step the loss is 6.8,
#    and 80 steps near 4.1: the bound needs the model to learn from the context.
$BIN train --config tiny --steps 120 -b 16 --seq-len 32 --lr 1e-2 \
    --eval-interval 0 --out "$TMP/learn" $T >"$TMP/learn.log" 2>&1
val=$(grep val_loss "$TMP/learn/metrics.jsonl" | tail -n 1 | sed -E 's/.*"val_loss": ([0-9.]+).*/\1/')
check "learns: val loss $val < 4.0 (unigram entropy 5.34)" awk "BEGIN{exit !($val < 4.0)}"

# the tutorial's three models (scaled down) learn on the built-in corpus: the validation loss ends
# well below its start (ln 956 = 6.86 nats for a uniform guess over the vocabulary; 6.8 after one step).
# 60 steps at lr 1e-2 end at 3.45-3.55 (150 at 6e-3 ended near 2.8, at ~2x the CPU).
for p in seed-moe seed-gating seed-switch; do
    $BIN train --config $p --set d_model=32 --set num_layers=2 --set num_heads=2 --set d_ff=64 --set expert_d_ff=64 \
        --set head_hidden=64 --set num_experts=4 --set dropout_rate=0 -b 16 --seq-len 30 --steps 60 --lr 1e-2 \
        --eval-interval 0 --out "$TMP/$p" $T >/dev/null 2>&1
    v=$(grep val_loss "$TMP/$p/metrics.jsonl" | tail -n 1 | sed -E 's/.*"val_loss": ([0-9.]+).*/\1/')
    check "$p learns: val loss ${v:-none} < 4.0" awk "BEGIN{exit !(${v:-99} < 4.0)}"
done

# 2. exact resume: 12 steps, or 6 (--stop-at) + resume + 6, give the same losses and the same final weights
#    (on PTB's first lines: each start on the built-in corpus tokenized it and each evaluation of the
#    checkpoint below took its whole split, ~0.25 s of CPU each)
ptb_lines "$TMP/data"
D="--data $TMP/data --tokenizer word:1000"   # 1,000 words: the head over all 4,249 made steps 2x slower
$BIN train --config tiny $D --steps 12 --ckpt-interval 6 --eval-interval 0 --log-interval 1 --out "$TMP/full" -t 1 --quiet >/dev/null 2>&1
$BIN train --config tiny $D --steps 12 --stop-at 6 --ckpt-interval 6 --eval-interval 0 --log-interval 1 --out "$TMP/half" -t 1 --quiet >/dev/null 2>&1
$BIN train --resume "$TMP/half" --steps 12 --ckpt-interval 6 --eval-interval 0 --log-interval 1 -t 1 --quiet >/dev/null 2>&1
loss_of() { grep -o '"step": [0-9]*, "loss": [0-9.]*' "$1/metrics.jsonl"; }
check "resume: identical loss curve" test "$(loss_of "$TMP/full")" = "$(loss_of "$TMP/half")"
check "resume: identical final weights" cmp -s "$TMP/full/latest/model.safetensors" "$TMP/half/latest/model.safetensors"
check "resume: identical optimizer state" cmp -s "$TMP/full/latest/optimizer.safetensors" "$TMP/half/latest/optimizer.safetensors"
n=$(grep -c '"step"' "$TMP/half/metrics.jsonl")
check "metrics: one record per step after resume ($n of 12)" test "$n" = 12

# a dropout rule (dropout_growth): the rate is fixed at the end of the warm-up from the epochs the
# run makes, rate + growth * log2(epochs / dropout_epochs), kept by a resume before or after that step
DR="--config tiny --steps 12 --set warmup_steps=4 --set dropout_rate=0.05 --set dropout_growth=0.1 --set dropout_epochs=0.0002
    --set dropout_max=0.5 --ckpt-interval 2 --eval-interval 0 --log-interval 1 -t 1 --quiet"
$BIN train $DR --out "$TMP/dr" >/dev/null 2>&1
ntrain=$($BIN train --config tiny --steps 1 --eval-interval 0 -t 1 --out "$TMP/dr-n" 2>/dev/null | sed -n 's/.*(\([0-9]*\) train tokens.*/\1/p')
want=$(awk "BEGIN{printf \"%.4f\", 0.05 + 0.1 * log(12 * 64 / ${ntrain:-1} / 0.0002) / log(2)}")
drop_at() { grep "\"step\": $2," "$1/metrics.jsonl" | sed -E 's/.*"dropout": ([0-9.e-]+).*/\1/'; }
got=$(awk "BEGIN{printf \"%.4f\", $(drop_at "$TMP/dr" 12)}")
check "dropout rule: $got at step 12 = 0.05 + 0.1 log2(epochs / 0.0002) = $want ($ntrain train tokens)" test "$got" = "$want"
check "dropout rule: the base rate during the warm-up" test "$(drop_at "$TMP/dr" 4)" = 0.05
check "dropout rule: state.json keeps the rate" grep -q "\"dropout\": $got" "$TMP/dr/latest/state.json"
for at in 2 6; do
    $BIN train $DR --stop-at $at --out "$TMP/dr$at" >/dev/null 2>&1
    $BIN train --resume "$TMP/dr$at" --ckpt-interval 2 --eval-interval 0 --log-interval 1 -t 1 >"$TMP/dr$at.log" 2>&1
    check "dropout rule: resumed at step $at, identical loss curve" test "$(loss_of "$TMP/dr")" = "$(loss_of "$TMP/dr$at")"
done
check "dropout rule: a resume before the warm-up's end sets the rate, one after it reads it from state.json" \
    sh -c "grep -q 'from step 5 on' $TMP/dr2.log && ! grep -q 'from step' $TMP/dr6.log"
expect_error "dropout_max out of range" "dropout_max" $BIN train --config tiny --set dropout_max=1.5 --steps 1 --out "$TMP/drbad" $T
# below dropout_epochs with dropout_start_epochs S: 0 up to S epochs, then growth * log2(epochs / S) up to the
# base rate (E: this run's 12 x 64 tokens in epochs; S = E / 1.5 gives 0.1 log2 1.5 = 0.0585, S = 2E gives 0)
E=$(awk "BEGIN{printf \"%.9g\", 12 * 64 / ${ntrain:-1}}")
for s in 1.5 0.5; do
    $BIN train --config tiny --steps 12 --set warmup_steps=4 --set dropout_rate=0.3 --set dropout_growth=0.1 \
        --set dropout_epochs=1000 --set dropout_start_epochs="$(awk "BEGIN{printf \"%.9g\", $E / $s}")" \
        --eval-interval 0 --log-interval 1 -t 1 --quiet --out "$TMP/drs$s" >/dev/null 2>&1
    want=$(awk "BEGIN{w = 0.1 * log($s) / log(2); printf \"%.4f\", (w > 0 ? w : 0)}")
    got=$(awk "BEGIN{printf \"%.4f\", $(drop_at "$TMP/drs$s" 12)}")
    check "dropout rule below dropout_epochs: $got at $s x dropout_start_epochs = $want" test "$got" = "$want"
done
# shifted windows (shift_windows): a resume in the second epoch continues the same data exactly, the run's
# config keeps the key, and the windows are not the unshifted ones (100 lines: an epoch is ~36 steps of 4 x 16)
mkdir -p "$TMP/sw"; for s in train valid test; do head -n 100 "$TMP/data/ptb.$s.txt" >"$TMP/sw/ptb.$s.txt"; done
SW="--config tiny --data $TMP/sw --tokenizer word:300 --steps 60 --set warmup_steps=4 --ckpt-interval 10 --eval-interval 0
    --log-interval 1 -t 1 --quiet"
$BIN train $SW --set shift_windows=1 --out "$TMP/sw-full" >/dev/null 2>&1
$BIN train $SW --set shift_windows=1 --stop-at 50 --out "$TMP/sw-half" >/dev/null 2>&1
$BIN train --resume "$TMP/sw-half" --ckpt-interval 10 --eval-interval 0 --log-interval 1 -t 1 --quiet >/dev/null 2>&1
$BIN train $SW --out "$TMP/sw-plain" >/dev/null 2>&1
check "shift_windows: resumed at step 50 (second epoch), identical loss curve" \
    test -n "$(loss_of "$TMP/sw-full")" -a "$(loss_of "$TMP/sw-full")" = "$(loss_of "$TMP/sw-half")"
check "shift_windows: the run keeps the key" grep -q '"shift_windows": 1' "$TMP/sw-half/latest/state.json"
check "shift_windows: other windows than the unshifted run's" test "$(loss_of "$TMP/sw-full")" != "$(loss_of "$TMP/sw-plain")"
expect_error "shift_windows on span corruption" "shift_windows moves the windows of a decoder-only" \
    $BIN train --config switch-t5-tiny --set shift_windows=1 --steps 1 --out "$TMP/sw-t5" $T
# the adaptive softmax (adaptive_softmax_cutoffs): the banner names it, a resume continues exactly,
# eval and generate read the run; a list outside the vocabulary or out of order is a one-line error
AD="$SW --steps 30 --set adaptive_softmax_cutoffs=30,120"
$BIN train $AD --out "$TMP/ad-full" >/dev/null 2>&1
$BIN train $AD --stop-at 20 --out "$TMP/ad-half" >/dev/null 2>&1
$BIN train --resume "$TMP/ad-half" --ckpt-interval 10 --eval-interval 0 --log-interval 1 -t 1 >"$TMP/ad-half.log" 2>&1
check "adaptive softmax: the banner names the head and clusters" \
    grep -q 'adaptive softmax: ids \[0, 30) in the head, 2 tail clusters from id 30, 120' "$TMP/ad-half.log"
check "adaptive softmax: resumed at step 20, identical loss curve" \
    test -n "$(loss_of "$TMP/ad-full")" -a "$(loss_of "$TMP/ad-full")" = "$(loss_of "$TMP/ad-half")"
check "adaptive softmax: the loss is not the full softmax's" test "$(loss_of "$TMP/ad-full")" != "$(loss_of "$TMP/sw-plain")"
check "adaptive softmax: eval gives a perplexity" sh -c "$BIN eval -m $TMP/ad-full -t 1 | grep -q 'word-level perplexity'"
check "adaptive softmax: generate" $BIN generate -m "$TMP/ad-full" -p "the" -n 8 -t 1
# cutoffs at or past the tokenizer's vocabulary (a PTB preset's on other data) are left out, with a note
$BIN train --config tiny --data $TMP/sw --tokenizer word:300 --steps 1 --eval-interval 0 -t 1 \
    --set adaptive_softmax_cutoffs=50,400,900 --out "$TMP/ad-fit" >"$TMP/ad-fit.log" 2>&1
check "adaptive softmax: cutoffs past the vocabulary left out, with a note" \
    sh -c "grep -q 'cutoffs 400, 900 not below the vocabulary of [0-9]*: left out\$' $TMP/ad-fit.log &&
           grep -q '\"adaptive_softmax_cutoffs\": \"50\"' $TMP/ad-fit/latest/config.json"
expect_error "adaptive_softmax_cutoffs out of order" "adaptive_softmax_cutoffs must ascend" \
    $BIN train $SW --set adaptive_softmax_cutoffs=50,20 --steps 1 --out "$TMP/ad-bad" $T
# rotary positions (position_embedding rope): the banner says so, the run has no pos_emb, a resume
# continues exactly, generate reads the run; an odd head width is a one-line error
RP="$SW --steps 30 --set position_embedding=rope"
$BIN train $RP --out "$TMP/rp-full" >/dev/null 2>&1
$BIN train $RP --stop-at 20 --out "$TMP/rp-half" >/dev/null 2>&1
$BIN train --resume "$TMP/rp-half" --ckpt-interval 10 --eval-interval 0 --log-interval 1 -t 1 >"$TMP/rp-half.log" 2>&1
check "rope: the banner names it" grep -q '^model: lm (RoPE),' "$TMP/rp-half.log"
check "rope: no learned positions in the checkpoint (the learned run's has them)" \
    sh -c "! head -c 8192 $TMP/rp-full/latest/model.safetensors | grep -qa pos_emb.weight &&
    head -c 8192 $TMP/sw-plain/latest/model.safetensors | grep -qa pos_emb.weight &&
    grep -q '\"position_embedding\": \"rope\"' $TMP/rp-full/latest/config.json"
check "rope: resumed at step 20, identical loss curve" \
    test -n "$(loss_of "$TMP/rp-full")" -a "$(loss_of "$TMP/rp-full")" = "$(loss_of "$TMP/rp-half")"
check "rope: the loss is not the learned positions'" test "$(loss_of "$TMP/rp-full")" != "$(loss_of "$TMP/sw-plain")"
check "rope: generate" $BIN generate -m "$TMP/rp-full" -p "the" -n 8 -t 1
expect_error "rope with an odd head width" "position_embedding rope needs an even head width" \
    $BIN train $SW --set position_embedding=rope --set d_model=30 --set num_heads=2 --steps 1 --out "$TMP/rp-bad" $T
expect_error "dropout_start_epochs at or above dropout_epochs" "must be below dropout_epochs" \
    $BIN train --config tiny --set dropout_growth=0.1 --set dropout_start_epochs=10 --steps 1 --out "$TMP/drbad2" $T

# a resume after a crash that logged steps past the checkpoint drops them, no duplicates
echo '{"step": 13, "loss": 9.9}' >>"$TMP/half/metrics.jsonl"
$BIN train --resume "$TMP/half" --steps 14 --eval-interval 0 --log-interval 1 $T >/dev/null 2>&1
n13=$(grep -c '"step": 13,' "$TMP/half/metrics.jsonl")
check "metrics: a logged step after the checkpoint is replaced, not duplicated" test "$n13" = 1

# 3. the checkpoint loads: eval and generate run, info prints the step
$BIN eval -m "$TMP/full" -t 1 >"$TMP/ev1" 2>&1
check "eval runs on the checkpoint" grep -q 'word-level perplexity' "$TMP/ev1"
# sliding-window evaluation scores every token once, as the non-overlapping one does (windows of 16
# tokens every 8: twice the windows of the plain evaluation)
$BIN eval -m "$TMP/full" -t 1 --stride 8 >"$TMP/ev3" 2>&1
check "eval --stride scores the same tokens" sh -c "grep -q 'every 8' $TMP/ev3 && [ \"\$(head -n 1 $TMP/ev1 | cut -d, -f1)\" = \"\$(head -n 1 $TMP/ev3 | cut -d, -f1)\" ]"
check "eval --stride changes the perplexity" sh -c "! cmp -s $TMP/ev1 $TMP/ev3 && [ \"\$(grep word-level $TMP/ev1)\" != \"\$(grep word-level $TMP/ev3)\" ]"
expect_error "eval --stride longer than the context" "stride" $BIN eval -m "$TMP/full" -t 1 --stride 999
check "generate runs on the checkpoint" sh -c "$BIN generate -m $TMP/full -n 5 --seed 3 >/dev/null 2>&1"
check "info reports the step" sh -c "$BIN info $TMP/full | grep -q 'step 12'"
g1=$($BIN generate -m "$TMP/full" -n 8 --seed 7 2>/dev/null); g2=$($BIN generate -m "$TMP/full" -n 8 --seed 7 2>/dev/null)
check "generate is reproducible with a seed" test "$g1" = "$g2"
g3=$($BIN generate -m "$TMP/full" -n 8 --seed 7 -t 1 2>/dev/null)
check "generate: 1 and 2 threads give the same text" test "$g1" = "$g3"
check "generate --bf16 runs" sh -c "$BIN generate -m $TMP/full -n 8 --seed 7 --bf16 2>&1 | grep -q 'generated 8 tokens'"

# 4. bad input: one-line error, non-zero exit
expect_error "missing data dir" "no-such-dir" $BIN train --data "$TMP/no-such-dir" --out "$TMP/x1" $T
: >"$TMP/empty.txt"
expect_error "empty corpus" "empty" $BIN train --data "$TMP/empty.txt" --out "$TMP/x2" $T
expect_error "heads not dividing d_model" "num_heads" $BIN train --config tiny --set num_heads=3 --out "$TMP/x3" $T
expect_error "negative size" "d_model" $BIN train --config tiny --set d_model=-4 --out "$TMP/x4" $T
expect_error "NaN capacity factor" "capacity_factor" $BIN train --config tiny --set capacity_factor=nan --out "$TMP/x5" $T
expect_error "unknown flag" "unknown flag" $BIN train --no-such-flag
expect_error "bad number" "not an integer" $BIN train --steps 12x
expect_error "unknown preset" "unknown preset" $BIN train --config no-such-preset --out "$TMP/x6" $T
expect_error "expert-choice in a causal LM" "causal" $BIN train --config tiny --set router_type=expert-choice --out "$TMP/x7" $T
expect_error "missing checkpoint" "no such" $BIN eval -m "$TMP/nothing-here"
expect_error "unknown command" "unknown command" $BIN frobnicate

# a corrupt checkpoint is refused by its checksums, and a failed resume overwrites nothing
cp -r "$TMP/full" "$TMP/corrupt"
f="$TMP/corrupt/latest/model.safetensors"
printf '\377' | dd of="$f" bs=1 seek=200 conv=notrunc 2>/dev/null
expect_error "corrupt checkpoint (eval)" "model.safetensors" $BIN eval -m "$TMP/corrupt"
before=$(ls -l "$TMP/corrupt" "$TMP/corrupt/latest/" | md5sum)
expect_error "corrupt checkpoint (resume)" "model.safetensors" $BIN train --resume "$TMP/corrupt" --steps 20 $T
after=$(ls -l "$TMP/corrupt" "$TMP/corrupt/latest/" | md5sum)
check "failed resume leaves the run untouched" test "$before" = "$after"
printf '{"d_model": 64,, }' >"$TMP/bad.json"
expect_error "invalid config.json" "bad.json" $BIN train --config "$TMP/bad.json" --out "$TMP/x8" $T
expect_error "resume with another data set" "resume" $BIN train --resume "$TMP/full" --data ../shared/data/ptb --steps 20 $T

# a new run over an old one is refused (it would mix checkpoints and metrics); --force starts over
$BIN train --config tiny $D --steps 4 --eval-interval 0 --out "$TMP/again" $T >/dev/null 2>&1
expect_error "a new run into a run directory is refused" "already holds a run" $BIN train --config tiny --steps 2 --out "$TMP/again" $T
check "the refused run left the old one intact" test "$(readlink "$TMP/again/latest")" = ckpt-00000004
$BIN train --config tiny $D --steps 2 --eval-interval 0 --out "$TMP/again" --force $T >/dev/null 2>&1
check "--force starts over: only the new run's checkpoints and metrics" \
    sh -c "[ \"\$(ls -d $TMP/again/ckpt-*)\" = $TMP/again/ckpt-00000002 ] && [ \"\$(grep -c . $TMP/again/metrics.jsonl)\" = 2 ]"

# --time-budget: the run, its last evaluation and checkpoint included, ends within the budget and the
# schedule has decayed by then (1.2 s budget, an evaluation every 20 steps; 2 s of slack for a busy
# machine: CI saw 4.02 s of a 3 s budget with the suite's two tests at a time on two cores)
$BIN train --config tiny --time-budget 0.02 --steps 100000000 --eval-interval 20 --log-interval 1 --out "$TMP/budget" $T >/dev/null 2>&1
el=$(grep -o '"elapsed_s": [0-9.]*' "$TMP/budget/latest/state.json" | cut -d' ' -f2)
lr_end=$(tail -n 1 "$TMP/budget/metrics.jsonl" | grep -o '"lr": [0-9.e-]*' | cut -d' ' -f2)
check "--time-budget ends on time (elapsed $el s of 1.2)" awk -v e="$el" 'BEGIN { exit !(e > 0.6 && e <= 3.2) }'
check "--time-budget: the last record is an evaluation" sh -c "tail -n 1 $TMP/budget/metrics.jsonl | grep -q val_loss"
check "--time-budget: the lr schedule ran its course (last lr $lr_end, peak 0.003)" awk -v l="$lr_end" 'BEGIN { exit !(l < 0.0015) }'

finish cli
