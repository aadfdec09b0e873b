/* config_llama.c: the Llama / Mixtral family's configuration under Hugging Face's keys and defaults.
 *
 * model_type "mixtral" (MixtralConfig) and "llama" (LlamaConfig). HF's keys map onto ModelConfig's fields:
 *   hidden_size -> d_model, intermediate_size -> d_ff (each expert's too), num_hidden_layers -> num_layers,
 *   num_attention_heads -> num_heads, num_key_value_heads, max_position_embeddings -> n_positions,
 *   rms_norm_eps -> layer_norm_epsilon, rope_theta, num_local_experts -> num_experts, num_experts_per_tok,
 *   router_aux_loss_coef, output_router_logits, router_jitter_noise, tie_word_embeddings, bos/eos/pad ids.
 * Keys whose other values moelm does not build are accepted at the value it builds and refused otherwise
 * with a message (hidden_act silu, attention_bias / mlp_bias false, head_dim hidden_size / heads,
 * sliding_window and rope_scaling null, attention_dropout 0, pretraining_tp 1). The MoE's other settings
 * (router_type, capacity_factor, ...) are moelm's keys, written after HF's; Mixtral's are the defaults:
 * top-k with the softmax over the chosen k (HF's renormalised top-k), dropless.
 */
#include "model/config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "io/json.h"

void config_llama_defaults(ModelConfig *c, int mixtral) {
    memset(c, 0, sizeof *c);
    c->model_type = mixtral ? MODEL_MIXTRAL : MODEL_LLAMA;
    c->vocab_size = 32000;
    c->d_model = 4096;
    c->num_heads = 32;
    c->num_key_value_heads = mixtral ? 8 : 0;   /* llama: None, = num_attention_heads */
    c->num_layers = 32;
    c->d_ff = mixtral ? 14336 : 11008;
    c->n_positions = mixtral ? 4096 * 32 : 2048;
    c->layer_norm_epsilon = mixtral ? 1e-5f : 1e-6f;
    c->rope_theta = mixtral ? 1e6f : 1e4f;
    c->norm_type = NORM_RMS;
    c->hidden_act = ACT_SWIGLU;
    c->tie_word_embeddings = 0;
    c->bos_token_id = 1;
    c->eos_token_id = 2;
    c->pad_token_id = -1;
    c->num_experts = mixtral ? 8 : 0;
    c->sparse_step = 1;
    c->num_experts_per_tok = 2;
    c->router_type = ROUTER_TOPK;
    c->topk_softmax_after = 1;
    c->capacity_factor = 0.0f;         /* dropless, as HF */
    c->eval_capacity_factor = 0.0f;
    c->min_capacity = 4;
    c->router_aux_loss_coef = 0.001f;
    c->output_router_logits = 0;
    c->routed_scaling_factor = 1.0f;
    c->expert_bias_rate = 0.001f;
}

static const char *const ignored_keys[] = {"architectures", "torch_dtype", "transformers_version", "use_cache",
                                           "initializer_range", "_name_or_path", "moelm_version", "dtype", NULL};

int config_llama_ignored_key(const char *key) {
    for (int i = 0; ignored_keys[i]; i++) if (!strcmp(key, ignored_keys[i])) return 1;
    return 0;
}

static moelm_status llama_int(const char *key, const char *v, int *out, int allow_null) {
    if (allow_null && !strcmp(v, "null")) { *out = -1; return MOELM_OK; }
    char *end;
    double x = strtod(v, &end);
    if (end == v || *end || x != floor(x) || x < -2147483647.0 || x > 2147483647.0)
        return moelm_fail(MOELM_ERR_CONFIG, "%s: '%s' is not an integer%s", key, v, allow_null ? " or null" : "");
    *out = (int)x;
    return MOELM_OK;
}

/* value must be one of the accepted spellings; msg says what moelm builds */
static moelm_status llama_only(const char *key, const char *v, const char *a, const char *b, const char *msg) {
    if (!strcmp(v, a) || (b && !strcmp(v, b))) return MOELM_OK;
    return moelm_fail(MOELM_ERR_CONFIG, "%s: '%s' is not supported (moelm builds %s)", key, v, msg);
}

