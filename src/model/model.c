/* model.c: parameter layout, forward and backward of the lm and seed models (generation: generate.c).
 * See model.h for the architecture, the memory arenas and the shapes. */
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include "backend/comm.h"
#include "backend/gemm.h"
#include "model/encdec.h"
#include "model/layout.h"
#include "model/steps.h"
#include "ops/attn.h"
#include "ops/ops.h"

/* ---- layout ------------------------------------------------------------------------------------ */

/* The layout runs twice: pass 0 records the tensor table and counts floats; pass 1 (after the arenas
 * exist) hands out pointers. Both passes walk the same sequence, so offsets agree by construction
 * (model/layout.h). */
float *layout_tensor_rows(Layout *L, float **grad, const char *name, int trainable, int ndim, int64_t d0,
                          int64_t d1, int64_t d2, int64_t first, int64_t rows) {
    int64_t shape[3] = {rows, d1, d2};
    size_t size = 1;
    for (int i = 0; i < ndim; i++) size *= (size_t)shape[i];
    size_t full = ndim && rows ? size / (size_t)rows * (size_t)d0 : size;
    if (L->pass == 0) {
        TensorInfo *t = &L->m->tensors[L->n];
        snprintf(t->name, sizeof t->name, "%s", name);
        t->ndim = ndim;
        for (int i = 0; i < 4; i++) t->shape[i] = i < ndim ? shape[i] : 0;
        t->offset = L->off;
        t->size = size;
        t->full_dim0 = d0;
        t->shard_first = first;
        t->full_offset = L->full_off;
        t->full_size = full;
        /* matrices decay; norms, biases (the experts' [E, H] ones too) and positions do not */
        t->decay = ndim >= 2 && !strstr(name, ".bias") && !strstr(name, "pos_emb");
        t->trainable = trainable;
        t->per_expert = strstr(name, "%d") != NULL;
    }
    L->n++;
    float *p = L->pass ? L->m->params + L->off : NULL;
    if (grad) *grad = L->pass ? L->m->grads + L->off : NULL;
    L->off += size;
    L->full_off += full;
    return p;
}

float *layout_tensor(Layout *L, float **grad, const char *name, int trainable, int ndim, int64_t d0,
                     int64_t d1, int64_t d2) {
    return layout_tensor_rows(L, grad, name, trainable, ndim, d0, d1, d2, 0, ndim ? d0 : 1);
}

static void layout_moe(Layout *L, MoEParams *p, MoEParams *g, const MoEConfig *mc, const char *prefix) {
    char nm[96];
    int E = mc->E, C = mc->C, H = mc->H, H1 = activation_in_width(mc->act, H);
#define NAME(s) (snprintf(nm, sizeof nm, "%s.%s", prefix, s), nm)
    if (router_info(mc->router)->learned)
        p->router_w = layout_tensor(L, &g->router_w, NAME("router.weight"), 1, 2, E, C, 0);
    /* the experts: this layout's shard of them (all E unless expert parallel) */
    int64_t first = (int64_t)E / L->parts * L->part, rows = E / L->parts;
    p->w1 = layout_tensor_rows(L, &g->w1, NAME("experts.fc1.weight"), 1, 3, E, H1, C, first, rows);
    p->b1 = layout_tensor_rows(L, &g->b1, NAME("experts.fc1.bias"), 1, 2, E, H1, 0, first, rows);
    p->w2 = layout_tensor_rows(L, &g->w2, NAME("experts.fc2.weight"), 1, 3, E, C, H, first, rows);
    p->b2 = layout_tensor_rows(L, &g->b2, NAME("experts.fc2.bias"), 1, 2, E, C, 0, first, rows);
    if (mc->shared_expert) {
        p->sw1 = layout_tensor(L, &g->sw1, NAME("shared.fc1.weight"), 1, 2, H1, C, 0);
        p->sb1 = layout_tensor(L, &g->sb1, NAME("shared.fc1.bias"), 1, 1, H1, 0, 0);
        p->sw2 = layout_tensor(L, &g->sw2, NAME("shared.fc2.weight"), 1, 2, C, H, 0);
        p->sb2 = layout_tensor(L, &g->sb2, NAME("shared.fc2.bias"), 1, 1, C, 0, 0);
    }
    if (mc->use_expert_bias) p->expert_bias = layout_tensor(L, &g->expert_bias, NAME("expert_bias"), 0, 1, E, 0, 0);
#undef NAME
}

/* The Llama / Mixtral family under HF's tensor names. q_proj, k_proj and v_proj lie back to back, so
 * qkv_w is the fused [(NH + 2 NKV) hd, C] matrix; so do an MLP's gate_proj and up_proj (fc1_w: gate rows,
 * then up rows, ACT_SWIGLU's order). The experts are slabs without biases (no_bias): w1 [E, 2H, C] holds
 * expert e's HF w1 (gate) then w3 (up) rows, w2 [E, C, H] (llama_hf.c splits them into HF's tensors). */
static void layout_llama(Layout *L) {
    Model *m = L->m;
    const ModelConfig *c = &m->cfg;
    int C = c->d_model, V = c->vocab_size, H = c->d_ff, NH = c->num_heads, hd = C / NH;
    int NKV = c->num_key_value_heads ? c->num_key_value_heads : NH;
    ModelParams *p = &m->p, *g = &m->g;
    char nm[96];
    p->wte = layout_tensor(L, &g->wte, "model.embed_tokens.weight", 1, 2, V, C, 0);
    for (int l = 0; l < c->num_layers; l++) {
        LayerParams *lp = &p->layers[l], *lg = &g->layers[l];
#define NAME(s) (snprintf(nm, sizeof nm, "model.layers.%d.%s", l, s), nm)
        lp->ln1_w = layout_tensor(L, &lg->ln1_w, NAME("input_layernorm.weight"), 1, 1, C, 0, 0);
        lp->qkv_w = layout_tensor(L, &lg->qkv_w, NAME("self_attn.q_proj.weight"), 1, 2, NH * hd, C, 0);
        layout_tensor(L, NULL, NAME("self_attn.k_proj.weight"), 1, 2, NKV * hd, C, 0);
        layout_tensor(L, NULL, NAME("self_attn.v_proj.weight"), 1, 2, NKV * hd, C, 0);
        lp->out_w = layout_tensor(L, &lg->out_w, NAME("self_attn.o_proj.weight"), 1, 2, C, NH * hd, 0);
        lp->ln2_w = layout_tensor(L, &lg->ln2_w, NAME("post_attention_layernorm.weight"), 1, 1, C, 0, 0);
        if (config_block_is_sparse(c, l)) {
            const MoEConfig *mc = &m->moe_cfg;
            int E = mc->E;
            int64_t first = (int64_t)E / L->parts * L->part, rows = E / L->parts;
            MoEParams *mp = &lp->moe, *mg = &lg->moe;
            mp->router_w = layout_tensor(L, &mg->router_w, NAME("block_sparse_moe.gate.weight"), 1, 2, E, C, 0);
            mp->w1 = layout_tensor_rows(L, &mg->w1, NAME("block_sparse_moe.experts.w1_w3.weight"), 1, 3, E, 2 * H, C, first, rows);
            mp->w2 = layout_tensor_rows(L, &mg->w2, NAME("block_sparse_moe.experts.w2.weight"), 1, 3, E, C, H, first, rows);
        } else {
            lp->fc1_w = layout_tensor(L, &lg->fc1_w, NAME("mlp.gate_proj.weight"), 1, 2, H, C, 0);
            layout_tensor(L, NULL, NAME("mlp.up_proj.weight"), 1, 2, H, C, 0);
            lp->fc2_w = layout_tensor(L, &lg->fc2_w, NAME("mlp.down_proj.weight"), 1, 2, C, H, 0);
        }
#undef NAME
    }
    p->lnf_w = layout_tensor(L, &g->lnf_w, "model.norm.weight", 1, 1, C, 0, 0);
    if (!c->tie_word_embeddings) p->lm_head = layout_tensor(L, &g->lm_head, "lm_head.weight", 1, 2, V, C, 0);
}

