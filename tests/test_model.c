/* test_model.c: the whole model's gradient against central finite differences on tiny configs
 * (dense pre-norm lm, RMSNorm + SwiGLU untied, switch lm with capacity dropping, the seed model),
 * causality, a short training run whose loss must fall, and model_cost's FLOPs and Q8_0 bytes against
 * the tensor table.
 *
 * FD tolerance: tiny models whose weights are scaled up 20x from the init so that every term of
 * the gradient is visible; h = 3e-3 on float parameters. The loss (~2) is a float, so its rounding
 * (2.4e-7) gives the quotient ~4e-5 of noise; the O(h^2) curvature term stays below 1% here.
 * atol 1e-4 and rtol 3e-2 pass that noise and catch a wrong or missing term, which is off by
 * O(|grad|) (checked: scaling any one backward term by 0.9 fails). Dropout is 0; coordinates whose
 * perturbation changes a selection (routing, capacity drops, the sign of a ReLU input) are skipped,
 * because the function is not differentiable there. (FD_H and FD_S override h and the scale.) */
#include <string.h>
#include "test.h"
#include "fd.h"
#include "model/model.h"
#include "model/steps.h"
#include "tiny_models.h"
#include "optim/optim.h"

typedef struct { Model *m; int *inp, *tgt; } Ctx;

static double loss_fn(void *p) {
    Ctx *c = p;
    rng_seed(&c->m->rng, 99);   /* the same random-router draw and jitter in every evaluation */
    float l = model_forward(c->m, c->inp, c->tgt, 0);
    return (double)l + c->m->aux_loss;
}

/* the expert chosen for each token in every MoE layer, to detect routing flips under perturbation */
static void routing_signature(const Model *m, int *sig, int n) {
    MoELayer ml[16];
    int L = model_moe_layers(m, ml, 16), k = 0;
    const MoEActs *acts[16];
    for (int l = 0; l < L && l < 16; l++) acts[l] = ml[l].a;
    memset(sig, 0, sizeof(int) * (size_t)n);
    for (int l = 0; l < L && l < 16; l++)
        for (int t = 0; t < acts[l]->N * m->moe_cfg.K && k < n; t++) sig[k++] = acts[l]->slot_row[t] >= 0 ? acts[l]->expert[t] : -1;
    /* ReLU kinks are selections too: a pre-activation that changes sign under the perturbation
     * makes the difference quotient meaningless, so their signs join the signature (folded in). */
    int N = m->B * m->T, seed = m->cfg.model_type == MODEL_SEED;
    uint32_t h = 2166136261u;
    if (m->cfg.hidden_act == ACT_RELU)
        for (int l = 0; l < m->cfg.num_layers; l++)
            if (m->a.layers[l].fc_pre)
                for (int i = 0; i < N * m->cfg.d_ff; i++) h = (h ^ (m->a.layers[l].fc_pre[i] > 0)) * 16777619u;
    if (m->moe_cfg.act == ACT_RELU)
        for (int l = 0; l < L && l < 16; l++)
            for (int i = 0; i < acts[l]->S * m->moe_cfg.H; i++) h = (h ^ (acts[l]->h_pre[i] > 0)) * 16777619u;
    if (seed)
        for (int i = 0; i < N * m->cfg.head_hidden; i++) h = (h ^ (m->a.head_pre[i] > 0)) * 16777619u;
    if (k < n) sig[k++] = (int)h;
}

static int grad_check(Model *m, int *inp, int *tgt, int max_per_tensor) {
    Ctx c = {m, inp, tgt};
    model_zero_grad(m);
    loss_fn(&c);
    model_backward(m);
    int sig0[4096], sig1[4096];
    memset(sig0, 0, sizeof sig0);
    routing_signature(m, sig0, 4096);
    float *grads = malloc(sizeof(float) * m->n_params);
    memcpy(grads, m->grads, sizeof(float) * m->n_params);
    int ok = 1;
    const float h = getenv("FD_H") ? (float)atof(getenv("FD_H")) : 3e-3f;
    for (int i = 0; i < m->n_tensors; i++) {
        const TensorInfo *t = &m->tensors[i];
        if (!t->trainable) continue;
        size_t step = t->size > (size_t)max_per_tensor ? t->size / max_per_tensor : 1;
        int bad = 0, checked = 0;
        for (size_t k = 0; k < t->size; k += step) {
            float *x = m->params + t->offset + k;
            float old = *x;
            *x = old + h;
            double lp = loss_fn(&c);
            routing_signature(m, sig1, 4096);
            int flip = memcmp(sig0, sig1, sizeof sig0) != 0;
            *x = old - h;
            double lm = loss_fn(&c);
            routing_signature(m, sig1, 4096);
            flip |= memcmp(sig0, sig1, sizeof sig0) != 0;
            *x = old;
            if (flip) continue;
            checked++;
            double num = (lp - lm) / (2.0 * h), an = grads[t->offset + k];
            if (fabs(num - an) > 1e-4 + 3e-2 * fabs(num)) {
                if (bad < 3) printf("  %s[%zu]: analytic %.6g numeric %.6g\n", t->name, k, an, num);
                bad++;
            }
        }
        if (bad || checked == 0) {
            printf("  %s: %d bad of %d checked\n", t->name, bad, checked);
            ok = 0;
        }
    }
    free(grads);
    return ok;
}

