#!/bin/sh
# test_run.sh: a run's length and its end, as a user meets them.
#   1. SIGTERM / SIGINT during the steps: a checkpoint after the current step, one line saying so,
#      exit 143 / 130; --resume continues bit-identically to an uninterrupted run.
#   2. --time-budget is the run's length (not the preset's steps), its warm-up a share of it; a
#      resume (after a SIGTERM) keeps the budget and the schedule, and the run ends within the budget.
#   3. --resume of a complete run says so and how to extend it (exit 0, nothing trained); -b,
#      --seq-len, --data equal to the run's are accepted, differing ones refused.
#   4. the end-of-run summary: steps, tokens, time, best and final validation perplexity, the
#      checkpoint, the report command.
# Ends with "run: N passed, N failed" and exits non-zero on failure.
BIN=${MOELM_BIN:-./moelm}
TMP=build/tmp/run
rm -rf "$TMP"; mkdir -p "$TMP"
. "$(dirname "$0")/lib.sh"

T="-t 1 --quiet"
# the runs train on PTB's first lines (each start on the built-in corpus tokenized it and each run
# evaluated its whole validation split: ~0.3 s of CPU a run)
ptb_lines "$TMP/data"
D="--data $TMP/data --tokenizer word:1000"   # 1,000 words: the head over all 4,249 made steps 2x slower
curve() { grep -o '"step": [0-9]*, "loss": [-0-9.a-z]*' "$1/metrics.jsonl"; }
records() { cat "$1/metrics.jsonl" 2>/dev/null | grep -c .; }
# starts a run in the background with SIGINT at its default (a script's background job ignores it),
# and once it has logged $2 steps sends it signal $1; leaves the exit status in $rc
signal_run() {
    sig=$1; at=$2; dir=$3; shift 3
    env --default-signal=INT $BIN train "$@" --out "$dir" >"$dir.log" 2>"$dir.err" &
    pid=$!
    while [ "$(records "$dir")" -lt "$at" ] && kill -0 $pid 2>/dev/null; do sleep 0.02; done
    kill -"$sig" $pid 2>/dev/null
    wait $pid; rc=$?
}

# ---- 1. signals ---------------------------------------------------------------------------------
# 300 steps (~0.6 s of CPU): the signal comes once 20 are logged, far before the end even when busy
ARGS="--config tiny $D --steps 300 --eval-interval 0 --log-interval 1 $T"
$BIN train $ARGS --out "$TMP/full" >"$TMP/full.log" 2>&1
for sig in TERM INT; do
    want=143; [ $sig = INT ] && want=130
    signal_run $sig 20 "$TMP/$sig" $ARGS
    at=$(readlink "$TMP/$sig/latest" | sed 's/ckpt-0*//')
    check "SIG$sig: exit $want (got $rc)" test "$rc" = "$want"
    check "SIG$sig: one line saying a checkpoint was saved" \
        sh -c "[ \$(grep -c . $TMP/$sig.err) = 1 ] && grep -q 'stopped after step $at with a checkpoint' $TMP/$sig.err"
    check "SIG$sig: the checkpoint is of the last logged step ($at)" test "$(tail -n 1 "$TMP/$sig/metrics.jsonl" | cut -d, -f1)" = "{\"step\": $at"
    check "SIG$sig: stopped mid-run (step $at of 300)" test "${at:-0}" -gt 0 -a "${at:-300}" -lt 300
    $BIN train --resume "$TMP/$sig" --eval-interval 0 --log-interval 1 $T >/dev/null 2>&1
    check "SIG$sig: the resumed run's loss curve is the uninterrupted one's" test "$(curve "$TMP/full")" = "$(curve "$TMP/$sig")"
    check "SIG$sig: identical final weights" cmp -s "$TMP/full/latest/model.safetensors" "$TMP/$sig/latest/model.safetensors"
done