static void layout_model(Layout *L) {
    Model *m = L->m;
    const ModelConfig *c = &m->cfg;
    if (config_is_llama(c)) {
        layout_llama(L);
        return;
    }
    int C = c->d_model, V = c->vocab_size, H = c->d_ff, H1 = activation_in_width(c->hidden_act, H);
    int rms = c->norm_type == NORM_RMS;
    ModelParams *p = &m->p, *g = &m->g;
    char nm[96];
    p->wte = layout_tensor(L, &g->wte, "tok_emb.weight", 1, 2, V, C, 0);
    if (!c->rope) p->wpe = layout_tensor(L, &g->wpe, "pos_emb.weight", 1, 2, c->n_positions, C, 0);
    for (int l = 0; l < c->num_layers; l++) {
        LayerParams *lp = &p->layers[l], *lg = &g->layers[l];
#define NAME(s) (snprintf(nm, sizeof nm, "blocks.%d.%s", l, s), nm)
        lp->ln1_w = layout_tensor(L, &lg->ln1_w, NAME("ln1.weight"), 1, 1, C, 0, 0);
        if (!rms) lp->ln1_b = layout_tensor(L, &lg->ln1_b, NAME("ln1.bias"), 1, 1, C, 0, 0);
        lp->qkv_w = layout_tensor(L, &lg->qkv_w, NAME("attn.qkv.weight"), 1, 2, 3 * C, C, 0);
        lp->qkv_b = layout_tensor(L, &lg->qkv_b, NAME("attn.qkv.bias"), 1, 1, 3 * C, 0, 0);
        lp->out_w = layout_tensor(L, &lg->out_w, NAME("attn.out.weight"), 1, 2, C, C, 0);
        lp->out_b = layout_tensor(L, &lg->out_b, NAME("attn.out.bias"), 1, 1, C, 0, 0);
        lp->ln2_w = layout_tensor(L, &lg->ln2_w, NAME("ln2.weight"), 1, 1, C, 0, 0);
        if (!rms) lp->ln2_b = layout_tensor(L, &lg->ln2_b, NAME("ln2.bias"), 1, 1, C, 0, 0);
        if (config_block_is_sparse(c, l)) {
            char prefix[64];
            snprintf(prefix, sizeof prefix, "blocks.%d.moe", l);
            layout_moe(L, &lp->moe, &lg->moe, &m->moe_cfg, prefix);
        } else {
            lp->fc1_w = layout_tensor(L, &lg->fc1_w, NAME("ffn.fc1.weight"), 1, 2, H1, C, 0);
            lp->fc1_b = layout_tensor(L, &lg->fc1_b, NAME("ffn.fc1.bias"), 1, 1, H1, 0, 0);
            lp->fc2_w = layout_tensor(L, &lg->fc2_w, NAME("ffn.fc2.weight"), 1, 2, C, H, 0);
            lp->fc2_b = layout_tensor(L, &lg->fc2_b, NAME("ffn.fc2.bias"), 1, 1, C, 0, 0);
        }
#undef NAME
    }
    if (c->model_type == MODEL_LM) {
        p->lnf_w = layout_tensor(L, &g->lnf_w, "ln_f.weight", 1, 1, C, 0, 0);
        if (!rms) p->lnf_b = layout_tensor(L, &g->lnf_b, "ln_f.bias", 1, 1, C, 0, 0);
        if (!c->tie_word_embeddings) p->lm_head = layout_tensor(L, &g->lm_head, "lm_head.weight", 1, 2, V, C, 0);
        if (c->n_adaptive)   /* last: the other tensors' initial values are a full-softmax model's */
            p->ad_cluster = layout_tensor(L, &g->ad_cluster, "adaptive.cluster.weight", 1, 2, c->n_adaptive, C, 0);
    } else {
        layout_moe(L, &p->head_moe, &g->head_moe, &m->moe_cfg, "moe");
        int HH = c->head_hidden;
        p->head_w1 = layout_tensor(L, &g->head_w1, "head.fc1.weight", 1, 2, HH, C, 0);
        p->head_b1 = layout_tensor(L, &g->head_b1, "head.fc1.bias", 1, 1, HH, 0, 0);
        p->head_w2 = layout_tensor(L, &g->head_w2, "head.fc2.weight", 1, 2, V, HH, 0);
        p->head_b2 = layout_tensor(L, &g->head_b2, "head.fc2.bias", 1, 1, V, 0, 0);
    }
}

void layout_plan(Model *m, void (*fn)(Layout *), int part, int parts) {
    Layout lay = {m, 0, 0, 0, 0, part, parts};
    fn(&lay);
    m->n_tensors = lay.n;
    m->n_params = lay.off;
    m->n_params_full = lay.full_off;
}

/* Activations: a bump allocator over one block, run twice like the parameter layout (model/layout.h). */
void *layout_bump(Bump *b, size_t bytes) {
    void *p = b->base ? b->base + b->off : NULL;
    b->off += (bytes + 63) & ~(size_t)63;
    return p;
}
#define bump layout_bump

void *layout_alloc(void (*fn)(void *ctx, Bump *b), void *ctx, size_t *bytes) {
    Bump b = {NULL, 0};
    fn(ctx, &b);
    *bytes = b.off;
    b.base = moelm_calloc(1, b.off ? b.off : 1);
    if (!b.base) return NULL;
    void *mem = b.base;
    b.off = 0;
    fn(ctx, &b);
    return mem;
}
#define BF(b, n) ((float *)bump(b, sizeof(float) * (size_t)(n)))

