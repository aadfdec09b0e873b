#!/bin/sh
# quality_sweep.sh [STEPS] [NAME...]: issue 28's sweep on Penn Treebank, validation split only.
# Trains each run of the list below (all of them, or the NAMEs given) one after the other with
# $T threads (default 1), seed as listed, for STEPS optimizer steps (default 200) with the preset's
# schedule laid over them (its warm-up is 200 of 5000 steps, so 4% of STEPS here), and scores the
# whole validation split at the end (no periodic evaluations). Equal steps, not equal time, so that
# the result does not depend on how busy the machine is; each run's time per step is recorded too
# (wall-clock and, where /usr/bin/time exists, CPU seconds), so wall-clock can be estimated later.
# BUDGET=MIN instead trains each run for MIN minutes of wall-clock (--time-budget: the preset's
# warm-up share and schedule laid over the time; STEPS is then ignored, but still comes before any
# NAME: `BUDGET=15 T=2 sh bench/quality_sweep.sh 0 dense sw8`): on a quiet machine only.
# The list:
#   the expert-count curve at equal active parameters (every expert is the dense block's FFN,
#   d_ff 1024, top-1): dense-ptb (1), switch-ptb with 8 (the preset), 32 and 128 experts in block 1;
#   seeds 2 and 3 of dense-ptb and switch-ptb (the main comparison over 3 seeds);
#   regularisation and schedule ideas against the preset (seed 1): router jitter 0.01, the schedule
#   decaying to 0 instead of 0.1x, weight decay 0.3 instead of 0.1 (last: not run in the first
#   sweep). The preset's seed-1 run also keeps a weight average (ema_decay 0.98), which does not
#   change its training (tests/test_ema.sh). These runs keep dropout 0.1 as they had it
#   (dropout_start_epochs=0: the presets' rule now trains short runs without dropout);
#   the 15-minute regime of a 2-core AVX2 machine (~3 epochs; session 19, run as `T=2 ... 1300`):
#   base (the preset as it was: dropout 0.1 at every length), d05 and d0 (dropout 0.05, 0), lr2
#   (lr 2e-3, dropout 0.1), and at dropout 0 with steps
#   scaled to the preset's time at 1,300 steps by each step's measured cost: d0-b8 (batch 8), d0-w192
#   (width 192), d0-L3 (3 layers); d0-beta2 (Adam's beta2 0.99) and d0-st32 (windows at stride 32)
#   were not run. A run whose --steps is in the list keeps it (the last --steps wins).
#   Session 20 (run as `T=1 ... 1300` or `T=1 ... 1`, two at once): d0-T128 and d0-T256 (windows of
#   128 and 256 tokens at the same tokens per step), d0-L2 (not run); at the 15-minute regime's
#   length, 2,900 steps of the preset (~3 epochs; the steps of a cheaper shape scaled by its cost):
#   m15 (the preset as it ships), m15-L3, m15-L2 (not run), m15-shift (shift_windows, and a weight
#   average 0.995 that does not change the training), and seed 2 of m15 and m15-shift.
#   Session 22 (run as `T=1 ... 2400`, two at once; the presets with the adaptive softmax): a-base (the
#   preset, and a weight average 0.995), a-swiglu (SwiGLU FFNs at d_ff 688: the GELU FFN's parameters),
#   a-rms (RMSNorm), a-h8 (8 heads of 32), a-beta2 (Adam's beta2 0.99), a-fg16 (16 experts of width 512,
#   top-2: the same active width), a-shared (a shared expert of 512 beside 8 routed ones of 512), a-sp2
#   (experts in blocks 1 and 3), a-beta2 and a-b999 (beta2 0.99, 0.999), a-b99-lr2 (0.99 and lr 2e-3),
#   a-sr (SwiGLU, RMSNorm, beta2 0.99) and a-srr (the same with rotary positions: run before the key
#   existed, on a build that switched the same rotation on by an environment variable). Every entry runs
#   against the presets as they are now: since session 22 they have the block of a-srr and beta2 0.999,
#   so the earlier entries no longer repeat what they measured.
# TABLE_ONLY=1 trains nothing: it rewrites the table's rows of the runs named from their directories.
# Runs go to $OUT/<name> (default runs/qsweep), one line each to $OUT/table.txt; then the mean and
# spread over the seeds per model, and the switch - dense gap per seed. The run directories hold a
# final checkpoint (switch-ptb with 128 experts: about 1.1 GB with its Adam moments).
set -u
STEPS=${1:-200}
[ $# -gt 0 ] && shift
BIN=${MOELM_BIN:-./moelm}
DATA=${PTB:-../shared/data/ptb}
OUT=${OUT:-runs/qsweep}
T=${T:-1}
BUDGET=${BUDGET:-}
mkdir -p "$OUT"
if [ -n "$BUDGET" ]; then LEN="--time-budget $BUDGET --steps 100000000"
else LEN="--steps $STEPS --set warmup_steps=$(( (STEPS + 24) / 25 ))"; fi

LIST='sw8        1 --config switch-ptb --set ema_decay=0.98 --set dropout_start_epochs=0
dense      1 --config dense-ptb --set dropout_start_epochs=0
sw32       1 --config switch-ptb --set num_experts=32 --set dropout_start_epochs=0
sw128      1 --config switch-ptb --set num_experts=128 --set dropout_start_epochs=0
sw8-jitter 1 --config switch-ptb --set router_jitter_noise=0.01 --set dropout_start_epochs=0
sw8-minlr0 1 --config switch-ptb --set min_lr_ratio=0 --set dropout_start_epochs=0
dense-s2   2 --config dense-ptb --set dropout_start_epochs=0
sw8-s2     2 --config switch-ptb --set dropout_start_epochs=0
dense-s3   3 --config dense-ptb --set dropout_start_epochs=0
sw8-s3     3 --config switch-ptb --set dropout_start_epochs=0
sw8-wd0.3  1 --config switch-ptb --set weight_decay=0.3 --set dropout_start_epochs=0
base       1 --config switch-ptb --set dropout_start_epochs=0
d0         1 --config switch-ptb --set dropout_rate=0
lr2        1 --config switch-ptb --set lr=2e-3 --set dropout_start_epochs=0
d05        1 --config switch-ptb --set dropout_rate=0.05 --set dropout_start_epochs=0
d0-b8      1 --config switch-ptb --set dropout_rate=0 --set batch_size=8 --steps 2600 --set warmup_steps=104
d0-w192    1 --config switch-ptb --set dropout_rate=0 --set d_model=192 --set d_ff=768 --steps 1850 --set warmup_steps=74
d0-L3      1 --config switch-ptb --set dropout_rate=0 --set num_layers=3 --steps 1600 --set warmup_steps=64
d0-beta2   1 --config switch-ptb --set dropout_rate=0 --set beta2=0.99
d0-st32    1 --config switch-ptb --set dropout_rate=0 --set stride=32
d0-T128    1 --config switch-ptb --set dropout_rate=0 --set seq_len=128 --set batch_size=8
d0-T256    1 --config switch-ptb --set dropout_rate=0 --set seq_len=256 --set batch_size=4
d0-L2      1 --config switch-ptb --set dropout_rate=0 --set num_layers=2 --steps 1900 --set warmup_steps=76
m15        1 --config switch-ptb --steps 2900 --set warmup_steps=116
m15-L3     1 --config switch-ptb --set num_layers=3 --steps 3580 --set warmup_steps=143
m15-L2     1 --config switch-ptb --set num_layers=2 --steps 4260 --set warmup_steps=170
m15-shift  1 --config switch-ptb --set shift_windows=1 --set ema_decay=0.995 --steps 2900 --set warmup_steps=116
m15-s2     2 --config switch-ptb --steps 2900 --set warmup_steps=116
m15-shift-s2 2 --config switch-ptb --set shift_windows=1 --steps 2900 --set warmup_steps=116
a-base     1 --config switch-ptb --set ema_decay=0.995
a-swiglu   1 --config switch-ptb --set hidden_act=swiglu --set d_ff=688
a-rms      1 --config switch-ptb --set norm_type=rmsnorm
a-h8       1 --config switch-ptb --set num_heads=8
a-beta2    1 --config switch-ptb --set beta2=0.99
a-fg16     1 --config switch-ptb --set num_experts=16 --set expert_d_ff=512 --set router_type=topk --set num_experts_per_tok=2
a-shared   1 --config switch-ptb --set shared_expert=true --set expert_d_ff=512
a-sp2      1 --config switch-ptb --set sparse_step=2
a-sr       1 --config switch-ptb --set hidden_act=swiglu --set d_ff=688 --set norm_type=rmsnorm --set beta2=0.99
a-srr      1 --config switch-ptb --set hidden_act=swiglu --set d_ff=688 --set norm_type=rmsnorm --set beta2=0.99 --set position_embedding=rope
a-b999     1 --config switch-ptb --set beta2=0.999
a-b99-lr2  1 --config switch-ptb --set beta2=0.99 --set lr=2e-3'

one() {   # one NAME SEED ARGS...
    name=$1; seed=$2; shift 2
    d="$OUT/$name"
    if [ -z "${TABLE_ONLY:-}" ]; then
        rm -rf "$d" "$d.cpu"
        tm=""
        [ -x /usr/bin/time ] && tm="/usr/bin/time -f %U+%S -o $d.cpu"
        # shellcheck disable=SC2086
        $tm "$BIN" train --data "$DATA" --seed "$seed" $LEN --eval-interval 0 --log-interval 50 --keep 1 -t "$T" \
            --quiet --out "$d" "$@" >"$d.log" 2>&1 || { echo "$name: training failed (see $d.log)"; return; }
    fi
    [ -f "$d/metrics.jsonl" ] || return
    last=$(grep val_word_ppl "$d/metrics.jsonl" | tail -n 1)
    steps=$(echo "$last" | sed -E 's/.*"step": ([0-9]+).*/\1/')
    vp=$(echo "$last" | sed -E 's/.*"val_word_ppl": ([0-9.]+).*/\1/')
    ve=$(echo "$last" | grep -o '"val_word_ppl_ema": [0-9.]*' | cut -d' ' -f2)
    [ -n "$ve" ] && ve=$(printf %.2f "$ve")
    dr=$(echo "$last" | grep -o '"dropped": [0-9.]*' | cut -d' ' -f2)
    # wall-clock per step: the training time at the last step (the final evaluation excluded)
    ts=$(echo "$last" | sed -E 's/.*"time_s": ([0-9.]+).*/\1/')
    cpu=$([ -f "$d.cpu" ] && tail -n 1 "$d.cpu" | bc -l)
    [ -f "$OUT/table.txt" ] && { grep -v "^$name " "$OUT/table.txt" >"$OUT/table.tmp"; mv "$OUT/table.tmp" "$OUT/table.txt"; }
    printf '%-11s %4s %6s %10.2f %10s %9.0f %11s %8s\n' "$name" "$seed" "$steps" "$vp" "${ve:--}" \
        "$(echo "1000 * $ts / $steps" | bc -l)" "${cpu:--}" "${dr:--}" >>"$OUT/table.txt"
}

echo "$LIST" | while read -r name seed args; do
    if [ $# -gt 0 ]; then
        pick=0
        for n in "$@"; do [ "$n" = "$name" ] && pick=1; done
        [ "$pick" = 1 ] || continue
    fi
    # shellcheck disable=SC2086
    one "$name" "$seed" $args
done
printf '%-11s %4s %6s %10s %10s %9s %11s %8s\n' name seed steps "valid ppl" "ema ppl" "ms/step" "cpu s (all)" dropped
cat "$OUT/table.txt"
# dense and switch-ptb over the seeds (rows dense*, sw8, sw8-s*), and the gap per seed
awk '$1 ~ /^dense(-s[0-9]+)?$/ { d[$2] = $4 } $1 ~ /^sw8(-s[0-9]+)?$/ { s[$2] = $4 }
     END {
        n = 0; sd = 0; ss = 0; g = 0; lo = 1e9; hi = -1e9
        for (k in d) if (k in s) { n++; sd += d[k]; ss += s[k]; x = s[k] - d[k]; g += x; if (x < lo) lo = x; if (x > hi) hi = x }
        if (n > 0) printf "over %d seeds: dense %.2f, switch %.2f; gap switch - dense %.2f (per seed %.2f to %.2f)\n", n, sd / n, ss / n, g / n, lo, hi
     }' "$OUT/table.txt"
