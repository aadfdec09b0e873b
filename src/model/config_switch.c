/* config_switch.c: the configuration of model_type switch_transformers, Hugging Face's
 * SwitchTransformersConfig (v4) under its own keys: defaults, presets, key=value, config.json both
 * ways, validation.
 *
 * Reading follows what HF does with a config.json: every SwitchTransformersConfig field, HF's default
 * where one is absent; null for num_decoder_layers means num_layers and for a token id means none;
 * the aliases hidden_size, num_attention_heads, num_hidden_layers name d_model, num_heads, num_layers
 * (two spellings that disagree are an error here, where HF would keep the alias); an explicit
 * encoder_sparse_step / decoder_sparse_step wins over the one derived from the layer counts (HF sets
 * the remaining keys after deriving). Keys moelm does not use (PretrainedConfig's many, old
 * checkpoints' router_type or is_gated_act) are ignored and listed in cfg->note. moelm's own keys
 * carry the prefix moelm_, which HF keeps as plain attributes, so a directory moelm writes loads in
 * HF unchanged.
 *
 * Not here: the model (encdec.c), the tokenizer's sentinels (tokenizer.c).
 */
#include "model/config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "io/json.h"

void config_switch_defaults(ModelConfig *c) {
    memset(c, 0, sizeof *c);
    c->model_type = MODEL_SWITCH;
    c->vocab_size = 32128;
    c->d_model = 768;
    c->d_ff = 2048;
    c->num_heads = 12;
    c->num_layers = 12;
    c->n_positions = 512;          /* moelm's longest sequence for generation (T5 has no position table) */
    c->dropout_rate = 0.1f;
    c->layer_norm_epsilon = 1e-6f;
    c->norm_type = NORM_RMS;
    c->hidden_act = ACT_RELU;
    c->tie_word_embeddings = 1;
    c->num_experts = 8;
    c->router_type = ROUTER_SWITCH;
    c->num_experts_per_tok = 1;
    c->capacity_factor = 1.25f;    /* moelm's capacity-factor mode, used when expert_capacity is 0 */
    c->eval_capacity_factor = 2.0f;
    c->expert_capacity = 64;
    c->router_aux_loss_coef = 0.001f;
    c->router_z_loss_coef = 0.001f;
    c->router_jitter_noise = 0.01f;
    c->routed_scaling_factor = 1.0f;
    c->expert_bias_rate = 0.001f;
    SwitchConfig *s = &c->sw;
    s->d_kv = 64;
    s->num_decoder_layers = 12;
    s->num_sparse_encoder_layers = 3;
    s->num_sparse_decoder_layers = 3;
    s->encoder_sparse_step = -1;
    s->decoder_sparse_step = -1;
    s->relative_attention_num_buckets = 32;
    s->relative_attention_max_distance = 128;
    s->pad_token_id = 0;
    s->eos_token_id = 1;
    s->bos_token_id = -1;
    s->decoder_start_token_id = -1;   /* HF: PretrainedConfig's None; every published checkpoint says 0 */
    s->initializer_factor = 1.0f;
    s->use_cache = 1;
    snprintf(s->router_dtype, sizeof s->router_dtype, "float32");
    s->hf_router_losses = 1;
}

/* moelm's encoder-decoder sizes: d_model C, NH heads of width dkv, feed-forward H, L blocks in each
 * stack of which S sparse, E experts. */
static void switch_sizes(ModelConfig *c, int C, int NH, int dkv, int H, int L, int S, int E) {
    c->d_model = C; c->num_heads = NH; c->sw.d_kv = dkv; c->d_ff = H;
    c->num_layers = c->sw.num_decoder_layers = L;
    c->sw.num_sparse_encoder_layers = c->sw.num_sparse_decoder_layers = S;
    c->num_experts = E;
}

