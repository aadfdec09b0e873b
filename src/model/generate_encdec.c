/* generate_encdec.c: decoding with the encoder-decoder (encdec.h): the cached decoder step, and greedy,
 * sampling and Hugging Face's beam search over it.
 *
 * Dimensions: R rows (beams), P decoder positions, Te encoder tokens, C d_model, NH heads, dk d_kv,
 * I = NH dk, H d_ff, V vocab, Ld decoder blocks.
 *
 * A step runs the decoder's blocks on R new tokens, one per row: each row's self-attention reads its
 * own cache (keys and values of its positions 0..pos), the cross-attention the encoder output's keys
 * and values (shared by the rows: one prompt), the FF layers all rows at once. No allocation after
 * encdec_cache_create.
 */
#include "model/encdec.h"

#include <float.h>
#include <math.h>
#include <string.h>
#include "model/layout.h"
#include "ops/attn.h"
#include "ops/ops.h"

#define BF(b, n) ((float *)layout_bump(b, sizeof(float) * (size_t)(n)))

typedef struct { EncDecCache *kv; const Model *m; } CacheCtx;

static void cache_layout(void *ctx, Bump *b) {
    EncDecCache *kv = ((CacheCtx *)ctx)->kv;
    const Model *m = ((CacheCtx *)ctx)->m;
    const ModelConfig *c = &m->cfg;
    int R = kv->R, P = kv->P, Te = kv->Te, C = c->d_model, NH = c->num_heads, I = m->ed->I, H = c->d_ff;
    int Ld = c->sw.num_decoder_layers, V = c->vocab_size, wide = P > R * Te ? P : R * Te;
    kv->ck = BF(b, (size_t)Ld * Te * I);
    kv->cv = BF(b, (size_t)Ld * Te * I);
    kv->k = BF(b, (size_t)Ld * R * P * I);
    kv->v = BF(b, (size_t)Ld * R * P * I);
    kv->tmp = BF(b, (size_t)R * P * I);
    kv->enc_mask = layout_bump(b, (size_t)Te);
    kv->x = BF(b, R * C);
    kv->xn = BF(b, R * C);
    kv->proj = BF(b, R * C);
    kv->ffn = BF(b, R * C);
    kv->q = BF(b, R * I);
    kv->kk = BF(b, R * I);
    kv->vv = BF(b, R * I);
    kv->y = BF(b, R * I);
    kv->att = BF(b, (size_t)NH * wide);
    kv->bias = BF(b, (size_t)NH * P);
    kv->bkt = layout_bump(b, sizeof(int) * (size_t)P);
    kv->fc_pre = BF(b, R * H);
    kv->fc = BF(b, R * H);
    kv->rstd = BF(b, R);
    kv->logits = BF(b, (size_t)R * V);
    kv->sample = BF(b, 2 * (size_t)V);
    void *mem = layout_bump(b, moe_acts_bytes(&kv->moe_cfg, R));
    if (mem) moe_acts_bind(&kv->moe, mem, &kv->moe_cfg, R);
}

moelm_status encdec_cache_create(EncDecCache *kv, const Model *m, int R, int P, int Te) {
    memset(kv, 0, sizeof *kv);
    CHECK(m->ed);
    if (R < 1 || P < 1 || Te < 1)
        return moelm_fail(MOELM_ERR_CONFIG, "generation: rows %d, positions %d and encoder tokens %d must be positive", R,
                          P, Te);
    kv->R = R;
    kv->P = P;
    kv->Te = Te;
    kv->moe_cfg = m->ed->dec.moe_cfg;
    kv->moe_cfg.group_size = 1;   /* the router sees one token of each sequence a step */
    kv->moe_cfg.z_coef = 0.0f;
    CacheCtx ctx = {kv, m};
    size_t bytes;
    kv->mem = layout_alloc(cache_layout, &ctx, &bytes);
    return kv->mem ? MOELM_OK : MOELM_ERR_NOMEM;
}

void encdec_cache_free(EncDecCache *kv) {
    moelm_free(kv->mem);
    memset(kv, 0, sizeof *kv);
}

