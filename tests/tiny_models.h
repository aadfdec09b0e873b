/* tiny_models.h: the tiny model configurations and weight scaling shared by the whole-model tests
 * (test_model.c: gradients against finite differences; test_generate.c: the KV cache against the
 * full forward). Header-only, static: each test binary is one translation unit. */
#ifndef MOELM_TESTS_TINY_MODELS_H
#define MOELM_TESTS_TINY_MODELS_H

#include <string.h>
#include "model/model.h"

/* The sizes a test shrinks a preset to: vocabulary V, d_model C over NH heads, L blocks, feed-forward
 * H, P positions. */
static inline void tiny_sizes(ModelConfig *c, int V, int C, int NH, int L, int H, int P) {
    c->vocab_size = V; c->d_model = C; c->num_heads = NH; c->num_layers = L; c->d_ff = H; c->n_positions = P;
}

/* The dense pre-norm lm of the "tiny" preset (2 blocks), shrunk to d_model 8 (vocabulary V). */
static inline void tiny_lm(ModelConfig *c, int V, float dropout) {
    config_preset(c, "tiny");
    tiny_sizes(c, V, 8, 2, 2, 12, 8);
    c->dropout_rate = dropout;
}

/* The tutorial's seed model (post-norm stack, MoE head) with router r, at the same tiny sizes. */
static inline void tiny_seed(ModelConfig *c, RouterType r, float dropout) {
    config_preset(c, "seed-switch");
    tiny_sizes(c, 11, 8, 2, 2, 12, 8);
    c->expert_d_ff = 10;
    c->head_hidden = 9;
    c->num_experts = 3;
    c->dropout_rate = dropout;
    c->router_type = r;
}

/* The mixtral-tiny preset (mixtral: 1) or llama-tiny, shrunk: d_model 8, 4 query heads over 2 key/value
 * heads (head width 2), 3 experts top-2 with HF's balance loss at a visible coefficient. */
static inline void tiny_llama(ModelConfig *c, int mixtral, int V) {
    config_preset(c, mixtral ? "mixtral-tiny" : "llama-tiny");   /* 2 blocks */
    tiny_sizes(c, V, 8, 4, 2, 6, 8);
    c->num_key_value_heads = 2;
    if (mixtral) {
        c->num_experts = 3;
        c->router_aux_loss_coef = 0.1f;
    }
}

/* Scales every weight by s (larger than the 0.02 init, so that attention, the FFN and routing all
 * move the output visibly) and sets the norm weights to 1 + 0.1 * (k % 3). biases = 1 also gives
 * the vectors that are zero at init (biases) small distinct values. */
static inline void scale_params(Model *m, float s, int biases) {
    for (size_t i = 0; i < m->n_params; i++) m->params[i] *= s;
    for (int i = 0; i < m->n_tensors; i++) {
        const TensorInfo *t = &m->tensors[i];
        if (!t->trainable) continue;   /* buffers (mixtral's zero expert biases) keep their values */
        if ((strstr(t->name, "ln") || strstr(t->name, "norm")) && t->ndim == 1 && strstr(t->name, "weight"))
            for (size_t k = 0; k < t->size; k++) m->params[t->offset + k] = 1.0f + 0.1f * (float)(k % 3);
        else if (biases && (t->ndim == 1 || strstr(t->name, "bias")))
            for (size_t k = 0; k < t->size; k++) m->params[t->offset + k] = 0.1f * (float)((k * 7 + i) % 5) - 0.2f;
    }
}

#endif
