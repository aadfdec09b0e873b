#!/bin/sh
# test_mixtral.sh: the Llama / Mixtral family through the CLI: mixtral-tiny trains (loss falls), stops and
# resumes bit-identically, its checkpoint's config.json is HF's (MixtralForCausalLM), generate (float and
# --bf16) and eval run on it, bench runs it, llama-tiny trains; bad configs are refused with one line.
# Ends with "mixtral: N passed, N failed".
BIN=${MOELM_BIN:-./moelm}
TMP=build/tmp/mixtral
rm -rf "$TMP"; mkdir -p "$TMP"
. tests/lib.sh
# PTB's first lines: on the built-in corpus each start trained its BPE tokenizer, tokenized it and
# evaluated its whole validation split at the end (~1 s of CPU a run, where 40 steps take 0.3 s)
ptb_lines "$TMP/data"
T="--config mixtral-tiny --data $TMP/data -t 1 --quiet --eval-interval 0 --tokenizer bpe:300 --log-interval 1"
$BIN train $T --steps 40 --out "$TMP/full" >"$TMP/full.log" 2>&1
check "mixtral-tiny trains 40 steps" test -f "$TMP/full/latest/model.safetensors"
# from ln 300 = 5.70 a model that learns nothing stays there; the mean of the last 5 steps' losses (one
# batch's moves by ~0.1 a step) reaches ~5.18 in these 40 steps
first=$(sed -n 1p "$TMP/full/metrics.jsonl" | sed -E 's/.*"loss": ([0-9.]+).*/\1/')
last=$(mean_last_loss "$TMP/full")
check "mixtral-tiny: the loss falls ($first -> $last)" awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 0.35) }'
check "config.json is HF's Mixtral" grep -q '"architectures": \["MixtralForCausalLM"\]' "$TMP/full/latest/config.json"
check "config.json: GQA and top-2" sh -c "grep -q '\"num_key_value_heads\": 2' '$TMP/full/latest/config.json' &&
    grep -q '\"num_experts_per_tok\": 2' '$TMP/full/latest/config.json'"
$BIN train $T --steps 40 --stop-at 20 --out "$TMP/half" >"$TMP/half.log" 2>&1
$BIN train --resume "$TMP/half" -t 1 --quiet >"$TMP/resume.log" 2>&1
check "stop at 20 and resume: bit-identical weights" cmp -s "$TMP/half/latest/model.safetensors" "$TMP/full/latest/model.safetensors"
$BIN generate -m "$TMP/full" --prompt "the" -n 16 --temp 0 -t 1 >"$TMP/gen1.txt" 2>"$TMP/gen1.err"
$BIN generate -m "$TMP/full" --prompt "the" -n 16 --temp 0 -t 2 >"$TMP/gen2.txt" 2>/dev/null
check "generate: 16 tokens" grep -q "generated 16 tokens" "$TMP/gen1.err"
check "generate: 1 and 2 threads give the same text" sh -c "test -s '$TMP/gen1.txt' && cmp -s '$TMP/gen1.txt' '$TMP/gen2.txt'"
check "generate --bf16 runs" sh -c "$BIN generate -m '$TMP/full' --prompt the -n 8 --bf16 -t 2 >/dev/null 2>&1"
check "bench runs mixtral-tiny" sh -c "$BIN bench --config mixtral-tiny --vocab 300 -b 4 --seq-len 16 --steps 2 --warmup 0 -n 8 --no-peak -t 1 2>&1 | grep -q tok/s"
$BIN train --config tiny --data "$TMP/data" -t 1 --quiet --eval-interval 0 --steps 2 --out "$TMP/nonllama" >/dev/null 2>&1
$BIN train --config llama-tiny --data "$TMP/data" -t 1 --quiet --eval-interval 0 --tokenizer bpe:300 --steps 10 \
    --out "$TMP/llama" >"$TMP/llama.log" 2>&1