void encdec_cache_encode(Model *m, EncDecCache *kv, const int *ids, const int *mask, int Te) {
    const ModelConfig *c = &m->cfg;
    CHECK(Te >= 1 && Te <= kv->Te);
    encdec_encode(m, ids, mask, 1, Te);
    int C = c->d_model, I = m->ed->I;
    for (int i = 0; i < config_switch_layers(c, 1); i++) {
        const T5BlockParams *p = &m->ed->p.dec.blocks[i];
        matmul_forward(kv->ck + (size_t)i * kv->Te * I, m->ed->enc.out, p->ck, NULL, Te, C, I);
        matmul_forward(kv->cv + (size_t)i * kv->Te * I, m->ed->enc.out, p->cv, NULL, Te, C, I);
    }
    for (int t = 0; t < Te; t++) kv->enc_mask[t] = mask ? (uint8_t)(mask[t] != 0) : 1;
    kv->Te_used = Te;
    kv->pos = 0;
}

void encdec_step(Model *m, EncDecCache *kv, const int *tokens) {
    const ModelConfig *c = &m->cfg;
    const EncDec *ed = m->ed;
    int R = kv->R, P = kv->P, pos = kv->pos, Te = kv->Te_used, C = c->d_model, NH = c->num_heads, dk = c->sw.d_kv;
    int I = ed->I, H = c->d_ff, V = c->vocab_size, n = pos + 1;
    float eps = c->layer_norm_epsilon;
    CHECK(pos < P);
    for (int r = 0; r < R; r++) CHECK(tokens[r] >= 0 && tokens[r] < V);
    model_pass_begin(m, R, 0);   /* the random router's key, as encdec_forward's pass takes it */
    encoder_forward(kv->x, tokens, ed->p.shared, NULL, R, 1, C);
    /* the decoder's bias for the query at pos against keys 0..pos (causal buckets) */
    posbias_buckets(kv->bkt, 1, n, pos, 0, c->sw.relative_attention_num_buckets, c->sw.relative_attention_max_distance);
    posbias_forward(kv->bias, kv->bkt, ed->p.dec.rel_bias, NH, 1, n);
    AttnDims self = {1, 1, n, NH, NH, dk, (size_t)I, (size_t)I, (size_t)I, (size_t)I, 1.0f, 0};
    AttnDims cross = {1, R, Te, NH, NH, dk, (size_t)I, (size_t)I, (size_t)I, (size_t)I, 1.0f, 0};
    for (int i = 0; i < config_switch_layers(c, 1); i++) {
        const T5BlockParams *p = &ed->p.dec.blocks[i];
        float *K = kv->k + (size_t)i * R * P * I, *Vc = kv->v + (size_t)i * R * P * I;
        rmsnorm_forward(kv->xn, kv->rstd, kv->x, p->sa_ln, R, C, eps);
        matmul_forward(kv->q, kv->xn, p->q, NULL, R, C, I);
        matmul_forward(kv->kk, kv->xn, p->k, NULL, R, C, I);
        matmul_forward(kv->vv, kv->xn, p->v, NULL, R, C, I);
        for (int r = 0; r < R; r++) {
            float *Kr = K + (size_t)r * P * I, *Vr = Vc + (size_t)r * P * I;
            memcpy(Kr + (size_t)pos * I, kv->kk + (size_t)r * I, sizeof(float) * (size_t)I);
            memcpy(Vr + (size_t)pos * I, kv->vv + (size_t)r * I, sizeof(float) * (size_t)I);
            attn_forward(kv->y + (size_t)r * I, kv->att, kv->q + (size_t)r * I, Kr, Vr, kv->bias, NULL, &self);
        }
        matmul_forward(kv->proj, kv->y, p->o, NULL, R, I, C);
        add_forward(kv->x, kv->x, kv->proj, (size_t)R * C);
        rmsnorm_forward(kv->xn, kv->rstd, kv->x, p->ca_ln, R, C, eps);
        matmul_forward(kv->q, kv->xn, p->cq, NULL, R, C, I);
        attn_forward(kv->y, kv->att, kv->q, kv->ck + (size_t)i * kv->Te * I, kv->cv + (size_t)i * kv->Te * I, NULL,
                     kv->enc_mask, &cross);
        matmul_forward(kv->proj, kv->y, p->co, NULL, R, I, C);
        add_forward(kv->x, kv->x, kv->proj, (size_t)R * C);
        rmsnorm_forward(kv->xn, kv->rstd, kv->x, p->ff_ln, R, C, eps);
        if (config_switch_block_is_sparse(c, 1, i)) {
            moe_forward(kv->ffn, &kv->moe, kv->xn, tokens, &p->moe, &kv->moe_cfg, R, 0,
                        model_site_key(m, config_switch_layers(c, 0) + i, SITE_MOE));
        } else {
            matmul_forward(kv->fc_pre, kv->xn, p->wi, NULL, R, C, H);
            activation_forward(kv->fc, kv->fc_pre, c->hidden_act, R, H);
            matmul_forward(kv->ffn, kv->fc, p->wo, NULL, R, H, C);
        }
        add_forward(kv->x, kv->x, kv->ffn, (size_t)R * C);
    }
    rmsnorm_forward(kv->xn, kv->rstd, kv->x, ed->p.dec.final_ln, R, C, eps);
    if (c->tie_word_embeddings) {
        float sc = (float)pow((double)C, -0.5);   /* as the full forward rounds it */
        for (size_t k = 0; k < (size_t)R * C; k++) kv->xn[k] *= sc;
        matmul_forward(kv->logits, kv->xn, ed->p.shared, NULL, R, C, V);
    } else {
        matmul_forward(kv->logits, kv->xn, ed->p.lm_head, NULL, R, C, V);
    }
    kv->pos++;
}

