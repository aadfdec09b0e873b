#!/bin/sh
# test_hostile.sh: corrupt and adversarial inputs to every reader the moelm command has, and invalid
# command-line values. Each must give exactly one stderr line that names the file (or the flag) and
# the problem, a non-zero exit below 128 (no crash, no sanitizer report), and nothing else.
# Catalogues: config.json (--config), state.json (in a checkpoint, CHECKSUMS rewritten so that the
# state parser itself is reached), tokenizer .model files (moelm tokenizer encode --model), checkpoint
# safetensors, checkpoint integrity (what a consistent CHECKSUMS cannot catch, and what it must),
# tokenizer training, run directories (pruning, the token cache, the lock, resume from a checkpoint
# directory, small data) and command-line values. Token files: tests/test_data.c
# (tokens_corrupt_files); safetensors at the C level: tests/test_io.c.
# Ends with "hostile: N passed, N failed" and exits non-zero on failure.
BIN=${MOELM_BIN:-./moelm}
TMP=build/tmp/hostile
rm -rf "$TMP"; mkdir -p "$TMP"
. "$(dirname "$0")/lib.sh"


# le32 N: N as 4 little-endian bytes
le32() { printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $(($1 & 255)) $((($1 >> 8) & 255)) $((($1 >> 16) & 255)) $((($1 >> 24) & 255)))"; }
# crc32 FILE: zlib's CRC-32 in hex, from gzip's trailer
crc32() { gzip -c <"$1" | tail -c 8 | od -An -tx4 -N4 | tr -d ' \n'; }

# ---- config.json ------------------------------------------------------------------------------------
C=$TMP/config; mkdir -p "$C"
nc=0
cfg() {  # cfg NAME PATTERN JSON
    nc=$((nc + 1)); f="$C/$1.json"; printf '%s' "$3" >"$f"
    expect_error "config: $1" "$f.*($2)" $BIN train --config "$f" --steps 1 --out "$TMP/run-$1" -t 1 --quiet
}
cfg empty            "empty|unexpected|end"       ''
cfg array            "object"                     '[1, 2]'
cfg string-for-int   "d_model"                    '{"d_model": "abc"}'
cfg negative-size    "d_model"                    '{"d_model": -4}'
cfg huge-size        "d_model"                    '{"d_model": 1e30}'
cfg fraction         "d_model"                    '{"d_model": 64.5}'
cfg int-overflow     "n_positions.*out of range"  '{"n_positions": 2147483648}'
cfg int-1e9          "n_positions must be in"     '{"n_positions": 1000000000}'   # was "not an integer" (1e+09)
cfg int-3e9          "d_model: 3000000000 is out of range" '{"d_model": 3000000000}'
cfg heads-not-divide "num_heads"                  '{"d_model": 64, "num_heads": 3}'
cfg unknown-key      "unknown"                    '{"no_such_key": 1}'
cfg nan-string       "capacity_factor"            '{"capacity_factor": "NaN"}'
cfg inf-string       "capacity_factor"            '{"capacity_factor": "inf"}'
cfg dropout-range    "dropout_rate"               '{"dropout_rate": 1.5}'
cfg null-value       "d_model"                    '{"d_model": null}'
cfg array-value      "d_model"                    '{"d_model": [64]}'
cfg nested-object    "moe"                        '{"moe": {"num_experts": 8}}'
cfg negative-layers  "num_layers"                 '{"num_layers": -1}'
cfg negative-vocab   "vocab_size"                 '{"vocab_size": -1}'
cfg huge-experts     "num_experts"                '{"num_experts": 100000000}'
cfg k-above-e        "num_experts_per_tok"        '{"num_experts": 4, "router_type": "topk", "num_experts_per_tok": 9}'
cfg bad-router       "router_type"                '{"router_type": "bogus"}'
cfg bad-act-type     "hidden_act"                 '{"hidden_act": 5}'
cfg bad-bool         "tie_word_embeddings"        '{"tie_word_embeddings": "maybe"}'
cfg syntax           "bad|expected|unexpected|invalid" '{"d_model": 64,, }'
cfg truncated        "end|unexpected|expected"    '{"d_model": 6'
cfg trailing         "trailing|after|unexpected"  '{"d_model": 64} x'
cfg bad-utf8         "UTF-8|utf|invalid"          "$(printf '{"d_\377model": 64}')"
cfg deep-nesting     "deep|nest|depth"            "$(awk 'BEGIN{for(i=0;i<100000;i++) printf "["; for(i=0;i<100000;i++) printf "]"}')"
cfg float-overflow   "router_aux_loss_coef: [0-9]* is out of range" '{"router_aux_loss_coef": 1e39}'   # a finite double, an infinite float
cfg negative-eps     "layer_norm_epsilon"         '{"layer_norm_epsilon": -1}'
cfg ad-descending    "adaptive_softmax_cutoffs must ascend" '{"adaptive_softmax_cutoffs": "50,20"}'
cfg ad-not-a-list    "adaptive_softmax_cutoffs: .* is not a comma-separated list" '{"adaptive_softmax_cutoffs": "1,,2"}'
cfg ad-negative      "adaptive_softmax_cutoffs: .* is not a comma-separated list" '{"adaptive_softmax_cutoffs": "-5"}'
cfg ad-too-many      "adaptive_softmax_cutoffs: at most 8" '{"adaptive_softmax_cutoffs": "1,2,3,4,5,6,7,8,9"}'
cfg ad-on-seed       "only model_type lm"         '{"model_type": "seed", "adaptive_softmax_cutoffs": "5"}'
cfg pos-unknown      "position_embedding: 'alibi' is not learned or rope" '{"position_embedding": "alibi"}'
cfg rope-on-seed     "position_embedding rope: only model_type lm" '{"model_type": "seed", "position_embedding": "rope"}'
cfg rope-theta       "rope_theta" '{"position_embedding": "rope", "rope_theta": 0.5}'
cfg rope-odd-heads   "even head width" '{"position_embedding": "rope", "d_model": 30, "num_heads": 2}'
cfg negative-sparse  "sparse_step"                '{"sparse_step": -1}'
cfg newline-in-key   "unknown"                    '{"d_\nmodel": 64}'
printf '{"d_model": 64\000}' >"$C/nul.json"; nc=$((nc + 1))
expect_error "config: NUL byte" "$C/nul.json" $BIN train --config "$C/nul.json" --steps 1 --out "$TMP/run-nul" -t 1 --quiet
echo "   config catalogue: $nc files"