check "llama-tiny trains (LlamaForCausalLM)" grep -q '"LlamaForCausalLM"' "$TMP/llama/latest/config.json"
expect_error "mixtral: gelu refused" "hidden_act" $BIN train --config mixtral-tiny --set hidden_act=gelu --data "$TMP/data" --steps 1 --out "$TMP/bad"
expect_error "mixtral: 3 kv heads refused" "num_key_value_heads" $BIN train --config mixtral-tiny --set num_key_value_heads=3 --data "$TMP/data" --steps 1 --out "$TMP/bad"
# Hugging Face directories: exported (f32; bf16 in shards), read back by generate and eval with the
# checkpoint's results, exported again bit-identically
$BIN export -m "$TMP/full" --format hf -o "$TMP/hf" >/dev/null 2>&1
check "export hf: the directory's files" sh -c "for f in config.json model.safetensors tokenizer.model generation_config.json; do test -s '$TMP/hf/'\$f || exit 1; done"
check "export hf: HF's per-expert names" sh -c "grep -aq 'model.layers.1.block_sparse_moe.experts.3.w3.weight' '$TMP/hf/model.safetensors'"
$BIN generate -m "$TMP/hf" --prompt "the" -n 16 --temp 0 -t 1 >"$TMP/gen_hf.txt" 2>/dev/null
check "generate -m HF dir: the checkpoint's text" cmp -s "$TMP/gen1.txt" "$TMP/gen_hf.txt"
$BIN eval -m "$TMP/full" --data "$TMP/data/ptb.valid.txt" -t 1 --seq-len 32 2>&1 | grep perplexity >"$TMP/ev1.txt"
check "eval runs" test -s "$TMP/ev1.txt"
$BIN eval -m "$TMP/hf" --data "$TMP/data/ptb.valid.txt" -t 1 --seq-len 32 2>&1 | grep perplexity >"$TMP/ev2.txt"
check "eval -m HF dir: the checkpoint's perplexity" sh -c "test -s '$TMP/ev1.txt' && cmp -s '$TMP/ev1.txt' '$TMP/ev2.txt'"
$BIN export -m "$TMP/hf" --format hf -o "$TMP/hf2" >/dev/null 2>&1
check "export of an HF dir: bit-identical weights" cmp -s "$TMP/hf/model.safetensors" "$TMP/hf2/model.safetensors"
$BIN export -m "$TMP/full" --format hf --dtype bf16 --max-shard-size 200K -o "$TMP/hfbf" >/dev/null 2>&1
check "export hf bf16 sharded: an index and shards" sh -c "test -s '$TMP/hfbf/model.safetensors.index.json' && ls '$TMP/hfbf' | grep -q 'model-00001-of-'"
check "generate -m a bf16 sharded HF dir" sh -c "$BIN generate -m '$TMP/hfbf' --prompt the -n 8 --temp 0 -t 1 2>&1 | grep -q 'generated 8 tokens'"
expect_error "export: a non-llama model refused" "llama family" $BIN export -m "$TMP/nonllama" --format hf -o "$TMP/x"
# bad Hugging Face directories: one line naming the problem, nothing written
hfbad() { rm -rf "$TMP/bad_$1"; cp -r "$TMP/hf" "$TMP/bad_$1"; }
hfbad mt; sed -i 's/"model_type": "mixtral"/"model_type": "gpt2"/' "$TMP/bad_mt/config.json"
expect_error "HF dir: model_type gpt2 refused" "model_type" $BIN generate -m "$TMP/bad_mt" -n 2
hfbad tok; rm "$TMP/bad_tok/tokenizer.model"
expect_error "HF dir: no tokenizer.model" "tokenizer.model" $BIN generate -m "$TMP/bad_tok" -n 2
hfbad ex; sed -i 's/"num_local_experts": 4/"num_local_experts": 2/' "$TMP/bad_ex/config.json"
expect_error "HF dir: experts beyond the config" "gate.weight.*shape" $BIN eval -m "$TMP/bad_ex" --data "$TMP/data/ptb.valid.txt"
hfbad sh; sed -i 's/"intermediate_size": 128/"intermediate_size": 96/' "$TMP/bad_sh/config.json"
expect_error "HF dir: a shape differs from the config" "shape" $BIN generate -m "$TMP/bad_sh" -n 2
hfbad kv; sed -i 's/"num_key_value_heads": 2/"num_key_value_heads": 4/' "$TMP/bad_kv/config.json"
expect_error "HF dir: k_proj's shape against num_key_value_heads" "k_proj" $BIN generate -m "$TMP/bad_kv" -n 2
hfbad v; sed -i 's/"vocab_size": 300/"vocab_size": 200/' "$TMP/bad_v/config.json"
expect_error "HF dir: vocab_size against the tokenizer and weights" "vocab_size" $BIN generate -m "$TMP/bad_v" -n 2
expect_error "export: --format onnx refused" "format" $BIN export -m "$TMP/full" --format onnx -o "$TMP/x"
expect_error "export: --dtype q4 refused" "dtype" $BIN export -m "$TMP/full" --format hf --dtype q4 -o "$TMP/x"
check "nothing written by the refused exports" test ! -e "$TMP/x"
finish mixtral
