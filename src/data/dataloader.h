/* dataloader.h: training batches of windows over a token stream, and evaluation batches.
 *
 * Dimensions: B batch (windows per batch), T sequence length (tokens per window).
 *
 * Training: window w starts at w*stride and holds ids[start .. start+T] (T+1 tokens): inputs are the
 * first T, targets the last T (inputs shifted by one). stride == T gives non-overlapping windows (the
 * default); stride == 1 gives the tutorial's overlapping windows. An epoch visits every window once,
 * in the order of a permutation that depends only on (seed, epoch), so the whole loader state is
 * (epoch, pos) and resuming is exact. With shifted windows (dataloader_shift_windows) every start of
 * epoch e moves by one shift in [0, stride) drawn from (seed, e): each epoch cuts the text at other
 * places, so a token is seen after other contexts (the epoch has the windows that fit every shift).
 *
 * Evaluation: sequential non-overlapping windows that use every position 1..n-1 as a target exactly
 * once; padding has input 0 and target -1 (the loss ignores target -1).
 */
#ifndef MOELM_DATA_DATALOADER_H
#define MOELM_DATA_DATALOADER_H

#include <stddef.h>
#include <stdint.h>
#include "moelm.h"

typedef struct {
    const int *ids; size_t n;        /* token stream [n] (not owned) */
    int B, T, stride;                /* stride == T: non-overlapping windows (default); 1: overlapping */
    size_t nwin;                     /* number of windows: starts 0, stride, 2*stride, ... with start + T + 1 <= n */
    uint32_t *order;                 /* [nwin] permutation of the current epoch (owned) */
    int shuffle; uint64_t seed;      /* order of epoch e = Fisher-Yates with an Rng seeded from (seed, e) */
    size_t reach, shift;             /* the starts of the current epoch are w*stride + shift, shift <= reach
                                      * (reach 0: windows not shifted) */
    uint64_t epoch; size_t pos;      /* next window index into order, 0 <= pos <= nwin */
} DataLoader;

/* MOELM_ERR_CONFIG for B, T or stride < 1; MOELM_ERR_DATA when n < T+1 (too few tokens for one window). */
moelm_status dataloader_init(DataLoader *dl, const int *ids, size_t n, int B, int T, int stride, int shuffle, uint64_t seed);
void dataloader_free(DataLoader *dl);

/* Fills inputs[B*T], targets[B*T] (targets = inputs shifted by one); wraps to the next epoch (reshuffled)
 * when the epoch ends, also in the middle of a batch; never allocates. */
void dataloader_next(DataLoader *dl, int *inputs, int *targets);

/* Shifted windows from now on (call before the first batch or seek): nwin drops to the windows that fit
 * the largest shift (one fewer at most), and the current epoch's order and shift are redrawn. */
void dataloader_shift_windows(DataLoader *dl);

/* Restores the position (epoch, pos) exactly, for resume. MOELM_ERR_DATA if pos > nwin. */
moelm_status dataloader_seek(DataLoader *dl, uint64_t epoch, size_t pos);

/* Evaluation windows of T tokens, S (1 <= S <= T) apart: window 0 scores targets 1..T, window w >= 1
 * starts at w*S and scores only its last S positions (targets w*S+T-S+1 .. w*S+T), the rest being
 * context. Every target 1..n-1 is scored exactly once, and with S < T each one after the first
 * window sees at least T-S tokens of context (sliding-window evaluation). S = T: non-overlapping.
 * eval_num_batches: batches of B windows (0 when n < 2). */
size_t eval_num_batches(size_t n, int B, int T, int S);
/* Fills inputs[B*T], targets[B*T] of batch batch_index < eval_num_batches(n, B, T, S). Context
 * positions have target -1; positions past the stream are padded (input 0, target -1). */
void eval_batch(const int *ids, size_t n, int B, int T, int S, size_t batch_index, int *inputs, int *targets);

#endif
