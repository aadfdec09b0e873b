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
expect_error "forward: missing --inputs" "required" $BIN forward -m $REF/switch_tied -o "$TMP/no.out"
expect_error "forward: unknown flag" "unknown flag" $BIN forward --bogus

finish switch_cli