# ---- state.json (in a checkpoint; CHECKSUMS rewritten so the parser itself is reached) -------------
# the runs here train on PTB's first lines (each start on the built-in corpus tokenized it: ~0.3 s of CPU)
ptb_lines "$TMP/data"
D="--data $TMP/data --tokenizer word:1000"   # 1,000 words: the head over all 4,249 made steps 2x slower
$BIN train --config tiny $D --steps 2 --ckpt-interval 2 --eval-interval 0 --out "$TMP/base" -t 1 --quiet >/dev/null 2>&1
good_state=$(cat "$TMP/base/latest/state.json")
ns=0
state() {  # state NAME PATTERN JSON
    ns=$((ns + 1)); r="$TMP/st-$1"; rm -rf "$r"; cp -r "$TMP/base" "$r"
    d=$(cd "$r/latest" && pwd -P)
    printf '%s' "$3" >"$d/state.json"
    grep -v ' state.json$' "$d/CHECKSUMS" >"$d/CHECKSUMS.new"
    echo "$(crc32 "$d/state.json") $(wc -c <"$d/state.json" | tr -d ' ') state.json" >>"$d/CHECKSUMS.new"
    mv "$d/CHECKSUMS.new" "$d/CHECKSUMS"
    expect_error "state: $1" "state.json.*($2)|($2).*state.json" $BIN train --resume "$r" --steps 4 -t 1 --quiet
}
# sub KEY VALUE: the good state with "KEY": VALUE
sub() { printf '%s' "$good_state" | sed -E "s/\"$1\": [^,]*,/\"$1\": $2,/"; }
state empty          "empty|end|unexpected"    ''
state not-object     "object"                  '[]'
state empty-object   "missing"                 '{}'
state step-negative  "step"                    "$(sub step -1)"
state step-string    "step"                    "$(sub step '"abc"')"
state step-huge      "step"                    "$(sub step 1e300)"
state epoch-number   "data_epoch"              "$(sub data_epoch 3)"
state pos-negative   "position"                "$(sub data_pos '"-1"')"
state pos-overflow   "data_pos"                "$(sub data_pos '"18446744073709551616"')"
state pos-past-end   "position"                "$(sub data_pos '"99999999"')"
state rng-text       "rng"                     "$(sub rng '"x1"')"
state seed-empty     "seed"                    "$(sub seed '""')"
state threads-zero   "threads"                 "$(sub threads 0)"
state threads-huge   "threads"                 "$(sub threads 1e9)"
state batch-zero     "batch_size"              "$(sub batch_size 0)"
state seq-negative   "seq_len"                 "$(sub seq_len -5)"
state elapsed-nan    "elapsed_s"               "$(sub elapsed_s '"NaN"')"
state tokens-neg     "tokens_seen"             "$(sub tokens_seen -1)"
state data-number    "data"                    "$(sub data 7)"
state tok-hash       "tokenizer|hash"          "$(sub tokenizer_hash '"123"')"
state bf16-number    "bf16"                    "$(sub bf16 3)"
state train-lr-text  "lr"                      "$(printf '%s' "$good_state" | sed -E 's/"lr": [^,]*,/"lr": "abc",/')"
state train-lr-neg   "lr"                      "$(printf '%s' "$good_state" | sed -E 's/"lr": [^,]*,/"lr": -1,/')"
state train-unknown  "unknown|bogus"           "$(printf '%s' "$good_state" | sed -E 's/"lr": [^,]*,/"bogus": 1,/')"
state garbled-tail   "trailing"                "$(printf '%s' "$good_state" | sed -E 's/"train": .*/"train": [1]/; s/$/}/')"
state train-array    "train"                   "$(printf '%s' "$good_state" | tr -d '\n' | sed -E 's/"train": \{.*\}/"train": [1]/')"
state truncated      "end|unexpected|expected" "$(printf '%s' "$good_state" | head -c 100)"
state deep-nesting   "deep|nest|depth"         "$(awk 'BEGIN{for(i=0;i<100000;i++) printf "["; for(i=0;i<100000;i++) printf "]"}')"
echo "   state.json catalogue: $ns files"
# and an edit that does not rewrite CHECKSUMS is refused by it
r="$TMP/st-unsummed"; cp -r "$TMP/base" "$r"; d=$(cd "$r/latest" && pwd -P)
sed -i 's/"seed": "1"/"seed": "2"/' "$d/state.json"
expect_error "state: an edit without CHECKSUMS is caught" "state.json" $BIN train --resume "$r" --steps 4 -t 1 --quiet
r="$TMP/cfg-unsummed"; cp -r "$TMP/base" "$r"; d=$(cd "$r/latest" && pwd -P)
sed -i 's/"d_model": 32/"d_model": 64/' "$d/config.json"
expect_error "config.json edited in a checkpoint is caught" "config.json" $BIN train --resume "$r" --steps 4 -t 1 --quiet

