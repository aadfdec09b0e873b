/* moe.h: the Mixture-of-Experts layer, one data path (see ../shared/DESIGN.md):
 *
 *   x[N,C] --router (fp32)--> logits[N,E] -> probs -> (expert, gate) per token-slot
 *          --> capacity (drop slots over Cap in token order; cf <= 0 dropless)
 *          --> dispatch: counting sort of slots by expert -> offsets[E+1], rows gathered into slabs
 *          --> [seam: expert parallel all-to-all goes here]
 *          --> experts: one GEMM pair per expert over its slab
 *          --> [seam: all-to-all back]
 *          --> combine: out[t] += gate * expert_out[slot]
 *
 * Dimensions: N tokens (B*T, one routing group), C d_model, E experts, K experts per token,
 * H expert hidden size, Cap capacity per expert, S slots (kept token-expert pairs, S <= N*K).
 * KS slots per token = moe_slots_per_token(cfg): K for topk, E for soft and expert-choice, else 1;
 * the per-slot arrays (expert, gate, slot_row) are [N, KS]. Smax = Nmax * KS bounds the rows.
 *
 * The MoE output is ASSIGNED (out =) and does not include the residual: the model adds it. A dropped
 * token gets 0 from this layer, so the residual carries it.
 */
#ifndef MOELM_MOE_H
#define MOELM_MOE_H

#include <stddef.h>
#include <stdint.h>
#include "common/util.h"
#include "ops/ops.h"

typedef enum {
    ROUTER_RANDOM = 0,        /* the tutorial: one uniformly random expert for the whole forward pass */
    ROUTER_HASH,              /* expert = fixed hash of the token id (Roller et al. 2021) */
    ROUTER_SOFT,              /* the tutorial's gating network: softmax weights, every expert runs */
    ROUTER_SWITCH,            /* top-1 (Fedus et al. 2021) */
    ROUTER_TOPK,              /* K >= 2 */
    ROUTER_EXPERT_CHOICE,     /* each expert takes its top-Cap tokens (Zhou et al. 2022); non-causal */
    ROUTER__COUNT
} RouterType;

/* How tokens reach experts (the routing function that serves a router). */
typedef enum {
    ROUTE_RANDOM_PASS,        /* one expert drawn for the whole pass, gate 1 */
    ROUTE_HASH,               /* the token id's fixed expert, gate 1 */
    ROUTE_ALL,                /* every expert, gated by the softmax */
    ROUTE_TOKEN_TOPK,         /* each token takes its K best-scoring experts (score = prob + selection bias) */
    ROUTE_EXPERT_TOPK,        /* each expert takes its Cap most probable tokens */
} RouteKind;

/* A count of experts: one, the config's K, or all E. */
typedef enum { EXPERTS_ONE, EXPERTS_K, EXPERTS_ALL } RouterCount;

/* The facts about a router, one entry per RouterType (router_table in moe.c): a new router is one
 * entry there plus its routing function. */
typedef struct {
    const char *name;        /* as configs and reports spell it */
    RouteKind route;
    int learned;             /* has a router weight [E, C]: logits, probs, their gradients, the z-loss */
    RouterCount slots;       /* slots per token (moe_slots_per_token) */
    RouterCount per_token;   /* experts a token uses on average: the capacity formula's and the active
                              * parameters' count (expert-choice: K, though a token's slots are E) */
    int capped;              /* a capacity limits each expert's tokens (0: every token kept) */
    int balance_loss;        /* the load-balancing loss, and the selection bias (use_expert_bias) */
    int causal;              /* a token's routing depends on no later token (usable in a language model) */
    int multi_rank;          /* runs over several ranks (the routing group spans the ranks) */
} RouterInfo;

/* The entry of router r; an out-of-range r gets an entry named "?" with every fact 0. */
const RouterInfo *router_info(RouterType r);
const char *router_name(RouterType r);            /* "random", "hash", "soft", "switch", "topk", "expert-choice" */
int router_from_name(const char *s);              /* -1 when unknown */