static void tiny(ModelConfig *c, int V) { tiny_lm(c, V, 0.0f); }

static void batch(int *inp, int *tgt, int n, int V, int seed) {
    for (int i = 0; i < n; i++) {
        inp[i] = (i * 7 + seed * 3 + i / 3) % V;
        tgt[i] = (i * 5 + seed + 1) % V;
    }
}

static void run_case(ModelConfig *c, const char *label) {
    Model m;
    int B = 2, T = 5, V = c->vocab_size, inp[10], tgt[10];
    EXPECT_MSG(model_create(&m, c, B, T, 1) == MOELM_OK, "%s: %s", label, moelm_last_error());
    scale_params(&m, getenv("FD_S") ? (float)atof(getenv("FD_S")) : 20.0f, 0);
    batch(inp, tgt, B * T, V, 1);
    tgt[3] = -1;   /* an ignored position */
    int ok = grad_check(&m, inp, tgt, 25);
    EXPECT_MSG(ok, "%s", label);
    model_free(&m);
}

/* 3 experts in every block, capacity 2 of the 10 tokens' slots: drops happen */
static void switch_with_drops(ModelConfig *c) {
    tiny(c, 11);
    c->num_experts = 3;
    c->sparse_step = 1;
    c->capacity_factor = 0.5f;      /* Cap = max(1, round(0.5*10/3)) = 2 */
    c->eval_capacity_factor = 0.5f;
    c->min_capacity = 1;
}

TEST(grad_dense_lm) {
    ModelConfig c;
    tiny(&c, 11);
    c.num_experts = 0;
    run_case(&c, "dense layernorm gelu tied");
}

TEST(grad_dense_rms_swiglu_untied) {
    ModelConfig c;
    tiny(&c, 11);
    c.num_experts = 0;
    c.norm_type = NORM_RMS;
    c.hidden_act = ACT_SWIGLU;
    c.tie_word_embeddings = 0;
    run_case(&c, "dense rmsnorm swiglu untied");
}

TEST(grad_switch_lm_with_drops) {
    ModelConfig c;
    switch_with_drops(&c);
    run_case(&c, "switch lm, capacity dropping");
}

TEST(grad_topk_lm) {
    ModelConfig c;
    tiny(&c, 11);
    c.num_experts = 4;
    c.sparse_step = 2;
    c.router_type = ROUTER_TOPK;
    c.num_experts_per_tok = 2;
    run_case(&c, "top-2 lm");
}

/* The adaptive softmax's head (ops/adaptive.h) in the whole model: two tail clusters, tied to the
 * embedding, after a switch layer with drops; one cluster, untied */
TEST(grad_adaptive_lm) {
    ModelConfig c;
    switch_with_drops(&c);
    EXPECT(config_set(&c, "adaptive_softmax_cutoffs", "4,8") == MOELM_OK && c.n_adaptive == 2);
    run_case(&c, "adaptive softmax, 2 clusters, tied, switch with drops");
    tiny(&c, 11);
    c.num_experts = 0;
    c.tie_word_embeddings = 0;
    EXPECT(config_set(&c, "adaptive_softmax_cutoffs", "6") == MOELM_OK && c.n_adaptive == 1);
    run_case(&c, "adaptive softmax, 1 cluster, untied");
}

/* Rotary positions in the lm (position_embedding rope): the llama path's rotation behind the lm's
 * biased q | k | v, no pos_emb; after a switch layer with drops, rmsnorm and swiglu; and dense */
TEST(grad_rope_lm) {
    ModelConfig c;
    switch_with_drops(&c);
    c.norm_type = NORM_RMS;
    c.hidden_act = ACT_SWIGLU;
    EXPECT(config_set(&c, "position_embedding", "rope") == MOELM_OK && c.rope == 1);
    EXPECT(config_set(&c, "rope_theta", "50") == MOELM_OK);   /* a small base: every pair turns visibly at T = 5 */
    EXPECT(config_check(&c) == MOELM_OK);
    run_case(&c, "rope lm, switch with drops, rmsnorm swiglu");
    tiny(&c, 11);
    c.num_experts = 0;
    EXPECT(config_set(&c, "position_embedding", "rope") == MOELM_OK);
    Model m;
    EXPECT(model_create(&m, &c, 2, 5, 1) == MOELM_OK);
    EXPECT(m.p.wpe == NULL);   /* no learned positions */
    model_free(&m);
    run_case(&c, "rope lm, dense");
}

/* A forward for the distribution (no targets, or full_logits) gives every word's log p: each row sums to
 * 1, and the targets' entries are the losses of the forward that reads the targets' clusters only. */
