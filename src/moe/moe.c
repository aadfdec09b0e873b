/* moe.c: the Mixture-of-Experts layer: routers, capacity, dispatch, experts, combine, aux losses,
 * and the backward of all of it. The interface and the data path are in moe.h; docs/MOE.md gives
 * the conventions (drop priority, gate normalisation, what the load-balancing loss counts).
 *
 * What this file is not: a model. It does not add the residual, does not own memory (every buffer
 * is a field of MoEActs, bound once by moe_acts_bind), and never allocates inside forward/backward.
 *
 * Invariants kept:
 *   - the slot arrays (expert, gate, slot_row) are [N, KS], KS = moe_slots_per_token(cfg);
 *   - after dispatch, rows offsets[e] .. offsets[e+1]-1 of xd/h_pre/h/y belong to expert e, in token
 *     order, and offsets[e+1] - offsets[e] <= Cap;
 *   - slot_row[t*KS+k] >= 0 exactly for kept slots, and then row_token/row_slot point back to (t, k);
 *   - the backward reads only what the forward saved (selection is held fixed).
 *
 * Dimensions: N tokens, C d_model, E experts, K experts per token, KS slots per token, H expert
 * hidden, H1 = H or 2H (SwiGLU), Cap capacity, S kept slots, Smax = Nmax * KS rows bound.
 */
#include "moe/moe.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "backend/comm.h"
#include "backend/gemm.h"
#include "moe/moe_dist.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* ---- names and sizes -------------------------------------------------------------------------- */

static const RouterInfo router_table[ROUTER__COUNT] = {
    /*                      name             route              learned slots        per_token  capped balance causal multi_rank */
    [ROUTER_RANDOM]        = {"random",        ROUTE_RANDOM_PASS, 0, EXPERTS_ONE, EXPERTS_ONE, 0, 0, 1, 1},
    [ROUTER_HASH]          = {"hash",          ROUTE_HASH,        0, EXPERTS_ONE, EXPERTS_ONE, 1, 0, 1, 1},
    [ROUTER_SOFT]          = {"soft",          ROUTE_ALL,         1, EXPERTS_ALL, EXPERTS_ALL, 0, 0, 1, 1},
    [ROUTER_SWITCH]        = {"switch",        ROUTE_TOKEN_TOPK,  1, EXPERTS_ONE, EXPERTS_ONE, 1, 1, 1, 1},
    [ROUTER_TOPK]          = {"topk",          ROUTE_TOKEN_TOPK,  1, EXPERTS_K,   EXPERTS_K,   1, 1, 1, 1},
    [ROUTER_EXPERT_CHOICE] = {"expert-choice", ROUTE_EXPERT_TOPK, 1, EXPERTS_ALL, EXPERTS_K,   1, 0, 0, 0},
};

const RouterInfo *router_info(RouterType r) {
    static const RouterInfo unknown = {"?", ROUTE_RANDOM_PASS, 0, EXPERTS_ONE, EXPERTS_ONE, 0, 0, 0, 0};
    return (r >= 0 && r < ROUTER__COUNT) ? &router_table[r] : &unknown;
}

const char *router_name(RouterType r) { return router_info(r)->name; }

int router_from_name(const char *s) {
    if (!s) return -1;
    for (int i = 0; i < ROUTER__COUNT; i++)
        if (strcmp(s, router_table[i].name) == 0) return i;
    if (strcmp(s, "expert_choice") == 0) return ROUTER_EXPERT_CHOICE;
    if (strcmp(s, "top1") == 0) return ROUTER_SWITCH;
    return -1;
}

/* A loop runs in parallel only when it touches at least this many floats: a parallel region costs
 * microseconds on an idle machine and far more when the cores are shared, so the small passes of
 * generation (N = 1) and of tiny models stay on one thread. */
#define MOE_PAR_WORK ((size_t)1 << 15)

static int moe_h1(const MoEConfig *cfg) { return activation_in_width(cfg->act, cfg->H); }

/* Routers with a learned weight (and so logits, probs, gradients and losses). */
static int router_learned(RouterType r) { return router_info(r)->learned; }

static int router_count(RouterCount n, const MoEConfig *cfg) {
    return n == EXPERTS_ALL ? cfg->E : n == EXPERTS_K ? cfg->K : 1;
}

/* The K of a router whose slots per token are its config's K (topk), 1 for the others. */
static int moe_slot_k(const MoEConfig *cfg) { return router_info(cfg->router)->slots == EXPERTS_K ? cfg->K : 1; }

int moe_slots_per_token(const MoEConfig *cfg) { return router_count(router_info(cfg->router)->slots, cfg); }

int moe_active_experts(const MoEConfig *cfg) { return router_count(router_info(cfg->router)->per_token, cfg); }

int moe_hash_expert(int token, int E) {
    /* splitmix64's finaliser of the id: a fixed, well-mixed function, independent of the vocabulary
     * order (so frequent ids are not clustered on one expert as `id % E` would do for sorted vocabs) */
    uint64_t z = (uint64_t)(uint32_t)token + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (int)(z % (uint64_t)E);
}

int moe_router_collapsed(RouterType r, int E, double dropped_share, int dead) {
    if (r == ROUTER_RANDOM || r == ROUTER_HASH || r == ROUTER_SOFT || E < 2) return 0;
    return dropped_share > 0.5 || dead > E / 2;
}

size_t moe_param_count(const MoEConfig *cfg) {
    size_t E = (size_t)cfg->E, C = (size_t)cfg->C, H = (size_t)cfg->H, H1 = (size_t)moe_h1(cfg);
    size_t n = (router_learned(cfg->router) ? E * C : 0)   /* router_w: none for random and hash */
             + E * H1 * C + E * C * H       /* w1, w2 */
             + (cfg->no_bias ? 0 : E * H1 + E * C);   /* b1, b2 */
    if (cfg->shared_expert) n += H1 * C + H1 + C * H + C;
    if (cfg->use_expert_bias) n += E;
    return n;
}

/* ---- activation memory -------------------------------------------------------------------------- */

/* Hands out 64-byte aligned pieces of one block; with base == NULL it only counts. */
typedef struct { char *base; size_t off; } Carve;

static void *carve(Carve *cv, size_t bytes) {
    if (bytes == 0) return NULL;
    size_t off = (cv->off + 63) & ~(size_t)63;
    cv->off = off + bytes;
    return cv->base ? cv->base + off : NULL;
}

