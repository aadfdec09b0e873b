/* test_generate.c: KV-cache generation against the full forward, and the sampler.
 *
 * model_step_kv fed tokens 0..t one at a time must give model_forward(training = 0)'s logits row t
 * of the whole sequence (B = 1, T), for every model kind: dense lm (layernorm, gelu, tied), rmsnorm +
 * swiglu untied, a switch lm (dropless), a top-2 lm, and the seed model with hash, random, soft and
 * switch routers. Tolerance 1e-4 absolute: both paths run the same ops in the same order, but the
 * GEMMs see N = 1 instead of N = T rows, so BLAS may block the reductions differently (float
 * reordering only, ~1e-6 relative on logits of size ~1-10); a wrong or missing term is off by O(1).
 * The weights are scaled up 10x from the 0.02 init so that attention, the FFN and routing all move
 * the logits visibly (the test asserts logits differ across positions by > 0.1 and that routing
 * uses several experts; checked: a 1% change of the attention scale or a 0.01 offset on one MoE
 * output fails every affected case). Also: kv_reset reproduces the bits, and so do teams of 2 and 3
 * threads (each splits the products, attention and the head over its threads), one allocation and none per
 * step, a step on a full cache aborts; the same with kv_load_weights' copies (the zero units after a
 * ReLU skipped: gemv_t_nz against its sum bit for bit) and bf16 weights; a step's profile by phase;
 * the sampler's greedy, top-k, top-p and frequency behaviour, and its partial sorts against a full one.
 */
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "test.h"
#include "backend/gemv.h"
#include "backend/runtime.h"
#include "model/model.h"
#include "tiny_models.h"
#include "train/train.h"

static void tiny(ModelConfig *c, int V) {
    tiny_lm(c, V, 0.1f);   /* dropout must be ignored in eval and in generation */
}

static void seed_cfg(ModelConfig *c, RouterType r) {
    tiny_seed(c, r, 0.1f);
    c->eval_capacity_factor = 0.0f;   /* dropless: the full pass must not drop what N = 1 keeps */
}

/* A pass of model_step_kv over inp[0..T) from kv_reset at `threads` threads, each step's logits into
 * out [T, V]. The rng is reseeded before every step so the random router draws the expert the
 * forward drew (it draws one per pass). */
