#!/bin/sh
# valgrind.sh [--quick] [BIN]: valgrind memcheck over moelm's runs. Passes (exit 0) when every run
# exits 0 and reports zero errors and zero definitely or indirectly lost bytes (OpenMP's thread pool,
# which lives until exit, is "still reachable" and allowed); any error, leak or failed run exits 1.
#
#   --quick  (CI, .ci/run; ~1 minute of CPU): a -O1 -g build, the mixtral-tiny preset on a 400-line
#            corpus written here (so its final evaluation is a few batches): one training step with a
#            checkpoint (the BPE trainer, token files, the checkpoint writer), a resume to step 2 (the
#            checkpoint readers: safetensors, config.json, state.json, CHECKSUMS, the tokenizer file,
#            the token cache), eval, export to GGUF (q8_0) and to a sharded Hugging Face directory and
#            generation from each (the GGUF and weight-set readers), tokenizer encode.
#   default  (by hand; tens of minutes): a -O0 -g build, the quick runs, then the tiny preset on the
#            built-in corpus: 3 steps with checkpoints, a resume to 5, eval (the whole validation
#            split), generate, encode.
#
# The builds are BLAS=0 (the reference kernels; OpenBLAS's own kernels are not moelm's to check) in
# folders of their own (build-valgrind, build-valgrind-quick), without -march=native (valgrind does not
# know every instruction it may pick). Logs in build/valgrind/.
# moelm starts itself again once at start-up (src/cli/main.c: libgomp reads its wait policy when it
# loads): --trace-children=yes keeps the restarted process under valgrind, and as execv keeps the
# process id, its log replaces the first image's in the same file: each log is the run's.
set -u
cd "$(dirname "$0")/.."
quick=0
if [ "${1:-}" = --quick ]; then quick=1; shift; fi
if [ "$quick" = 1 ]; then build=build-valgrind-quick; opt=O1; else build=build-valgrind; opt=1; fi
BIN=${1:-$build/moelm}
command -v valgrind >/dev/null || { echo "valgrind: not installed (apt-get install valgrind)"; exit 1; }
if [ $# = 0 ]; then
    make --no-print-directory -j2 BLAS=0 DEBUG=$opt BUILD=$build "$build/moelm" >/dev/null 2>&1 ||
        { echo "valgrind: make BLAS=0 DEBUG=$opt BUILD=$build failed"; exit 1; }
fi
out=build/valgrind
rm -rf "$out"; mkdir -p "$out"
VG="valgrind --tool=memcheck --trace-children=yes --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect"
fail=0
run() {  # run NAME ARGS...
    name=$1; shift
    OMP_NUM_THREADS=1 $VG --log-file="$out/$name.log" "$BIN" "$@" >"$out/$name.out" 2>&1; rc=$?
    errs=$(grep -o 'ERROR SUMMARY: [0-9]*' "$out/$name.log" | tail -n 1 | grep -o '[0-9]*$')
    def=$(grep -o 'definitely lost: [0-9,]* bytes' "$out/$name.log" | grep -o '[0-9,]* bytes' | tr -d ',' || true)
    ind=$(grep -o 'indirectly lost: [0-9,]* bytes' "$out/$name.log" | grep -o '[0-9,]* bytes' | tr -d ',' || true)
    echo "$name: exit $rc, errors ${errs:-?}, definitely lost ${def:-0 bytes}, indirectly lost ${ind:-0 bytes}"
    if [ "$rc" != 0 ] || [ "${errs:-1}" != 0 ]; then fail=1; tail -n 40 "$out/$name.log"; tail -n 3 "$out/$name.out"; fi
}

# 400 lines of 12 words from 300 (a fixed linear congruential walk): 20 validation lines
awk 'BEGIN { s = 7; for (l = 0; l < 400; l++) { line = ""; for (w = 0; w < 12; w++) {
         s = (s * 1103515245 + 12345) % 2147483648; line = line (w ? " " : "") "w" int(s / 65536) % 300 }
         print line } }' >"$out/corpus.txt"
q=$out/mixtral
run train-mixtral train --config mixtral-tiny --data "$out/corpus.txt" -b 2 --seq-len 16 -t 1 --quiet \
    --eval-interval 0 --steps 1 --ckpt-interval 1 --out "$q"
run resume-mixtral train --resume "$q" --steps 2 --ckpt-interval 1 -t 1 --quiet
run eval-mixtral eval -m "$q" -t 1 -b 2 --seq-len 16
run export-gguf export -m "$q" --format gguf --type q8_0 -o "$q.gguf"
run generate-gguf generate -m "$q.gguf" -p "w1 w2" -n 4 --seed 1 -t 1
run export-hf export -m "$q" --format hf --max-shard-size 200K -o "$q-hf"
run generate-hf generate -m "$q-hf" -p "w1 w2" -n 4 --seed 1 -t 1
run encode-bpe tokenizer encode --model "$q/latest/tokenizer.model" "$out/corpus.txt"

if [ "$quick" = 0 ]; then
    T="--config tiny --eval-interval 0 --eval-batches 2 --log-interval 1 -t 1 --quiet"
    run train  train $T --steps 3 --ckpt-interval 2 --out "$out/run"
    run resume train --resume "$out/run" --steps 5 --ckpt-interval 2 --eval-interval 0 --eval-batches 2 -t 1 --quiet
    run eval   eval -m "$out/run" -t 1 -b 4 --seq-len 16
    run generate generate -m "$out/run" -p "the" -n 8 --seed 1 -t 1
    run encode tokenizer encode --model "$out/run/latest/tokenizer.model" scripts/valgrind.sh
fi
if [ "$fail" = 0 ]; then echo "valgrind: clean"; else echo "valgrind: FAILED (logs in $out)"; fi
exit $fail