void encdec_cache_reorder(EncDecCache *kv, const Model *m, const int *from) {
    int R = kv->R, P = kv->P, I = m->ed->I;
    size_t row = (size_t)kv->pos * I, stride = (size_t)P * I;
    for (int i = 0; i < m->cfg.sw.num_decoder_layers; i++)
        for (int kvi = 0; kvi < 2; kvi++) {
            float *base = (kvi ? kv->v : kv->k) + (size_t)i * R * stride;
            for (int r = 0; r < R; r++) memcpy(kv->tmp + r * stride, base + (size_t)from[r] * stride, sizeof(float) * row);
            for (int r = 0; r < R; r++) memcpy(base + r * stride, kv->tmp + r * stride, sizeof(float) * row);
        }
}

/* ---- decoding strategies --------------------------------------------------------------------------- */

/* log_softmax of one row in place (double sums) */
static void log_softmax(float *x, int V) {
    float mx = -FLT_MAX;
    for (int v = 0; v < V; v++) mx = x[v] > mx ? x[v] : mx;
    double s = 0.0;
    for (int v = 0; v < V; v++) s += exp((double)x[v] - mx);
    float lse = mx + (float)log(s);
    for (int v = 0; v < V; v++) x[v] -= lse;
}

/* Beam search's finished hypotheses (HF's BeamHypotheses): the best `beams` by score. */
typedef struct {
    int n, beams;
    double score[ENCDEC_MAX_BEAMS];
    int len[ENCDEC_MAX_BEAMS];
    int ids[ENCDEC_MAX_BEAMS][ENCDEC_MAX_NEW + 1];
    double worst;
} Hyps;

static void hyps_add(Hyps *h, const int *ids, int len, double sum_logprobs, float length_penalty) {
    /* HF: score = sum_logprobs / generated_len ** length_penalty */
    double score = sum_logprobs / pow((double)len, length_penalty);
    if (h->n >= h->beams && !(score > h->worst)) return;
    int slot = h->n;
    if (h->n == h->beams) {   /* replace the worst (the first of the lowest scores) */
        slot = 0;
        for (int i = 1; i < h->n; i++) if (h->score[i] < h->score[slot]) slot = i;
    } else {
        h->n++;
    }
    h->score[slot] = score;
    h->len[slot] = len;
    memcpy(h->ids[slot], ids, sizeof(int) * (size_t)len);
    h->worst = h->score[0];
    for (int i = 1; i < h->n; i++) h->worst = h->score[i] < h->worst ? h->score[i] : h->worst;
}