static size_t moe_acts_layout(MoEActs *a, void *mem, const MoEConfig *cfg, int N) {
    Carve cv = { (char *)mem, 0 };
    size_t n = (size_t)N, C = (size_t)cfg->C, E = (size_t)cfg->E, H = (size_t)cfg->H;
    size_t H1 = (size_t)moe_h1(cfg), KS = (size_t)moe_slots_per_token(cfg), Smax = n * KS;
    size_t f = sizeof(float), i = sizeof(int);
    int learned = router_learned(cfg->router);
    memset(a, 0, sizeof *a);
    a->Nmax = N;
    a->KS = (int)KS;
    a->Smax = (int)Smax;
    a->xin = carve(&cv, learned ? n * C * f : 0);
    a->jit = carve(&cv, learned && cfg->jitter > 0.0f ? n * C * f : 0);
    a->logits = carve(&cv, n * E * f);
    a->probs = carve(&cv, n * E * f);
    a->expert = carve(&cv, n * KS * i);
    a->gate = carve(&cv, n * KS * f);
    a->slot_row = carve(&cv, n * KS * i);
    a->offsets = carve(&cv, (E + 1) * i);
    a->assigned = carve(&cv, E * i);
    a->fill = carve(&cv, E * i);
    a->gfill = carve(&cv, E * i);
    a->row_token = carve(&cv, Smax * i);
    a->row_slot = carve(&cv, Smax * i);
    a->row_id = carve(&cv, cfg->expert_dropout > 0.0f ? Smax * i : 0);
    a->xd = carve(&cv, Smax * C * f);
    a->h_pre = carve(&cv, Smax * H1 * f);
    a->h = carve(&cv, Smax * H * f);
    a->hdrop = carve(&cv, cfg->expert_dropout > 0.0f ? Smax * H : 0);
    a->y = carve(&cv, Smax * C * f);
    if (cfg->shared_expert) {
        a->sh_pre = carve(&cv, n * H1 * f);
        a->sh = carve(&cv, n * H * f);
        a->sy = carve(&cv, n * C * f);
    }
    /* Backward scratch. Smax >= N, so the shared expert's [N, .] gradients fit here too, and dy
     * ([Smax, C] >= [N, C]) later holds the router path's d xin. */
    a->dh_pre = carve(&cv, Smax * H1 * f);
    a->dh = carve(&cv, Smax * H * f);
    a->dy = carve(&cv, Smax * C * f);
    a->dlogits = carve(&cv, learned ? n * E * f : 0);
    /* Across ranks (moe_dist.h): sized from the groups as they are at bind time. */
    a->Ng = N;
    if (comm_size(COMM_WORLD) > 1) a->kpos = carve(&cv, 3 * KS * E * i);
    size_t P = (size_t)comm_size(COMM_EP);
    if (P > 1) {
        size_t R = P * Smax;
        a->Rmax = (int)R;
        a->ep_send = carve(&cv, E * i);
        a->ep_recv = carve(&cv, E * i);
        a->ep_off = carve(&cv, (E + 1) * i);
        a->ep_sc = carve(&cv, P * i);
        a->ep_sd = carve(&cv, P * i);
        a->ep_rc = carve(&cv, P * i);
        a->ep_rd = carve(&cv, P * i);
        a->ep_stage = carve(&cv, R * C * f);
        a->ep_x = carve(&cv, R * C * f);
        a->ep_h_pre = carve(&cv, R * H1 * f);
        a->ep_h = carve(&cv, R * H * f);
        a->ep_y = carve(&cv, R * C * f);
        a->ep_dh_pre = carve(&cv, R * H1 * f);
        a->ep_dh = carve(&cv, R * H * f);
        a->ep_hdrop = carve(&cv, cfg->expert_dropout > 0.0f ? R * H : 0);
        a->ep_row_id = carve(&cv, cfg->expert_dropout > 0.0f ? R * i : 0);
        a->ep_id_stage = carve(&cv, cfg->expert_dropout > 0.0f ? R * i : 0);
        a->ep_ic = carve(&cv, cfg->expert_dropout > 0.0f ? 4 * P * i : 0);
    }
    return cv.off + 64;   /* slack: the caller's block need not be 64-byte aligned at its start */
}

size_t moe_acts_bytes(const MoEConfig *cfg, int N) {
    MoEActs a;
    return moe_acts_layout(&a, NULL, cfg, N);
}

void moe_acts_bind(MoEActs *a, void *mem, const MoEConfig *cfg, int N) {
    CHECK(mem != NULL && N > 0);
    /* start at the first 64-byte boundary inside the block (moe_acts_bytes counted the slack) */
    uintptr_t p = ((uintptr_t)mem + 63) & ~(uintptr_t)63;
    moe_acts_layout(a, (void *)p, cfg, N);
}

/* ---- configuration ---------------------------------------------------------------------------- */

moelm_status moe_config_check(const MoEConfig *cfg, int causal) {
    const char *rn = router_name(cfg->router);
    if (cfg->router < 0 || cfg->router >= ROUTER__COUNT)
        return moelm_fail(MOELM_ERR_CONFIG, "router_type: unknown router %d (use random, hash, soft, switch, "
                          "topk or expert-choice)", (int)cfg->router);
    if (cfg->E < 1 || cfg->E > 256)
        return moelm_fail(MOELM_ERR_CONFIG, "num_experts: %d is out of range (1..256)", cfg->E);
    if (cfg->C < 1 || cfg->H < 1)
        return moelm_fail(MOELM_ERR_CONFIG, "d_model (%d) and the expert d_ff (%d) must be positive", cfg->C, cfg->H);
    if (cfg->act != ACT_RELU && cfg->act != ACT_GELU && cfg->act != ACT_SWIGLU && cfg->act != ACT_GELU_TANH)
        return moelm_fail(MOELM_ERR_CONFIG, "hidden_act: unknown activation %d (use relu, gelu, gelu_new or swiglu)",
                          (int)cfg->act);
    const RouterInfo *ri = router_info(cfg->router);
    if (causal && !ri->causal)
        return moelm_fail(MOELM_ERR_CONFIG, "router_type: %s routing is non-causal (an expert "
                          "picks its tokens from the whole batch, so a token's output depends on later "
                          "tokens); it cannot be used in a causal language model: use switch or topk", rn);
    /* K = 1 is the switch router, except Mixtral's (the softmax over the chosen: weight 1, as llama.cpp's
     * top-1 files run) */
    int kmin = cfg->topk_softmax_after ? 1 : 2;
    if (ri->slots == EXPERTS_K && (cfg->K < kmin || cfg->K > cfg->E))
        return moelm_fail(MOELM_ERR_CONFIG, "num_experts_per_tok: router %s needs %d <= K <= num_experts "
                          "(%d), got %d (use router switch for K = 1)", rn, kmin, cfg->E, cfg->K);
    if (ri->slots == EXPERTS_ONE && cfg->K > 1)
        return moelm_fail(MOELM_ERR_CONFIG, "num_experts_per_tok: router %s sends each token to one expert, "
                          "so K must be 1, got %d (use router topk for K >= 2)", rn, cfg->K);
    if (ri->slots == EXPERTS_ALL && ri->per_token == EXPERTS_K && (cfg->K < 1 || cfg->K > cfg->E))
        return moelm_fail(MOELM_ERR_CONFIG, "num_experts_per_tok: %s uses K (the mean experts "
                          "per token in its capacity, 1..%d), got %d", rn, cfg->E, cfg->K);
    if (cfg->min_capacity < 0)
        return moelm_fail(MOELM_ERR_CONFIG, "min_capacity: must be >= 0, got %d", cfg->min_capacity);
    if (cfg->group_size < 0)
        return moelm_fail(MOELM_ERR_CONFIG, "group_size: must be >= 0 (0 = one group), got %d", cfg->group_size);
    if (cfg->dropped_gets_input && cfg->router != ROUTER_SWITCH)
        return moelm_fail(MOELM_ERR_CONFIG, "dropped tokens that get their input need router switch (router is %s)", rn);
    if (cfg->expert_capacity < 0)
        return moelm_fail(MOELM_ERR_CONFIG, "expert_capacity: must be >= 0 (0 = from the factors), got %d",
                          cfg->expert_capacity);
    if (!(cfg->aux_coef >= 0.0f) || !(cfg->z_coef >= 0.0f))
        return moelm_fail(MOELM_ERR_CONFIG, "router_aux_loss_coef (%g) and router_z_loss_coef (%g) must be >= 0",
                          (double)cfg->aux_coef, (double)cfg->z_coef);
    if (!(cfg->route_scale > 0.0f && cfg->route_scale <= 1024.0f))
        return moelm_fail(MOELM_ERR_CONFIG, "routed_scaling_factor: must be in (0, 1024], got %g", (double)cfg->route_scale);
    if (!(cfg->jitter >= 0.0f && cfg->jitter < 1.0f))
        return moelm_fail(MOELM_ERR_CONFIG, "router_jitter_noise: must be in [0, 1), got %g", (double)cfg->jitter);
    if (cfg->use_expert_bias && !ri->balance_loss)
        return moelm_fail(MOELM_ERR_CONFIG, "use_expert_bias: the selection bias steers which experts a token "
                          "chooses, so it needs router switch or topk (router is %s)", rn);
    if (cfg->use_expert_bias && !(cfg->bias_rate >= 0.0f))
        return moelm_fail(MOELM_ERR_CONFIG, "expert_bias_rate: must be >= 0, got %g", (double)cfg->bias_rate);
    return MOELM_OK;
}

