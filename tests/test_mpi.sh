#!/bin/sh
# test_mpi.sh: MPI-sharded training against one process (STYLE, tier 2: backend against backend).
#
# Builds `make MPI=1` and trains the tiny preset (one MoE layer, 4 experts, switch routing with
# capacity dropping, -t 1 per rank) for 10 steps: one process of the plain build is the oracle; 1, 2
# and 4 ranks of data parallelism, expert parallelism over 2 and 4 ranks, and DP x EP = 2 x 2 must
# give the same loss curve, the same validation loss, the same routing counts (kept load per expert
# and dropped fraction at each evaluation) and the same final checkpoint (gathered onto rank 0 when
# the ranks hold shards of the experts). Checkpoints move between layouts: written by 2 expert-
# parallel ranks and resumed by one process, and the reverse onto 4. Then a rank is killed in the
# middle of a step: the last checkpoint must be intact, and resuming from it at the same world size
# must finish the run with the uninterrupted run's losses.
#
# Tolerances. Losses: 1e-5 (absolute, on losses near 6). The runs are not bit-identical because W
# ranks add the gradient in a different order from one process (each rank sums its rows, then the
# all-reduce adds the W partial sums), so the gradients differ in the last bits; 10 Adam steps keep
# the losses equal to ~1e-6. Checkpoint parameters: 1e-4 absolute, because Adam divides by sqrt(v):
# a coordinate whose gradient is ~1e-8 (a rare token's embedding) moves by up to lr = 3e-3 per step
# whatever the gradient's size, so last-bit differences there show as ~1e-5 (measured 1e-5 max).
# Routing counts (load per expert and dropped fraction, printed to 5 decimals): 1e-4 absolute. A
# last-bit difference in a router logit can flip a choice that sits on a tie to within rounding:
# after a change of float summation order elsewhere (session 9, layernorm sums over vector lanes),
# the top-2 DP x EP run's final evaluation sent one slot of its ~50,000 to another expert (load
# 0.30076 vs 0.30075, losses still equal to 1e-6). A routing bug moves loads by 1e-2 and more.
#
# mixtral-tiny (top-2 over 4 experts, dropless) is held to the same tolerances.
#
# Skips (neither passes nor fails) when mpirun or mpicc is not installed.
cd "$(dirname "$0")/.." || exit 1
passed=0; failed=0
ok() { echo "ok   $1"; passed=$((passed + 1)); }
bad() { echo "FAIL $1"; failed=$((failed + 1)); }
finish() { rm -rf "$tmp"; echo "mpi: $passed passed, $failed failed"; [ "$failed" = 0 ]; exit $?; }

if ! command -v mpirun >/dev/null 2>&1 || ! command -v mpicc >/dev/null 2>&1; then
    echo "SKIP mpi: mpirun/mpicc not installed (apt-get install openmpi-bin libopenmpi-dev)"
    echo "mpi: 0 passed, 0 failed"
    exit 0
fi
tmp=$(mktemp -d)
if ! make -s -j8 MPI=1 all test-cli >"$tmp/build.log" 2>&1; then
    cat "$tmp/build.log"; bad build_mpi; finish
fi
ok build_mpi
MPI_BIN=build-mpi/moelm
MPI_HBIN=build-mpi/moelm-test   # with the test hooks (src/train/hooks.h): the kill below
REF_BIN=${MOELM_BIN:-./moelm}
[ -x "$REF_BIN" ] || { make -s -j8 >/dev/null 2>&1; REF_BIN=./moelm; }

. tests/mpirun.sh   # MPIRUN

# The corpus: 1,200 lines of 12 words from 300 (a fixed linear congruential walk, so every awk writes
# the same). Every run ends with an evaluation of the whole validation split and every rank loads the
# corpus: on the built-in one (584K training tokens, 28.6K validation ones) those took ~90% of a
# process's time, here 60 lines of the split (vocabulary 300: losses near 5.7). Not for the Switch
# encoder-decoder below: on this corpus its 2 x 2 run's checkpoint differed by 9.2e-5 (an expert's
# weight, the Adam effect described above), too near the tolerance; on PTB's first lines by 4.5e-6.
awk 'BEGIN { s = 7; for (l = 0; l < 1200; l++) { line = ""; for (w = 0; w < 12; w++) {
         s = (s * 1103515245 + 12345) % 2147483648; line = line (w ? " " : "") "w" int(s / 65536) % 300 }
         print line } }' >"$tmp/corpus.txt"
D="--data $tmp/corpus.txt"

ARGS="train --config tiny $D -t 1 --steps 10 --log-interval 1 --eval-interval 5 --eval-batches 4"   # not --quiet: the logs say what a rank holds