static int beam_search(Model *m, EncDecCache *kv, const EncDecGenOptions *o, int *out) {
    int N = o->beams, V = m->cfg.vocab_size;
    CHECK(N >= 1 && N <= ENCDEC_MAX_BEAMS && kv->R >= N && o->max_new <= ENCDEC_MAX_NEW);
    /* the search's state, static: one search at a time (the CLI's) */
    static Hyps hy;
    static int seq[ENCDEC_MAX_BEAMS][ENCDEC_MAX_NEW + 1], nseq[ENCDEC_MAX_BEAMS][ENCDEC_MAX_NEW + 1];
    static int tok[ENCDEC_MAX_BEAMS], from[ENCDEC_MAX_BEAMS], ctok[2 * ENCDEC_MAX_BEAMS], cbeam[2 * ENCDEC_MAX_BEAMS];
    static double bscore[ENCDEC_MAX_BEAMS], nscore[ENCDEC_MAX_BEAMS], cscore[2 * ENCDEC_MAX_BEAMS];
    memset(&hy, 0, sizeof hy);
    hy.beams = N;
    hy.worst = 1e9;
    for (int b = 0; b < N; b++) {
        bscore[b] = b ? -1e9 : 0.0;   /* the first step expands beam 0 only */
        tok[b] = o->start;
    }
    int len = 0, done = 0;
    while (!done && len < o->max_new) {
        encdec_step(m, kv, tok);
        /* the 2N best (beam, token) by beam score + log p, highest first, ties to the lower flat index */
        int K = 2 * N < N * V ? 2 * N : N * V;
        for (int k = 0; k < K; k++) cscore[k] = -INFINITY;
        for (int b = 0; b < N; b++) {
            float *lp = kv->logits + (size_t)b * V;
            log_softmax(lp, V);
            for (int v = 0; v < V; v++) {
                double s = bscore[b] + (double)lp[v];
                if (!(s > cscore[K - 1])) continue;
                int k = K - 1;
                while (k > 0 && s > cscore[k - 1]) {
                    cscore[k] = cscore[k - 1];
                    ctok[k] = ctok[k - 1];
                    cbeam[k] = cbeam[k - 1];
                    k--;
                }
                cscore[k] = s;
                ctok[k] = v;
                cbeam[k] = b;
            }
        }
        int nb = 0;
        for (int k = 0; k < K && nb < N; k++) {
            if (ctok[k] == o->eos) {
                /* a finished hypothesis, unless it ranks below the first N candidates (HF) */
                if (k >= N) continue;
                hyps_add(&hy, seq[cbeam[k]], len, cscore[k], o->length_penalty);
                continue;
            }
            nscore[nb] = cscore[k];
            from[nb] = cbeam[k];
            memcpy(nseq[nb], seq[cbeam[k]], sizeof(int) * (size_t)len);
            nseq[nb][len] = ctok[k];
            nb++;
        }
        CHECK(nb == N);   /* 2N candidates hold at most N eos ones */
        /* HF's is_done (early_stopping False): full, and no beam can beat the worst finished one */
        if (hy.n >= N) done = hy.worst >= cscore[0] / pow((double)(len > 0 ? len : 0), o->length_penalty);
        len++;
        for (int b = 0; b < N; b++) {
            bscore[b] = nscore[b];
            tok[b] = nseq[b][len - 1];
            memcpy(seq[b], nseq[b], sizeof(int) * (size_t)len);
        }
        encdec_cache_reorder(kv, m, from);
    }
    if (!done)   /* HF's finalize: the open beams join the hypotheses */
        for (int b = 0; b < N; b++) hyps_add(&hy, seq[b], len, bscore[b], o->length_penalty);
    int best = 0;
    for (int i = 1; i < hy.n; i++) if (hy.score[i] > hy.score[best]) best = i;
    memcpy(out, hy.ids[best], sizeof(int) * (size_t)hy.len[best]);
    return hy.len[best];
}

int encdec_generate(Model *m, EncDecCache *kv, const EncDecGenOptions *o, int *out) {
    CHECK(o->max_new >= 0 && o->max_new < kv->P && kv->pos == 0 && kv->R == (o->beams > 1 ? o->beams : 1));
    if (o->beams > 1) return beam_search(m, kv, o, out);
    int V = m->cfg.vocab_size, tok = o->start, n = 0;
    Rng rng;
    rng_seed(&rng, o->seed);
    for (int i = 0; i < o->max_new; i++) {
        encdec_step(m, kv, &tok);
        tok = sample_token(kv->logits, V, o->temp, o->top_k, o->top_p, &rng, kv->sample);
        if (tok == o->eos) break;
        out[n++] = tok;
    }
    return n;
}
