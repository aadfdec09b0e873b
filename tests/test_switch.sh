#!/bin/sh
# test_switch.sh: the switch_transformers model through the moelm command: `moelm forward` on the
# reference's Hugging Face directories (the numbers themselves: tests/test_switch.c), and hostile
# inputs: a catalogue of HF config.json files, inputs files and weight sets, each of which must give
# exactly one stderr line naming the file and the problem, a non-zero exit below 128, no output file.
# Ends with "switch_cli: N passed, N failed" and exits non-zero on failure.
BIN=${MOELM_BIN:-./moelm}
TMP=build/tmp/switch
rm -rf "$TMP"; mkdir -p "$TMP"
. "$(dirname "$0")/lib.sh"
REF=tests/ref/switch

# ---- the reference directories run -------------------------------------------------------------------
for m in switch_tied switch_untied; do
    $BIN forward -m $REF/$m --inputs $REF/$m.inputs.safetensors -o "$TMP/$m.out.safetensors" -t 1 2>"$TMP/$m.err"
    check "forward $m: exit 0 and an output" test -s "$TMP/$m.out.safetensors"
done
check "forward notes the ignored keys of switch_untied" grep -q "ignored keys: is_gated_act, router_type" "$TMP/switch_untied.err"
check "forward --help names the outputs" sh -c "$BIN forward --help | grep -q encoder_last_hidden_state"

# ---- training, resume, eval, generate (the built-in corpus, span corruption) --------------------------------
T1="-t 1 --quiet"
$BIN train --config switch-t5-tiny --steps 100 -b 8 --lr 1e-2 --eval-interval 0 --out "$TMP/learn" $T1 \
    >"$TMP/learn.log" 2>&1
val=$(grep val_loss "$TMP/learn/metrics.jsonl" | tail -n 1 | sed -E 's/.*"val_loss": ([0-9.]+).*/\1/')
# the span-corruption loss starts at ln 1056 = 6.96 (uniform over the vocabulary); the unigram entropy of
# the built-in corpus is 5.34 nats; 100 steps at lr 1e-2 reach 4.02 (200 at 5e-3 reached ~3.9, at ~1.7x the CPU)
check "switch-t5-tiny learns: span-corruption val loss ${val:-none} < 4.3" awk "BEGIN{exit !(${val:-99} < 4.3)}"
check "metrics name the stacks' sparse blocks" grep -q '"stack": "decoder", "block": 1' "$TMP/learn/metrics.jsonl"
$BIN report "$TMP/learn" -o "$TMP/report.html" >/dev/null 2>&1
check "the report names the stacks' sparse blocks" grep -q "decoder block 1" "$TMP/report.html"
# exact resume: 12 steps, or 6 (--stop-at) + resume + 6: the same losses and the same final weights (with
# dropout, so that its masks, on the probabilities and the experts' activations too, continue exactly)
D="--set dropout_rate=0.1"
$BIN train --config switch-t5-tiny $D --steps 12 --ckpt-interval 6 --eval-interval 0 --log-interval 1 --out "$TMP/full" $T1 >/dev/null 2>&1
$BIN train --config switch-t5-tiny $D --steps 12 --ckpt-interval 6 --eval-interval 0 --log-interval 1 --stop-at 6 --out "$TMP/half" $T1 >/dev/null 2>&1
$BIN train --resume "$TMP/half" --log-interval 1 $T1 >/dev/null 2>&1
losses() { grep '"loss"' "$1/metrics.jsonl" | sed -E 's/.*"loss": ([0-9.]+).*/\1/' | tr '\n' ' '; }
check "resume: the same 12 losses" test "$(losses "$TMP/full")" = "$(losses "$TMP/half")"
check "resume: the same final weights" cmp -s "$TMP/full/latest/model.safetensors" "$TMP/half/latest/model.safetensors"
# the checkpoint is a Hugging Face directory: HF's config keys, per-expert tensor names
check "checkpoint config.json is HF's" grep -q '"architectures": \["SwitchTransformersForConditionalGeneration"\]' "$TMP/full/latest/config.json"
check "checkpoint names experts as HF" grep -q 'decoder.block.1.layer.2.mlp.experts.expert_3.wo.weight' "$TMP/full/latest/model.safetensors"
$BIN forward -m "$TMP/full/latest" --inputs $REF/switch_tied.inputs.safetensors -o "$TMP/ck.out" -t 1 2>/dev/null
check "forward runs on a checkpoint" test -s "$TMP/ck.out"
$BIN eval -m "$TMP/learn" -t 1 >"$TMP/eval.log" 2>&1
check "eval reports the span-corruption loss and target perplexity" grep -q "span-corruption loss .*target perplexity" "$TMP/eval.log"
check "eval prints each sparse block's statistics" grep -q "decoder block 1: dropped" "$TMP/eval.log"
$BIN generate -m "$TMP/learn" -p "the <extra_id_0> of the" --temp 0 -n 8 -t 1 >"$TMP/g1" 2>/dev/null
$BIN generate -m "$TMP/learn" -p "the <extra_id_0> of the" --temp 0 -n 8 -t 1 >"$TMP/g2" 2>/dev/null
check "greedy generation is deterministic and non-empty" sh -c "test -s $TMP/g1 && cmp -s $TMP/g1 $TMP/g2"
$BIN generate -m "$TMP/learn" -p "the <extra_id_0> of the" --beams 3 --length-penalty 0.6 -n 8 -t 1 >"$TMP/g3" 2>/dev/null
check "beam search generates" test -s "$TMP/g3"
expect_error "generate: a HF directory without a tokenizer" "no tokenizer" $BIN generate -m $REF/switch_tied -p "a" -n 2
expect_error "generate: --beams on a decoder-only model" "encoder-decoder" sh -c "$BIN train --config tiny --steps 1 --eval-interval 0 --out $TMP/lm -t 1 --quiet >/dev/null 2>&1; $BIN generate -m $TMP/lm --beams 2 -n 2"
# moelm's other routers in the encoder-decoder: top-2 trains, checkpoints and decodes
$BIN train --config switch-t5-tiny --set moelm_router=topk --set moelm_experts_per_tok=2 --steps 6 --eval-interval 0 \
    --out "$TMP/top2" -t 1 >"$TMP/top2.log" 2>&1
