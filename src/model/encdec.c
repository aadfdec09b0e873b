/* encdec.c: the Switch Transformer encoder-decoder (switch_transformers): parameter layout under
 * Hugging Face's names, HF's initialisation, forward, HF's losses, backward. See encdec.h for the
 * architecture and the shapes, docs/MOE.md for the choices where HF's versions differ.
 *
 * Dimensions as in encdec.h: B, Te, Td, Ne, Nd, N, C, NH, dk, I, H, E, V, NB.
 *
 * Invariants kept:
 *   - a stack's sparse blocks route each sequence as one group (MoEConfig.group_size = T): HF's capacity
 *     counted per sequence in token order, padding included;
 *   - the router losses are computed here over a stack's sparse blocks (moe.c's own aux term is off:
 *     aux_coef 0); their gradient enters moe_backward as aux_dprobs (the aux loss) and as the layers'
 *     z_coef, the stack's coefficient over its sparse blocks (the z loss: the mean over blocks);
 *   - the backward reads only what the forward saved.
 */
#include "model/encdec.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include "backend/comm.h"
#include "model/layout.h"
#include "ops/attn.h"
#include "ops/ops.h"

/* ---- layout ------------------------------------------------------------------------------------ */

static void layout_block(Layout *L, T5BlockParams *p, T5BlockParams *g, const ModelConfig *c, const MoEConfig *mc,
                         int dec, int i) {
    int C = c->d_model, I = c->num_heads * c->sw.d_kv, H = c->d_ff, E = mc->E, NB = c->sw.relative_attention_num_buckets;
    const char *stack = dec ? "decoder" : "encoder";
    char nm[96];
#define NAME(fmt, ...) (snprintf(nm, sizeof nm, "%s.block.%d." fmt, stack, i, __VA_ARGS__), nm)
    p->q = layout_tensor(L, &g->q, NAME("layer.%d.SelfAttention.q.weight", 0), 1, 2, I, C, 0);
    p->k = layout_tensor(L, &g->k, NAME("layer.%d.SelfAttention.k.weight", 0), 1, 2, I, C, 0);
    p->v = layout_tensor(L, &g->v, NAME("layer.%d.SelfAttention.v.weight", 0), 1, 2, I, C, 0);
    p->o = layout_tensor(L, &g->o, NAME("layer.%d.SelfAttention.o.weight", 0), 1, 2, C, I, 0);
    (void)NB;
    p->sa_ln = layout_tensor(L, &g->sa_ln, NAME("layer.%d.layer_norm.weight", 0), 1, 1, C, 0, 0);
    if (dec) {
        p->cq = layout_tensor(L, &g->cq, NAME("layer.%d.EncDecAttention.q.weight", 1), 1, 2, I, C, 0);
        p->ck = layout_tensor(L, &g->ck, NAME("layer.%d.EncDecAttention.k.weight", 1), 1, 2, I, C, 0);
        p->cv = layout_tensor(L, &g->cv, NAME("layer.%d.EncDecAttention.v.weight", 1), 1, 2, I, C, 0);
        p->co = layout_tensor(L, &g->co, NAME("layer.%d.EncDecAttention.o.weight", 1), 1, 2, C, I, 0);
        p->ca_ln = layout_tensor(L, &g->ca_ln, NAME("layer.%d.layer_norm.weight", 1), 1, 1, C, 0, 0);
    }
    int f = dec ? 2 : 1;   /* the FF layer's index in the block */
    if (config_switch_block_is_sparse(c, dec, i)) {
        int64_t first = (int64_t)E / L->parts * L->part, rows = E / L->parts;
        MoEParams *pm = &p->moe, *gm = &g->moe;
        if (c->router_type != ROUTER_HASH)   /* the hash router has no weight */
            pm->router_w = layout_tensor(L, &gm->router_w, NAME("layer.%d.mlp.router.classifier.weight", f), 1, 2, E, C, 0);
        pm->w1 = layout_tensor_rows(L, &gm->w1, NAME("layer.%d.mlp.experts.expert_%%d.wi.weight", f), 1, 3, E, H, C,
                                    first, rows);
        pm->w2 = layout_tensor_rows(L, &gm->w2, NAME("layer.%d.mlp.experts.expert_%%d.wo.weight", f), 1, 3, E, C, H,
                                    first, rows);
    } else {
        p->wi = layout_tensor(L, &g->wi, NAME("layer.%d.mlp.wi.weight", f), 1, 2, H, C, 0);
        p->wo = layout_tensor(L, &g->wo, NAME("layer.%d.mlp.wo.weight", f), 1, 2, C, H, 0);
    }
    p->ff_ln = layout_tensor(L, &g->ff_ln, NAME("layer.%d.layer_norm.weight", f), 1, 1, C, 0, 0);
#undef NAME
}

