#!/bin/sh
# bench/gguf_bench.sh [REPS] [N]: generation speed from the same GGUF file, moelm against llama.cpp,
# f32 and q8_0. A Mixtral-layout model (8 experts top-2, GQA 8:4, d_model 512, 4 layers, expert d_ff
# 1024, vocabulary 1500) is made by `moelm train` (1 step: the
# weights barely move from the initialisation, which is all a speed test needs) and exported as f32
# and q8_0. Then, interleaved REPS times (default 3) per file:
#   moelm generate -m FILE -p the -n N --temp 0 -t 2  (its "tok/s": the prompt's one token and N
#                                                     generated, greedy; the KV cache; q8_0 from the
#                                                     int8 blocks)
#   llama-simple -m FILE -n N the                     (llama.cpp's own "eval time = X ms / R runs":
#                                                     the generated tokens only, greedy; its default
#                                                     thread count, 4, as it has no flag for it)
# and prints every run and the medians. llama.cpp's native/llama-bench (OpenMP, AVX-512) is tried
# first: on a machine without AVX-512 it dies with SIGILL and the static llama-simple (AVX2, no
# OpenMP) is what is timed. A whole-process comparison on whatever machine runs it: on a shared
# machine, rerun and compare the medians only.
set -u
REPS=${1:-3}
N=${2:-128}
BIN=${MOELM_BIN:-./moelm}
LC=${LLAMACPP_DIR:-../shared/tools/llama.cpp}
D=build/tmp/gguf_bench
mkdir -p "$D"
if [ ! -f "$D/run/latest/model.safetensors" ]; then
    "$BIN" train --config mixtral-tiny --data builtin --tokenizer bpe:1500:bytes --steps 1 -b 2 --seq-len 32 \
        --set d_model=512 --set num_attention_heads=8 --set num_key_value_heads=4 --set num_hidden_layers=4 \
        --set intermediate_size=1024 --set num_local_experts=8 --set max_position_embeddings=512 \
        -t 2 --quiet --eval-interval 0 --out "$D/run" >"$D/train.log" 2>&1 || { cat "$D/train.log"; exit 1; }
fi
for t in f32 q8_0; do
    [ -s "$D/m.$t.gguf" ] || "$BIN" export -m "$D/run" --format gguf --type $t -o "$D/m.$t.gguf" || exit 1
done
if [ -x "$LC/native/llama-bench" ] && "$LC/native/llama-bench" -m "$D/m.f32.gguf" -t 2 -p 0 -n 8 -r 1 >/dev/null 2>&1; then
    echo "llama.cpp: native/llama-bench runs here; time it with: $LC/native/llama-bench -m FILE -t 2 -p 0 -n $N -r 3"
else
    echo "llama.cpp: native/llama-bench does not run here (no AVX-512: SIGILL); timing llama-simple (static, AVX2)"
fi
"$BIN" info "$D/run" 2>/dev/null | grep -i param | head -2
r=0
while [ "$r" -lt "$REPS" ]; do
    for t in f32 q8_0; do
        m=$("$BIN" generate -m "$D/m.$t.gguf" -p the -n "$N" --temp 0 -t 2 2>&1 >/dev/null |
            sed -n 's/.*(\([0-9.]*\) tok\/s.*/\1/p')
        l=$("$LC/llama-simple" -m "$D/m.$t.gguf" -n "$N" the 2>&1 >/dev/null |
            sed -n 's/.* eval time = *\([0-9.]*\) ms \/ *\([0-9]*\) runs.*/\1 \2/p' | awk '{ if ($1 > 0) printf "%.1f", 1000 * $2 / $1 }')
        echo "run $t moelm ${m:-?} llama.cpp ${l:-?}"
    done
    r=$((r + 1))
done | tee /dev/stderr | awk '
    { k = $2; if (!(k in n)) order[++no] = k; n[k]++; a[k, n[k]] = $4; b[k, n[k]] = $6 }
    function med(x, k, m,   i, j, t, v) { for (i = 1; i <= m; i++) v[i] = x[k, i]
        for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
        return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2 }
    END { printf "%-6s %12s %14s %8s\n", "file", "moelm tok/s", "llama.cpp tok/s", "ratio"
          for (i = 1; i <= no; i++) { k = order[i]; x = med(a, k, n[k]); y = med(b, k, n[k])
              printf "%-6s %12.1f %14.1f %8.2f\n", k, x, y, (y > 0 ? x / y : 0) } }'
