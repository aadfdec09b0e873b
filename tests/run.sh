#!/bin/sh
# Runs every test binary given, adds up their "X: N passed, N failed" lines, and ends with the
# suite's line "N passed, N failed". A binary that crashes or exits non-zero without a summary
# counts as one failure.
#
# MOELM_TEST_JOBS=N runs N tests at once (default 2). Every test binary runs at one thread
# (tests/test.h) and every shell test in its own build/tmp folder, so 2 use both cores of a two-core
# machine (make test: ~half the time); each one's output is kept and printed in the order given, as
# if they had run one after the other. The longest tests start first, so that short ones fill the
# other core at the end: by the wall seconds each took in the last run (build/test-times, rewritten
# at the end of every run), and a test without a time (a first run, a new test) before those, in the
# order MOELM_TEST_FIRST, the other shell tests, the binaries. The tests in MOELM_TEST_ALONE (the
# MPI tests) run before all others, with nothing else beside them (below). The
# checks of wall-clock keep their slack with a neighbour: --time-budget plans its end from its own
# measured steps and evaluations (a neighbour slows those too; 1.5 to 2 s of slack over 1.2 to 3 s), the
# MPI ranks yield their core while they wait (tests/mpirun.sh), bench's read bandwidth is a median of
# 10 samples against a floor of 0.5 GB/s, and test_data's corpus time is CPU seconds.
jobs=${MOELM_TEST_JOBS:-2}
first=${MOELM_TEST_FIRST:-"test_gguf_model.sh test_llamacpp.sh test_mpi.sh test_mpi_presets.sh test_tokenizer test_cli.sh"}
alone=${MOELM_TEST_ALONE:-"test_mpi.sh test_mpi_presets.sh"}
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mktemp -d)
# Scratch in memory. The tests write under build/tmp (and mktemp -d under $TMPDIR), and checkpoints,
# exports and tokenizers are fsynced (src/io/fileio.h): on a disk shared with other work those waits
# were most of the suite's wall time (test_checkpoint: 22 s on disk, 0.6 s in memory, the same CPU).
# When /dev/shm has 4 GiB free (a whole run leaves ~0.7 GiB there), build/tmp is for the run a link
# to a new folder there, removed at the end with what the tests left in it (an empty build/tmp takes
# the link's place). MOELM_TEST_TMP=disk keeps build/tmp on disk and its contents after the run.
scratch=""
if [ "${MOELM_TEST_TMP:-}" != disk ] && [ -d /dev/shm ] && [ -w /dev/shm ] &&
   [ "$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }')" -gt 4194304 ] 2>/dev/null; then
    scratch=$(mktemp -d /dev/shm/moelm-test.XXXXXX) || scratch=""
fi
if [ -n "$scratch" ]; then
    mkdir -p "$root/build" && rm -rf "$root/build/tmp" && ln -s "$scratch" "$root/build/tmp"
    export TMPDIR="$scratch"
fi
cleanup() {
    rm -rf "$out"
    if [ -n "$scratch" ]; then
        [ "$(readlink "$root/build/tmp")" = "$scratch" ] && rm -f "$root/build/tmp" && mkdir -p "$root/build/tmp"
        rm -rf "$scratch"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Every test's runs are short: their big blocks in 4 KiB pages (src/common/util.c). On the AMD EPYC VM
# a huge page's first touch on memory the host had taken back cost ~15x 4 KiB pages' (bench/RESULTS.md);
# a value set beforehand is kept (tests/test_io.c checks both settings).
export MOELM_HUGE_PAGES="${MOELM_HUGE_PAGES:-0}"
for t in "$@"; do printf '%s\n' "$t"; done >"$out/list"
# each job: the i-th path of the list, run from the root, its output, exit status and start and end
# times kept by i
times="$root/build/test-times"
# the start order: indices into the list, the longest first by the last run's seconds; a test without
# one ranks above them all: the tests named in $first (in that order), then the shell tests, then the rest
order() {
    awk -v first=" $first " -v tf="$times" '
        BEGIN { while ((getline line < tf) > 0) if (split(line, a, " ") == 2) secs[a[1]] = a[2] }
        { n = $0; sub(/.*\//, "", n)
          if (n in secs) k = secs[n]
          else if ((p = index(first, " " n " ")) > 0) k = 3000000 - p
          else if (n ~ /\.sh$/) k = 2000000
          else k = 1000000
          print k, NR }' "$out/list" | sort -s -k1,1gr | cut -d' ' -f2
}
# $1 jobs at a time, the indices on stdin
run_jobs() {
    xargs -P "$1" -I{} sh -c 't=$(sed -n "$2p" "$1/list"); cd "$0" && date +%s.%N >"$1/$2.time" &&
                              "$t" >"$1/$2.out" 2>&1; echo $? >"$1/$2.rc"; date +%s.%N >>"$1/$2.time"' \
        "$root" "$out" {}
}
# The tests named in $alone (those that launch several MPI ranks each) run first, beside one another
# only; then the others, $jobs at a time. Ranks wait for one another at every exchange, so a rank that
# loses its core to a busy test stalls them all, while two MPI tests leave each other's ranks the time
# they spend waiting: beside other tests test_mpi.sh took 25 s and test_mpi_presets.sh 20, one after
# the other alone 11 and 10, side by side 17 and 12 (make test: 74-82 s, 70 s and 63 s).
order >"$out/order"
apart() { n=$(sed -n "${1}p" "$out/list"); case " $alone " in *" ${n##*/} "*) return 0 ;; esac; return 1; }
for i in $(cat "$out/order"); do apart "$i" && echo "$i"; done | run_jobs "$jobs"
for i in $(cat "$out/order"); do apart "$i" || echo "$i"; done | run_jobs "$jobs"
# the seconds each test took, for the next run's order (the tests not run this time keep theirs)
i=0
for t in "$@"; do
    i=$((i + 1))
    [ -f "$out/$i.rc" ] && awk -v n="$(basename "$t")" 'NR == 1 { s = $1 } NR == 2 { printf "%s %.2f\n", n, $1 - s }' "$out/$i.time"
done >"$out/times"
if [ -s "$out/times" ] && mkdir -p "$root/build"; then
    { awk 'FNR == NR { ran[$1] = 1; next } !($1 in ran)' "$out/times" "$times" 2>/dev/null; cat "$out/times"; } >"$out/times.all" &&
        mv "$out/times.all" "$times"
fi
passed=0; failed=0; bad=""; i=0
for t in "$@"; do
    i=$((i + 1))
    name=$(basename "$t")
    rc=$(cat "$out/$i.rc" 2>/dev/null || echo 127)
    grep -v '^ok ' "$out/$i.out" 2>/dev/null
    line=$(grep -E '^[a-z_0-9]+: [0-9]+ passed, [0-9]+ failed' "$out/$i.out" 2>/dev/null | tail -n 1)
    if [ -n "$line" ]; then
        p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed.*/\1/')
        f=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed.*/\2/')
        passed=$((passed + p)); failed=$((failed + f))
        if [ "$rc" != 0 ] && [ "$f" = 0 ]; then failed=$((failed + 1)); bad="$bad $name(exit $rc)"; fi
    else
        failed=$((failed + 1)); bad="$bad $name(exit $rc, no summary)"
    fi
done
[ -n "$bad" ] && echo "broken test binaries:$bad"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