check "top-2 routing trains (the summary says so)" grep -q "top-2" "$TMP/top2.log"
check "top-2: the checkpoint's config names the router" grep -q '"moelm_router": "topk"' "$TMP/top2/latest/config.json"
$BIN generate -m "$TMP/top2" -p "the" --beams 2 -n 4 -t 1 >"$TMP/top2.gen" 2>/dev/null
check "top-2: beam search decodes" test -s "$TMP/top2.gen"
# a time budget ends the run on time (1.2 s; 1.5 s of slack), with its final evaluation and checkpoint
$BIN train --config switch-t5-tiny --steps 100000 --time-budget 0.02 --eval-interval 0 --out "$TMP/budget" $T1 >/dev/null 2>&1
check "time budget: a checkpoint within the budget" sh -c "t=\$(tail -n 1 $TMP/budget/metrics.jsonl | sed -E 's/.*\"time_s\": ([0-9.]+).*/\\1/'); awk \"BEGIN{exit !(\$t < 2.7)}\" && test -d $TMP/budget/latest"

# input<TAB>target pairs (--data FILE.tsv): reverse a sequence of 3-7 words over a vocabulary of 20; the
# target loss starts near ln 24 (3.2) and a uniform guess over the 20 words is 3.0; 200 steps at lr 1e-2 reach
# 1.61 (300 at 5e-3 reached 1.18, at 1.5x the CPU)
awk 'BEGIN{srand(3); split("red green blue cat dog sun moon tree car book fish bird star rain wind fire stone gold milk bread",w," ");
     for(i=0;i<3000;i++){n=3+int(rand()*5); s=""; for(j=0;j<n;j++){a[j]=w[1+int(rand()*20)]; s=s (j?" ":"") a[j]}
     t=""; for(j=n-1;j>=0;j--) t=t (j<n-1?" ":"") a[j]; print s "\t" t}}' >"$TMP/rev.tsv"