int moe_capacity(const MoEConfig *cfg, int N, int training) {
    /* soft: every expert sees every token; random: one expert takes the whole pass (the tutorial),
     * capacity would drop (E-1)/E of the tokens */
    if (!router_info(cfg->router)->capped) return N;
    int cap;
    if (cfg->expert_capacity > 0) {
        cap = cfg->expert_capacity;
    } else {
        float cf = training ? cfg->capacity_factor_train : cfg->capacity_factor_eval;
        if (cf <= 0.0f) return N;   /* dropless: an expert sees a token at most once */
        cap = (int)floor((double)cf * N * moe_active_experts(cfg) / cfg->E + 0.5);
        if (cap < cfg->min_capacity) cap = cfg->min_capacity;
    }
    if (cap < 1) cap = 1;
    if (cap > N) cap = N;
    return cap;
}

/* ---- router ------------------------------------------------------------------------------------ */

/* Whether (score sa, index ia) ranks before (sb, ib): higher score first, ties to the lower index. */
static int ranks_before(float sa, int ia, float sb, int ib) { return sa > sb || (sa == sb && ia < ib); }

/* Expert-choice: expert e takes the Cap tokens with the highest probs[t, e] (ties: lower token).
 * heap[Cap] is scratch: a min-heap (worst kept token at the root), O(N log Cap). */
static void expert_choice_select(int *expert, const float *probs, int *heap, int e, int N, int E, int Cap) {
    int n = 0;
    for (int t = 0; t < N; t++) {
        float s = probs[(size_t)t * E + e];
        int pos;
        if (n < Cap) {               /* push, sift up */
            pos = n++;
            while (pos > 0) {
                int par = (pos - 1) / 2, tp = heap[par];
                if (!ranks_before(probs[(size_t)tp * E + e], tp, s, t)) break;   /* parent is worse: stop */
                heap[pos] = tp; pos = par;
            }
            heap[pos] = t;
            continue;
        }
        int root = heap[0];
        if (!ranks_before(s, t, probs[(size_t)root * E + e], root)) continue;
        pos = 0;                     /* replace the root, sift down */
        for (;;) {
            int l = 2 * pos + 1, r = l + 1, w = pos;
            float ws = s; int wt = t;
            if (l < n && ranks_before(ws, wt, probs[(size_t)heap[l] * E + e], heap[l])) {
                w = l; ws = probs[(size_t)heap[l] * E + e]; wt = heap[l];
            }
            if (r < n && ranks_before(ws, wt, probs[(size_t)heap[r] * E + e], heap[r])) w = r;
            if (w == pos) break;
            heap[pos] = heap[w]; pos = w;
        }
        heap[pos] = t;
    }
    for (int i = 0; i < n; i++) expert[(size_t)heap[i] * E + e] = e;
}

/* Token t's softmax over the router logits (probs), its chosen experts and gates; returns lse^2 for
 * the z-loss. */
static double route_token(MoEActs *a, const MoEConfig *cfg, const float *bias, int t, int token_choice, int K,
                          int mixtral) {
    int E = cfg->E, KS = a->KS;
    const float *l = a->logits + (size_t)t * E;
    float *pr = a->probs + (size_t)t * E;
    float mx = -FLT_MAX;
    for (int e = 0; e < E; e++) mx = l[e] > mx ? l[e] : mx;
    float sum = 0.0f;
    for (int e = 0; e < E; e++) { pr[e] = expf(l[e] - mx); sum += pr[e]; }
    float inv = 1.0f / sum;
    for (int e = 0; e < E; e++) pr[e] *= inv;
    double lse = (double)mx + log((double)sum);

    int *ex = a->expert + (size_t)t * KS;
    float *g = a->gate + (size_t)t * KS;
    if (router_info(cfg->router)->route == ROUTE_ALL) {
        for (int e = 0; e < E; e++) { ex[e] = e; g[e] = pr[e]; }
    } else if (token_choice) {
        /* top-K by score = prob + selection bias (DeepSeek-V3: the bias chooses, never weighs);
         * ties go to the lower expert index. K passes over E: K is small. */
        for (int k = 0; k < K; k++) {
            int best = -1; float bs = 0.0f;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int j = 0; j < k; j++) taken |= ex[j] == e;
                if (taken) continue;
                float s = pr[e] + (bias ? bias[e] : 0.0f);
                if (best < 0 || ranks_before(s, e, bs, best)) { best = e; bs = s; }
            }
            ex[k] = best;
        }
        if (mixtral) {
            /* Mixtral: gates = softmax over the chosen K logits (renormalised) */
            float m2 = -FLT_MAX, s2 = 0.0f;
            for (int k = 0; k < K; k++) m2 = l[ex[k]] > m2 ? l[ex[k]] : m2;
            for (int k = 0; k < K; k++) { g[k] = expf(l[ex[k]] - m2); s2 += g[k]; }
            for (int k = 0; k < K; k++) g[k] /= s2;
        } else {
            /* Switch / GShard: the raw probability of the full softmax, not renormalised */
            for (int k = 0; k < K; k++) g[k] = pr[ex[k]];
        }
    } else {   /* expert-choice: filled below, per expert */
        for (int e = 0; e < E; e++) { ex[e] = -1; g[e] = pr[e]; }
    }
    return lse * lse;
}