static void layout_acts(void *ctx, Bump *b) {
    Model *m = ctx;
    const ModelConfig *c = &m->cfg;
    int B = m->B, T = m->T, N = B * T, C = c->d_model, NH = c->num_heads, V = c->vocab_size;
    int H = c->d_ff, H1 = activation_in_width(c->hidden_act, H), HH = c->head_hidden;
    int seed = c->model_type == MODEL_SEED;
    int QKV = model_qkv_width(c);
    ModelActs *a = &m->a;
    for (int l = 0; l < c->num_layers; l++) {
        LayerActs *la = &a->layers[l];
        int sparse = config_block_is_sparse(c, l);
        la->x_in = BF(b, N * C);
        la->ln1 = BF(b, N * C);
        la->ln1_mean = BF(b, N);
        la->ln1_rstd = BF(b, N);
        la->qkv = BF(b, (size_t)N * QKV);
        la->att = BF(b, (size_t)B * NH * T * T);
        la->atty = BF(b, N * C);
        la->attproj = BF(b, N * C);
        la->drop1 = bump(b, (size_t)N * C);
        la->res1 = BF(b, N * C);
        la->ln2 = seed ? NULL : BF(b, N * C);
        la->ln2_mean = BF(b, N);
        la->ln2_rstd = BF(b, N);
        la->fc_pre = sparse ? NULL : BF(b, N * H1);
        la->fc = sparse ? NULL : BF(b, N * H);
        la->ffn = BF(b, N * C);
        la->drop2 = bump(b, (size_t)N * C);
        la->res2 = seed ? BF(b, N * C) : NULL;
        if (sparse) {
            void *mem = bump(b, moe_acts_bytes(&m->moe_cfg, N));
            if (mem) moe_acts_bind(&la->moe, mem, &m->moe_cfg, N);
        }
    }
    a->x_final = BF(b, N * C);
    a->emb_mask = bump(b, (size_t)N * C);
    if (!seed) {
        a->lnf = BF(b, N * C);
        a->lnf_mean = BF(b, N);
        a->lnf_rstd = BF(b, N);
    } else {
        void *mem = bump(b, moe_acts_bytes(&m->moe_cfg, N));
        if (mem) moe_acts_bind(&a->head_moe, mem, &m->moe_cfg, N);
        a->hm_out = BF(b, N * C);
        a->hm = BF(b, N * C);
        a->hm_drop = BF(b, N * C);
        a->head_mask = bump(b, (size_t)N * C);
        a->head_pre = BF(b, N * HH);
        a->head_h = BF(b, N * HH);
    }
    a->logits = BF(b, (size_t)N * (V + m->ad.n));
    if (m->ad.n) {
        void *mem = bump(b, adaptive_acts_bytes(&m->ad, N));
        if (mem) adaptive_acts_bind(&a->ad, mem, a->logits, &m->ad, N);
        a->ad_clog = BF(b, (size_t)N * m->ad.n);
    }
    a->losses = BF(b, N);
    a->lse = BF(b, N);
    a->inputs = bump(b, sizeof(int) * N);
    a->targets = bump(b, sizeof(int) * N);
    if (config_uses_rope(c)) {
        int hd = C / NH, P = c->n_positions;
        a->rope_cos = BF(b, (size_t)P * hd / 2);
        a->rope_sin = BF(b, (size_t)P * hd / 2);
        a->rope_pos = bump(b, sizeof(int) * N);
    }
    /* scratch for the backward pass, shared by all layers */
    ModelScratch *s = &m->s;
    int wide = H1 > HH ? H1 : HH;
    s->dres = BF(b, N * C);
    s->dbuf = BF(b, N * C);
    s->dbuf2 = BF(b, N * C);
    s->dqkv = BF(b, (size_t)N * QKV);
    s->datt = BF(b, (size_t)B * NH * T * T);
    s->dfc = BF(b, (size_t)N * wide);
    s->dfc2 = BF(b, (size_t)N * wide);
    s->dlosses = BF(b, N);
}

/* ---- create / free ----------------------------------------------------------------------------- */

/* x = the held part of a tensor of N(0, std) values: the whole tensor's draws are made (the stream
 * after it is the same whatever part is held), the held ones kept. */
void layout_init_normal(float *x, const TensorInfo *t, float std, Rng *r) {
    size_t skip = tensor_held_first(t);
    for (size_t i = 0; i < t->full_size; i++) {
        float v = std * rng_normal(r);
        if (i >= skip && i - skip < t->size) x[i - skip] = v;
    }
}

static void init_params(Model *m, uint64_t seed) {
    Rng r;
    rng_seed(&r, seed);
    const ModelConfig *c = &m->cfg;
    /* GPT-2's scheme: N(0, 0.02) for matrices, the residual projections scaled by 1/sqrt(2L),
     * zero biases, unit norm weights; the router at N(0, sqrt(0.1 / C)) (Switch's small router init). */
    float resid_std = 0.02f / sqrtf(2.0f * (float)c->num_layers);
    if (config_is_llama(c)) {
        /* HF's _init_weights: N(0, initializer_range 0.02) for every matrix, ones for the norms */
        for (int i = 0; i < m->n_tensors; i++) {
            TensorInfo *t = &m->tensors[i];
            float *x = m->params + t->offset;
            if (t->ndim == 1) for (size_t k = 0; k < t->size; k++) x[k] = 1.0f;
            else layout_init_normal(x, t, 0.02f, &r);
        }
        return;
    }
    for (int i = 0; i < m->n_tensors; i++) {
        TensorInfo *t = &m->tensors[i];
        float *x = m->params + t->offset;
        const char *nm = t->name;
        if (strstr(nm, "ln") && strstr(nm, ".weight") && t->ndim == 1) {
            for (size_t k = 0; k < t->size; k++) x[k] = 1.0f;
        } else if (t->ndim == 1 || strstr(nm, ".bias") || strstr(nm, "expert_bias")) {
            memset(x, 0, sizeof(float) * t->size);
        } else if (strstr(nm, "router.weight")) {
            layout_init_normal(x, t, sqrtf(0.1f / (float)c->d_model), &r);
        } else if (strstr(nm, "attn.out.weight") || strstr(nm, "fc2.weight")) {
            layout_init_normal(x, t, c->model_type == MODEL_LM ? resid_std : 0.02f, &r);
        } else {
            layout_init_normal(x, t, 0.02f, &r);
        }
    }
}

moelm_status model_create(Model *m, const ModelConfig *cfg, int B, int T, uint64_t seed) {
    return model_create_sharded(m, cfg, B, T, seed, 0, 1);
}

static moelm_status model_plan_sharded(Model *m, const ModelConfig *cfg, int part, int parts) {
    if (cfg->model_type == MODEL_SWITCH) return encdec_plan(m, cfg, part, parts);
    memset(m, 0, sizeof *m);
    moelm_status st = config_check(cfg);
    if (st) return st;
    m->cfg = *cfg;
    m->train_dropout = cfg->dropout_rate;
    m->moe_cfg = config_moe(cfg);
    int E = m->moe_cfg.E;
    if (parts < 1 || part < 0 || part >= parts || E % parts)
        return moelm_fail(MOELM_ERR_CONFIG, "cannot hold part %d of %d of %d experts (the parts must divide the experts)",
                          part, parts, E);
    m->moe_cfg.e_first = E / parts * part;
    if (cfg->n_adaptive) {
        AdaptiveShape *ad = &m->ad;
        ad->V = cfg->vocab_size;
        ad->C = cfg->d_model;
        ad->n = cfg->n_adaptive;
        memcpy(ad->cut, cfg->adaptive_cutoffs, sizeof(int) * ad->n);
        ad->cut[ad->n] = ad->V;
    }
    int L = cfg->num_layers;
    m->p.layers = moelm_calloc(L ? L : 1, sizeof(LayerParams));
    m->g.layers = moelm_calloc(L ? L : 1, sizeof(LayerParams));
    m->a.layers = moelm_calloc(L ? L : 1, sizeof(LayerActs));
    m->tensors = moelm_calloc(16 + 20 * (size_t)L, sizeof(TensorInfo));
    if (!m->p.layers || !m->g.layers || !m->a.layers || !m->tensors) { model_free(m); return MOELM_ERR_NOMEM; }
    layout_plan(m, layout_model, part, parts);
    return MOELM_OK;
}

moelm_status model_plan(Model *m, const ModelConfig *cfg) { return model_plan_sharded(m, cfg, 0, 1); }