static void kv_pass(Model *m, KVCache *kv, const int *inp, int T, int threads, float *out) {
    int V = m->cfg.vocab_size;
    backend_set_threads(threads);
    kv_reset(kv);
    EXPECT(kv->pos == 0);
    for (int t = 0; t < T; t++) {
        rng_seed(&m->rng, 42);
        model_step_kv(m, kv, inp[t]);
        EXPECT(kv->pos == t + 1);
        memcpy(out + (size_t)t * V, kv->logits, sizeof(float) * V);
    }
    backend_set_threads(1);
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

/* T tokens, stepped and in one forward: max |diff| over all positions and logits; kv_reset and teams
 * of 2 and 3 give the first pass's bits. Then the same with kv_load_weights' float copies and with
 * its bf16 weights (see below). */
static void run_case(const ModelConfig *c, const char *label) {
    enum { T = 8 };
    Model m;
    KVCache kv;
    int V = c->vocab_size, inp[T];
    size_t TV = (size_t)T * V;
    EXPECT_MSG(model_create(&m, c, 1, T, 7) == MOELM_OK, "%s: %s", label, moelm_last_error());
    scale_params(&m, 10.0f, 1);
    for (int i = 0; i < T; i++) inp[i] = (i * 7 + 3 + i / 3) % V;
    rng_seed(&m.rng, 42);
    model_forward(&m, inp, NULL, 0);
    /* routing must vary over the sequence, or a per-token routing bug could hide */
    MoELayer ml[4];
    int nl = model_moe_layers(&m, ml, 4), used = 0;
    const MoEActs *acts[4];
    for (int l = 0; l < nl && l < 4; l++) acts[l] = ml[l].a;
    for (int l = 0; l < nl && l < 4; l++) {
        int hit[256] = {0};
        for (int i = 0; i < T * acts[l]->KS; i++) if (acts[l]->expert[i] >= 0) hit[acts[l]->expert[i]] = 1;
        for (int e = 0; e < m.moe_cfg.E; e++) used += hit[e];
    }
    if (nl && m.moe_cfg.router != ROUTER_RANDOM)
        EXPECT_MSG(used >= 2 * nl, "%s: %d experts used over %d MoE layers", label, used, nl);
    double spread = 0.0;   /* how far later positions' logits are from the first's */
    for (int t = 1; t < T; t++) spread = fmax(spread, max_abs_diff(m.a.logits + (size_t)t * V, m.a.logits, V));
    EXPECT_MSG(spread > 0.1, "%s: logits barely depend on position/context (%.3g): the test is too weak", label, spread);

    EXPECT(kv_create(&kv, &m) == MOELM_OK);
    float *first = malloc(sizeof(float) * TV), *again = malloc(sizeof(float) * TV);
    kv_pass(&m, &kv, inp, T, 1, first);
    double maxdiff = max_abs_diff(first, m.a.logits, TV);
    EXPECT_MSG(maxdiff <= 1e-4, "%s: max |kv - forward| = %.3g", label, maxdiff);
    for (int threads = 1; threads <= 3; threads++) {   /* 1: after kv_reset; 2, 3: teams */
        kv_pass(&m, &kv, inp, T, threads, again);
        EXPECT_MSG(memcmp(first, again, sizeof(float) * TV) == 0, "%s: %d threads from kv_reset: not the first pass's bits",
                   label, threads);
    }

    /* kv_load_weights' float copies: the products after a ReLU read down-major, skipping the zero
     * units (gemv_t_nz). The same tolerance against the forward; the same bits at 1, 2 and 3 threads
     * (2: the experts whole to a thread or in phases, by the router; a vocabulary past one block of
     * 256 split by blocks) and the same bytes skipped; models with a ReLU before a copied product
     * (the seed head, ReLU experts) copy and skip, others copy nothing */
    EXPECT(kv_load_weights(&kv, &m, 0) == MOELM_OK);
    int relu_experts = nl && m.moe_cfg.act == ACT_RELU, want_copies = relu_experts || c->model_type == MODEL_SEED;
    EXPECT_MSG((kv.n_down > 0) == want_copies, "%s: %d down-major copies", label, kv.n_down);
    float *dm = malloc(sizeof(float) * TV);
    kv_pass(&m, &kv, inp, T, 1, dm);
    double skipped1 = kv_skipped_bytes(&kv), copied = 0.0, dmdiff = max_abs_diff(dm, m.a.logits, TV);
    EXPECT_MSG(dmdiff <= 1e-4, "%s: max |kv (copies) - forward| = %.3g", label, dmdiff);
    for (int threads = 2; threads <= 3; threads++) {
        kv_pass(&m, &kv, inp, T, threads, again);
        EXPECT_MSG(memcmp(dm, again, sizeof(float) * TV) == 0, "%s: copies: %d threads differ", label, threads);
        EXPECT_MSG(kv_skipped_bytes(&kv) == skipped1, "%s: %d threads skipped %.0f bytes, 1 thread %.0f", label, threads,
                   kv_skipped_bytes(&kv), skipped1);
    }
    for (int i = 0; i < kv.n_down; i++) copied += 4.0 * kv.down[i].n * kv.down[i].rows * kv.down[i].cols;
    int differs = memcmp(first, dm, sizeof(float) * TV) != 0;
    EXPECT_MSG(want_copies ? skipped1 > 0.0 && skipped1 < T * copied && differs : skipped1 == 0.0 && !differs,
               "%s: %.0f bytes skipped of %.0f copied over %d steps; logits %s the plain path's", label, skipped1, copied, T,
               differs ? "differ from" : "equal");
    free(dm);

    /* bf16 weights: near the float logits (weights rounded to 8 significant bits: ~0.3% each, so
     * ~1% of the logits' scale at most), not equal (or the copy is not read), the same bits at 1 and
     * 2 threads; read whole (both thresholds past 1) and, where there are copies, down-major skipping
     * every zero unit (both 0: bytes skipped, other bits). First the run's length picks the threshold:
     * with short runs never skipped and long ones at the default (20%; about half the units are zero),
     * only a seed head of KV_DOWN_BLOCK outputs or more (runs of 2 KiB in bf16) skips. */
    EXPECT(kv_load_weights(&kv, &m, 1) == MOELM_OK);
    EXPECT(kv.skip_min == KV_SKIP_MIN_BF16 && kv.skip_min_long == KV_SKIP_MIN_LONG && (kv.n_down > 0) == want_copies);
    int long_runs = c->model_type == MODEL_SEED && V >= KV_DOWN_BLOCK;
    kv.skip_min = 2.0f;
    kv_pass(&m, &kv, inp, T, 1, again);
    EXPECT_MSG((kv_skipped_bytes(&kv) > 0.0) == long_runs, "%s: bf16, short runs whole: %.0f bytes skipped", label,
               kv_skipped_bytes(&kv));
    float *bf = malloc(sizeof(float) * 2 * TV);
    double scale = 0.0;
    for (size_t i = 0; i < TV; i++) scale = fmax(scale, fabs(first[i]));
    for (int mode = 0; mode < 2; mode++) {
        const char *how = mode ? "skipping" : "whole";
        float *b16 = bf + (size_t)mode * TV;
        kv.skip_min = kv.skip_min_long = mode == 0 ? 2.0f : 0.0f;
        kv_pass(&m, &kv, inp, T, 1, b16);
        if (mode == 0) EXPECT(kv_skipped_bytes(&kv) == 0.0);
        else EXPECT_MSG((kv_skipped_bytes(&kv) > 0.0) == want_copies, "%s: bf16 skipped %.0f bytes", label, kv_skipped_bytes(&kv));
        kv_pass(&m, &kv, inp, T, 2, again);
        EXPECT_MSG(memcmp(b16, again, sizeof(float) * TV) == 0, "%s: bf16 (%s): 2 threads differ", label, how);
        double d16 = max_abs_diff(b16, first, TV);
        EXPECT_MSG(d16 > 0.0 && d16 <= 0.02 * scale, "%s: bf16 (%s) logits off the float ones by %.3g (scale %.3g)", label, how,
                   d16, scale);
    }
    int same16 = memcmp(bf, bf + TV, sizeof(float) * TV) == 0;
    EXPECT_MSG(same16 == !want_copies, "%s: bf16 skipping %s reading whole", label, same16 ? "equals" : "differs from");
    free(bf);
    free(again);
    free(first);
    kv_free(&kv);
    model_free(&m);
}

/* bfloat16 rounding: to nearest, ties to even, Inf and NaN kept; widening is exact */
TEST(bf16_rounding) {
    EXPECT(bf16_round(1.0f) == 0x3f80);
    EXPECT(bf16_round(1.0f + 0x1p-8f) == 0x3f80);          /* tie: down to the even 0x3f80 */
    EXPECT(bf16_round(1.0f + 3 * 0x1p-8f) == 0x3f82);      /* tie: up to the even 0x3f82 */
    EXPECT(bf16_round(1.0f + 0x1p-8f + 0x1p-20f) == 0x3f81);   /* above the tie: up */
    EXPECT(bf16_round(-2.5f) == 0xc020);
    EXPECT(bf16_round(INFINITY) == 0x7f80 && bf16_round(-INFINITY) == 0xff80);
    EXPECT(bf16_round(3.4e38f) == 0x7f80);                 /* past bf16's largest finite: Inf */
    EXPECT(isnan(bf16_to_f32(bf16_round(NAN))));
    for (int i = -1000; i <= 1000; i++) {   /* round trip of every bf16 value in a range is exact */
        float f = bf16_to_f32((uint16_t)(0x3f80 + i));
        EXPECT(bf16_to_f32(bf16_round(f)) == f);
    }
}

/* gemv_one, float and bf16 weights, against a double-precision product of the weights it holds, with
 * and without bias, with K past each step of the kernel (16-float steps and a tail; 64-float steps,
 * 16-float steps and a tail; a tail alone); the product split into row ranges (as a team splits it)
 * has the bits of the whole. */
TEST(gemv_matches_reference) {
    enum { N = 13, KMAX = 217 };
    static const int Ks[] = {37, 217, 9};
    static float w[N * KMAX], x[KMAX], b[N], y[N], y1[N];
    static uint16_t w16[N * KMAX];
    for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++) {
        int K = Ks[ki];
        for (int i = 0; i < N * K; i++) w[i] = sinf(0.37f * i) * 1.7f;
        for (int k = 0; k < K; k++) x[k] = cosf(0.11f * k) - 0.3f;
        for (int n = 0; n < N; n++) b[n] = 0.1f * n - 0.5f;
        bf16_from_f32(w16, w, N * K);
        for (int half = 0; half < 2; half++)
            for (int withb = 0; withb < 2; withb++) {
                const float *bias = withb ? b : NULL;
                static const int cut[] = {0, 5, 6, 13};   /* row ranges [0,5) [5,6) [6,13) */
                if (half) gemv_one_bf16(y, x, w16, bias, N, K);
                else gemv_one(y, x, w, bias, N, K);
                for (int r = 0; r < 3; r++) {
                    int lo = cut[r], n = cut[r + 1] - lo;
                    const float *bb = bias ? bias + lo : NULL;
                    if (half) gemv_one_bf16(y1 + lo, x, w16 + (size_t)lo * K, bb, n, K);
                    else gemv_one(y1 + lo, x, w + (size_t)lo * K, bb, n, K);
                }
                EXPECT_MSG(memcmp(y, y1, sizeof y) == 0, "K=%d bf16=%d bias=%d: split rows differ", K, half, withb);
                for (int n = 0; n < N; n++) {
                    double ref = withb ? b[n] : 0.0;
                    for (int k = 0; k < K; k++) ref += (double)(half ? bf16_to_f32(w16[n * K + k]) : w[n * K + k]) * x[k];
                    EXPECT_MSG(fabs(y[n] - ref) <= 1e-5 * (1 + fabs(ref)), "K=%d bf16=%d row %d: %g vs %g", K, half, n,
                               y[n], ref);
                }
            }
    }
}

