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
#include "ops/attn.h"

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
    EXPECT(c.hidden_act == ACT_GELU_TANH && !c.tie_word_embeddings && c.sw.decoder_start_token_id == 0);
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
        {"\"moelm_router\": \"expert-choice\"", "moelm_router"},
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

/* T5's bucket function (ops' t5_relative_bucket) against the reference's float32 torch computation on
 * relative positions -300..300 for (buckets, max distance) = (32, 128), (8, 12), (6, 20), (33, 40). */
TEST(switch_buckets_match_reference) {
    SafeTensors *ex = NULL;
    EXPECT(st_open(&ex, "tests/ref/switch/switch_tied.expected.safetensors") == MOELM_OK);
    if (!ex) return;
    static const int cfgs[4][2] = {{32, 128}, {8, 12}, {6, 20}, {33, 40}};
    int checked = 0;
    for (int i = 0; i < 4; i++)
        for (int bi = 0; bi < 2; bi++) {
            char name[64];
            snprintf(name, sizeof name, "bucket.%d.%d.%d", cfgs[i][0], cfgs[i][1], bi);
            int32_t want[601];
            int64_t shape[1] = {601};
            EXPECT(st_read_i32(ex, name, want, 1, shape) == MOELM_OK);
            for (int r = -300; r <= 300; r++, checked++)
                EXPECT_MSG(t5_relative_bucket(r, bi, cfgs[i][0], cfgs[i][1]) == want[r + 300], "%s rel %d", name, r);
        }
    EXPECT(checked == 8 * 601);
    st_close(ex);
}

/* Reads an int32 [B, T] input of a fixture case (NULL when absent). */
static int *fixture_ints(const SafeTensors *st, const char *name, int64_t shape[2]) {
    const char *dt;
    int nd;
    int64_t sh[ST_MAX_DIMS];
    if (!st_info(st, name, &dt, &nd, sh)) return NULL;
    shape[0] = sh[0];
    shape[1] = sh[1];
    int *v = malloc(sizeof(int) * (size_t)(sh[0] * sh[1]));
    EXPECT(st_read_i32(st, name, (int32_t *)v, 2, sh) == MOELM_OK);
    return v;
}

/* The backward against PyTorch's autograd (the fixtures' grad.<name> of the loss of case "right", HF's
 * router losses included): per tensor max |diff| <= 1e-4 max |torch| + 1e-7 (fp32 both sides; measured
 * worst below 1e-5 of the largest entry). */
TEST(switch_grads_match_reference) {
    const char *models[] = {"switch_tied", "switch_untied"};
    for (int mi = 0; mi < 2; mi++) {
        char dir[256], path[256];
        snprintf(path, sizeof path, "tests/ref/switch/%s.inputs.safetensors", models[mi]);
        SafeTensors *in = NULL, *ex = NULL;
        EXPECT(st_open(&in, path) == MOELM_OK);
        snprintf(path, sizeof path, "tests/ref/switch/%s.expected.safetensors", models[mi]);
        EXPECT(st_open(&ex, path) == MOELM_OK);
        if (!in || !ex) return;
        int64_t s1[2], s2[2], s3[2];
        int *ids = fixture_ints(in, "right.input_ids", s1), *mask = fixture_ints(in, "right.attention_mask", s2);
        int *labels = fixture_ints(in, "right.labels", s3);
        Model m;
        snprintf(dir, sizeof dir, "tests/ref/switch/%s", models[mi]);
        EXPECT(model_load_dir(&m, dir, (int)s1[0], (int)s1[1], (int)s3[1]) == MOELM_OK);
        Seq2SeqBatch b = {(int)s1[0], (int)s1[1], (int)s3[1], ids, mask, NULL, labels, NULL};
        EXPECT(encdec_check_batch(&m, &b) == MOELM_OK);
        model_zero_grad(&m);
        encdec_forward(&m, &b, 0);
        encdec_backward(&m);
        int n = model_file_tensors(&m, NULL, 0), compared = 0;
        FileTensor *ft = malloc(sizeof(FileTensor) * (size_t)n);
        model_file_tensors(&m, ft, n);
        double worst = 0.0;
        for (int i = 0; i < n; i++) {
            char gname[128];
            snprintf(gname, sizeof gname, "grad.%s", ft[i].name);
            float *want = malloc(sizeof(float) * ft[i].count);
            moelm_status st = st_read_f32(ex, gname, want, ft[i].ndim, ft[i].shape);
            EXPECT_MSG(st == MOELM_OK, "%s", moelm_last_error());
            const float *got = m.grads + (ft[i].data - m.params);
            double mx = 0.0, diff = 0.0;
            for (size_t k = 0; k < ft[i].count && !st; k++) {
                mx = fabs(want[k]) > mx ? fabs(want[k]) : mx;
                diff = fabs(want[k] - got[k]) > diff ? fabs(want[k] - got[k]) : diff;
            }
            EXPECT_MSG(diff <= 1e-4 * mx + 1e-7, "%s %s: max |diff| %.3g, largest %.3g", models[mi], ft[i].name, diff, mx);
            if (mx > 0 && diff / mx > worst) worst = diff / mx;
            compared += !st;
            free(want);
        }
        printf("  %s: %d gradients, worst |diff| / largest %.2g\n", models[mi], compared, worst);
        EXPECT(compared == n && n > 30);
        free(ft);
        free(ids);
        free(mask);
        free(labels);
        model_free(&m);
        st_close(in);
        st_close(ex);
    }
}