/* model_create_sharded's body; blank: no initialisation, params and grads left unwritten */
static moelm_status create(Model *m, const ModelConfig *cfg, int B, int T, uint64_t seed, int part, int parts, int blank) {
    memset(m, 0, sizeof *m);
    moelm_status st = config_check(cfg);
    if (st) return st;
    if (B < 1 || T < 1) return moelm_fail(MOELM_ERR_CONFIG, "batch size and sequence length must be positive (got %d x %d)", B, T);
    if (T > cfg->n_positions)
        return moelm_fail(MOELM_ERR_CONFIG, "sequence length %d exceeds n_positions %d", T, cfg->n_positions);
    if ((st = model_plan_sharded(m, cfg, part, parts))) return st;
    m->B = B;
    m->T = T;
    m->params = blank ? moelm_malloc(sizeof(float) * m->n_params) : moelm_calloc(m->n_params, sizeof(float));
    m->grads = blank ? moelm_malloc(sizeof(float) * m->n_params) : moelm_calloc(m->n_params, sizeof(float));
    if (!m->params || !m->grads) { model_free(m); return MOELM_ERR_NOMEM; }
    Layout lay = {m, 1, 0, 0, 0, part, parts};
    layout_model(&lay);
    m->acts_mem = layout_alloc(layout_acts, m, &m->acts_bytes);
    if (!m->acts_mem) { model_free(m); return MOELM_ERR_NOMEM; }
    if (config_uses_rope(cfg)) {
        rope_tables(m->a.rope_cos, m->a.rope_sin, cfg->n_positions, cfg->d_model / cfg->num_heads, cfg->rope_theta);
        rope_positions(m->a.rope_pos, B, T, 0);
    }
    if (!blank) init_params(m, seed);
    rng_seed(&m->rng, seed ^ 0xD5A61266F0C9392Cull);
    return MOELM_OK;
}

moelm_status model_create_sharded(Model *m, const ModelConfig *cfg, int B, int T, uint64_t seed, int part, int parts) {
    if (cfg->model_type == MODEL_SWITCH) return model_create_encdec(m, cfg, B, T, T, seed, part, parts);
    return create(m, cfg, B, T, seed, part, parts, 0);
}

moelm_status model_create_blank(Model *m, const ModelConfig *cfg, int B, int T) {
    CHECK(cfg->model_type != MODEL_SWITCH);
    return create(m, cfg, B, T, 1, 0, 1, 1);
}

void model_free(Model *m) {
    encdec_free(m);
    moelm_free(m->w16);
    moelm_free(m->p.layers);
    moelm_free(m->g.layers);
    moelm_free(m->a.layers);
    moelm_free(m->tensors);
    moelm_free(m->params);
    moelm_free(m->grads);
    moelm_free(m->acts_mem);
    memset(m, 0, sizeof *m);
}

void model_zero_grad(Model *m) { memset(m->grads, 0, sizeof(float) * m->n_params); }

/* ---- bf16 mode ---------------------------------------------------------------------------------- */

/* Rows held of the tensor whose values start at p (the experts' slabs hold a shard under expert
 * parallelism). */
static int held_rows(const Model *m, const float *p) {
    for (int i = 0; i < m->n_tensors; i++)
        if (m->params + m->tensors[i].offset == p) return (int)m->tensors[i].shape[0];
    CHECK(0 && "a matrix outside the parameter arena");
    return 0;
}

/* One matrix (E = 1) or slab of the walk below: bound at mem + *off (mem NULL: counted only), then
 * packed from W when pack. */
static void bf16_one(Bf16Weight *w, const float *W, int E, int OC, int C, uint16_t *mem, size_t *off, int pack) {
    if (mem) {
        bf16_weight_bind(w, mem + *off, E, OC, C);
        if (pack) bf16_weight_pack(w, W, E, OC, C);
    }
    *off += (size_t)E * bf16_weight_size(OC, C);
}

static void bf16_moe(const Model *m, MoEParams *p, uint16_t *mem, size_t *off, int pack) {
    const MoEConfig *mc = &m->moe_cfg;
    int C = mc->C, H = mc->H, H1 = activation_in_width(mc->act, H), E = held_rows(m, p->w1);
    bf16_one(&p->w1_16, p->w1, E, H1, C, mem, off, pack);
    bf16_one(&p->w2_16, p->w2, E, C, H, mem, off, pack);
    if (p->sw1) {
        bf16_one(&p->sw1_16, p->sw1, 1, H1, C, mem, off, pack);
        bf16_one(&p->sw2_16, p->sw2, 1, C, H, mem, off, pack);
    }
}

/* Every matrix a product reads, in layout order: returns the elements of their packed copies; with
 * mem, binds the views into it, and with pack, fills them from the float parameters. The llama
 * family's q_proj, k_proj, v_proj (and an MLP's gate_proj, up_proj; an expert's w1, w3) are separate
 * tensors lying back to back in the arena (layout_llama): qkv_w (fc1_w, w1) spans them, one matrix
 * packed as one, as its products read it. */
static size_t bf16_walk(Model *m, uint16_t *mem, int pack) {
    const ModelConfig *c = &m->cfg;
    int C = c->d_model, V = c->vocab_size, H = c->d_ff, H1 = activation_in_width(c->hidden_act, H);
    ModelParams *p = &m->p;
    size_t off = 0;
    for (int l = 0; l < c->num_layers; l++) {
        LayerParams *lp = &p->layers[l];
        bf16_one(&lp->qkv16, lp->qkv_w, 1, model_qkv_width(&m->cfg), C, mem, &off, pack);
        bf16_one(&lp->out16, lp->out_w, 1, C, C, mem, &off, pack);
        if (lp->fc1_w) {
            bf16_one(&lp->fc1_16, lp->fc1_w, 1, H1, C, mem, &off, pack);
            bf16_one(&lp->fc2_16, lp->fc2_w, 1, C, H, mem, &off, pack);
        } else {
            bf16_moe(m, &lp->moe, mem, &off, pack);
        }
    }
    if (c->model_type != MODEL_SEED) {   /* lm, llama, mixtral: one head matrix */
        bf16_one(&p->lm16, c->tie_word_embeddings ? p->wte : p->lm_head, 1, V, C, mem, &off, pack);
    } else {
        bf16_moe(m, &p->head_moe, mem, &off, pack);
        bf16_one(&p->head1_16, p->head_w1, 1, c->head_hidden, C, mem, &off, pack);
        bf16_one(&p->head2_16, p->head_w2, 1, V, c->head_hidden, mem, &off, pack);
    }
    return off;
}

/* Clears every packed view (the float products again) */
static void bf16_unbind(Model *m) {
    ModelParams *p = &m->p;
    Bf16Weight none = {NULL, NULL};
    for (int l = 0; l < m->cfg.num_layers; l++) {
        LayerParams *lp = &p->layers[l];
        lp->qkv16 = lp->out16 = lp->fc1_16 = lp->fc2_16 = none;
        lp->moe.w1_16 = lp->moe.w2_16 = lp->moe.sw1_16 = lp->moe.sw2_16 = none;
    }
    p->head_moe.w1_16 = p->head_moe.w2_16 = p->head_moe.sw1_16 = p->head_moe.sw2_16 = none;
    p->lm16 = p->head1_16 = p->head2_16 = none;
}

moelm_status model_set_bf16(Model *m, int on) {
    if (m->ed)   /* the encoder-decoder's products have no bf16 path yet */
        return on ? moelm_fail(MOELM_ERR_CONFIG, "bf16 mode is not yet supported for switch_transformers models")
                  : MOELM_OK;
    if (!on) {
        bf16_unbind(m);
        moelm_free(m->w16);
        m->w16 = NULL;
        m->w16_n = 0;
        m->bf16 = 0;
        return MOELM_OK;
    }
    if (m->bf16) return MOELM_OK;
    size_t n = bf16_walk(m, NULL, 0);
    uint16_t *mem = moelm_malloc(sizeof(uint16_t) * (n ? n : 1));
    if (!mem || gemm_bf16_reserve() != 0) {
        moelm_free(mem);
        return moelm_fail(MOELM_ERR_NOMEM, "bf16 mode: out of memory for %.0f MB of packed weights",
                          2.0 * (double)n / 1e6);
    }
    m->w16 = mem;
    m->w16_n = n;
    m->bf16 = 1;
    bf16_walk(m, m->w16, 1);
    return MOELM_OK;
}

static size_t moe_expert_params(const MoEConfig *mc) {
    int H1 = activation_in_width(mc->act, mc->H);
    return (size_t)H1 * mc->C + (size_t)mc->C * mc->H + (mc->no_bias ? 0 : (size_t)H1 + mc->C);
}