# $1 run dir; the losses of every step, then the val losses, one per line
losses() { grep -o '"loss": [-0-9.e]*' "$1/metrics.jsonl" | cut -d' ' -f2; grep -o '"val_loss": [-0-9.e]*' "$1/metrics.jsonl" | cut -d' ' -f2; }
# the training losses alone (a run stopped at step S evaluates the whole validation split there,
# where the uninterrupted run's periodic evaluation takes --eval-batches)
train_losses() { grep -o '"loss": [-0-9.e]*' "$1/metrics.jsonl" | cut -d' ' -f2; }
routing() { grep -o '"dropped": [0-9.]*\|"load": \[[^]]*\]' "$1/metrics.jsonl" | grep -o '[0-9][0-9.]*'; }
# $1 $2 files of numbers, $3 tolerance: prints the max |diff|, fails on a count mismatch or a larger diff
maxdiff() {
    [ "$(wc -l <"$1")" = "$(wc -l <"$2")" ] && [ -s "$1" ] || { echo "count mismatch"; return 1; }
    paste "$1" "$2" | awk -v tol="$3" '{ d = $1 - $2; if (d < 0) d = -d; if (d > m) m = d } END { printf "%.3g\n", m; exit !(m <= tol) }'
}

# $1 name, $2 reference run dir, $3 run dir
compare() {
    losses "$2" >"$tmp/a"; losses "$3" >"$tmp/b"
    if d=$(maxdiff "$tmp/a" "$tmp/b" 1e-5); then ok "$1: loss curve (max diff $d)"; else bad "$1: loss curve (max diff $d)"; fi
    routing "$2" >"$tmp/a"; routing "$3" >"$tmp/b"
    if d=$(maxdiff "$tmp/a" "$tmp/b" 1e-4); then ok "$1: routing counts (max diff $d)"; else bad "$1: routing counts (max diff $d)"; fi
    if d=$(/usr/bin/python3 tests/st_maxdiff.py "$2/latest/model.safetensors" "$3/latest/model.safetensors" 1e-4); then ok "$1: checkpoint (max diff $d)"; else bad "$1: checkpoint (max diff $d)"; fi
}

# $1 name, $2 ranks, $3 extra flags; run dir $tmp/$1
mpi_train() {
    if $MPIRUN -np "$2" $MPI_BIN $ARGS $3 --out "$tmp/$1" >"$tmp/$1.log" 2>&1; then return 0; fi
    cat "$tmp/$1.log"; return 1
}

# $1 the train arguments, $2 the one-process run's directory, then specs "NAME RANKS EP": each run on
# RANKS ranks (EP of them expert parallel) into $tmp/NAME, compared with the one-process run
mpi_vs_one() {
    margs=$1; mref=$2; shift 2
    for spec in "$@"; do
        set -- $spec
        if $MPIRUN -np "$2" $MPI_BIN $margs --expert-parallel "$3" --out "$tmp/$1" >"$tmp/$1.log" 2>&1; then
            compare "$1" "$mref" "$tmp/$1"
        else
            cat "$tmp/$1.log"; bad "$1: run"
        fi
    done
}

for router in switch topk; do
    set --   # extra model flags
    [ "$router" = topk ] && set -- --set router_type=topk --set num_experts_per_tok=2
    ref="$tmp/ref-$router"
    if ! $REF_BIN $ARGS "$@" --out "$ref" >"$ref.log" 2>&1; then cat "$ref.log"; bad "$router: one process"; continue; fi
    for spec in "dp1 1 1" "dp2 2 1" "dp4 4 1" "ep2 2 2" "ep4 4 4" "dp2xep2 4 2"; do
        set -- $spec "$@"
        name="$router-$1"; np=$2; ep=$3; shift 3
        if mpi_train "$name" "$np" "--expert-parallel $ep $*"; then compare "$name" "$ref" "$tmp/$name"; else bad "$name: run"; fi
    done
done

# The checkpoint comparison can fail: the two routers' one-process runs trained different weights.
if d=$(/usr/bin/python3 tests/st_maxdiff.py "$tmp/ref-switch/latest/model.safetensors" "$tmp/ref-topk/latest/model.safetensors" 1e-4); then
    bad "the checkpoint comparison tells the switch and top-2 runs apart (max diff $d)"
else
    ok "the checkpoint comparison tells the switch and top-2 runs apart (max diff $d)"
fi

