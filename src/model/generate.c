/* generate.c: generation with a KV cache (batch 1) and next-token sampling.
 *
 * model_step_kv runs one position through the same layers, in the same order and with the same ops,
 * as model_forward in eval mode (no dropout, the eval capacity factor, no jitter), keeping each
 * layer's keys and values so that attention at position t reads positions 0..t from the cache
 * instead of recomputing them. It is not a second model: any change to model_forward's structure
 * must be mirrored here, and tests/test_generate.c compares the two on every model kind.
 *
 * Invariants: one allocation per cache (kv_create), nothing allocated in a step; kv->k and kv->v
 * hold positions 0..kv->pos-1 of every layer; the MoE layers run with N = 1, so a token's routing
 * never depends on other tokens (capacity is clamped to N = 1, which drops nothing: a token's K
 * slots go to K distinct experts).
 *
 * Dimensions: C d_model, NH heads, hs = C/NH, L layers, V vocab, H d_ff, H1 = H or 2H (SwiGLU),
 * HH the seed head's hidden size, P n_positions.
 */
#include "model/model.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdlib.h>
#include <string.h>
#include "backend/gemm.h"
#include "ops/ops.h"

/* ---- cache ------------------------------------------------------------------------------------- */

static int model_has_moe(const ModelConfig *c) {
    if (c->model_type == MODEL_SEED) return 1;
    for (int l = 0; l < c->num_layers; l++) if (config_block_is_sparse(c, l)) return 1;
    return 0;
}

/* Runs twice like model.c's layouts: base == NULL counts bytes, then hands out pointers. */
static size_t kv_layout(KVCache *kv, char *base, const Model *m) {
    const ModelConfig *c = &m->cfg;
    int C = c->d_model, L = c->num_layers, P = c->n_positions, V = c->vocab_size;
    int H = c->d_ff, H1 = c->hidden_act == ACT_SWIGLU ? 2 * H : H, HH = c->model_type == MODEL_SEED ? c->head_hidden : 0;
    int W1 = H1 > HH ? H1 : HH, W = H > HH ? H : HH;
    size_t off = 0;
#define TAKE(ptr, nfloats) do { size_t _b = sizeof(float) * (size_t)(nfloats); \
        (ptr) = base ? (float *)(base + off) : NULL; off += (_b + 63) & ~(size_t)63; } while (0)
    TAKE(kv->k, (size_t)L * P * C);
    TAKE(kv->v, (size_t)L * P * C);
    TAKE(kv->x, C);
    TAKE(kv->xb, C);
    TAKE(kv->xb2, C);
    TAKE(kv->qkv, 3 * C);
    TAKE(kv->atty, C);
    TAKE(kv->att, (size_t)c->num_heads * P);   /* a row of scores per head */
    TAKE(kv->fc_pre, W1);
    TAKE(kv->fc, W);
    TAKE(kv->logits, V);