/* Fills xin (jittered), logits, probs, expert, gate, assigned, aux_loss, z_loss. */
static void moe_route(MoEActs *a, const float *x, const int *tokens, const MoEParams *p, const MoEConfig *cfg,
                      int N, int training, uint64_t key) {
    int C = cfg->C, E = cfg->E, KS = a->KS;
    a->aux_loss = 0.0f;
    a->z_loss = 0.0f;
    a->jittered = 0;
    a->random_expert = -1;

    if (!router_learned(cfg->router)) {
        /* No router weight: gate 1, logits 0, probs the one-hot of the routing decision. */
        int re = -1;
        if (router_info(cfg->router)->route == ROUTE_RANDOM_PASS) {
            Rng r;   /* one expert a pass: the first draw of the stream seeded by the key, the same on every rank */
            rng_seed(&r, key);
            re = (int)rng_below(&r, (uint32_t)E);
            a->random_expert = re;
        } else {
            CHECK(tokens != NULL);
        }
        memset(a->logits, 0, (size_t)N * E * sizeof(float));
        memset(a->probs, 0, (size_t)N * E * sizeof(float));
        for (int t = 0; t < N; t++) {
            int e = re >= 0 ? re : moe_hash_expert(tokens[t], E);
            CHECK(e >= 0 && e < E);
            a->expert[t] = e;
            a->gate[t] = 1.0f;
            a->probs[(size_t)t * E + e] = 1.0f;
        }
        for (int e = 0; e < E; e++) a->assigned[e] = 0;
        for (int t = 0; t < N; t++) a->assigned[a->expert[t]]++;
        comm_allreduce_i32(COMM_WORLD, a->assigned, E);   /* the routing group's counts */
        return;
    }

    /* Jitter (Switch Transformer): x_router = x * u, u ~ U(1 - eps, 1 + eps) elementwise, training only.
     * Element c of the group's token g draws rng_at_uniform(key, g C + c): over several ranks a rank's
     * first token g = t0 is the count of the tokens on the ranks before it (they hold the group's first
     * rows), so the factors are those of one process at any world size and thread count. */
    size_t NC = (size_t)N * C;
    if (training && cfg->jitter > 0.0f) {
        float eps = cfg->jitter;
        uint64_t first = (uint64_t)a->t0 * C;
        for (size_t i = 0; i < NC; i++) {
            a->jit[i] = 1.0f - eps + 2.0f * eps * rng_at_uniform(key, first + i);
            a->xin[i] = x[i] * a->jit[i];
        }
        a->jittered = 1;
    } else {
        memcpy(a->xin, x, NC * sizeof(float));
    }

    /* logits[N,E] = xin[N,C] @ router_w[E,C]^T, fp32 */
    gemm(0, 1, N, E, C, 1.0f, a->xin, C, p->router_w, C, 0.0f, a->logits, E);

    /* probs = softmax(logits) per token; lse for the z-loss. Rows are independent: each thread writes
     * only its tokens' rows; the z sum is a reduction. */
    double zsum = 0.0;
    int token_choice = router_info(cfg->router)->route == ROUTE_TOKEN_TOPK;
    int K = moe_slot_k(cfg);
    int mixtral = router_info(cfg->router)->slots == EXPERTS_K && cfg->topk_softmax_after;
    const float *bias = (cfg->use_expert_bias && p->expert_bias) ? p->expert_bias : NULL;
    if ((size_t)N * E * (K + 4) >= MOE_PAR_WORK) {
#pragma omp parallel for schedule(static) reduction(+ : zsum)
        for (int t = 0; t < N; t++) zsum += route_token(a, cfg, bias, t, token_choice, K, mixtral);
    } else {   /* no region for a few tokens (generation routes one inside its own) */
        for (int t = 0; t < N; t++) zsum += route_token(a, cfg, bias, t, token_choice, K, mixtral);
    }
    comm_allreduce_f64(COMM_WORLD, &zsum, 1);   /* the routing group is every rank's tokens */
    a->z_loss = (float)(zsum / a->Ng);

    if (router_info(cfg->router)->route == ROUTE_EXPERT_TOPK) {
        int Cap = a->Cap;
        /* Each expert writes only column e of expert[] and uses its own scratch row_token[e*Cap ..],
         * disjoint because E * Cap <= E * N = Smax. */
#pragma omp parallel for schedule(dynamic, 1) if ((size_t)N * E * 4 >= MOE_PAR_WORK)
        for (int e = 0; e < E; e++)
            expert_choice_select(a->expert, a->probs, a->row_token + (size_t)e * Cap, e, N, E, Cap);
    }

    for (int e = 0; e < E; e++) a->assigned[e] = 0;
    for (size_t i = 0; i < (size_t)N * KS; i++)
        if (a->expert[i] >= 0) a->assigned[a->expert[i]]++;
    comm_allreduce_i32(COMM_WORLD, a->assigned, E);

    /* Load-balancing loss (Switch eq. 4, GShard for K > 1): E * sum_e f_e P_e, with f_e the fraction
     * of the N*K token-slots that chose e before capacity, P_e the mean router probability. Only the
     * token-choice routers have it: soft runs every expert and expert-choice is balanced by design. */
    if (token_choice) {
        double aux = 0.0, P[256], Ng = a->Ng;
        for (int e = 0; e < E; e++) {
            P[e] = 0.0;
            for (int t = 0; t < N; t++) P[e] += a->probs[(size_t)t * E + e];
        }
        comm_allreduce_f64(COMM_WORLD, P, (size_t)E);
        for (int e = 0; e < E; e++) aux += (double)a->assigned[e] / (Ng * K) * (P[e] / Ng);
        a->aux_loss = (float)(E * aux);
    }
}

/* ---- capacity and dispatch -------------------------------------------------------------------- */

/* Keeps at most Cap slots per expert and lays the kept ones out by expert (a counting sort).
 * Drop priority (Switch/GShard): all k = 0 slots in token order, then all k = 1 slots, ...: a token's
 * first choice is never dropped to make room for another token's second choice. */
static void moe_dispatch_plan(MoEActs *a, int N, int E, int G) {
    int KS = a->KS, Cap = a->Cap;
    int *fill = a->fill, *gfill = a->gfill;
    for (int e = 0; e < E; e++) fill[e] = 0;
    if (G > 0) {
        /* routing groups (a sequence each): the capacity counts each group's slots on its own, the same
         * drop priority inside a group */
        for (int g0 = 0; g0 < N; g0 += G) {
            for (int e = 0; e < E; e++) gfill[e] = 0;
            for (int k = 0; k < KS; k++) {
                for (int t = g0; t < g0 + G; t++) {
                    size_t i = (size_t)t * KS + k;
                    int e = a->expert[i];
                    if (e >= 0 && gfill[e] < Cap) { gfill[e]++; fill[e]++; a->slot_row[i] = -2; }
                    else a->slot_row[i] = -1;
                }
            }
        }
    } else if (a->kpos) {
        /* across ranks: a slot is kept when its position in the whole group's drop order is < Cap */
        moe_dist_positions(a, N, E);
        for (int k = 0; k < KS; k++) {
            int *pos = a->kpos + (size_t)k * E;
            for (int t = 0; t < N; t++) {
                size_t i = (size_t)t * KS + k;
                int e = a->expert[i];
                if (e >= 0 && pos[e]++ < Cap) { fill[e]++; a->slot_row[i] = -2; }
                else a->slot_row[i] = -1;
            }
        }
    } else {
        for (int k = 0; k < KS; k++) {
            for (int t = 0; t < N; t++) {
                size_t i = (size_t)t * KS + k;
                int e = a->expert[i];
                if (e >= 0 && fill[e] < Cap) { fill[e]++; a->slot_row[i] = -2; }   /* -2: kept, row not yet known */
                else a->slot_row[i] = -1;
            }
        }
    }
    a->offsets[0] = 0;
    for (int e = 0; e < E; e++) a->offsets[e + 1] = a->offsets[e] + fill[e];
    a->S = a->offsets[E];
    for (int e = 0; e < E; e++) fill[e] = a->offsets[e];   /* now the write cursor of each expert */
    for (int t = 0; t < N; t++) {
        for (int k = 0; k < KS; k++) {
            size_t i = (size_t)t * KS + k;
            if (a->slot_row[i] != -2) continue;
            int r = fill[a->expert[i]]++;
            a->slot_row[i] = r;
            a->row_token[r] = t;
            a->row_slot[r] = k;
        }
    }
}

