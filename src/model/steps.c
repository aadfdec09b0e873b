/* steps.c: each decoder model type's stages as steps, and model_cost over them (see steps.h). */
#include "model/steps.h"

#include "ops/ops.h"

int model_steps(const ModelConfig *c, int s, ModelStep out[MODEL_STEPS_MAX]) {
    int n = 0, L = c->num_layers, seed = c->model_type == MODEL_SEED;
    CHECK(s >= 0 && s <= L && c->model_type != MODEL_SWITCH);
    const KVPhase ATT = KV_PHASE_ATTENTION, PROJ = KV_PHASE_PROJECTION, HEAD = KV_PHASE_HEAD;
#define PUT(...) (out[n++] = (ModelStep){__VA_ARGS__})
    if (s == 0) {   /* x = drop(wte[tok] + wpe[t]) */
        PUT(.op = STEP_EMBED, .out = SV_X, .part = ATT);
        PUT(.op = STEP_DROP, .out = SV_X, .in = SV_X, .site = SITE_EMBED, .part = ATT);
    }
    if (s == L && !seed) {   /* logits = norm_f(x) lm_head^T */
        PUT(.op = STEP_NORM, .out = SV_LNF, .in = SV_X, .norm = NORM_OF_LNF, .part = HEAD);
        PUT(.op = STEP_LOGITS, .out = SV_LOGITS, .in = SV_LNF, .part = HEAD);
    } else if (s == L) {     /* hm = x + moe(x); logits = relu(drop(hm) W1^T + b1) W2^T + b2 */
        PUT(.op = STEP_MOE, .out = SV_HM_OUT, .in = SV_X, .part = KV_PHASE_MOE);
        PUT(.op = STEP_ADD, .out = SV_HM, .in = SV_X, .in2 = SV_HM_OUT, .part = HEAD);
        PUT(.op = STEP_DROP, .out = SV_HM_DROP, .in = SV_HM, .site = SITE_OUT, .part = HEAD);
        PUT(.op = STEP_HEAD_FFN, .out = SV_LOGITS, .in = SV_HM_DROP, .part = HEAD);
    } else {
        int sparse = config_block_is_sparse(c, s);
        StepOp ffn = sparse ? STEP_MOE : STEP_FFN;
        KVPhase FF = sparse ? KV_PHASE_MOE : KV_PHASE_FFN;
        if (!seed) {   /* pre-norm: res1 = x + drop(attn(norm1(x))); out = res1 + drop(ffn(norm2(res1))) */
            PUT(.op = STEP_NORM, .out = SV_LN1, .in = SV_X, .norm = NORM_OF_LN1, .part = ATT);
            PUT(.op = STEP_ATTN, .out = SV_ATTY, .in = SV_LN1, .part = ATT);
        } else {       /* post-norm: ln1 = norm1(x + drop(attn(x))); out = norm2(ln1 + drop(ffn(ln1))) */
            PUT(.op = STEP_ATTN, .out = SV_ATTY, .in = SV_X, .part = ATT);
        }
        PUT(.op = STEP_PROJ, .out = SV_ATTPROJ, .in = SV_ATTY, .part = PROJ);
        PUT(.op = STEP_DROP, .out = SV_ATTPROJ, .in = SV_ATTPROJ, .site = SITE_ATTN, .part = PROJ);
        PUT(.op = STEP_ADD, .out = SV_RES1, .in = SV_X, .in2 = SV_ATTPROJ, .part = PROJ);
        StepVec ffn_in = seed ? SV_LN1 : SV_LN2;
        PUT(.op = STEP_NORM, .out = ffn_in, .in = SV_RES1, .norm = seed ? NORM_OF_LN1 : NORM_OF_LN2, .part = PROJ);
        PUT(.op = ffn, .out = SV_FFN, .in = ffn_in, .part = FF);
        PUT(.op = STEP_DROP, .out = SV_FFN, .in = SV_FFN, .site = SITE_FFN, .part = FF);
        if (!seed) {
            PUT(.op = STEP_ADD, .out = SV_OUT, .in = SV_RES1, .in2 = SV_FFN, .part = FF);
        } else {
            PUT(.op = STEP_ADD, .out = SV_RES2, .in = SV_LN1, .in2 = SV_FFN, .part = FF);
            PUT(.op = STEP_NORM, .out = SV_OUT, .in = SV_RES2, .norm = NORM_OF_LN2, .part = FF);
        }
    }
#undef PUT
    CHECK(n <= MODEL_STEPS_MAX);
    return n;
}

/* ---- cost ---------------------------------------------------------------------------------------- */

/* n values from W read in part p, a matrix's (mat) or a vector's: as Q8_0 blocks where q8 holds them */
static void cost_read(ModelCost *k, const Model *m, const Q8Arena *q8, KVPhase p, const float *W, double n, int mat) {
    if (q8 && q8_arena_holds(q8, (size_t)(W - m->params), (size_t)n)) k->q8_bytes[p] += n / Q8_0_BLOCK * sizeof(BlockQ8_0);
    else if (mat) k->mat[p] += n;
    else k->vec[p] += n;
}

/* An MoE layer mp: FLOPs over the slots its last forward kept (a->S of a->N rows), and what one token's
 * step reads (the router, the experts it reaches: the first ones of the slab, as a file quantizes a
 * slab whole; the shared expert). */