/* ---- gradients against central finite differences ----------------------------------------------- */

typedef struct {
    Model *m;
    Seq2SeqBatch b;
    int training;   /* 1: a training forward, its dropout masks drawn from the same seed every time */
} FdCtx;

static double fd_loss(FdCtx *c) {
    /* masks whose selections have margins (1234 put a ReLU unit at ~0 under the counter-based draws) */
    if (c->training) rng_seed(&c->m->rng, 4321);
    return (double)encdec_forward(c->m, &c->b, c->training);
}

/* The routing and the ReLU signs: a perturbation that changes one makes the quotient meaningless. */
static uint64_t selection_hash(const Model *m) {
    MoELayer ml[CONFIG_MAX_MOE_LAYERS];
    int n = model_moe_layers(m, ml, CONFIG_MAX_MOE_LAYERS);
    uint64_t h = 1469598103934665603ull;
    for (int l = 0; l < n; l++) {
        const MoEActs *a = ml[l].a;
        for (int t = 0; t < a->N; t++) h = (h ^ (uint64_t)(a->expert[t] * 7 + (a->slot_row[t] >= 0))) * 1099511628211ull;
        if (m->cfg.hidden_act == ACT_RELU)
            for (int i = 0; i < a->S * m->cfg.d_ff; i++) h = (h ^ (a->h_pre[i] > 0)) * 1099511628211ull;
    }
    if (m->cfg.hidden_act == ACT_RELU)
        for (int dec = 0; dec < 2; dec++) {
            const T5StackActs *s = dec ? &m->ed->dec : &m->ed->enc;
            int N = m->ed->B * (dec ? m->ed->Td : m->ed->Te);
            for (int i = 0; i < config_switch_layers(&m->cfg, dec); i++)
                if (s->blocks[i].fc_pre)
                    for (int k = 0; k < N * m->cfg.d_ff; k++) h = (h ^ (s->blocks[i].fc_pre[k] > 0)) * 1099511628211ull;
        }
    return h;
}

/* Every tensor's gradient (up to 12 coordinates each) against central differences of the float loss,
 * h = 3e-3: the loss (~3) rounds at 2.4e-7, ~4e-5 in the quotient; curvature O(h^2) stays below 1%:
 * |analytic - numeric| <= 2e-4 + 3e-2 |numeric| passes that and fails a missing or wrong term (checked
 * by scaling single backward terms). Coordinates that change a selection are skipped. */