TEST(adaptive_full_logits_are_the_losses) {
    ModelConfig c;
    tiny(&c, 11);
    EXPECT(config_set(&c, "adaptive_softmax_cutoffs", "3,7") == MOELM_OK);
    Model m;
    int B = 2, T = 5, V = 11, inp[10], tgt[10];
    EXPECT(model_create(&m, &c, B, T, 5) == MOELM_OK);
    scale_params(&m, 20.0f, 0);
    batch(inp, tgt, B * T, V, 3);
    tgt[4] = -1;
    float fast = model_forward(&m, inp, tgt, 0);
    float lf[10];
    memcpy(lf, m.a.losses, sizeof lf);
    ModelCost k_fast, k_full;
    model_cost(&m, NULL, &k_fast);
    m.full_logits = 1;
    float full = model_forward(&m, inp, tgt, 0);
    model_cost(&m, NULL, &k_full);
    /* model_cost's products: the head's 3 + 2 rows for every token, a target's cluster's words ([3, 7) or
     * [7, 11)) for each target in a tail; all 11 words and 2 clusters for the distribution */
    double rows = 0.0;
    for (int i = 0; i < B * T; i++) rows += 5 + (tgt[i] >= 3 ? 4 : 0);
    double want = 2.0 * c.d_model * (B * T * (V + 2) - rows);
    EXPECT_MSG(fabs((k_full.flops - k_fast.flops) - want) < 1e-6 * want, "model_cost: %.0f more FLOPs for the distribution, "
               "want %.0f", k_full.flops - k_fast.flops, want);
    EXPECT_MSG(fabsf(fast - full) < 1e-5f * (1.0f + fast), "mean loss %.7g (targets' clusters) against %.7g (all words)",
               fast, full);
    for (int i = 0; i < B * T; i++) {
        double sum = 0.0;
        for (int v = 0; v < V; v++) sum += exp(m.a.logits[i * V + v]);
        EXPECT_MSG(fabs(sum - 1.0) < 1e-5, "row %d sums to %.7f", i, sum);
        EXPECT_MSG(fabsf(lf[i] - m.a.losses[i]) < 1e-5f * (1.0f + lf[i]), "row %d: loss %.7g against %.7g", i, lf[i],
                   m.a.losses[i]);
    }
    model_free(&m);
}

/* The Llama / Mixtral family: RoPE, grouped-query attention (4 query heads over 2), RMSNorm, SwiGLU,
 * no biases; mixtral's top-2 router (softmax over the chosen 2) with HF's balance loss over both layers
 * (coefficient 0.1, so that its gradient is visible), untied; llama dense and tied. */
TEST(grad_mixtral) {
    ModelConfig c;
    tiny_llama(&c, 1, 11);
    run_case(&c, "mixtral top-2 gqa untied");
    EXPECT(config_check(&c) == MOELM_OK);
}

TEST(grad_mixtral_switch_capacity) {
    ModelConfig c;   /* the other routers through --set: switch with dropping, its own losses */
    tiny_llama(&c, 1, 11);
    EXPECT(config_set(&c, "router_type", "switch") == MOELM_OK);
    EXPECT(config_set(&c, "capacity_factor", "0.5") == MOELM_OK);
    EXPECT(config_set(&c, "eval_capacity_factor", "0.5") == MOELM_OK);
    c.min_capacity = 1;
    run_case(&c, "mixtral layout, switch router with drops");
}

TEST(grad_llama) {
    ModelConfig c;
    tiny_llama(&c, 0, 11);
    c.tie_word_embeddings = 1;
    c.num_key_value_heads = 4;   /* plain multi-head */
    run_case(&c, "llama dense tied");
    tiny_llama(&c, 0, 11);
    c.num_key_value_heads = 1;   /* multi-query */
    run_case(&c, "llama dense mqa untied");
}

/* HF's balance loss by hand: one layer's logits over a top-2 of 3 experts, against the loss the model
 * adds (the sum over k of the top-k shares times the mean probability, times E, times the coefficient). */
TEST(mixtral_balance_loss_value) {
    ModelConfig c;
    tiny_llama(&c, 1, 11);
    Model m;
    int B = 2, T = 5, inp[10], tgt[10];
    EXPECT(model_create(&m, &c, B, T, 3) == MOELM_OK);
    scale_params(&m, 20.0f, 0);
    batch(inp, tgt, B * T, 11, 2);
    model_forward(&m, inp, tgt, 0);
    double f[3] = {0}, P[3] = {0};
    int N = B * T, E = 3, L = 2;
    for (int l = 0; l < L; l++) {
        const MoEActs *a = &m.a.layers[l].moe;
        for (int t = 0; t < N; t++) {
            /* the two largest logits, by hand */
            const float *lg = a->logits + t * E;
            double mx = lg[0], z = 0;
            for (int e = 1; e < E; e++) if (lg[e] > mx) mx = lg[e];
            for (int e = 0; e < E; e++) z += exp(lg[e] - mx);
            int lo = 0;
            for (int e = 1; e < E; e++) if (lg[e] < lg[lo]) lo = e;
            for (int e = 0; e < E; e++) {
                P[e] += exp(lg[e] - mx) / z / (L * N);
                if (e != lo) f[e] += 1.0 / (L * N);
            }
        }
    }
    double want = 0;
    for (int e = 0; e < E; e++) want += f[e] * P[e];
    want *= E * 0.1;
    EXPECT_MSG(fabs(m.aux_loss - want) < 1e-6 * want + 1e-7, "aux %.9g, by hand %.9g", m.aux_loss, want);
    /* off: no loss */
    m.cfg.output_router_logits = 0;
    model_forward(&m, inp, tgt, 0);
    EXPECT(m.aux_loss == 0.0f);
    model_free(&m);
}

