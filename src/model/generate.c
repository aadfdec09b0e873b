/* generate.c: generation with a KV cache (batch 1) and next-token sampling.
 *
 * model_step_kv runs one position through the stages of model_steps (steps.h), the same list of
 * steps that model_forward walks, in eval mode (no dropout, the eval capacity factor, no jitter),
 * keeping each layer's keys and values so that attention at position t reads positions 0..t from the
 * cache instead of recomputing them. What is written here is how each kind of step runs for one
 * position in a team of threads (gen_step), not the model's structure; tests/test_generate.c compares
 * the two walkers on every model kind.
 *
 * Invariants: one allocation per cache (kv_create), nothing allocated in a step; kv->k and kv->v
 * hold positions 0..kv->pos-1 of every layer; the MoE layers run with N = 1, so a token's routing
 * never depends on other tokens (capacity is clamped to N = 1, which drops nothing: a token's K
 * slots go to K distinct experts).
 *
 * Dimensions: C d_model, NH heads, hs = C/NH, L layers, V vocab, H d_ff, H1 = H or 2H (SwiGLU),
 * HH the seed head's hidden size, P n_positions.
 */
#include "model/steps.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdlib.h>
#include <string.h>
#include "backend/gemv.h"
#include "backend/barrier.h"
#include "backend/runtime.h"
#include "backend/gemm.h"
#include "ops/attn.h"
#include "ops/ops_simd.h"
#include "ops/ops.h"

/* ---- cache ------------------------------------------------------------------------------------- */

/* floats between one thread's own vectors in kv->own: C rounded up to whole cache lines */
static size_t own_stride(int C) { return ((size_t)C + 15) & ~(size_t)15; }

/* floats between one dimension's row of keys and the next in kv->k: n_positions rounded up to whole
 * cache lines */
static size_t kv_key_stride(int P) { return ((size_t)P + 15) & ~(size_t)15; }

/* ints between one thread's list of nonzero units in kv->nz_idx and the next: the widest hidden layer
 * a down product reads (a dense FFN's, an expert's, the seed head's), rounded up to whole cache lines */
static size_t units_stride(const Model *m) {
    const ModelConfig *c = &m->cfg;
    int u = c->d_ff > c->head_hidden ? c->d_ff : c->head_hidden;
    if (config_num_moe_layers(c) > 0 && m->moe_cfg.H > u) u = m->moe_cfg.H;
    return ((size_t)u + 15) & ~(size_t)15;
}

/* Runs twice like model.c's layouts: base == NULL counts bytes, then hands out pointers. */
static size_t kv_layout(KVCache *kv, char *base, const Model *m) {
    const ModelConfig *c = &m->cfg;
    int C = c->d_model, L = c->num_layers, P = c->n_positions, V = c->vocab_size;
    int H = c->d_ff, H1 = activation_in_width(c->hidden_act, H), HH = c->model_type == MODEL_SEED ? c->head_hidden : 0;
    int W1 = H1 > HH ? H1 : HH, W = H > HH ? H : HH;
    size_t off = 0;
#define TAKE(ptr, nfloats) do { size_t _b = sizeof(float) * (size_t)(nfloats); \
        (ptr) = base ? (void *)(base + off) : NULL; off += (_b + 63) & ~(size_t)63; } while (0)
    TAKE(kv->k, (size_t)L * C * kv_key_stride(P));
    TAKE(kv->v, (size_t)L * P * C);
    TAKE(kv->own, (size_t)KV_TEAM_MAX * 3 * own_stride(C));
    TAKE(kv->xb2, C);
    TAKE(kv->bar, sizeof(TeamBarrier) / sizeof(float));
    TAKE(kv->qkv, model_qkv_width(c));
    TAKE(kv->atty, C);
    TAKE(kv->att, (size_t)c->num_heads * P);   /* a row of scores per head */
    TAKE(kv->fc_pre, W1);
    TAKE(kv->fc, W);
    TAKE(kv->logits, V);
    TAKE(kv->skipped, (size_t)KV_TEAM_MAX * 8 * (sizeof(double) / sizeof(float)));
    TAKE(kv->nz_idx, (size_t)KV_TEAM_MAX * units_stride(m));
#undef TAKE
    if (config_num_moe_layers(c) > 0) {
        size_t bytes = moe_acts_bytes(&m->moe_cfg, 1);
        if (base) moe_acts_bind(&kv->moe, base + off, &m->moe_cfg, 1);
        off += (bytes + 63) & ~(size_t)63;
    }
    return off;
}

moelm_status kv_create(KVCache *kv, const Model *m) {
    memset(kv, 0, sizeof *kv);
    size_t bytes = kv_layout(kv, NULL, m);
    kv->mem = moelm_calloc(1, bytes);
    if (!kv->mem)
        return moelm_fail(MOELM_ERR_NOMEM, "cannot allocate the KV cache (%zu bytes for n_positions %d): "
                          "lower n_positions", bytes, m->cfg.n_positions);
    kv_layout(kv, kv->mem, m);
    kv->n_positions = m->cfg.n_positions;
    kv->pos = 0;
    return MOELM_OK;
}

/* The matrices that multiply a ReLU's output, in step order; returns their count, filling out when
 * it is not NULL (off left 0). */