static int fd_model(Model *m, const Seq2SeqBatch *b, const char *label, int training) {
    FdCtx c = {m, *b, training};
    model_zero_grad(m);
    fd_loss(&c);
    encdec_backward(m);
    uint64_t sig = selection_hash(m);
    float *grads = malloc(sizeof(float) * m->n_params);
    memcpy(grads, m->grads, sizeof(float) * m->n_params);
    const float h = 3e-3f;
    /* training: kept activations scaled by 1 / (1 - p) round coarser; a few ulps of the loss (2.4e-7
     * each) over 2h are 1e-4 and more in the quotient */
    const double atol = training ? 5e-4 : 2e-4;
    int ok = 1, total = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const TensorInfo *t = &m->tensors[i];
        size_t step = t->size > 12 ? t->size / 12 : 1;
        int bad = 0, checked = 0;
        for (size_t k = 0; k < t->size; k += step) {
            float *x = m->params + t->offset + k, old = *x;
            *x = old + h;
            double lp = fd_loss(&c);
            int flip = selection_hash(m) != sig;
            *x = old - h;
            double lm = fd_loss(&c);
            flip |= selection_hash(m) != sig;
            *x = old;
            if (flip) continue;
            checked++;
            double num = (lp - lm) / (2.0 * h), an = grads[t->offset + k];
            if (fabs(num - an) > atol + 3e-2 * fabs(num)) {
                if (bad < 3) printf("  %s %s[%zu]: analytic %.6g numeric %.6g\n", label, t->name, k, an, num);
                bad++;
            }
        }
        if (bad || !checked) {
            printf("  %s %s: %d bad of %d checked\n", label, t->name, bad, checked);
            ok = 0;
        }
        total += checked;
    }
    free(grads);
    return ok && total > 50;
}

/* A tiny model: d_kv * heads (6) != d_model (8), 3 experts, both stacks with a sparse block 1 of 3 and
 * capacity 2 a sequence (drops), padding on either side, an ignored label. */
static void fd_config(ModelConfig *c) {
    config_switch_defaults(c);
    c->vocab_size = 11;
    c->d_model = 8;
    c->num_heads = 2;
    c->sw.d_kv = 3;
    c->d_ff = 10;
    c->num_experts = 3;
    c->expert_capacity = 2;
    c->num_layers = 3;
    c->sw.num_decoder_layers = 3;
    c->sw.num_sparse_encoder_layers = 1;   /* step 3: block 1 */
    c->sw.num_sparse_decoder_layers = 1;
    c->sw.relative_attention_num_buckets = 8;
    c->sw.relative_attention_max_distance = 10;
    c->dropout_rate = 0.0f;
    c->router_jitter_noise = 0.0f;
    c->router_z_loss_coef = 0.05f;
    c->router_aux_loss_coef = 0.1f;
    c->hidden_act = ACT_GELU;
    c->sw.decoder_start_token_id = 0;
}

static void fd_case_mode(ModelConfig *c, const char *label, int training) {
    int ids[12], mask[12], labels[10];
    for (int i = 0; i < 12; i++) {
        ids[i] = (i * 7 + 3 + i / 4) % 11;
        mask[i] = !(i == 0 || i == 10 || i == 11);   /* row 0 padded on the left, row 1 on the right */
    }
    for (int i = 0; i < 10; i++) labels[i] = (i * 5 + 2) % 11;
    labels[4] = -100;
    Model m;
    EXPECT_MSG(model_create_encdec(&m, c, 2, 6, 5, 3, 0, 1) == MOELM_OK, "%s: %s", label, moelm_last_error());
    /* routers 10x their init (the Switch paper's, small): decisions with margins, so that most perturbations
     * leave the routing as it is and are checked */
    for (int i = 0; i < m.n_tensors; i++)
        if (strstr(m.tensors[i].name, "router"))
            for (size_t k = 0; k < m.tensors[i].size; k++) m.params[m.tensors[i].offset + k] *= 10.0f;
    Seq2SeqBatch b = {2, 6, 5, ids, mask, NULL, labels, NULL};
    EXPECT_MSG(fd_model(&m, &b, label, training), "%s", label);
    int dropped = 0;
    MoELayer ml[CONFIG_MAX_MOE_LAYERS];
    int n = model_moe_layers(&m, ml, CONFIG_MAX_MOE_LAYERS);
    for (int l = 0; l < n; l++) for (int t = 0; t < ml[l].a->N; t++) dropped += ml[l].a->slot_row[t] < 0;
    EXPECT(n >= 2 && (dropped > 0 || c->router_type == ROUTER_SOFT));   /* soft gating has no capacity */
    model_free(&m);
}

static void fd_case(ModelConfig *c, const char *label) { fd_case_mode(c, label, 0); }

/* Training mode with HF's dropout everywhere it applies it (embeddings, attention probabilities, sublayer
 * outputs, the dense FF's and the experts' hidden activations, the final norm), 30%: the masks drawn
 * from one seed each evaluation, so the loss is a fixed smooth function of the parameters. Same
 * tolerances as the eval-mode cases. */
