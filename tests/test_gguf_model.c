/* test_gguf_model.c: llama / mixtral models read back from GGUF (src/model/llama_gguf_read.c).
 *   - f32 files written by llama_gguf.c load back bit for bit: every tensor of the HF view (the q/k
 *     rows put back from llama.cpp's rotary order, the experts' stacks back into moelm's slabs), the
 *     config, the tokenizer's ids; forward logits equal;
 *   - f16 / bf16 files: logits within the rounding of the weights (tolerances below);
 *   - q8_0: every block the generation reads equals the file's bytes, dequantised by a plain
 *     reference here (fp16 decoded from its bits by hand) exactly as gguf_read_tensor_f32 does; the
 *     KV steps from the int8 blocks against the steps of the dequantised float model;
 *   - a catalogue of hostile model files (missing keys, shapes that disagree with the keys, counts that
 *     contradict each other, unknown weight types, absurd sizes): a one-line error naming the file,
 *     nothing leaked. `test_gguf_model --write-hostile DIR` leaves them in DIR for test_gguf_model.sh,
 *     which runs them through the moelm command.
 */
#include "test.h"
#include "backend/q8.h"
#include "common/util.h"
#include "io/fileio.h"
#include "io/gguf.h"
#include "model/llama_gguf.h"
#include "model/llama_hf.h"
#include "tokenizer/tokenizer.h"

#include <stdint.h>
#include <string.h>

#define TMP "build/tmp/gguf_model"

static const char g_text[] =
    "the company said it would buy the shares of the firm for fifteen dollars each.\n"
    "in the first quarter the profit rose by three percent to two million dollars.\n"
    "new york stocks closed higher as investors bought shares of banks and airlines.\n"
    "the market fell sharply on monday after the report on trade was released.\n";

static Tokenizer *g_tok;
static size_t g_live;   /* bytes held between the tests (the tokenizer): each test leaves exactly these */

/* A tiny model of the family: mixtral (4 experts top-2, 4:2 heads; mixtral 2: top-1, as llama.cpp's
 * top-1 files) or a dense llama (tied, 2:1 heads), widths multiples of 32 (Q8_0's blocks), weights
 * scaled to move the output visibly. */
static void tiny_model(Model *m, int mixtral) {
    ModelConfig c;
    CHECK(config_preset(&c, mixtral ? "mixtral-tiny" : "llama-tiny") == MOELM_OK);
    c.vocab_size = tokenizer_vocab_size(g_tok);
    c.d_model = 64;
    c.num_heads = mixtral ? 4 : 2;
    c.num_key_value_heads = mixtral ? 2 : 1;
    c.num_layers = 2;
    c.d_ff = mixtral ? 64 : 96;
    c.n_positions = 16;
    c.tie_word_embeddings = !mixtral;
    if (mixtral == 2) c.num_experts_per_tok = 1;
    c.rope_theta = 500.0f;
    CHECK(model_create(m, &c, 1, 16, 7) == MOELM_OK);
    for (size_t i = 0; i < m->n_params; i++) m->params[i] *= 8.0f;
    for (int i = 0; i < m->n_tensors; i++)   /* norms near 1, not exactly (a misplaced one shows) */
        if (m->tensors[i].ndim == 1)
            for (size_t k = 0; k < m->tensors[i].size; k++) m->params[m->tensors[i].offset + k] = 1.0f + 0.01f * (float)(k % 7);
}

static void ids_of(int *ids, int n) {
    for (int i = 0; i < n; i++) ids[i] = (i * 37 + 5) % tokenizer_vocab_size(g_tok);
}

/* The largest |a - b| over the logits of a forward on ids, and the largest |logit| of a */
static double logits_diff(Model *a, Model *b, const int *ids, int T, double *scale) {
    int V = a->cfg.vocab_size;
    model_forward(a, ids, NULL, 0);
    model_forward(b, ids, NULL, 0);
    double d = 0.0, s = 0.0;
    for (size_t i = 0; i < (size_t)T * V; i++) {
        d = fmax(d, fabs((double)a->a.logits[i] - b->a.logits[i]));
        s = fmax(s, fabs((double)a->a.logits[i]));
    }
    *scale = s;
    return d;
}