# ---- checkpoint safetensors (CHECKSUMS rewritten) ---------------------------------------------------
nt=0
weights() {  # weights NAME PATTERN: after the file was changed by the caller in $d
    nt=$((nt + 1))
    grep -v ' model.safetensors$' "$d/CHECKSUMS" >"$d/CHECKSUMS.new"
    echo "$(crc32 "$d/model.safetensors") $(wc -c <"$d/model.safetensors" | tr -d ' ') model.safetensors" >>"$d/CHECKSUMS.new"
    mv "$d/CHECKSUMS.new" "$d/CHECKSUMS"
    expect_error "safetensors: $1" "model.safetensors.*($2)" $BIN eval -m "$r" -t 1 -b 2
}
newck() { r="$TMP/w-$1"; rm -rf "$r"; cp -r "$TMP/base" "$r"; d=$(cd "$r/latest" && pwd -P); f=$d/model.safetensors; }
newck trunc;  head -c 1000 "$f" >"$f.x"; mv "$f.x" "$f"; weights truncated "truncat|short|size|bytes"
newck empty;  : >"$f"; weights empty "truncat|short|size|bytes|empty"
newck hlen;   { printf '\377\377\377\377\377\377\377\177'; tail -c +9 "$f"; } >"$f.x"; mv "$f.x" "$f"; weights "huge header length" "header"
newck json;   { head -c 8 "$f"; printf '[1,2,3'; tail -c +15 "$f"; } >"$f.x"; mv "$f.x" "$f"; weights "header not JSON" "header|JSON|json|expected"
newck dtype;  sed -i '0,/"F32"/s//"F64"/' "$f"; weights "wrong dtype" "dtype|F64|size|bytes|offset"
newck shape;  sed -i '0,/"shape":\[/s//"shape":[7,/' "$f"; weights "wrong shape" "shape|size|bytes|offset|expected"
echo "   checkpoint safetensors: $nt files (the C-level catalogue is in tests/test_io.c)"