TEST(switch_grad_fd_dropout_training) {
    ModelConfig c;
    fd_config(&c);
    c.dropout_rate = 0.3f;
    fd_case_mode(&c, "dropout 0.3 training", 1);
    c.tie_word_embeddings = 0;
    c.hidden_act = ACT_RELU;
    fd_case_mode(&c, "dropout 0.3 training untied relu", 1);
}

/* Dropout is training only: an eval forward of a model with dropout_rate 0.3 gives the bits of the same
 * weights with dropout 0; a training forward differs, and its masks drop about 30% of the attention
 * probabilities and of the experts' hidden activations. */
TEST(switch_dropout_eval_unaffected) {
    ModelConfig c;
    fd_config(&c);
    c.expert_capacity = 64;
    Model a, b;
    EXPECT(model_create_encdec(&a, &c, 2, 6, 5, 3, 0, 1) == MOELM_OK);
    c.dropout_rate = 0.3f;
    EXPECT(model_create_encdec(&b, &c, 2, 6, 5, 3, 0, 1) == MOELM_OK);
    EXPECT(a.n_params == b.n_params && !memcmp(a.params, b.params, sizeof(float) * a.n_params));
    int ids[12], labels[10];
    for (int i = 0; i < 12; i++) ids[i] = (i * 5 + 1) % 11;
    for (int i = 0; i < 10; i++) labels[i] = (i * 3 + 2) % 11;
    Seq2SeqBatch bt = {2, 6, 5, ids, NULL, NULL, labels, NULL};
    float la = encdec_forward(&a, &bt, 0), lb = encdec_forward(&b, &bt, 0);
    EXPECT_MSG(la == lb, "eval loss %.9g with dropout 0, %.9g with 0.3", la, lb);
    EXPECT(!memcmp(a.ed->logits, b.ed->logits, sizeof(float) * 10 * 11));
    int bad_mask[10] = {1, 1, 1, 2, 1, 1, 1, 1, 1, 0};   /* a 2: rejected with its place */
    Seq2SeqBatch bm = {2, 6, 5, ids, NULL, NULL, labels, bad_mask};
    EXPECT(encdec_check_batch(&b, &bm) == MOELM_ERR_DATA && strstr(moelm_last_error(), "decoder_attention_mask: 2 at 3"));
    float lt = encdec_forward(&b, &bt, 1);
    EXPECT_MSG(fabsf(lt - lb) > 1e-4f, "training loss %.9g equals the eval loss", lt);
    size_t n = 0, kept = 0, hn = 0, hkept = 0;
    const T5BlockActs *blk = &b.ed->dec.blocks[1];   /* the decoder's sparse block */
    for (size_t i = 0; i < (size_t)2 * 2 * 5 * 5; i++) { n++; kept += blk->att_drop[i]; }
    for (size_t i = 0; i < (size_t)2 * 2 * 5 * 6; i++) { n++; kept += blk->catt_drop[i]; }
    EXPECT(blk->moe.hdrop != NULL && blk->moe.hdrop_p == 0.3f);
    for (size_t i = 0; i < (size_t)blk->moe.S * c.d_ff; i++) { hn++; hkept += blk->moe.hdrop[i]; }
    EXPECT_MSG(kept > n / 2 && kept < n * 9 / 10 && hkept > hn / 2 && hkept < hn * 9 / 10,
               "kept %zu of %zu probabilities, %zu of %zu expert activations", kept, n, hkept, hn);
    model_free(&a);
    model_free(&b);
}

TEST(switch_grad_fd_tied_gelu) {
    ModelConfig c;
    fd_config(&c);
    fd_case(&c, "tied gelu");
}

TEST(switch_grad_fd_untied_relu_fixed_losses) {
    ModelConfig c;
    fd_config(&c);
    c.tie_word_embeddings = 0;
    c.hidden_act = ACT_RELU;
    c.sw.hf_router_losses = 0;
    fd_case(&c, "untied relu fixed losses");
}

TEST(switch_grad_fd_dropped_scaled_input_all_sparse) {
    ModelConfig c;
    fd_config(&c);
    c.sw.dropped_scaled_input = 1;
    c.sw.hf_router_losses = 0;
    c.num_layers = 2;
    c.sw.encoder_sparse_step = 1;   /* both encoder blocks sparse (HF would compute no encoder loss) */
    fd_case(&c, "dropped tokens get gate * x, all sparse");
}