void model_param_counts(const Model *m, size_t *total, size_t *active, size_t *per_expert) {
    size_t tot = 0;
    for (int i = 0; i < m->n_tensors; i++) if (m->tensors[i].trainable) tot += m->tensors[i].full_size;
    int moe_layers = config_num_moe_layers(&m->cfg);
    size_t pe = moe_layers ? moe_expert_params(&m->moe_cfg) : 0;
    int E = m->moe_cfg.E, K = moe_active_experts(&m->moe_cfg);
    if (total) *total = tot;
    if (active) *active = tot - (size_t)moe_layers * pe * (size_t)(E - K);
    if (per_expert) *per_expert = pe;
}

/* ---- forward ----------------------------------------------------------------------------------- */

static void norm_fwd(const Model *m, float *out, float *mean, float *rstd, const float *inp, const float *w,
                     const float *b, int N) {
    int C = m->cfg.d_model;
    if (m->cfg.norm_type == NORM_RMS) rmsnorm_forward(out, rstd, inp, w, N, C, m->cfg.layer_norm_epsilon);
    else layernorm_forward(out, mean, rstd, inp, w, b, N, C, m->cfg.layer_norm_epsilon);
}

static void norm_bwd(const Model *m, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                     const float *w, const float *mean, const float *rstd, int N) {
    int C = m->cfg.d_model;
    if (m->cfg.norm_type == NORM_RMS) rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, C);
    else layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C);
}

/* A linear layer's products, in bf16 when the model packed its weight (bf16 mode: w16->fwd set) */
static void linear_fwd(float *out, const float *inp, const float *w, const Bf16Weight *w16, const float *b, int N,
                       int C, int OC) {
    if (w16->fwd) matmul_forward_bf16(out, inp, w16, b, N, C, OC);
    else matmul_forward(out, inp, w, b, N, C, OC);
}

static void linear_bwd(float *dinp, float *dw, float *db, const float *dout, const float *inp, const float *w,
                       const Bf16Weight *w16, int N, int C, int OC) {
    if (w16->fwd) matmul_backward_bf16(dinp, dw, db, dout, inp, w16, N, C, OC);
    else matmul_backward(dinp, dw, db, dout, inp, w, N, C, OC);
}

/* Dense FFN: out[N,C] = fc2(act(fc1(inp))) saving fc_pre and fc. */
static void ffn_fwd(const Model *m, float *out, float *fc_pre, float *fc, const float *inp, const LayerParams *lp, int N) {
    int C = m->cfg.d_model, H = m->cfg.d_ff, H1 = activation_in_width(m->cfg.hidden_act, H);
    linear_fwd(fc_pre, inp, lp->fc1_w, &lp->fc1_16, lp->fc1_b, N, C, H1);
    activation_forward(fc, fc_pre, m->cfg.hidden_act, N, H);
    linear_fwd(out, fc, lp->fc2_w, &lp->fc2_16, lp->fc2_b, N, H, C);
}

/* The attention dimensions of a block: the lm's and seed's fused [N, 3C] q, k, v of NH heads, or the llama
 * family's [N, (NH + 2 NKV) hd] with grouped-query attention (scale 1/sqrt(hd), causal in both). */
static AttnDims attn_dims(const Model *m) {
    const ModelConfig *c = &m->cfg;
    int NH = c->num_heads, hd = c->d_model / NH;
    int NKV = config_is_llama(c) && c->num_key_value_heads ? c->num_key_value_heads : NH;
    size_t ld = (size_t)model_qkv_width(c);
    AttnDims d = {m->B, m->T, m->T, NH, NKV, hd, ld, ld, ld, (size_t)NH * hd, 1.0f / sqrtf((float)hd), 1};
    return d;
}

/* atty[N, NH hd] = attention of the block's input inp[N, C], saving qkv (after the rotation) and att. */
static void attn_block_fwd(const Model *m, LayerActs *la, const LayerParams *lp, const float *inp) {
    const ModelConfig *c = &m->cfg;
    int N = m->B * m->T, C = c->d_model, NH = c->num_heads, QKV = model_qkv_width(c);
    linear_fwd(la->qkv, inp, lp->qkv_w, &lp->qkv16, lp->qkv_b, N, C, QKV);
    if (!config_uses_rope(c)) {
        attention_forward(la->atty, la->att, la->qkv, m->B, m->T, C, NH, 1);
        return;
    }
    AttnDims d = attn_dims(m);
    const ModelActs *a = &m->a;
    /* q and k heads are one run of NH + NKV heads at the start of each row */
    rope_forward(la->qkv, a->rope_pos, a->rope_cos, a->rope_sin, c->n_positions, N, d.NH + d.NKV, d.hd, d.ldq);
    const float *q = la->qkv, *k = q + (size_t)d.NH * d.hd, *v = k + (size_t)d.NKV * d.hd;
    attn_forward(la->atty, la->att, q, k, v, NULL, NULL, &d);
}

/* dinp[N, C] (assigned) and the q, k, v weights' gradient from datty[N, NH hd]; dqkv and datt scratch. */
static void attn_block_bwd(Model *m, float *dinp, LayerParams *lg, const float *datty, LayerActs *la,
                           const LayerParams *lp, const float *inp) {
    const ModelConfig *c = &m->cfg;
    ModelScratch *s = &m->s;
    int N = m->B * m->T, C = c->d_model, NH = c->num_heads, QKV = model_qkv_width(c);
    if (!config_uses_rope(c)) {
        attention_backward(s->dqkv, s->datt, datty, la->att, la->qkv, m->B, m->T, C, NH, 1);
    } else {
        AttnDims d = attn_dims(m);
        const ModelActs *a = &m->a;
        const float *q = la->qkv, *k = q + (size_t)d.NH * d.hd, *v = k + (size_t)d.NKV * d.hd;
        float *dq = s->dqkv, *dk = dq + (size_t)d.NH * d.hd, *dv = dk + (size_t)d.NKV * d.hd;
        attn_backward(dq, dk, dv, NULL, s->datt, datty, la->att, q, k, v, &d);
        rope_backward(s->dqkv, a->rope_pos, a->rope_cos, a->rope_sin, c->n_positions, N, d.NH + d.NKV, d.hd, d.ldq);
    }
    linear_bwd(dinp, lg->qkv_w, lg->qkv_b, s->dqkv, inp, lp->qkv_w, &lp->qkv16, N, C, QKV);
}

/* Mixtral's load-balancing loss as HF computes it (load_balancing_loss_func): the router logits of every
 * layer as one [L N, E] batch, p = softmax, f_e = the share of its L N rows whose top-k holds e (summed
 * over the k ranks), P_e = the mean of p[., e]; loss = E sum_e f_e P_e. Counts are over the routing group
 * (every rank's tokens, as the MoE layer counts assigned[]). Returns 1 when the model has it (mixtral, the
 * topk router, output_router_logits); fills cnt[E] = f_e and P[E]. */
static int hf_balance(const Model *m, double *f, double *P) {
    const ModelConfig *c = &m->cfg;
    const MoEConfig *mc = &m->moe_cfg;
    if (c->model_type != MODEL_MIXTRAL || !c->output_router_logits || mc->router != ROUTER_TOPK) return 0;
    int E = mc->E, N = m->B * m->T, L = 0;
    for (int e = 0; e < E; e++) f[e] = P[e] = 0.0;
    double Ng = 0.0;
    for (int l = 0; l < c->num_layers; l++) {
        if (!config_block_is_sparse(c, l)) continue;
        const MoEActs *ma = &m->a.layers[l].moe;
        for (int e = 0; e < E; e++) f[e] += ma->assigned[e];
        for (int t = 0; t < N; t++)
            for (int e = 0; e < E; e++) P[e] += ma->probs[(size_t)t * E + e];
        Ng = ma->Ng;
        L++;
    }
    comm_allreduce_f64(COMM_WORLD, P, (size_t)E);
    for (int e = 0; e < E; e++) {
        f[e] /= (double)L * Ng;
        P[e] /= (double)L * Ng;
    }
    return 1;
}