TEST(gguf_model_f32_bit_exact) {
    for (int mixtral = 2; mixtral >= 0; mixtral--) {
        Model m, r;
        tiny_model(&m, mixtral);
        const char *p = mixtral == 2 ? TMP "/mixtral-top1-f32.gguf" : mixtral ? TMP "/mixtral-f32.gguf" : TMP "/llama-f32.gguf";
        EXPECT(llama_write_gguf(&m, g_tok, p, GGUF_TENSOR_F32) == MOELM_OK);
        Tokenizer *tok = NULL;
        moelm_status st = llama_load_gguf(&r, &tok, NULL, p, 1, 16);
        EXPECT_MSG(st == MOELM_OK, "%s", moelm_last_error());
        if (st) { model_free(&m); continue; }
        const ModelConfig *a = &m.cfg, *b = &r.cfg;
        EXPECT(b->model_type == a->model_type && b->d_model == a->d_model && b->num_layers == a->num_layers);
        EXPECT(b->num_heads == a->num_heads && b->num_key_value_heads == a->num_key_value_heads && b->d_ff == a->d_ff);
        EXPECT(b->num_experts == a->num_experts && (!mixtral || b->num_experts_per_tok == a->num_experts_per_tok));
        EXPECT(b->vocab_size == a->vocab_size && b->n_positions == a->n_positions);
        EXPECT(b->layer_norm_epsilon == a->layer_norm_epsilon && b->rope_theta == a->rope_theta);
        /* every tensor of the view, bit for bit (the head of a tied model: output.weight = the embedding) */
        int n, nr;
        LlamaHfTensor *v = llama_hf_tensors_alloc(&m, &n), *vr = llama_hf_tensors_alloc(&r, &nr);
        int differ = 0, found = 0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < nr; j++)
                if (!strcmp(v[i].name, vr[j].name)) {
                    found++;
                    if (memcmp(m.params + v[i].off, r.params + vr[j].off, sizeof(float) * v[i].count)) {
                        differ++;
                        printf("  %s differs\n", v[i].name);
                    }
                }
        EXPECT(found == n && differ == 0);
        if (!mixtral) EXPECT(b->tie_word_embeddings == 0 && !memcmp(r.p.lm_head, m.p.wte, sizeof(float) * 64 * (size_t)a->vocab_size));
        moelm_free(v);
        moelm_free(vr);
        int ids[16];
        ids_of(ids, 16);
        double scale, d = logits_diff(&m, &r, ids, 16, &scale);
        EXPECT_MSG(d <= 1e-5 * scale && scale > 1.0, "%s: logits differ by %g (largest %g)", p, d, scale);
        /* the tokenizer: the same ids, the same end of text; BOS the end-of-text id (moelm's convention) */
        const char *texts[] = {"the company said", "naïve café — 3½ × 2", " spaced  out "};
        for (int k = 0; k < 3; k++) {
            int *x = NULL, *y = NULL;
            size_t nx = 0, ny = 0;
            EXPECT(tokenizer_encode(g_tok, texts[k], strlen(texts[k]), &x, &nx) == MOELM_OK);
            EXPECT(tokenizer_encode(tok, texts[k], strlen(texts[k]), &y, &ny) == MOELM_OK);
            EXPECT_MSG(nx == ny && nx > 0 && !memcmp(x, y, sizeof(int) * nx), "text %d tokenizes differently", k);
            moelm_free(x);
            moelm_free(y);
        }
        EXPECT(tokenizer_eos_id(tok) == tokenizer_eos_id(g_tok) && b->bos_token_id == tokenizer_eos_id(g_tok));
        EXPECT(tokenizer_byte_fallback(tok) && tokenizer_vocab_size(tok) == tokenizer_vocab_size(g_tok));
        tokenizer_free(tok);
        model_free(&r);
        model_free(&m);
    }
    EXPECT(moelm_alloc_live_bytes() == g_live);
}

/* f16 and bf16: each weight rounded once (relative 2^-11, 2^-8). Measured here: logits move by at most
 * 0.13% (f16) and 1.4% (bf16) of the largest (weights 8x the init's, so errors add up over 2 layers); the
 * bounds are about 4x that. */