static int down_list(const Model *m, KVDownCopy *out) {
    const ModelConfig *c = &m->cfg;
    const MoEConfig *mc = &m->moe_cfg;
    int seed = c->model_type == MODEL_SEED, n = 0;
#define ADD(p, count, r, k, ph) do { if (out) out[n] = (KVDownCopy){(p), (count), (r), (k), 0, (ph)}; n++; } while (0)
#define ADD_MOE(mp) do { if (mc->act == ACT_RELU) { \
        ADD((mp)->w2, (size_t)mc->E, mc->C, mc->H, KV_PHASE_MOE); \
        if (mc->shared_expert) ADD((mp)->sw2, 1, mc->C, mc->H, KV_PHASE_MOE); } } while (0)
    MoELayer ml[CONFIG_MAX_MOE_LAYERS];
    int n_moe = model_moe_layers(m, ml, CONFIG_MAX_MOE_LAYERS);
    for (int i = 0; i < n_moe; i++) ADD_MOE(ml[i].p);
    if (seed) ADD(m->p.head_w2, 1, c->vocab_size, c->head_hidden, KV_PHASE_HEAD);   /* its hidden layer is a ReLU */
#undef ADD_MOE
#undef ADD
    return n;
}

/* dst = src [rows, cols] down-major in blocks of KV_DOWN_BLOCK rows (the last one narrower): block b,
 * w rows wide, is [cols, w] at dst + b KV_DOWN_BLOCK cols; floats, or rounded to bf16 */
static void down_major_into(void *dst, int bf16, const float *src, size_t rows, size_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= ((size_t)1 << 20))
    for (size_t r0 = 0; r0 < rows; r0 += KV_DOWN_BLOCK) {
        size_t w = rows - r0 < KV_DOWN_BLOCK ? rows - r0 : KV_DOWN_BLOCK, base = r0 * cols;
        for (size_t k0 = 0; k0 < cols; k0 += 16)   /* 16 columns of the source at a time: its lines reused */
            for (size_t r = r0; r < r0 + w; r++)
                for (size_t k = k0; k < cols && k < k0 + 16; k++) {
                    size_t at = base + k * w + (r - r0);
                    if (bf16) ((uint16_t *)dst)[at] = bf16_round(src[r * cols + k]);
                    else ((float *)dst)[at] = src[r * cols + k];
                }
    }
}

static void kv_drop_weights(KVCache *kv) {
    moelm_free(kv->w16);
    moelm_free(kv->down);
    moelm_free(kv->down_w);
    kv->w16 = NULL;
    kv->down = NULL;
    kv->down_w = NULL;
    kv->n_down = 0;
}

moelm_status kv_load_weights(KVCache *kv, const Model *m, int bf16) {
    CHECK(m->n_params == m->n_params_full);   /* every expert held (no expert-parallel shard), as a step needs */
    kv_drop_weights(kv);
    size_t es = bf16 ? sizeof(uint16_t) : sizeof(float), total = 0;
    kv->skip_min = bf16 ? KV_SKIP_MIN_BF16 : KV_SKIP_MIN_FLOAT;
    kv->skip_min_long = KV_SKIP_MIN_LONG;
    if (bf16) {
        kv->w16 = moelm_malloc(sizeof(uint16_t) * m->n_params);
        if (!kv->w16)
            return moelm_fail(MOELM_ERR_NOMEM, "cannot allocate the bf16 weights (%zu bytes)", sizeof(uint16_t) * m->n_params);
        bf16_from_f32(kv->w16, m->params, m->n_params);
    }
    int n = down_list(m, NULL);
    if (n == 0) return MOELM_OK;
    kv->down = moelm_malloc(sizeof(KVDownCopy) * (size_t)n);
    if (!kv->down) { kv_drop_weights(kv); return MOELM_ERR_NOMEM; }
    down_list(m, kv->down);
    for (int i = 0; i < n; i++) {
        kv->down[i].off = total;
        total += kv->down[i].n * kv->down[i].rows * kv->down[i].cols;
    }
    kv->down_w = moelm_malloc(es * total);
    if (!kv->down_w) {
        kv_drop_weights(kv);
        return moelm_fail(MOELM_ERR_NOMEM, "cannot allocate the down-major weights (%zu bytes)", es * total);
    }
    kv->n_down = n;
    for (int i = 0; i < n; i++) {
        const KVDownCopy *d = &kv->down[i];
        size_t each = d->rows * d->cols;
        for (size_t j = 0; j < d->n; j++)
            down_major_into((char *)kv->down_w + es * (d->off + j * each), bf16, d->src + j * each, d->rows, d->cols);
    }
    return MOELM_OK;
}

/* ---- Q8_0 matrices ----------------------------------------------------------------------------- */

moelm_status q8_arena_add(Q8Arena *a, size_t first, size_t n) {
    CHECK(first % Q8_0_BLOCK == 0 && n % Q8_0_BLOCK == 0);
    CHECK(a->n_span == 0 || first >= a->span[2 * a->n_span - 1]);
    if (a->n_span && first == a->span[2 * a->n_span - 1]) {
        a->span[2 * a->n_span - 1] += n;
        return MOELM_OK;
    }
    if (a->n_span == a->cap) {
        int cap = a->cap ? 2 * a->cap : 64;
        size_t *s = moelm_realloc(a->span, sizeof(size_t) * 2 * (size_t)cap);
        if (!s) return MOELM_ERR_NOMEM;
        a->span = s;
        a->cap = cap;
    }
    a->span[2 * a->n_span] = first;
    a->span[2 * a->n_span + 1] = first + n;
    a->n_span++;
    return MOELM_OK;
}

int q8_arena_holds(const Q8Arena *a, size_t first, size_t n) {
    int lo = 0, hi = a->n_span;   /* the last span starting at or before first: binary search */
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (a->span[2 * mid] <= first) lo = mid;
        else hi = mid;
    }
    return a->n_span && a->span[2 * lo] <= first && first + n <= a->span[2 * lo + 1];
}

