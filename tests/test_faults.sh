#!/bin/sh
# test_faults.sh: nothing is lost when a training run dies.
#   1. kill -9 at random moments (startup, steps, checkpoint writes), each followed by --resume until
#      the run completes: the final weights and the loss curve equal an uninterrupted run bit for bit,
#      and metrics.jsonl holds exactly one record per step.
#   2. NaN/Inf in the loss or the gradients (test hook MOELM_INJECT_NAN_STEP) is caught in
#      the step where it appears: by default a one-line error, exit 1, the last checkpoint loadable;
#      with --skip-nonfinite the update is skipped and counted and the run completes.
#   3. A full disk while appending metrics.jsonl (test hook MOELM_FULL_DISK_AT_STEP): a one-line
#      error, the file cut back to its last whole record, and a resume completes.
#   4. Allocation failure (test hook MOELM_FAIL_ALLOC_AFTER) at many points of a run: a
#      one-line "out of memory" error and exit 1, never a crash.
# The hooks (src/train/hooks.h) exist only in the test build of the CLI, build/moelm-test (HBIN); the
# shipped binary (BIN) must ignore them.
# Ends with "faults: N passed, N failed" and exits non-zero on failure. Bounded: ~30 s on 2 cores.
# FAULTS_SEED=N picks another sequence of kill moments (default: from the clock; printed).
BIN=${MOELM_BIN:-./moelm}
HBIN=${MOELM_TEST_BIN:-build/moelm-test}
[ -x "$HBIN" ] || make -s test-cli >/dev/null 2>&1
TMP=build/tmp/faults
rm -rf "$TMP"; mkdir -p "$TMP"
. "$(dirname "$0")/lib.sh"
EXPECT_RC=1


# PTB's first lines (1,500 for training, 100 each for validation and test): every start of a run or an
# evaluation here (~200 of them) tokenized and evaluated the built-in corpus, 0.25-0.4 s of CPU each, 0.1 s here
ptb_lines "$TMP/data"
D="--data $TMP/data --tokenizer word:1000"   # 1,000 words: the head over all 4,249 made steps 2x slower

STEPS=100
# checkpoints at every step, so that most kill moments fall into a checkpoint write
ARGS="--config tiny $D --steps $STEPS --ckpt-interval 1 --keep 2 --eval-interval 0 --log-interval 1 -t 1 --quiet"
curve() { grep -o '"step": [0-9]*, "loss": [-0-9.a-z]*\|"val_loss": [-0-9.a-z]*' "$1/metrics.jsonl"; }

# ---- 1. kill -9 and resume ------------------------------------------------------------------------
t0=$(date +%s%N)
$BIN train $ARGS --out "$TMP/ref" >/dev/null 2>&1
check "uninterrupted reference run completes" test -f "$TMP/ref/latest/model.safetensors"
ref_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
t0=$(date +%s%N)
$BIN train $(echo "$ARGS" | sed "s/--steps $STEPS/--steps 1/") --out "$TMP/one" >/dev/null 2>&1
one_ms=$(( ($(date +%s%N) - t0) / 1000000 ))   # a start and one step

seed=${FAULTS_SEED:-$(date +%s)}
echo "   kill moments from FAULTS_SEED=$seed (reference run ${ref_ms} ms, a start and one step ${one_ms} ms)"
KILLS=12
# sleeps uniform from half a start to a start and 8% of the run's steps: a quarter of the kills land in
# a start (reading the checkpoint, the token caches), the rest in steps and their checkpoint writes; a
# start goes ~8% of the way at most (a resume starts faster than a new run: more on a loaded machine).
# A start that completes on its own is not a kill, and more starts are made (at most 3 * KILLS); when
# one finishes the run the kills go on in a new one (with sleeps from 0.02 s to 10% of the whole run and
# 24 steps, one test in three ended its run after 6 or 7 kills).
sleeps=$(awk -v s="$seed" -v n=$((3 * KILLS)) -v r="$ref_ms" -v o="$one_ms" \
         'BEGIN { srand(s); a = o / 2; b = o + 0.08 * (r - o); for (i = 0; i < n; i++) printf "%.3f ", (a + rand() * (b - a)) / 1000 }')