int config_switch_preset(ModelConfig *c, const char *name) {
    if (!strcmp(name, "seed-hf-switch")) {
        /* the tutorial's SwitchTransformersConfig(num_experts=32, d_model=256, num_heads=8, num_layers=6),
         * HF's defaults for everything else (so 12 decoder layers, d_kv 64, d_ff 2048, 3 sparse blocks a
         * stack, expert_capacity 64); the vocabulary comes from the tokenizer */
        config_switch_defaults(c);
        c->vocab_size = 0;
        c->num_experts = 32;
        c->d_model = 256;
        c->num_heads = 8;
        c->num_layers = 6;
        c->sw.decoder_start_token_id = 0;
        return 1;
    }
    if (!strcmp(name, "switch-t5-ptb") || !strcmp(name, "switch-t5-tiny")) {
        /* moelm's own: sparse blocks 1 and 3 of 4 in both stacks, the capacity from a factor per sequence,
         * the router losses on every stack (the fixed form), the Switch paper's aux coefficient 0.01 */
        config_switch_defaults(c);
        c->vocab_size = 0;
        c->expert_capacity = 0;
        c->router_aux_loss_coef = 0.01f;
        c->sw.decoder_start_token_id = 0;
        c->sw.hf_router_losses = 0;
        if (!strcmp(name, "switch-t5-tiny")) {
            switch_sizes(c, 32, 4, 8, 64, 2, 1, 4);
            c->dropout_rate = 0.0f;
            c->n_positions = 128;
        } else {
            switch_sizes(c, 256, 8, 32, 1024, 4, 2, 8);
        }
        return 1;
    }
    return 0;
}

/* ---- sparse blocks --------------------------------------------------------------------------- */

int config_switch_layers(const ModelConfig *c, int decoder) {
    return decoder ? c->sw.num_decoder_layers : c->num_layers;
}

int config_switch_sparse_step(const ModelConfig *c, int decoder) {
    int given = decoder ? c->sw.decoder_sparse_step : c->sw.encoder_sparse_step;
    if (given >= 0) return given;
    int n = config_switch_layers(c, decoder);
    int ns = decoder ? c->sw.num_sparse_decoder_layers : c->sw.num_sparse_encoder_layers;
    return ns > 0 ? n / ns : 0;   /* HF: more sparse layers asked than blocks gives 0, a dense stack */
}

int config_switch_block_is_sparse(const ModelConfig *c, int decoder, int i) {
    int step = config_switch_sparse_step(c, decoder);
    return step > 0 && (step == 1 || i % step == 1);
}

/* ---- key=value --------------------------------------------------------------------------------- */

/* A token id or a layer count that may be null ("null": -1). */
static moelm_status get_int_or_null(const char *key, const char *v, int *out) {
    if (!strcmp(v, "null")) {
        *out = -1;
        return MOELM_OK;
    }
    return config_parse_int(key, v, out);
}

/* HF's dense_act_fn names moelm runs. */
static const struct { const char *name; Activation act; } switch_acts[] = {
    {"relu", ACT_RELU}, {"gelu", ACT_GELU}, {"gelu_new", ACT_GELU_TANH},
};

static const char *switch_act_name(Activation a) {
    for (size_t i = 0; i < sizeof switch_acts / sizeof switch_acts[0]; i++)
        if (switch_acts[i].act == a) return switch_acts[i].name;
    return "?";
}