TEST(gguf_model_f16_bf16_close) {
    static const struct { GgufTensorType t; double tol; const char *path; } cases[] = {
        {GGUF_TENSOR_F16, 5e-3, TMP "/mixtral-f16.gguf"}, {GGUF_TENSOR_BF16, 5e-2, TMP "/mixtral-bf16.gguf"}};
    Model m;
    tiny_model(&m, 1);
    for (int k = 0; k < 2; k++) {
        Model r;
        EXPECT(llama_write_gguf(&m, g_tok, cases[k].path, cases[k].t) == MOELM_OK);
        moelm_status st = llama_load_gguf(&r, NULL, NULL, cases[k].path, 1, 16);
        EXPECT_MSG(st == MOELM_OK, "%s", moelm_last_error());
        if (st) continue;
        int ids[16];
        ids_of(ids, 16);
        double scale, d = logits_diff(&m, &r, ids, 16, &scale);
        EXPECT_MSG(d <= cases[k].tol * scale && d > 0.0, "%s: logits differ by %g of %g", cases[k].path, d, scale);
        model_free(&r);
    }
    model_free(&m);
    EXPECT(moelm_alloc_live_bytes() == g_live);
}

/* fp16 from its bits, the format's definition in plain arithmetic */
static double fp16_plain(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 31, f = h & 1023;
    double v = e ? ldexp(1.0 + f / 1024.0, e - 15) : ldexp(f / 1024.0, -14);
    return s ? -v : v;
}

TEST(gguf_model_q8_blocks) {
    Model m, rf, rq;
    tiny_model(&m, 1);
    const char *p = TMP "/mixtral-q8.gguf";
    EXPECT(llama_write_gguf(&m, g_tok, p, GGUF_TENSOR_Q8_0) == MOELM_OK);
    Q8Arena q8;
    moelm_status st = llama_load_gguf(&rq, NULL, &q8, p, 1, 1);
    EXPECT_MSG(st == MOELM_OK, "%s", moelm_last_error());
    EXPECT(llama_load_gguf(&rf, NULL, NULL, p, 1, 16) == MOELM_OK);
    if (st || !rf.params) { model_free(&m); return; }
    /* the spans: every matrix but the routers (norms and routers are float) */
    size_t held = 0, matrices = 0;
    for (int i = 0; i < q8.n_span; i++) held += q8.span[2 * i + 1] - q8.span[2 * i];
    for (int i = 0; i < rq.n_tensors; i++)
        if (rq.tensors[i].ndim >= 2 && !strstr(rq.tensors[i].name, "gate.weight")) matrices += rq.tensors[i].size;
    EXPECT_MSG(held == matrices && held > 0, "Q8_0 spans hold %zu floats, the matrices are %zu", held, matrices);
    /* each held value: the plain d * q of the blocks equals the float model's (gguf_read_tensor_f32's
     * dequantisation) exactly, and the blocks are the file's bytes in moelm's row order (f32 load of the
     * same rows from the file equals them too, via rf) */
    size_t bad = 0;
    for (int i = 0; i < q8.n_span; i++)
        for (size_t o = q8.span[2 * i]; o < q8.span[2 * i + 1]; o++) {
            const BlockQ8_0 *b = &q8.blocks[o / 32];
            float plain = (float)(fp16_plain(b->d) * b->qs[o % 32]);
            bad += plain != rf.params[o];
        }
    EXPECT_MSG(bad == 0, "%zu values differ from the plain dequantisation", bad);
    /* dequantised weights within Q8_0's rounding of the originals: |w - d q| <= d / 2 (+ fp16's rounding
     * of d: amax / 127 within 2^-11) */
    size_t far = 0;
    for (int i = 0; i < q8.n_span; i++)
        for (size_t o = q8.span[2 * i]; o < q8.span[2 * i + 1]; o++) {
            double d = fp16_plain(q8.blocks[o / 32].d);
            far += fabs((double)rf.params[o] - m.params[o]) > 0.5 * d + 127.0 * d * 1e-3;
        }
    EXPECT_MSG(far == 0, "%zu dequantised weights are farther than half a step from the originals", far);
    /* generation from the blocks: the steps of the int8 products against those of the float model of
     * the same (dequantised) weights; they differ only by the input's quantisation (about 0.4% of each
     * block's largest input): measured 2.6% of the largest logit over 12 steps, bound 8% */
    KVCache kq, kf;
    EXPECT(kv_create(&kq, &rq) == MOELM_OK && kv_load_weights(&kq, &rq, 0) == MOELM_OK && kv_use_q8(&kq, &rq, &q8) == MOELM_OK);
    EXPECT(kv_create(&kf, &rf) == MOELM_OK && kv_load_weights(&kf, &rf, 0) == MOELM_OK);
    int ids[12];
    ids_of(ids, 12);
    double worst = 0.0, scale = 0.0;
    for (int t = 0; t < 12; t++) {
        model_step_kv(&rq, &kq, ids[t]);
        model_step_kv(&rf, &kf, ids[t]);
        for (int v = 0; v < rq.cfg.vocab_size; v++) {
            worst = fmax(worst, fabs((double)kq.logits[v] - kf.logits[v]));
            scale = fmax(scale, fabs((double)kf.logits[v]));
        }
    }
    EXPECT_MSG(worst <= 0.08 * scale && worst > 0.0 && scale > 1.0, "q8 steps differ by %g (largest logit %g)", worst, scale);
    kv_free(&kq);
    kv_free(&kf);
    q8_arena_free(&q8);
    model_free(&rq);
    model_free(&rf);
    model_free(&m);
    EXPECT(moelm_alloc_live_bytes() == g_live);
}