# Expert parallelism holds a shard: with 4 ranks each holds 1 of the 4 experts (and fewer parameters
# than the model has), as the switch router's 4-rank run above says.
held=$(grep -o 'each rank holds [0-9]* of the [0-9]* experts of each MoE layer, [0-9.KM]* of the [0-9.KM]* parameters' "$tmp/switch-ep4.log")
if [ -n "$held" ] && echo "$held" | awk '{ exit !($4 == 1 && $7 == 4 && $13 != $16) }'; then ok "ep4: $held"; else bad "ep4: each rank holds 1 of 4 experts (got '$held')"; fi

# Checkpoints hold the whole model whatever the layout that wrote or reads them: a run stopped at
# step 5 on 2 expert-parallel ranks resumes in one process (the gathered weights and Adam
# moments), and one stopped in one process resumes on 4 expert-parallel ranks (each reads its
# rows); both finish with the uninterrupted one-process run's training losses.
if mpi_train stop-ep2 2 "--expert-parallel 2 --stop-at 5" &&
   $REF_BIN train --resume "$tmp/stop-ep2" -t 1 --log-interval 1 --eval-interval 5 --eval-batches 4 --quiet >"$tmp/r1.log" 2>&1; then
    train_losses "$tmp/ref-switch" >"$tmp/a"; train_losses "$tmp/stop-ep2" >"$tmp/b"
    if d=$(maxdiff "$tmp/a" "$tmp/b" 1e-5); then ok "ep2 checkpoint resumed in one process (max diff $d)"; else bad "ep2 checkpoint resumed in one process (max diff $d)"; fi
else
    cat "$tmp/r1.log"; bad "ep2 checkpoint resumed in one process"
fi
if $REF_BIN $ARGS --stop-at 5 --out "$tmp/stop-1" >"$tmp/s1.log" 2>&1 &&
   $MPIRUN -np 4 $MPI_BIN train --resume "$tmp/stop-1" --expert-parallel 4 -t 1 --log-interval 1 --eval-interval 5 \
       --eval-batches 4 --quiet >"$tmp/r4.log" 2>&1; then
    train_losses "$tmp/ref-switch" >"$tmp/a"; train_losses "$tmp/stop-1" >"$tmp/b"
    if d=$(maxdiff "$tmp/a" "$tmp/b" 1e-5); then ok "one-process checkpoint resumed on 4 expert-parallel ranks (max diff $d)"; else bad "one-process checkpoint resumed on 4 expert-parallel ranks (max diff $d)"; fi
else
    cat "$tmp/s1.log" "$tmp/r4.log"; bad "one-process checkpoint resumed on 4 expert-parallel ranks"
fi

# A rank killed in the middle of step 8 of an expert-parallel run (checkpoints every 3 steps, each
# gathered onto rank 0): the job stops, checkpoint 6 is intact and complete, and resuming from it
# on 2 ranks reproduces the uninterrupted 2-rank run.
full="$tmp/switch-ep2"
kill_dir="$tmp/killed"
# (OpenMPI's sigkill timeout 0: the rank left blocked in the step's exchange is killed at once, not
# after a grace of 2 s in which it can do nothing)
if MOELM_KILL_RANK_AT_STEP=1:8 OMPI_MCA_odls_base_sigkill_timeout=0 $MPIRUN -np 2 $MPI_HBIN $ARGS --expert-parallel 2 --ckpt-interval 3 --out "$kill_dir" >"$tmp/killed.log" 2>&1; then
    bad "killed rank: the job reported success"
else
    ok "killed rank: the job stops"
fi
if [ "$(readlink "$kill_dir/latest")" = "ckpt-00000006" ] && $REF_BIN info "$kill_dir/latest" >/dev/null 2>&1; then   # info verifies CHECKSUMS
    ok "killed rank: the last checkpoint is intact"
else
    ls -la "$kill_dir" "$kill_dir/latest/" 2>&1 | head -20; bad "killed rank: the last checkpoint is intact"
fi
if $MPIRUN -np 2 $MPI_BIN train --resume "$kill_dir" --expert-parallel 2 -t 1 --log-interval 1 --eval-interval 5 --eval-batches 4 --ckpt-interval 3 --quiet \
        >"$tmp/resume.log" 2>&1; then
    losses "$full" >"$tmp/a"; losses "$kill_dir" >"$tmp/b"
    if d=$(maxdiff "$tmp/a" "$tmp/b" 1e-5); then ok "killed rank: resume on 2 ranks (max diff $d)"; else bad "killed rank: resume on 2 ranks (max diff $d)"; fi
else
    cat "$tmp/resume.log"; bad "killed rank: resume on 2 ranks"