TEST(llama_causality) {
    /* dense: bit-equal earlier logits (an MoE's expert products run over however many rows reached the
     * expert, which may round a row's sums differently) */
    ModelConfig c;
    tiny_llama(&c, 0, 13);
    Model m;
    int B = 1, T = 8, inp[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    EXPECT(model_create(&m, &c, B, T, 3) == MOELM_OK);
    scale_params(&m, 10.0f, 0);
    model_forward(&m, inp, NULL, 0);
    float l1[8 * 13];
    memcpy(l1, m.a.logits, sizeof l1);
    inp[5] = 12;
    model_forward(&m, inp, NULL, 0);
    EXPECT(memcmp(l1, m.a.logits, sizeof(float) * 5 * 13) == 0);
    EXPECT(memcmp(l1 + 5 * 13, m.a.logits + 5 * 13, sizeof(float) * 13) != 0);
    model_free(&m);
}

TEST(grad_seed_models) {
    RouterType r[4] = {ROUTER_HASH, ROUTER_RANDOM, ROUTER_SOFT, ROUTER_SWITCH};
    for (int i = 0; i < 4; i++) {
        ModelConfig c;
        tiny_seed(&c, r[i], 0.0f);
        /* GELU in the stack and the experts: with ReLU there (the preset's choice, whose backward
         * test_ops checks) nearly every perturbation flips some ReLU input and is skipped */
        c.hidden_act = ACT_GELU;
        run_case(&c, router_name(r[i]));
    }
}

/* model_init_output_bias: the seed head's bias becomes log((count + 1) / (n + V)) per id (an unseen
 * id finite), only that tensor changes; a model without an output bias is left as it was. The
 * seed presets ask for it and the others do not (issue 24: with a zero bias the seed Switch's
 * router collapses on PTB). */
TEST(output_bias_from_unigrams) {
    ModelConfig c;
    tiny_seed(&c, ROUTER_SWITCH, 0.0f);
    Model m;
    EXPECT(model_create(&m, &c, 1, 4, 3) == MOELM_OK);
    int ids[10] = {2, 2, 2, 5, 5, 0, 2, 7, 5, 2};   /* 0: 1, 2: 5, 5: 3, 7: 1 of n = 10, V = 11 */
    float *before = malloc(sizeof(float) * m.n_params);
    memcpy(before, m.params, sizeof(float) * m.n_params);
    EXPECT(model_init_output_bias(&m, ids, 10) == 1);
    double count[11] = {1, 0, 5, 0, 0, 3, 0, 1, 0, 0, 0};
    for (int v = 0; v < 11; v++)   /* float of a double: within one float ulp */
        EXPECT_NEAR(m.p.head_b2[v], log((count[v] + 1.0) / 21.0), 1e-6);
    size_t off = (size_t)(m.p.head_b2 - m.params), changed = 0;
    for (size_t i = 0; i < m.n_params; i++) changed += (i < off || i >= off + 11) && m.params[i] != before[i];
    EXPECT(changed == 0);
    model_free(&m);
    tiny_lm(&c, 11, 0.0f);
    EXPECT(model_create(&m, &c, 1, 4, 3) == MOELM_OK);
    free(before);
    before = malloc(sizeof(float) * m.n_params);
    memcpy(before, m.params, sizeof(float) * m.n_params);
    EXPECT(model_init_output_bias(&m, ids, 10) == 0);
    EXPECT(memcmp(before, m.params, sizeof(float) * m.n_params) == 0);
    model_free(&m);
    free(before);
    const char *presets[4] = {"seed-moe", "seed-gating", "seed-switch", "switch-ptb"};
    for (int i = 0; i < 4; i++) {
        TrainConfig tc;
        EXPECT(config_preset_train(&tc, presets[i]) == MOELM_OK);
        EXPECT(tc.unigram_output_bias == (i < 3));
    }
}

TEST(causality) {
    /* changing a future token changes no earlier logit */
    ModelConfig c;
    tiny(&c, 13);
    c.num_experts = 0;
    Model m;
    int B = 1, T = 8, inp[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    EXPECT(model_create(&m, &c, B, T, 3) == MOELM_OK);
    scale_params(&m, 10.0f, 0);
    model_forward(&m, inp, NULL, 0);
    float *l1 = malloc(sizeof(float) * T * 13);
    memcpy(l1, m.a.logits, sizeof(float) * T * 13);
    inp[5] = 12;
    model_forward(&m, inp, NULL, 0);
    EXPECT(memcmp(l1, m.a.logits, sizeof(float) * 5 * 13) == 0);
    EXPECT(memcmp(l1 + 5 * 13, m.a.logits + 5 * 13, sizeof(float) * 13) != 0);
    free(l1);
    model_free(&m);
}

TEST(training_reduces_loss) {
    /* a repeating sequence is learnable: 60 AdamW steps must take the loss from ~log V well down */
    ModelConfig c;
    tiny(&c, 16);
    c.d_model = 32;
    c.num_heads = 4;
    c.d_ff = 64;
    c.n_positions = 16;
    TrainConfig tc;
    config_preset_train(&tc, "tiny");
    tc.lr = 1e-2f;
    Model m;
    Optimizer o;
    int B = 4, T = 16, inp[64], tgt[64];
    EXPECT(model_create(&m, &c, B, T, 5) == MOELM_OK);
    EXPECT(optim_create(&o, m.n_params) == MOELM_OK);
    for (int i = 0; i < B * T; i++) { inp[i] = (i * 3) % 16; tgt[i] = (i * 3 + 3) % 16; }
    float first = 0, last = 0;
    for (int s = 0; s < 60; s++) {
        model_zero_grad(&m);
        float l = model_forward(&m, inp, tgt, 1);
        model_backward(&m);
        grad_clip(&m, 1.0f);
        optim_step(&o, &m, &tc, tc.lr, 1.0f);
        if (s == 0) first = l;
        last = l;
    }
    EXPECT_NEAR(first, log(16.0), 0.3);
    EXPECT_MSG(last < 0.5f, "loss %g -> %g", first, last);
    optim_free(&o);
    model_free(&m);
}

/* model_cost's FLOPs of a forward against the model's tensor table: 2 per multiply-add, N rows
 * through every weight matrix but the embeddings' (wte again as a tied head), the experts' slabs only
 * for the slots the forward kept (each MoE layer's S rows through one expert's share), and attention's
 * scores and weighted sums counted pair by pair (query t and key u <= t, 2 x 2 hd per head). Exact:
 * every count is a whole number below 2^53. Checked: counting q, k, v at 3C rows under grouped-query
 * attention, or the experts over N K slots with drops, fails. */
static double table_flops(const Model *m) {
    const ModelConfig *c = &m->cfg;
    double N = (double)m->B * m->T, f = 0.0, experts = 0.0;
    int tied_head = c->model_type != MODEL_SEED && c->tie_word_embeddings;
    for (int i = 0; i < m->n_tensors; i++) {
        const TensorInfo *t = &m->tensors[i];
        int emb = strstr(t->name, "tok_emb") || strstr(t->name, "pos_emb") || strstr(t->name, "embed_tokens");
        if (t->ndim < 2 || !strstr(t->name, ".weight")) continue;
        if (strstr(t->name, ".experts.")) experts += (double)t->size;
        else if (!emb || (tied_head && !strstr(t->name, "pos_emb"))) f += 2 * N * (double)t->size;
    }
    MoELayer ml[8];
    int n_moe = model_moe_layers(m, ml, 8);
    for (int i = 0; i < n_moe; i++) f += 2.0 * ml[i].a->S * (experts / n_moe / m->moe_cfg.E);
    for (int l = 0; l < c->num_layers; l++)
        for (int b = 0; b < m->B; b++)
            for (int q = 0; q < m->T; q++)
                for (int u = 0; u <= q; u++) f += 2.0 * 2 * c->d_model;   /* NH heads of hd: C a pair */
    return f;
}

TEST(cost_flops_match_the_tensors) {
    ModelConfig c[6];
    const char *label[6] = {"dense tied", "switch lm with drops", "top-2 + shared", "seed soft", "mixtral gqa",
                            "llama tied"};
    tiny(&c[0], 11);
    c[0].num_experts = 0;
    tiny(&c[1], 11);
    c[1].num_experts = 3;
    c[1].sparse_step = 1;
    c[1].eval_capacity_factor = 0.5f;   /* Cap 2 of 10 rows a expert: slots dropped */
    c[1].min_capacity = 1;
    tiny(&c[2], 11);
    c[2].num_experts = 4;
    c[2].router_type = ROUTER_TOPK;
    c[2].num_experts_per_tok = 2;
    c[2].shared_expert = 1;
    c[2].hidden_act = ACT_SWIGLU;
    tiny_seed(&c[3], ROUTER_SOFT, 0.0f);
    tiny_llama(&c[4], 1, 11);
    tiny_llama(&c[5], 0, 11);
    c[5].tie_word_embeddings = 1;
    for (int i = 0; i < 6; i++) {
        Model m;
        EXPECT_MSG(model_create(&m, &c[i], 2, 5, 1) == MOELM_OK, "%s: %s", label[i], moelm_last_error());
        int inp[10];
        for (int k = 0; k < 10; k++) inp[k] = (3 * k + 1) % 11;
        model_forward(&m, inp, NULL, 0);
        ModelCost k;
        model_cost(&m, NULL, &k);
        EXPECT_MSG(k.flops == table_flops(&m), "%s: %.0f FLOPs, the tensors say %.0f", label[i], k.flops, table_flops(&m));
        model_free(&m);
    }
}

/* model_cost with a Q8Arena: the matrix it holds (layer 0's q, k, v: 128 values, 4 blocks) counts as
 * 4 blocks of 34 bytes in the attention part instead of 128 matrix floats, nothing else moves. */
TEST(cost_counts_q8_blocks) {
    ModelConfig c;
    tiny_llama(&c, 1, 11);
    Model m;
    EXPECT(model_create(&m, &c, 1, 4, 1) == MOELM_OK);
    size_t at = (size_t)(m.p.layers[0].qkv_w - m.params), n = (size_t)model_qkv_width(&c) * c.d_model;
    Q8Arena q = {0};
    EXPECT(n == 128 && q8_arena_add(&q, at, n) == MOELM_OK);
    ModelCost f, k;
    model_cost(&m, NULL, &f);
    model_cost(&m, &q, &k);
    for (int p = 0; p < KV_PHASES; p++) {
        int att = p == KV_PHASE_ATTENTION;
        EXPECT_MSG(k.mat[p] == f.mat[p] - (att ? 128.0 : 0.0) && k.vec[p] == f.vec[p], "part %d", p);
        EXPECT_MSG(k.q8_bytes[p] == (att ? 4 * 34.0 : 0.0) && f.q8_bytes[p] == 0.0, "part %d: %.0f bytes", p, k.q8_bytes[p]);
    }
    q8_arena_free(&q);
    model_free(&m);
}

TEST(bad_configs_rejected) {
    ModelConfig c;
    tiny(&c, 11);
    c.num_heads = 3;   /* does not divide 8 */
    Model m;
    EXPECT(model_create(&m, &c, 1, 4, 1) == MOELM_ERR_CONFIG);
    EXPECT(strstr(moelm_last_error(), "num_heads") != NULL);
    tiny(&c, 11);
    c.d_model = -4;
    EXPECT(model_create(&m, &c, 1, 4, 1) == MOELM_ERR_CONFIG);
    tiny(&c, 11);
    c.capacity_factor = NAN;
    c.num_experts = 4;
    EXPECT(config_check(&c) == MOELM_ERR_CONFIG);
    tiny(&c, 11);
    EXPECT(model_create(&m, &c, 1, 100, 1) == MOELM_ERR_CONFIG);   /* T > n_positions */
    EXPECT(config_set(&c, "no_such_key", "1") == MOELM_ERR_CONFIG);
    EXPECT(config_set(&c, "d_model", "12abc") == MOELM_ERR_CONFIG);
    tiny(&c, 11);
    c.num_experts = 4;
    c.router_type = ROUTER_EXPERT_CHOICE;
    EXPECT(config_check(&c) == MOELM_ERR_CONFIG);   /* non-causal router in a causal LM */
    /* the adaptive softmax's cutoffs: ascending, inside the vocabulary, the lm only */
    const char *bad_cuts[] = {"5,3", "11", "0,4", "4,4", "a", "3,", "1,2,3,4,5,6,7,8,9"};
    for (int i = 0; i < 7; i++) {
        tiny(&c, 11);
        moelm_status st = config_set(&c, "adaptive_softmax_cutoffs", bad_cuts[i]);
        if (!st) st = config_check(&c);
        EXPECT_MSG(st == MOELM_ERR_CONFIG && strstr(moelm_last_error(), "adaptive_softmax_cutoffs"), "'%s' accepted",
                   bad_cuts[i]);
    }
    config_preset(&c, "seed-switch");
    c.vocab_size = 11;
    EXPECT(config_set(&c, "adaptive_softmax_cutoffs", "4") == MOELM_OK);
    EXPECT(config_check(&c) == MOELM_ERR_CONFIG && strstr(moelm_last_error(), "model_type lm"));
    /* position_embedding: learned or rope; rope on the lm only, with an even head width */
    tiny(&c, 11);
    EXPECT(config_set(&c, "position_embedding", "absolute") == MOELM_ERR_CONFIG &&
           strstr(moelm_last_error(), "not learned or rope"));
    EXPECT(config_set(&c, "position_embedding", "rope") == MOELM_OK && config_check(&c) == MOELM_OK);
    c.num_heads = 4;   /* 8 / 4 = 2: even */
    EXPECT(config_check(&c) == MOELM_OK);
    c.d_model = 12;
    c.num_heads = 4;   /* 12 / 4 = 3 */
    EXPECT(config_check(&c) == MOELM_ERR_CONFIG && strstr(moelm_last_error(), "even head width"));
    config_preset(&c, "seed-switch");
    c.vocab_size = 11;
    EXPECT(config_set(&c, "position_embedding", "rope") == MOELM_OK);
    EXPECT(config_check(&c) == MOELM_ERR_CONFIG && strstr(moelm_last_error(), "only model_type lm"));
}

/* Expert parallelism's layout: each of P parts holds E/P experts of every MoE layer, with exactly
 * the full model's values there (the initialisation keeps the slice of the whole stream), the other
 * tensors whole and equal, and the arithmetic of held and full sizes right. */
TEST(sharded_experts_layout) {
    ModelConfig c;
    tiny(&c, 11);
    c.num_experts = 4;
    c.sparse_step = 1;
    Model full, part;
    EXPECT(model_create(&full, &c, 1, 4, 7) == MOELM_OK);
    EXPECT(full.n_params == full.n_params_full);
    for (int P = 2; P <= 4; P += 2) {
        size_t held_sum = 0;
        for (int p = 0; p < P; p++) {
            EXPECT(model_create_sharded(&part, &c, 1, 4, 7, p, P) == MOELM_OK);
            EXPECT(part.n_params_full == full.n_params && part.n_params < full.n_params);
            EXPECT(part.n_tensors == full.n_tensors && part.moe_cfg.e_first == p * 4 / P);
            int n_sharded = 0;
            for (int i = 0; i < part.n_tensors; i++) {
                const TensorInfo *t = &part.tensors[i], *f = &full.tensors[i];
                EXPECT(strcmp(t->name, f->name) == 0 && t->full_offset == f->offset && t->full_size == f->size);
                int expert = strstr(t->name, ".experts.") != NULL;
                n_sharded += tensor_sharded(t);
                EXPECT(tensor_sharded(t) == expert);
                if (expert) {
                    EXPECT(t->shape[0] == 4 / P && t->full_dim0 == 4 && t->shard_first == p * 4 / P);
                    EXPECT(t->size * (size_t)P == f->size);
                    held_sum += t->size;
                }
                /* held values = the slice of the full model's tensor */
                size_t skip = f->size / 4 * (size_t)t->shard_first;
                EXPECT_MSG(memcmp(part.params + t->offset, full.params + f->offset + skip, t->size * sizeof(float)) == 0,
                           "%s part %d of %d", t->name, p, P);
            }
            EXPECT(n_sharded == 4 * c.num_layers);   /* fc1/fc2 weight and bias per MoE layer */
            size_t a, b, e1, e2, x1, x2;
            model_param_counts(&full, &a, &e1, &x1);
            model_param_counts(&part, &b, &e2, &x2);
            EXPECT(a == b && e1 == e2 && x1 == x2);   /* the counts are the whole model's */
            model_free(&part);
        }
        size_t expert_total = 0;
        for (int i = 0; i < full.n_tensors; i++)
            if (strstr(full.tensors[i].name, ".experts.")) expert_total += full.tensors[i].size;
        EXPECT(held_sum == expert_total);   /* the parts together hold every expert once */
    }
    /* parts that do not divide the experts, or out of range */
    EXPECT(model_create_sharded(&part, &c, 1, 4, 7, 0, 3) == MOELM_ERR_CONFIG);
    EXPECT(strstr(moelm_last_error(), "divide") != NULL);
    EXPECT(model_create_sharded(&part, &c, 1, 4, 7, 2, 2) == MOELM_ERR_CONFIG);
    model_free(&full);
}

TEST(config_json_round_trip) {
    ModelConfig c, d;
    config_preset(&c, "switch-ptb");
    c.vocab_size = 1234;
    c.router_type = ROUTER_TOPK;
    c.num_experts_per_tok = 2;
    c.routed_scaling_factor = 0.75f;
    EXPECT(config_set(&c, "adaptive_softmax_cutoffs", "200,600") == MOELM_OK);
    EXPECT(config_set(&c, "position_embedding", "rope") == MOELM_OK && config_set(&c, "rope_theta", "500") == MOELM_OK);
    char *js = config_to_json(&c);
    EXPECT(js != NULL);
    system("mkdir -p build/tmp");
    FILE *f = fopen("build/tmp/cfg.json", "w");
    fputs(js, f);
    fclose(f);
    moelm_free(js);
    EXPECT_MSG(config_load(&d, "build/tmp/cfg.json") == MOELM_OK, "%s", moelm_last_error());
    EXPECT(memcmp(&c, &d, sizeof c) == 0);
    /* the llama family's HF config.json (arrays, nulls, HF's names) back to the same config */
    const char *presets[2] = {"mixtral-tiny", "llama-tiny"};
    for (int i = 0; i < 2; i++) {
        config_preset(&c, presets[i]);
        c.vocab_size = 300;
        c.bos_token_id = 1;
        if (i == 0) c.router_z_loss_coef = 0.25f;   /* a moelm key after HF's */
        js = config_to_json(&c);
        EXPECT(js && strstr(js, i ? "\"LlamaForCausalLM\"" : "\"MixtralForCausalLM\""));
        f = fopen("build/tmp/cfg.json", "w");
        fputs(js, f);
        fclose(f);
        moelm_free(js);
        EXPECT_MSG(config_load(&d, "build/tmp/cfg.json") == MOELM_OK, "%s: %s", presets[i], moelm_last_error());
        EXPECT_MSG(memcmp(&c, &d, sizeof c) == 0, "%s", presets[i]);
    }
}

/* HF's configs: MixtralConfig's and LlamaConfig's defaults for the keys a file leaves out; keys moelm
 * does not build are refused naming the key. */
TEST(llama_config_keys) {
    ModelConfig c;
    system("mkdir -p build/tmp");
    const char *path = "build/tmp/hfcfg.json";
    FILE *f = fopen(path, "w");
    fputs("{\"architectures\": [\"MixtralForCausalLM\"], \"model_type\": \"mixtral\", \"vocab_size\": 100, "
          "\"hidden_size\": 64, \"num_attention_heads\": 8, \"num_hidden_layers\": 2, \"sliding_window\": null, "
          "\"pad_token_id\": null, \"torch_dtype\": \"bfloat16\"}", f);
    fclose(f);
    EXPECT_MSG(config_load(&c, path) == MOELM_OK, "%s", moelm_last_error());
    EXPECT(c.model_type == MODEL_MIXTRAL && c.d_model == 64 && c.num_key_value_heads == 8 && c.d_ff == 14336);
    EXPECT(c.num_experts == 8 && c.num_experts_per_tok == 2 && c.rope_theta == 1e6f && c.layer_norm_epsilon == 1e-5f);
    EXPECT(c.router_type == ROUTER_TOPK && c.topk_softmax_after && c.capacity_factor <= 0 && !c.tie_word_embeddings);
    EXPECT(c.bos_token_id == 1 && c.eos_token_id == 2 && c.pad_token_id == -1 && !c.output_router_logits);
    f = fopen(path, "w");
    fputs("{\"model_type\": \"llama\", \"vocab_size\": 100, \"hidden_size\": 64, \"num_attention_heads\": 4}", f);
    fclose(f);
    EXPECT(config_load(&c, path) == MOELM_OK);
    EXPECT(c.model_type == MODEL_LLAMA && c.num_key_value_heads == 0 && c.d_ff == 11008 && c.rope_theta == 1e4f);
    EXPECT(c.layer_norm_epsilon == 1e-6f && c.num_experts == 0);
    const char *bad[][3] = {
        {"mixtral", "\"hidden_act\": \"gelu\"", "hidden_act"},
        {"llama", "\"attention_bias\": true", "attention_bias"},
        {"mixtral", "\"sliding_window\": 4096", "sliding_window"},
        {"llama", "\"rope_scaling\": {\"type\": \"linear\"}", "rope_scaling"},
        {"mixtral", "\"head_dim\": 32", "head_dim"},
        {"mixtral", "\"num_key_value_heads\": 3", "num_key_value_heads"},
        {"mixtral", "\"num_local_experts\": 1", "num_local_experts"},
        {"llama", "\"num_local_experts\": 4", "num_local_experts"},
        {"mixtral", "\"router_jitter_noise\": 0.1", "router_jitter_noise"},
        {"mixtral", "\"bos_token_id\": 100", "bos"},
        {"mixtral", "\"rope_theta\": -3", "rope_theta"},
        {"llama", "\"attention_dropout\": 0.1", "attention_dropout"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        f = fopen(path, "w");
        fprintf(f, "{\"model_type\": \"%s\", \"vocab_size\": 100, \"hidden_size\": 64, \"num_attention_heads\": 8, %s}", bad[i][0], bad[i][1]);
        fclose(f);
        EXPECT_MSG(config_load(&c, path) == MOELM_ERR_CONFIG && strstr(moelm_last_error(), bad[i][2]),
                   "%s: %s", bad[i][1], moelm_last_error());
    }
}

int main(void) {
    test_one_thread();
    RUN(grad_dense_lm);
    RUN(grad_dense_rms_swiglu_untied);
    RUN(grad_switch_lm_with_drops);
    RUN(grad_topk_lm);
    RUN(grad_adaptive_lm);
    RUN(grad_rope_lm);
    RUN(adaptive_full_logits_are_the_losses);
    RUN(grad_mixtral);
    RUN(grad_mixtral_switch_capacity);
    RUN(grad_llama);
    RUN(mixtral_balance_loss_value);
    RUN(llama_causality);
    RUN(grad_seed_models);
    RUN(output_bias_from_unigrams);
    RUN(causality);
    RUN(training_reduces_loss);
    RUN(cost_flops_match_the_tensors);
    RUN(cost_counts_q8_blocks);
    RUN(bad_configs_rejected);
    RUN(sharded_experts_layout);
    RUN(config_json_round_trip);
    RUN(llama_config_keys);
    return test_summary("model");
}