# ---- checkpoint integrity: what CHECKSUMS alone cannot catch, and what it must -------------------------
# resum D FILE: rewrite FILE's CHECKSUMS line in checkpoint D (a consistent edit)
resum() {
    grep -v " $2\$" "$1/CHECKSUMS" >"$1/CHECKSUMS.new"
    echo "$(crc32 "$1/$2") $(wc -c <"$1/$2" | tr -d ' ') $2" >>"$1/CHECKSUMS.new"
    mv "$1/CHECKSUMS.new" "$1/CHECKSUMS"
}
# f32at FILE INDEX BYTES: overwrite float INDEX of FILE's data region (after the safetensors header)
f32at() {
    hl=$(od -An -tu4 -N4 "$1" | tr -d ' ')
    printf "$3" | dd of="$1" bs=1 seek=$((8 + hl + 4 * $2)) conv=notrunc 2>/dev/null
}
newck nan;  f32at "$f" 5 '\000\000\300\177'; resum "$d" model.safetensors
expect_error "checkpoint: NaN weight" "model.safetensors.*tensor .* holds nan.*not a finite" $BIN eval -m "$r" -t 1 -b 2
newck inf;  f32at "$f" 0 '\000\000\200\177'; resum "$d" model.safetensors
expect_error "checkpoint: Inf weight" "model.safetensors.*tensor .* holds inf" $BIN generate -m "$r" -n 2 -t 1
newck adam-nan; f32at "$d/optimizer.safetensors" 3 '\000\000\300\177'; resum "$d" optimizer.safetensors
expect_error "checkpoint: NaN Adam moment on resume" "optimizer.safetensors.*adam.m.*not a finite" $BIN train --resume "$r" --steps 4 -t 1 --quiet
newck adam-neg
# adam.v follows adam.m: its first float is n_params floats after the data start
np=$(head -c 120 "$d/optimizer.safetensors" | LC_ALL=C tr -c '[:print:]' ' ' | LC_ALL=C sed -n 's/.*"adam.m":{[^}]*"shape":\[\([0-9]*\)\].*/\1/p')
f32at "$d/optimizer.safetensors" $((np + 2)) '\000\000\200\277'; resum "$d" optimizer.safetensors
expect_error "checkpoint: negative second moment on resume" "adam.v.*>= 0" $BIN train --resume "$r" --steps 4 -t 1 --quiet
newck sums-header; echo '# moelm CHECKSUMS v1: crc32 size name' >"$d/CHECKSUMS"; printf 'X' | dd of="$f" bs=1 seek=200 conv=notrunc 2>/dev/null
expect_error "checkpoint: CHECKSUMS with only its header" "CHECKSUMS.*does not list" $BIN eval -m "$r" -t 1 -b 2
newck sums-gap; grep -v ' model.safetensors$' "$d/CHECKSUMS" >"$d/C.new"; mv "$d/C.new" "$d/CHECKSUMS"
expect_error "checkpoint: CHECKSUMS without the model's line" "does not list model.safetensors" $BIN eval -m "$r" -t 1 -b 2
newck fifo; rm "$d/tokenizer.model"; mkfifo "$d/tokenizer.model"
expect_error "checkpoint: tokenizer.model is a FIFO" "tokenizer.model.*not a regular file" timeout 20 $BIN eval -m "$r" -t 1 -b 2
newck zero; rm "$d/tokenizer.model"; ln -s /dev/zero "$d/tokenizer.model"
expect_error "checkpoint: tokenizer.model -> /dev/zero" "tokenizer.model.*symbolic link" timeout 20 $BIN eval -m "$r" -t 1 -b 2
newck urandom; rm "$d/tokenizer.model"; ln -s /dev/urandom "$d/tokenizer.model"
expect_error "checkpoint: tokenizer.model -> /dev/urandom" "tokenizer.model.*symbolic link" timeout 20 $BIN train --resume "$r" --steps 4 -t 1 --quiet
newck outside; rm "$r/latest"; ln -s "$(cd "$TMP/base/latest" && pwd -P)" "$r/latest"
expect_error "checkpoint: latest pointing outside its run" "latest.*refusing" $BIN eval -m "$r" -t 1 -b 2
newck huge; sed -i 's/"d_model": 32/"d_model": 8192/; s/"d_ff": [0-9]*/"d_ff": 32768/' "$d/config.json"; resum "$d" config.json
expect_error "checkpoint: config.json asking for gigabytes" "model.safetensors.*config.json needs" timeout 10 $BIN eval -m "$r" -t 1 -b 2
# an adaptive softmax in a checkpoint's config.json: cutoffs past its vocabulary; valid cutoffs whose
# cluster vectors the weights do not hold
newck adcut; sed -i 's/^{/{"adaptive_softmax_cutoffs": "99999",/' "$d/config.json"; resum "$d" config.json
expect_error "checkpoint: adaptive cutoffs past the vocabulary" "config.json.*adaptive_softmax_cutoffs: 99999 is not in" $BIN eval -m "$r" -t 1 -b 2
newck adw; sed -i 's/^{/{"adaptive_softmax_cutoffs": "5",/' "$d/config.json"; resum "$d" config.json
expect_error "checkpoint: adaptive softmax without its cluster vectors" "model.safetensors.*adaptive.cluster.weight" $BIN generate -m "$r" -n 2 -t 1
# a learned-position checkpoint whose config.json says rope: its weights hold a pos_emb the model lacks
newck rope; sed -i 's/^{/{"position_embedding": "rope",/' "$d/config.json"; resum "$d" config.json
expect_error "checkpoint: rope config over learned-position weights" "model.safetensors: tensor pos_emb.weight, which config.json's model does not have" $BIN eval -m "$r" -t 1 -b 2
newck bigtok; awk 'BEGIN { for (i = 0; i < 2000; i++) print "w" i }' >"$TMP/words.txt"
$BIN tokenizer train --input "$TMP/words.txt" --model_prefix "$TMP/bigtok" --vocab_size 3000 --model_type word >/dev/null 2>&1
cp "$TMP/bigtok.model" "$d/tokenizer.model"; resum "$d" tokenizer.model
expect_error "checkpoint: a tokenizer larger than the model's vocabulary" "tokenizer.model.*vocab_size" $BIN generate -m "$r" -p "w1500 w1999" -n 2 -t 1
echo "   checkpoint integrity: 12 cases"

