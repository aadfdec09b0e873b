#!/bin/sh
# test_init_from.sh: `moelm train --init-from SRC`, a new run from another model's weights. A run
# started from mixtral-tiny's exported Hugging Face directory (f32) evaluates, before its first step,
# to the source run's final validation loss exactly (the same weights, data, batches and threads), and
# fine-tuning lowers it (5.28 -> 5.10 in 20 steps); the same from the run directory itself, a bf16
# sharded export (within bf16's rounding), llama-tiny's export, and a switch_transformers run and its
# directory as HF holds it.
# Bad sources and configs are refused with one line and leave no --out. Ends with
# "init_from: N passed, N failed".
BIN=${MOELM_BIN:-./moelm}
TMP=build/tmp/init_from
rm -rf "$TMP"; mkdir -p "$TMP"
. tests/lib.sh
# PTB's first lines (1,500 for training, 100 for validation): every run here evaluates its whole
# validation split at step 0 and at its end, which on the built-in corpus was most of the test's CPU
ptb_lines "$TMP/data"
T="--data $TMP/data -t 1 --quiet --eval-interval 0"
# the val_loss of the record of step $2 in run $1's metrics.jsonl
val_at() { grep "^{\"step\": $2," "$1/metrics.jsonl" | grep -o '"val_loss": [0-9.]*' | sed 's/.*: //'; }

$BIN train --config mixtral-tiny $T --tokenizer bpe:300 --steps 20 --out "$TMP/src" >/dev/null 2>&1
$BIN export -m "$TMP/src" --format hf -o "$TMP/hf" >/dev/null 2>&1
src_loss=$(val_at "$TMP/src" 20)
$BIN train --init-from "$TMP/hf" --config mixtral-tiny $T --steps 20 --out "$TMP/ft" >/dev/null 2>&1
check "init-from an f32 HF export: step 0's val loss ${src_loss:-none} is the source's ($(val_at "$TMP/ft" 0))" \
    sh -c "test -n '$src_loss' && test '$src_loss' = '$(val_at "$TMP/ft" 0)'"
check "init-from: fine-tuning lowers the val loss ($(val_at "$TMP/ft" 0) -> $(val_at "$TMP/ft" 20))" \
    awk -v a="$(val_at "$TMP/ft" 0)" -v b="$(val_at "$TMP/ft" 20)" 'BEGIN { exit !(a != "" && b != "" && b < a - 0.1) }'
check "init-from: the run has SRC's tokenizer" cmp -s "$TMP/hf/tokenizer.model" "$TMP/ft/latest/tokenizer.model"
check "init-from: a new run (step 20 of its own schedule, its own warm-up)" \
    sh -c "grep -q '\"step\": 20' '$TMP/ft/latest/state.json' && grep -q '^{\"step\": 1, .*\"lr\": 0.0003,' '$TMP/ft/metrics.jsonl'"
# a run directory (its latest checkpoint; training settings from its state.json without --config)
$BIN train --init-from "$TMP/src" $T --steps 2 --out "$TMP/ft_run" >/dev/null 2>&1
check "init-from a run directory: step 0's val loss is the source's" test "$src_loss" = "$(val_at "$TMP/ft_run" 0)"
# a weight average starts as SRC's weights: step 0 evaluates both to the same loss
$BIN train --init-from "$TMP/hf" $T --steps 1 --set ema_decay=0.9 --out "$TMP/ft_ema" >/dev/null 2>&1
check "init-from with ema_decay: the averaged weights start as SRC's" \
    grep -q "^{\"step\": 0, \"val_loss\": $src_loss, .*\"val_loss_ema\": $src_loss," "$TMP/ft_ema/metrics.jsonl"
# bf16 in shards: the weights rounded to bf16 (relative error <= 2^-9) move the loss by well under 0.02
$BIN export -m "$TMP/src" --format hf --dtype bf16 --max-shard-size 100K -o "$TMP/hf16" >/dev/null 2>&1
$BIN train --init-from "$TMP/hf16" $T --steps 1 --out "$TMP/ft16" >/dev/null 2>&1
check "init-from a bf16 sharded export: step 0's val loss within 0.02 of the source's" \
    awk -v a="$src_loss" -v b="$(val_at "$TMP/ft16" 0)" 'BEGIN { d = a - b; exit !(b != "" && d < 0.02 && d > -0.02) }'
# the dense llama
$BIN train --config llama-tiny $T --tokenizer bpe:300 --steps 5 --out "$TMP/llama" >/dev/null 2>&1
$BIN export -m "$TMP/llama" --format hf -o "$TMP/llama_hf" >/dev/null 2>&1
$BIN train --init-from "$TMP/llama_hf" --config llama-tiny $T --steps 1 --out "$TMP/ft_llama" >/dev/null 2>&1
check "init-from llama-tiny's HF export: step 0's val loss is the source's" \
    sh -c "test -n '$(val_at "$TMP/llama" 5)' && test '$(val_at "$TMP/llama" 5)' = '$(val_at "$TMP/ft_llama" 0)'"
# switch_transformers: a run, and its checkpoint as a plain HF directory (no CHECKSUMS, no state.json)
$BIN train --config switch-t5-tiny $T --steps 4 --out "$TMP/sw" >/dev/null 2>&1
mkdir -p "$TMP/sw_hf"; cp "$TMP/sw/latest/config.json" "$TMP/sw/latest/model.safetensors" "$TMP/sw/latest/tokenizer.model" "$TMP/sw_hf/"
$BIN train --init-from "$TMP/sw_hf" $T --steps 1 --seq-len 32 -b 8 --out "$TMP/ft_sw" >/dev/null 2>&1
check "init-from a switch_transformers HF directory: step 0's loss is the source's" \
    sh -c "test -n '$(val_at "$TMP/sw" 4)' && test '$(val_at "$TMP/sw" 4)' = '$(val_at "$TMP/ft_sw" 0)'"
# bad sources and configs: one line, nothing left behind
B="$TMP/bad"
expect_error "init-from: a missing SRC" "no such directory" $BIN train --init-from "$TMP/nope" $T --out "$B"
mkdir -p "$TMP/empty"
expect_error "init-from: a directory with no model" "no model.safetensors" $BIN train --init-from "$TMP/empty" $T --out "$B"
mkdir -p "$TMP/nocfg"; cp "$TMP/hf/model.safetensors" "$TMP/nocfg/"
expect_error "init-from: no config.json" "no config.json" $BIN train --init-from "$TMP/nocfg" $T --out "$B"
cp -r "$TMP/hf" "$TMP/shape"; sed -i 's/"intermediate_size": 128/"intermediate_size": 96/' "$TMP/shape/config.json"
expect_error "init-from: weights whose shapes differ from the config" "shape" $BIN train --init-from "$TMP/shape" $T --out "$B"
expect_error "init-from: --set d_model=32 changes a shape" "embed_tokens.weight is \[300, 64\] in SRC but \[300, 32\]" \
    $BIN train --init-from "$TMP/hf" --set d_model=32 $T --out "$B"
expect_error "init-from: --config whose model keys differ names the key" "LlamaForCausalLM" \
    $BIN train --init-from "$TMP/hf" --config llama-tiny $T --out "$B"
expect_error "init-from: --tokenizer with a SRC that has one" "own tokenizer" $BIN train --init-from "$TMP/hf" --tokenizer char $T --out "$B"
expect_error "init-from and --resume together" "one of them" $BIN train --init-from "$TMP/hf" --resume "$TMP/src" $T
check "init-from: a refused start leaves no --out" test ! -e "$B"
finish init_from