/* HF's state_dict order: shared, the encoder's blocks and final norm, the decoder's, lm_head. */
static void layout_encdec(Layout *L) {
    Model *m = L->m;
    EncDec *ed = m->ed;
    const ModelConfig *c = &m->cfg;
    int C = c->d_model, V = c->vocab_size, NH = c->num_heads, NB = c->sw.relative_attention_num_buckets;
    ed->p.shared = layout_tensor(L, &ed->g.shared, "shared.weight", 1, 2, V, C, 0);
    for (int dec = 0; dec < 2; dec++) {
        T5StackParams *sp = dec ? &ed->p.dec : &ed->p.enc, *sg = dec ? &ed->g.dec : &ed->g.enc;
        const MoEConfig *mc = dec ? &ed->dec.moe_cfg : &ed->enc.moe_cfg;
        for (int i = 0; i < config_switch_layers(c, dec); i++) {
            layout_block(L, &sp->blocks[i], &sg->blocks[i], c, mc, dec, i);
            if (i == 0) {
                char nm[96];
                snprintf(nm, sizeof nm, "%s.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                         dec ? "decoder" : "encoder");
                sp->rel_bias = layout_tensor(L, &sg->rel_bias, nm, 1, 2, NB, NH, 0);
            }
        }
        sp->final_ln = layout_tensor(L, &sg->final_ln, dec ? "decoder.final_layer_norm.weight"
                                                            : "encoder.final_layer_norm.weight", 1, 1, C, 0, 0);
    }
    if (!c->tie_word_embeddings) ed->p.lm_head = layout_tensor(L, &ed->g.lm_head, "lm_head.weight", 1, 2, V, C, 0);
}

#define BF(b, n) ((float *)layout_bump(b, sizeof(float) * (size_t)(n)))
#define BU8(b, n) ((uint8_t *)layout_bump(b, (size_t)(n)))

static void layout_stack_acts(EncDec *ed, const ModelConfig *c, Bump *b, int dec) {
    T5StackActs *s = dec ? &ed->dec : &ed->enc;
    int B = ed->Bmax, T = dec ? ed->Tdmax : ed->Temax, Te = ed->Temax, N = B * T, Ne = B * Te;
    int C = c->d_model, NH = c->num_heads, I = ed->I, H = c->d_ff;
    for (int i = 0; i < config_switch_layers(c, dec); i++) {
        T5BlockActs *a = &s->blocks[i];
        int sparse = config_switch_block_is_sparse(c, dec, i);
        a->x_in = BF(b, N * C);
        a->ln1 = BF(b, N * C);
        a->rstd1 = BF(b, N);
        a->q = BF(b, N * I);
        a->k = BF(b, N * I);
        a->v = BF(b, N * I);
        a->att = BF(b, (size_t)B * NH * T * T);
        a->att_drop = BU8(b, (size_t)B * NH * T * T);
        a->atty = BF(b, N * I);
        a->drop1 = BU8(b, N * C);
        a->res1 = BF(b, N * C);
        if (dec) {
            a->ln2 = BF(b, N * C);
            a->rstd2 = BF(b, N);
            a->cq = BF(b, N * I);
            a->ck = BF(b, Ne * I);
            a->cv = BF(b, Ne * I);
            a->catt = BF(b, (size_t)B * NH * T * Te);
            a->catt_drop = BU8(b, (size_t)B * NH * T * Te);
            a->catty = BF(b, N * I);
            a->drop2 = BU8(b, N * C);
            a->res2 = BF(b, N * C);
        }
        a->ln3 = BF(b, N * C);
        a->rstd3 = BF(b, N);
        if (sparse) {
            void *mem = layout_bump(b, moe_acts_bytes(&s->moe_cfg, N));
            if (mem) moe_acts_bind(&a->moe, mem, &s->moe_cfg, N);
        } else {
            a->fc_pre = BF(b, N * H);
            a->fc = BF(b, N * H);
            a->fc_drop = BU8(b, N * H);
        }
        a->ffn = BF(b, N * C);
        a->drop3 = BU8(b, N * C);
    }
    s->emb_drop = BU8(b, N * C);
    s->bkt = layout_bump(b, sizeof(int) * (size_t)(2 * T));
    s->bias = BF(b, (size_t)NH * T * T);
    s->x_final = BF(b, N * C);
    s->out = BF(b, N * C);
    s->rstd_f = BF(b, N);
    s->out_drop = BU8(b, N * C);
    s->aux_dprobs = BF(b, (size_t)B * (s->moe_cfg.E > 0 ? s->moe_cfg.E : 1));
}

static void layout_encdec_acts(void *ctx, Bump *b) {
    Model *m = ctx;
    EncDec *ed = m->ed;
    const ModelConfig *c = &m->cfg;
    int B = ed->Bmax, Te = ed->Temax, Td = ed->Tdmax, T = Te > Td ? Te : Td, N = B * T, Nd = B * Td;
    int C = c->d_model, NH = c->num_heads, V = c->vocab_size, I = ed->I, H = c->d_ff;
    layout_stack_acts(ed, c, b, 0);
    layout_stack_acts(ed, c, b, 1);
    ed->enc_mask = BU8(b, B * Te);
    ed->dec_mask = BU8(b, Nd);
    ed->enc_ids = layout_bump(b, sizeof(int) * (size_t)B * Te);
    ed->dec_ids = layout_bump(b, sizeof(int) * (size_t)Nd);
    ed->labels = layout_bump(b, sizeof(int) * (size_t)Nd);
    ed->dec_scaled = BF(b, Nd * C);
    ed->logits = BF(b, (size_t)Nd * V);
    ed->losses = BF(b, Nd);
    ed->lse = BF(b, Nd);
    ed->dres = BF(b, N * C);
    ed->dbuf = BF(b, N * C);
    ed->dbuf2 = BF(b, N * C);
    ed->denc = BF(b, B * Te * C);
    ed->dq = BF(b, N * I);
    ed->dk = BF(b, N * I);
    ed->dv = BF(b, N * I);
    ed->dattn = BF(b, N * I);
    ed->datt = BF(b, (size_t)B * NH * T * T);
    ed->att_d = BF(b, (size_t)B * NH * T * T);
    ed->dbias = BF(b, (size_t)NH * T * T);
    ed->dfc = BF(b, N * H);
    ed->dfc2 = BF(b, N * H);
    ed->dlosses = BF(b, Nd);
}

/* ---- create / free ----------------------------------------------------------------------------- */

/* HF's _init_weights with initializer_factor f: shared and lm_head N(0, f); norms f; dense wi
 * N(0, f C^-1/2), wo N(0, f H^-1/2); q N(0, f (C dk)^-1/2), k and v N(0, f C^-1/2), o N(0, f I^-1/2);
 * the relative bias N(0, f C^-1/2); experts' wi and wo N(0, f C^-1/2). Routers: the Switch paper's
 * N(0, f (0.1 / C)^1/2), not HF's N(0, f): HF's logits start ~C^1/2 wide, a router that has decided
 * before it has learned (measured: z-loss 26, a dead expert, 45% dropped after 10 steps). */
static void init_encdec(Model *m, uint64_t seed) {
    const ModelConfig *c = &m->cfg;
    Rng r;
    rng_seed(&r, seed);
    float f = m->cfg.sw.initializer_factor, C = (float)c->d_model, dk = (float)c->sw.d_kv;
    for (int i = 0; i < m->n_tensors; i++) {
        const TensorInfo *t = &m->tensors[i];
        float *x = m->params + t->offset;
        const char *nm = t->name;
        float std;
        if (strstr(nm, "layer_norm.weight")) {
            for (size_t k = 0; k < t->size; k++) x[k] = f;
            continue;
        }
        if (!strcmp(nm, "shared.weight") || !strcmp(nm, "lm_head.weight")) std = f;
        else if (strstr(nm, "router.classifier")) std = f * sqrtf(0.1f / C);
        else if (strstr(nm, "experts.")) std = f / sqrtf(C);
        else if (strstr(nm, "mlp.wo.")) std = f / sqrtf((float)c->d_ff);
        else if (strstr(nm, "Attention.q.")) std = f / sqrtf(C * dk);
        else if (strstr(nm, "Attention.o.")) std = f / sqrtf(dk * (float)c->num_heads);
        else std = f / sqrtf(C);   /* k, v, wi, the relative bias */
        layout_init_normal(x, t, std, &r);
    }
}

/* A stack's MoE layers: top-1 as HF, no expert biases, a group per sequence; the group size and the
 * z-loss coefficient are set by each forward. */
static MoEConfig stack_moe_config(const ModelConfig *c) {
    MoEConfig mc = config_moe(c);
    mc.no_bias = 1;
    /* switch: HF's stack losses (aux through aux_dprobs); moelm's other routers: each layer's own */
    mc.aux_coef = c->router_type == ROUTER_SWITCH ? 0.0f : c->router_aux_loss_coef;
    mc.dropped_gets_input = c->sw.dropped_scaled_input;
    mc.min_capacity = 0;
    /* HF's experts are DenseActDense, with its dropout: the mask is held when the config has a dropout
     * rate; each forward then sets the rate to the run's (stack_forward) */
    mc.expert_dropout = c->dropout_rate;
    return mc;
}

moelm_status encdec_plan(Model *m, const ModelConfig *cfg, int part, int parts) {
    memset(m, 0, sizeof *m);
    moelm_status st = config_check(cfg);
    if (st) return st;
    if (cfg->model_type != MODEL_SWITCH) return moelm_fail(MOELM_ERR_CONFIG, "model_create_encdec: not a switch_transformers config");
    m->cfg = *cfg;
    m->train_dropout = cfg->dropout_rate;
    int L = cfg->num_layers, Ld = cfg->sw.num_decoder_layers;
    m->ed = moelm_calloc(1, sizeof(EncDec));
    if (!m->ed) return MOELM_ERR_NOMEM;
    EncDec *ed = m->ed;
    ed->I = cfg->num_heads * cfg->sw.d_kv;
    ed->NB = cfg->sw.relative_attention_num_buckets;
    ed->enc.moe_cfg = stack_moe_config(cfg);
    ed->dec.moe_cfg = ed->enc.moe_cfg;
    m->moe_cfg = ed->enc.moe_cfg;
    int E = m->moe_cfg.E;
    if (parts < 1 || part < 0 || part >= parts || E % parts) {
        model_free(m);
        return moelm_fail(MOELM_ERR_CONFIG, "cannot hold part %d of %d of %d experts (the parts must divide the experts)",
                          part, parts, E);
    }
    ed->enc.moe_cfg.e_first = ed->dec.moe_cfg.e_first = m->moe_cfg.e_first = E / parts * part;
    for (int dec = 0; dec < 2; dec++) {
        T5StackActs *s = dec ? &ed->dec : &ed->enc;
        for (int i = 0; i < config_switch_layers(cfg, dec); i++) s->n_sparse += config_switch_block_is_sparse(cfg, dec, i);
    }
    ed->p.enc.blocks = moelm_calloc((size_t)L, sizeof(T5BlockParams));
    ed->g.enc.blocks = moelm_calloc((size_t)L, sizeof(T5BlockParams));
    ed->p.dec.blocks = moelm_calloc((size_t)Ld, sizeof(T5BlockParams));
    ed->g.dec.blocks = moelm_calloc((size_t)Ld, sizeof(T5BlockParams));
    ed->enc.blocks = moelm_calloc((size_t)L, sizeof(T5BlockActs));
    ed->dec.blocks = moelm_calloc((size_t)Ld, sizeof(T5BlockActs));
    m->tensors = moelm_calloc(8 + 20 * (size_t)(L + Ld), sizeof(TensorInfo));
    if (!ed->p.enc.blocks || !ed->g.enc.blocks || !ed->p.dec.blocks || !ed->g.dec.blocks || !ed->enc.blocks ||
        !ed->dec.blocks || !m->tensors) {
        model_free(m);
        return MOELM_ERR_NOMEM;
    }
    layout_plan(m, layout_encdec, part, parts);
    return MOELM_OK;
}

moelm_status model_create_encdec(Model *m, const ModelConfig *cfg, int B, int Te, int Td, uint64_t seed, int part,
                                 int parts) {
    memset(m, 0, sizeof *m);
    moelm_status st = config_check(cfg);
    if (st) return st;
    if (cfg->model_type != MODEL_SWITCH) return moelm_fail(MOELM_ERR_CONFIG, "model_create_encdec: not a switch_transformers config");
    if (B < 1 || Te < 1 || Td < 1)
        return moelm_fail(MOELM_ERR_CONFIG, "batch size and sequence lengths must be positive (got %d x %d, %d)", B, Te, Td);
    if ((st = encdec_plan(m, cfg, part, parts))) return st;
    m->B = B;
    m->T = Te;
    EncDec *ed = m->ed;
    ed->Bmax = B;
    ed->Temax = Te;
    ed->Tdmax = Td;
    m->params = moelm_calloc(m->n_params, sizeof(float));
    m->grads = moelm_calloc(m->n_params, sizeof(float));
    if (!m->params || !m->grads) {
        model_free(m);
        return MOELM_ERR_NOMEM;
    }
    Layout lay = {m, 1, 0, 0, 0, part, parts};
    layout_encdec(&lay);
    ed->mem = layout_alloc(layout_encdec_acts, m, &m->acts_bytes);
    if (!ed->mem) {
        model_free(m);
        return MOELM_ERR_NOMEM;
    }
    init_encdec(m, seed);
    rng_seed(&m->rng, seed ^ 0xD5A61266F0C9392Cull);
    return MOELM_OK;
}

void encdec_free(Model *m) {
    EncDec *ed = m->ed;
    if (!ed) return;
    moelm_free(ed->p.enc.blocks);
    moelm_free(ed->g.enc.blocks);
    moelm_free(ed->p.dec.blocks);
    moelm_free(ed->g.dec.blocks);
    moelm_free(ed->enc.blocks);
    moelm_free(ed->dec.blocks);
    moelm_free(ed->mem);
    moelm_free(ed);
    m->ed = NULL;
}

/* ---- the batch ---------------------------------------------------------------------------------- */

moelm_status encdec_check_batch(const Model *m, const Seq2SeqBatch *b) {
    const EncDec *ed = m->ed;
    int V = m->cfg.vocab_size;
    if (b->B < 1 || b->Te < 1 || b->Td < 1 || b->B > ed->Bmax || b->Te > ed->Temax || b->Td > ed->Tdmax)
        return moelm_fail(MOELM_ERR_DATA, "batch %d x (%d, %d) outside the model's %d x (%d, %d)", b->B, b->Te, b->Td,
                          ed->Bmax, ed->Temax, ed->Tdmax);
    size_t ne = (size_t)b->B * b->Te, nd = (size_t)b->B * b->Td;
    for (size_t i = 0; i < ne; i++) {
        if (b->input_ids[i] < 0 || b->input_ids[i] >= V)
            return moelm_fail(MOELM_ERR_DATA, "input_ids: id %d at %zu outside the vocabulary [0, %d)", b->input_ids[i], i, V);
        if (b->attention_mask && b->attention_mask[i] != 0 && b->attention_mask[i] != 1)
            return moelm_fail(MOELM_ERR_DATA, "attention_mask: %d at %zu is not 0 or 1", b->attention_mask[i], i);
    }
    if (!b->decoder_input_ids && !b->labels)
        return moelm_fail(MOELM_ERR_DATA, "the decoder needs decoder_input_ids or labels");
    if (!b->decoder_input_ids && m->cfg.sw.decoder_start_token_id < 0)
        return moelm_fail(MOELM_ERR_CONFIG, "decoder_start_token_id is null in the config: the decoder inputs cannot "
                          "be made from the labels (T5 uses the pad token, 0)");
    for (size_t i = 0; i < nd; i++) {
        if (b->decoder_input_ids && (b->decoder_input_ids[i] < 0 || b->decoder_input_ids[i] >= V))
            return moelm_fail(MOELM_ERR_DATA, "decoder_input_ids: id %d at %zu outside the vocabulary [0, %d)",
                              b->decoder_input_ids[i], i, V);
        if (b->labels && b->labels[i] != -100 && (b->labels[i] < 0 || b->labels[i] >= V))
            return moelm_fail(MOELM_ERR_DATA, "labels: %d at %zu is neither -100 nor in the vocabulary [0, %d)",
                              b->labels[i], i, V);
        if (b->decoder_attention_mask && b->decoder_attention_mask[i] != 0 && b->decoder_attention_mask[i] != 1)
            return moelm_fail(MOELM_ERR_DATA, "decoder_attention_mask: %d at %zu is not 0 or 1",
                              b->decoder_attention_mask[i], i);
    }
    return MOELM_OK;
}

/* Copies the batch: the encoder's ids and key mask, the decoder's inputs (HF's _shift_right of the
 * labels when not given: decoder_start_token_id, then labels[:-1] with -100 as pad_token_id), and the
 * targets (-100 -> -1, which crossentropy ignores). */
static void take_batch(EncDec *ed, const ModelConfig *c, const Seq2SeqBatch *b) {
    int B = b->B, Te = b->Te, Td = b->Td;
    for (int i = 0; i < B * Te; i++) {
        CHECK(b->input_ids[i] >= 0 && b->input_ids[i] < c->vocab_size);
        ed->enc_ids[i] = b->input_ids[i];
        ed->enc_mask[i] = b->attention_mask ? (uint8_t)(b->attention_mask[i] != 0) : 1;
    }
    for (int r = 0; r < B; r++)
        for (int t = 0; t < Td; t++) {
            int i = r * Td + t, d;
            if (b->decoder_input_ids) {
                d = b->decoder_input_ids[i];
            } else {
                d = t == 0 ? c->sw.decoder_start_token_id : b->labels[i - 1];
                if (d == -100) d = c->sw.pad_token_id;
            }
            CHECK(d >= 0 && d < c->vocab_size);
            ed->dec_ids[i] = d;
            ed->labels[i] = b->labels && b->labels[i] != -100 ? b->labels[i] : -1;
            ed->dec_mask[i] = b->decoder_attention_mask ? (uint8_t)(b->decoder_attention_mask[i] != 0) : 1;
        }
    ed->has_labels = b->labels != NULL;
    ed->has_dec_mask = b->decoder_attention_mask != NULL;
}

/* ---- forward ----------------------------------------------------------------------------------- */

static AttnDims self_dims(const EncDec *ed, int B, int T, int causal, const ModelConfig *c) {
    AttnDims d = {B, T, T, c->num_heads, c->num_heads, c->sw.d_kv, (size_t)ed->I, (size_t)ed->I, (size_t)ed->I,
                  (size_t)ed->I, 1.0f, causal};
    return d;
}

static AttnDims cross_dims(const EncDec *ed, const ModelConfig *c) {
    AttnDims d = {ed->B, ed->Td, ed->Te, c->num_heads, c->num_heads, c->sw.d_kv, (size_t)ed->I, (size_t)ed->I,
                  (size_t)ed->I, (size_t)ed->I, 1.0f, 0};
    return d;
}

/* One block: out[N, C] from a->x_in. */
static void block_forward(Model *m, T5StackActs *s, T5BlockActs *a, const T5BlockParams *p, float *out, const int *ids,
                          int dec, int sparse, float pdrop, int training, int layer) {
    EncDec *ed = m->ed;
    const ModelConfig *c = &m->cfg;
    int B = ed->B, T = dec ? ed->Td : ed->Te, N = B * T, C = c->d_model, I = ed->I, H = c->d_ff;
    float eps = c->layer_norm_epsilon;
    size_t NC = (size_t)N * C;
    float *proj = ed->dbuf;   /* scratch: a sublayer's output before dropout */

    rmsnorm_forward(a->ln1, a->rstd1, a->x_in, p->sa_ln, N, C, eps);
    matmul_forward(a->q, a->ln1, p->q, NULL, N, C, I);
    matmul_forward(a->k, a->ln1, p->k, NULL, N, C, I);
    matmul_forward(a->v, a->ln1, p->v, NULL, N, C, I);
    AttnDims d = self_dims(ed, B, T, dec, c);
    attn_forward(a->atty, a->att, a->q, a->k, a->v, s->bias, !dec ? ed->enc_mask : ed->has_dec_mask ? ed->dec_mask : NULL,
                 &d);
    if (pdrop > 0.0f)
        attn_dropout_forward(a->atty, ed->att_d, a->att_drop, a->att, a->v, pdrop, &d, model_site_key(m, layer, SITE_ATTN_PROBS),
                             (uint64_t)m->pass_row0 * c->num_heads * T * T);
    matmul_forward(proj, a->atty, p->o, NULL, N, I, C);
    model_dropout(m, layer, SITE_ATTN, proj, a->drop1, proj, pdrop, NC, B);
    add_forward(a->res1, a->x_in, proj, NC);
    const float *res = a->res1;
    if (dec) {
        int Ne = B * ed->Te;
        rmsnorm_forward(a->ln2, a->rstd2, a->res1, p->ca_ln, N, C, eps);
        matmul_forward(a->cq, a->ln2, p->cq, NULL, N, C, I);
        matmul_forward(a->ck, ed->enc.out, p->ck, NULL, Ne, C, I);
        matmul_forward(a->cv, ed->enc.out, p->cv, NULL, Ne, C, I);
        AttnDims cd = cross_dims(ed, c);
        attn_forward(a->catty, a->catt, a->cq, a->ck, a->cv, NULL, ed->enc_mask, &cd);
        if (pdrop > 0.0f)
            attn_dropout_forward(a->catty, ed->att_d, a->catt_drop, a->catt, a->cv, pdrop, &cd,
                                 model_site_key(m, layer, SITE_CROSS_PROBS), (uint64_t)m->pass_row0 * c->num_heads * T * ed->Te);
        matmul_forward(proj, a->catty, p->co, NULL, N, I, C);
        model_dropout(m, layer, SITE_CROSS, proj, a->drop2, proj, pdrop, NC, B);
        add_forward(a->res2, a->res1, proj, NC);
        res = a->res2;
    }
    rmsnorm_forward(a->ln3, a->rstd3, res, p->ff_ln, N, C, eps);
    if (sparse) {
        moe_forward(a->ffn, &a->moe, a->ln3, ids, &p->moe, &s->moe_cfg, N, training,
                    model_site_key(m, layer, SITE_MOE));
    } else {
        matmul_forward(a->fc_pre, a->ln3, p->wi, NULL, N, C, H);
        activation_forward(a->fc, a->fc_pre, c->hidden_act, N, H);
        model_dropout(m, layer, SITE_HIDDEN, a->fc, a->fc_drop, a->fc, pdrop, (size_t)N * H, B);
        matmul_forward(a->ffn, a->fc, p->wo, NULL, N, H, C);
    }
    model_dropout(m, layer, SITE_FFN, a->ffn, a->drop3, a->ffn, pdrop, NC, B);
    add_forward(out, res, a->ffn, NC);
}

/* HF's router losses of a stack from its sparse blocks' routing: z = the mean over blocks of each
 * block's mean lse^2; aux = E^2 mean_{b,e} f[b,e] P[b,e], f and P over all the stack's sparse tokens of
 * sequence b (f the share whose expert index is e: HF takes a dropped token's as 0, the fixed form its
 * choice before capacity; P the mean probability). aux_dprobs[b, e] = aux_coef d aux / d probs. */
static void stack_router_losses(Model *m, T5StackActs *s, int dec) {
    const ModelConfig *c = &m->cfg;
    EncDec *ed = m->ed;
    int B = ed->B, T = dec ? ed->Td : ed->Te, E = s->moe_cfg.E, nL = s->n_sparse;
    s->z_loss = s->aux_loss = 0.0f;
    memset(s->aux_dprobs, 0, sizeof(float) * (size_t)B * E);
    if (!s->losses_on) return;
    if (c->router_type != ROUTER_SWITCH) {   /* moelm's routers: the sum of the layers' own losses */
        for (int i = 0; i < config_switch_layers(c, dec); i++)
            if (config_switch_block_is_sparse(c, dec, i)) {
                s->z_loss += s->blocks[i].moe.z_loss;
                s->aux_loss += s->blocks[i].moe.aux_loss;
            }
        return;
    }
    /* under data parallelism the rows are every rank's: aux is a mean over the global batch's rows
     * (gradients are summed over the ranks); z is already global (moe.c all-reduces it) */
    double z = 0.0, aux = 0.0, cnt[256], P[256], per = (double)T * nL, rows[2] = {0.0, (double)B};
    comm_allreduce_f64(COMM_WORLD, rows + 1, 1);
    double Bg = rows[1];
    for (int i = 0; i < config_switch_layers(c, dec); i++)
        if (config_switch_block_is_sparse(c, dec, i)) z += s->blocks[i].moe.z_loss;
    s->z_loss = (float)(z / nL);
    for (int b = 0; b < B; b++) {
        for (int e = 0; e < E; e++) cnt[e] = P[e] = 0.0;
        for (int i = 0; i < config_switch_layers(c, dec); i++) {
            if (!config_switch_block_is_sparse(c, dec, i)) continue;
            const MoEActs *a = &s->blocks[i].moe;
            for (int t = b * T; t < (b + 1) * T; t++) {
                int e = a->expert[t];
                if (c->sw.hf_router_losses && a->slot_row[t] < 0) e = 0;   /* argmax of HF's all-zero mask row */
                cnt[e] += 1.0;
                for (int k = 0; k < E; k++) P[k] += a->probs[(size_t)t * E + k];
            }
        }
        for (int e = 0; e < E; e++) {
            aux += cnt[e] / per * (P[e] / per);
            s->aux_dprobs[(size_t)b * E + e] = (float)(c->router_aux_loss_coef * E * (cnt[e] / per) / (Bg * per));
        }
    }
    rows[0] = aux;
    comm_allreduce_f64(COMM_WORLD, rows, 1);
    s->aux_loss = (float)(rows[0] * E / Bg);   /* E^2 * (1 / (B E)) sum_{b,e} over the global rows */
}

static void stack_forward(Model *m, int dec, const int *ids, float pdrop, int training) {
    EncDec *ed = m->ed;
    const ModelConfig *c = &m->cfg;
    T5StackActs *s = dec ? &ed->dec : &ed->enc;
    const T5StackParams *sp = dec ? &ed->p.dec : &ed->p.enc;
    int B = ed->B, T = dec ? ed->Td : ed->Te, N = B * T, C = c->d_model, L = config_switch_layers(c, dec);
    int base = dec ? config_switch_layers(c, 0) : 0;   /* the stack's first layer in the model (for its draws) */
    size_t NC = (size_t)N * C;
    /* the stack's routing: one group a sequence; HF's z loss shared out over its sparse blocks (moelm's
     * other routers: each layer's own losses, summed) */
    int hf = c->router_type == ROUTER_SWITCH;
    s->losses_on = s->n_sparse > 0 && (!hf || !c->sw.hf_router_losses || config_switch_sparse_step(c, dec) > 1);
    s->moe_cfg.group_size = T;
    s->moe_cfg.expert_dropout = pdrop;
    s->moe_cfg.z_coef = !s->losses_on ? 0.0f : hf ? c->router_z_loss_coef / (float)s->n_sparse : c->router_z_loss_coef;
    float *x0 = s->blocks[0].x_in;
    encoder_forward(x0, ids, ed->p.shared, NULL, B, T, C);
    model_dropout(m, base, SITE_EMBED, x0, s->emb_drop, x0, pdrop, NC, B);
    posbias_buckets(s->bkt, T, T, 0, !dec, c->sw.relative_attention_num_buckets, c->sw.relative_attention_max_distance);
    posbias_forward(s->bias, s->bkt, sp->rel_bias, c->num_heads, T, T);
    for (int i = 0; i < L; i++) {
        T5BlockActs *a = &s->blocks[i];
        int sparse = config_switch_block_is_sparse(c, dec, i);
        if (sparse) a->moe.aux_dprobs = hf ? s->aux_dprobs : NULL;
        block_forward(m, s, a, &sp->blocks[i], i + 1 < L ? s->blocks[i + 1].x_in : s->x_final, ids, dec, sparse, pdrop,
                      training, base + i);
    }
    rmsnorm_forward(s->out, s->rstd_f, s->x_final, sp->final_ln, N, C, c->layer_norm_epsilon);
    model_dropout(m, base, SITE_OUT, s->out, s->out_drop, s->out, pdrop, NC, B);
    stack_router_losses(m, s, dec);
}

void encdec_encode(Model *m, const int *ids, const int *mask, int B, int Te) {
    EncDec *ed = m->ed;
    CHECK(ed && B >= 1 && B <= ed->Bmax && Te >= 1 && Te <= ed->Temax);
    Seq2SeqBatch b = {B, Te, 1, ids, mask, ids, NULL, NULL};   /* no decoder: its ids are not read */
    ed->B = B;
    ed->Te = Te;
    ed->Td = 1;
    take_batch(ed, &m->cfg, &b);
    m->pdrop = 0.0f;
    model_pass_begin(m, B, 0);
    stack_forward(m, 0, ed->enc_ids, 0.0f, 0);
}

float encdec_forward(Model *m, const Seq2SeqBatch *b, int training) {
    EncDec *ed = m->ed;
    const ModelConfig *c = &m->cfg;
    CHECK(ed && b->B >= 1 && b->B <= ed->Bmax && b->Te >= 1 && b->Te <= ed->Temax && b->Td >= 1 && b->Td <= ed->Tdmax);
    CHECK(b->decoder_input_ids || b->labels);
    ed->B = b->B;
    ed->Te = b->Te;
    ed->Td = b->Td;
    take_batch(ed, c, b);
    float pdrop = training ? m->train_dropout : 0.0f;
    m->pdrop = pdrop;
    model_pass_begin(m, ed->B, training);
    stack_forward(m, 0, ed->enc_ids, pdrop, training);
    stack_forward(m, 1, ed->dec_ids, pdrop, training);
    int Nd = ed->B * ed->Td, C = c->d_model, V = c->vocab_size;
    if (c->tie_word_embeddings) {
        /* HF rescales before the shared head: d_model^-0.5 as a float, as torch rounds the Python scalar */
        float sc = (float)pow((double)C, -0.5);
        for (size_t i = 0; i < (size_t)Nd * C; i++) ed->dec_scaled[i] = ed->dec.out[i] * sc;
        matmul_forward(ed->logits, ed->dec_scaled, ed->p.shared, NULL, Nd, C, V);
    } else {
        matmul_forward(ed->logits, ed->dec.out, ed->p.lm_head, NULL, Nd, C, V);
    }
    m->aux_loss = c->router_z_loss_coef * (ed->enc.z_loss + ed->dec.z_loss) +
                  c->router_aux_loss_coef * (ed->enc.aux_loss + ed->dec.aux_loss);
    ed->lm_loss = 0.0f;
    m->n_valid = 0;
    if (ed->has_labels) {
        crossentropy_forward(ed->losses, ed->lse, ed->logits, ed->labels, Nd, V);
        double sum = 0.0;
        for (int i = 0; i < Nd; i++)
            if (ed->labels[i] >= 0) {
                sum += ed->losses[i];
                m->n_valid++;
            }
        /* HF: a mean over no label is 0 / 0; here 0, and the backward adds nothing */
        ed->lm_loss = m->n_valid ? (float)(sum / m->n_valid) : 0.0f;
    }
    m->loss = ed->lm_loss;
    ed->loss = ed->has_labels ? ed->lm_loss + m->aux_loss : 0.0f;
    return ed->loss;
}

/* ---- backward ---------------------------------------------------------------------------------- */

/* dres holds d(block output); leaves d(block input) there. Parameter gradients accumulate; the cross-
 * attention's key and value gradients add into ed->denc (the encoder output's). */
static void block_backward(Model *m, T5StackActs *s, T5BlockActs *a, const T5BlockParams *p, T5BlockParams *g,
                           int dec, int sparse) {
    EncDec *ed = m->ed;
    const ModelConfig *c = &m->cfg;
    int B = ed->B, T = dec ? ed->Td : ed->Te, N = B * T, C = c->d_model, I = ed->I, H = c->d_ff;
    size_t NC = (size_t)N * C;
    float pdrop = m->pdrop;
    float *dres = ed->dres, *dbuf = ed->dbuf, *dbuf2 = ed->dbuf2;

    /* FF: out = res + drop3(ffn(norm(res))) */
    const float *res = dec ? a->res2 : a->res1;
    dropout_backward(dbuf2, dres, a->drop3, pdrop, NC);
    if (sparse) {
        moe_backward(dbuf, &g->moe, dbuf2, &a->moe, a->ln3, &p->moe, &s->moe_cfg, N, 1.0f);
    } else {
        matmul_backward(ed->dfc, g->wo, NULL, dbuf2, a->fc, p->wo, N, H, C);
        dropout_backward(ed->dfc, ed->dfc, a->fc_drop, pdrop, (size_t)N * H);
        activation_backward(ed->dfc2, ed->dfc, a->fc_pre, c->hidden_act, N, H);
        matmul_backward(dbuf, g->wi, NULL, ed->dfc2, a->ln3, p->wi, N, C, H);
    }
    rmsnorm_backward(dres, g->ff_ln, dbuf, res, p->ff_ln, a->rstd3, N, C);

    if (dec) {   /* res2 = res1 + drop2(co(cross(cq(norm(res1)), ck(enc), cv(enc)))) */
        int Ne = B * ed->Te;
        dropout_backward(dbuf2, dres, a->drop2, pdrop, NC);
        matmul_backward(ed->dattn, g->co, NULL, dbuf2, a->catty, p->co, N, I, C);
        AttnDims cd = cross_dims(ed, c);
        if (pdrop > 0.0f)
            attn_dropout_backward(ed->dq, ed->dk, ed->dv, NULL, ed->datt, ed->att_d, ed->dattn, a->catt, a->catt_drop,
                                  pdrop, a->cq, a->ck, a->cv, &cd);
        else
            attn_backward(ed->dq, ed->dk, ed->dv, NULL, ed->datt, ed->dattn, a->catt, a->cq, a->ck, a->cv, &cd);
        matmul_backward(dbuf, g->cq, NULL, ed->dq, a->ln2, p->cq, N, C, I);
        rmsnorm_backward(dres, g->ca_ln, dbuf, a->res1, p->ca_ln, a->rstd2, N, C);
        matmul_backward(dbuf2, g->ck, NULL, ed->dk, ed->enc.out, p->ck, Ne, C, I);
        add_forward(ed->denc, ed->denc, dbuf2, (size_t)Ne * C);
        matmul_backward(dbuf2, g->cv, NULL, ed->dv, ed->enc.out, p->cv, Ne, C, I);
        add_forward(ed->denc, ed->denc, dbuf2, (size_t)Ne * C);
    }

    /* res1 = x_in + drop1(o(attn(q, k, v of norm(x_in)) + bias)) */
    dropout_backward(dbuf2, dres, a->drop1, pdrop, NC);
    matmul_backward(ed->dattn, g->o, NULL, dbuf2, a->atty, p->o, N, I, C);
    AttnDims d = self_dims(ed, B, T, dec, c);
    if (pdrop > 0.0f)
        attn_dropout_backward(ed->dq, ed->dk, ed->dv, ed->dbias, ed->datt, ed->att_d, ed->dattn, a->att, a->att_drop, pdrop,
                              a->q, a->k, a->v, &d);
    else
        attn_backward(ed->dq, ed->dk, ed->dv, ed->dbias, ed->datt, ed->dattn, a->att, a->q, a->k, a->v, &d);
    matmul_backward(dbuf, g->q, NULL, ed->dq, a->ln1, p->q, N, C, I);
    matmul_backward(dbuf2, g->k, NULL, ed->dk, a->ln1, p->k, N, C, I);
    add_forward(dbuf, dbuf, dbuf2, NC);
    matmul_backward(dbuf2, g->v, NULL, ed->dv, a->ln1, p->v, N, C, I);
    add_forward(dbuf, dbuf, dbuf2, NC);
    rmsnorm_backward(dres, g->sa_ln, dbuf, a->x_in, p->sa_ln, a->rstd1, N, C);
}

/* dout[N, C]: the gradient of the stack's output (may be ed->dbuf2 or ed->denc). */
static void stack_backward(Model *m, int dec, const float *dout) {
    EncDec *ed = m->ed;
    const ModelConfig *c = &m->cfg;
    T5StackActs *s = dec ? &ed->dec : &ed->enc;
    const T5StackParams *sp = dec ? &ed->p.dec : &ed->p.enc;
    T5StackParams *sg = dec ? &ed->g.dec : &ed->g.enc;
    int B = ed->B, T = dec ? ed->Td : ed->Te, N = B * T, C = c->d_model, NH = c->num_heads;
    size_t NC = (size_t)N * C;
    dropout_backward(ed->dbuf, dout, s->out_drop, m->pdrop, NC);
    memset(ed->dres, 0, sizeof(float) * NC);
    rmsnorm_backward(ed->dres, sg->final_ln, ed->dbuf, s->x_final, sp->final_ln, s->rstd_f, N, C);
    memset(ed->dbias, 0, sizeof(float) * (size_t)NH * T * T);
    for (int i = config_switch_layers(c, dec) - 1; i >= 0; i--)
        block_backward(m, s, &s->blocks[i], &sp->blocks[i], &sg->blocks[i], dec, config_switch_block_is_sparse(c, dec, i));
    posbias_backward(sg->rel_bias, ed->dbias, s->bkt, NH, T, T);
    dropout_backward(ed->dres, ed->dres, s->emb_drop, m->pdrop, NC);
    encoder_backward(ed->g.shared, NULL, ed->dres, dec ? ed->dec_ids : ed->enc_ids, B, T, C);
}

void encdec_backward(Model *m) {
    EncDec *ed = m->ed;
    const ModelConfig *c = &m->cfg;
    CHECK(ed && ed->has_labels);
    int Nd = ed->B * ed->Td, Ne = ed->B * ed->Te, C = c->d_model, V = c->vocab_size;
    float inv = m->n_valid ? 1.0f / (float)m->n_valid : 0.0f;
    for (int i = 0; i < Nd; i++) ed->dlosses[i] = ed->labels[i] >= 0 ? inv : 0.0f;
    float *dlogits = ed->logits;   /* in place: the logits are not needed after this */
    crossentropy_backward(dlogits, ed->logits, ed->lse, ed->labels, ed->dlosses, Nd, V);
    if (c->tie_word_embeddings) {
        float sc = (float)pow((double)C, -0.5);
        matmul_backward(ed->dbuf2, ed->g.shared, NULL, dlogits, ed->dec_scaled, ed->p.shared, Nd, C, V);
        for (size_t i = 0; i < (size_t)Nd * C; i++) ed->dbuf2[i] *= sc;
    } else {
        matmul_backward(ed->dbuf2, ed->g.lm_head, NULL, dlogits, ed->dec.out, ed->p.lm_head, Nd, C, V);
    }
    memset(ed->denc, 0, sizeof(float) * (size_t)Ne * C);
    /* stack_backward reads dout once, into dbuf, before it uses dbuf2 */
    stack_backward(m, 1, ed->dbuf2);
    stack_backward(m, 0, ed->denc);
}

int encdec_moe_layers(const Model *m, MoELayer *out, int max) {
    EncDec *ed = m->ed;
    int n = 0;
    for (int dec = 0; dec < 2; dec++) {
        T5StackActs *s = dec ? &ed->dec : &ed->enc;
        T5StackParams *p = dec ? &ed->p.dec : &ed->p.enc, *g = dec ? &ed->g.dec : &ed->g.enc;
        for (int i = 0; i < config_switch_layers(&m->cfg, dec); i++) {
            if (!config_switch_block_is_sparse(&m->cfg, dec, i)) continue;
            if (n < max) out[n] = (MoELayer){i, dec, &p->blocks[i].moe, &g->blocks[i].moe, &s->blocks[i].moe, &s->moe_cfg};
            n++;
        }
    }
    return n;
}
