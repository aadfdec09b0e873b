#!/bin/sh
# valgrind.sh [BIN]: valgrind memcheck over a short train (with a checkpoint and a resume), eval and
# generate of the tiny preset on the built-in corpus. Passes when every run reports zero errors and
# zero definitely or indirectly lost bytes (OpenMP's thread pool, which lives until exit, is
# "possibly lost"/"still reachable" and allowed). Build without AVX-512 trouble: valgrind does not
# know every instruction -march=native may pick, so the default binary is a BLAS=0 DEBUG=1 build
# (make BLAS=0 DEBUG=1 BUILD=build-valgrind, its own folder so no -march=native object is reused). Logs in build/valgrind/.
# moelm starts itself again once at start-up (src/cli/main.c: libgomp reads its wait policy when it
# loads): --trace-children=yes keeps the restarted process under valgrind, and its log is the run's.
set -u
cd "$(dirname "$0")/.."
BIN=${1:-build-valgrind/moelm}
if [ $# = 0 ]; then make --no-print-directory BLAS=0 DEBUG=1 BUILD=build-valgrind build-valgrind/moelm >/dev/null 2>&1 || exit 1; fi
command -v valgrind >/dev/null || { echo "valgrind: not installed (apt-get install valgrind)"; exit 1; }
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
    if [ "$rc" != 0 ] || [ "${errs:-1}" != 0 ]; then fail=1; tail -n 30 "$out/$name.log"; fi
}
T="--config tiny --eval-interval 0 --eval-batches 2 --log-interval 1 -t 1 --quiet"
run train  train $T --steps 3 --ckpt-interval 2 --out "$out/run"
run resume train --resume "$out/run" --steps 5 --ckpt-interval 2 --eval-interval 0 --eval-batches 2 -t 1 --quiet
run eval   eval -m "$out/run" -t 1 -b 4 --seq-len 16
run generate generate -m "$out/run" -p "the" -n 8 --seed 1 -t 1
run encode tokenizer encode --model "$out/run/latest/tokenizer.model" scripts/valgrind.sh
if [ "$fail" = 0 ]; then echo "valgrind: clean"; else echo "valgrind: FAILED (logs in $out)"; fi
exit $fail
