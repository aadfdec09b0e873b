#!/bin/sh
# mpi_bench.sh: step time and all-to-all traffic of data- and expert-parallel training at 1, 2 and 4
# ranks (make MPI=1). Strong scaling: the global batch is fixed, the ranks split it.
#
#   sh bench/mpi_bench.sh [STEPS]       writes a Markdown table to stdout (bench/RESULTS-mpi.md keeps one)
#
# Model: the demo preset with 8 experts in both layers (d_model 128, d_ff 256, switch, capacity 1.25),
# batch 16 x 32 = 512 tokens a step, -t 1 per rank. Step time: the wall time between the logs of
# step 5 and step STEPS (default 25), over STEPS - 5. All-to-all bytes per step: the difference of the
# run's total (the "comm:" line) between a run of STEPS steps and one of 5 steps, over STEPS - 5, so
# start-up cancels out; the total is what all ranks together send to other ranks in training steps
# (the comm line counts the evaluations' bytes apart). The
# gradient all-reduce time per step (the mean over ranks, the same difference) includes the time a
# rank waits there for the slowest rank.
cd "$(dirname "$0")/.." || exit 1
S=${1:-25}
make -s -j4 MPI=1 >/dev/null || exit 1
BIN=build-mpi/moelm
MPIRUN="mpirun"
if mpirun --version 2>&1 | grep -q "Open MPI"; then
    MPIRUN="mpirun --oversubscribe"
    [ "$(id -u)" = 0 ] && MPIRUN="$MPIRUN --allow-run-as-root"
    export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
    # more ranks than cores: a rank waiting in a collective yields its core instead of spinning
    [ "$(nproc)" -lt 4 ] && export OMPI_MCA_mpi_yield_when_idle=1
fi
tmp=$(mktemp -d)
ARGS="train --config demo --set num_experts=8 -b 16 --seq-len 32 -t 1 --eval-interval 0 --eval-batches 1 --log-interval 5 --quiet"
bytes() { grep -o 'all-to-all [0-9]* bytes' "$1" | awk '{print $2}'; }
ar() { grep -o 'gradient all-reduce [0-9.]* s' "$1" | awk '{print $3}'; }
tsec() { grep "\"step\": $2," "$1/metrics.jsonl" | grep -o '"time_s": [0-9.]*' | awk '{print $2}'; }

echo "| ranks | DP x EP | step time (ms) | tokens/s | all-to-all per step (bytes, all ranks) | gradient all-reduce (ms/step, incl. waiting) | peak RSS per rank (MiB) | final loss |"
echo "|---|---|---|---|---|---|---|---|"
for spec in "1 1" "2 1" "2 2" "4 1" "4 2" "4 4"; do
    set -- $spec
    np=$1; ep=$2
    $MPIRUN -np $np $BIN $ARGS --steps $S --expert-parallel $ep --out "$tmp/a$np$ep" >"$tmp/a$np$ep.log" 2>&1 || { cat "$tmp/a$np$ep.log"; exit 1; }
    $MPIRUN -np $np $BIN $ARGS --steps 5 --expert-parallel $ep --out "$tmp/b$np$ep" >"$tmp/b$np$ep.log" 2>&1 || { cat "$tmp/b$np$ep.log"; exit 1; }
    t0=$(tsec "$tmp/a$np$ep" 5); t1=$(tsec "$tmp/a$np$ep" $S)
    b1=$(bytes "$tmp/a$np$ep.log"); b0=$(bytes "$tmp/b$np$ep.log")
    loss=$(grep "\"step\": $S," "$tmp/a$np$ep/metrics.jsonl" | grep -o '"loss": [0-9.]*' | awk '{print $2}')
    rss=$(grep -o 'peak RSS per rank [0-9.]*-[0-9.]*' "$tmp/a$np$ep.log" | awk '{print $5}')
    r1=$(ar "$tmp/a$np$ep.log"); r0=$(ar "$tmp/b$np$ep.log")
    awk -v np=$np -v ep=$ep -v t0=$t0 -v t1=$t1 -v b0=${b0:-0} -v b1=${b1:-0} -v S=$S -v loss=$loss -v rss=${rss:--} \
        -v r0=${r0:-0} -v r1=${r1:-0} 'BEGIN {
        ms = 1000 * (t1 - t0) / (S - 5); printf "| %d | %d x %d | %.1f | %.0f | %.0f | %.1f | %s | %s |\n", np, np / ep, ep, ms,
            512 / (ms / 1000), (b1 - b0) / (S - 5), 1000 * (r1 - r0) / (S - 5), rss, loss }'
done

# Memory: expert parallelism holds E/P experts per rank (weights, gradients, Adam moments). A model
# whose experts dominate: the demo preset with 32 experts of hidden size 1024 in both layers (16.8M
# expert parameters of 18.1M, 16 bytes each with gradients and moments); 2 steps, peak RSS per rank.
echo
echo "| ranks | DP x EP | experts held per layer | parameters held per rank | peak RSS per rank (MiB) |"
echo "|---|---|---|---|---|"
MEM="train --config demo --set num_experts=32 --set expert_d_ff=1024 -b 16 --seq-len 32 -t 1 --steps 2 --eval-interval 0 --eval-batches 1"
for spec in "1 1" "2 1" "2 2" "4 2" "4 4"; do
    set -- $spec
    np=$1; ep=$2
    $MPIRUN -np $np $BIN $MEM --expert-parallel $ep --out "$tmp/m$np$ep" >"$tmp/m$np$ep.log" 2>&1 || { cat "$tmp/m$np$ep.log"; exit 1; }
    held=$(grep -o 'holds [0-9]* of the [0-9]* experts of each MoE layer, [0-9.KM]* of the [0-9.KM]*' "$tmp/m$np$ep.log" |
           awk '{printf "%s of %s | %s of %s", $2, $5, $11, $14}')
    [ -n "$held" ] || held="32 of 32 | $(grep -o 'parameters: [0-9.KM]* total' "$tmp/m$np$ep.log" | awk '{print $2}') (all)"
    rss=$(grep -o 'peak RSS per rank [0-9.]*-[0-9.]*' "$tmp/m$np$ep.log" | awk '{print $5}')
    echo "| $np | $((np / ep)) x $ep | $held | ${rss:--} |"
done
rm -rf "$tmp"