typedef struct {
    RouterType router;
    int E, K, C, H;            /* experts, experts per token (1 for switch/random/hash), d_model, expert hidden */
    Activation act;            /* expert activation: relu, gelu, swiglu (w1 then has 2H rows) */
    int topk_softmax_after;    /* topk: 0 = softmax over all E then top-K (GShard); 1 = softmax over the top-K logits (Mixtral) */
    float capacity_factor_train, capacity_factor_eval;   /* <= 0: dropless */
    int min_capacity;          /* Cap = max(min_capacity, round(cf * N * K / E)) */
    int expert_capacity;       /* > 0: fixed Cap per expert (Hugging Face's mode), overrides the factors */
    float aux_coef;            /* load-balancing loss alpha (default 0.01) */
    float z_coef;              /* router z-loss beta (default 0.001) */
    float jitter;              /* multiplicative jitter eps on the router input in training (0 = off) */
    float route_scale;         /* the routed experts' gated sum is multiplied by this (1 = plain; not the shared expert) */
    int use_expert_bias;       /* DeepSeek-V3 selection bias, nudged toward balance each step */
    float bias_rate;           /* the bias update speed u */
    int shared_expert;         /* 1: a dense FFN (hidden H) that every token uses, added to the output */
    int group_size;            /* > 0: capacity is counted per routing group of this many consecutive tokens (N a
                                * multiple of it), in token order: Hugging Face Switch's per-sequence capacity,
                                * padding included; 0: the pass (all ranks' tokens) is one group */
    int no_bias;               /* 1: the experts have no biases (T5, Mixtral): b1 and b2 are NULL */
    int dropped_gets_input;    /* switch only: a token whose slot is dropped gets gate * x instead of 0 (Hugging
                                * Face Switch 4.25-4.51, kept available; 0 everywhere else) */
    float expert_dropout;      /* > 0: in training, dropout at this rate on each expert's hidden activations
                                * (Hugging Face Switch's experts, DenseActDense: after the activation, before
                                * wo); the acts then hold its mask. 0: none */
    int e_first;               /* the first expert whose weights MoEParams holds: under expert parallelism a
                                * rank holds experts [e_first, e_first + E/P) only (w1 etc. are [E/P, ...]
                                * there) and runs only those; 0 otherwise (all E held) */
} MoEConfig;

/* Parameter tensors of one MoE layer (pointers into the model's arena; grads use the same struct). */
typedef struct {
    float *router_w;    /* [E, C] router weight (no bias, as Switch and HF); NULL for random and hash */
    float *w1;          /* [E, H1, C], H1 = H (relu/gelu) or 2H (swiglu: gate rows, then up rows);
                         * w1..b2 hold E/P experts from cfg->e_first under expert parallelism */
    float *b1;          /* [E, H1] (NULL with no_bias) */
    float *w2;          /* [E, C, H] */
    float *b2;          /* [E, C] (NULL with no_bias) */
    float *sw1, *sb1;   /* shared expert [H1, C], [H1]; NULL without a shared expert */
    float *sw2, *sb2;   /* shared expert [C, H], [C] */
    float *expert_bias; /* [E] selection bias (not trained by gradient; NULL unless use_expert_bias) */
    /* Mixed precision (the model's bf16 mode; all NULL otherwise, and in the gradients' struct): w1,
     * w2 (per held expert, bf16_weight_expert) and the shared expert's sw1, sw2 packed in bf16; the
     * experts' products then run in bf16 operands with float sums. The router stays float. */
    Bf16Weight w1_16, w2_16, sw1_16, sw2_16;
} MoEParams;

/* Saved activations and routing decisions of one MoE layer for N tokens. Routing decisions are
 * data: the backward pass reads exactly these. Bound into caller memory by moe_acts_bind. */
