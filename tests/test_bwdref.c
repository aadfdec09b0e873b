/* test_bwdref.c (temporary): model_backward (the reverse walk over model_steps) against
 * model_backward_ref (main's hand walk), memcmp over every gradient. */
#include <string.h>
#include "test.h"
#include "model/model.h"
#include "model/steps.h"
#include "tiny_models.h"

void model_backward_ref(Model *m);

static void compare(ModelConfig *c, const char *label, int bf16) {
    for (int drop = 0; drop < 2; drop++) {
        c->dropout_rate = drop ? 0.25f : 0.0f;
        Model m;
        int B = 2, T = c->n_positions < 6 ? c->n_positions : 6, N = B * T;
        moelm_status st = model_create(&m, c, B, T, 5);
        EXPECT_MSG(st == MOELM_OK, "%s: %s", label, moelm_last_error());
        if (st) return;
        scale_params(&m, 20.0f, 1);
        if (bf16) EXPECT(model_set_bf16(&m, 1) == MOELM_OK);
        int inp[64], tgt[64];
        for (int k = 0; k < N; k++) { inp[k] = (3 * k + 1) % c->vocab_size; tgt[k] = k == 3 ? -1 : (5 * k + 2) % c->vocab_size; }
        float *ref = malloc(sizeof(float) * m.n_params);
        for (int pass = 0; pass < 2; pass++) {
            rng_seed(&m.rng, 77);
            model_forward(&m, inp, tgt, 1);
            model_zero_grad(&m);
            if (pass == 0) { model_backward_ref(&m); memcpy(ref, m.grads, sizeof(float) * m.n_params); }
            else model_backward(&m);
        }
        size_t diff = 0, first = 0;
        for (size_t i = 0; i < m.n_params; i++) if (memcmp(&ref[i], &m.grads[i], sizeof(float))) { if (!diff) first = i; diff++; }
        double nz = 0; for (size_t i = 0; i < m.n_params; i++) nz += ref[i] != 0.0f;
        EXPECT_MSG(diff == 0, "%s drop %d bf16 %d: %zu of %zu differ, first %zu (%g vs %g)", label, drop, bf16, diff,
                   m.n_params, first, ref[first], m.grads[first]);
        printf("  %s drop %d bf16 %d: %zu params, %.0f nonzero, %zu differ\n", label, drop, bf16, m.n_params, nz, diff);
        free(ref);
        model_free(&m);
    }
}

TEST(tiny_configs) {
    ModelConfig c;
    tiny_lm(&c, 11, 0); c.num_experts = 0; compare(&c, "dense", 0);
    tiny_lm(&c, 11, 0); c.num_experts = 0; c.tie_word_embeddings = 1; compare(&c, "dense tied", 1);
    tiny_lm(&c, 11, 0); c.num_experts = 3; c.sparse_step = 1; c.capacity_factor = 0.5f; c.min_capacity = 1;
    compare(&c, "switch lm drops", 0);
    tiny_lm(&c, 11, 0); c.num_experts = 4; c.sparse_step = 2; c.router_type = ROUTER_TOPK; c.num_experts_per_tok = 2;
    c.shared_expert = 1; c.hidden_act = ACT_SWIGLU; compare(&c, "top-2 lm", 0);
    RouterType r[4] = {ROUTER_HASH, ROUTER_RANDOM, ROUTER_SOFT, ROUTER_SWITCH};
    for (int i = 0; i < 4; i++) { tiny_seed(&c, r[i], 0); compare(&c, "seed", 0); compare(&c, "seed bf16", 1); }
    tiny_llama(&c, 0, 11); compare(&c, "llama", 0);
    tiny_llama(&c, 0, 11); c.tie_word_embeddings = 1; compare(&c, "llama tied", 1);
    tiny_llama(&c, 1, 11); compare(&c, "mixtral", 0);
    tiny_llama(&c, 1, 11); compare(&c, "mixtral bf16", 1);
}

TEST(presets_small) {
    for (int i = 0; config_preset_names[i]; i++) {
        ModelConfig c;
        config_preset(&c, config_preset_names[i]);
        if (c.model_type == MODEL_SWITCH) continue;
        c.vocab_size = 13;
        c.d_model = 16;
        if (c.num_key_value_heads) { c.num_heads = 4; c.num_key_value_heads = 2; } else c.num_heads = 2;
        c.d_ff = 24;
        if (c.expert_d_ff) c.expert_d_ff = 20;
        if (c.head_hidden) c.head_hidden = 9;
        if (c.num_experts > 4) c.num_experts = 4;
        if (c.num_experts_per_tok > 2) c.num_experts_per_tok = 2;
        if (c.num_layers > 3) c.num_layers = 3;
        c.n_positions = 8;
        compare(&c, config_preset_names[i], 0);
    }
}

int main(void) {
    test_one_thread();
    RUN(tiny_configs);
    RUN(presets_small);
    return test_summary("bwdref");
}