#undef TAKE
    if (model_has_moe(c)) {
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

moelm_status kv_use_bf16(KVCache *kv, const Model *m) {
    moelm_free(kv->w16);
    kv->w16 = moelm_malloc(sizeof(uint16_t) * m->n_params);
    if (!kv->w16)
        return moelm_fail(MOELM_ERR_NOMEM, "cannot allocate the bf16 weights (%zu bytes)", sizeof(uint16_t) * m->n_params);
    bf16_from_f32(kv->w16, m->params, m->n_params);
    return MOELM_OK;
}

void kv_free(KVCache *kv) {
    moelm_free(kv->w16);
    moelm_free(kv->mem);
    memset(kv, 0, sizeof *kv);
}

/* Old keys and values need no clearing: attention reads only positions < pos. */
void kv_reset(KVCache *kv) { kv->pos = 0; }

/* ---- one step ---------------------------------------------------------------------------------- */

static void norm1(const Model *m, float *out, const float *inp, const float *w, const float *b) {
    float mean, rstd;
    if (m->cfg.norm_type == NORM_RMS) rmsnorm_forward(out, &rstd, inp, w, 1, m->cfg.d_model, m->cfg.layer_norm_epsilon);
    else layernorm_forward(out, &mean, &rstd, inp, w, b, 1, m->cfg.d_model, m->cfg.layer_norm_epsilon);
}

/* y[N] = W x + b, W one of m's weight matrices [N, K]: from its bf16 copy when kv has one. team = 1:
 * every thread of the team calls it and computes some of the rows (then a barrier); team = 0: the
 * calling thread computes them all. The bits are the same either way. */
static void mv_on(const Model *m, const KVCache *kv, float *y, const float *x, const float *W, const float *b, int N,
                  int K, int team) {
    if (!kv->w16) {
        if (team) gemv_team(y, x, W, b, N, K);
        else gemv_one(y, x, W, b, N, K);
        return;
    }
    CHECK(W >= m->params && W + (size_t)N * K <= m->params + m->n_params);
    const uint16_t *W16 = kv->w16 + (W - m->params);
    if (team) gemv_team_bf16(y, x, W16, b, N, K);
    else gemv_one_bf16(y, x, W16, b, N, K);
}

static void mv(const Model *m, const KVCache *kv, float *y, const float *x, const float *W, const float *b, int N, int K) {
    mv_on(m, kv, y, x, W, b, N, K, 1);
}

/* y[C] = W2 act(W1 x + b1) + b2 on one row: moe.c's ffn_forward (and model.c's dense FFN) for
 * N = 1, with h_pre [H1] and h [H] its scratch; over the team (team = 1) or on the calling thread. */
static void ffn_one_row(const Model *m, const KVCache *kv, float *y, float *h, float *h_pre, const float *x,
                        const float *w1, const float *b1, const float *w2, const float *b2, Activation act, int C,
                        int H, int team) {
    mv_on(m, kv, h_pre, x, w1, b1, act == ACT_SWIGLU ? 2 * H : H, C, team);
    if (team) {
#pragma omp single
        activation_forward(h, h_pre, act, 1, H);
    } else {
        activation_forward(h, h_pre, act, 1, H);
    }
    mv_on(m, kv, y, h, w2, b2, C, H, team);
}

static void ffn_team(const Model *m, const KVCache *kv, float *y, float *h, float *h_pre, const float *x,
                     const float *w1, const float *b1, const float *w2, const float *b2, Activation act, int C, int H) {
    ffn_one_row(m, kv, y, h, h_pre, x, w1, b1, w2, b2, act, C, H, 1);
}

/* Expert e of p on its row of the dispatched slab (N = 1: one row or none), over the team or on the
 * calling thread. */
static void expert_row(const Model *m, KVCache *kv, const MoEParams *p, int e, int team) {
    const MoEConfig *cfg = &m->moe_cfg;
    MoEActs *a = &kv->moe;
    int C = cfg->C, H = cfg->H, H1 = cfg->act == ACT_SWIGLU ? 2 * H : H, r = a->offsets[e];
    if (a->offsets[e + 1] == r) return;
    ffn_one_row(m, kv, a->y + (size_t)r * C, a->h + (size_t)r * H, a->h_pre + (size_t)r * H1, a->xd + (size_t)r * C,
                p->w1 + (size_t)e * H1 * C, p->b1 + (size_t)e * H1, p->w2 + (size_t)e * C * H, p->b2 + (size_t)e * C,
                cfg->act, C, H, team);
}

/* out[C] = the MoE layer p on one token's x[C], in the team: the routing on one thread, then the
 * experts the token reached, then the gated sum on one thread. A few experts (switch, top-k) run one
 * after another, each as two team products, so both cores stream its weights, as the dense FFN's;
 * many (soft gating: every expert) are shared out whole over the threads, one barrier in all
 * instead of three per expert. Either way each row is computed by one thread with the same code. */
static void moe_team(Model *m, KVCache *kv, float *out, const float *x, const int *token, const MoEParams *p) {
    const MoEConfig *cfg = &m->moe_cfg;
    MoEActs *a = &kv->moe;
    int C = cfg->C, H = cfg->H, E = cfg->E, nt = 1, reached = 0;
#ifdef _OPENMP
    nt = omp_get_num_threads();
#endif
    CHECK(a->Rmax == 0 && cfg->e_first == 0);   /* every expert held here */
#pragma omp single
    moe_forward_route(a, x, token, p, cfg, 1, 0, &m->rng);
    for (int e = 0; e < E; e++) reached += a->offsets[e + 1] > a->offsets[e];
    if (reached >= 2 * nt) {
#pragma omp for schedule(static)
        for (int e = 0; e < E; e++) expert_row(m, kv, p, e, 0);
    } else {
        for (int e = 0; e < E; e++) expert_row(m, kv, p, e, 1);
    }
    if (cfg->shared_expert)
        ffn_team(m, kv, a->sy, a->sh, a->sh_pre, x, p->sw1, p->sb1, p->sw2, p->sb2, cfg->act, C, H);
#pragma omp single
    moe_forward_combine(out, a, cfg);
}

/* The body of model_step_kv, run by every thread of a team (or by one thread alone). A token step
 * streams every weight once and does little else, so it is bound by memory bandwidth; one parallel
 * region per token (instead of one per product, or none for the layers' small products) lets both
 * cores stream every matrix. Work is shared out so: the products split their rows over the team
 * (gemv_team), the MoE experts a token reached too, or they go whole to the threads when there are
 * many (moe_team); attention splits its heads; the short vector ops (norms, residual adds,
 * activations, routing, the gated sum) run on one thread (`omp single`). Every worksharing construct
 * ends at a barrier, which orders each op's writes before the next op's reads. Each output element is computed
 * by one thread with the same code at any thread count, so the bits do not depend on it. */
static void step_team(Model *m, KVCache *kv, int token, int t) {
    const ModelConfig *c = &m->cfg;
    int C = c->d_model, NH = c->num_heads, V = c->vocab_size, P = c->n_positions, hs = C / NH;
    int H = c->d_ff;
    int seed = c->model_type == MODEL_SEED;
    const ModelParams *p = &m->p;
    float *x = kv->x, *xb = kv->xb, *xb2 = kv->xb2;

    /* x = wte[token] + wpe[t]: encoder_forward's sum */
#pragma omp single
    for (int i = 0; i < C; i++) x[i] = p->wte[(size_t)token * C + i] + p->wpe[(size_t)t * C + i];
    for (int l = 0; l < c->num_layers; l++) {
        const LayerParams *lp = &p->layers[l];
        int sparse = !seed && config_block_is_sparse(c, l);
        float *kl = kv->k + (size_t)l * P * C, *vl = kv->v + (size_t)l * P * C;
        const float *att_in = seed ? x : xb;
        if (!seed) {
#pragma omp single
            norm1(m, xb, x, lp->ln1_w, lp->ln1_b);
        }
        mv(m, kv, kv->qkv, att_in, lp->qkv_w, lp->qkv_b, 3 * C, C);
        /* head h's thread caches head h's key and value of position t, then reads only head h's */
#pragma omp for schedule(static)
        for (int h = 0; h < NH; h++) {
            memcpy(kl + (size_t)t * C + h * hs, kv->qkv + C + h * hs, sizeof(float) * hs);
            memcpy(vl + (size_t)t * C + h * hs, kv->qkv + 2 * C + h * hs, sizeof(float) * hs);
            attention_row(kv->atty + h * hs, kv->att + (size_t)h * P, kv->qkv + h * hs, kl + h * hs, vl + h * hs,
                          (size_t)C, t + 1, hs);   /* attention_forward's row t */
        }
        mv(m, kv, xb2, kv->atty, lp->out_w, lp->out_b, C, C);
#pragma omp single
        {
            add_forward(x, x, xb2, C);                               /* res1 = x_in + attproj */
            norm1(m, xb, x, seed ? lp->ln1_w : lp->ln2_w, seed ? lp->ln1_b : lp->ln2_b);
        }
        if (sparse) moe_team(m, kv, xb2, xb, &token, &lp->moe);
        else ffn_team(m, kv, xb2, kv->fc, kv->fc_pre, xb, lp->fc1_w, lp->fc1_b, lp->fc2_w, lp->fc2_b, c->hidden_act, C, H);
#pragma omp single
        {
            if (!seed) {
                add_forward(x, x, xb2, C);                           /* out = res1 + ffn */
            } else {
                add_forward(xb2, xb, xb2, C);                        /* res2 = ln1 + ffn */
                norm1(m, x, xb2, lp->ln2_w, lp->ln2_b);              /* out = norm2(res2) */
            }
        }
    }
    if (!seed) {
#pragma omp single
        norm1(m, xb, x, p->lnf_w, p->lnf_b);
        mv(m, kv, kv->logits, xb, c->tie_word_embeddings ? p->wte : p->lm_head, NULL, V, C);
    } else {
        int HH = c->head_hidden;
        moe_team(m, kv, xb2, x, &token, &p->head_moe);
#pragma omp single
        add_forward(xb, x, xb2, C);                                  /* hm = x + moe(x) */
        mv(m, kv, kv->fc_pre, xb, p->head_w1, p->head_b1, HH, C);
#pragma omp single
        activation_forward(kv->fc, kv->fc_pre, ACT_RELU, 1, HH);
        mv(m, kv, kv->logits, kv->fc, p->head_w2, p->head_b2, V, HH);
    }
}

void model_step_kv(Model *m, KVCache *kv, int token) {
    const ModelConfig *c = &m->cfg;
    int t = kv->pos;
    CHECK(kv->mem != NULL && kv->n_positions == c->n_positions);
    CHECK(t >= 0 && t < c->n_positions);   /* the caller stops when the cache is full */
    CHECK(token >= 0 && token < c->vocab_size);
#pragma omp parallel if (backend_threads() > 1)
    step_team(m, kv, token, t);
    kv->pos = t + 1;
}

/* ---- sampling ---------------------------------------------------------------------------------- */

/* Sorts (value, index) pairs stored as two floats: value descending, then index ascending, so the
 * order (and hence the draw) does not depend on qsort's treatment of ties. */
static int pair_cmp(const void *a, const void *b) {
    const float *x = a, *y = b;
    if (x[0] != y[0]) return x[0] > y[0] ? -1 : 1;
    return x[1] < y[1] ? -1 : x[1] > y[1];
}

int sample_token(const float *logits, int V, float temp, int top_k, float top_p, Rng *rng, float *scratch) {
    CHECK(V > 0 && V <= (1 << 24));   /* indices are stored exactly as floats in scratch */
    int best = 0;
    for (int v = 1; v < V; v++) if (logits[v] > logits[best]) best = v;
    if (!(temp > 0.0f) || top_k == 1) return best;
    CHECK(rng != NULL && scratch != NULL);
    /* pairs (w, index) with w = exp((logit - max) / temp), the unnormalised softmax(logits / temp) */
    float mx = logits[best];
    for (int v = 0; v < V; v++) {
        scratch[2 * v] = expf((logits[v] - mx) / temp);
        scratch[2 * v + 1] = (float)v;
    }
    int n = V;
    int filter = (top_k > 0 && top_k < V) || top_p < 1.0f;
    if (filter) {
        qsort(scratch, (size_t)V, 2 * sizeof(float), pair_cmp);
        if (top_k > 0 && top_k < n) n = top_k;
        if (top_p < 1.0f) {
            /* nucleus: the shortest prefix of the (top-k) sorted distribution with mass >= top_p */
            double tot = 0.0, cum = 0.0;
            for (int i = 0; i < n; i++) tot += scratch[2 * i];
            int keep = n;
            for (int i = 0; i < n; i++) {
                cum += scratch[2 * i];
                if (cum >= (double)top_p * tot) { keep = i + 1; break; }
            }
            n = keep;
        }
    }
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