$BIN train --config switch-t5-tiny --data "$TMP/rev.tsv" --steps 200 -b 16 --seq-len 12 --lr 1e-2 --eval-interval 0 \
    --out "$TMP/rev" -t 1 >"$TMP/rev.log" 2>&1
tl=$(grep val_loss "$TMP/rev/metrics.jsonl" | tail -n 1 | sed -E 's/.*"val_loss": ([0-9.]+).*/\1/')
check "seq2seq pairs: the objective is named" grep -q "objective: sequence to sequence, 2700 train and 150 valid" "$TMP/rev.log"
check "seq2seq pairs learn: target loss ${tl:-none} < 2.0" awk "BEGIN{exit !(${tl:-99} < 2.0)}"
$BIN eval -m "$TMP/rev" --data "$TMP/rev.tsv" -t 1 >"$TMP/rev.eval" 2>&1
check "eval of pairs reports the target loss and perplexity" grep -q "target loss .*target perplexity" "$TMP/rev.eval"
printf 'a b\tb a\nno tab on this line\n' >"$TMP/bad.tsv"
expect_error "pairs: a line without a tab" "bad.tsv.*line 2 has no tab" $BIN train --config switch-t5-tiny --data "$TMP/bad.tsv" --steps 1 --out "$TMP/badrun" $T1

# ---- hostile config.json (the tied fixture's weights, a broken config) ------------------------------------
C=$TMP/config
nc=0
cfg() {  # cfg NAME PATTERN JSON (the pattern names the file: config.json, or the weights it disagrees with)
    nc=$((nc + 1)); d="$C/$1"; mkdir -p "$d"
    cp $REF/switch_tied/model.safetensors "$d/"
    printf '%s' "$3" >"$d/config.json"
    expect_error "config: $1" "$2" $BIN forward -m "$d" --inputs $REF/switch_tied.inputs.safetensors -o "$TMP/no.out" -t 1
    check "config: $1 leaves no output" test ! -e "$TMP/no.out"
}
base='"model_type": "switch_transformers", "vocab_size": 40, "d_model": 12, "d_kv": 6, "num_heads": 2, "d_ff": 16, "num_experts": 4, "expert_capacity": 3, "num_layers": 4, "num_sparse_encoder_layers": 2, "num_decoder_layers": 3, "num_sparse_decoder_layers": 1, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 12, "decoder_start_token_id": 0'
cfg router-bias      "config.json.*(router_bias)"                    "{$base, \"router_bias\": true}"
cfg gated-gelu       "config.json.*(dense_act_fn)"                   "{$base, \"dense_act_fn\": \"gated-gelu\"}"
cfg alias-conflict   "config.json.*(disagrees)"                      "{$base, \"hidden_size\": 768}"
cfg max-distance     "config.json.*(relative_attention_max_distance)" "{$base, \"relative_attention_max_distance\": 3}"
cfg few-buckets      "config.json.*(relative_attention_num_buckets)" "{$base, \"relative_attention_num_buckets\": 2}"
cfg zero-dkv         "config.json.*(d_kv)"                           "$(echo "{$base}" | sed 's/"d_kv": 6/"d_kv": 0/')"
cfg null-layers      "config.json.*(num_layers)"                     "$(echo "{$base}" | sed 's/"num_layers": 4/"num_layers": null/')"
cfg string-heads     "config.json.*(num_heads)"                      "$(echo "{$base}" | sed 's/"num_heads": 2/"num_heads": "two"/')"
cfg array-dff        "config.json.*(d_ff)"                           "$(echo "{$base}" | sed 's/"d_ff": 16/"d_ff": [16]/')"
cfg huge-experts     "config.json.*(num_experts)"                    "$(echo "{$base}" | sed 's/"num_experts": 4/"num_experts": 4096/')"
cfg start-out-of-vocab "config.json.*(decoder_start_token_id)"       "$(echo "{$base}" | sed 's/"decoder_start_token_id": 0/"decoder_start_token_id": 40/')"
cfg router-dtype     "config.json.*(router_dtype)"                   "{$base, \"router_dtype\": \"int8\"}"
cfg not-encdec       "config.json.*(is_encoder_decoder)"             "{$base, \"is_encoder_decoder\": false}"
cfg negative-step    "config.json.*(sparse_step)"                    "{$base, \"encoder_sparse_step\": -3}"
cfg dropout          "config.json.*(dropout_rate)"                   "{$base, \"dropout_rate\": 1}"
cfg int-overflow     "config.json.*(d_model)"                        "$(echo "{$base}" | sed 's/"d_model": 12/"d_model": 4294967308/')"
cfg duplicate-key    "config.json.*(duplicate)"                      "{$base, \"d_ff\": 16}"
cfg float-overflow   "config.json.*(router_aux_loss_coef.*out of range)" "{$base, \"router_aux_loss_coef\": 1e47}"   # fuzz_config's find
cfg wrong-shapes     "model.safetensors.*mlp.wi.weight.*shape"                 "$(echo "{$base}" | sed 's/"d_ff": 16/"d_ff": 17/')"
cfg fewer-layers     "fewer-layers.*no tensor.*router" "$(echo "{$base}" | sed 's/"num_layers": 4/"num_layers": 3/')"
cfg no-vocab         "shared.weight.*32128"                     "$(echo "{$base}" | sed 's/"vocab_size": 40, //')"
echo "   config catalogue: $nc files"