# ---- tokenizer files --------------------------------------------------------------------------------
K=$TMP/tok; mkdir -p "$K"
echo "the cat sat on the mat" >"$K/in.txt"
ntk=0
tok() {  # tok NAME PATTERN (file $K/NAME.model already written)
    ntk=$((ntk + 1))
    expect_error "tokenizer: $1" "$K/$1.model.*($2)|$K/$1.model" $BIN tokenizer encode --model "$K/$1.model" "$K/in.txt"
}
# voc NAME VERSION KIND V BODY-COMMAND: a moelm vocabulary file with a valid CRC
voc() {
    f="$K/$1.model"
    { printf 'MOELMVOC'; le32 "$2"; le32 "$3"; le32 "$4"; eval "$5"; } >"$f.body"
    { cat "$f.body"; c=$(crc32 "$f.body"); le32 $((0x$c)); } >"$f"; rm -f "$f.body"
}
piece() { le32 ${#1}; printf '%s' "$1"; }
: >"$K/empty.model";                                 tok empty "truncated|empty|0 bytes"
printf 'x' >"$K/one-byte.model";                     tok one-byte ""
printf 'MOELMVOC' >"$K/magic-only.model";            tok magic-only "truncated"
voc good 1 0 3 'piece "<unk>"; piece "<eos>"; piece the'
cp "$K/good.model" "$K/bad-crc.model"; printf 'X' | dd of="$K/bad-crc.model" bs=1 seek=30 conv=notrunc 2>/dev/null
tok bad-crc "checksum"
voc version 2 0 3 'piece "<unk>"; piece "<eos>"; piece the';      tok version "version 2"
voc kind 1 7 3 'piece "<unk>"; piece "<eos>"; piece the';         tok kind "kind 7"
voc v-zero 1 0 0 '';                                              tok v-zero "size 0|truncated"
voc v-huge 1 0 4294967295 'piece "<unk>"; piece "<eos>"';         tok v-huge "size"
voc past-end 1 0 3 'piece "<unk>"; piece "<eos>"; le32 1000; printf the'; tok past-end "past end"
voc nul 1 0 3 'piece "<unk>"; piece "<eos>"; le32 3; printf "t\000e"';  tok nul "NUL"
voc no-unk 1 0 3 'piece "<xxx>"; piece "<eos>"; piece the';       tok no-unk "<unk>"
voc no-eos 1 0 3 'piece "<unk>"; piece "<bos>"; piece the';       tok no-eos "<eos>"
voc trailing 1 0 3 'piece "<unk>"; piece "<eos>"; piece the; printf xyz'; tok trailing "trailing"
voc dup 1 0 4 'piece "<unk>"; piece "<eos>"; piece the; piece the'; tok dup "duplicate|twice|the"
voc piece-trunc 1 0 3 'piece "<unk>"; piece "<eos>"; printf "\001"'; tok piece-trunc "truncated|past end"
head -c 3000 /dev/urandom >"$K/random.model";         tok random ""
printf 'hello world\n' >"$K/text.model";               tok text ""
printf '\n\377\377\377\377\017' >"$K/pb-huge-len.model"; tok pb-huge-len ""
printf '\n\377\377\377\377\377\377\377\377\377\377' >"$K/pb-varint.model"; tok pb-varint ""
printf '\n\t\n\005<unk>\030\002\n\010\n\001a\025\000\000\300\177' >"$K/pb-nan-score.model"; tok pb-nan-score ""
printf '\013\000\000\000' >"$K/pb-wiretype.model";     tok pb-wiretype ""
printf '\n\005\n\003<s>' >"$K/pb-no-unk.model";         tok pb-no-unk ""
if $BIN tokenizer train --input "$K/in.txt" --model_prefix "$K/real" --vocab_size 12 --model_type bpe \
        --hard_vocab_limit=false >/dev/null 2>&1; then
    head -c $(( $(wc -c <"$K/real.model") / 2 )) "$K/real.model" >"$K/pb-truncated.model"; tok pb-truncated ""
fi
expect_error "tokenizer: missing file" "$K/none.model" $BIN tokenizer encode --model "$K/none.model" "$K/in.txt"
expect_error "tokenizer: a directory" "$K" $BIN tokenizer encode --model "$K" "$K/in.txt"
ntk=$((ntk + 2))
echo "   tokenizer catalogue: $ntk files"

# ---- tokenizer training: more distinct characters than the vocabulary ------------------------------
# 3000 CJK characters in 3-character words: the unigram trainer never finished, BPE made thousands of
# pieces for --vocab_size 50; now a one-line refusal, as spm_train's (timeout turns a hang into a failure)
LC_ALL=C awk 'BEGIN { srand(1); for (l = 0; l < 2000; l++) { s = ""; for (w = 0; w < 10; w++) { if (w) s = s " "
    for (k = 0; k < 3; k++) { c = 19968 + int(rand() * 3000); s = s sprintf("%c%c%c", 224 + int(c / 4096), 128 + int(c / 64) % 64, 128 + c % 64) } }
    print s } }' >"$K/cjk.txt"