# a second SIGINT ends the process at once: the demo model's steps of 128 x 32 tokens take ~170 ms here
# (more on a busy machine), the second signal comes 20 ms after the first, in the same step: killed by
# it (130), no checkpoint, no line. (With 32 x 32 tokens a step took ~40 ms once the cross-entropy,
# GELU and Adam were vectorised, and a first signal late in a step let the run save and exit before
# the second: CI saw it once.)
S2="$TMP/second"
env --default-signal=INT $BIN train --config demo $D --steps 1000 --eval-interval 0 --log-interval 1 -b 128 --out "$S2" $T \
    >"$S2.log" 2>"$S2.err" &
pid=$!
while [ "$(records "$S2")" -lt 2 ] && kill -0 $pid 2>/dev/null; do sleep 0.02; done
kill -INT $pid; sleep 0.02; kill -INT $pid
wait $pid; rc=$?
check "a second SIGINT ends the run at once (exit $rc, no checkpoint, no line)" \
    sh -c "[ $rc = 130 ] && [ ! -e $S2/latest ] && [ ! -s $S2.err ]"

# ---- 2. the time budget ---------------------------------------------------------------------------
# tiny's preset is 20 steps with warmup_steps 4 here: a 20% warm-up share. A 3 s budget, a SIGTERM
# after 40 steps, a resume: the run trains past 20 steps, warms up over its first fifth (0.6 s, over
# 100 steps: step 10 is still well below the peak, where a 4-step warm-up would have reached it),
# keeps the schedule across the resume (within 5% of the peak: in the warm-up the lr moves with the
# time, and the checkpoint's write, ~10% of the time so far, is the gap) and ends within the budget.
B="$TMP/budget"
signal_run TERM 40 "$B" --config tiny $D --set warmup_steps=4 --time-budget 0.05 --eval-interval 0 --log-interval 1 -t 1
check "budget: the banner speaks of time" grep -q "^training: 3s time budget, .*warm-up 20% of it" "$B.log"
lr_before=$(tail -n 1 "$B/metrics.jsonl" | grep -o '"lr": [0-9.e-]*' | cut -d' ' -f2)
n_before=$(records "$B")
$BIN train --resume "$B" --log-interval 1 --eval-interval 0 -t 1 >"$B.resume.log" 2>&1
lr_after=$(sed -n "$((n_before + 1))p" "$B/metrics.jsonl" | grep -o '"lr": [0-9.e-]*' | cut -d' ' -f2)
lr_first=$(sed -n 10p "$B/metrics.jsonl" | grep -o '"lr": [0-9.e-]*' | cut -d' ' -f2)
lr_peak=$(grep -o '"lr": [0-9.e-]*' "$B/metrics.jsonl" | cut -d' ' -f2 | sort -g | tail -n 1)
steps=$(readlink "$B/latest" | sed 's/ckpt-0*//')
el=$(grep -o '"elapsed_s": [0-9.]*' "$B/latest/state.json" | cut -d' ' -f2)
check "budget: trains past the preset's 20 steps ($steps)" test "${steps:-0}" -gt 40
check "budget: the warm-up is a share of the time (lr at step 10 $lr_first) and reaches the peak ($lr_peak of 0.003)" \
    awk -v a="$lr_first" -v p="$lr_peak" 'BEGIN { exit !(a < 0.0015 && p > 0.0029) }'
check "budget: the resumed run continues the schedule (lr $lr_before -> $lr_after)" \
    awk -v a="$lr_before" -v b="$lr_after" 'BEGIN { d = b - a; exit !(b > 0 && d < 0.00015 && d > -0.00015) }'
check "budget: the lr has decayed by the end" \
    sh -c "tail -n 1 $B/metrics.jsonl | grep -o '\"lr\": [0-9.e-]*' | cut -d' ' -f2 | awk '{ exit !(\$1 < 0.001) }'"
check "budget: the resumed run ends within the budget (elapsed $el s of 3; 2 s slack for a loaded machine)" \
    awk -v e="$el" 'BEGIN { exit !(e > 2 && e <= 5) }'