/* xd[r] = x[row_token[r]]: each row written once. */
static void moe_gather(MoEActs *a, const float *x, int C) {
    if ((size_t)a->S * C < MOE_PAR_WORK) {
        for (int r = 0; r < a->S; r++)
            memcpy(a->xd + (size_t)r * C, x + (size_t)a->row_token[r] * C, (size_t)C * sizeof(float));
        return;
    }
#pragma omp parallel for schedule(static)
    for (int r = 0; r < a->S; r++)
        memcpy(a->xd + (size_t)r * C, x + (size_t)a->row_token[r] * C, (size_t)C * sizeof(float));
}

/* ---- experts ---------------------------------------------------------------------------------- */

static void add_bias_rows(float *out, const float *b, int n, int OC) {
    if (!b) return;   /* no_bias */
    for (int r = 0; r < n; r++)
        for (int o = 0; o < OC; o++) out[(size_t)r * OC + o] += b[o];
}

static void colsum_add(float *db, const float *d, int n, int OC) {
    if (!db) return;   /* no_bias */
    for (int r = 0; r < n; r++)
        for (int o = 0; o < OC; o++) db[o] += d[(size_t)r * OC + o];
}

/* One FFN over n rows: h_pre = x @ w1^T + b1, h = drop(act(h_pre)), y = h @ w2^T + b2. w16: NULL (float),
 * or w1's and w2's packed bf16 forms (the four products in bf16 operands, float sums). drop [n, H]: NULL,
 * or the dropout mask of h at rate p (inverted: kept values scaled by 1 / (1 - p)). */
static void ffn_forward(float *y, float *h, float *h_pre, const float *x, const float *w1, const float *b1,
                        const float *w2, const float *b2, const Bf16Weight *w16, const uint8_t *drop, float p,
                        Activation act, int n, int C, int H) {
    int H1 = activation_in_width(act, H), bf = w16 != NULL;
    GemmCall g1 = {0, 1, n, H1, C, 1.0f, x, C, w1, C, 0.0f, h_pre, H1, bf, bf ? w16[0].fwd : NULL};
    gemm_halves_call(&g1);
    add_bias_rows(h_pre, b1, n, H1);
    activation_forward(h, h_pre, act, n, H);
    if (drop) {
        float keep = 1.0f / (1.0f - p);
        for (size_t i = 0; i < (size_t)n * H; i++) h[i] = drop[i] ? h[i] * keep : 0.0f;
    }
    GemmCall g2 = {0, 1, n, C, H, 1.0f, h, H, w2, H, 0.0f, y, C, bf, bf ? w16[1].fwd : NULL};
    gemm_halves_call(&g2);
    add_bias_rows(y, b2, n, C);
}

/* Backward of ffn_forward. dx[n,C] = ; dw1, db1, dw2, db2 +=. dy is read; dh, dh_pre are scratch.
 * dx may alias dy (dy is last read before dx is written). drop, p: the forward's. */
static void ffn_backward(float *dx, float *dw1, float *db1, float *dw2, float *db2, float *dh, float *dh_pre,
                         const float *dy, const float *h, const float *h_pre, const float *x, const float *w1,
                         const float *w2, const Bf16Weight *w16, const uint8_t *drop, float p, Activation act, int n,
                         int C, int H) {
    int H1 = activation_in_width(act, H), bf = w16 != NULL;
    GemmCall gh = {0, 0, n, H, C, 1.0f, dy, C, w2, H, 0.0f, dh, H, bf, bf ? w16[1].bwd : NULL};   /* dh = dy @ w2 */
    GemmCall gw2 = {1, 0, C, H, n, 1.0f, dy, C, h, H, 1.0f, dw2, H, bf, NULL};                    /* dw2 += dy^T h */
    gemm_pair(&gh, &gw2);
    colsum_add(db2, dy, n, C);
    if (drop) dropout_backward(dh, dh, drop, p, (size_t)n * H);
    activation_backward(dh_pre, dh, h_pre, act, n, H);
    /* dy is read for the last time above, so dx (which may alias it) can be written alongside dw1 */
    GemmCall gw1 = {1, 0, H1, C, n, 1.0f, dh_pre, H1, x, C, 1.0f, dw1, C, bf, NULL};              /* dw1 += dh_pre^T x */
    GemmCall gx = {0, 0, n, C, H1, 1.0f, dh_pre, H1, w1, C, 0.0f, dx, C, bf, bf ? w16[0].bwd : NULL};   /* dx = dh_pre @ w1 */
    gemm_pair(&gw1, &gx);
    colsum_add(db1, dh_pre, n, H1);
}

/* The packed bf16 weights of held expert w into pair (w1's, w2's), or NULL when the layer is in float */
static const Bf16Weight *expert16(Bf16Weight pair[2], const MoEParams *p, const MoEConfig *cfg, size_t w) {
    if (!p->w1_16.fwd) return NULL;
    int H1 = moe_h1(cfg);
    pair[0] = bf16_weight_expert(&p->w1_16, (int)w, H1, cfg->C);
    pair[1] = bf16_weight_expert(&p->w2_16, (int)w, cfg->C, cfg->H);
    return pair;
}

/* the shared expert's packed weights, or NULL */
static const Bf16Weight *shared16(Bf16Weight pair[2], const MoEParams *p) {
    if (!p->sw1_16.fwd) return NULL;
    pair[0] = p->sw1_16;
    pair[1] = p->sw2_16;
    return pair;
}

/* Expert e's index in the held weights (expert parallelism holds [e_first, e_first + E/P)); only
 * held experts receive rows: ep_off gives the others none. */
static size_t held_expert(const MoEConfig *cfg, int e) {
    int P = comm_size(COMM_EP);
    CHECK(e >= cfg->e_first && e < cfg->e_first + (P > 1 ? cfg->E / P : cfg->E));
    return (size_t)(e - cfg->e_first);
}

/* Whether to run the experts side by side (one thread per expert, each GEMM single-threaded) rather
 * one after another (each GEMM threaded by BLAS). Side by side wins for many small slabs (a slab's GEMM
 * does not scale to more threads, PERF-NOTES), but leaves threads idle when one slab dominates: one
 * expert (E = 1, the random router) or fewer busy experts than threads. Rule: side by side when the
 * largest slab is at most 1.5 / threads of all rows. The backward makes the same choice from the
 * same offsets. */