void model_pass_begin(Model *m, int B, int training) {
    m->pass_row0 = 0;
    if (training || router_info(m->cfg.router_type)->route == ROUTE_RANDOM_PASS) m->pass_key = rng_u64(&m->rng);
    if (training && comm_size(COMM_WORLD) > 1) comm_exscan_i32(COMM_WORLD, &B, &m->pass_row0, 1);
}

uint64_t model_site_key(const Model *m, int layer, DrawSite site) {
    CHECK(layer >= 0 && site >= 0 && site < SITES);
    return rng_key(m->pass_key, (uint64_t)layer * SITES + (uint64_t)site);
}

void model_dropout(const Model *m, int layer, DrawSite site, float *out, uint8_t *mask, const float *inp, float p,
                   size_t n, int B) {
    dropout_forward(out, mask, inp, p, n, model_site_key(m, layer, site), (uint64_t)m->pass_row0 * (n / (size_t)B));
}

/* Where the training forward keeps stage s's vector v (steps.h): the block's saved activations, the
 * next block's input for its output. */
static float *forward_vec(Model *m, int s, StepVec v) {
    ModelActs *a = &m->a;
    int L = m->cfg.num_layers;
    if (v == SV_X) return s < L ? a->layers[s].x_in : a->x_final;
    if (v == SV_OUT) return s + 1 < L ? a->layers[s + 1].x_in : a->x_final;
    if (s == L) {
        float *head[] = {[SV_LNF] = a->lnf, [SV_HM_OUT] = a->hm_out, [SV_HM] = a->hm, [SV_HM_DROP] = a->hm_drop,
                         [SV_LOGITS] = a->logits};
        CHECK(v >= SV_LNF && v <= SV_LOGITS);
        return head[v];
    }
    LayerActs *la = &a->layers[s];
    float *block[] = {[SV_LN1] = la->ln1, [SV_ATTY] = la->atty, [SV_ATTPROJ] = la->attproj, [SV_RES1] = la->res1,
                      [SV_LN2] = la->ln2, [SV_FFN] = la->ffn, [SV_RES2] = la->res2};
    CHECK(v > SV_X && v < SV_OUT);
    return block[v];
}

/* The norm a step names in stage s: its weights, their gradients and the statistics its forward saves */
typedef struct { const float *w, *b; float *dw, *db, *mean, *rstd; } NormUse;

static NormUse norm_use(Model *m, int s, NormOf which) {
    ModelActs *a = &m->a;
    if (which == NORM_OF_LNF) return (NormUse){m->p.lnf_w, m->p.lnf_b, m->g.lnf_w, m->g.lnf_b, a->lnf_mean, a->lnf_rstd};
    const LayerParams *lp = &m->p.layers[s];
    LayerParams *lg = &m->g.layers[s];
    LayerActs *la = &a->layers[s];
    if (which == NORM_OF_LN1) return (NormUse){lp->ln1_w, lp->ln1_b, lg->ln1_w, lg->ln1_b, la->ln1_mean, la->ln1_rstd};
    return (NormUse){lp->ln2_w, lp->ln2_b, lg->ln2_w, lg->ln2_b, la->ln2_mean, la->ln2_rstd};
}

/* The [N, C] mask of dropout site `site` in stage s */
static uint8_t *drop_mask(Model *m, int s, DrawSite site) {
    ModelActs *a = &m->a;
    return site == SITE_EMBED ? a->emb_mask : site == SITE_ATTN ? a->layers[s].drop1
         : site == SITE_FFN ? a->layers[s].drop2 : a->head_mask;
}

/* Runs step st of stage s over the batch (N = B*T rows), saving what backward_step reads. */
static void forward_step(Model *m, const ModelStep *st, int s, const int *inputs, int training) {
    const ModelConfig *c = &m->cfg;
    int B = m->B, N = B * m->T, C = c->d_model, NH = c->num_heads, V = c->vocab_size, L = c->num_layers;
    ModelActs *a = &m->a;
    const ModelParams *p = &m->p;
    LayerActs *la = s < L ? &a->layers[s] : NULL;
    const LayerParams *lp = s < L ? &p->layers[s] : NULL;
    float *out = forward_vec(m, s, st->out);
    const float *in = st->op == STEP_EMBED ? NULL : forward_vec(m, s, st->in);
    switch (st->op) {
    case STEP_EMBED:
        encoder_forward(out, inputs, p->wte, p->wpe, B, m->T, C);   /* wpe NULL: RoPE */
        break;
    case STEP_NORM: {
        NormUse u = norm_use(m, s, st->norm);
        norm_fwd(m, out, u.mean, u.rstd, in, u.w, u.b, N);
        break;
    }
    case STEP_ATTN:
        CHECK(out == la->atty);
        attn_block_fwd(m, la, lp, in);
        break;
    case STEP_PROJ:
        linear_fwd(out, in, lp->out_w, &lp->out16, lp->out_b, N, NH * (C / NH), C);
        break;
    case STEP_DROP:
        model_dropout(m, s, st->site, out, drop_mask(m, s, st->site), in, m->pdrop, (size_t)N * C, B);
        break;
    case STEP_ADD:
        add_forward(out, in, forward_vec(m, s, st->in2), (size_t)N * C);
        break;
    case STEP_FFN:
        ffn_fwd(m, out, la->fc_pre, la->fc, in, lp, N);
        break;
    case STEP_MOE: {
        MoEActs *ma = la ? &la->moe : &a->head_moe;
        moe_forward(out, ma, in, inputs, la ? &lp->moe : &p->head_moe, &m->moe_cfg, N, training,
                    model_site_key(m, s, SITE_MOE));
        m->aux_loss += moe_loss(ma, &m->moe_cfg);
        break;
    }
    case STEP_LOGITS: {
        const float *W = c->tie_word_embeddings ? p->wte : p->lm_head;
        if (!m->ad.n) {
            linear_fwd(out, in, W, &p->lm16, NULL, N, C, V);
        } else if (a->ad_full) {   /* every word's log p */
            matmul_forward(out, in, W, NULL, N, C, V);
            gemm(0, 1, N, m->ad.n, C, 1.0f, in, C, p->ad_cluster, C, 0.0f, a->ad_clog, m->ad.n);
            adaptive_normalize(out, a->ad_clog, &m->ad, N);
        } else {   /* the targets' losses only */
            adaptive_forward(&a->ad, a->losses, in, W, p->ad_cluster, a->targets, &m->ad, N);
        }
        break;
    }
    case STEP_HEAD_FFN: {
        int HH = c->head_hidden;
        linear_fwd(a->head_pre, in, p->head_w1, &p->head1_16, p->head_b1, N, C, HH);
        activation_forward(a->head_h, a->head_pre, ACT_RELU, N, HH);
        linear_fwd(out, a->head_h, p->head_w2, &p->head2_16, p->head_b2, N, HH, V);
        break;
    }
    }
}