/* ---- hostile model files ------------------------------------------------------------------------ */

/* A synthetic llama GGUF: keys of the spec, the tokenizer, zero-ish tensors of the shapes the keys give,
 * one thing changed per case. */
typedef struct {
    const char *name, *needle;
    const char *drop;               /* a key left out */
    const char *arch, *tok_model;   /* NULL: "llama" */
    int C, L, H, NH, NKV, E, K, V;  /* 0: the base's (64, 2, 64, 4, 2, 4, 2, 16) */
    int key_C;                      /* llama.embedding_length when > 0 (the tensors keep C) */
    int64_t vocab_key;              /* llama.vocab_size, when > 0 */
    const char *bad_tensor;         /* its first dimension + 32 */
    const char *extra_tensor;
    const char *q4_tensor;          /* its type patched to Q4_0 */
    int bad_piece_type, no_unk, rope_dim;
    int dense;                      /* no experts (ffn_gate, ffn_up, ffn_down) */
    GgufTensorType mtype;           /* the matrices' type (0: F32; norms and routers stay F32) */
    const char *scaling;
    uint32_t ctx;
} Spec;

static void add_t(GgufWriter *w, const Spec *s, const char *name, int nd, int64_t d0, int64_t d1, int64_t d2, const float *buf) {
    int64_t sh[3] = {d0, d1, d2};
    if (s->bad_tensor && !strcmp(s->bad_tensor, name)) sh[0] += 32;
    int matrix = nd >= 2 && !strstr(name, "ffn_gate_inp");
    gguf_writer_add_tensor(w, name, matrix && s->mtype ? s->mtype : GGUF_TENSOR_F32, nd, sh, buf);
}