static int experts_side_by_side(const int *offsets, int E, int C, int H1) {
#ifdef _OPENMP
    int nt = omp_get_max_threads(), mx = 0;
    if (nt < 2 || (size_t)offsets[E] * H1 * C < MOE_PAR_WORK * 4) return 0;
    for (int e = 0; e < E; e++) if (offsets[e + 1] - offsets[e] > mx) mx = offsets[e + 1] - offsets[e];
    return 2.0 * mx * nt <= 3.0 * offsets[E];
#else
    (void)offsets; (void)E; (void)C; (void)H1;
    return 0;
#endif
}

/* The expert computation over the dispatched slabs. This is the whole of what runs on an expert's
 * owner under expert parallelism: it reads only xd and offsets, writes only h_pre, h, y. */
/* Expert e's FFN over its slab: it writes only its rows offsets[e]..offsets[e+1]-1. */
static void expert_forward(MoEActs *a, const MoEParams *p, const MoEConfig *cfg, int e) {
    int C = cfg->C, H = cfg->H, H1 = moe_h1(cfg);
    int r0 = a->offsets[e], n = a->offsets[e + 1] - r0;
    if (n == 0) return;
    size_t w = held_expert(cfg, e);
    Bf16Weight pair[2];
    ffn_forward(a->y + (size_t)r0 * C, a->h + (size_t)r0 * H, a->h_pre + (size_t)r0 * H1,
                a->xd + (size_t)r0 * C, p->w1 + w * H1 * C, p->b1 ? p->b1 + w * H1 : NULL,
                p->w2 + w * C * H, p->b2 ? p->b2 + w * C : NULL, expert16(pair, p, cfg, w),
                a->hdrop_p > 0.0f ? a->hdrop + (size_t)r0 * H : NULL, a->hdrop_p, cfg->act, n, C, H);
}

static void moe_experts_forward(MoEActs *a, const MoEParams *p, const MoEConfig *cfg) {
    int E = cfg->E;
    /* One GEMM pair per expert, experts side by side when that pays (see experts_side_by_side).
     * Otherwise no region at all: inside an inactive one (if false) omp_in_parallel() is 0, and each
     * product's halves would run as a nested team of two, on threads started and ended every call. */
    if (experts_side_by_side(a->offsets, E, cfg->C, moe_h1(cfg))) {
#pragma omp parallel for schedule(dynamic, 1)
        for (int e = 0; e < E; e++) expert_forward(a, p, cfg, e);
    } else {
        for (int e = 0; e < E; e++) expert_forward(a, p, cfg, e);
    }
}

/* out[t] = s * sum over t's kept slots of gate * y[row] (+ the shared expert's sy[t]), s the
 * routed_scaling_factor. Each token's
 * row of out is written by one thread. */
static void combine_token(float *o, const MoEActs *a, int t, int C, float s) {
    int KS = a->KS;
    if (a->sy) memcpy(o, a->sy + (size_t)t * C, (size_t)C * sizeof(float));
    else memset(o, 0, (size_t)C * sizeof(float));
    for (int k = 0; k < KS; k++) {
        int r = a->slot_row[(size_t)t * KS + k];
        if (r < 0) continue;
        float g = s * a->gate[(size_t)t * KS + k];
        const float *y = a->y + (size_t)r * C;
        for (int c = 0; c < C; c++) o[c] += g * y[c];
    }
}

static void moe_combine(float *out, const MoEActs *a, int N, int C, float s) {
    if ((size_t)N * a->KS * C < MOE_PAR_WORK) {   /* no region: generation calls it inside its own */
        for (int t = 0; t < N; t++) combine_token(out + (size_t)t * C, a, t, C, s);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int t = 0; t < N; t++) combine_token(out + (size_t)t * C, a, t, C, s);
}

/* The expert dropout's mask of n rows, mask[n, H] (1 keeps; applied later, expert by expert, in
 * ffn_forward): unit j of row r keeps when rng_at_uniform(key, id[r] H + j) >= p (dropout_forward's
 * rule), id[r] the row's slot in the routing group ((global token) KS + choice; row_id). A function of
 * the slot alone, not of where dispatch put its row: one process, any split of the tokens over ranks
 * and any owner of the expert draw the same mask for it. Each thread writes only its rows. */
static void expert_dropout_draw(uint8_t *mask, const int *id, int n, int H, float p, uint64_t key) {
#pragma omp parallel for schedule(static) if ((size_t)n * H >= MOE_PAR_WORK)
    for (int r = 0; r < n; r++) {
        uint8_t *m = mask + (size_t)r * H;
        uint64_t first = (uint64_t)id[r] * (uint64_t)H;
        for (int j = 0; j < H; j++) m[j] = rng_at_uniform(key, first + (uint64_t)j) >= p;
    }
}

/* The owner's side of expert parallelism as acts of their own: the experts' loops run unchanged over
 * the rows received from every peer (ep_off gives rows only to this rank's experts). */
static MoEActs moe_ep_view(const MoEActs *a) {
    MoEActs v = *a;
    v.offsets = a->ep_off;
    v.xd = a->ep_x;
    v.h_pre = a->ep_h_pre;
    v.h = a->ep_h;
    v.y = a->ep_y;
    v.dh_pre = a->ep_dh_pre;
    v.dh = a->ep_dh;
    v.hdrop = a->ep_hdrop;
    v.dy = a->ep_y;   /* the backward's dy: y is not read by the experts' backward */
    return v;
}

/* ---- forward ---------------------------------------------------------------------------------- */

void moe_forward_route(MoEActs *a, const float *x, const int *tokens, const MoEParams *p, const MoEConfig *cfg,
                       int N, int training, uint64_t key) {
    CHECK(N >= 1 && N <= a->Nmax);
    CHECK(a->KS == moe_slots_per_token(cfg));
    int C = cfg->C;
    a->N = N;
    a->Ng = N;
    comm_allreduce_i32(COMM_WORLD, &a->Ng, 1);
    CHECK(comm_size(COMM_WORLD) == 1 || a->kpos != NULL);   /* bound after comm_init */
    if (cfg->group_size > 0) CHECK(N % cfg->group_size == 0);
    a->Cap = moe_capacity(cfg, cfg->group_size > 0 ? cfg->group_size : a->Ng, training);
    a->hdrop_p = training && a->hdrop ? cfg->expert_dropout : 0.0f;
    /* the tokens of the ranks before this one, for the draws keyed by a token's place in the group */
    a->t0 = 0;
    if (comm_size(COMM_WORLD) > 1 && training && (cfg->jitter > 0.0f || a->hdrop_p > 0.0f))
        comm_exscan_i32(COMM_WORLD, &N, &a->t0, 1);

    moe_route(a, x, tokens, p, cfg, N, training, key);
    moe_dispatch_plan(a, N, cfg->E, cfg->group_size);
    moe_gather(a, x, C);
}

void moe_forward_combine(float *out, const MoEActs *a, const MoEConfig *cfg) {
    moe_combine(out, a, a->N, cfg->C, cfg->route_scale);
}