# ---- hostile inputs files (safetensors made here: 8-byte length, header, data) ---------------------------
st() {  # st FILE HEADER DATA_BYTES (the data: bytes of value 1)
    len=$(printf '%s' "$2" | wc -c)
    { printf "\\$(printf '%03o' $((len & 255)))\\$(printf '%03o' $((len >> 8)))\\000\\000\\000\\000\\000\\000"; printf '%s' "$2";
      head -c "$3" /dev/zero | tr '\000' '\001'; } >"$1"
}
I=$TMP/inputs; mkdir -p "$I"
ni=0
inp() {  # inp NAME PATTERN HEADER BYTES
    ni=$((ni + 1)); st "$I/$1.safetensors" "$3" "$4"
    expect_error "inputs: $1" "$1.safetensors.*($2)" $BIN forward -m $REF/switch_tied --inputs "$I/$1.safetensors" -o "$TMP/no.out" -t 1
    check "inputs: $1 leaves no output" test ! -e "$TMP/no.out"
}
# ids of value 0x01010101 are out of the vocabulary (40); a [1, 2] tensor of I32 is 8 bytes
inp no-case        "no case"                 '{"x.attention_mask":{"dtype":"I32","shape":[1,2],"data_offsets":[0,8]}}' 8
inp float-ids      "int32"                   '{"a.input_ids":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},"a.labels":{"dtype":"F32","shape":[1,2],"data_offsets":[8,16]}}' 16
inp rank-3         "int32"                   '{"a.input_ids":{"dtype":"I32","shape":[1,1,2],"data_offsets":[0,8]}}' 8
inp id-range       "vocabulary"              '{"a.input_ids":{"dtype":"I32","shape":[1,2],"data_offsets":[0,8]},"a.decoder_input_ids":{"dtype":"I32","shape":[1,2],"data_offsets":[8,16]}}' 16
inp mask-shape     "attention_mask.*shape"   '{"a.input_ids":{"dtype":"I32","shape":[1,2],"data_offsets":[0,8]},"a.attention_mask":{"dtype":"I32","shape":[1,1],"data_offsets":[8,12]}}' 12
inp stray-tensor   "a.logits.*not"           '{"a.input_ids":{"dtype":"I32","shape":[1,2],"data_offsets":[0,8]},"a.logits":{"dtype":"I32","shape":[1,2],"data_offsets":[8,16]}}' 16
inp no-decoder     "decoder_input_ids or"    '{"a.input_ids":{"dtype":"I32","shape":[1,1],"data_offsets":[0,4]}}' 4
inp labels-batch   "labels.*match"           '{"a.input_ids":{"dtype":"I32","shape":[1,2],"data_offsets":[0,8]},"a.labels":{"dtype":"I32","shape":[2,1],"data_offsets":[8,16]}}' 16
inp dmask-alone     "decoder_attention_mask without" '{"a.input_ids":{"dtype":"I32","shape":[1,2],"data_offsets":[0,8]},"a.decoder_attention_mask":{"dtype":"I32","shape":[1,2],"data_offsets":[8,16]}}' 16
inp dmask-shape     "decoder_attention_mask.*match" '{"a.input_ids":{"dtype":"I32","shape":[1,2],"data_offsets":[0,8]},"a.labels":{"dtype":"I32","shape":[1,2],"data_offsets":[8,16]},"a.decoder_attention_mask":{"dtype":"I32","shape":[1,3],"data_offsets":[16,28]}}' 28
inp truncated      "size|end|offsets|bytes|file"            '{"a.input_ids":{"dtype":"I32","shape":[1,2],"data_offsets":[0,8]}}' 5
printf 'not a safetensors file at all' >"$I/text.safetensors"; ni=$((ni + 1))
expect_error "inputs: not safetensors" "$I/text" $BIN forward -m $REF/switch_tied --inputs "$I/text.safetensors" -o "$TMP/no.out" -t 1
echo "   inputs catalogue: $ni files"

