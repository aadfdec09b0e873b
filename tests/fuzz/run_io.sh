#!/bin/sh
# run_io.sh SECONDS: builds the io fuzz targets (JSON, safetensors, GGUF, a weight set's index;
# clang, libFuzzer + ASan + UBSan) and runs each
# for SECONDS seconds on a small seed corpus that this script generates. Exits non-zero when a
# target finds a crash, a leak or a broken property (the reproducer is left in build/fuzz/).
# Run from anywhere; works in the repository root.
set -eu
secs=${1:-60}
cd "$(dirname "$0")/../.."
out=build/fuzz
mkdir -p "$out/corpus_json" "$out/corpus_st" "$out/corpus_gguf" "$out/corpus_weights"
CC=${CC_FUZZ:-clang}
flags="-std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -Wno-unknown-pragmas -Iinclude -Isrc"
src="src/io/json.c src/io/fileio.c src/io/safetensors.c src/io/gguf.c src/io/weights.c src/common/util.c
     src/backend/gemm.c src/backend/gemm_bf16.c src/backend/q8.c"
# shellcheck disable=SC2086
$CC $flags tests/fuzz/fuzz_json.c $src -o "$out/fuzz_json" -lm
# shellcheck disable=SC2086
$CC $flags tests/fuzz/fuzz_safetensors.c $src -o "$out/fuzz_safetensors" -lm
for t in gguf weights; do
    # shellcheck disable=SC2086
    $CC $flags -Itests/fuzz tests/fuzz/fuzz_$t.c $src -o "$out/fuzz_$t" -lm
done

# ---- seeds ----
j=$out/corpus_json
printf '{"a": [1, -2.5e-3, true, false, null], "s": "x\\n\\u00e9\\ud83d\\ude00"}' > "$j/1"
printf '[[[[]]]]' > "$j/2"
printf '"\303\251\360\237\230\200"' > "$j/3"
printf '{"d_model": 64, "n_layer": 2, "moe": {"num_experts": 8, "capacity_factor": 1.25}}' > "$j/4"
printf -- '-0.0e+0' > "$j/5"
printf '9223372036854775807' > "$j/6"
printf '{"a":1,"b":{"c":[1,2,{"d":"e"}]}}' > "$j/7"

# A safetensors seed: 8-byte little-endian length (< 256 here), header, data.
st_seed() {  # name header data_bytes
    len=$(printf '%s' "$2" | wc -c)
    { printf "\\$(printf '%03o' "$len")\\000\\000\\000\\000\\000\\000\\000"; printf '%s' "$2";
      head -c "$3" /dev/zero | tr '\000' '\077'; } > "$out/corpus_st/$1"
}
st_seed 1 '{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}' 16
st_seed 2 '{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"I32","shape":[1],"data_offsets":[12,16]}}' 16
st_seed 3 '{"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"z":{"dtype":"BF16","shape":[0,5],"data_offsets":[4,4]}}   ' 4
st_seed 4 '{}' 0
st_seed 5 '{"x":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1],"data_offsets":[0,1]}}' 1
st_seed 6 '{"h":{"dtype":"F16","shape":[3],"data_offsets":[0,6]},"b":{"dtype":"BF16","shape":[1,2],"data_offsets":[6,10]}}  ' 10

# GGUF seeds: the files test_gguf writes (every metadata and tensor type), when built
if [ -x build/tests/test_gguf ]; then
    build/tests/test_gguf --write-fixtures "$out/corpus_gguf" >/dev/null && rm -f "$out/corpus_gguf/rich.json"
fi
printf 'GGUF\003\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000' > "$out/corpus_gguf/empty"
# index seeds for the shards fuzz_weights writes (s1: a, b; s2: c)
w=$out/corpus_weights
printf '{"metadata":{"total_size":36},"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"s2.safetensors"}}' > "$w/1"
printf '{"weight_map":{"c":"s2.safetensors","a":"s1.safetensors","b":"s1.safetensors"},"x":[1]}' > "$w/2"
printf '{"weight_map":{"a":"../s1.safetensors"}}' > "$w/3"

rc=0
for t in json st gguf weights; do
    bin=$out/fuzz_$t; [ "$t" = st ] && bin=$out/fuzz_safetensors
    echo "== $(basename "$bin"): ${secs}s"
    if ! "$bin" -max_total_time="$secs" -max_len=4096 -timeout=10 -print_final_stats=1 \
         -artifact_prefix="$out/$t-" "$out/corpus_$t" > "$out/$t.log" 2>&1; then
        rc=1
        tail -n 40 "$out/$t.log"
        echo "FAILED: $(basename "$bin") (log $out/$t.log, reproducer $out/$t-*)"
    else
        grep -E 'stat::number_of_executed_units|cov:' "$out/$t.log" | tail -n 2
    fi
done
exit $rc