void moe_forward(float *out, MoEActs *a, const float *x, const int *tokens, const MoEParams *p,
                 const MoEConfig *cfg, int N, int training, uint64_t key) {
    int C = cfg->C;
    moe_forward_route(a, x, tokens, p, cfg, N, training, key);
    if (a->hdrop_p > 0.0f) {
        /* each row's slot in the routing group keys its expert dropout mask; the slots fit an int as
         * long as the group's token-slots do */
        CHECK((int64_t)a->Ng * a->KS <= INT32_MAX);
        for (int r = 0; r < a->S; r++) a->row_id[r] = (a->t0 + a->row_token[r]) * a->KS + a->row_slot[r];
    }
    if (a->Rmax) {
        /* expert parallel: each expert's slab xd[offsets[e]..] goes to the rank owning e, which runs
         * its experts over the rows of every peer (a view of the acts on its own slabs); the rows'
         * slots travel with them */
        MoEActs v = moe_ep_view(a);
        moe_ep_to_owners(a, cfg, a->xd, a->ep_x, 1);
        if (v.hdrop_p > 0.0f) {
            moe_ep_ids_to_owners(a, cfg, a->row_id, a->ep_row_id);
            expert_dropout_draw(v.hdrop, a->ep_row_id, v.offsets[cfg->E], cfg->H, v.hdrop_p, rng_key(key, 1));
        }
        moe_experts_forward(&v, p, cfg);
        moe_ep_from_owners(a, cfg, a->ep_y, a->y);   /* and the slabs y[offsets[e]..] come back */
    } else {
        if (a->hdrop_p > 0.0f) expert_dropout_draw(a->hdrop, a->row_id, a->S, cfg->H, a->hdrop_p, rng_key(key, 1));
        moe_experts_forward(a, p, cfg);
    }
    if (cfg->shared_expert) {
        Bf16Weight pair[2];
        ffn_forward(a->sy, a->sh, a->sh_pre, x, p->sw1, p->sb1, p->sw2, p->sb2, shared16(pair, p), NULL, 0.0f, cfg->act,
                    N, C, cfg->H);
    }
    moe_forward_combine(out, a, cfg);
    if (cfg->dropped_gets_input) {
        /* a dropped token's output is s * gate * x instead of 0 (switch: one slot a token) */
        for (int t = 0; t < N; t++) {
            if (a->slot_row[t] >= 0) continue;
            float g = cfg->route_scale * a->gate[t];
            for (int c = 0; c < C; c++) out[(size_t)t * C + c] += g * x[(size_t)t * C + c];
        }
    }
}

float moe_loss(const MoEActs *a, const MoEConfig *cfg) {
    return cfg->aux_coef * a->aux_loss + cfg->z_coef * a->z_loss;
}

/* ---- backward --------------------------------------------------------------------------------- */

/* dlogits[N,E] = d(loss)/d(logits) through the gates (selection held fixed), the load-balancing loss
 * (f_e held constant: it counts argmaxes and has no gradient) and the z-loss. */
static void router_backward_logits(MoEActs *a, const float *dout, const float *x, const MoEConfig *cfg, int N,
                                   float aux_scale) {
    int E = cfg->E, C = cfg->C, KS = a->KS;
    int balance = router_info(cfg->router)->balance_loss;
    int mixtral = router_info(cfg->router)->slots == EXPERTS_K && cfg->topk_softmax_after;
    int K = moe_slot_k(cfg);
    /* aux = E sum_e f_e P_e, P_e = (1/N) sum_t p[t,e]  =>  d aux / d p[t,e] = E f_e / N */
    float Ng = (float)a->Ng;   /* the routing group's tokens (N on one rank) */
    float aux_w = balance ? aux_scale * cfg->aux_coef * (float)E / (Ng * Ng * (float)K) : 0.0f;
    /* z = (1/N) sum_t lse_t^2  =>  d z / d logits[t,e] = 2 lse_t p[t,e] / N */
    float z_w = aux_scale * cfg->z_coef * 2.0f / Ng;
    int G = cfg->group_size > 0 ? cfg->group_size : N;   /* the caller's aux_dprobs rows */
    /* Tokens are independent: each thread writes only its tokens' rows of dlogits. */
#pragma omp parallel for schedule(static) if ((size_t)N * (KS * C + 4 * E) >= MOE_PAR_WORK)
    for (int t = 0; t < N; t++) {
        const float *pr = a->probs + (size_t)t * E, *l = a->logits + (size_t)t * E;
        const float *dyt = dout + (size_t)t * C;
        float *dl = a->dlogits + (size_t)t * E;
        float dg[256];   /* d loss / d gate per slot (Mixtral); KS <= E <= 256 */
        for (int e = 0; e < E; e++) dl[e] = aux_w * (float)a->assigned[e];   /* d loss / d probs */
        if (a->aux_dprobs)
            for (int e = 0; e < E; e++) dl[e] += a->aux_dprobs[(size_t)(t / G) * E + e];
        for (int k = 0; k < KS; k++) {
            int r = a->slot_row[(size_t)t * KS + k];
            float d = 0.0f;      /* a dropped slot contributes 0, whatever its gate */
            /* out = s * gate * y (a dropped slot: s * gate * x with dropped_gets_input, else 0) */
            const float *y = r >= 0 ? a->y + (size_t)r * C : cfg->dropped_gets_input ? x + (size_t)t * C : NULL;
            if (y) {
#pragma omp simd reduction(+ : d)   /* lanes, not one serial chain: soft gating has E slots a token */
                for (int c = 0; c < C; c++) d += dyt[c] * y[c];
                d *= cfg->route_scale;
            }
            dg[k] = d;
            if (!mixtral && y) dl[a->expert[(size_t)t * KS + k]] += d;   /* gate = probs[t, e] */
        }
        /* softmax Jacobian: dlogit_e = p_e (dp_e - sum_j p_j dp_j) */
        float s = 0.0f;
        for (int e = 0; e < E; e++) s += pr[e] * dl[e];
        for (int e = 0; e < E; e++) dl[e] = pr[e] * (dl[e] - s);
        if (mixtral) {
            /* gates g_k = softmax over the K chosen logits: dlogit_{e_k} += g_k (dg_k - sum_j g_j dg_j) */
            const float *g = a->gate + (size_t)t * KS;
            float sg = 0.0f;
            for (int k = 0; k < KS; k++) sg += g[k] * dg[k];
            for (int k = 0; k < KS; k++) dl[a->expert[(size_t)t * KS + k]] += g[k] * (dg[k] - sg);
        }
        if (z_w != 0.0f) {
            float mx = -FLT_MAX;
            for (int e = 0; e < E; e++) mx = l[e] > mx ? l[e] : mx;
            float sum = 0.0f;
            for (int e = 0; e < E; e++) sum += expf(l[e] - mx);
            float lse = mx + logf(sum);
            for (int e = 0; e < E; e++) dl[e] += z_w * lse * pr[e];
        }
    }
}

/* Experts backward, side by side when the forward did so: expert e writes only its own rows of
 * dh, dh_pre, dy and its own slices of the weight gradients. dxd overwrites dy in place
 * (ffn_backward allows it). */
