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

/* An MoE layer: FLOPs over the slots its last forward kept (a->S of a->N rows), and the floats one
 * token's step reads (the router, the experts it reaches, the shared expert). */
static void cost_moe(ModelCost *k, const MoEConfig *cfg, const MoEActs *a) {
    double C = cfg->C, H = cfg->H, H1 = activation_in_width(cfg->act, cfg->H), N = a->N;
    int learned = router_info(cfg->router)->learned, slots = moe_slots_per_token(cfg);
    double expert = 2 * C * H1 + 2 * H * C;
    k->flops += (double)a->S * expert + (learned ? 2 * N * C * cfg->E : 0.0) + (cfg->shared_expert ? N * expert : 0.0);
    int reached = (slots < cfg->E ? slots : cfg->E) + (cfg->shared_expert ? 1 : 0);
    k->vec[KV_PHASE_MOE] += (learned ? cfg->E * C : 0.0) + (cfg->use_expert_bias ? cfg->E : 0.0);
    k->mat[KV_PHASE_MOE] += reached * (H1 * C + C * H);
    if (!cfg->no_bias) k->vec[KV_PHASE_MOE] += reached * (H1 + C);
}

/* Every count is a whole number below 2^53, so the sums are exact in any order. */
void model_cost(const Model *m, ModelCost *k) {
    CHECK(!m->ed);
    const ModelConfig *c = &m->cfg;
    double B = m->B, T = m->T, N = B * T, C = c->d_model, V = c->vocab_size, HH = c->head_hidden;
    double H = c->d_ff, H1 = activation_in_width(c->hidden_act, c->d_ff), QKV = model_qkv_width(c);
    double norm = c->norm_type == NORM_RMS ? C : 2 * C;   /* weight (and bias) of one norm */
    int llama = config_is_llama(c), bias = !llama;        /* the llama family: no wpe, no biases but the experts' */
    *k = (ModelCost){0};
    for (int s = 0; s <= c->num_layers; s++) {
        ModelStep st[MODEL_STEPS_MAX];
        int n = model_steps(c, s, st);
        for (int i = 0; i < n; i++) {
            double *mat = &k->mat[st[i].part], *vec = &k->vec[st[i].part];
            switch (st[i].op) {
            case STEP_EMBED: *vec += llama ? C : 2 * C; break;   /* a row of wte and one of wpe */
            case STEP_NORM: *vec += norm; break;
            case STEP_ATTN:   /* q, k, v; then causal q.k and p.v: 2 * 2 hd per (b, h, t, u <= t) */
                k->flops += 2 * N * C * QKV + 2 * B * T * (T + 1) * C;
                *mat += QKV * C;
                *vec += bias * QKV;
                break;
            case STEP_PROJ:
                k->flops += 2 * N * C * C;
                *mat += C * C;
                *vec += bias * C;
                break;
            case STEP_FFN:
                k->flops += N * (2 * C * H1 + 2 * H * C);
                *mat += H1 * C + C * H;
                *vec += bias * (H1 + C);
                break;
            case STEP_MOE: cost_moe(k, &m->moe_cfg, s < c->num_layers ? &m->a.layers[s].moe : &m->a.head_moe); break;
            case STEP_LOGITS:   /* lm_head, or wte when tied */
                k->flops += 2 * N * C * V;
                *mat += V * C;
                break;
            case STEP_HEAD_FFN:
                k->flops += 2 * N * C * HH + 2 * N * HH * V;
                *mat += HH * C + V * HH;
                *vec += HH + V;
                break;
            case STEP_DROP: case STEP_ADD: break;
            }
        }
    }
}