RUN=$TMP/killed
kills=0; starts=0; resumed_ok=1
# a run holding checkpoints is resumed (as the refusal of a second new run says), even when a kill
# landed between its first checkpoint's rename and the making of `latest`
held() { [ -e "$RUN/latest" ] || ls -d "$RUN"/ckpt-* >/dev/null 2>&1; }
for s in $sleeps; do
    [ "$kills" -ge "$KILLS" ] && break
    if held; then $BIN train --resume "$RUN" $ARGS >/dev/null 2>"$TMP/kerr" &
    else $BIN train $ARGS --out "$RUN" >/dev/null 2>"$TMP/kerr" &
    fi
    pid=$!; starts=$((starts + 1))
    sleep "$s"
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null; rc=$?
    if [ "$rc" = 137 ]; then kills=$((kills + 1))
    elif [ "$rc" = 0 ]; then rm -rf "$RUN"   # it finished: the kills go on in a new one
    elif [ "$rc" != 0 ]; then resumed_ok=0; echo "   start $starts: rc=$rc: $(head -c 300 "$TMP/kerr")"
    fi
done
# and on to the end, uninterrupted
if held; then $BIN train --resume "$RUN" $ARGS >/dev/null 2>"$TMP/kerr"; rc=$?
else $BIN train $ARGS --out "$RUN" >/dev/null 2>"$TMP/kerr"; rc=$?
fi
[ "$rc" = 0 ] || { resumed_ok=0; echo "   final resume: rc=$rc: $(head -c 300 "$TMP/kerr")"; }
check "every resume after kill -9 succeeds ($kills kills in $starts starts)" test "$resumed_ok" = 1
check "at least 10 kills landed ($kills)" test "$kills" -ge 10
check "killed run: final weights bit-identical" cmp -s "$TMP/ref/latest/model.safetensors" "$RUN/latest/model.safetensors"
check "killed run: optimizer state bit-identical" cmp -s "$TMP/ref/latest/optimizer.safetensors" "$RUN/latest/optimizer.safetensors"
check "killed run: identical loss curve" test "$(curve "$TMP/ref")" = "$(curve "$RUN")"
# that moment made by hand: the newest checkpoint without `latest` is resumed from, and the run ends
# as the reference (the seed 1796618479 above once landed a kill there)
cp -r "$TMP/ref" "$TMP/nolatest" && rm -rf "$TMP/nolatest/latest" "$TMP/nolatest"/ckpt-$(printf %08d $STEPS)
check "no latest yet: --resume goes on from the newest checkpoint" \
    sh -c "$BIN train --resume '$TMP/nolatest' $ARGS >/dev/null 2>&1 && cmp -s '$TMP/ref/latest/model.safetensors' '$TMP/nolatest/latest/model.safetensors'"
n=$(grep -c '"step"' "$RUN/metrics.jsonl")
steps_seq=$(grep -o '^{"step": [0-9]*' "$RUN/metrics.jsonl" | sed 's/.* //' | tr '\n' ' ')
check "killed run: one metrics record per step ($n of $STEPS)" test "$steps_seq" = "$(seq 1 $STEPS | tr '\n' ' ')"
check "killed run: info reports step $STEPS" sh -c "$BIN info '$RUN' | grep -q 'step $STEPS'"

# ---- 2. NaN / Inf ---------------------------------------------------------------------------------
NARGS="--config tiny $D --steps 10 --ckpt-interval 2 --eval-interval 0 --log-interval 1 -t 1 --quiet"
MOELM_INJECT_NAN_STEP=5 MOELM_FAIL_ALLOC_AFTER=1 $BIN train $NARGS --out "$TMP/nohooks" >/dev/null 2>&1; rc=$?
check "the shipped binary has no test hooks (rc=$rc)" test "$rc" = 0
MOELM_INJECT_NAN_STEP=5 expect_error "NaN loss stops the run at its step" "non-finite loss at step 5" \
    $HBIN train $NARGS --out "$TMP/nan"
check "NaN: latest checkpoint is the one before (step 4)" sh -c "$BIN info '$TMP/nan' | grep -q 'step 4'"
check "NaN: last checkpoint loads and evaluates" sh -c "$BIN eval -m '$TMP/nan' -t 1 >/dev/null 2>&1"
check "NaN: no metrics record for the bad step" test "$(grep -c '"step": 5,' "$TMP/nan/metrics.jsonl")" = 0
MOELM_INJECT_NAN_STEP=7:grad expect_error "Inf gradient stops the run at its step" "non-finite gradient at step 7" \
    $HBIN train $NARGS --out "$TMP/inf"
