#!/bin/sh
# run_data.sh SECONDS: builds the fuzz targets of the files moelm reads besides safetensors and JSON
# text (run_io.sh) and SentencePiece protobufs (run_spm.sh): token files (fuzz_tokens), config.json
# (fuzz_config), a checkpoint's state.json (fuzz_state), tokenizer files as the CLI opens them
# (fuzz_vocab), a checkpoint's CHECKSUMS (fuzz_checksums), GGUF files read as models
# (fuzz_gguf_model); clang, libFuzzer + ASan + UBSan. Runs each for SECONDS seconds (default 60) on seeds this script makes. Exits non-zero when a target
# finds a crash, a leak or a broken property (the reproducer is left in build/fuzz/).
set -eu
secs=${1:-60}
cd "$(dirname "$0")/../.."
out=build/fuzz
CC=${CC_FUZZ:-clang}
flags="-std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -Wno-unknown-pragmas -Iinclude -Isrc -Itests/fuzz"
mkdir -p "$out/objs"
# the library without the CLI, the backends' MPI and BLAS paths (plain C, no OpenMP)
lib=""
for f in $(find src -name '*.c' -not -path 'src/cli/*' | sort); do
    o="$out/objs/$(echo "$f" | tr '/' '_').o"
    # shellcheck disable=SC2086
    [ "$o" -nt "$f" ] || $CC $flags -fsanitize=fuzzer-no-link -c "$f" -o "$o"
    lib="$lib $o"
done
flags_link=$(echo "$flags")
for t in tokens config state vocab checksums gguf_model; do
    # shellcheck disable=SC2086
    $CC $flags_link tests/fuzz/fuzz_$t.c $lib -o "$out/fuzz_$t" -lm
    mkdir -p "$out/corpus_$t"
done

# ---- seeds: real files from a tiny training run when moelm is built, plus hand-made ones ----
bin=""
for b in ./moelm build/moelm build-noblas/moelm; do [ -x "$b" ] && bin=$b && break; done
if [ -n "$bin" ] && [ ! -f "$out/seedrun/latest/state.json" ]; then
    "$bin" train --config tiny --steps 1 --eval-interval 0 --out "$out/seedrun" -t 1 --quiet >/dev/null 2>&1 || true
fi
if [ -f "$out/seedrun/latest/state.json" ]; then
    cp "$out/seedrun/latest/state.json" "$out/corpus_state/real"
    cp "$out/seedrun/latest/config.json" "$out/corpus_config/real"
    cp "$out/seedrun/latest/tokenizer.model" "$out/corpus_vocab/real"
    head -c 3000 "$out/seedrun/tokens.valid.bin" > "$out/corpus_tokens/real-truncated"
fi
[ -d build/fuzz/corpus_spm ] && cp build/fuzz/corpus_spm/* "$out/corpus_vocab/" 2>/dev/null || true
printf '{"d_model": 64, "num_heads": 4, "num_experts": 8, "router_type": "topk", "num_experts_per_tok": 2}' > "$out/corpus_config/1"
printf '{"model_type": "seed", "num_experts": 4, "vocab_size": 50}' > "$out/corpus_config/2"
printf '{"d_model": 64, "vocab_size": 300, "adaptive_softmax_cutoffs": "20,100"}' > "$out/corpus_config/adaptive"
printf '{"adaptive_softmax_cutoffs": "5,9,4000"}' > "$out/corpus_config/adaptive-novocab"
printf '{"d_model": 64, "num_heads": 4, "position_embedding": "rope", "rope_theta": 500}' > "$out/corpus_config/rope"
# switch_transformers (Hugging Face's config.json): the reference's two, and HF's defaults with nulls
cp tests/ref/switch/switch_tied/config.json "$out/corpus_config/switch-tied"
cp tests/ref/switch/switch_untied/config.json "$out/corpus_config/switch-untied"
printf '{"model_type": "switch_transformers", "num_decoder_layers": null, "bos_token_id": null, "hidden_size": 768, "architectures": ["SwitchTransformersForConditionalGeneration"], "encoder_sparse_step": 2}' > "$out/corpus_config/switch-nulls"
printf '{"step": 3, "data_epoch": "0", "data_pos": "12", "rng": "5", "seed": "1", "threads": 1, "batch_size": 4, "seq_len": 16, "elapsed_s": 1.5, "tokens_seen": 192, "data": "builtin", "tokenizer_hash": "9", "train": {"lr": 0.003}}' > "$out/corpus_state/1"
# a token file: header (magic, version 1, V 100, hash 0, count 2, CRC of the ids) and ids 1, 2
printf 'MOELMTOK\001\000\000\000\144\000\000\000\000\000\000\000\000\000\000\000\002\000\000\000\000\000\000\000\000\000\000\000\001\000\000\000\002\000\000\000' > "$out/corpus_tokens/1"
printf '# moelm CHECKSUMS v1: crc32 size name\n3610a686 5 a.bin\na3a6bf43 2 b.json\n' > "$out/corpus_checksums/1"
printf '# moelm CHECKSUMS v1: crc32 size name\n3610a686 5 a.bin\n' > "$out/corpus_checksums/2"
printf 'MOELMVOC\001\000\000\000\000\000\000\000\002\000\000\000\005\000\000\000<unk>\005\000\000\000<eos>\000\000\000\000' > "$out/corpus_vocab/1"

# GGUF model seeds: the tiny llama files test_gguf_model writes (a mixtral and a dense one), when built
if [ -x build/tests/test_gguf_model ]; then
    build/tests/test_gguf_model --write-seeds "$out/corpus_gguf_model" >/dev/null || true
fi

rc=0
for t in tokens config state vocab checksums gguf_model; do
    echo "== fuzz_$t: ${secs}s"
    if ! "$out/fuzz_$t" -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
         -artifact_prefix="$out/$t-" "$out/corpus_$t" > "$out/$t.log" 2>&1; then
        rc=1
        tail -n 40 "$out/$t.log"
        echo "FAILED: fuzz_$t (log $out/$t.log, reproducer $out/$t-*)"
    else
        grep -E 'stat::number_of_executed_units' "$out/$t.log" | tail -n 1
    fi
done
rm -rf /tmp/moelm-fuzz-*
exit $rc