# ---- 3. resuming a complete run -------------------------------------------------------------------
before=$(ls -l --time-style=full-iso "$B" "$B/latest/" | md5sum)
$BIN train --resume "$B" -t 1 >"$TMP/again.log" 2>&1; rc=$?
check "complete: exit 0" test "$rc" = 0
check "complete: says so and how to train on" grep -q "the run is complete .*--time-budget" "$TMP/again.log"
check "complete: no header pretending to resume" sh -c "! grep -q 'resumed from' $TMP/again.log"
check "complete: nothing trained or written" test "$before" = "$(ls -l --time-style=full-iso "$B" "$B/latest/" | md5sum)"
$BIN train --resume "$TMP/full" $D -b 4 --seq-len 16 $T >"$TMP/same.log" 2>&1; rc=$?
check "the run's own -b, --seq-len, --data are accepted with --resume (rc $rc)" \
    sh -c "[ $rc = 0 ] && grep -q 'complete (300 of 300 steps).*--steps N' $TMP/same.log"
expect_error "a differing -b is refused" "batches of 4 x 16, not 8 x 16" $BIN train --resume "$TMP/full" -b 8 $T

# ---- --grad-accum resumes exactly: 12 steps, or 6 (--stop-at) + resume + 6 ----------------------------
GA="--config tiny $D --grad-accum 3 -b 2 --eval-interval 0 --log-interval 1 $T"
$BIN train $GA --steps 12 --out "$TMP/ga" >/dev/null 2>&1
$BIN train $GA --steps 12 --stop-at 6 --out "$TMP/ga2" >/dev/null 2>&1
$BIN train --resume "$TMP/ga2" --grad-accum 3 --eval-interval 0 --log-interval 1 $T >/dev/null 2>&1
check "grad-accum: 12 steps of 3 x 2 x 16 tokens" grep -q '"step": 12, .*"tokens": 1152' "$TMP/ga/metrics.jsonl"
check "grad-accum: resumed, identical loss curve" test "$(curve "$TMP/ga")" = "$(curve "$TMP/ga2")"
check "grad-accum: resumed, identical weights" cmp -s "$TMP/ga/latest/model.safetensors" "$TMP/ga2/latest/model.safetensors"
expect_error "grad-accum: a differing one is refused on resume" "accumulates 3 micro-batches, not 2" \
    $BIN train --resume "$TMP/ga2" --grad-accum 2 $T

# ---- 4. the summary -------------------------------------------------------------------------------
$BIN train --config tiny $D --steps 30 --eval-interval 10 --eval-batches 5 --out "$TMP/sum" -t 1 --log-interval 100 >"$TMP/sum.log" 2>&1
best=$(grep -o '"val_ppl": [0-9.]*' "$TMP/sum/metrics.jsonl" | cut -d' ' -f2 | sort -g | head -n 1)
check "summary: steps, tokens, time" grep -qE "^done: 30 steps, 1\.9K tokens, [0-9]+s" "$TMP/sum.log"
check "summary: best and final validation perplexity" \
    grep -qE "val ppl best $(printf %.2f "$best") \(step [0-9]+\), final [0-9.]+$" "$TMP/sum.log"
check "summary: the checkpoint" grep -qx "checkpoint: $TMP/sum/ckpt-00000030" "$TMP/sum.log"
check "summary: the report command" grep -qx "report: moelm report $TMP/sum" "$TMP/sum.log"
$BIN train --config tiny $D --steps 3 --out "$TMP/sumq" $T >"$TMP/sumq.log" 2>&1
check "--quiet: no summary either" test ! -s "$TMP/sumq.log"

# ---- 5. experiment files and keys -----------------------------------------------------------------
printf '{"preset": "tiny", "num_experts": 2, "lr": 0.002, "steps": 3, "grad_accum": 2}' >"$TMP/exp.json"
$BIN train --config "$TMP/exp.json" --print-config --out "$TMP/pc" >"$TMP/pc.log" 2>&1; rc=$?
check "--print-config: exit 0, nothing written" sh -c "[ $rc = 0 ] && [ ! -e $TMP/pc ]"
check "--print-config: the experiment file's model and training keys over its preset's" \
    sh -c "grep -qE '^num_experts += 2 ' $TMP/pc.log && grep -qE '^lr += 0.002 ' $TMP/pc.log && grep -qE '^d_model += 32 ' $TMP/pc.log && grep -qE '^grad_accum += 2 ' $TMP/pc.log"
