#!/bin/sh
# bench/compare.sh: moelm and PyTorch on the same configs, in one go, interleaved, with ratios.
#
#   sh bench/compare.sh [CORETYPE]      CORETYPE: env (OPENBLAS_CORETYPE as the environment has it,
#                                       the default), or a kernel name such as Cooperlake (AVX-512) or
#                                       Haswell (AVX2), set for both programs inside this script only
#   environment: THREADS (2), STEPS (5 timed training steps), WARMUP (1), GEN (100), REPS (2),
#                MOELM (./moelm), PY (/usr/bin/python3), CONFIGS (names below, space-separated),
#                SCALE_REPS (3: alternated switch8/switch128 pairs for the 128/8 step ratio),
#                TORCH_SPIN (auto: torch's own best GOMP_SPINCOUNT, measured first, see below; or a
#                number, or "default" for libgomp's own), JEMALLOC (the libjemalloc.so.2 torch runs
#                with through LD_PRELOAD; "none" for glibc's malloc), TABLE_ONLY (1: no runs, the
#                table of the logs already in OUT)
# PyTorch runs at its best: jemalloc through LD_PRELOAD (this VM pays ~11 us a first-touched page, and
# torch's allocator hands big buffers back to the kernel every step without it: 3,215 -> 4,842 tok/s on
# seed-switch, bench/RESULTS.md), OMP_NUM_THREADS = THREADS, and with TORCH_SPIN=auto the faster of
# libgomp's default spin and moelm's 10000 on switch32 (2 steps each, alternated twice), printed.
# Both precisions on both sides, in the same processes: float training, and bf16 mixed precision
# (moelm `bench --bf16`: bf16 operands, float sums; torch `--bf16`: torch.autocast(bfloat16)). The
# table puts float against float and bf16 against bf16.
# Since 6bf369a moelm names an AVX-512/AVX2 kernel itself when OPENBLAS_CORETYPE is unset; torch does
# not, so "env" with the variable unset compares the two programs' defaults (kernels differ: the
# table's last lines name both). Pass a kernel name to compare like with like.
#
# Configs (the seed stack: vocab 10k, d_model 256, 6 layers, 8 heads, seq 30, batch 64):
#   dense     seed-moe with one expert: the MoE head is one FFN, no router (a dense model)
#   switch32  seed-switch: top-1, 32 experts, capacity factor 1.25
#   soft32    seed-gating: soft gating over 32 experts (every expert sees every token)
#   switch8   seed-switch with 8 experts    } fixed active parameters: one expert of d_ff 512
#   switch128 seed-switch with 128 experts  } per token, so the step should cost the same
# Each (config, program) pair runs REPS times, alternating moelm and torch; the table shows medians.
# Generation (batch 1, 100 new tokens, KV cache) is measured in the same runs, with float weights and
# again in bfloat16 (moelm: `generate --bf16`, weights only; torch: the model and cache in bf16).
# "gen share of read bw": moelm's float generation in bytes of weights per second (kv_step_bytes per
# token) over the machine's plain read bandwidth measured by the same process over as many bytes.
set -u
CORE=${1:-env}
THREADS=${THREADS:-2}; STEPS=${STEPS:-5}; WARMUP=${WARMUP:-1}; GEN=${GEN:-100}; REPS=${REPS:-2}
MOELM=${MOELM:-./moelm}; PY=${PY:-/usr/bin/python3}
CONFIGS=${CONFIGS:-"dense switch32 soft32 switch8 switch128"}
OUT=${OUT:-build/compare}
TORCH_SPIN=${TORCH_SPIN:-auto}
JEMALLOC=${JEMALLOC:-/usr/lib/x86_64-linux-gnu/libjemalloc.so.2}
[ "$JEMALLOC" != none ] && [ ! -e "$JEMALLOC" ] && { echo "compare: $JEMALLOC missing (sh scripts/deps.sh bench, or JEMALLOC=none)" >&2; exit 2; }
mkdir -p "$OUT"