moelm_status config_switch_set(ModelConfig *c, const char *key, const char *v) {
    SwitchConfig *s = &c->sw;
#define INT(k, f) if (!strcmp(key, k)) return config_parse_int(key, v, &(f))
#define NINT(k, f) if (!strcmp(key, k)) return get_int_or_null(key, v, &(f))
#define FLT(k, f) if (!strcmp(key, k)) return config_parse_float(key, v, &(f))
#define BOOL(k, f) if (!strcmp(key, k)) return config_parse_bool(key, v, &(f))
    INT("vocab_size", c->vocab_size);
    INT("d_model", c->d_model);
    INT("hidden_size", c->d_model);
    INT("d_kv", s->d_kv);
    INT("d_ff", c->d_ff);
    INT("expert_capacity", c->expert_capacity);
    INT("num_layers", c->num_layers);
    INT("num_hidden_layers", c->num_layers);
    INT("num_sparse_encoder_layers", s->num_sparse_encoder_layers);
    INT("num_sparse_decoder_layers", s->num_sparse_decoder_layers);
    INT("num_heads", c->num_heads);
    INT("num_attention_heads", c->num_heads);
    INT("num_experts", c->num_experts);
    INT("relative_attention_num_buckets", s->relative_attention_num_buckets);
    INT("relative_attention_max_distance", s->relative_attention_max_distance);
    INT("n_positions", c->n_positions);
    NINT("encoder_sparse_step", s->encoder_sparse_step);
    NINT("decoder_sparse_step", s->decoder_sparse_step);
    NINT("pad_token_id", s->pad_token_id);
    NINT("eos_token_id", s->eos_token_id);
    NINT("bos_token_id", s->bos_token_id);
    NINT("decoder_start_token_id", s->decoder_start_token_id);
    FLT("router_jitter_noise", c->router_jitter_noise);
    FLT("dropout_rate", c->dropout_rate);
    FLT("layer_norm_epsilon", c->layer_norm_epsilon);
    FLT("router_z_loss_coef", c->router_z_loss_coef);
    FLT("router_aux_loss_coef", c->router_aux_loss_coef);
    FLT("initializer_factor", s->initializer_factor);
    FLT("moelm_capacity_factor", c->capacity_factor);
    FLT("moelm_eval_capacity_factor", c->eval_capacity_factor);
    BOOL("router_ignore_padding_tokens", s->router_ignore_padding_tokens);
    BOOL("add_router_probs", s->add_router_probs);
    BOOL("use_cache", s->use_cache);
    BOOL("tie_word_embeddings", c->tie_word_embeddings);
    BOOL("moelm_hf_router_losses", s->hf_router_losses);
#undef INT
#undef NINT
#undef FLT
#undef BOOL
    if (!strcmp(key, "num_decoder_layers")) {
        moelm_status st = get_int_or_null(key, v, &s->num_decoder_layers);
        if (!st && s->num_decoder_layers < 0) s->num_decoder_layers = c->num_layers;   /* HF: null = num_layers */
        return st;
    }
    if (!strcmp(key, "dense_act_fn")) {
        for (size_t i = 0; i < sizeof switch_acts / sizeof switch_acts[0]; i++)
            if (!strcmp(v, switch_acts[i].name)) {
                c->hidden_act = switch_acts[i].act;
                return MOELM_OK;
            }
        return moelm_fail(MOELM_ERR_CONFIG, "dense_act_fn: '%s' is not yet supported for switch_transformers "
                          "(relu, gelu or gelu_new)", v);
    }
    if (!strcmp(key, "router_dtype")) {
        if (strcmp(v, "float32") && strcmp(v, "float16") && strcmp(v, "bfloat16"))
            return moelm_fail(MOELM_ERR_CONFIG, "router_dtype: '%s' is not float32, float16 or bfloat16", v);
        snprintf(s->router_dtype, sizeof s->router_dtype, "%s", v);
        return MOELM_OK;
    }
    if (!strcmp(key, "router_bias")) {
        int b;
        moelm_status st = config_parse_bool(key, v, &b);
        if (!st && b)
            return moelm_fail(MOELM_ERR_CONFIG, "router_bias: true is not yet supported for switch_transformers "
                              "(moelm's router has no bias; the published Switch checkpoints have none)");
        return st;
    }
    if (!strcmp(key, "is_encoder_decoder")) {
        int b;
        moelm_status st = config_parse_bool(key, v, &b);
        if (!st && !b)
            return moelm_fail(MOELM_ERR_CONFIG, "is_encoder_decoder: false is not a switch_transformers model "
                              "moelm runs (SwitchTransformersForConditionalGeneration is an encoder-decoder)");
        return st;
    }
    if (!strcmp(key, "moelm_dropped_tokens")) {
        if (!strcmp(v, "zero")) s->dropped_scaled_input = 0;
        else if (!strcmp(v, "scaled_input")) s->dropped_scaled_input = 1;
        else return moelm_fail(MOELM_ERR_CONFIG, "moelm_dropped_tokens: '%s' is not zero or scaled_input", v);
        return MOELM_OK;
    }
    if (!strcmp(key, "moelm_router")) {
        /* HF's top-1 (switch), or moelm's routers that suit an encoder-decoder: top-k, soft gating, hash
         * (expert-choice and random are refused: non-causal, and one expert for the whole pass) */
        int r = router_from_name(v);
        if (r != ROUTER_SWITCH && r != ROUTER_TOPK && r != ROUTER_SOFT && r != ROUTER_HASH)
            return moelm_fail(MOELM_ERR_CONFIG, "moelm_router: '%s' is not one of switch, topk, soft, hash for "
                              "switch_transformers", v);
        c->router_type = (RouterType)r;
        return MOELM_OK;
    }
    if (!strcmp(key, "moelm_experts_per_tok")) return config_parse_int(key, v, &c->num_experts_per_tok);
    return moelm_fail(MOELM_ERR_CONFIG, "unknown config key '%s' for switch_transformers", key);
}

/* ---- config.json ----------------------------------------------------------------------------- */