model_keys=$(grep -c '^  "' "$TMP/sum/latest/config.json")
check "--print-config: every model key of config.json ($model_keys) and every training key, each with a meaning" \
    sh -c "[ \$(grep -cE '^[a-z_0-9]+ += ' $TMP/pc.log) = \$(($model_keys + 25)) ] && ! grep -q \"Hugging Face's key;\" $TMP/pc.log"
$BIN train --config "$TMP/exp.json" $D --out "$TMP/exp" $T >/dev/null 2>&1
check "an experiment file trains with its keys" \
    sh -c "readlink $TMP/exp/latest | grep -q ckpt-00000003 && grep -q '\"lr\": 0.002,' $TMP/exp/latest/state.json && grep -q '\"num_experts\": 2,' $TMP/exp/latest/config.json"
printf '{"d_model": 16, "num_heads": 2, "warmup_steps": 7}' >"$TMP/exp2.json"
$BIN train --config "$TMP/exp2.json" --print-config >"$TMP/pc2.log" 2>&1
check "an experiment file without a preset: its keys over the defaults" \
    sh -c "grep -qE '^d_model += 16 ' $TMP/pc2.log && grep -qE '^warmup_steps += 7 ' $TMP/pc2.log"
printf '{"preset": "tiny", "num_expert": 2}' >"$TMP/exp3.json"
expect_error "a misspelt key in an experiment file: did you mean" "exp3.json: unknown key 'num_expert' \(did you mean 'num_experts'" \
    $BIN train --config "$TMP/exp3.json" --out "$TMP/x3" $T
expect_error "a misspelt --set: did you mean" "unknown key 'num_expert' \(did you mean 'num_experts'\?.*--print-config" \
    $BIN train --set num_expert=4 --out "$TMP/x4" $T
expect_error "an unknown --set far from every key: where to list them" "unknown key 'zzz' \(moelm train --print-config lists every key\)" \
    $BIN train --set zzz=4 --out "$TMP/x5" $T

# hostile experiment files: one line naming the problem, nothing made
n=0
while IFS='|' read -r js pat; do
    n=$((n + 1))
    printf '%s' "$js" >"$TMP/h$n.json"
    expect_error "hostile experiment file $n ($js)" "$pat" $BIN train --config "$TMP/h$n.json" --out "$TMP/hx" $T
done <<'HOSTILE'
[1, 2]|must be a JSON object
{"preset": 3}|"preset" must be a preset name
{"preset": "nope"}|unknown preset 'nope'
{"preset": "tiny", "lr": [1]}|h4.json: key 'lr' must be a number
{"preset": "tiny", "lr": "fast"}|lr: 'fast' is not a finite number
{"preset": "tiny", "num_heads": 3}|num_heads \(3\) must divide d_model
{"preset": "tiny", "steps": 1e30}|steps: .* is not an integer
{"preset": "tiny", "grad_accum": 0}|grad_accum must be in
|empty input
HOSTILE
check "hostile experiment files made no run directory" test ! -e "$TMP/hx"

# ---- 6. small ones ---------------------------------------------------------------------------------
expect_error "a failed set-up: one line" "nonexistent" $BIN train --data "$TMP/nonexistent" --out "$TMP/failed" $T
check "a failed set-up leaves no --out behind" test ! -e "$TMP/failed"
mkdir -p "$TMP/mine"
expect_error "a failed set-up in an existing directory: one line" "nonexistent" $BIN train --data "$TMP/nonexistent" --out "$TMP/mine" $T
check "... which stays" test -d "$TMP/mine"
$BIN info "$TMP/sum" >"$TMP/info.log" 2>&1
check "info: numbers without float noise" grep -q '"lr":0.003,.*"beta1":0.9,"beta2":0.95,"eps":1e-08' "$TMP/info.log"
final=$(grep -o '"val_ppl": [0-9.]*' "$TMP/sum/metrics.jsonl" | tail -n 1 | cut -d' ' -f2)
check "info: the final validation perplexity ($final)" grep -qE "^validation \(step 30\): ppl $(printf %.2f "$final"), word ppl [0-9.]+$" "$TMP/info.log"

finish run