int config_llama_set(ModelConfig *c, const char *key, const char *v, moelm_status *st) {
    static const struct { const char *hf, *moelm; } alias[] = {
        {"hidden_size", "d_model"}, {"intermediate_size", "d_ff"}, {"num_hidden_layers", "num_layers"},
        {"num_attention_heads", "num_heads"}, {"max_position_embeddings", "n_positions"},
        {"rms_norm_eps", "layer_norm_epsilon"}, {"num_local_experts", "num_experts"}, {NULL, NULL}};
    for (int i = 0; alias[i].hf; i++)
        if (!strcmp(key, alias[i].hf)) { *st = config_set(c, alias[i].moelm, v); return 1; }
    if (!strcmp(key, "num_key_value_heads")) {
        *st = llama_int(key, v, &c->num_key_value_heads, 1);
        if (!*st && c->num_key_value_heads < 0) c->num_key_value_heads = 0;   /* null: = heads */
        return 1;
    }
    if (!strcmp(key, "bos_token_id")) { *st = llama_int(key, v, &c->bos_token_id, 1); return 1; }
    if (!strcmp(key, "eos_token_id")) { *st = llama_int(key, v, &c->eos_token_id, 1); return 1; }
    if (!strcmp(key, "pad_token_id")) { *st = llama_int(key, v, &c->pad_token_id, 1); return 1; }
    if (!strcmp(key, "rope_theta")) {
        char *end;
        double x = strtod(v, &end);
        *st = end == v || *end || !(x > 1.0 && x < 1e12)
                  ? moelm_fail(MOELM_ERR_CONFIG, "rope_theta: '%s' is not a number in (1, 1e12)", v) : MOELM_OK;
        if (!*st) c->rope_theta = (float)x;
        return 1;
    }
    if (!strcmp(key, "output_router_logits")) {
        if (!strcmp(v, "true") || !strcmp(v, "1")) c->output_router_logits = 1;
        else if (!strcmp(v, "false") || !strcmp(v, "0")) c->output_router_logits = 0;
        else { *st = moelm_fail(MOELM_ERR_CONFIG, "%s: '%s' is not true or false", key, v); return 1; }
        *st = MOELM_OK;
        return 1;
    }
    if (!strcmp(key, "head_dim")) {
        int hd;
        *st = llama_int(key, v, &hd, 1);
        if (!*st && hd != -1 && (c->num_heads < 1 || hd * c->num_heads != c->d_model))
            *st = moelm_fail(MOELM_ERR_CONFIG, "head_dim: %d is not hidden_size / num_attention_heads (%d / %d): "
                             "moelm builds that head width only", hd, c->d_model, c->num_heads);
        return 1;
    }
    if (!strcmp(key, "hidden_act") && config_is_llama(c)) {   /* the lm's own key otherwise */
        if (!strcmp(v, "silu") || !strcmp(v, "swiglu")) { c->hidden_act = ACT_SWIGLU; *st = MOELM_OK; }
        else *st = llama_only(key, v, "silu", NULL, "silu (SwiGLU)");
        return 1;
    }
    if (!strcmp(key, "attention_bias") || !strcmp(key, "mlp_bias")) {
        *st = llama_only(key, v, "false", "0", "no biases");
        return 1;
    }
    if (!strcmp(key, "sliding_window") || !strcmp(key, "rope_scaling")) {
        *st = llama_only(key, v, "null", NULL, "full attention with plain RoPE: null");
        return 1;
    }
    if (!strcmp(key, "attention_dropout")) {
        *st = llama_only(key, v, "0", "0.0", "no attention dropout: 0");
        return 1;
    }
    if (!strcmp(key, "pretraining_tp")) {
        *st = llama_only(key, v, "1", NULL, "1");
        return 1;
    }
    return 0;
}