/* Keys that carry nothing moelm needs and that every HF or moelm file has: accepted without a note. */
static int quiet_key(const char *k) {
    static const char *const quiet[] = {"model_type", "architectures", "transformers_version", "torch_dtype",
                                        "_name_or_path", "moelm_version", "is_decoder", "add_cross_attention",
                                        NULL};
    for (int i = 0; quiet[i]; i++) if (!strcmp(k, quiet[i])) return 1;
    return 0;
}

/* Which spelling of d_model / num_heads / num_layers a key is (0 when neither). */
static int alias_slot(const char *k) {
    if (!strcmp(k, "d_model") || !strcmp(k, "hidden_size")) return 1;
    if (!strcmp(k, "num_heads") || !strcmp(k, "num_attention_heads")) return 2;
    if (!strcmp(k, "num_layers") || !strcmp(k, "num_hidden_layers")) return 3;
    return 0;
}

static void note_key(ModelConfig *c, const char *key) {
    size_t n = strlen(c->note);
    if (n + strlen(key) + 16 >= sizeof c->note) {
        if (!strstr(c->note, ", ...")) snprintf(c->note + n, sizeof c->note - n, ", ...");
        return;
    }
    snprintf(c->note + n, sizeof c->note - n, "%s%s", n ? ", " : "ignored keys: ", key);
}

moelm_status config_switch_load(ModelConfig *c, const Json *j, const char *path) {
    config_switch_defaults(c);
    int ndec = -1;                /* num_decoder_layers as given (-1: null or absent): resolved after num_layers */
    int alias_val[4] = {0, 0, 0, 0}, alias_set[4] = {0, 0, 0, 0};
    moelm_status st = MOELM_OK;
    for (size_t i = 0; i < json_len(j) && !st; i++) {
        const char *key = json_key_at(j, i);
        const Json *v = json_at(j, i);
        char buf[64], shown[80];
        const char *sv = buf;
        switch (json_type(v)) {
        case JSON_STRING: sv = json_string(v); break;
        case JSON_BOOL: sv = json_bool(v) ? "true" : "false"; break;
        case JSON_NULL: sv = "null"; break;   /* accepted by the token ids and layer counts only */
        case JSON_NUMBER: snprintf(buf, sizeof buf, "%.9g", json_number(v)); break;
        default: sv = json_type(v) == JSON_ARRAY ? "[array]" : "{object}"; break;   /* no known key takes one */
        }
        if (quiet_key(key)) continue;
        if (!strcmp(key, "num_decoder_layers")) {
            st = get_int_or_null(key, sv, &ndec);
            continue;
        }
        int slot = alias_slot(key);
        if (slot) {
            int x;
            st = config_parse_int(key, sv, &x);
            if (!st && alias_set[slot] && x != alias_val[slot])
                st = moelm_fail(MOELM_ERR_CONFIG, "'%s' (%d) disagrees with its other spelling (%d)", key, x,
                                alias_val[slot]);
            alias_val[slot] = x;
            alias_set[slot] = 1;
            if (st) break;
        }
        st = config_switch_set(c, key, sv);
        if (st && strstr(moelm_last_error(), "unknown config key")) {   /* noted, not an error */
            note_key(c, json_display(key, shown, sizeof shown));
            st = MOELM_OK;
        }
    }
    if (!st) c->sw.num_decoder_layers = ndec >= 0 ? ndec : c->num_layers;
    if (!st) {
        ModelConfig chk = *c;
        if (chk.vocab_size == 0) chk.vocab_size = 1;   /* 0: from the tokenizer when training */
        st = config_switch_check(&chk);
    }
    return st ? moelm_fail_context(st, "%s", path) : MOELM_OK;
}

static void json_int_or_null(StrBuf *sb, const char *key, int v) {
    if (v < 0) sb_printf(sb, "  \"%s\": null,\n", key);
    else sb_printf(sb, "  \"%s\": %d,\n", key, v);
}