check "Inf: latest checkpoint is step 6 and loads" sh -c "$BIN info '$TMP/inf' | grep -q 'step 6' && $BIN eval -m '$TMP/inf' -t 1 >/dev/null 2>&1"
check "Inf: resume after the stop completes" sh -c "$BIN train --resume '$TMP/inf' $NARGS >/dev/null 2>&1 && $BIN info '$TMP/inf' | grep -q 'step 10'"
MOELM_INJECT_NAN_STEP=5 $HBIN train $NARGS --out "$TMP/skip" --skip-nonfinite >"$TMP/out" 2>"$TMP/err"; rc=$?
check "--skip-nonfinite: the run completes (rc=$rc)" test "$rc" = 0
check "--skip-nonfinite: the skip is reported" grep -q "step 5: non-finite loss or gradients, update skipped (1 so far)" "$TMP/err"
check "--skip-nonfinite: reaches the last step" sh -c "$BIN info '$TMP/skip' | grep -q 'step 10'"
check "--skip-nonfinite: metrics.jsonl stays valid JSON (null for NaN)" sh -c "grep -q '\"step\": 5, \"loss\": null' '$TMP/skip/metrics.jsonl' && ! grep -qi 'nan' '$TMP/skip/metrics.jsonl'"
MOELM_INJECT_NAN_STEP=3:grad $HBIN train $NARGS --out "$TMP/skip2" --skip-nonfinite >/dev/null 2>&1; rc=$?
check "--skip-nonfinite: an Inf gradient is skipped too (rc=$rc)" test "$rc" = 0

# ---- 3. a full disk ------------------------------------------------------------------------------
# the record of step 5 is stored in part, then the write fails with ENOSPC (test hook): before, the
# run went on with a torn line in metrics.jsonl; now the file is cut back to its last whole record
# and the run stops with the cause, and a resume goes on from the last checkpoint
MOELM_FULL_DISK_AT_STEP=5 expect_error "a full disk while appending metrics.jsonl stops the run" \
    "metrics.jsonl: cannot append the record of step 5: No space left on device; cut back" $HBIN train $NARGS --out "$TMP/full"
check "full disk: metrics.jsonl ends with the whole record of step 4" \
    sh -c "tail -n 1 '$TMP/full/metrics.jsonl' | grep -q '^{\"step\": 4, .*}\$' && test \"\$(tail -c 1 '$TMP/full/metrics.jsonl' | od -An -c | tr -d ' ')\" = '\\n'"
$BIN train --resume "$TMP/full" $NARGS >/dev/null 2>&1
check "full disk: the resume completes, one metrics record per step" \
    test "$(grep -o '^{"step": [0-9]*' "$TMP/full/metrics.jsonl" | sed 's/.* //' | tr '\n' ' ')" = "$(seq 1 10 | tr '\n' ' ')"

# ---- 4. allocation failure ------------------------------------------------------------------------
# every allocation up to 40, then every 37th until a run needs no more (a tiny run makes ~1500)
n=1; crashes=0; oom=0; msgs=0; done_at=0
while [ "$n" -le 20000 ]; do
    # a run that failed after its first checkpoint leaves a run there: each start is a new run
    rm -rf "$TMP/oom/latest" "$TMP/oom"/ckpt-*
    MOELM_FAIL_ALLOC_AFTER=$n $HBIN train --config tiny $D --steps 2 --ckpt-interval 1 -t 1 --quiet --out "$TMP/oom" \
        >/dev/null 2>"$TMP/err"; rc=$?
    if [ "$rc" = 0 ]; then done_at=$n; break; fi
    oom=$((oom + 1))
    if [ "$rc" != 1 ]; then crashes=$((crashes + 1)); echo "   alloc $n: rc=$rc: $(head -c 300 "$TMP/err")"
    elif [ "$(wc -l <"$TMP/err")" != 1 ] || ! grep -q "out of memory" "$TMP/err"; then
        msgs=$((msgs + 1)); echo "   alloc $n: $(head -c 300 "$TMP/err")"
    fi
    if [ "$n" -lt 40 ]; then n=$((n + 1)); else n=$((n + 37)); fi
done
check "allocation failures: no crash in $oom failing runs" test "$crashes" = 0
check "allocation failures: one-line 'out of memory' every time" test "$msgs" = 0
check "allocation failures: a run past the last allocation ($done_at) succeeds" test "$done_at" -gt 0
n=1; crashes=0; msgs=0; runs=0
while [ "$n" -le 3000 ]; do
    MOELM_FAIL_ALLOC_AFTER=$n $HBIN eval -m "$TMP/ref" -t 1 >/dev/null 2>"$TMP/err"; rc=$?
    [ "$rc" = 0 ] && break
    runs=$((runs + 1))
    if [ "$rc" != 1 ]; then crashes=$((crashes + 1)); echo "   eval alloc $n: rc=$rc: $(head -c 300 "$TMP/err")"
    elif [ "$(wc -l <"$TMP/err")" != 1 ] || ! grep -q "out of memory" "$TMP/err"; then
        msgs=$((msgs + 1)); echo "   eval alloc $n: $(head -c 300 "$TMP/err")"
    fi
    if [ "$n" -lt 30 ]; then n=$((n + 1)); else n=$((n + 23)); fi
done
check "eval under allocation failure: no crash, one-line 'out of memory' ($runs runs)" test "$crashes$msgs" = 00

finish faults