fi
# The Switch encoder-decoder (switch-t5-tiny: sparse blocks 1 of each stack, 4 experts, capacity per
# sequence, HF's router losses over the global batch's rows): data and expert parallel runs equal one
# process (losses, routing counts, the gathered checkpoint under Hugging Face's per-expert names). On
# PTB's first lines (1,000 for training, 60 for validation: the checkpoints differ by 4e-6 to 8e-6):
# on the built-in corpus each run's final evaluation of its whole validation split (224 batches, an
# exchange of the experts' rows in each) took 20 s of wall and most of the test's CPU on a loaded machine.
P=../shared/data/ptb
mkdir -p "$tmp/ptb"
for s in train:1000 valid:60 test:60; do head -n "${s#*:}" "$P/ptb.${s%:*}.txt" >"$tmp/ptb/ptb.${s%:*}.txt"; done
S_ARGS="train --config switch-t5-tiny --data $tmp/ptb -t 1 --steps 12 --log-interval 1 --eval-interval 6 --eval-batches 4 --quiet"
if $REF_BIN $S_ARGS --out "$tmp/ref-t5" >"$tmp/ref-t5.log" 2>&1; then
    mpi_vs_one "$S_ARGS" "$tmp/ref-t5" "t5-dp2 2 1" "t5-ep2 2 2" "t5-dp2xep2 4 2" "t5-ep4 4 4"
else
    cat "$tmp/ref-t5.log"; bad "t5: one process"
fi

# Mixtral (mixtral-tiny: 2 MoE layers of 4 SwiGLU experts, top-2 renormalised, dropless, GQA, RoPE;
# dropout 0 in the preset): data and expert parallel runs equal one process. Then --init-from an HF
# export onto 2 expert-parallel ranks (each copies its rows of the experts from the whole model it
# reads): its step-0 evaluation equals the one-process run's from the same export.
M_ARGS="train --config mixtral-tiny $D --tokenizer bpe:300 -t 1 --steps 12 --log-interval 1 --eval-interval 6 --eval-batches 4 --quiet"
if $REF_BIN $M_ARGS --out "$tmp/ref-mx" >"$tmp/ref-mx.log" 2>&1; then
    mpi_vs_one "$M_ARGS" "$tmp/ref-mx" "mx-dp2 2 1" "mx-ep4 4 4" "mx-dp2xep2 4 2"
    I_ARGS="train --config mixtral-tiny $D -t 1 --steps 2 --eval-interval 0 --quiet"
    if $REF_BIN export -m "$tmp/ref-mx" --format hf -o "$tmp/mx-hf" >/dev/null 2>&1 &&
       $REF_BIN $I_ARGS --init-from "$tmp/mx-hf" --out "$tmp/mx-init1" >"$tmp/mx-init1.log" 2>&1 &&
       $MPIRUN -np 2 $MPI_BIN $I_ARGS --init-from "$tmp/mx-hf" --expert-parallel 2 --out "$tmp/mx-init2" >"$tmp/mx-init2.log" 2>&1; then
        compare "mx-init-from-ep2" "$tmp/mx-init1" "$tmp/mx-init2"
    else
        cat "$tmp/mx-init1.log" "$tmp/mx-init2.log"; bad "mx-init-from-ep2: run"
    fi
else
    cat "$tmp/ref-mx.log"; bad "mixtral: one process"
fi

# The adaptive softmax (2 tail clusters of the tiny preset's vocabulary): each rank's rows are scored
# in their targets' clusters, the head's gradient summed by the all-reduce like any other; data and
# data x expert parallel runs equal one process
A_ARGS="$ARGS --set adaptive_softmax_cutoffs=40,150 --quiet"
if $REF_BIN $A_ARGS --out "$tmp/ref-ad" >"$tmp/ref-ad.log" 2>&1; then
    mpi_vs_one "$A_ARGS" "$tmp/ref-ad" "ad-dp2 2 1" "ad-dp2xep2 4 2"
else
    cat "$tmp/ref-ad.log"; bad "adaptive: one process"
fi

# --time-budget on several ranks: every rank takes rank 0's clock, so all use the same learning rate
# and stop at the same step (a rank stopping alone would leave the others waiting in a collective)
# (0.6 s: the check is that the ranks agree, not the time, which tests/test_cli.sh holds)
if timeout 120 $MPIRUN -np 2 $MPI_BIN train --config tiny $D -t 1 --steps 100000000 --time-budget 0.01 --eval-interval 20 \
        --eval-batches 2 --log-interval 1 --quiet --out "$tmp/budget" >"$tmp/budget.log" 2>&1 &&
   tail -n 1 "$tmp/budget/metrics.jsonl" | grep -q val_loss; then
    ok "time budget on 2 ranks: the job ends together, with a final evaluation"
else
    cat "$tmp/budget.log"; bad "time budget on 2 ranks"
fi

finish