static void cost_moe(ModelCost *k, const Model *m, const Q8Arena *q8, const MoEParams *mp, const MoEActs *a) {
    const MoEConfig *cfg = &m->moe_cfg;
    double C = cfg->C, H = cfg->H, H1 = activation_in_width(cfg->act, cfg->H), N = a->N;
    int learned = router_info(cfg->router)->learned, slots = moe_slots_per_token(cfg);
    int reached = slots < cfg->E ? slots : cfg->E;
    double expert = 2 * C * H1 + 2 * H * C;
    const KVPhase P = KV_PHASE_MOE;
    k->flops += (double)a->S * expert + (learned ? 2 * N * C * cfg->E : 0.0) + (cfg->shared_expert ? N * expert : 0.0);
    k->vec[P] += (learned ? cfg->E * C : 0.0) + (cfg->use_expert_bias ? cfg->E : 0.0);
    for (int e = 0; e < reached; e++) {
        cost_read(k, m, q8, P, mp->w1 + (size_t)e * (size_t)(H1 * C), H1 * C, 1);
        cost_read(k, m, q8, P, mp->w2 + (size_t)e * (size_t)(C * H), C * H, 1);
    }
    if (cfg->shared_expert) {
        cost_read(k, m, q8, P, mp->sw1, H1 * C, 1);
        cost_read(k, m, q8, P, mp->sw2, C * H, 1);
    }
    if (!cfg->no_bias) k->vec[P] += (reached + (cfg->shared_expert ? 1 : 0)) * (H1 + C);
}

/* The output matrix's rows a row of the last forward multiplied on average: V, or with an adaptive
 * softmax the head's and its target's cluster's (every word's too in a forward for the distribution).
 * A token step of generation reads all V (cost_read). */
static double logit_rows(const Model *m, double N, double V) {
    const AdaptiveShape *ad = &m->ad;
    const AdaptiveActs *a = &m->a.ad;
    if (!ad->n || !a->ht) return V;
    if (m->a.ad_full) return V + ad->n;
    double rows = N * (ad->cut[0] + ad->n);
    for (int j = 0; j < ad->n; j++) rows += (double)(a->start[j + 1] - a->start[j]) * (ad->cut[j + 1] - ad->cut[j]);
    return rows / N;
}

/* Every count is a whole number below 2^53, so the sums are exact in any order. */
void model_cost(const Model *m, const Q8Arena *q8, ModelCost *k) {
    CHECK(!m->ed);
    const ModelConfig *c = &m->cfg;
    const ModelParams *p = &m->p;
    double B = m->B, T = m->T, N = B * T, C = c->d_model, V = c->vocab_size, HH = c->head_hidden;
    double H = c->d_ff, H1 = activation_in_width(c->hidden_act, c->d_ff), QKV = model_qkv_width(c);
    double norm = c->norm_type == NORM_RMS ? C : 2 * C;   /* weight (and bias) of one norm */
    int bias = !config_is_llama(c);                       /* the llama family: no biases but the experts' */
    *k = (ModelCost){0};
    for (int s = 0; s <= c->num_layers; s++) {
        const LayerParams *lp = s < c->num_layers ? &p->layers[s] : NULL;
        ModelStep st[MODEL_STEPS_MAX];
        int n = model_steps(c, s, st);
        for (int i = 0; i < n; i++) {
            KVPhase part = st[i].part;
            double *vec = &k->vec[part];
            switch (st[i].op) {
            case STEP_EMBED:   /* a row of wte (row 0's form: every row's) and one of wpe */
                cost_read(k, m, q8, part, p->wte, C, 0);
                if (p->wpe) *vec += C;
                break;
            case STEP_NORM: *vec += norm; break;
            case STEP_ATTN:   /* q, k, v; then causal q.k and p.v: 2 * 2 hd per (b, h, t, u <= t) */
                k->flops += 2 * N * C * QKV + 2 * B * T * (T + 1) * C;
                cost_read(k, m, q8, part, lp->qkv_w, QKV * C, 1);
                *vec += bias * QKV;
                break;
            case STEP_PROJ:
                k->flops += 2 * N * C * C;
                cost_read(k, m, q8, part, lp->out_w, C * C, 1);
                *vec += bias * C;
                break;
            case STEP_FFN:
                k->flops += N * (2 * C * H1 + 2 * H * C);
                cost_read(k, m, q8, part, lp->fc1_w, H1 * C, 1);
                cost_read(k, m, q8, part, lp->fc2_w, C * H, 1);
                *vec += bias * (H1 + C);
                break;
            case STEP_MOE:
                cost_moe(k, m, q8, lp ? &lp->moe : &p->head_moe, lp ? &m->a.layers[s].moe : &m->a.head_moe);
                break;
            case STEP_LOGITS:
                k->flops += 2 * N * C * logit_rows(m, N, V);
                cost_read(k, m, q8, part, c->tie_word_embeddings ? p->wte : p->lm_head, V * C, 1);
                break;
            case STEP_HEAD_FFN:
                k->flops += 2 * N * C * HH + 2 * N * HH * V;
                cost_read(k, m, q8, part, p->head_w1, HH * C, 1);
                cost_read(k, m, q8, part, p->head_w2, V * HH, 1);
                *vec += HH + V;
                break;
            case STEP_DROP: case STEP_ADD: break;
            }
        }
    }
}