expect_error "tokenizer train: unigram, 3000 characters, vocab 2000" "required characters" \
    timeout 120 $BIN tokenizer train --input "$K/cjk.txt" --model_prefix "$K/cjk" --vocab_size 2000 --model_type unigram
expect_error "tokenizer train: bpe, 3000 characters, vocab 50" "required characters" \
    timeout 120 $BIN tokenizer train --input "$K/cjk.txt" --model_prefix "$K/cjk" --vocab_size 50 --model_type bpe
expect_error "train --tokenizer unigram:500 on 3000 characters" "required characters" \
    timeout 120 $BIN train --config tiny --data "$K/cjk.txt" --tokenizer unigram:500 --steps 1 --out "$TMP/cjk-run" -t 1 --quiet

# ---- token cache ------------------------------------------------------------------------------------
# a corrupt or foreign token cache in a run directory (bad id, bad CRC) is rebuilt, never trusted
r="$TMP/cache"; cp -r "$TMP/base" "$r"
printf '\377\377\377\177' | dd of="$r/tokens.train.bin" bs=1 seek=40 conv=notrunc 2>/dev/null
if $BIN train --resume "$r" --steps 3 -t 1 --quiet >"$TMP/out" 2>"$TMP/err"; then ok "token cache with a bad id is rebuilt"
else bad "token cache with a bad id is rebuilt: $(head -c 300 "$TMP/err")"; fi

# ---- run directories -------------------------------------------------------------------------------
# latest -> ckpt-8 beside a complete ckpt-12 (a kill between the rename of ckpt-12 and the switch of
# latest): a resume with --keep 1 deleted the checkpoint it had just made latest
r="$TMP/prune"; rm -rf "$r"
$BIN train --config tiny $D --steps 12 --ckpt-interval 4 --keep 0 --eval-interval 0 --out "$r" -t 1 --quiet >/dev/null 2>&1
rm "$r/latest"; ln -s ckpt-00000008 "$r/latest"
if $BIN train --resume "$r" --ckpt-interval 1 --keep 1 --stop-at 9 -t 1 --quiet >"$TMP/out" 2>"$TMP/err" &&
   [ "$(readlink "$r/latest")" = ckpt-00000009 ] && [ -d "$r/ckpt-00000009" ] && [ ! -d "$r/ckpt-00000008" ] &&
   $BIN eval -m "$r" -t 1 -b 2 >/dev/null 2>&1; then ok "prune keeps the checkpoint latest names"
else bad "prune keeps the checkpoint latest names: latest -> $(readlink "$r/latest"), $(ls "$r" | tr '\n' ' ') $(head -c 300 "$TMP/err")"; fi

# a token cache left by a run on data A (killed before its first checkpoint) was trained on by a
# run on data B in the same --out, which printed B's name: the cache is keyed on the data too
awk 'BEGIN { for (i = 0; i < 300; i++) print "a b c d" }' >"$TMP/A.txt"
awk 'BEGIN { for (i = 0; i < 900; i++) print "x y z w v" }' >"$TMP/B.txt"
$BIN tokenizer train --input "$TMP/A.txt,$TMP/B.txt" --model_prefix "$TMP/ab" --vocab_size 50 --model_type word >/dev/null 2>&1
T="--config tiny --tokenizer $TMP/ab.model --steps 1 -t 1"
rm -rf "$TMP/cacheA" "$TMP/cacheB"
$BIN train $T --data "$TMP/A.txt" --out "$TMP/cacheA" --quiet >/dev/null 2>&1
rm -rf "$TMP/cacheA/latest" "$TMP/cacheA"/ckpt-*   # as if killed before its first checkpoint
$BIN train $T --data "$TMP/B.txt" --out "$TMP/cacheA" --force 2>/dev/null | grep '^data:' | sed 's/^data: [^ ]* //' >"$TMP/cached"
$BIN train $T --data "$TMP/B.txt" --out "$TMP/cacheB" 2>/dev/null | grep '^data:' | sed 's/^data: [^ ]* //' >"$TMP/fresh"
if [ -s "$TMP/fresh" ] && cmp -s "$TMP/cached" "$TMP/fresh"; then ok "a token cache of other data is rebuilt"
else bad "a token cache of other data is rebuilt: $(cat "$TMP/cached") vs $(cat "$TMP/fresh")"; fi