void q8_arena_free(Q8Arena *a) {
    moelm_free(a->blocks);
    moelm_free(a->span);
    memset(a, 0, sizeof *a);
}

moelm_status kv_use_q8(KVCache *kv, const Model *m, const Q8Arena *q) {
    CHECK(kv->w16 == NULL && kv->q8x == NULL);
    const ModelConfig *c = &m->cfg;
    int K = c->d_model > c->d_ff ? c->d_model : c->d_ff;   /* the widest input a product reads */
    if (m->moe_cfg.H > K) K = m->moe_cfg.H;
    K = (K + Q8_0_BLOCK - 1) / Q8_0_BLOCK * Q8_0_BLOCK;
    kv->q8x = moelm_calloc(KV_TEAM_MAX, sizeof(Q8Vec));
    if (!kv->q8x) return MOELM_ERR_NOMEM;
    for (int i = 0; i < KV_TEAM_MAX; i++)
        if (q8vec_alloc(&kv->q8x[i], K)) {
            for (int j = 0; j < i; j++) q8vec_free(&kv->q8x[j]);
            moelm_free(kv->q8x);
            kv->q8x = NULL;
            return MOELM_ERR_NOMEM;
        }
    kv->q8 = q;
    return MOELM_OK;
}

void kv_free(KVCache *kv) {
    if (kv->q8x)
        for (int i = 0; i < KV_TEAM_MAX; i++) q8vec_free(&kv->q8x[i]);
    moelm_free(kv->q8x);
    kv_drop_weights(kv);
    moelm_free(kv->mem);
    memset(kv, 0, sizeof *kv);
}

/* Old keys and values need no clearing: attention reads only positions < pos. */
void kv_reset(KVCache *kv) {
    kv->pos = 0;
    memset(kv->skipped, 0, sizeof(double) * KV_TEAM_MAX * 8);
    memset(kv->phase_s, 0, sizeof kv->phase_s);
}

void kv_phase_skipped(const KVCache *kv, double out[KV_PHASES]) {
    for (int p = 0; p < KV_PHASES; p++) {
        out[p] = 0.0;
        for (int i = 0; i < KV_TEAM_MAX; i++) out[p] += kv->skipped[8 * i + p];
    }
}

double kv_skipped_bytes(const KVCache *kv) {
    double by[KV_PHASES], s = 0.0;
    kv_phase_skipped(kv, by);
    for (int p = 0; p < KV_PHASES; p++) s += by[p];
    return s;
}

const char *const kv_phase_names[KV_PHASES] = {"attention", "projection", "ffn", "moe", "head"};
_Static_assert(KV_PHASES <= 8, "kv->skipped keeps a thread's bytes by phase in its 8 doubles");

/* ---- one step ---------------------------------------------------------------------------------- */

/* A token step streams every weight once and does little else, so it is bound by how fast the weights
 * arrive; one parallel region per token lets every core stream its share of every matrix. Inside it:
 * - each product's rows are split over the team (rows_of: contiguous, whole 16-row blocks), and an
 *   FFN's activation is applied by the thread that computed the row;
 * - attention is split by heads, and the thread that owns head h also computes h's rows of q, k and v,
 *   so no barrier separates the qkv product from attention;
 * - the short vector ops (residual adds, norms, the MoE layer's gated sum) are done by every thread on
 *   its own copy of the vectors (kv->own), so they need neither a single thread nor a barrier;
 * - a barrier follows each product whose output every thread reads next: 4 per dense layer.
 * Each output element is computed by one thread with the same code, and every thread's own vectors
 * hold the same values, at any thread count, so the bits do not depend on it. */

static void norm_row(const Model *m, float *out, const float *inp, const float *w, const float *b) {
    float mean, rstd;
    if (m->cfg.norm_type == NORM_RMS) rmsnorm_forward(out, &rstd, inp, w, 1, m->cfg.d_model, m->cfg.layer_norm_epsilon);
    else layernorm_forward(out, &mean, &rstd, inp, w, b, 1, m->cfg.d_model, m->cfg.layer_norm_epsilon);
}