static void write_spec(const char *path, const Spec *spec) {
    static const Spec base = {.C = 64, .L = 2, .H = 64, .NH = 4, .NKV = 2, .E = 4, .K = 2, .V = 16};
    Spec full = *spec;
    const Spec *s = &full;
#define DEFAULT(f) if (!full.f) full.f = base.f
    DEFAULT(C); DEFAULT(L); DEFAULT(H); DEFAULT(NH); DEFAULT(NKV); DEFAULT(E); DEFAULT(K); DEFAULT(V);
#undef DEFAULT
    if (full.dense) full.E = 0;
    static float buf[1 << 18];
    for (int i = 0; i < (1 << 18); i++) buf[i] = 0.01f * (float)((i * 7) % 13 - 6);
    GgufWriter *w = gguf_writer_new();
    CHECK(w);
    int C = s->C, NH = s->NH, hd = C / (NH ? NH : 1), V = s->V;
#define KEY_U32(k, v) do { if (!s->drop || strcmp(s->drop, k)) gguf_writer_add_u32(w, k, (uint32_t)(v)); } while (0)
#define KEY_F32(k, v) do { if (!s->drop || strcmp(s->drop, k)) gguf_writer_add_f32(w, k, v); } while (0)
#define KEY_STR(k, v) do { if (!s->drop || strcmp(s->drop, k)) gguf_writer_add_string(w, k, v); } while (0)
    KEY_STR("general.architecture", s->arch ? s->arch : "llama");
    KEY_U32("llama.embedding_length", s->key_C ? s->key_C : C);
    KEY_U32("llama.block_count", s->L);
    KEY_U32("llama.feed_forward_length", s->H);
    KEY_U32("llama.attention.head_count", NH);
    KEY_U32("llama.attention.head_count_kv", s->NKV);
    KEY_U32("llama.context_length", s->ctx ? s->ctx : 64);
    KEY_F32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
    KEY_F32("llama.rope.freq_base", 10000.0f);
    if (s->rope_dim) KEY_U32("llama.rope.dimension_count", s->rope_dim);
    if (s->scaling) KEY_STR("llama.rope.scaling.type", s->scaling);
    if (s->E) {
        KEY_U32("llama.expert_count", s->E);
        KEY_U32("llama.expert_used_count", s->K);
    }
    if (s->vocab_key) KEY_U32("llama.vocab_size", s->vocab_key);
    KEY_STR("tokenizer.ggml.model", s->tok_model ? s->tok_model : "llama");
    char names[64][8];
    const char *pieces[64];
    float scores[64];
    int32_t types[64];
    CHECK(V <= 64);
    for (int i = 0; i < V; i++) {
        snprintf(names[i], sizeof names[i], i == 0 ? "<unk>" : i == 1 ? "<s>" : i == 2 ? "</s>" : "p%d", i);
        pieces[i] = names[i];
        scores[i] = -(float)i;
        types[i] = i == 0 ? (s->no_unk ? 1 : 2) : i < 3 ? 3 : 1;
    }
    if (s->bad_piece_type) types[5] = s->bad_piece_type;
    if (!s->drop || strcmp(s->drop, "tokenizer.ggml.tokens")) gguf_writer_add_array_str(w, "tokenizer.ggml.tokens", pieces, (uint64_t)V);
    gguf_writer_add_array(w, "tokenizer.ggml.scores", GGUF_TYPE_F32, scores, (uint64_t)V);
    gguf_writer_add_array(w, "tokenizer.ggml.token_type", GGUF_TYPE_I32, types, (uint64_t)V);
    KEY_U32("tokenizer.ggml.bos_token_id", 1);
    KEY_U32("tokenizer.ggml.eos_token_id", 2);
#undef KEY_U32
#undef KEY_F32
#undef KEY_STR
    add_t(w, s, "token_embd.weight", 2, V, C, 0, buf);
    char nm[64];
    for (int l = 0; l < s->L && l < 4; l++) {
#define T(suffix, nd, a, b, c) do { snprintf(nm, sizeof nm, "blk.%d.%s", l, suffix); add_t(w, s, nm, nd, a, b, c, buf); } while (0)
        T("attn_norm.weight", 1, C, 0, 0);
        T("attn_q.weight", 2, NH * hd, C, 0);
        T("attn_k.weight", 2, s->NKV * hd, C, 0);
        T("attn_v.weight", 2, s->NKV * hd, C, 0);
        T("attn_output.weight", 2, C, NH * hd, 0);
        T("ffn_norm.weight", 1, C, 0, 0);
        if (s->E) {
            T("ffn_gate_inp.weight", 2, s->E, C, 0);
            T("ffn_gate_exps.weight", 3, s->E, s->H, C);
            T("ffn_up_exps.weight", 3, s->E, s->H, C);
            T("ffn_down_exps.weight", 3, s->E, C, s->H);
        } else {
            T("ffn_gate.weight", 2, s->H, C, 0);
            T("ffn_up.weight", 2, s->H, C, 0);
            T("ffn_down.weight", 2, C, s->H, 0);
        }
#undef T
    }
    add_t(w, s, "output_norm.weight", 1, C, 0, 0, buf);
    add_t(w, s, "output.weight", 2, V, C, 0, buf);
    if (s->extra_tensor) add_t(w, s, s->extra_tensor, 1, C, 0, 0, buf);
    CHECK(gguf_writer_write(w, path) == MOELM_OK);
    gguf_writer_free(w);
    if (s->q4_tensor) {   /* the tensor's type field (after its name, n_dims and ne) to Q4_0: fewer bytes, still inside */
        char *data = NULL;
        size_t n = 0;
        CHECK(file_read_all(path, &data, &n) == MOELM_OK);
        size_t L = strlen(s->q4_tensor);
        char *at = NULL;
        for (size_t i = 8; i + L + 4 < n && !at; i++)
            if (!memcmp(data + i, s->q4_tensor, L) && (uint64_t)(unsigned char)data[i - 8] == L) at = data + i + L;
        CHECK(at != NULL);
        uint32_t nd;
        memcpy(&nd, at, 4);
        uint32_t q4 = GGUF_TENSOR_Q4_0;
        memcpy(at + 4 + 8 * nd, &q4, 4);
        CHECK(file_write_atomic(path, data, n) == MOELM_OK);
        moelm_free(data);
    }
}