/* nz_index and gemv_t_nz against their documented sum, bit for bit (the bias, then one fmaf a nonzero
 * x[k], k ascending), and against double precision; gemv_t_nz_bf16 against the same sum over its
 * widened weights; widths past each step of the kernel (a masked vector, the 16 registers of 256
 * floats, a second group of registers) within a wider row stride, K to 300; the columns split in two
 * have the bits of the whole; a zero x[k]'s row is skipped even where it holds Inf and NaN, a NaN x[k]
 * reaches y; nz_index lists the nonzero x[k] in order. */
TEST(gemv_t_nz_matches_reference) {
    enum { KMAX = 300, NMAX = 300, LD = 311 };
    static const int Ks[] = {37, 300, 1}, Ns[] = {13, 256, 300, 1};
    static float w[KMAX * LD], x[KMAX], b[LD], y[NMAX], y1[NMAX];
    static uint16_t w16[KMAX * LD];
    static int idx[KMAX];
    for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++)
        for (size_t ni = 0; ni < sizeof Ns / sizeof Ns[0]; ni++)
            for (int withb = 0; withb < 2; withb++) {
                int K = Ks[ki], n = Ns[ni], nz = 0;
                const float *bias = withb ? b : NULL;
                for (int i = 0; i < K * LD; i++) w[i] = sinf(0.37f * i) * 1.7f;
                for (int i = 0; i < LD; i++) b[i] = 0.1f * (i % 13) - 0.5f;
                for (int k = 0; k < K; k++) {
                    x[k] = (k * 7) % 5 < 2 ? 0.0f : cosf(0.11f * k) + 1.3f;   /* 2 in 5 zero, as a ReLU leaves */
                    nz += x[k] != 0.0f;
                    if (x[k] == 0.0f) for (int i = 0; i < LD; i++) w[(size_t)k * LD + i] = i % 2 ? INFINITY : NAN;
                }
                int cnt = nz_index(x, K, idx);
                EXPECT_MSG(cnt == nz, "K=%d n=%d: %d nonzero, said %d", K, n, nz, cnt);
                for (int j = 0; j < cnt; j++) EXPECT(x[idx[j]] != 0.0f && (j == 0 || idx[j] > idx[j - 1]));
                gemv_t_nz(y, x, idx, cnt, w, LD, bias, n);
                int cut = n / 3;   /* columns [0, cut) and [cut, n) */
                gemv_t_nz(y1, x, idx, cnt, w, LD, bias, cut);
                gemv_t_nz(y1 + cut, x, idx, cnt, w + cut, LD, bias ? bias + cut : NULL, n - cut);
                EXPECT_MSG(memcmp(y, y1, sizeof(float) * n) == 0, "K=%d n=%d bias=%d: split columns differ", K, n, withb);
                for (int i = 0; i < n; i++) {
                    float chain = withb ? b[i] : 0.0f;
                    double ref = withb ? b[i] : 0.0, mag = fabs(ref);
                    for (int k = 0; k < K; k++)
                        if (x[k] != 0.0f) {
                            chain = fmaf(x[k], w[(size_t)k * LD + i], chain);
                            ref += (double)x[k] * w[(size_t)k * LD + i];
                            mag += fabs((double)x[k] * w[(size_t)k * LD + i]);
                        }
                    EXPECT_MSG(memcmp(&chain, &y[i], sizeof chain) == 0, "K=%d n=%d col %d: %.9g, the fmaf chain %.9g", K, n, i,
                               y[i], chain);
                    EXPECT_MSG(fabs(y[i] - ref) <= (K + 1) * 6e-8 * (1 + mag), "K=%d n=%d col %d: %g vs %g", K, n, i, y[i], ref);
                }
                /* bf16 weights: the same chain over the widened weights */
                bf16_from_f32(w16, w, (size_t)K * LD);
                gemv_t_nz_bf16(y, x, idx, cnt, w16, LD, bias, n);
                gemv_t_nz_bf16(y1, x, idx, cnt, w16, LD, bias, cut);
                gemv_t_nz_bf16(y1 + cut, x, idx, cnt, w16 + cut, LD, bias ? bias + cut : NULL, n - cut);
                EXPECT_MSG(memcmp(y, y1, sizeof(float) * n) == 0, "bf16 K=%d n=%d bias=%d: split columns differ", K, n, withb);
                for (int i = 0; i < n; i++) {
                    float chain = withb ? b[i] : 0.0f;
                    for (int k = 0; k < K; k++)
                        if (x[k] != 0.0f) chain = fmaf(x[k], bf16_to_f32(w16[(size_t)k * LD + i]), chain);
                    EXPECT_MSG(memcmp(&chain, &y[i], sizeof chain) == 0, "bf16 K=%d n=%d col %d: %.9g, the fmaf chain %.9g", K, n,
                               i, y[i], chain);
                }
            }
    /* a NaN activation is not skipped */
    for (int k = 0; k < 4; k++) x[k] = k == 2 ? NAN : 0.0f;
    for (int i = 0; i < 4 * 16; i++) w[i] = 1.0f;
    int cnt = nz_index(x, 4, idx);
    gemv_t_nz(y, x, idx, cnt, w, 16, NULL, 16);
    EXPECT(cnt == 1 && idx[0] == 2 && isnan(y[0]) && isnan(y[15]));
}