float model_forward(Model *m, const int *inputs, const int *targets, int training) {
    CHECK(!m->ed);   /* switch_transformers: encdec_forward */
    const ModelConfig *c = &m->cfg;
    int B = m->B, T = m->T, N = B * T, V = c->vocab_size;
    ModelActs *a = &m->a;
    m->pdrop = training ? m->train_dropout : 0.0f;
    for (int i = 0; i < N; i++) CHECK(inputs[i] >= 0 && inputs[i] < V);
    if (m->bf16) bf16_walk(m, m->w16, 1);   /* the packed copies from the current weights */
    memcpy(a->inputs, inputs, sizeof(int) * N);
    for (int i = 0; i < N; i++) a->targets[i] = targets ? targets[i] : -1;
    model_pass_begin(m, B, training);
    a->ad_full = m->ad.n && (!targets || m->full_logits);

    m->aux_loss = 0.0f;
    double f[256], P[256];
    for (int s = 0; s <= c->num_layers; s++) {   /* the blocks, then the head (model_steps) */
        if (s == c->num_layers && hf_balance(m, f, P)) {   /* after the blocks: every layer's routing */
            double aux = 0.0;
            for (int e = 0; e < m->moe_cfg.E; e++) aux += f[e] * P[e];
            m->aux_loss += c->router_aux_loss_coef * (float)(m->moe_cfg.E * aux);
        }
        ModelStep st[MODEL_STEPS_MAX];
        int n = model_steps(c, s, st);
        for (int i = 0; i < n; i++) forward_step(m, &st[i], s, inputs, training);
    }
    if (!m->ad.n) {
        crossentropy_forward(a->losses, a->lse, a->logits, a->targets, N, V);
    } else if (a->ad_full) {   /* the logits are log p */
        for (int i = 0; i < N; i++) a->losses[i] = a->targets[i] >= 0 ? -a->logits[(size_t)i * V + a->targets[i]] : 0.0f;
    }   /* else adaptive_forward wrote them */
    double sum = 0.0;
    int valid = 0;
    for (int i = 0; i < N; i++) if (a->targets[i] >= 0) { sum += a->losses[i]; valid++; }
    m->n_valid = valid;
    m->loss = valid ? (float)(sum / valid) : 0.0f;
    return m->loss;
}

/* ---- backward ---------------------------------------------------------------------------------- */

/* dx[N, C] += and the router's gradient of hf_balance's loss (times the coefficient) through one layer's
 * logits: d/dlogit_j = coef E / (L Ng) * p_j (f_j - sum_e f_e p_e), the top-k shares held fixed as HF's
 * one-hot is. a->dlogits and a->dy are the layer's scratch, free after moe_backward. */
static void hf_balance_bwd(Model *m, float *dx, MoEParams *g, MoEActs *a, const float *x, const MoEParams *p,
                           const double *f, const double *P) {
    (void)P;
    const ModelConfig *c = &m->cfg;
    int E = m->moe_cfg.E, C = c->d_model, N = m->B * m->T, L = 0;
    for (int l = 0; l < c->num_layers; l++) L += config_block_is_sparse(c, l);
    double scale = (double)c->router_aux_loss_coef * E / ((double)L * a->Ng);
    for (int t = 0; t < N; t++) {
        const float *pr = a->probs + (size_t)t * E;
        float *dl = a->dlogits + (size_t)t * E;
        double fp = 0.0;
        for (int e = 0; e < E; e++) fp += f[e] * pr[e];
        for (int e = 0; e < E; e++) dl[e] = (float)(scale * pr[e] * (f[e] - fp));
    }
    /* the router's input is x (mixtral has no jitter: config_llama_check) */
    gemm(1, 0, E, C, N, 1.0f, a->dlogits, E, x, C, 1.0f, g->router_w, C);
    gemm(0, 0, N, C, E, 1.0f, a->dlogits, E, p->router_w, C, 1.0f, dx, C);
}

/* The gradients of one stage's vectors (StepVec roles) while the backward walks its steps in reverse.
 * A live role's gradient lies in one of three [N, C] buffers (ModelScratch's dres, dbuf, dbuf2), or,
 * for SV_LOGITS, over a->logits (crossentropy_backward's dlogits, in place). A role's gradient is
 * complete once the steps that read it in the forward (later ones) have run backward: then the step
 * that wrote it reads it and hands it on to its inputs and the role is spent. An ADD hands its
 * output's gradient on unchanged, so its operands share that buffer (users counts them); a step's
 * first contribution to a role takes a free buffer, and a later one (a role read by two steps: the
 * residual res1, the seed model's ln1 and every block input) is added into it, after a copy of its own
 * if another role still shares it. The stage's input's gradient is the output's of the stage before. */
#define GRAD_BUFS 4   /* the three scratch buffers, then the logits */

typedef struct {
    float *buf[GRAD_BUFS];
    int users[GRAD_BUFS];     /* live roles in each buffer (a step's temporary counts as one) */
    int at[STEP_VECS];        /* the buffer of each role's gradient; -1 while no step has written it */
    size_t n;                 /* N C: the floats of a buffer */
} StageGrads;

/* A free scratch buffer, taken (one user) */
static int grads_take(StageGrads *G) {
    for (int b = 0; b < GRAD_BUFS - 1; b++)
        if (!G->users[b]) {
            G->users[b] = 1;
            return b;
        }
    CHECK(0 && "the backward of these steps needs more than three [N, C] gradient buffers");
    return -1;
}

static float *grad_of(const StageGrads *G, StepVec v) {
    CHECK(G->at[v] >= 0);
    return G->buf[G->at[v]];
}

/* Role v's gradient is spent */
static void grad_done(StageGrads *G, StepVec v) {
    CHECK(G->at[v] >= 0);
    G->users[G->at[v]]--;
    G->at[v] = -1;
}

/* Role v's gradient in a buffer no other role shares (copied out of a shared one) */
static void grad_own(StageGrads *G, StepVec v) {
    int b = G->at[v];
    if (G->users[b] == 1) return;
    int own = grads_take(G);
    memcpy(G->buf[own], G->buf[b], sizeof(float) * G->n);
    G->users[b]--;
    G->at[v] = own;
}

/* Where a step writes its contribution to role v's gradient: the role's first takes a buffer of its
 * own (zeroed for a step that adds into its dinp: adds, the norms); a later one adds into the role's
 * when adds, and goes to a temporary that grad_end adds otherwise. */
static float *grad_begin(StageGrads *G, StepVec v, int adds) {
    if (G->at[v] < 0) {
        G->at[v] = grads_take(G);
        if (adds) memset(G->buf[G->at[v]], 0, sizeof(float) * G->n);
        return G->buf[G->at[v]];
    }
    grad_own(G, v);
    return adds ? G->buf[G->at[v]] : G->buf[grads_take(G)];
}

/* After the step: a temporary d from grad_begin is added into role v's gradient and freed */
static void grad_end(StageGrads *G, StepVec v, float *d) {
    float *dv = grad_of(G, v);
    if (d == dv) return;
    add_forward(dv, dv, d, G->n);
    for (int b = 0; b < GRAD_BUFS - 1; b++) if (G->buf[b] == d) G->users[b] = 0;
}

/* An ADD's operand v: d v += d out, sharing out's buffer when it is v's first contribution */
static void grad_pass(StageGrads *G, StepVec v, StepVec out) {
    if (G->at[v] < 0) {
        G->at[v] = G->at[out];
        G->users[G->at[v]]++;
        return;
    }
    grad_own(G, v);
    add_forward(grad_of(G, v), grad_of(G, v), grad_of(G, out), G->n);
}

/* The backward of step st of stage s (forward_step's mirror): reads its output's gradient (complete),
 * adds its inputs' contributions and the parameters' gradients, and spends the output's. f and P:
 * hf_balance's shares, or f NULL without that loss. */