typedef struct {
    int N, Cap, S;          /* tokens, capacity used, kept slots in this pass */
    int Nmax, KS, Smax;     /* bound size: tokens, slots per token, rows (Nmax * KS) */
    float *xin;             /* [N, C] router input after jitter (== x when no jitter; NULL for random/hash) */
    float *jit;             /* [N, C] jitter factors of this pass (NULL unless cfg->jitter > 0) */
    int jittered;           /* 1 when this pass applied jitter (training with jitter > 0) */
    float *logits;          /* [N, E] router logits (fp32; 0 for random/hash) */
    float *probs;           /* [N, E] softmax over all experts of the logits (random/hash: one-hot of the choice) */
    int *expert;            /* [N, KS] chosen expert per token-slot (-1 for none: expert-choice) */
    float *gate;            /* [N, KS] combine weight per token-slot */
    int *slot_row;          /* [N, KS] row of the slot in the dispatched slabs, -1 if dropped or none */
    int *offsets;           /* [E + 1] start of each expert's rows in the slabs */
    int *assigned;          /* [E] token-slots that chose each expert, before capacity */
    int *fill;              /* [E] scratch of the dispatch */
    int *gfill;             /* [E] scratch of the dispatch: a routing group's kept slots per expert */
    const float *aux_dprobs;/* NULL, or [N / G, E] (G the group size, N without groups): d loss / d probs[t, e]
                             * for every token t of group g, which moe_backward adds: a loss the caller computes
                             * over several layers (Hugging Face Switch's router loss); set before the backward */
    int *row_token;         /* [Smax] token of each dispatched row */
    int *row_slot;          /* [Smax] k index of each dispatched row (gate = gate[token*K + k]) */
    int *row_id;            /* [Smax] each dispatched row's slot in the routing group, (t0 + token) KS + k: what
                             * keys its expert dropout mask (NULL unless cfg->expert_dropout > 0) */
    float *xd;              /* [Smax, C] dispatched inputs, grouped by expert */
    float *h_pre;           /* [Smax, H1] first linear output */
    float *h;               /* [Smax, H] after activation (and the expert dropout) */
    uint8_t *hdrop;         /* [Smax, H] the expert dropout's mask (NULL unless cfg->expert_dropout > 0) */
    float hdrop_p;          /* the expert dropout's rate in the last forward (0: none, as in eval) */
    float *y;               /* [Smax, C] expert outputs (before gate) */
    float *sh_pre, *sh, *sy;/* shared expert [N,H1], [N,H], [N,C] (NULL without one) */
    float aux_loss;         /* E * sum_e f_e P_e (unweighted) */
    float z_loss;           /* mean_t logsumexp(logits_t)^2 (unweighted) */
    int random_expert;      /* ROUTER_RANDOM: the expert drawn for this pass */
    /* scratch for backward: [Smax, H1], [Smax, H], [Smax, C], [N, E] (dlogits NULL for random/hash) */
    float *dh_pre, *dh, *dy, *dlogits;
    /* Over several ranks (src/backend/comm.h; all NULL/0 with one): the routing group is every rank's
     * tokens (docs/SCALING.md), so capacity and the auxiliary losses count Ng tokens, and assigned[]
     * counts the whole group's choices. Bound when the acts are bound, from the groups' sizes then. */
    int Ng;                 /* tokens of the routing group (N on one rank) */
    int t0;                 /* the routing group's index of this rank's first token (the tokens of the ranks
                             * before it; 0 on one rank, and outside training forwards that draw) */
    int *kpos;              /* [3, KS, E] scratch: this rank's drop-priority positions per (k, e) */
    /* Expert parallelism (COMM_EP of size P > 1): this rank as the owner of experts [p E/P, (p+1) E/P)
     * receives the rows its peers dispatched to them. Rmax = P * Smax rows bound. */
    int Rmax;
    int *ep_send, *ep_recv; /* [E] rows sent per expert; [P, E/P] rows received from each peer per owned expert */
    int *ep_off;            /* [E + 1] the owner's rows per expert in the ep_* slabs (0 rows for others' experts) */
    int *ep_sc, *ep_sd, *ep_rc, *ep_rd;   /* [P] each: all-to-all counts and displacements (floats) */
    float *ep_stage;        /* [Rmax, max(C, ...)] rows as received, peer-major */
    float *ep_x, *ep_h_pre, *ep_h, *ep_y;     /* [Rmax, C], [Rmax, H1], [Rmax, H], [Rmax, C] owner's slabs */
    float *ep_dh_pre, *ep_dh;                 /* [Rmax, H1], [Rmax, H] owner's backward scratch */
    uint8_t *ep_hdrop;                        /* [Rmax, H] the owner's expert dropout mask (as hdrop) */
    int *ep_row_id;                           /* [Rmax] the owner's rows' slots (as row_id; NULL without expert dropout) */
    int *ep_id_stage;                         /* [Rmax] slots as received, peer-major (the same) */
    int *ep_ic;                               /* [4, P] scratch: their all-to-all counts and displacements in rows
                                               * (ep_sc, ep_sd, ep_rc, ep_rd over C; the same) */
} MoEActs;

/* Number of floats (and ints, counted as 4 bytes each) the activations of N tokens need: the caller
 * allocates once (no allocation inside a step) and binds. */
size_t moe_acts_bytes(const MoEConfig *cfg, int N);
void moe_acts_bind(MoEActs *a, void *mem, const MoEConfig *cfg, int N);

/* KS: token-slots per token (K for topk, E for soft and expert-choice, 1 otherwise). */
int moe_slots_per_token(const MoEConfig *cfg);
/* Experts a token uses on average (E for soft, K for topk and expert-choice, 1 otherwise): what the
 * capacity formula and the active parameter count assume. */
