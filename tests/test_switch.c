/* test_switch.c: model_type switch_transformers: its config (HF's SwitchTransformersConfig keys,
 * defaults, aliases, sparse-block placement, validation, the round trip through config.json). */
#include <string.h>
#include <unistd.h>
#include "test.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "model/config.h"
#include "model/encdec.h"
#include "model/forward_file.h"

static char tmpdir[256];

/* Writes text to a file in the test's directory and loads it as a config. */
static moelm_status load_text(ModelConfig *c, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", tmpdir);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    return config_load(c, path);
}

TEST(switch_config_hf_defaults) {
    ModelConfig c;
    EXPECT(load_text(&c, "{\"model_type\": \"switch_transformers\"}") == MOELM_OK);
    EXPECT(c.model_type == MODEL_SWITCH);
    EXPECT(c.vocab_size == 32128 && c.d_model == 768 && c.sw.d_kv == 64 && c.d_ff == 2048);
    EXPECT(c.expert_capacity == 64 && c.num_layers == 12 && c.sw.num_decoder_layers == 12);
    EXPECT(c.num_heads == 12 && c.num_experts == 8 && c.sw.relative_attention_num_buckets == 32);
    EXPECT(c.sw.relative_attention_max_distance == 128 && c.hidden_act == ACT_RELU && c.tie_word_embeddings);
    EXPECT_NEAR(c.router_jitter_noise, 0.01, 1e-9);
    EXPECT_NEAR(c.layer_norm_epsilon, 1e-6, 1e-12);
    EXPECT_NEAR(c.router_aux_loss_coef, 0.001, 1e-9);
    EXPECT(c.sw.pad_token_id == 0 && c.sw.eos_token_id == 1 && c.sw.bos_token_id == -1);
    EXPECT(c.sw.decoder_start_token_id == -1 && c.note[0] == 0);
    /* 12 layers, 3 sparse: sparse_step 4, blocks 1, 5, 9 in both stacks */
    for (int d = 0; d < 2; d++) {
        EXPECT(config_switch_sparse_step(&c, d) == 4);
        for (int i = 0; i < 12; i++) EXPECT(config_switch_block_is_sparse(&c, d, i) == (i == 1 || i == 5 || i == 9));
    }
}

TEST(switch_config_sparse_placement) {
    ModelConfig c;
    /* 6 layers, 4 sparse: step 1, every block (HF gives more than asked); decoder 7 layers, 3 sparse:
     * step 2, blocks 1, 3, 5; an explicit step overrides the derived one; more sparse than blocks: none */
    EXPECT(load_text(&c, "{\"model_type\": \"switch_transformers\", \"num_layers\": 6, \"num_sparse_encoder_layers\": 4,"
                         " \"num_decoder_layers\": 7, \"num_sparse_decoder_layers\": 3}") == MOELM_OK);
    for (int i = 0; i < 6; i++) EXPECT(config_switch_block_is_sparse(&c, 0, i));
    for (int i = 0; i < 7; i++) EXPECT(config_switch_block_is_sparse(&c, 1, i) == (i % 2 == 1));
    EXPECT(load_text(&c, "{\"model_type\": \"switch_transformers\", \"num_layers\": 6, \"encoder_sparse_step\": 3,"
                         " \"num_sparse_decoder_layers\": 13}") == MOELM_OK);
    for (int i = 0; i < 6; i++) EXPECT(config_switch_block_is_sparse(&c, 0, i) == (i == 1 || i == 4));
    EXPECT(config_switch_sparse_step(&c, 1) == 0);
    for (int i = 0; i < 12; i++) EXPECT(!config_switch_block_is_sparse(&c, 1, i));
    /* null num_decoder_layers: num_layers, whatever the key order */
    EXPECT(load_text(&c, "{\"num_decoder_layers\": null, \"model_type\": \"switch_transformers\", \"num_layers\": 5}") ==
           MOELM_OK);
    EXPECT(c.sw.num_decoder_layers == 5);
}