char *config_llama_to_json(const ModelConfig *c) {
    int mixtral = c->model_type == MODEL_MIXTRAL;
    StrBuf sb = {0};
    sb_printf(&sb, "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",\n",
              mixtral ? "MixtralForCausalLM" : "LlamaForCausalLM", mixtral ? "mixtral" : "llama");
    sb_printf(&sb, "  \"vocab_size\": %d,\n  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n", c->vocab_size,
              c->d_model, c->d_ff);
    sb_printf(&sb, "  \"num_hidden_layers\": %d,\n  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n",
              c->num_layers, c->num_heads, c->num_key_value_heads ? c->num_key_value_heads : c->num_heads);
    sb_printf(&sb, "  \"head_dim\": %d,\n  \"hidden_act\": \"silu\",\n  \"max_position_embeddings\": %d,\n",
              c->d_model / c->num_heads, c->n_positions);
    sb_printf(&sb, "  \"rms_norm_eps\": %.9g,\n  \"rope_theta\": %.9g,\n  \"tie_word_embeddings\": %s,\n",
              c->layer_norm_epsilon, c->rope_theta, c->tie_word_embeddings ? "true" : "false");
    sb_printf(&sb, "  \"attention_dropout\": 0.0,\n  \"initializer_range\": 0.02,\n  \"use_cache\": true,\n");
    sb_printf(&sb, "  \"torch_dtype\": \"float32\",\n");
    if (mixtral) {
        sb_printf(&sb, "  \"sliding_window\": null,\n  \"num_local_experts\": %d,\n  \"num_experts_per_tok\": %d,\n",
                  c->num_experts, c->num_experts_per_tok);
        sb_printf(&sb, "  \"router_aux_loss_coef\": %.9g,\n  \"output_router_logits\": %s,\n"
                  "  \"router_jitter_noise\": %.9g,\n", c->router_aux_loss_coef,
                  c->output_router_logits ? "true" : "false", c->router_jitter_noise);
    } else {
        sb_printf(&sb, "  \"attention_bias\": false,\n  \"mlp_bias\": false,\n  \"pretraining_tp\": 1,\n"
                  "  \"rope_scaling\": null,\n");
    }
    const int ids[3] = {c->bos_token_id, c->eos_token_id, c->pad_token_id};
    const char *const id_names[3] = {"bos_token_id", "eos_token_id", "pad_token_id"};
    for (int i = 0; i < 3; i++) {
        if (ids[i] >= 0) sb_printf(&sb, "  \"%s\": %d,\n", id_names[i], ids[i]);
        else sb_printf(&sb, "  \"%s\": null,\n", id_names[i]);
    }
    /* moelm's own keys (HF keeps unknown keys as attributes): dropout and the MoE settings --set can change */
    sb_printf(&sb, "  \"moelm_version\": \"%s\",\n  \"dropout_rate\": %.9g,\n", MOELM_VERSION, c->dropout_rate);
    if (mixtral)
        sb_printf(&sb, "  \"router_type\": \"%s\",\n  \"topk_softmax_after\": %s,\n  \"capacity_factor\": %.9g,\n"
                  "  \"eval_capacity_factor\": %.9g,\n  \"min_capacity\": %d,\n  \"expert_capacity\": %d,\n"
                  "  \"router_z_loss_coef\": %.9g,\n",
                  router_name(c->router_type), c->topk_softmax_after ? "true" : "false", c->capacity_factor,
                  c->eval_capacity_factor, c->min_capacity, c->expert_capacity, c->router_z_loss_coef);
    sb_printf(&sb, "  \"transformers_version\": \"4.46.0\"\n}\n");
    if (sb.failed) {
        sb_free(&sb);
        return NULL;
    }
    return sb.buf;
}

moelm_status config_llama_check(const ModelConfig *c) {
#define REQ(cond, ...) if (!(cond)) return moelm_fail(MOELM_ERR_CONFIG, __VA_ARGS__)
    int nkv = c->num_key_value_heads ? c->num_key_value_heads : c->num_heads;
    REQ(nkv >= 1 && nkv <= c->num_heads && c->num_heads % nkv == 0,
        "num_key_value_heads (%d) must divide num_attention_heads (%d)", nkv, c->num_heads);
    /* the rotary head width and base: config_check, as for an lm with rotary positions */
    REQ(c->norm_type == NORM_RMS, "norm_type: the %s family uses rmsnorm", c->model_type == MODEL_MIXTRAL ? "mixtral" : "llama");
    REQ(c->hidden_act == ACT_SWIGLU, "hidden_act: the llama family uses silu (SwiGLU)");
    REQ(c->expert_d_ff == 0 || c->expert_d_ff == c->d_ff, "expert_d_ff: mixtral's experts are intermediate_size wide");
    REQ(!c->shared_expert && !c->use_expert_bias, "shared_expert and use_expert_bias are not part of mixtral");
    REQ(c->router_jitter_noise == 0.0f, "router_jitter_noise: mixtral's jitter (on the experts' input too) is not "
        "built; use 0");
    if (c->model_type == MODEL_MIXTRAL) {
        REQ(c->num_experts >= 2, "num_local_experts must be >= 2 for mixtral (got %d; use model_type llama for a "
            "dense model)", c->num_experts);
        REQ(c->sparse_step == 1, "sparse_step: every mixtral block is sparse (1)");
    } else {
        REQ(c->num_experts <= 1, "num_local_experts: a llama model is dense (use model_type mixtral)");
    }
    const int ids[3] = {c->bos_token_id, c->eos_token_id, c->pad_token_id};
    for (int i = 0; i < 3; i++)   /* vocab_size 1: not known yet (taken from the tokenizer) */
        REQ(ids[i] >= -1 && (ids[i] < c->vocab_size || c->vocab_size <= 1), "bos/eos/pad_token_id %d is outside the vocabulary (%d)", ids[i],
            c->vocab_size);
#undef REQ
    return MOELM_OK;
}