static void expert_backward(MoEActs *a, MoEParams *grads, const MoEParams *p, const MoEConfig *cfg, int e) {
    int C = cfg->C, H = cfg->H, H1 = moe_h1(cfg);
    int r0 = a->offsets[e], n = a->offsets[e + 1] - r0;
    if (n == 0) return;
    float *dy = a->dy + (size_t)r0 * C;
    size_t w = held_expert(cfg, e);
    Bf16Weight pair[2];
    ffn_backward(dy, grads->w1 + w * H1 * C, grads->b1 ? grads->b1 + w * H1 : NULL, grads->w2 + w * C * H,
                 grads->b2 ? grads->b2 + w * C : NULL,
                 a->dh + (size_t)r0 * H, a->dh_pre + (size_t)r0 * H1, dy, a->h + (size_t)r0 * H,
                 a->h_pre + (size_t)r0 * H1, a->xd + (size_t)r0 * C, p->w1 + w * H1 * C,
                 p->w2 + w * C * H, expert16(pair, p, cfg, w), a->hdrop_p > 0.0f ? a->hdrop + (size_t)r0 * H : NULL,
                 a->hdrop_p, cfg->act, n, C, H);
}

static void moe_experts_backward(MoEActs *a, MoEParams *grads, const MoEParams *p, const MoEConfig *cfg) {
    int E = cfg->E;
    if (experts_side_by_side(a->offsets, E, cfg->C, moe_h1(cfg))) {   /* as the forward, and no region otherwise */
#pragma omp parallel for schedule(dynamic, 1)
        for (int e = 0; e < E; e++) expert_backward(a, grads, p, cfg, e);
    } else {
        for (int e = 0; e < E; e++) expert_backward(a, grads, p, cfg, e);
    }
}

void moe_backward(float *dx, MoEParams *grads, const float *dout, MoEActs *a, const float *x,
                  const MoEParams *p, const MoEConfig *cfg, int N, float aux_scale) {
    CHECK(N == a->N);
    int E = cfg->E, C = cfg->C, H = cfg->H, KS = a->KS;
    size_t NC = (size_t)N * C;

    /* Shared expert first: its [N, .] gradients use the scratch before the experts need it. dx = */
    Bf16Weight pair[2];
    if (cfg->shared_expert)
        ffn_backward(dx, grads->sw1, grads->sb1, grads->sw2, grads->sb2, a->dh, a->dh_pre, dout, a->sh,
                     a->sh_pre, x, p->sw1, p->sw2, shared16(pair, p), NULL, 0.0f, cfg->act, N, C, H);
    else
        memset(dx, 0, NC * sizeof(float));

    /* Combine backward into the slabs: dy[r] = s * gate * dout[token]. One row per iteration. */
#pragma omp parallel for schedule(static) if ((size_t)a->S * C >= MOE_PAR_WORK)
    for (int r = 0; r < a->S; r++) {
        int t = a->row_token[r];
        float g = cfg->route_scale * a->gate[(size_t)t * KS + a->row_slot[r]];
        const float *d = dout + (size_t)t * C;
        float *dy = a->dy + (size_t)r * C;
        for (int c = 0; c < C; c++) dy[c] = g * d[c];
    }

    if (a->Rmax) {
        /* expert parallel: the dy slabs go to the experts' owners, which alone accumulate their
         * experts' weight gradients, and the dxd slabs come back */
        MoEActs v = moe_ep_view(a);
        moe_ep_to_owners(a, cfg, a->dy, v.dy, 0);
        moe_experts_backward(&v, grads, p, cfg);
        moe_ep_from_owners(a, cfg, v.dy, a->dy);
    } else {
        moe_experts_backward(a, grads, p, cfg);
    }

    /* Scatter: dx[t] += sum over t's kept slots of dxd[row]. Each token's row written by one thread. */
#pragma omp parallel for schedule(static) if ((size_t)N * KS * C >= MOE_PAR_WORK)
    for (int t = 0; t < N; t++) {
        float *o = dx + (size_t)t * C;
        for (int k = 0; k < KS; k++) {
            int r = a->slot_row[(size_t)t * KS + k];
            if (r < 0) continue;
            const float *d = a->dy + (size_t)r * C;
            for (int c = 0; c < C; c++) o[c] += d[c];
        }
        if (cfg->dropped_gets_input && a->slot_row[t] < 0) {   /* out = s * gate * x */
            float g = cfg->route_scale * a->gate[t];
            const float *d = dout + (size_t)t * C;
            for (int c = 0; c < C; c++) o[c] += g * d[c];
        }
    }

    if (!router_learned(cfg->router)) return;   /* random, hash: no router weight, gates are constants */

    router_backward_logits(a, dout, x, cfg, N, aux_scale);
    /* drouter_w[E,C] += dlogits^T xin;  dxin[N,C] = dlogits @ router_w, into dy (free now) */
    gemm(1, 0, E, C, N, 1.0f, a->dlogits, E, a->xin, C, 1.0f, grads->router_w, C);
    gemm(0, 0, N, C, E, 1.0f, a->dlogits, E, p->router_w, C, 0.0f, a->dy, C);
    /* xin = x * jit  =>  dx += dxin * jit (the expert path saw the un-jittered x) */
    if (a->jittered) {
        for (size_t i = 0; i < NC; i++) dx[i] += a->dy[i] * a->jit[i];
    } else {
        for (size_t i = 0; i < NC; i++) dx[i] += a->dy[i];
    }
}

/* ---- expert bias (DeepSeek-V3, auxiliary-loss-free balancing) ----------------------------------- */

void moe_update_bias(MoEParams *p, const MoEActs *a, const MoEConfig *cfg) {
    if (!cfg->use_expert_bias || !p->expert_bias) return;
    int E = cfg->E;
    double mean = 0.0;
    for (int e = 0; e < E; e++) mean += a->assigned[e];
    mean /= E;
    /* b_e += u * sign(mean load - load_e): under-loaded experts become more attractive. The load is
     * the pre-capacity choice count, the quantity the bias steers. */
    for (int e = 0; e < E; e++) {
        double d = mean - a->assigned[e];
        p->expert_bias[e] += cfg->bias_rate * (float)((d > 0) - (d < 0));
    }
}

/* ---- statistics ------------------------------------------------------------------------------- */

void moe_stats_reset(MoEStats *s, int E) {
    CHECK(E >= 1 && E <= 256);
    memset(s, 0, sizeof *s);
    s->E = E;
}

void moe_stats_add(MoEStats *s, const MoEActs *a, const MoEConfig *cfg) {
    int N = a->N, E = cfg->E, KS = a->KS;
    CHECK(s->E == E);
    double chosen = 0.0;
    for (size_t i = 0; i < (size_t)N * KS; i++) chosen += a->expert[i] >= 0;
    s->tokens += N;
    s->slots += chosen;
    s->dropped += chosen - a->S;
    for (int e = 0; e < E; e++) s->load[e] += a->offsets[e + 1] - a->offsets[e];
    for (int t = 0; t < N; t++) {
        const float *pr = a->probs + (size_t)t * E;
        double ent = 0.0, mx = 0.0;
        int kept = 0;
        for (int e = 0; e < E; e++) {
            if (pr[e] > 0.0f) ent -= (double)pr[e] * log((double)pr[e]);
            if (pr[e] > mx) mx = pr[e];
        }
        for (int k = 0; k < KS; k++) kept |= a->slot_row[(size_t)t * KS + k] >= 0;
        s->entropy_sum += ent;
        s->top1_sum += mx;
        s->unrouted += !kept;
    }
    s->aux_sum += a->aux_loss;
    s->z_sum += a->z_loss;
    s->batches++;
}

int moe_stats_dead(const MoEStats *s) {
    int n = 0;
    for (int e = 0; e < s->E; e++) n += s->load[e] == 0.0;
    return n;
}