static const Spec g_cases[] = {
    {"valid", NULL, .drop = NULL},
    {"no-architecture", "general.architecture", .drop = "general.architecture"},
    {"arch-gpt2", "'gpt2'", .arch = "gpt2"},
    {"no-block-count", "no metadata key \"llama.block_count\"", .drop = "llama.block_count"},
    {"no-embedding-length", "llama.embedding_length", .drop = "llama.embedding_length"},
    {"no-rms-epsilon", "layer_norm_rms_epsilon", .drop = "llama.attention.layer_norm_rms_epsilon"},
    {"no-context-length", "llama.context_length", .drop = "llama.context_length"},
    {"no-expert-used-count", "llama.expert_used_count", .drop = "llama.expert_used_count"},
    {"expert-used-over-count", "expert_used_count = 5 is outside \\[1, 4\\]|expert_used_count = 5 is outside [1, 4]", .K = 5},
    {"heads-not-dividing", "head_count 3 does not divide llama.embedding_length 64", .NH = 3},
    {"kv-heads-not-dividing", "head_count_kv 3 does not divide", .NKV = 3},
    {"kv-heads-over-heads", "head_count_kv = 8 is outside", .NKV = 8},
    {"q-shape", "'blk.0.attn_q.weight' is \\[96, 64\\]|'blk.0.attn_q.weight' is [96, 64]", .bad_tensor = "blk.0.attn_q.weight"},
    {"experts-shape", "ffn_up_exps.weight' is", .bad_tensor = "blk.1.ffn_up_exps.weight"},
    {"vocab-vs-embedding", "'token_embd.weight' is \\[48, 64\\]|'token_embd.weight' is [48, 64]", .bad_tensor = "token_embd.weight"},
    {"vocab-key-vs-tokens", "llama.vocab_size 17 differs", .vocab_key = 17},
    {"weight-q4_0", "attn_output.weight' is of type Q4_0", .q4_tensor = "blk.1.attn_output.weight"},
    {"extra-tensor", "'blk.0.attn_q.bias' has no place", .extra_tensor = "blk.0.attn_q.bias"},
    {"absurd-width", "is \\[16, 64\\], the llama.\\* keys make it \\[16, 65536\\]|is [16, 64], the llama.* keys make it [16, 65536]", .key_C = 65536},
    {"absurd-layers", "at most 64 MoE layers", .L = 900},
    {"missing-layers", "no tensor 'blk.4.attn_norm.weight'", .L = 60},
    {"width-beyond-limit", "embedding_length = 1048576 is outside", .key_C = 1 << 20},
    {"rope-dims", "rope.dimension_count", .rope_dim = 8},
    {"rope-scaling", "rope.scaling.type", .scaling = "linear"},
    {"tokenizer-gpt2", "tokenizer.ggml.model is 'gpt2'", .tok_model = "gpt2"},
    {"no-tokens", "tokenizer.ggml.tokens", .drop = "tokenizer.ggml.tokens"},
    {"no-unk-piece", "unk is not defined", .no_unk = 1},
    {"piece-type-9", "unknown type 9", .bad_piece_type = 9},
};