static void backward_step(Model *m, StageGrads *G, const ModelStep *st, int s, const double *f, const double *P) {
    const ModelConfig *c = &m->cfg;
    int B = m->B, N = B * m->T, C = c->d_model, NH = c->num_heads, V = c->vocab_size, L = c->num_layers;
    int H = c->d_ff, H1 = activation_in_width(c->hidden_act, H), HH = c->head_hidden;
    ModelActs *a = &m->a;
    ModelScratch *sc = &m->s;
    const ModelParams *p = &m->p;
    ModelParams *g = &m->g;
    LayerActs *la = s < L ? &a->layers[s] : NULL;
    const LayerParams *lp = s < L ? &p->layers[s] : NULL;
    LayerParams *lg = s < L ? &g->layers[s] : NULL;
    const float *dout = grad_of(G, st->out);
    const float *in = st->op == STEP_EMBED ? NULL : forward_vec(m, s, st->in);
    float *din = NULL;
    switch (st->op) {
    case STEP_EMBED:
        encoder_backward(g->wte, g->wpe, dout, a->inputs, B, m->T, C);
        break;
    case STEP_DROP:   /* elementwise: in place when the output's gradient was its own */
        grad_done(G, st->out);
        din = grad_begin(G, st->in, 0);
        dropout_backward(din, dout, drop_mask(m, s, st->site), m->pdrop, G->n);
        grad_end(G, st->in, din);
        return;
    case STEP_NORM: {
        NormUse u = norm_use(m, s, st->norm);
        din = grad_begin(G, st->in, 1);
        norm_bwd(m, din, u.dw, u.db, dout, in, u.w, u.mean, u.rstd, N);
        break;
    }
    case STEP_ATTN:
        din = grad_begin(G, st->in, 0);
        attn_block_bwd(m, din, lg, dout, la, lp, in);
        break;
    case STEP_PROJ:
        din = grad_begin(G, st->in, 0);
        linear_bwd(din, lg->out_w, lg->out_b, dout, in, lp->out_w, &lp->out16, N, NH * (C / NH), C);
        break;
    case STEP_ADD:
        grad_pass(G, st->in, st->out);
        grad_pass(G, st->in2, st->out);
        break;
    case STEP_FFN:
        din = grad_begin(G, st->in, 0);
        linear_bwd(sc->dfc2, lg->fc2_w, lg->fc2_b, dout, la->fc, lp->fc2_w, &lp->fc2_16, N, H, C);
        activation_backward(sc->dfc, sc->dfc2, la->fc_pre, c->hidden_act, N, H);
        linear_bwd(din, lg->fc1_w, lg->fc1_b, sc->dfc, in, lp->fc1_w, &lp->fc1_16, N, C, H1);
        break;
    case STEP_MOE:
        din = grad_begin(G, st->in, 0);
        moe_backward(din, la ? &lg->moe : &g->head_moe, dout, la ? &la->moe : &a->head_moe, in,
                     la ? &lp->moe : &p->head_moe, &m->moe_cfg, N, 1.0f);
        if (la && f) hf_balance_bwd(m, din, &lg->moe, &la->moe, in, &lp->moe, f, P);
        break;
    case STEP_LOGITS:
        din = grad_begin(G, st->in, 0);
        if (m->ad.n)   /* dout: the saved logits, which it turns into their gradient */
            adaptive_backward(din, c->tie_word_embeddings ? g->wte : g->lm_head, g->ad_cluster, sc->dlosses, &a->ad, in,
                              c->tie_word_embeddings ? p->wte : p->lm_head, p->ad_cluster, &m->ad, N);
        else
            linear_bwd(din, c->tie_word_embeddings ? g->wte : g->lm_head, NULL, dout, in,
                       c->tie_word_embeddings ? p->wte : p->lm_head, &p->lm16, N, C, V);
        break;
    case STEP_HEAD_FFN:
        din = grad_begin(G, st->in, 0);
        linear_bwd(sc->dfc2, g->head_w2, g->head_b2, dout, a->head_h, p->head_w2, &p->head2_16, N, HH, V);
        activation_backward(sc->dfc, sc->dfc2, a->head_pre, ACT_RELU, N, HH);
        linear_bwd(din, g->head_w1, g->head_b1, sc->dfc, in, p->head_w1, &p->head1_16, N, C, HH);
        break;
    }
    if (din) grad_end(G, st->in, din);
    grad_done(G, st->out);
}

void model_backward(Model *m) {
    CHECK(!m->ed);   /* switch_transformers: encdec_backward */
    const ModelConfig *c = &m->cfg;
    int N = m->B * m->T, V = c->vocab_size;
    ModelActs *a = &m->a;
    ModelScratch *sc = &m->s;

    double f[256], P[256];
    int bal = hf_balance(m, f, P);
    float inv = m->n_valid ? 1.0f / (float)m->n_valid : 0.0f;
    for (int i = 0; i < N; i++) sc->dlosses[i] = a->targets[i] >= 0 ? inv : 0.0f;
    CHECK(!a->ad_full);   /* a forward for the distribution has no backward */
    if (!m->ad.n)
        crossentropy_backward(a->logits, a->logits, a->lse, a->targets, sc->dlosses, N, V);   /* the logits are spent */

    StageGrads G = {{sc->dres, sc->dbuf, sc->dbuf2, a->logits}, {0}, {0}, (size_t)N * c->d_model};
    for (int v = 0; v < STEP_VECS; v++) G.at[v] = -1;
    G.at[SV_LOGITS] = GRAD_BUFS - 1;
    G.users[GRAD_BUFS - 1] = 1;
    for (int s = c->num_layers; s >= 0; s--) {   /* the head, then the blocks, each stage's steps in reverse */
        ModelStep st[MODEL_STEPS_MAX];
        for (int i = model_steps(c, s, st) - 1; i >= 0; i--) backward_step(m, &G, &st[i], s, bal ? f : NULL, P);
        int x = G.at[SV_X];
        CHECK((x >= 0) == (s > 0) && G.users[GRAD_BUFS - 1] == 0);
        for (int v = 0; v < STEP_VECS; v++) G.at[v] = -1;
        if (s > 0) G.at[SV_OUT] = x;   /* the stage before's output: this one's input */
        for (int b = 0; b < GRAD_BUFS; b++) CHECK(G.users[b] == (s > 0 && b == x));
    }
}

int model_init_output_bias(Model *m, const int *ids, size_t n) {
    float *b = m->p.head_b2;
    if (!b) return 0;
    int V = m->cfg.vocab_size;
    double *count = moelm_calloc((size_t)V, sizeof(double));
    for (size_t i = 0; i < n; i++) {
        CHECK(ids[i] >= 0 && ids[i] < V);
        count[ids[i]] += 1.0;
    }
    for (int v = 0; v < V; v++) b[v] = (float)log((count[v] + 1.0) / ((double)n + V));
    moelm_free(count);
    return 1;
}

int model_moe_layers(const Model *m, MoELayer *out, int max) {
    if (m->ed) return encdec_moe_layers(m, out, max);
    Model *w = (Model *)m;   /* see model.h: the views handed out may be written through */
    int n = 0;
    for (int l = 0; l < m->cfg.num_layers; l++)
        if (config_block_is_sparse(&m->cfg, l)) {
            if (n < max) out[n] = (MoELayer){l, 0, &w->p.layers[l].moe, &w->g.layers[l].moe, &w->a.layers[l].moe, &w->moe_cfg};
            n++;
        }
    if (m->cfg.model_type == MODEL_SEED) {
        if (n < max) out[n] = (MoELayer){-1, 0, &w->p.head_moe, &w->g.head_moe, &w->a.head_moe, &w->moe_cfg};
        n++;
    }
    return n;
}