TEST(kv_dense_lm) {
    ModelConfig c;
    tiny(&c, 13);
    c.num_experts = 0;
    run_case(&c, "dense layernorm gelu tied");
}

TEST(kv_dense_rms_swiglu_untied) {
    ModelConfig c;
    tiny(&c, 13);
    c.num_experts = 0;
    c.norm_type = NORM_RMS;
    c.hidden_act = ACT_SWIGLU;
    c.tie_word_embeddings = 0;
    run_case(&c, "dense rmsnorm swiglu untied");
}

TEST(kv_dense_wide_heads) {
    /* head width 32: attention_step's vector path (the tiny models' width 4 takes its loops) */
    ModelConfig c;
    tiny(&c, 13);
    c.num_experts = 0;
    c.d_model = 64;
    c.d_ff = 48;
    run_case(&c, "dense, heads of 32");
}

/* 4 experts in every block, dropless: N = 1 never drops, so neither may the full pass */
static void switch_dropless(ModelConfig *c) {
    tiny(c, 13);
    c->num_experts = 4;
    c->sparse_step = 1;
    c->eval_capacity_factor = 0.0f;
}

TEST(kv_switch_lm) {
    ModelConfig c;
    switch_dropless(&c);
    run_case(&c, "switch lm");
}

/* the adaptive softmax: both paths give every word's log p (the step normalises after its team) */
TEST(kv_adaptive_lm) {
    ModelConfig c;
    switch_dropless(&c);
    EXPECT(config_set(&c, "adaptive_softmax_cutoffs", "5,9") == MOELM_OK);
    run_case(&c, "adaptive softmax lm");
}

/* rotary positions: the step rotates q and k at position t (llama_attention, with the lm's qkv bias) */
TEST(kv_rope_lm) {
    ModelConfig c;
    switch_dropless(&c);
    EXPECT(config_set(&c, "position_embedding", "rope") == MOELM_OK && config_set(&c, "rope_theta", "50") == MOELM_OK);
    run_case(&c, "rope lm");
    tiny(&c, 13);
    c.num_experts = 0;
    c.d_model = 64;
    c.d_ff = 48;
    EXPECT(config_set(&c, "position_embedding", "rope") == MOELM_OK);
    run_case(&c, "rope lm, heads of 32");
}

TEST(kv_topk_lm) {
    ModelConfig c;
    tiny(&c, 13);
    c.num_experts = 4;
    c.sparse_step = 2;
    c.num_layers = 2;
    c.router_type = ROUTER_TOPK;
    c.num_experts_per_tok = 2;
    c.eval_capacity_factor = 0.0f;
    c.shared_expert = 1;
    c.hidden_act = ACT_RELU;   /* the experts' and the shared expert's second products copied down-major */
    run_case(&c, "top-2 relu lm with shared expert");
}