args() {
    case $1 in
    dense) echo "--config seed-moe --set num_experts=1" ;;
    switch32) echo "--config seed-switch" ;;
    soft32) echo "--config seed-gating" ;;
    switch8) echo "--config seed-switch --set num_experts=8" ;;
    switch128) echo "--config seed-switch --set num_experts=128" ;;
    *) echo "unknown config $1" >&2; exit 2 ;;
    esac
}

torch_env() {   # torch_env SPIN: the environment torch runs in (jemalloc, its spin, its threads)
    e="OMP_NUM_THREADS=$THREADS"
    [ "$JEMALLOC" != none ] && e="$e LD_PRELOAD=$JEMALLOC"
    [ "$1" != default ] && e="$e GOMP_SPINCOUNT=$1"
    echo "$e"
}

run() {   # run PROGRAM CONFIG LOG [train-only]: one benchmark process with the chosen kernel
    prog=$1; cfg=$2; log=$3
    if [ "$prog" = moelm ] && [ "${4:-}" = train-only ]; then
        set -- "$MOELM" bench $(args "$cfg") -t "$THREADS" --steps "$STEPS" --warmup "$WARMUP" -n 0 --no-peak
    elif [ "$prog" = moelm ]; then set -- "$MOELM" bench $(args "$cfg") -t "$THREADS" --steps "$STEPS" --warmup "$WARMUP" -n "$GEN" --bf16
    else
        # shellcheck disable=SC2046
        set -- env $(torch_env "$TORCH_SPIN") "$PY" bench/torch_ref.py $(args "$cfg") -t "$THREADS" --steps "$STEPS" --warmup "$WARMUP" --gen "$GEN" --bf16
    fi
    if [ "$CORE" = env ]; then "$@" >>"$log" 2>&1
    else env OPENBLAS_CORETYPE="$CORE" "$@" >>"$log" 2>&1; fi
}

field() { grep '^RESULT' "$1" | sed -E "s/.* $2=([-0-9.e]+).*/\1/"; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

if [ "$TORCH_SPIN" = auto ] && [ "${TABLE_ONLY:-0}" != 1 ]; then   # torch's own best spin, on switch32's training
    best=""; bt=0
    for r in 1 2; do
        for sp in default 10000; do
            # shellcheck disable=SC2046
            v=$(env $(torch_env "$sp") "$PY" bench/torch_ref.py $(args switch32) -t "$THREADS" --steps 2 --warmup 1 --gen 0 2>&1 |
                grep '^RESULT' | sed -E 's/.* train_tok_s=([0-9.]+).*/\1/')
            echo "torch spin $sp: ${v:-failed} tok/s"
            if [ -n "$v" ] && awk -v a="$v" -v b="$bt" 'BEGIN { exit !(a > b) }'; then best=$sp; bt=$v; fi
        done
    done
    TORCH_SPIN=${best:-default}
fi
echo "compare: $(date -u +%FT%TZ), kernel ${CORE} (OPENBLAS_CORETYPE=$([ "$CORE" = env ] && echo "${OPENBLAS_CORETYPE:-unset}" || echo "$CORE")), $THREADS threads, $STEPS steps (+$WARMUP warm-up), $REPS reps, torch: $(torch_env "$TORCH_SPIN"), load: $(cut -d' ' -f1-3 /proc/loadavg)"
for cfg in $CONFIGS; do
    [ "${TABLE_ONLY:-0}" = 1 ] && break   # TABLE_ONLY=1: print the table of the logs already in OUT
    rm -f "$OUT/$cfg.moelm.$CORE.log" "$OUT/$cfg.torch.$CORE.log"
    r=0
    while [ $r -lt "$REPS" ]; do
        run moelm "$cfg" "$OUT/$cfg.moelm.$CORE.log"
        run torch "$cfg" "$OUT/$cfg.torch.$CORE.log"
        r=$((r + 1))
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '\n| config | float: moelm tok/s | torch tok/s | ratio | bf16: moelm tok/s | torch autocast tok/s | ratio | moelm bf16 / float | moelm bf16 / best torch | share of sgemm peak | share of bf16 peak | gen moelm tok/s | gen torch tok/s | gen ratio | gen share of read bw | gen bf16 moelm | gen bf16 torch | gen bf16 moelm / best torch | RSS moelm MB | RSS torch MB |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n'
for cfg in $CONFIGS; do
    m="$OUT/$cfg.moelm.$CORE.log"; t="$OUT/$cfg.torch.$CORE.log"
    mt=$(field "$m" train_tok_s | median); tt=$(field "$t" train_tok_s | median)
    mb=$(field "$m" train_bf16_tok_s | median); tb=$(field "$t" train_bf16_tok_s | median)
    sh=$(field "$m" peak_share | median); sb=$(field "$m" bf16_peak_share | median)
    mgen=$(field "$m" gen_tok_s | median); tgen=$(field "$t" gen_tok_s | median); gbw=$(field "$m" gen_read_share | median)
    mg16=$(field "$m" gen_bf16_tok_s | median); tg16=$(field "$t" gen_bf16_tok_s | median)
    mr=$(field "$m" rss_mb | median); tr=$(field "$t" rss_mb | median)
    awk -v c="$cfg" -v mt="$mt" -v tt="$tt" -v mb="$mb" -v tb="$tb" -v sh="$sh" -v sb="$sb" -v mgen="$mgen" -v tgen="$tgen" \
        -v gbw="$gbw" -v mg16="$mg16" -v tg16="$tg16" -v mr="$mr" -v tr="$tr" 'BEGIN {
        bt = tt > tb ? tt : tb           # torch training at whichever precision is faster
        bg = tgen > tg16 ? tgen : tg16   # torch generation likewise
        printf "| %s | %.0f | %.0f | %.2fx | %.0f | %.0f | %.2fx | %.2fx | %.2fx | %.0f%% | %.0f%% | %.1f | %.1f | %.2fx | %.0f%% | %.1f | %.1f | %.2fx | %.0f | %.0f |\n",
               c, mt, tt, (tt > 0 ? mt / tt : 0), mb, tb, (tb > 0 ? mb / tb : 0), (mt > 0 ? mb / mt : 0), (bt > 0 ? mb / bt : 0),
               100 * sh, 100 * sb, mgen, tgen, (tgen > 0 ? mgen / tgen : 0), 100 * gbw, mg16, tg16, (bg > 0 ? mg16 / bg : 0), mr, tr }'