# ---- weight sets that do not fit the config ----------------------------------------------------------------
W=$TMP/weights
wset() {  # wset NAME PATTERN: the tied model's config with the untied model's weights, or an empty dir
    mkdir -p "$W/$1"; cp $REF/switch_tied/config.json "$W/$1/"
    expect_error "weights: $1" "$2" $BIN forward -m "$W/$1" --inputs $REF/switch_tied.inputs.safetensors -o "$TMP/no.out" -t 1
}
wset none "model.safetensors|no such|cannot open"
mkdir -p "$W/other"; cp $REF/switch_untied/model-0000* $REF/switch_untied/model.safetensors.index.json "$W/other/"
wset other "shape|no tensor|no place"
# tokenizers a directory may bring: one that already has a sentinel's name, one too large for the model
H=$TMP/hfdir; mkdir -p "$H"; cp $REF/switch_tied/config.json $REF/switch_tied/model.safetensors "$H/"
printf 'a b c <extra_id_3> d\n' >"$TMP/tk.txt"
$BIN tokenizer train --input "$TMP/tk.txt" --model_prefix "$TMP/tkw" --model_type word --vocab_size 10 >/dev/null 2>&1
cp "$TMP/tkw.model" "$H/tokenizer.model"
expect_error "tokenizer: a piece named like a sentinel" "tokenizer.model.*already has the piece \"<extra_id_3>\"" \
    $BIN generate -m "$H" -p "a" -n 2
awk 'BEGIN{for(i=0;i<60;i++) printf "w%d ", i; print ""}' >"$TMP/big.txt"
$BIN tokenizer train --input "$TMP/big.txt" --model_prefix "$TMP/big" --model_type word --vocab_size 100 >/dev/null 2>&1
cp "$TMP/big.model" "$H/tokenizer.model"
expect_error "tokenizer: more pieces than the model's vocabulary" "more than the model's vocab_size 40" \
    $BIN generate -m "$H" -p "w1" -n 2
# the same read from HF's name for T5's tokenizer, spiece.model; and a spiece.model that is not one
rm -f "$H/tokenizer.model"; cp "$TMP/tkw.model" "$H/spiece.model"
expect_error "spiece.model: a piece named like a sentinel" "spiece.model.*already has the piece \"<extra_id_3>\"" \
    $BIN generate -m "$H" -p "a" -n 2
head -c 300 /dev/urandom >"$H/spiece.model"
expect_error "spiece.model: random bytes" "spiece.model" $BIN generate -m "$H" -p "a" -n 2
printf '\012\005\012\001a\025' >"$H/spiece.model"   # a piece field cut off inside its score
expect_error "spiece.model: truncated" "spiece.model" $BIN generate -m "$H" -p "a" -n 2
expect_error "forward: missing --inputs" "required" $BIN forward -m $REF/switch_tied -o "$TMP/no.out"
expect_error "forward: unknown flag" "unknown flag" $BIN forward --bogus

finish switch_cli