TEST(kv_llama_family) {
    /* RoPE at each step's position, grouped-query attention over the cache (4 query heads on 2), no
     * biases; mixtral's top-2 experts; llama dense, multi-query */
    ModelConfig c;
    tiny_llama(&c, 1, 13);
    c.dropout_rate = 0.1f;
    run_case(&c, "mixtral top-2 gqa");
    tiny_llama(&c, 0, 13);
    c.num_key_value_heads = 1;
    c.tie_word_embeddings = 1;
    run_case(&c, "llama mqa tied");
    tiny_llama(&c, 0, 13);
    c.d_model = 64;   /* head width 16: attn_step's vector path */
    c.num_key_value_heads = 4;
    run_case(&c, "llama heads of 16");
}

TEST(kv_seed_models) {
    RouterType r[4] = {ROUTER_HASH, ROUTER_RANDOM, ROUTER_SOFT, ROUTER_SWITCH};
    for (int i = 0; i < 4; i++) {
        ModelConfig c;
        seed_cfg(&c, r[i]);
        run_case(&c, router_name(r[i]));
    }
    ModelConfig c;
    seed_cfg(&c, ROUTER_SOFT);
    c.vocab_size = 1100;   /* the head's copy in two blocks (1024 + 76): split over a team by blocks */
    run_case(&c, "seed soft, vocabulary 1100");
    seed_cfg(&c, ROUTER_SWITCH);
    c.hidden_act = ACT_GELU;
    c.norm_type = NORM_RMS;
    run_case(&c, "seed switch, gelu, rmsnorm");
}

/* The profile of a step (kv->profile, `moelm bench --profile`): with it on, the same logits bits at 2
 * threads; each phase that reads weights (kv_phase_bytes > 0) timed, the others not, the times' sum
 * within the pass's wall time (a second pass: kv_reset clears them); the phases' bytes add up to
 * kv_step_bytes and their skipped bytes to kv_skipped_bytes, skipped only in the phases whose products
 * kv_load_weights copied. Off: no time. On a seed model (every phase), a pre-norm lm with a dense and
 * a sparse block, a dense one. */
TEST(kv_profile) {
    enum { T = 6 };
    ModelConfig cs[3];
    seed_cfg(&cs[0], ROUTER_SOFT);
    tiny(&cs[1], 13);
    cs[1].num_experts = 4;
    cs[1].sparse_step = 2;
    cs[1].eval_capacity_factor = 0.0f;
    tiny(&cs[2], 13);
    cs[2].num_experts = 0;
    for (int k = 0; k < 3; k++) {
        Model m;
        KVCache kv;
        int V = cs[k].vocab_size, inp[T];
        for (int i = 0; i < T; i++) inp[i] = (i * 5 + 1) % V;
        EXPECT(model_create(&m, &cs[k], 1, T, 7) == MOELM_OK);
        scale_params(&m, 10.0f, 1);
        EXPECT(kv_create(&kv, &m) == MOELM_OK && kv_load_weights(&kv, &m, 0) == MOELM_OK);
        float *off = malloc(sizeof(float) * T * V), *on = malloc(sizeof(float) * T * V);
        kv_pass(&m, &kv, inp, T, 2, off);
        for (int p = 0; p < KV_PHASES; p++) EXPECT(kv.phase_s[p] == 0.0);
        kv.profile = 1;
        double wall = 0.0, sum = 0.0, bytes[KV_PHASES], skipped[KV_PHASES], skipped_sum = 0.0;
        for (int pass = 0; pass < 2; pass++) {   /* the second from kv_reset: its times only */
            double t0 = time_now();
            kv_pass(&m, &kv, inp, T, 2, on);
            wall = time_now() - t0;
        }
        EXPECT_MSG(memcmp(off, on, sizeof(float) * T * V) == 0, "config %d: profiling changed the logits", k);
        EXPECT(kv_phase_bytes(&m, 0, bytes) == kv_step_bytes(&m, 0));
        kv_phase_skipped(&kv, skipped);
        int copied[KV_PHASES] = {0};
        for (int i = 0; i < kv.n_down; i++) copied[kv.down[i].phase] = 1;
        for (int p = 0; p < KV_PHASES; p++) {
            EXPECT_MSG((kv.phase_s[p] > 0.0) == (bytes[p] > 0.0), "config %d: %s %.3g s for %.0f bytes", k,
                       kv_phase_names[p], kv.phase_s[p], bytes[p]);
            EXPECT_MSG((skipped[p] > 0.0) == copied[p], "config %d: %s skipped %.0f bytes", k, kv_phase_names[p],
                       skipped[p]);
            sum += kv.phase_s[p];
            skipped_sum += skipped[p];
        }
        EXPECT(sum > 0.0 && sum <= wall);
        EXPECT(skipped_sum == kv_skipped_bytes(&kv));
        if (k == 0) EXPECT(copied[KV_PHASE_MOE] && copied[KV_PHASE_HEAD]);
        if (k == 2) EXPECT(bytes[KV_PHASE_MOE] == 0.0);
        free(off);
        free(on);
        kv_free(&kv);
        model_free(&m);
    }
}

/* One allocation, nothing allocated by a step, all of it returned by kv_free; a step on a full cache
 * aborts. kv_load_weights: its copies freed by a second call and by kv_free, nothing allocated by a
 * step that reads them, and an allocation that fails (float: the table, the copies; bf16: the arena's
 * copy first) returns NOMEM holding nothing. */
