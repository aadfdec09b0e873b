#!/bin/sh
# test_ema.sh: the weights' moving average (--set ema_decay=D) as a run keeps it.
#   1. it does not change the training: the loss curve and the final weights equal a run without it;
#   2. it is evaluated beside the weights (val_loss_ema in metrics.jsonl) and differs from them;
#   3. a run stopped and resumed keeps it exactly (the average's bits, its evaluations);
#   4. `moelm eval --ema` scores the average: the whole valid split gives the run's last
#      "averaged weights" loss; without --ema the weights' loss; --ema on a run without an average,
#      or on a directory that is not a training checkpoint, is one line and a non-zero exit.
# Ends with "ema: N passed, N failed" and exits non-zero on failure.
BIN=${MOELM_BIN:-./moelm}
TMP=build/tmp/ema
rm -rf "$TMP"; mkdir -p "$TMP/data"
. "$(dirname "$0")/lib.sh"

# a small corpus in a folder of three splits (PTB's first lines)
P=../shared/data/ptb
head -n 1500 "$P/ptb.train.txt" >"$TMP/data/ptb.train.txt"
head -n 150 "$P/ptb.valid.txt" >"$TMP/data/ptb.valid.txt"
head -n 150 "$P/ptb.test.txt" >"$TMP/data/ptb.test.txt"
ARGS="--config tiny --data $TMP/data -b 4 --seq-len 16 --steps 40 --eval-interval 10 --log-interval 5 -t 1 --quiet"
curve() { grep -o '"step": [0-9]*, "loss": [-0-9.a-z]*' "$1/metrics.jsonl"; }
val() { grep -o '"val_loss": [0-9.]*' "$1/metrics.jsonl"; }
ema() { grep -o '"val_loss_ema": [0-9.]*' "$1/metrics.jsonl"; }

$BIN train $ARGS --out "$TMP/plain" >/dev/null 2>&1
$BIN train $(echo "$ARGS" | sed 's/ --quiet//') --set ema_decay=0.9 --out "$TMP/ema" >"$TMP/ema.log" 2>&1
check "the average leaves the training as it was (loss curve)" test "$(curve "$TMP/plain")" = "$(curve "$TMP/ema")"
check "the average leaves the training as it was (validation losses)" test "$(val "$TMP/plain")" = "$(val "$TMP/ema")"
check "the average leaves the training as it was (weights)" \
    cmp -s "$TMP/plain/latest/model.safetensors" "$TMP/ema/latest/model.safetensors"
check "each evaluation scores the average too (4 evaluations)" test "$(ema "$TMP/ema" | grep -c .)" = 4
e_last=$(ema "$TMP/ema" | tail -1 | cut -d' ' -f2); v_last=$(val "$TMP/ema" | tail -1 | cut -d' ' -f2)
check "the average is not the weights ($e_last, $v_last)" test -n "$e_last" -a "$e_last" != "$v_last"
check "a run without one logs none" sh -c "! grep -q val_loss_ema $TMP/plain/metrics.jsonl"
check "the summary names the average's perplexity" grep -q "averaged weights" "$TMP/ema.log"

# ---- resume: 20 steps, then 20 more ------------------------------------------------------------------
$BIN train $ARGS --set ema_decay=0.9 --stop-at 20 --out "$TMP/half" >/dev/null 2>&1
$BIN train --resume "$TMP/half" --eval-interval 10 --log-interval 5 -t 1 --quiet >/dev/null 2>&1
check "resumed: the same average (optimizer.safetensors bit for bit)" \
    cmp -s "$TMP/ema/latest/optimizer.safetensors" "$TMP/half/latest/optimizer.safetensors"
check "resumed: the same evaluations of the average" test "$(ema "$TMP/ema")" = "$(ema "$TMP/half")"

# ---- moelm eval --ema --------------------------------------------------------------------------------
want=$(grep 'averaged weights: val loss' "$TMP/ema.log" | tail -1 | sed 's/.*val loss \([0-9.]*\).*/\1/')
got=$($BIN eval -m "$TMP/ema" --ema --data "$TMP/data/ptb.valid.txt" -b 4 --seq-len 16 -t 1 2>/dev/null |
      sed -n 's/^token-level: loss \([0-9.]*\).*/\1/p')
check "eval --ema scores the average: the run's last averaged loss ($want = $got)" test -n "$want" -a "$want" = "$got"
raw=$($BIN eval -m "$TMP/ema" --data "$TMP/data/ptb.valid.txt" -b 4 --seq-len 16 -t 1 2>/dev/null |
      sed -n 's/^token-level: loss \([0-9.]*\).*/\1/p')
check "eval without --ema scores the weights ($raw != $got)" test -n "$raw" -a "$raw" != "$got"
expect_error "--ema on a run trained without an average" "holds no weight average" \
    $BIN eval -m "$TMP/plain" --ema -t 1
mkdir -p "$TMP/notckpt" && cp "$TMP/plain/latest/config.json" "$TMP/plain/latest/model.safetensors" "$TMP/plain/latest/tokenizer.model" \
    "$TMP/notckpt/"
expect_error "--ema on a directory that is not a training checkpoint" "not a moelm training checkpoint" \
    $BIN generate -m "$TMP/notckpt" --ema -p the -t 1
expect_error "an ema_decay of 1 or more is refused" "ema_decay must be in" $BIN train $ARGS --set ema_decay=1 --out "$TMP/bad"
finish ema