int moe_active_experts(const MoEConfig *cfg);

/* The hash router's fixed expert for a token id, in [0, E). */
int moe_hash_expert(int token, int E);

/* Whether a router has collapsed, from one evaluation's statistics: most token-slots dropped (a share
 * over 0.5) or most experts dead (more than E/2 with no token). Only for routers that learn to
 * choose among capped experts (switch, top-k, expert-choice): 0 for random, hash and soft, and E < 2.
 * The one criterion of training's warning and the report's flag. */
int moe_router_collapsed(RouterType r, int E, double dropped_share, int dead);

/* Parameter floats of one layer (router + experts + shared expert + expert bias); the model lays the
 * tensors out in its arena in the order of MoEParams' fields. Random and hash routing have no router
 * weight (router_w is NULL and not counted). */
size_t moe_param_count(const MoEConfig *cfg);

/* Validates a config; on error returns MOELM_ERR_CONFIG with a message. causal: the model is a causal LM. */
moelm_status moe_config_check(const MoEConfig *cfg, int causal);

/* Capacity per expert for N tokens, clamped to [1, N] (N when dropless, and always for soft and random). */
int moe_capacity(const MoEConfig *cfg, int N, int training);

/* out[N,C] = MoE(x[N,C]), N <= the N acts were bound for; tokens[N] are the token ids (hash routing;
 * may be NULL otherwise). key keys the pass's draws at this layer (rng_at): jitter (token g of the
 * routing group, channel c: counter g C + c), the expert dropout (key rng_key(key, 1); hidden unit j of
 * the slot of token g's choice k: counter (g KS + k) H + j, wherever the slot's row is dispatched) and
 * the random router's expert (the first rng_below of an Rng seeded with key). training selects the
 * capacity factor, jitter and the expert dropout. */
void moe_forward(float *out, MoEActs *a, const float *x, const int *tokens, const MoEParams *p,
                 const MoEConfig *cfg, int N, int training, uint64_t key);

/* moe_forward in its three parts, for a caller that runs the experts itself (generation, which
 * shares each expert's products over a team of threads; tests/test_generate.c holds the result to
 * moe_forward's). moe_forward_route routes the N tokens and gathers expert e's rows into
 * xd[offsets[e] .. offsets[e+1]); the caller then writes the experts' outputs y (and the shared
 * expert's sy) as moe_forward would; moe_forward_combine writes out[N,C] from them. Not under expert
 * parallelism: the caller holds every expert (Rmax == 0, e_first == 0). */
void moe_forward_route(MoEActs *a, const float *x, const int *tokens, const MoEParams *p, const MoEConfig *cfg,
                       int N, int training, uint64_t key);
void moe_forward_combine(float *out, const MoEActs *a, const MoEConfig *cfg);

/* The weighted auxiliary terms this layer adds to the loss: aux_coef * aux_loss + z_coef * z_loss. */
float moe_loss(const MoEActs *a, const MoEConfig *cfg);

/* dx[N,C] = (assigned), grads += . dout[N,C] is the gradient of the MoE output. The auxiliary
 * losses enter with weight aux_scale (1 when the total loss is CE + sum of moe_loss). */
void moe_backward(float *dx, MoEParams *grads, const float *dout, MoEActs *a, const float *x,
                  const MoEParams *p, const MoEConfig *cfg, int N, float aux_scale);

/* DeepSeek-V3 bias update after an optimizer step: b_e += rate * sign(mean_load - load_e). */
void moe_update_bias(MoEParams *p, const MoEActs *a, const MoEConfig *cfg);

/* Routing statistics, accumulated over evaluation batches. */
typedef struct {
    int E;
    double tokens;          /* tokens routed */
    double slots;           /* token-slots chosen (before capacity) */
    double dropped;         /* token-slots dropped by capacity */
    double unrouted;        /* tokens with no kept slot (MoE output 0: the residual carries them) */
    double load[256];       /* kept slots per expert */
    double entropy_sum;     /* sum over tokens of router entropy (nats) */
    double top1_sum;        /* sum over tokens of max prob */
    double aux_sum, z_sum;  /* sum over batches of unweighted aux and z losses */
    int batches;
} MoEStats;

void moe_stats_reset(MoEStats *s, int E);
void moe_stats_add(MoEStats *s, const MoEActs *a, const MoEConfig *cfg);
int moe_stats_dead(const MoEStats *s);   /* experts that received no token */

#endif