TEST(kv_memory) {
    ModelConfig c;
    seed_cfg(&c, ROUTER_SOFT);
    Model m;
    KVCache kv;
    EXPECT(model_create(&m, &c, 1, 4, 1) == MOELM_OK);
    size_t before = moelm_alloc_live_bytes();
    EXPECT(kv_create(&kv, &m) == MOELM_OK);
    size_t with = moelm_alloc_live_bytes();
    EXPECT(with > before);
    for (int t = 0; t < c.n_positions; t++) model_step_kv(&m, &kv, t % c.vocab_size);
    EXPECT(moelm_alloc_live_bytes() == with);
    EXPECT(kv.pos == c.n_positions);
    /* a full cache is a broken caller contract: the CHECK aborts (in a child process; the alarm
     * ends a child that got past the CHECK and stalled in the OpenMP pool it inherited) */
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);   /* keep the expected CHECK message out of the log */
        if (null >= 0) dup2(null, 2);
        alarm(10);
        model_step_kv(&m, &kv, 0);
        _exit(0);
    }
    int status = 0;
    EXPECT(pid > 0 && waitpid(pid, &status, 0) == pid);
    EXPECT_MSG(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "a step past n_positions did not abort");

    EXPECT(kv_load_weights(&kv, &m, 0) == MOELM_OK && kv.n_down == 2);   /* the head's experts and W2 */
    size_t loaded = moelm_alloc_live_bytes();
    EXPECT(loaded > with);
    EXPECT(kv_load_weights(&kv, &m, 0) == MOELM_OK && moelm_alloc_live_bytes() == loaded);
    kv_reset(&kv);
    for (int t = 0; t < 4; t++) model_step_kv(&m, &kv, t);
    EXPECT(moelm_alloc_live_bytes() == loaded);
    for (int bf16 = 0; bf16 < 2; bf16++)
        for (int fail = 1; fail <= 2 + bf16; fail++) {
            moelm_alloc_fail_after(fail);
            EXPECT_MSG(kv_load_weights(&kv, &m, bf16) == MOELM_ERR_NOMEM, "bf16 %d: allocation %d failed", bf16, fail);
            moelm_alloc_fail_after(0);
            EXPECT(moelm_alloc_live_bytes() == with && kv.n_down == 0 && !kv.down && !kv.down_w && !kv.w16);
        }
    EXPECT(kv_load_weights(&kv, &m, 1) == MOELM_OK && kv.w16 && kv.n_down == 2);
    kv_free(&kv);
    EXPECT(moelm_alloc_live_bytes() == before);
    moelm_alloc_fail_after(1);
    EXPECT(kv_create(&kv, &m) == MOELM_ERR_NOMEM);
    moelm_alloc_fail_after(0);
    EXPECT(kv.mem == NULL);
    model_free(&m);
}

/* kv_step_bytes against the model's tensor table: every tensor read whole by a step, except the
 * embeddings (a row each, and all of wte again as a tied head) and the experts' tensors (the share of
 * them one token reaches: 1, K, or all for soft gating); in bf16 the matrices (".weight" tensors of
 * two or more dims, not the router) count 2 bytes a value. Checked: counting the router in bf16, or
 * SwiGLU's fc1 at H rows, fails. */
static double table_bytes(const Model *m, int bf16) {
    const MoEConfig *mc = &m->moe_cfg;
    int C = m->cfg.d_model, E = mc->E, slots = moe_slots_per_token(mc), reached = slots < E ? slots : E;
    int tied_head = (m->cfg.model_type == MODEL_LM || config_is_llama(&m->cfg)) && m->cfg.tie_word_embeddings;
    double bytes = 0.0;
    for (int i = 0; i < m->n_tensors; i++) {
        const TensorInfo *t = &m->tensors[i];
        int router = strstr(t->name, "router") || strstr(t->name, "block_sparse_moe.gate.");
        int matrix = t->ndim >= 2 && strstr(t->name, ".weight") && !router;
        double n = (double)t->size, w = bf16 && matrix ? 2.0 : 4.0;
        if (!strcmp(t->name, "tok_emb.weight") || !strcmp(t->name, "model.embed_tokens.weight"))
            bytes += 4.0 * C + (tied_head ? w * n : 0.0);
        else if (!strcmp(t->name, "pos_emb.weight")) bytes += 4.0 * C;
        else bytes += w * (strstr(t->name, ".experts.") ? n / E * reached : n);
    }
    return bytes;
}

TEST(kv_step_bytes_match_the_tensors) {
    ModelConfig c[9];
    const char *label[9] = {"dense tied", "rms swiglu untied", "top-2 + shared", "seed soft", "seed switch swiglu",
                            "seed hash", "mixtral", "llama tied", "mixtral tied"};
    tiny_llama(&c[6], 1, 13);
    tiny_llama(&c[7], 0, 13);
    c[7].tie_word_embeddings = 1;
    tiny_llama(&c[8], 1, 13);
    c[8].tie_word_embeddings = 1;
    tiny(&c[0], 13);
    c[0].num_experts = 0;
    tiny(&c[1], 13);
    c[1].num_experts = 0;
    c[1].norm_type = NORM_RMS;
    c[1].hidden_act = ACT_SWIGLU;
    c[1].tie_word_embeddings = 0;
    tiny(&c[2], 13);
    c[2].num_experts = 4;
    c[2].sparse_step = 1;
    c[2].router_type = ROUTER_TOPK;
    c[2].num_experts_per_tok = 2;
    c[2].shared_expert = 1;
    seed_cfg(&c[3], ROUTER_SOFT);
    seed_cfg(&c[4], ROUTER_SWITCH);
    c[4].hidden_act = ACT_SWIGLU;
    seed_cfg(&c[5], ROUTER_HASH);
    for (int i = 0; i < 9; i++) {
        Model m;
        EXPECT_MSG(model_create(&m, &c[i], 1, 4, 1) == MOELM_OK, "%s: %s", label[i], moelm_last_error());
        for (int bf16 = 0; bf16 < 2; bf16++)
            EXPECT_MSG(kv_step_bytes(&m, bf16) == table_bytes(&m, bf16), "%s, bf16 %d: %.0f bytes, the tensors say %.0f",
                       label[i], bf16, kv_step_bytes(&m, bf16), table_bytes(&m, bf16));
        model_free(&m);
    }
}

