/* dataloader.c: window batching for training and evaluation. See dataloader.h.
 *
 * Invariants: order is always the permutation of the current epoch, recomputed from scratch (identity,
 * then Fisher-Yates) so that it depends on (seed, epoch) only; dataloader_next never allocates.
 */
#include "data/dataloader.h"
#include "common/util.h"

#include <string.h>

/* An Rng for one epoch: seeded from seed, its first draw mixed with the epoch's term. */
static void epoch_rng(Rng *r, uint64_t seed, uint64_t mix) {
    rng_seed(r, seed);
    rng_seed(r, rng_u64(r) ^ mix);
}

/* Rebuilds order for dl->epoch: identity, then (if shuffling) Fisher-Yates driven by an Rng whose seed
 * mixes the loader seed and the epoch through splitmix64, so nearby (seed, epoch) pairs are unrelated. */
static void build_order(DataLoader *dl) {
    for (size_t i = 0; i < dl->nwin; i++) dl->order[i] = (uint32_t)i;
    dl->shift = 0;
    if (dl->reach > 0) {   /* from a stream of its own: the order's draws stay those of an unshifted loader */
        Rng s;
        epoch_rng(&s, dl->seed ^ 0x5DEECE66Dull, (dl->epoch + 1) * 0x9E3779B97F4A7C15ull);
        dl->shift = rng_below(&s, (uint32_t)dl->reach + 1);
    }
    if (!dl->shuffle || dl->nwin < 2) return;
    Rng r;
    epoch_rng(&r, dl->seed, dl->epoch * 0xD1B54A32D192ED03ull);
    for (size_t i = dl->nwin - 1; i > 0; i--) {
        size_t j = rng_below(&r, (uint32_t)(i + 1));
        uint32_t t = dl->order[i]; dl->order[i] = dl->order[j]; dl->order[j] = t;
    }
}

moelm_status dataloader_init(DataLoader *dl, const int *ids, size_t n, int B, int T, int stride, int shuffle, uint64_t seed) {
    memset(dl, 0, sizeof *dl);
    if (B < 1 || T < 1 || stride < 1)
        return moelm_fail(MOELM_ERR_CONFIG, "dataloader: batch size %d, sequence length %d and stride %d must all be >= 1",
                          B, T, stride);
    if (n < (size_t)T + 1)
        return moelm_fail(MOELM_ERR_DATA, "dataloader: too few tokens (%zu) for one window of T+1 = %d", n, T + 1);
    size_t nwin = (n - (size_t)T - 1) / (size_t)stride + 1;
    if (nwin > UINT32_MAX)
        return moelm_fail(MOELM_ERR_DATA, "dataloader: %zu windows is more than 2^32-1; use a larger stride", nwin);
    uint32_t *order = moelm_malloc(nwin * sizeof *order);
    if (!order) return moelm_fail_context(MOELM_ERR_NOMEM, "dataloader");
    dl->ids = ids; dl->n = n;
    dl->B = B; dl->T = T; dl->stride = stride;
    dl->nwin = nwin; dl->order = order;
    dl->shuffle = shuffle != 0; dl->seed = seed;
    dl->epoch = 0; dl->pos = 0;
    build_order(dl);
    return MOELM_OK;
}

void dataloader_shift_windows(DataLoader *dl) {
    size_t stride = (size_t)dl->stride, T = (size_t)dl->T;
    /* the last window goes when it does not fit the largest shift, stride - 1; then the one before it
     * does (its start + stride - 1 + T + 1 is the dropped one's start + T + 1 - 1 < n) */
    if (dl->nwin >= 2 && (dl->nwin - 1) * stride + (stride - 1) + T + 1 > dl->n) dl->nwin--;
    size_t room = dl->n - ((dl->nwin - 1) * stride + T + 1);   /* past the last window's end */
    dl->reach = stride - 1 < room ? stride - 1 : room;
    build_order(dl);
}

void dataloader_free(DataLoader *dl) {
    moelm_free(dl->order);
    dl->order = NULL;
    dl->nwin = 0;
}

void dataloader_next(DataLoader *dl, int *inputs, int *targets) {
    CHECK(dl->order != NULL);
    const int T = dl->T;
    for (int b = 0; b < dl->B; b++) {
        if (dl->pos >= dl->nwin) {
            dl->epoch++;
            dl->pos = 0;
            build_order(dl);
        }
        size_t start = (size_t)dl->order[dl->pos++] * (size_t)dl->stride + dl->shift;
        const int *w = dl->ids + start;             /* start + T + 1 <= n by construction of nwin */
        memcpy(inputs + (size_t)b * (size_t)T, w, (size_t)T * sizeof(int));
        memcpy(targets + (size_t)b * (size_t)T, w + 1, (size_t)T * sizeof(int));
    }
}

moelm_status dataloader_seek(DataLoader *dl, uint64_t epoch, size_t pos) {
    if (pos > dl->nwin)
        return moelm_fail(MOELM_ERR_DATA, "dataloader: saved position %zu is past the %zu windows of an epoch; "
                          "the data or the batch shape changed since the checkpoint", pos, dl->nwin);
    dl->epoch = epoch;
    dl->pos = pos;
    build_order(dl);
    return MOELM_OK;
}

static size_t eval_num_windows(size_t n, int T, int S) {
    if (n < 2) return 0;
    size_t preds = n - 1;   /* targets 1..n-1 */
    return preds <= (size_t)T ? 1 : 1 + (preds - (size_t)T + (size_t)S - 1) / (size_t)S;
}

size_t eval_num_batches(size_t n, int B, int T, int S) {
    CHECK(B >= 1 && T >= 1 && S >= 1 && S <= T);
    return (eval_num_windows(n, T, S) + (size_t)B - 1) / (size_t)B;
}

void eval_batch(const int *ids, size_t n, int B, int T, int S, size_t batch_index, int *inputs, int *targets) {
    CHECK(batch_index < eval_num_batches(n, B, T, S));
    size_t nwin = eval_num_windows(n, T, S);
    for (int b = 0; b < B; b++) {
        size_t w = batch_index * (size_t)B + (size_t)b;
        for (int t = 0; t < T; t++) {
            size_t p = w * (size_t)S + (size_t)t;    /* input position; its target is p + 1 */
            size_t k = (size_t)b * (size_t)T + (size_t)t;
            int scored = w == 0 || t >= T - S;
            if (w < nwin && p + 1 < n) { inputs[k] = ids[p]; targets[k] = scored ? ids[p + 1] : -1; }
            else { inputs[k] = 0; targets[k] = -1; }
        }
    }
}