TEST(gguf_model_hostile_catalogue) {
    char path[256];
    for (size_t i = 0; i < sizeof g_cases / sizeof g_cases[0]; i++) {
        const Spec *c = &g_cases[i];
        snprintf(path, sizeof path, TMP "/hostile-%s.gguf", c->name);
        write_spec(path, c);
        Model m;
        Tokenizer *tok = NULL;
        moelm_status st = llama_load_gguf(&m, &tok, NULL, path, 1, 0);
        const char *msg = moelm_last_error();
        if (!c->needle) {
            EXPECT_MSG(st == MOELM_OK, "%s: %s", c->name, msg);
            if (!st) {
                EXPECT(m.cfg.n_positions == 64 && m.cfg.num_experts == 4);
                model_free(&m);
                tokenizer_free(tok);
            }
            continue;
        }
        /* the needle: a plain substring, or ERE|plain (the shell test's pattern first) */
        const char *plain = strchr(c->needle, '|') ? strchr(c->needle, '|') + 1 : c->needle;
        EXPECT_MSG(st != MOELM_OK && !strncmp(msg, path, strlen(path)) && !strchr(msg, '\n') && strstr(msg, plain),
                   "%s: status %d, message \"%s\"", c->name, st, msg);
        EXPECT(tok == NULL);
        if (getenv("SHOW_MESSAGES")) printf("  %-24s %s\n", c->name, msg);
    }
    EXPECT(moelm_alloc_live_bytes() == g_live);
}

/* The context is capped (LLAMA_GGUF_MAX_CONTEXT): a file's 2^31 - 1 positions do not size the cache */
TEST(gguf_model_context_capped) {
    Spec s = {.name = "ctx", .ctx = 0x7fffffffu};
    write_spec(TMP "/ctx.gguf", &s);
    Model m;
    moelm_status st = llama_load_gguf(&m, NULL, NULL, TMP "/ctx.gguf", 1, 0);
    EXPECT_MSG(st == MOELM_OK, "%s", moelm_last_error());
    if (!st) {
        EXPECT(m.cfg.n_positions == LLAMA_GGUF_MAX_CONTEXT && m.T == 256);
        model_free(&m);
    }
}

static int write_hostile(const char *dir) {
    char path[4096];
    for (size_t i = 1; i < sizeof g_cases / sizeof g_cases[0]; i++) {
        snprintf(path, sizeof path, "%s/%s.gguf", dir, g_cases[i].name);
        write_spec(path, &g_cases[i]);
        /* the shell test's pattern: the ERE half of the needle */
        printf("%s\t%.*s\n", g_cases[i].name,
               (int)(strchr(g_cases[i].needle, '|') ? strchr(g_cases[i].needle, '|') - g_cases[i].needle : (long)strlen(g_cases[i].needle)),
               g_cases[i].needle);
    }
    return 0;
}

/* Small valid files for the fuzz target's corpus (tests/fuzz/run_data.sh): mixtral in F32 and Q8_0, dense */
static int write_seeds(const char *dir) {
    static const Spec seeds[] = {
        {.name = "mixtral-f32", .C = 32, .L = 1, .H = 32, .NH = 2, .NKV = 1, .E = 2, .K = 1, .V = 8},
        {.name = "mixtral-q8", .C = 32, .L = 1, .H = 32, .NH = 2, .NKV = 1, .E = 2, .K = 1, .V = 8, .mtype = GGUF_TENSOR_Q8_0},
        {.name = "llama-f16", .C = 32, .L = 1, .H = 32, .NH = 2, .NKV = 2, .V = 8, .dense = 1, .mtype = GGUF_TENSOR_F16},
    };
    char path[4096];
    CHECK(dir_make(dir) == MOELM_OK);
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        snprintf(path, sizeof path, "%s/%s.gguf", dir, seeds[i].name);
        write_spec(path, &seeds[i]);
        Model m;
        Tokenizer *tok = NULL;
        Q8Arena q8;
        CHECK(llama_load_gguf(&m, &tok, &q8, path, 1, 0) == MOELM_OK);   /* a seed the loader accepts */
        q8_arena_free(&q8);
        tokenizer_free(tok);
        model_free(&m);
    }
    return 0;
}

int main(int argc, char **argv) {
    test_one_thread();
    CHECK(dir_make(TMP) == MOELM_OK);
    if (argc == 3 && !strcmp(argv[1], "--write-hostile")) return write_hostile(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "--write-seeds")) return write_seeds(argv[2]);
    CHECK(tokenizer_train_spm_bytes(&g_tok, g_text, strlen(g_text), TOK_BPE, 300) == MOELM_OK);
    g_live = moelm_alloc_live_bytes();
    RUN(gguf_model_f32_bit_exact);
    RUN(gguf_model_f16_bf16_close);
    RUN(gguf_model_q8_blocks);
    RUN(gguf_model_hostile_catalogue);
    RUN(gguf_model_context_capped);
    tokenizer_free(g_tok);
    return test_summary("gguf_model");
}