/* ---- sampling ---------------------------------------------------------------------------------- */

TEST(sample_greedy) {
    float logits[6] = {0.1f, 2.0f, -1.0f, 3.5f, 3.0f, 0.0f}, scratch[12];
    Rng r;
    rng_seed(&r, 1);
    for (int i = 0; i < 100; i++) {
        EXPECT(sample_token(logits, 6, 0.0f, 0, 1.0f, &r, scratch) == 3);
        EXPECT(sample_token(logits, 6, -1.0f, 0, 0.9f, &r, scratch) == 3);
        EXPECT(sample_token(logits, 6, 1.0f, 1, 1.0f, &r, scratch) == 3);
        EXPECT(sample_token(logits, 6, 5.0f, 1, 0.5f, &r, scratch) == 3);
    }
    /* the greedy pick is the plain scan's (`if (x[v] > x[best]) best = v`) on a long row: ties, NaN,
     * -inf, a maximum in each position class of the vectorised pass */
    enum { V = 1003 };
    static float x[V];
    for (int trial = 0; trial < 40; trial++) {
        for (int v = 0; v < V; v++) x[v] = (float)((v * 7919 + trial * 104729) % 211) - 100.0f;
        if (trial % 4 == 1) x[(trial * 37) % V] = NAN;
        if (trial % 4 == 2) x[0] = NAN;
        if (trial % 4 == 3) for (int v = 0; v < V; v++) x[v] = -INFINITY;
        if (trial >= 20) x[(trial * 131) % V] = 500.0f;
        int best = 0;
        for (int v = 1; v < V; v++) if (x[v] > x[best]) best = v;
        int got = sample_token(x, V, 0.0f, 0, 1.0f, &r, NULL);
        EXPECT_MSG(got == best, "trial %d: greedy %d, plain scan %d", trial, got, best);
    }
}

TEST(sample_top_k) {
    enum { V = 20 };
    float logits[V], scratch[2 * V];
    for (int v = 0; v < V; v++) logits[v] = (float)((v * 7) % V) * 0.1f;   /* a permutation: top 3 are v with 7v%20 in 17..19 */
    int top[3], n = 0, seen[V] = {0};
    for (int v = 0; v < V; v++) if ((v * 7) % V >= V - 3) top[n++] = v;
    EXPECT(n == 3);
    Rng r;
    rng_seed(&r, 2);
    for (int i = 0; i < 1000; i++) {
        int s = sample_token(logits, V, 2.0f, 3, 1.0f, &r, scratch);
        EXPECT(s >= 0 && s < V);
        if (s >= 0 && s < V) seen[s]++;
    }
    int outside = 1000 - seen[top[0]] - seen[top[1]] - seen[top[2]];
    EXPECT_MSG(outside == 0, "%d draws outside the top 3", outside);
    for (int i = 0; i < 3; i++) EXPECT(seen[top[i]] > 100);   /* all three are reachable (~1/3 each) */
}

/* top-k by a heap, and top-p sorting only as far as the nucleus reaches, against a sort of the whole
 * vocabulary: the same draws from the same rng, over a vocabulary of 1000 with many tied logits (ties
 * go to the lower index) and weights that underflow to 0, for k from 1 to past V and none, without
 * top-p and with nuclei from 1-2 words to nearly all */
static int ref_pair_cmp(const void *a, const void *b) {
    const float *x = a, *y = b;
    if (x[0] != y[0]) return x[0] > y[0] ? -1 : 1;
    return x[1] < y[1] ? -1 : x[1] > y[1];
}

static int ref_sample(const float *logits, int V, float temp, int top_k, float top_p, Rng *rng, float *pairs) {
    float mx = logits[0];
    for (int v = 1; v < V; v++) if (logits[v] > mx) mx = logits[v];
    for (int v = 0; v < V; v++) {
        pairs[2 * v] = expf((logits[v] - mx) / temp);
        pairs[2 * v + 1] = (float)v;
    }
    int n = top_k > 0 && top_k < V ? top_k : V;
    double tot = 0.0, cum = 0.0;
    if (n == V) for (int i = 0; i < n; i++) tot += pairs[2 * i];   /* top-p's mass over all, in index order */
    if (n < V || top_p < 1.0f) qsort(pairs, (size_t)V, 2 * sizeof(float), ref_pair_cmp);   /* else drawn in index order */
    if (n < V) for (int i = 0; i < n; i++) tot += pairs[2 * i];    /* over the top k, sorted */
    if (top_p < 1.0f) {
        for (int i = 0; i < n; i++) {
            cum += pairs[2 * i];
            if (cum >= (double)top_p * tot) { n = i + 1; break; }
        }
    }
    tot = 0.0;
    cum = 0.0;
    for (int i = 0; i < n; i++) tot += pairs[2 * i];
    double u = (double)rng_uniform(rng) * tot;
    for (int i = 0; i < n; i++) {
        cum += pairs[2 * i];
        if (u < cum) return (int)pairs[2 * i + 1];
    }
    for (int i = n - 1; i > 0; i--) if (pairs[2 * i] > 0.0f) return (int)pairs[2 * i + 1];
    return (int)pairs[1];
}