done
k() { grep '^RESULT' "$1" | sed -E 's/.* kernel=([^ ]+).*/\1/' | sort -u | tr '\n' ' '; }
first=${CONFIGS%% *}
printf '\nOpenBLAS kernels: moelm %s, torch %s\n' "$(k "$OUT/$first.moelm.$CORE.log")" "$(k "$OUT/$first.torch.$CORE.log")"
case " $CONFIGS " in *" switch8 "*) case " $CONFIGS " in *" switch128 "*)   # one pattern would need two spaces between them
    a=$(field "$OUT/switch8.moelm.$CORE.log" train_ms_step | median); b=$(field "$OUT/switch128.moelm.$CORE.log" train_ms_step | median)
    awk -v a="$a" -v b="$b" 'BEGIN { printf "\nmoelm step time, 128 experts / 8 experts (fixed active parameters): %.2fx (the table'"'"'s runs, minutes apart)\n", b / a }'
    # the same two configs again, alternated run by run (SCALE_REPS pairs, training only), so that the
    # machine's drift between the table's config blocks does not enter the ratio
    if [ "${TABLE_ONLY:-0}" != 1 ]; then
        rm -f "$OUT/scale8.log" "$OUT/scale128.log"
        r=0
        while [ $r -lt "${SCALE_REPS:-3}" ]; do
            for e in 8 128; do run moelm switch$e "$OUT/scale$e.log" train-only; done
            r=$((r + 1))
        done
    fi
    if [ -s "$OUT/scale8.log" ] && [ -s "$OUT/scale128.log" ]; then
        a=$(field "$OUT/scale8.log" train_ms_step | median); b=$(field "$OUT/scale128.log" train_ms_step | median)
        awk -v a="$a" -v b="$b" 'BEGIN { printf "moelm step time, 128 / 8 experts, alternated run by run: %.2fx (%.1f / %.1f ms)\n", b / a, b, a }'
    fi ;;
esac ;; esac