/* ---- generation ----------------------------------------------------------------------------------- */

/* A model for the generation tests: no token dropped in the full forward (capacity 64), so that cached
 * decoding (one token a sequence a step) and the full forward route alike. */
static void gen_model_router(Model *m, int tied, const char *router) {
    ModelConfig c;
    fd_config(&c);
    EXPECT(config_set(&c, "moelm_router", router) == MOELM_OK);
    EXPECT(config_set(&c, "moelm_experts_per_tok", "2") == MOELM_OK);
    c.vocab_size = 23;
    c.expert_capacity = 64;
    c.tie_word_embeddings = tied;
    c.num_layers = 2;
    c.sw.num_decoder_layers = 3;
    EXPECT(model_create_encdec(m, &c, 3, 7, 9, 5, 0, 1) == MOELM_OK);
    for (int i = 0; i < m->n_tensors; i++)   /* routers at HF's init scale (moelm's is 30x smaller) */
        if (strstr(m->tensors[i].name, "router"))
            for (size_t k = 0; k < m->tensors[i].size; k++) m->params[m->tensors[i].offset + k] *= 30.0f;
}

static void gen_model(Model *m, int tied) { gen_model_router(m, tied, "switch"); }

static double max_abs(const float *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

/* Cached decoding gives the full forward's logits: 3 rows teacher-forced through 8 steps against the
 * decoder over the whole sequences (batch 3, the same encoder input with padding), every step within
 * 1e-5 of the largest logit (both float; the sums differ in order only). Tied and untied heads with
 * HF's router; top-2 and hash routing (the step's tokens) tied. */
TEST(switch_cached_decoding_equals_full_forward) {
    static const char *const routers[] = {"switch", "switch", "topk", "hash"};
    for (int ri = 0; ri < 4; ri++) {
        int tied = ri != 1;
        Model m;
        gen_model_router(&m, tied, routers[ri]);
        int V = m.cfg.vocab_size, R = 3, T = 8;
        int enc[7] = {5, 9, 2, 17, 3, 8, 0}, mask[7] = {1, 1, 1, 1, 1, 1, 0};
        int dec[3 * 8], enc3[3 * 7], mask3[3 * 7];
        for (int i = 0; i < R * T; i++) dec[i] = i % T == 0 ? 0 : (i * 7 + 3) % V;
        for (int r = 0; r < R; r++) memcpy(enc3 + r * 7, enc, sizeof enc), memcpy(mask3 + r * 7, mask, sizeof mask);
        Seq2SeqBatch b = {R, 7, T, enc3, mask3, dec, NULL, NULL};
        encdec_forward(&m, &b, 0);
        float *full = malloc(sizeof(float) * (size_t)R * T * V);
        memcpy(full, m.ed->logits, sizeof(float) * (size_t)R * T * V);
        EncDecCache kv;
        EXPECT(encdec_cache_create(&kv, &m, R, 9, 7) == MOELM_OK);
        encdec_cache_encode(&m, &kv, enc, mask, 7);
        double worst = 0, scale = max_abs(full, (size_t)R * T * V);
        for (int t = 0; t < T; t++) {
            int tok[3] = {dec[t], dec[T + t], dec[2 * T + t]};
            encdec_step(&m, &kv, tok);
            for (int r = 0; r < R; r++)
                for (int v = 0; v < V; v++) {
                    double d = fabs(kv.logits[r * V + v] - full[((size_t)r * T + t) * V + v]);
                    worst = d > worst ? d : worst;
                }
        }
        EXPECT_MSG(worst <= 1e-5 * scale, "%s tied %d: worst %.3g of %.3g", routers[ri], tied, worst, scale);
        encdec_cache_free(&kv);
        free(full);
        model_free(&m);
    }
}

/* HF's beam search, written again here over full forwards (no cache): all beams' candidates sorted,
 * finished hypotheses kept best-N, HF's stopping rule; the library's search must return the same ids. */
typedef struct { double s; int beam, tok; } Cand;
static int cand_cmp(const void *a, const void *b) {
    const Cand *x = a, *y = b;
    if (x->s != y->s) return x->s < y->s ? 1 : -1;
    return x->beam * 1000 + x->tok - (y->beam * 1000 + y->tok);
}

/* Keeps the N best finished hypotheses: a new one enters while fewer than N, else when it beats the worst. */
static void ref_hyp_add(double *hs, int *hlen, int (*hids)[16], int *hn, int N, const int *ids, int len, double sc) {
    int worst = 0;
    for (int i = 1; i < *hn; i++) if (hs[i] < hs[worst]) worst = i;
    if (*hn < N) worst = (*hn)++;
    else if (!(sc > hs[worst])) return;
    hs[worst] = sc;
    hlen[worst] = len;
    memcpy(hids[worst], ids, sizeof(int) * (size_t)len);
}

static int ref_beam(Model *m, const int *enc, int Te, int N, int max_new, float lp, int eos, int *out) {
    int V = m->cfg.vocab_size, seq[8][16], nseq[8][16], len = 0, done = 0, hn = 0, hlen[8], hids[8][16];
    double bs[8], hs[8];
    for (int b = 0; b < N; b++) bs[b] = b ? -1e9 : 0;
    Cand *cand = malloc(sizeof(Cand) * (size_t)N * V);
    while (!done && len < max_new) {
        int nc = 0;
        for (int b = 0; b < N; b++) {
            int dec[16];
            dec[0] = 0;
            memcpy(dec + 1, seq[b], sizeof(int) * (size_t)len);
            Seq2SeqBatch bt = {1, Te, len + 1, enc, NULL, dec, NULL, NULL};
            encdec_forward(m, &bt, 0);
            const float *lg = m->ed->logits + (size_t)len * V;
            double mx = -1e30, sum = 0;
            for (int v = 0; v < V; v++) mx = lg[v] > mx ? lg[v] : mx;
            for (int v = 0; v < V; v++) sum += exp(lg[v] - mx);
            for (int v = 0; v < V; v++) cand[nc++] = (Cand){bs[b] + (lg[v] - mx - log(sum)), b, v};
        }
        qsort(cand, (size_t)nc, sizeof(Cand), cand_cmp);
        int nb = 0;
        double nbs[8];
        for (int k = 0; k < 2 * N && nb < N; k++) {
            if (cand[k].tok == eos) {
                if (k < N) ref_hyp_add(hs, hlen, hids, &hn, N, seq[cand[k].beam], len, cand[k].s / pow(len, lp));
                continue;
            }
            memcpy(nseq[nb], seq[cand[k].beam], sizeof(int) * (size_t)len);
            nseq[nb][len] = cand[k].tok;
            nbs[nb++] = cand[k].s;
        }
        if (hn == N) {
            double w = hs[0];
            for (int i = 1; i < hn; i++) w = hs[i] < w ? hs[i] : w;
            done = w >= cand[0].s / pow(len, lp);
        }
        len++;
        memcpy(seq, nseq, sizeof seq);
        memcpy(bs, nbs, sizeof(double) * (size_t)N);
    }
    if (!done)
        for (int b = 0; b < N; b++) ref_hyp_add(hs, hlen, hids, &hn, N, seq[b], len, bs[b] / pow(len, lp));
    int best = 0;
    for (int i = 1; i < hn; i++) if (hs[i] > hs[best]) best = i;
    memcpy(out, hids[best], sizeof(int) * (size_t)hlen[best]);
    free(cand);
    return hlen[best];
}

/* Beam search against the reference above, over 8 encoder inputs, 1-4 beams, length penalties 0.5 and 2
 * (which change the winner) over 8 encoder inputs, an eos the model likes (hypotheses finish early and beams swap rows). */
TEST(switch_beam_search_and_greedy) {
    Model m;
    gen_model(&m, 1);
    for (size_t i = 0; i < m.n_params; i++) m.params[i] *= 1.2f;   /* peakier distributions: real choices */
    int out[16], ref[16], finished_early = 0, differ_by_penalty = 0;
    EncDecCache kv;
    for (int in = 0; in < 8; in++) {
        int enc[6];
        for (int t = 0; t < 6; t++) enc[t] = (in * 5 + t * 7 + 1) % 23;
        /* eos = the second most likely first token */
        EXPECT(encdec_cache_create(&kv, &m, 1, 9, 7) == MOELM_OK);
        encdec_cache_encode(&m, &kv, enc, NULL, 6);
        int t0 = 0;
        encdec_step(&m, &kv, &t0);
        int first = 0, eos = -1;
        for (int v = 1; v < 23; v++) if (kv.logits[v] > kv.logits[first]) first = v;
        for (int v = 0; v < 23; v++) if (v != first && (eos < 0 || kv.logits[v] > kv.logits[eos])) eos = v;
        encdec_cache_free(&kv);
        for (int N = 1; N <= 4; N++) {
            int got[2][16], gn[2];
            for (int li = 0; li < 2; li++) {
            float lp = li ? 2.0f : 0.5f;
            EncDecGenOptions o = {8, N, lp, 0.0f, 0, 1.0f, 1, 0, eos};
            EXPECT(encdec_cache_create(&kv, &m, N, 9, 7) == MOELM_OK);
            encdec_cache_encode(&m, &kv, enc, NULL, 6);
            int n = encdec_generate(&m, &kv, &o, out);
            encdec_cache_free(&kv);
            int nr = ref_beam(&m, enc, 6, N, 8, lp, eos, ref);
            EXPECT_MSG(n == nr && !memcmp(out, ref, sizeof(int) * (size_t)n), "input %d beams %d lp %g: %d vs %d tokens",
                       in, N, lp, n, nr);
            finished_early += n < 8;
            gn[li] = n;
            memcpy(got[li], out, sizeof(int) * (size_t)n);
            if (N == 1 && li == 0) {   /* one beam is greedy */
                EncDecGenOptions g = {8, 1, 1.0f, 0.0f, 0, 1.0f, 1, 0, eos};
                int gout[16];
                EXPECT(encdec_cache_create(&kv, &m, 1, 9, 7) == MOELM_OK);
                encdec_cache_encode(&m, &kv, enc, NULL, 6);
                int g1 = encdec_generate(&m, &kv, &g, gout);
                encdec_cache_free(&kv);
                EXPECT(g1 == n && !memcmp(gout, out, sizeof(int) * (size_t)n));
            }
            }
            differ_by_penalty += gn[0] != gn[1] || memcmp(got[0], got[1], sizeof(int) * (size_t)gn[0]);
        }
    }
    printf("  %d of 64 searches finished before the limit, %d of 32 changed with the length penalty\n", finished_early,
           differ_by_penalty);
    EXPECT(finished_early > 0 && differ_by_penalty > 0);
    model_free(&m);
}

/* A training step's forward and backward allocate nothing (the allocator is armed to fail the next call). */
TEST(switch_step_allocates_nothing) {
    ModelConfig c;
    fd_config(&c);
    c.dropout_rate = 0.1f;
    c.router_jitter_noise = 0.01f;
    Model m;
    EXPECT(model_create_encdec(&m, &c, 2, 6, 5, 3, 0, 1) == MOELM_OK);
    int ids[12], labels[10];
    for (int i = 0; i < 12; i++) ids[i] = (i * 5 + 1) % 11;
    for (int i = 0; i < 10; i++) labels[i] = (i * 3 + 2) % 11;
    Seq2SeqBatch b = {2, 6, 5, ids, NULL, NULL, labels, NULL};
    size_t live = moelm_alloc_live_bytes();
    moelm_alloc_fail_after(1);
    float loss = encdec_forward(&m, &b, 1);
    encdec_backward(&m);
    moelm_alloc_fail_after(0);
    EXPECT(isfinite(loss) && loss > 0 && moelm_alloc_live_bytes() == live);
    model_free(&m);
}

/* Hugging Face directory -> moelm -> directory -> moelm is bit-exact: the fp32 one written as fp32 (every
 * tensor's values equal the original file's), the bf16 sharded one written as bf16 in shards, an fp16
 * one written as fp16 (the parameters read back equal, bit for bit, those first read). */
TEST(switch_weights_round_trip_bit_exact) {
    const char *models[] = {"switch_tied", "switch_untied"};
    for (int i = 0; i < 2; i++) {
        char dir[256], out[512];
        snprintf(dir, sizeof dir, "tests/ref/switch/%s", models[i]);
        snprintf(out, sizeof out, "%s/rt_%s", tmpdir, models[i]);
        if (i == 0) {   /* fp16: written from the fp32 directory, then read, written and read again: the same */
            char h1[600], h2[600], cp[1300];
            Model a, b, c;
            snprintf(h1, sizeof h1, "%s/f16a", tmpdir);
            snprintf(h2, sizeof h2, "%s/f16b", tmpdir);
            EXPECT(model_load_dir(&a, dir, 1, 4, 4) == MOELM_OK);
            EXPECT(model_write_weights(&a, h1, 1, 0) == MOELM_OK);
            snprintf(cp, sizeof cp, "cp %s/config.json %s/ && mkdir -p %s && cp %s/config.json %s/", dir, h1, h2, dir, h2);
            EXPECT(system(cp) == 0);
            EXPECT(model_load_dir(&b, h1, 1, 4, 4) == MOELM_OK);
            EXPECT(model_write_weights(&b, h2, 1, 0) == MOELM_OK);
            EXPECT(model_load_dir(&c, h2, 1, 4, 4) == MOELM_OK);
            EXPECT(!memcmp(b.params, c.params, sizeof(float) * b.n_params));
            double worst = 0;   /* fp16 keeps 11 bits: the values within 2^-11 relative of the fp32 ones */
            for (size_t k = 0; k < a.n_params; k++) {
                double d = fabs(a.params[k] - b.params[k]) / (fabs(a.params[k]) + 1e-4);
                worst = d > worst ? d : worst;
            }
            EXPECT_MSG(worst <= 1.0 / 2048, "fp16 worst relative error %.3g", worst);
            model_free(&a);
            model_free(&b);
            model_free(&c);
        }
        Model a, b;
        EXPECT(model_load_dir(&a, dir, 1, 4, 4) == MOELM_OK);
        EXPECT(model_write_weights(&a, out, i ? 2 : 0, i ? 20000 : 0) == MOELM_OK);
        char cp[600];
        snprintf(cp, sizeof cp, "cp %s/config.json %s/", dir, out);
        EXPECT(system(cp) == 0);
        EXPECT(model_load_dir(&b, out, 1, 4, 4) == MOELM_OK);
        EXPECT(a.n_params == b.n_params && !memcmp(a.params, b.params, sizeof(float) * a.n_params));
        WeightSet *w0 = NULL, *w1 = NULL;
        EXPECT(ws_open(&w0, dir) == MOELM_OK && ws_open(&w1, out) == MOELM_OK);
        EXPECT(ws_count(w0) == ws_count(w1) && (i == 0 || ws_shard_count(w1) > 1));
        for (int k = 0; k < ws_count(w0); k++) {   /* the same names, shapes and dtypes */
            const char *name = ws_name(w0, k), *d0, *d1;
            int n0, n1;
            int64_t s0[ST_MAX_DIMS], s1[ST_MAX_DIMS];
            EXPECT(ws_info(w0, name, &d0, &n0, s0) && ws_info(w1, name, &d1, &n1, s1));
            EXPECT(!strcmp(d0, d1) && n0 == n1 && !memcmp(s0, s1, sizeof(int64_t) * (size_t)n0));
        }
        ws_close(w0);
        ws_close(w1);
        model_free(&a);
        model_free(&b);
    }
}

/* moelm's routers in the encoder-decoder (each layer's own losses): top-2 GShard, soft gating, hash. */
TEST(switch_grad_fd_other_routers) {
    static const char *const routers[] = {"topk", "soft", "hash"};
    for (int i = 0; i < 3; i++) {
        ModelConfig c;
        fd_config(&c);
        c.sw.hf_router_losses = 0;
        EXPECT(config_set(&c, "moelm_router", routers[i]) == MOELM_OK);
        EXPECT(config_set(&c, "moelm_experts_per_tok", "2") == MOELM_OK);
        if (i == 0) c.expert_capacity = 3;   /* two slots a token: drops at 3 a sequence */
        EXPECT(config_check(&c) == MOELM_OK);
        fd_case(&c, routers[i]);
    }
}

int main(void) {
    test_one_thread();
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
    RUN(switch_grads_match_reference);
    RUN(switch_buckets_match_reference);
    RUN(switch_grad_fd_tied_gelu);
    RUN(switch_grad_fd_untied_relu_fixed_losses);
    RUN(switch_grad_fd_dropped_scaled_input_all_sparse);
    RUN(switch_grad_fd_other_routers);
    RUN(switch_grad_fd_dropout_training);
    RUN(switch_dropout_eval_unaffected);
    RUN(switch_cached_decoding_equals_full_forward);
    RUN(switch_beam_search_and_greedy);
    RUN(switch_step_allocates_nothing);
    RUN(switch_weights_round_trip_bit_exact);
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd)) return 1;
    return test_summary("switch");
}