TEST(sample_top_k_matches_full_sort) {
    enum { V = 1000 };
    static float logits[V], scratch[2 * V], pairs[2 * V];
    static const int ks[] = {1, 2, 3, 40, 999, 1000, 1200, 0};
    for (int v = 0; v < V; v++) logits[v] = (float)((v * 7919) % 23) * 0.5f - (v % 97 == 0 ? 300.0f : 0.0f);
    int mismatches = 0, draws = 0;
    for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++)
        for (int pi = 0; pi < 4; pi++) {
            static const float ps[] = {1.0f, 0.9f, 0.999f, 0.05f};   /* nuclei of ~ a few hundred, ~all, 1-2 */
            float top_p = ps[pi];
            Rng a, b;
            rng_seed(&a, 11 + (uint64_t)ki);
            b = a;
            for (int i = 0; i < 200; i++, draws++) {
                int got = sample_token(logits, V, 0.8f, ks[ki], top_p, &a, scratch);
                int want = ks[ki] == 1 ? sample_token(logits, V, 0.0f, 0, 1.0f, NULL, NULL)
                                       : ref_sample(logits, V, 0.8f, ks[ki], top_p, &b, pairs);
                mismatches += got != want;
            }
        }
    EXPECT_MSG(mismatches == 0, "%d of %d draws differ from the full sort's", mismatches, draws);
}

TEST(sample_top_p) {
    /* p = (0.6, 0.2, 0.1, 0.1): the top token alone has mass >= 0.5 */
    float logits[4] = {logf(0.1f), logf(0.6f), logf(0.2f), logf(0.1f)}, scratch[8];
    Rng r;
    rng_seed(&r, 3);
    for (int i = 0; i < 1000; i++) EXPECT(sample_token(logits, 4, 1.0f, 0, 0.5f, &r, scratch) == 1);
    /* top_p = 0.7 keeps the top two (0.6 < 0.7 <= 0.8), in proportion 3:1 */
    int seen[4] = {0};
    for (int i = 0; i < 4000; i++) seen[sample_token(logits, 4, 1.0f, 0, 0.7f, &r, scratch)]++;
    EXPECT(seen[0] == 0 && seen[3] == 0);
    EXPECT_NEAR(seen[1] / 4000.0, 0.75, 3 * sqrt(0.75 * 0.25 / 4000));
}

TEST(sample_frequencies) {
    /* temp = 1, no filtering: empirical frequencies match softmax(logits) within 3 standard errors
     * (fixed seed, so the outcome is deterministic; at 3 SE a correct sampler fails ~1% of seeds) */
    enum { V = 5, D = 20000 };
    float logits[V] = {0.5f, -0.3f, 1.2f, 0.0f, -1.0f}, scratch[2 * V];
    double p[V], z = 0.0;
    for (int v = 0; v < V; v++) z += exp(logits[v]);
    for (int v = 0; v < V; v++) p[v] = exp(logits[v]) / z;
    int seen[V] = {0};
    Rng r;
    rng_seed(&r, 4);
    for (int i = 0; i < D; i++) seen[sample_token(logits, V, 1.0f, 0, 1.0f, &r, scratch)]++;
    for (int v = 0; v < V; v++) EXPECT_NEAR((double)seen[v] / D, p[v], 3.0 * sqrt(p[v] * (1 - p[v]) / D));
    /* temperature 0.5 sharpens: softmax(2 * logits) */
    memset(seen, 0, sizeof seen);
    z = 0.0;
    for (int v = 0; v < V; v++) z += exp(2.0 * logits[v]);
    for (int v = 0; v < V; v++) p[v] = exp(2.0 * logits[v]) / z;
    for (int i = 0; i < D; i++) seen[sample_token(logits, V, 0.5f, 0, 1.0f, &r, scratch)]++;
    for (int v = 0; v < V; v++) EXPECT_NEAR((double)seen[v] / D, p[v], 3.0 * sqrt(p[v] * (1 - p[v]) / D));
}

/* generate's default thread count: 1 for a small model or a busy machine, else 2 (at most the CPUs) */
TEST(auto_threads) {
    double MB = 1024.0 * 1024.0;
    EXPECT(generate_auto_threads(0.25 * MB, 0.0, 2) == 1);      /* tiny: barrier-bound whatever the load */
    EXPECT(generate_auto_threads(31.0 * MB, NAN, 16) == 1);
    EXPECT(generate_auto_threads(100.0 * MB, 0.5, 2) == 2);      /* a large model on a quiet machine */
    EXPECT(generate_auto_threads(100.0 * MB, NAN, 2) == 2);      /* load unknown */
    EXPECT(generate_auto_threads(100.0 * MB, 2.0, 2) == 1);      /* busy: load >= CPUs */
    EXPECT(generate_auto_threads(100.0 * MB, 18.0, 2) == 1);
    EXPECT(generate_auto_threads(100.0 * MB, 0.0, 1) == 1);      /* one CPU */
    EXPECT(isnan(backend_load()) || backend_load() >= 0.0);
    EXPECT(backend_cpus() >= 1);
}

int main(void) {
    test_one_thread();
    RUN(auto_threads);
    RUN(bf16_rounding);
    RUN(gemv_matches_reference);
    RUN(gemv_t_nz_matches_reference);
    RUN(kv_dense_lm);
    RUN(kv_dense_rms_swiglu_untied);
    RUN(kv_dense_wide_heads);
    RUN(kv_switch_lm);
    RUN(kv_adaptive_lm);
    RUN(kv_rope_lm);
    RUN(kv_topk_lm);
    RUN(kv_llama_family);
    RUN(kv_seed_models);
    RUN(kv_profile);
    RUN(kv_memory);
    RUN(kv_step_bytes_match_the_tensors);
    RUN(sample_greedy);
    RUN(sample_top_k);
    RUN(sample_top_k_matches_full_sort);
    RUN(sample_top_p);
    RUN(sample_frequencies);
    return test_summary("generate");
}