TEST(switch_config_fixture_and_notes) {
    ModelConfig c;
    EXPECT(config_load(&c, "tests/ref/switch/switch_untied/config.json") == MOELM_OK);
    EXPECT(c.vocab_size == 40 && c.d_model == 12 && c.sw.d_kv == 5 && c.num_heads == 3 && c.d_ff == 20);
    EXPECT(c.num_layers == 2 && c.sw.num_decoder_layers == 4 && c.num_experts == 3 && c.expert_capacity == 2);
    EXPECT(c.sw.relative_attention_num_buckets == 32 && c.sw.relative_attention_max_distance == 128);
    EXPECT(c.hidden_act == ACT_GELU && !c.tie_word_embeddings && c.sw.decoder_start_token_id == 0);
    EXPECT(strstr(c.note, "router_type") && strstr(c.note, "is_gated_act") && !strstr(c.note, "hidden_size"));
    EXPECT(config_switch_block_is_sparse(&c, 0, 0) && config_switch_block_is_sparse(&c, 0, 1));
    EXPECT(!config_switch_block_is_sparse(&c, 1, 0) && config_switch_block_is_sparse(&c, 1, 1));
    EXPECT(!config_switch_block_is_sparse(&c, 1, 2) && config_switch_block_is_sparse(&c, 1, 3));
    EXPECT(config_load(&c, "tests/ref/switch/switch_tied/config.json") == MOELM_OK);
    EXPECT(c.note[0] == 0 && c.tie_word_embeddings && c.sw.relative_attention_num_buckets == 8);
}

TEST(switch_config_round_trip) {
    const char *presets[] = {"switch-t5-tiny", "switch-t5-ptb", "seed-hf-switch"};
    for (int i = 0; i < 3; i++) {
        ModelConfig a, b;
        EXPECT(config_preset(&a, presets[i]) == MOELM_OK);
        a.vocab_size = 100;
        EXPECT(config_set(&a, "dense_act_fn", "gelu") == MOELM_OK);
        EXPECT(config_set(&a, "moelm_dropped_tokens", "scaled_input") == MOELM_OK);
        EXPECT(config_set(&a, "bos_token_id", "null") == MOELM_OK);
        char *ja = config_to_json(&a);
        EXPECT(ja && load_text(&b, ja) == MOELM_OK);
        char *jb = config_to_json(&b);
        EXPECT(jb && !strcmp(ja, jb));
        EXPECT(b.note[0] == 0 && b.sw.dropped_scaled_input && b.hidden_act == ACT_GELU && b.sw.bos_token_id == -1);
        moelm_free(ja);
        moelm_free(jb);
    }
}