char *config_switch_to_json(const ModelConfig *c) {
    const SwitchConfig *s = &c->sw;
    StrBuf sb = {0};
    sb_printf(&sb, "{\n  \"architectures\": [\"SwitchTransformersForConditionalGeneration\"],\n");
    sb_printf(&sb, "  \"model_type\": \"switch_transformers\",\n  \"moelm_version\": \"%s\",\n", MOELM_VERSION);
    sb_printf(&sb, "  \"vocab_size\": %d,\n  \"d_model\": %d,\n  \"d_kv\": %d,\n  \"d_ff\": %d,\n", c->vocab_size,
              c->d_model, s->d_kv, c->d_ff);
    sb_printf(&sb, "  \"expert_capacity\": %d,\n  \"num_layers\": %d,\n  \"num_sparse_encoder_layers\": %d,\n",
              c->expert_capacity, c->num_layers, s->num_sparse_encoder_layers);
    sb_printf(&sb, "  \"num_decoder_layers\": %d,\n  \"num_sparse_decoder_layers\": %d,\n", s->num_decoder_layers,
              s->num_sparse_decoder_layers);
    sb_printf(&sb, "  \"encoder_sparse_step\": %d,\n  \"decoder_sparse_step\": %d,\n",
              config_switch_sparse_step(c, 0), config_switch_sparse_step(c, 1));
    sb_printf(&sb, "  \"num_heads\": %d,\n  \"num_experts\": %d,\n  \"router_bias\": false,\n", c->num_heads,
              c->num_experts);
    sb_printf(&sb, "  \"router_jitter_noise\": %.9g,\n  \"router_dtype\": \"%s\",\n", c->router_jitter_noise,
              s->router_dtype);
    sb_printf(&sb, "  \"router_ignore_padding_tokens\": %s,\n", s->router_ignore_padding_tokens ? "true" : "false");
    sb_printf(&sb, "  \"relative_attention_num_buckets\": %d,\n  \"relative_attention_max_distance\": %d,\n",
              s->relative_attention_num_buckets, s->relative_attention_max_distance);
    sb_printf(&sb, "  \"dropout_rate\": %.9g,\n  \"layer_norm_epsilon\": %.9g,\n", c->dropout_rate,
              c->layer_norm_epsilon);
    sb_printf(&sb, "  \"router_z_loss_coef\": %.9g,\n  \"router_aux_loss_coef\": %.9g,\n", c->router_z_loss_coef,
              c->router_aux_loss_coef);
    sb_printf(&sb, "  \"initializer_factor\": %.9g,\n  \"dense_act_fn\": \"%s\",\n", s->initializer_factor,
              switch_act_name(c->hidden_act));
    sb_printf(&sb, "  \"is_encoder_decoder\": true,\n  \"add_router_probs\": %s,\n  \"use_cache\": %s,\n",
              s->add_router_probs ? "true" : "false", s->use_cache ? "true" : "false");
    json_int_or_null(&sb, "pad_token_id", s->pad_token_id);
    json_int_or_null(&sb, "eos_token_id", s->eos_token_id);
    json_int_or_null(&sb, "bos_token_id", s->bos_token_id);
    json_int_or_null(&sb, "decoder_start_token_id", s->decoder_start_token_id);
    sb_printf(&sb, "  \"tie_word_embeddings\": %s,\n  \"n_positions\": %d,\n", c->tie_word_embeddings ? "true" : "false",
              c->n_positions);
    sb_printf(&sb, "  \"moelm_capacity_factor\": %.9g,\n  \"moelm_eval_capacity_factor\": %.9g,\n",
              c->capacity_factor, c->eval_capacity_factor);
    sb_printf(&sb, "  \"moelm_router\": \"%s\",\n  \"moelm_experts_per_tok\": %d,\n", router_name(c->router_type),
              c->num_experts_per_tok);
    sb_printf(&sb, "  \"moelm_hf_router_losses\": %s,\n  \"moelm_dropped_tokens\": \"%s\"\n}\n",
              s->hf_router_losses ? "true" : "false", s->dropped_scaled_input ? "scaled_input" : "zero");
    if (sb.failed) {
        sb_free(&sb);
        return NULL;
    }
    return sb.buf;
}

/* ---- validation --------------------------------------------------------------------------------- */