# one writer per run directory: a second train into it (resumed or --force) is refused while the
# first runs (before, two resumes both exited 0 and metrics.jsonl lost hundreds of steps)
r="$TMP/lock"; rm -rf "$r"
$BIN train --config tiny $D --steps 100000 --ckpt-interval 1 --eval-interval 0 --out "$r" -t 1 --quiet >/dev/null 2>&1 &
lpid=$!
i=0; while [ ! -e "$r/latest" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
expect_error "run lock: a second resume is refused" "$r: another moelm process is training" $BIN train --resume "$r" --steps 5 -t 1 --quiet
expect_error "run lock: a --force run over it is refused" "another moelm process" $BIN train --config tiny --steps 5 --out "$r" --force -t 1 --quiet
kill "$lpid" 2>/dev/null; wait "$lpid" 2>/dev/null
check "run lock: released when its process ends" $BIN train --resume "$r" --steps 1 -t 1 --quiet

# --resume RUN/ckpt-N continues RUN from that checkpoint (it nested a new run inside ckpt-N)
r="$TMP/from-ckpt"; rm -rf "$r"
$BIN train --config tiny $D --steps 4 --ckpt-interval 2 --keep 0 --eval-interval 0 --log-interval 1 --out "$r" -t 1 --quiet >/dev/null 2>&1
if $BIN train --resume "$r/ckpt-00000002" --log-interval 1 --eval-interval 0 -t 1 --quiet >/dev/null 2>"$TMP/err" &&
   [ ! -e "$r/ckpt-00000002/latest" ] && [ ! -e "$r/ckpt-00000002/metrics.jsonl" ] && [ "$(readlink "$r/latest")" = ckpt-00000004 ] &&
   [ "$(grep -o '^{"step": [0-9]*' "$r/metrics.jsonl" | sed 's/.* //' | tr '\n' ' ')" = "1 2 3 4 " ]; then
    ok "resume from RUN/ckpt-N goes on in RUN"
else bad "resume from RUN/ckpt-N goes on in RUN: $(ls "$r/ckpt-00000002") $(head -c 300 "$TMP/err")"; fi
# a checkpoint copied out of its run directory: --resume alone is refused (it went on in whatever
# directory held the copy, writing metrics, checkpoints and caches there); with --out it goes on in
# that new run directory, with the original run's losses
c="$TMP/copies"; rm -rf "$c" "$TMP/cont"; mkdir -p "$c"
cp -r "$r/ckpt-00000002" "$c/ckpt-00000002"
cp -r "$r/ckpt-00000002" "$c/mine"
expect_error "a copied checkpoint: --resume alone is refused" "outside its run directory.*--out" \
    $BIN train --resume "$c/ckpt-00000002" -t 1 --quiet
expect_error "a copied checkpoint under another name: refused too" "outside its run directory" $BIN train --resume "$c/mine" -t 1 --quiet
check "a copied checkpoint: nothing written beside it" test "$(ls "$c" | tr '\n' ' ')" = "ckpt-00000002 mine "
if $BIN train --resume "$c/ckpt-00000002" --out "$TMP/cont" --log-interval 1 --eval-interval 0 -t 1 --quiet >/dev/null 2>"$TMP/err" &&
   [ "$(readlink "$TMP/cont/latest")" = ckpt-00000004 ] && [ "$(ls "$c" | tr '\n' ' ')" = "ckpt-00000002 mine " ] &&
   [ "$(grep -o '"loss": [0-9.]*' "$TMP/cont/metrics.jsonl")" = "$(grep -o '"loss": [0-9.]*' "$r/metrics.jsonl" | tail -n 2)" ]; then
    ok "a copied checkpoint with --out: goes on there, with the run's losses"
else bad "a copied checkpoint with --out: $(ls "$TMP/cont" 2>&1) $(head -c 300 "$TMP/err")"; fi

# data that never ends or does not fit: a device is refused before reading (a symlink to /dev/zero read
# until memory ran out), a file past the cap (a sparse 3 GiB file: nothing on disk) by its size
ln -sf /dev/zero "$TMP/zero.txt"
expect_error "--data a symlink to /dev/zero: refused" "zero.txt: not a regular file or a pipe" \
    $BIN train --config tiny --data "$TMP/zero.txt" --steps 1 --out "$TMP/zero" -t 1 --quiet
rm -f "$TMP/big.txt"
if truncate -s 3G "$TMP/big.txt" 2>/dev/null; then
    expect_error "--data a 3 GiB file: refused by its size" "big.txt: 3.0 GiB, more than moelm reads into memory \(2 GiB" \
        $BIN train --config tiny --data "$TMP/big.txt" --steps 1 --out "$TMP/big" -t 1 --quiet
fi
rm -f "$TMP/big.txt" "$TMP/zero.txt"

# small data: the too-few-tokens error names the file (it printed "moelm: : 7 tokens"); an empty
# valid split gives no evaluation (it reported "val ppl 1.00")
printf 'a b c\nd e\n' >"$TMP/small.txt"
expect_error "too few tokens: the message names the file" "small.txt:train: 7 tokens, too few" $BIN train --config tiny --data "$TMP/small.txt" --steps 1 --out "$TMP/small" -t 1 --quiet
awk 'BEGIN { for (l = 0; l < 2; l++) { for (i = 0; i < 60; i++) printf "w%d ", i; print "" } }' >"$TMP/two.txt"
rm -rf "$TMP/two"
$BIN train --config tiny --data "$TMP/two.txt" --steps 2 --out "$TMP/two" -t 1 >"$TMP/out" 2>&1
if grep -q "no evaluation: the valid split has nothing to predict" "$TMP/out" && ! grep -q "val ppl" "$TMP/out" && ! grep -q val_loss "$TMP/two/metrics.jsonl"
then ok "an empty valid split: no evaluation, said once"; else bad "an empty valid split: $(grep -a 'val\|evaluation' "$TMP/out" | head -3)"; fi

# a whole number past 1e9 in state.json's training settings was "not an integer" (1e+09)
r="$TMP/big-steps"; rm -rf "$r"; cp -r "$TMP/base" "$r"; d=$(cd "$r/latest" && pwd -P)
sed -i 's/"steps": [0-9]*/"steps": 2000000000/' "$d/state.json"; resum "$d" state.json
check "state.json: steps 2000000000 resumes" $BIN train --resume "$r" --steps 3 -t 1 --quiet

# ---- command-line values ----------------------------------------------------------------------------
R="--out $TMP/cli -t 1 --quiet --steps 1"
expect_error "cli: negative batch size"      "batch-size"        $BIN train -b -1 $R
expect_error "cli: zero seq-len"             "seq-len"           $BIN train --seq-len 0 $R
expect_error "cli: NaN lr"                   "lr"                $BIN train --lr nan $R
expect_error "cli: threads 0"                "threads"           $BIN train -t 0 --out "$TMP/cli"
expect_error "cli: steps overflow"           "steps"             $BIN train --steps 99999999999999999999 --out "$TMP/cli"
expect_error "cli: NaN capacity factor"      "capacity_factor"   $BIN train --config tiny --set capacity_factor=nan $R
expect_error "cli: heads not dividing"       "num_heads"         $BIN train --config tiny --set num_heads=5 $R
expect_error "cli: negative d_ff"            "d_ff"              $BIN train --config tiny --set d_ff=-1 $R
expect_error "cli: experts per token > E"    "num_experts"       $BIN train --config tiny --set num_experts=4 --set router_type=topk --set num_experts_per_tok=99 $R
expect_error "cli: routed scaling factor 0" "routed_scaling_factor" $BIN train --config tiny --set routed_scaling_factor=0 $R
expect_error "cli: --set without ="          "--set"             $BIN train --config tiny --set d_model $R
expect_error "cli: missing value"            "needs a value"     $BIN train --steps
expect_error "cli: generate -n negative"     "-n|tokens"         $BIN generate -m "$TMP/base" -n -1
expect_error "cli: generate top-p 2"         "top-p"             $BIN generate -m "$TMP/base" --top-p 2
expect_error "cli: generate temp nan"        "temp"              $BIN generate -m "$TMP/base" --temp nan
expect_error "cli: eval batch 0"             "batch-size"        $BIN eval -m "$TMP/base" -b 0
expect_error "cli: encode unknown format"    "format"            $BIN tokenizer encode --model "$K/good.model" --output_format xml "$K/in.txt"
printf '1 2 999999\n' >"$K/ids.txt"
expect_error "cli: decode id out of range"   "999999|range"      $BIN tokenizer decode --model "$K/good.model" --input_format id "$K/ids.txt"
printf '1 -4\n' >"$K/neg.txt"
expect_error "cli: decode negative id"       "-4|range"          $BIN tokenizer decode --model "$K/good.model" --input_format id "$K/neg.txt"

finish hostile