/* Each bad config gives MOELM_ERR_CONFIG and a message naming the key. */
TEST(switch_config_errors) {
    static const struct { const char *json, *msg; } bad[] = {
        {"\"router_bias\": true", "router_bias"},
        {"\"dense_act_fn\": \"gated-gelu\"", "dense_act_fn"},
        {"\"hidden_size\": 512", "disagrees"},
        {"\"relative_attention_max_distance\": 16", "relative_attention_max_distance"},
        {"\"relative_attention_num_buckets\": 2", "relative_attention_num_buckets"},
        {"\"d_kv\": 0", "d_kv"},
        {"\"num_layers\": null", "num_layers"},
        {"\"d_ff\": \"wide\"", "d_ff"},
        {"\"num_heads\": [12]", "num_heads"},
        {"\"decoder_start_token_id\": 32128", "decoder_start_token_id"},
        {"\"num_experts\": 300", "num_experts"},
        {"\"router_dtype\": \"int8\"", "router_dtype"},
        {"\"is_encoder_decoder\": false", "is_encoder_decoder"},
        {"\"dropout_rate\": 1.5", "dropout_rate"},
        {"\"expert_capacity\": -1", "expert_capacity"},
        {"\"moelm_router\": \"soft\"", "not yet supported"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[512];
        snprintf(text, sizeof text, "{\"model_type\": \"switch_transformers\", \"d_model\": 768, %s}", bad[i].json);
        ModelConfig c;
        moelm_status st = load_text(&c, text);
        EXPECT_MSG(st == MOELM_ERR_CONFIG && strstr(moelm_last_error(), bad[i].msg), "%s -> %s", bad[i].json,
                   moelm_last_error());
    }
    /* unknown keys of any type are noted, not errors */
    ModelConfig c;
    EXPECT(load_text(&c, "{\"model_type\": \"switch_transformers\", \"task_specific_params\": {\"a\": 1},"
                         " \"id2label\": [1], \"feed_forward_proj\": \"relu\", \"output_past\": null}") == MOELM_OK);
    EXPECT(strstr(c.note, "task_specific_params") && strstr(c.note, "id2label") && strstr(c.note, "output_past"));
}

/* ---- the model against tests/ref/switch_ref.py's fixtures ------------------------------------------ */

/* Every tensor of expected (but the grad.* and bucket.* ones) against got: max |got - expected| <=
 * 1e-4 max |expected| (the tolerance: both sides fp32, the sums reordered; measured worst
 * below 2e-6 of the largest value). Returns the number of tensors compared. */
static int compare_outputs(const char *expected, const char *got) {
    SafeTensors *e = NULL, *g = NULL;
    EXPECT(st_open(&e, expected) == MOELM_OK);
    EXPECT(st_open(&g, got) == MOELM_OK);
    if (!e || !g) return 0;
    int n = 0;
    double worst = 0.0;
    for (int i = 0; i < st_count(e); i++) {
        const char *name = st_name(e, i), *dt;
        if (!strncmp(name, "grad.", 5) || !strncmp(name, "bucket.", 7)) continue;
        int nd;
        int64_t sh[ST_MAX_DIMS];
        st_info(e, name, &dt, &nd, sh);
        size_t cnt = 1;
        for (int d = 0; d < nd; d++) cnt *= (size_t)sh[d];
        float *a = malloc(sizeof(float) * (cnt + 1)), *b = malloc(sizeof(float) * (cnt + 1));
        EXPECT(st_read_f32(e, name, a, nd, sh) == MOELM_OK);
        moelm_status st = st_read_f32(g, name, b, nd, sh);
        EXPECT_MSG(st == MOELM_OK, "%s", moelm_last_error());
        if (!st) {
            double mx = 0.0, diff = 0.0;
            for (size_t k = 0; k < cnt; k++) {
                mx = fabs(a[k]) > mx ? fabs(a[k]) : mx;
                diff = fabs(a[k] - b[k]) > diff ? fabs(a[k] - b[k]) : diff;
            }
            EXPECT_MSG(diff <= 1e-4 * mx + 1e-30, "%s: max |diff| %.3g, largest value %.3g", name, diff, mx);
            if (mx > 0 && diff / mx > worst) worst = diff / mx;
            n++;
        }
        free(a);
        free(b);
    }
    printf("  %s: %d tensors, worst |diff| / largest %.2g\n", expected, n, worst);
    st_close(e);
    st_close(g);
    return n;
}

TEST(switch_forward_matches_reference) {
    const char *models[] = {"switch_tied", "switch_untied"};
    for (int i = 0; i < 2; i++) {
        char dir[256], in[256], exp[256], out[512], note[256];
        snprintf(dir, sizeof dir, "tests/ref/switch/%s", models[i]);
        snprintf(in, sizeof in, "tests/ref/switch/%s.inputs.safetensors", models[i]);
        snprintf(exp, sizeof exp, "tests/ref/switch/%s.expected.safetensors", models[i]);
        snprintf(out, sizeof out, "%s/%s.out.safetensors", tmpdir, models[i]);
        moelm_status st = forward_file_run(dir, in, out, note, sizeof note);
        EXPECT_MSG(st == MOELM_OK, "%s: %s", models[i], moelm_last_error());
        if (!st) EXPECT(compare_outputs(exp, out) >= 20);
    }
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/moelm_test_switch_%d", (int)getpid());
    char cmd[300];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", tmpdir);
    if (system(cmd)) return 1;
    RUN(switch_config_hf_defaults);
    RUN(switch_config_sparse_placement);
    RUN(switch_config_fixture_and_notes);
    RUN(switch_config_round_trip);
    RUN(switch_config_errors);
    RUN(switch_forward_matches_reference);
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd)) return 1;
    return test_summary("switch");
}