moelm_status config_switch_check(const ModelConfig *c) {
    const SwitchConfig *s = &c->sw;
#define REQ(cond, ...) if (!(cond)) return moelm_fail(MOELM_ERR_CONFIG, __VA_ARGS__)
    REQ(c->vocab_size >= 1 && c->vocab_size <= CONFIG_MAX_VOCAB, "vocab_size must be in [1, %d] (got %d)", CONFIG_MAX_VOCAB,
        c->vocab_size);
    REQ(c->d_model >= 1 && c->d_model <= 65536, "d_model must be in [1, 65536] (got %d)", c->d_model);
    REQ(c->num_heads >= 1 && c->num_heads <= 1024, "num_heads must be in [1, 1024] (got %d)", c->num_heads);
    REQ(s->d_kv >= 1 && s->d_kv <= 65536, "d_kv must be in [1, 65536] (got %d)", s->d_kv);
    REQ((long)s->d_kv * c->num_heads <= 65536, "d_kv * num_heads must be at most 65536 (got %d * %d)", s->d_kv,
        c->num_heads);
    REQ(c->num_layers >= 1 && c->num_layers <= 1000, "num_layers must be in [1, 1000] (got %d)", c->num_layers);
    REQ(s->num_decoder_layers >= 1 && s->num_decoder_layers <= 1000, "num_decoder_layers must be in [1, 1000] (got %d)",
        s->num_decoder_layers);
    REQ(s->num_sparse_encoder_layers >= 0 && s->num_sparse_decoder_layers >= 0,
        "num_sparse_encoder_layers and num_sparse_decoder_layers must be >= 0 (got %d, %d)",
        s->num_sparse_encoder_layers, s->num_sparse_decoder_layers);
    REQ(s->encoder_sparse_step >= -1 && s->decoder_sparse_step >= -1,
        "encoder_sparse_step and decoder_sparse_step must be >= 0 (got %d, %d)", s->encoder_sparse_step,
        s->decoder_sparse_step);
    REQ(c->d_ff >= 1 && c->d_ff <= 1 << 20, "d_ff must be in [1, 1048576] (got %d)", c->d_ff);
    REQ(c->n_positions >= 1 && c->n_positions <= 1 << 16, "n_positions must be in [1, 65536] (got %d)", c->n_positions);
    /* the bucket function divides by log(max_distance / max_exact); max_exact is num_buckets / 2 in the
     * decoder (num_buckets / 4 in the encoder) and must be at least 1 */
    REQ(s->relative_attention_num_buckets >= 4 && s->relative_attention_num_buckets <= 4096,
        "relative_attention_num_buckets must be in [4, 4096] (got %d)", s->relative_attention_num_buckets);
    REQ(s->relative_attention_max_distance > s->relative_attention_num_buckets / 2 &&
            s->relative_attention_max_distance <= 1 << 20,
        "relative_attention_max_distance must exceed relative_attention_num_buckets / 2 (%d) and be at most 1048576 "
        "(got %d)", s->relative_attention_num_buckets / 2, s->relative_attention_max_distance);
    REQ(c->dropout_rate >= 0.0f && c->dropout_rate < 1.0f, "dropout_rate must be in [0, 1) (got %g)", c->dropout_rate);
    REQ(c->layer_norm_epsilon > 0.0f && c->layer_norm_epsilon < 1.0f, "layer_norm_epsilon must be in (0, 1) (got %g)",
        c->layer_norm_epsilon);
    REQ(c->router_aux_loss_coef >= 0 && c->router_z_loss_coef >= 0,
        "router_aux_loss_coef and router_z_loss_coef must be >= 0 (got %g, %g)", c->router_aux_loss_coef,
        c->router_z_loss_coef);
    REQ(c->router_jitter_noise >= 0 && c->router_jitter_noise < 1, "router_jitter_noise must be in [0, 1) (got %g)",
        c->router_jitter_noise);
    REQ(c->expert_capacity >= 0, "expert_capacity must be >= 0 (0: moelm_capacity_factor per sequence; got %d)",
        c->expert_capacity);
    const int *ids[] = {&s->pad_token_id, &s->eos_token_id, &s->bos_token_id, &s->decoder_start_token_id};
    const char *names[] = {"pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id"};
    for (int i = 0; i < 4; i++)
        REQ(*ids[i] >= -1 && *ids[i] < c->vocab_size, "%s must be null or in [0, vocab_size %d) (got %d)", names[i],
            c->vocab_size, *ids[i]);
    REQ(config_num_moe_layers(c) <= CONFIG_MAX_MOE_LAYERS, "at most %d sparse blocks in all (got %d: fewer "
        "num_sparse_encoder_layers or num_sparse_decoder_layers)", CONFIG_MAX_MOE_LAYERS, config_num_moe_layers(c));
    int sparse = config_switch_sparse_step(c, 0) > 0 || config_switch_sparse_step(c, 1) > 0;
    if (sparse) {
        REQ(c->num_experts >= 1 && c->num_experts <= 256, "num_experts must be in [1, 256] (got %d)", c->num_experts);
        MoEConfig m = config_moe(c);
        moelm_status st = moe_config_check(&m, 1);
        if (st) return st;
    }
#undef REQ
    return MOELM_OK;
}