static int team_size(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

static int team_rank(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* The calling thread's share [*lo, *hi) of n items split into units of `unit` (the last unit may be
 * short): contiguous and in order over the team. */
static void share_of(int n, int unit, int *lo, int *hi) {
    long units = (n + unit - 1) / unit, nt = team_size(), r = team_rank();
    long a = unit * (units * r / nt), b = unit * (units * (r + 1) / nt);
    *lo = (int)(a < n ? a : n);
    *hi = (int)(b < n ? b : n);
}

static void rows_of(int n, int *lo, int *hi) { share_of(n, 16, lo, hi); }

static void team_barrier(KVCache *kv) { team_barrier_wait(kv->bar, team_size()); }

/* y[lo..hi) = W[lo..hi) x + b[lo..hi), W one of m's weight matrices [N, K] (from its bf16 copy when kv
 * has one), on the calling thread. */
static void mv_rows(const Model *m, const KVCache *kv, float *y, const float *x, const float *W, const float *b,
                    int lo, int hi, int K) {
    if (hi <= lo) return;
    const float *bias = b ? b + lo : NULL;
    size_t at = (size_t)(W - m->params) + (size_t)lo * K;
    if (kv->q8 && q8_arena_holds(kv->q8, at, (size_t)(hi - lo) * K)) {
        /* the Q8Vec is sized for the widest input: its K is this product's (q8vec_quantize reads K);
         * products that read the same x (q, k, v; an expert's gate and up; experts on one token)
         * quantize it once */
        Q8Vec *xq = &kv->q8x[team_rank()];
        xq->K = K;
        q8vec_quantize_once(xq, x);
        q8_0_gemv(y + lo, kv->q8->blocks + at / Q8_0_BLOCK, xq, hi - lo, K);
        for (int i = 0; bias && i < hi - lo; i++) y[lo + i] += bias[i];
        return;
    }
    if (!kv->w16) {
        gemv_one(y + lo, x, W + (size_t)lo * K, bias, hi - lo, K);
        return;
    }
    CHECK(W >= m->params && W + (size_t)hi * K <= m->params + m->n_params);
    const uint16_t *W16 = kv->w16 + (W - m->params);
    gemv_one_bf16(y + lo, x, W16 + (size_t)lo * K, bias, hi - lo, K);
}

/* y[N] = W x + b over the team, then a barrier */
static void mv_team(const Model *m, KVCache *kv, float *y, const float *x, const float *W, const float *b, int N, int K) {
    int lo, hi;
    rows_of(N, &lo, &hi);
    mv_rows(m, kv, y, x, W, b, lo, hi, K);
    team_barrier(kv);
}

/* y[C] = W2 act(W1 x + b1) + b2 on one row: moe.c's ffn_forward (and model.c's dense FFN) for N = 1,
 * with h_pre [H1] and h [H] its scratch. A team computes it in two phases, each over rows of the
 * calling thread: up (rows lo..hi of h_pre, and H + lo.. for SwiGLU's second half, then the
 * activation of h[lo..hi), which needs no other thread's rows) and, after a barrier, down (rows
 * lo..hi of y). */
typedef struct {
    float *y, *h, *h_pre;
    const float *x, *w1, *b1, *w2, *b2;
} FfnRow;

static void ffn_up(const Model *m, const KVCache *kv, const FfnRow *f, Activation act, int C, int H, int lo, int hi) {
    mv_rows(m, kv, f->h_pre, f->x, f->w1, f->b1, lo, hi, C);
    if (act == ACT_SWIGLU) mv_rows(m, kv, f->h_pre, f->x, f->w1, f->b1, H + lo, H + hi, C);
    activation_forward_cols(f->h, f->h_pre, act, H, lo, hi);
}

/* The down-major copy of the matrix at W (an expert's slice of one), or NULL; *phase the part of a
 * step that reads it */
static const void *down_copy(const KVCache *kv, const float *W, KVPhase *phase) {
    for (int i = 0; i < kv->n_down; i++) {
        const KVDownCopy *d = &kv->down[i];
        if (W >= d->src && W < d->src + d->n * d->rows * d->cols) {
            *phase = d->phase;
            return (const char *)kv->down_w + (kv->w16 ? sizeof(uint16_t) : sizeof(float)) * (d->off + (size_t)(W - d->src));
        }
    }
    return NULL;
}

/* y[N] = W2 h + b2: all of it (turn NULL), or the calling thread's share of the team's. From W2's
 * down-major copy when there is one and enough of h is zero (kv->skip_min, or skip_min_long where a
 * unit's run is KV_LONG_RUN bytes or more), skipping those units (h's nonzero units listed once, for
 * every block), a block of KV_DOWN_BLOCK outputs at a time: the blocks are numbered on from *turn
 * (shared by the products of one phase, so that two experts' single blocks go to two threads) and
 * dealt round the team. Else whole, by rows. The choice depends on h alone, so not on the team. */
static void ffn_down(const Model *m, KVCache *kv, const FfnRow *f, int N, int H, int *turn) {
    KVPhase phase = KV_PHASE_FFN;
    const void *wt = down_copy(kv, f->w2, &phase);
    size_t es = kv->w16 ? sizeof(uint16_t) : sizeof(float);
    size_t run = es * (size_t)(N < KV_DOWN_BLOCK ? N : KV_DOWN_BLOCK);   /* bytes: a unit's weights in a block */
    int *idx = kv->nz_idx + (size_t)team_rank() * units_stride(m), cnt = 0;
    if (wt) {
        cnt = nz_index(f->h, H, idx);
        if (H - cnt < (run >= KV_LONG_RUN ? kv->skip_min_long : kv->skip_min) * H) wt = NULL;
    }
    if (!wt) {
        int lo = 0, hi = N;
        if (turn) rows_of(N, &lo, &hi);
        mv_rows(m, kv, f->y, f->h, f->w2, f->b2, lo, hi, H);
        return;
    }
    int nb = (N + KV_DOWN_BLOCK - 1) / KV_DOWN_BLOCK;
    for (int b = 0; b < nb; b++) {
        if (turn && (*turn + b) % team_size() != team_rank()) continue;
        int r0 = b * KV_DOWN_BLOCK, w = N - r0 < KV_DOWN_BLOCK ? N - r0 : KV_DOWN_BLOCK;
        const void *blk = (const char *)wt + es * (size_t)r0 * H;
        const float *bias = f->b2 ? f->b2 + r0 : NULL;
        if (kv->w16) gemv_t_nz_bf16(f->y + r0, f->h, idx, cnt, blk, w, bias, w);
        else gemv_t_nz(f->y + r0, f->h, idx, cnt, blk, w, bias, w);
        kv->skipped[8 * team_rank() + phase] += (double)(H - cnt) * w * es;
    }
    if (turn) *turn += nb;
}

/* the dense FFN over the team */
static void ffn_team(const Model *m, KVCache *kv, const FfnRow *f, Activation act, int C, int H) {
    int lo, hi;
    rows_of(H, &lo, &hi);
    ffn_up(m, kv, f, act, C, H, lo, hi);
    team_barrier(kv);
    int turn = 0;
    ffn_down(m, kv, f, C, H, &turn);
    team_barrier(kv);
}

/* Expert e of p on its row of the dispatched slab (N = 1: one row or none): 0 when the token did not
 * reach it. */
static int expert_ffn(const Model *m, KVCache *kv, const MoEParams *p, int e, FfnRow *f) {
    const MoEConfig *cfg = &m->moe_cfg;
    MoEActs *a = &kv->moe;
    int C = cfg->C, H = cfg->H, H1 = activation_in_width(cfg->act, H), r = a->offsets[e];
    if (a->offsets[e + 1] == r) return 0;
    *f = (FfnRow){a->y + (size_t)r * C, a->h + (size_t)r * H, a->h_pre + (size_t)r * H1, a->xd + (size_t)r * C,
                  p->w1 + (size_t)e * H1 * C, p->b1 ? p->b1 + (size_t)e * H1 : NULL, p->w2 + (size_t)e * C * H,
                  p->b2 ? p->b2 + (size_t)e * C : NULL};   /* no_bias: NULL */
    return 1;
}

/* out[C] (the calling thread's own) = the MoE layer p on one token's x[C], in the team: the routing on
 * one thread, then the experts the token reached, then every thread sums the gated outputs into its
 * own out. A few experts (switch, top-k) run in two phases over the team: the up phase of each of
 * them (and of the shared expert), a barrier, their down phase, a barrier; each thread streams its
 * rows of every such expert. Many (soft gating: every expert) go whole to the threads, one barrier in
 * all (measured faster than the phases: 1590-1626 against 1414-1465 tokens/s in bf16 for 32 soft
 * experts). */
static void moe_team(Model *m, KVCache *kv, float *out, const float *x, const int *token, const MoEParams *p,
                     int layer) {
    const MoEConfig *cfg = &m->moe_cfg;
    MoEActs *a = &kv->moe;
    int C = cfg->C, H = cfg->H, E = cfg->E, reached = 0, lo, hi;
    FfnRow f, shared = {a->sy, a->sh, a->sh_pre, x, p->sw1, p->sb1, p->sw2, p->sb2};
    CHECK(a->Rmax == 0 && cfg->e_first == 0);   /* every expert held here */
    if (team_rank() == 0) moe_forward_route(a, x, token, p, cfg, 1, 0, model_site_key(m, layer, SITE_MOE));
    team_barrier(kv);
    for (int e = 0; e < E; e++) reached += a->offsets[e + 1] > a->offsets[e];
    if (reached >= 2 * team_size()) {
        share_of(E, 1, &lo, &hi);
        for (int e = lo; e < hi; e++)
            if (expert_ffn(m, kv, p, e, &f)) {
                ffn_up(m, kv, &f, cfg->act, C, H, 0, H);
                ffn_down(m, kv, &f, C, H, NULL);
            }
        team_barrier(kv);
        if (cfg->shared_expert) ffn_team(m, kv, &shared, cfg->act, C, H);
    } else {
        rows_of(H, &lo, &hi);
        for (int e = 0; e < E; e++)
            if (expert_ffn(m, kv, p, e, &f)) ffn_up(m, kv, &f, cfg->act, C, H, lo, hi);
        if (cfg->shared_expert) ffn_up(m, kv, &shared, cfg->act, C, H, lo, hi);
        team_barrier(kv);
        int turn = 0;
        for (int e = 0; e < E; e++)
            if (expert_ffn(m, kv, p, e, &f)) ffn_down(m, kv, &f, C, H, &turn);
        if (cfg->shared_expert) ffn_down(m, kv, &shared, C, H, &turn);
        team_barrier(kv);
    }
    moe_forward_combine(out, a, cfg);
}

/* Thread 0 of a profiled step: the time since *since goes to phase p */
static void phase_end(KVCache *kv, KVPhase p, double *since) {
    if (!kv->profile || team_rank() != 0) return;
    double now = time_now();
    kv->phase_s[p] += now - *since;
    *since = now;
}

/* The rotary attention of position t in layer l (the llama family's, an lm's with RoPE; model.c's
 * attn_block_fwd for one row): the
 * calling thread's key/value heads g, with their query heads g G .. g G + G - 1 (G = NH / NKV): their
 * rows of q, k and v from inp, the rotation of q and k at position t, k and v into the cache (kv head g
 * where the lm keeps head g), and attn_step over the cache into atty. */
static void llama_attention(Model *m, KVCache *kv, const float *inp, const LayerParams *lp, int l, int t) {
    const ModelConfig *c = &m->cfg;
    int C = c->d_model, NH = c->num_heads, P = c->n_positions, hd = C / NH;
    int NKV = c->num_key_value_heads ? c->num_key_value_heads : NH, G = NH / NKV;
    size_t ldk = kv_key_stride(P);
    float *kl = kv->k + (size_t)l * C * ldk, *vl = kv->v + (size_t)l * P * C;
    float *q = kv->qkv, *k = q + (size_t)NH * hd, *v = k + (size_t)NKV * hd;
    int g0, g1;
    share_of(NKV, 1, &g0, &g1);
    if (g0 >= g1) return;
    int qr = NH * hd, kr = NKV * hd;   /* the first rows of k and of v in qkv_w */
    mv_rows(m, kv, kv->qkv, inp, lp->qkv_w, lp->qkv_b, g0 * G * hd, g1 * G * hd, C);   /* qkv_b: an lm's */
    mv_rows(m, kv, kv->qkv, inp, lp->qkv_w, lp->qkv_b, qr + g0 * hd, qr + g1 * hd, C);
    mv_rows(m, kv, kv->qkv, inp, lp->qkv_w, lp->qkv_b, qr + kr + g0 * hd, qr + kr + g1 * hd, C);
    const ModelActs *a = &m->a;
    int nq = (g1 - g0) * G, nk = g1 - g0;   /* one row each: its stride is its width */
    rope_forward(q + (size_t)g0 * G * hd, &t, a->rope_cos, a->rope_sin, P, 1, nq, hd, (size_t)nq * hd);
    rope_forward(k + (size_t)g0 * hd, &t, a->rope_cos, a->rope_sin, P, 1, nk, hd, (size_t)nk * hd);
    for (int g = g0; g < g1; g++) {
        float *kh = kl + (size_t)g * hd * ldk, *vh = vl + (size_t)g * P * hd;
        for (int d = 0; d < hd; d++) kh[(size_t)d * ldk + t] = k[g * hd + d];
        memcpy(vh + (size_t)t * hd, v + (size_t)g * hd, sizeof(float) * hd);
        attn_step(kv->atty + (size_t)g * G * hd, kv->att + (size_t)g * G * P, q + (size_t)g * G * hd, kh, ldk,
                  0, vh, 0, NULL, 0, NULL, t + 1, G, 1, hd, 1.0f / sqrtf((float)hd));
    }
}

/* The self-attention of position t in layer l of the lm and seed models (model.c's attention_forward
 * for row t): the calling thread's heads h, their rows of q, k and v from inp, k and v into the
 * cache's position t (head h's keys transposed, kh[d ldk + u], and its values as rows), then
 * attention_step over the cache into atty. */
static void lm_attention(Model *m, KVCache *kv, const float *inp, const LayerParams *lp, int l, int t) {
    const ModelConfig *c = &m->cfg;
    int C = c->d_model, NH = c->num_heads, P = c->n_positions, hs = C / NH, h0, h1;
    size_t ldk = kv_key_stride(P);
    float *kl = kv->k + (size_t)l * C * ldk, *vl = kv->v + (size_t)l * P * C;
    share_of(NH, 1, &h0, &h1);
    for (int part = 0; part < 3; part++)
        mv_rows(m, kv, kv->qkv, inp, lp->qkv_w, lp->qkv_b, part * C + h0 * hs, part * C + h1 * hs, C);
    for (int h = h0; h < h1; h++) {
        float *kh = kl + (size_t)h * hs * ldk, *vh = vl + (size_t)h * P * hs;
        for (int d = 0; d < hs; d++) kh[(size_t)d * ldk + t] = kv->qkv[C + h * hs + d];
        memcpy(vh + (size_t)t * hs, kv->qkv + 2 * C + h * hs, sizeof(float) * hs);
        attention_step(kv->atty + h * hs, kv->att + (size_t)h * P, kv->qkv + h * hs, kh, ldk, vh, t + 1, hs);
    }
}

/* A thread's vectors in a step: its own x (the residual stream: a block's input, res1 and output
 * in place), xb (a norm's output, the seed head's hm) and o (a sum: the MoE layer's output, the seed
 * block's res2), and the team's shared ones */
typedef struct {
    float *x, *xb, *o;
} OwnVecs;

static float *step_vec(KVCache *kv, const OwnVecs *v, StepVec role, int sparse) {
    switch (role) {
    case SV_X: case SV_RES1: case SV_OUT: return v->x;
    case SV_LN1: case SV_LN2: case SV_LNF: case SV_HM: case SV_HM_DROP: return v->xb;
    case SV_RES2: case SV_HM_OUT: return v->o;
    case SV_FFN: return sparse ? v->o : kv->xb2;   /* the MoE layer's sum is each thread's own */
    case SV_ATTPROJ: return kv->xb2;
    case SV_ATTY: return kv->atty;
    case SV_LOGITS: return kv->logits;
    }
    CHECK(0 && "a vector without a buffer");
    return NULL;
}

/* Step st of stage s (steps.h) for the token at position t, by the calling thread of the team. The
 * last products of a stage end at the region's closing barrier (logits, the seed head's W2). */
static void gen_step(Model *m, KVCache *kv, const OwnVecs *v, const ModelStep *st, int s, int token, int t) {
    const ModelConfig *c = &m->cfg;
    int C = c->d_model, V = c->vocab_size, L = c->num_layers, lo, hi;
    const ModelParams *p = &m->p;
    const LayerParams *lp = s < L ? &p->layers[s] : NULL;
    int sparse = s < L && config_block_is_sparse(c, s);
    float *out = step_vec(kv, v, st->out, sparse);
    const float *in = st->op == STEP_EMBED ? NULL : step_vec(kv, v, st->in, sparse);
    switch (st->op) {
    case STEP_EMBED: {   /* encoder_forward's sum; a Q8_0 embedding's row dequantized */
        size_t row = (size_t)(p->wte - m->params) + (size_t)token * C;
        const float *emb = p->wte + (size_t)token * C;
        if (kv->q8 && q8_arena_holds(kv->q8, row, (size_t)C)) {
            q8_0_dequantize(out, kv->q8->blocks + row / Q8_0_BLOCK, (size_t)C);
            emb = out;
        }
        for (int i = 0; i < C; i++) out[i] = emb[i] + (p->wpe ? p->wpe[(size_t)t * C + i] : 0.0f);
        break;
    }
    case STEP_NORM:
        if (st->norm == NORM_OF_LN1) norm_row(m, out, in, lp->ln1_w, lp->ln1_b);
        else if (st->norm == NORM_OF_LN2) norm_row(m, out, in, lp->ln2_w, lp->ln2_b);
        else norm_row(m, out, in, p->lnf_w, p->lnf_b);
        break;
    case STEP_ATTN:
        CHECK(out == kv->atty);
        if (config_uses_rope(c)) llama_attention(m, kv, in, lp, s, t);
        else lm_attention(m, kv, in, lp, s, t);
        team_barrier(kv);
        break;
    case STEP_PROJ:
        mv_team(m, kv, out, in, lp->out_w, lp->out_b, C, C);
        break;
    case STEP_DROP:   /* generation is an eval forward: no dropout */
        CHECK(out == in);
        break;
    case STEP_ADD:
        add_forward(out, in, step_vec(kv, v, st->in2, sparse), C);
        break;
    case STEP_FFN: {
        FfnRow f = {out, kv->fc, kv->fc_pre, in, lp->fc1_w, lp->fc1_b, lp->fc2_w, lp->fc2_b};
        ffn_team(m, kv, &f, c->hidden_act, C, c->d_ff);
        break;
    }
    case STEP_MOE:
        moe_team(m, kv, out, in, &token, lp ? &lp->moe : &p->head_moe, s);
        break;
    case STEP_LOGITS:
        rows_of(V, &lo, &hi);
        mv_rows(m, kv, out, in, c->tie_word_embeddings ? p->wte : p->lm_head, NULL, lo, hi, C);
        break;
    case STEP_HEAD_FFN: {
        int HH = c->head_hidden, turn = 0;
        FfnRow f = {out, kv->fc, kv->fc_pre, in, p->head_w1, p->head_b1, p->head_w2, p->head_b2};
        rows_of(HH, &lo, &hi);
        ffn_up(m, kv, &f, ACT_RELU, C, HH, lo, hi);                  /* relu(hm W1 + b1) */
        team_barrier(kv);
        ffn_down(m, kv, &f, V, HH, &turn);                           /* logits = . W2 + b2 */
        break;
    }
    }
}

/* The body of model_step_kv, run by every thread of a team (or by one thread alone): model_steps'
 * stages in order, each part of a step timed when it ends (bench --profile). */
static void step_team(Model *m, KVCache *kv, int token, int t) {
    const ModelConfig *c = &m->cfg;
    size_t cs = own_stride(c->d_model);
    float *own = kv->own + (size_t)team_rank() * 3 * cs;
    OwnVecs v = {own, own + cs, own + 2 * cs};
    double since = kv->profile ? time_now() : 0.0;
    for (int s = 0; s <= c->num_layers; s++) {
        ModelStep st[MODEL_STEPS_MAX];
        int n = model_steps(c, s, st);
        for (int i = 0; i < n; i++) {
            gen_step(m, kv, &v, &st[i], s, token, t);
            if (i + 1 == n || st[i + 1].part != st[i].part) phase_end(kv, st[i].part, &since);
        }
    }
}

void model_step_kv(Model *m, KVCache *kv, int token) {
    const ModelConfig *c = &m->cfg;
    int t = kv->pos, team = backend_threads() < KV_TEAM_MAX ? backend_threads() : KV_TEAM_MAX;
    CHECK(kv->mem != NULL && kv->n_positions == c->n_positions);
    CHECK(t >= 0 && t < c->n_positions);   /* the caller stops when the cache is full */
    CHECK(token >= 0 && token < c->vocab_size);
    model_pass_begin(m, 1, 0);   /* the random router's key, as model_forward's pass takes it */
#pragma omp parallel num_threads(team) if (team > 1)
    step_team(m, kv, token, t);
    if (m->ad.n) {   /* the adaptive softmax: the words' logits to log p, with the clusters' from ln_f's output */
        const float *x = kv->own + own_stride(c->d_model);   /* thread 0's xb */
        float clog[ADAPTIVE_MAX];
        for (int k = 0; k < m->ad.n; k++) clog[k] = dot_simd(x, m->p.ad_cluster + (size_t)k * c->d_model, c->d_model);
        adaptive_normalize(kv->logits, clog, &m->ad, 1);
    }
    kv->pos = t + 1;
}

/* ---- bytes a step streams ---------------------------------------------------------------------- */

/* model_cost's floats by part: matrices as kv_load_weights' copies hold them (bf16 or float) or as
 * q8's Q8_0 blocks, vectors (biases, norms, embedding rows, the router) always float. */
static double phase_bytes(const Model *m, int bf16, const Q8Arena *q8, double out[KV_PHASES]) {
    ModelCost k;
    model_cost(m, q8, &k);
    double total = 0.0;
    for (int p = 0; p < KV_PHASES; p++) {
        out[p] = k.mat[p] * (bf16 ? sizeof(uint16_t) : sizeof(float)) + k.vec[p] * sizeof(float) + k.q8_bytes[p];
        total += out[p];
    }
    return total;
}

double kv_phase_bytes(const Model *m, int bf16, double out[KV_PHASES]) { return phase_bytes(m, bf16, NULL, out); }

double kv_step_bytes(const Model *m, int bf16) {
    double by[KV_PHASES];
    return phase_bytes(m, bf16, NULL, by);
}

double kv_phase_bytes_q8(const Model *m, const Q8Arena *q8, double out[KV_PHASES]) {
    return phase_bytes(m, 0, q8, out);
}

/* ---- sampling ---------------------------------------------------------------------------------- */

/* Sorts (value, index) pairs stored as two floats: value descending, then index ascending, so the
 * order (and hence the draw) does not depend on qsort's treatment of ties. */
static int pair_cmp(const void *a, const void *b) {
    const float *x = a, *y = b;
    if (x[0] != y[0]) return x[0] > y[0] ? -1 : 1;
    return x[1] < y[1] ? -1 : x[1] > y[1];
}

/* Swaps pairs a and b of p */
static void swap_pairs(float *p, int a, int b) {
    float w = p[2 * a], v = p[2 * a + 1];
    p[2 * a] = p[2 * b];
    p[2 * a + 1] = p[2 * b + 1];
    p[2 * b] = w;
    p[2 * b + 1] = v;
}

/* Sifts pair i down the heap p[0..k) whose root is the last in pair_cmp's order */
static void heap_sift(float *p, int k, int i) {
    for (;;) {
        int w = i, l = 2 * i + 1, r = l + 1;
        if (l < k && pair_cmp(p + 2 * l, p + 2 * w) > 0) w = l;
        if (r < k && pair_cmp(p + 2 * r, p + 2 * w) > 0) w = r;
        if (w == i) return;
        swap_pairs(p, i, w);
        i = w;
    }
}

/* Moves the k first pairs of p[0..n) in pair_cmp's order to p[0..k), sorted, the rest after them in
 * some order: a heap of the best k so far whose root is the worst of them, then a sort of those k
 * (the set and order of a sort of all n, which pair_cmp orders totally: 0.1 ms for n = 10000, k =
 * 40, against qsort's 1 ms, which had made sampling slower than the model's step). */
static void top_pairs(float *p, int n, int k) {
    for (int i = k / 2 - 1; i >= 0; i--) heap_sift(p, k, i);
    for (int i = k; i < n; i++)
        if (pair_cmp(p + 2 * i, p) < 0) {   /* better than the worst kept: swapped (p stays a permutation) */
            swap_pairs(p, 0, i);
            heap_sift(p, k, 0);
        }
    qsort(p, (size_t)k, 2 * sizeof(float), pair_cmp);
}

/* The nucleus of pairs p[0..n), whose first `sorted` are the best in pair_cmp's order: the shortest
 * prefix of the sorted pairs with mass >= top_p of all n (summed in p's order: sorted after top-k,
 * index order without). Sorts only as far as it reaches: the best 64, then 4x as many, ..., then all
 * (a nucleus of 0.9 is usually a few hundred of 10,000 words: sorting them all took 1 ms a token). */
static int nucleus(float *p, int n, int sorted, float top_p) {
    double tot = 0.0, cum = 0.0;
    for (int i = 0; i < n; i++) tot += p[2 * i];
    for (int i = 0; i < n; i++) {
        if (i == sorted) {
            sorted = sorted ? 4 * sorted : 64;
            if (sorted >= n / 2) {
                sorted = n;
                qsort(p, (size_t)n, 2 * sizeof(float), pair_cmp);
            } else {
                top_pairs(p, n, sorted);   /* the first i stay where they are: they are the best i */
            }
        }
        cum += p[2 * i];
        if (cum >= (double)top_p * tot) return i + 1;
    }
    return n;
}

/* The index of the first largest of x[0..n), as the plain scan `if (x[v] > x[best]) best = v` gives it
 * (NaNs are never larger; 0 when x[0] is NaN): the largest value in one vectorised pass, then its
 * first position; the plain scan when that value is not found (every x -inf: the reduction may start
 * from -FLT_MAX). */
static int argmax_first(const float *x, int n) {
    if (isnan(x[0])) return 0;
    float m = x[0];
#pragma omp simd reduction(max : m)
    for (int v = 1; v < n; v++) m = x[v] > m ? x[v] : m;
    for (int v = 0; v < n; v++)
        if (x[v] == m) return v;
    int best = 0;
    for (int v = 1; v < n; v++) if (x[v] > x[best]) best = v;
    return best;
}

int sample_token(const float *logits, int V, float temp, int top_k, float top_p, Rng *rng, float *scratch) {
    CHECK(V > 0 && V <= (1 << 24));   /* indices are stored exactly as floats in scratch */
    int best = argmax_first(logits, V);
    if (!(temp > 0.0f) || top_k == 1) return best;
    CHECK(rng != NULL && scratch != NULL);
    /* pairs (w, index) with w = exp((logit - max) / temp), the unnormalised softmax(logits / temp) */
    float mx = logits[best];
    for (int v = 0; v < V; v++) {
        scratch[2 * v] = expf((logits[v] - mx) / temp);
        scratch[2 * v + 1] = (float)v;
    }
    int n = V, sorted = 0;
    if (top_k > 0 && top_k < V) {
        n = sorted = top_k;
        top_pairs(scratch, V, n);
    }
    if (top_p < 1.0f) n = nucleus(scratch, n, sorted, top_p);
    double tot = 0.0;
    for (int i = 0; i < n; i++) tot += scratch[2 * i];
    double u = (double)rng_uniform(rng) * tot, cum = 0.0;
    for (int i = 0; i < n; i++) {
        cum += scratch[2 * i];
        if (u < cum) return (int)scratch[2 * i + 1];
    }
    /* rounding left u at the very top: the last candidate with nonzero weight */
    for (int i = n - 1; i > 0; i--) if (scratch[2 * i] > 0.0f) return (int)scratch[2 * i + 1];
    return (int)scratch[1];
}
