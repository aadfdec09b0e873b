/* test_ops.c: every op's backward against central finite differences, BLAS GEMM against the
 * reference on odd shapes, and the attention mask's causality.
 *
 * Tolerances: values are O(1), h = 1e-2 (1e-3 for the cross-entropy), and the float forward gives
 * about 1e-6 absolute noise on the double-accumulated loss, i.e. ~1e-4 on the difference quotient;
 * atol 2e-3 and rtol 1e-2 leave room for that noise while a wrong formula misses by O(1). */
#include <string.h>
#include "test.h"
#include "fd.h"
#include "ops/ops.h"
#include "ops/ops_simd.h"
#include "backend/gemm.h"
#include "backend/barrier.h"
#include <omp.h>

#define ATOL 2e-3
#define RTOL 1e-2

static uint64_t seed = 42;

/* Test buffers are kept in a list and freed together at the end (no leaks under ASan). */
static void *g_bufs[1024];
static int g_nbufs;
static void *keep(void *p) {
    if (g_nbufs < 1024) g_bufs[g_nbufs++] = p;
    return p;
}
static void drop(void *p) {   /* frees a kept buffer now */
    for (int i = 0; i < g_nbufs; i++)
        if (g_bufs[i] == p) { g_bufs[i] = g_bufs[--g_nbufs]; break; }
    free(p);
}
static void free_bufs(void) {
    while (g_nbufs) free(g_bufs[--g_nbufs]);
}
static float *vec(size_t n, float scale) {
    float *x = keep(malloc(n * sizeof(float)));
    fd_fill(x, n, scale, &seed);
    return x;
}
static float *zeros(size_t n) { return keep(calloc(n, sizeof(float))); }

/* ---- matmul ---- */
typedef struct { float *out, *inp, *w, *b, *r; int N, C, OC; } MatmulCtx;
static double matmul_loss(void *p) {
    MatmulCtx *c = p;
    matmul_forward(c->out, c->inp, c->w, c->b, c->N, c->C, c->OC);
    return fd_dot(c->out, c->r, (size_t)c->N * c->OC);
}
TEST(matmul_grad) {
    int N = 7, C = 13, OC = 5;
    MatmulCtx c = {zeros(N * OC), vec(N * C, 1), vec(OC * C, 1), vec(OC, 1), vec(N * OC, 1), N, C, OC};
    float *dinp = zeros(N * C), *dw = zeros(OC * C), *db = zeros(OC);
    matmul_loss(&c);
    matmul_backward(dinp, dw, db, c.r, c.inp, c.w, N, C, OC);
    EXPECT(fd_check("dinp", c.inp, dinp, N * C, matmul_loss, &c, 1e-2f, ATOL, RTOL, 100));
    EXPECT(fd_check("dw", c.w, dw, OC * C, matmul_loss, &c, 1e-2f, ATOL, RTOL, 100));
    EXPECT(fd_check("db", c.b, db, OC, matmul_loss, &c, 1e-2f, ATOL, RTOL, 100));
    /* parameter gradients accumulate: a second backward doubles them */
    float dw0 = dw[3];
    matmul_backward(dinp, dw, db, c.r, c.inp, c.w, N, C, OC);
    EXPECT_NEAR(dw[3], 2 * dw0, 1e-5 * (1 + fabs(dw0)));
}

/* ---- layernorm / rmsnorm ---- */
typedef struct { float *out, *mean, *rstd, *inp, *w, *b, *r; int N, C, rms; } NormCtx;
static double norm_loss(void *p) {
    NormCtx *c = p;
    if (c->rms) rmsnorm_forward(c->out, c->rstd, c->inp, c->w, c->N, c->C, 1e-5f);
    else layernorm_forward(c->out, c->mean, c->rstd, c->inp, c->w, c->b, c->N, c->C, 1e-5f);
    return fd_dot(c->out, c->r, (size_t)c->N * c->C);
}
static void norm_case(int rms) {
    int N = 5, C = 11;
    NormCtx c = {zeros(N * C), zeros(N), zeros(N), vec(N * C, 2), vec(C, 1), vec(C, 1), vec(N * C, 1), N, C, rms};
    float *dinp = zeros(N * C), *dw = zeros(C), *db = zeros(C);
    norm_loss(&c);
    if (rms) rmsnorm_backward(dinp, dw, c.r, c.inp, c.w, c.rstd, N, C);
    else layernorm_backward(dinp, dw, db, c.r, c.inp, c.w, c.mean, c.rstd, N, C);
    EXPECT(fd_check("dinp", c.inp, dinp, N * C, norm_loss, &c, 1e-2f, ATOL, RTOL, 100));
    EXPECT(fd_check("dw", c.w, dw, C, norm_loss, &c, 1e-2f, ATOL, RTOL, 100));
    if (!rms) EXPECT(fd_check("db", c.b, db, C, norm_loss, &c, 1e-2f, ATOL, RTOL, 100));
    /* dinp accumulates (residual stream) */
    float d0 = dinp[4];
    if (rms) rmsnorm_backward(dinp, NULL, c.r, c.inp, c.w, c.rstd, N, C);
    else layernorm_backward(dinp, NULL, NULL, c.r, c.inp, c.w, c.mean, c.rstd, N, C);
    EXPECT_NEAR(dinp[4], 2 * d0, 1e-5 * (1 + fabs(d0)));
}
TEST(layernorm_grad) { norm_case(0); }
TEST(rmsnorm_grad) { norm_case(1); }

/* ---- attention ---- */
typedef struct { float *out, *att, *qkv, *r; int B, T, C, NH, causal; } AttCtx;
static double att_loss(void *p) {
    AttCtx *c = p;
    attention_forward(c->out, c->att, c->qkv, c->B, c->T, c->C, c->NH, c->causal);
    return fd_dot(c->out, c->r, (size_t)c->B * c->T * c->C);
}
static void att_case_shape(int causal, int B, int T, int C, int NH) {
    AttCtx c = {zeros(B * T * C), zeros(B * NH * T * T), vec(B * T * 3 * C, 1), vec(B * T * C, 1), B, T, C, NH, causal};
    float *dqkv = zeros(B * T * 3 * C), *datt = zeros(B * NH * T * T);
    att_loss(&c);
    attention_backward(dqkv, datt, c.r, c.att, c.qkv, B, T, C, NH, causal);
    EXPECT(fd_check("dqkv", c.qkv, dqkv, B * T * 3 * C, att_loss, &c, 1e-2f, ATOL, RTOL, 400));
}
TEST(attention_causal_grad) { att_case_shape(1, 2, 5, 12, 3); }
TEST(attention_full_grad) { att_case_shape(0, 2, 5, 12, 3); }
/* head width 16 and 18 keys: the blocked kernels (two key blocks, the second masked) where AVX-512 is */
TEST(attention_blocked_grad) {
    att_case_shape(1, 1, 18, 32, 2);
    att_case_shape(0, 1, 18, 32, 2);
}

TEST(attention_is_causal) {
    /* changing position t' changes no output at t < t' */
    int B = 1, T = 6, C = 8, NH = 2;
    float *qkv = vec(T * 3 * C, 1), *o1 = zeros(T * C), *o2 = zeros(T * C), *att = zeros(NH * T * T);
    attention_forward(o1, att, qkv, B, T, C, NH, 1);
    for (int i = 0; i < 3 * C; i++) qkv[4 * 3 * C + i] += 0.5f;
    attention_forward(o2, att, qkv, B, T, C, NH, 1);
    EXPECT(memcmp(o1, o2, sizeof(float) * 4 * C) == 0);
    EXPECT(memcmp(o1 + 4 * C, o2 + 4 * C, sizeof(float) * C) != 0);
}

/* The fast attention kernels against their plain references (STYLE.md: fast paths keep their
 * reference). Shapes that are multiples of no vector width (hs = 5, 7, 33), T = 1, both masks;
 * values O(1) and sums of at most T*hs terms, so float reordering and exp_poly's 2 ulp give under
 * 1e-6 relative; 2e-5 (1 + |ref|) leaves room and still catches any wrong index, which is O(1). */
static void att_fast_case(int B, int T, int C, int NH, int causal) {
    size_t nq = (size_t)B * T * 3 * C, no = (size_t)B * T * C, na = (size_t)B * NH * T * T;
    float *qkv = vec(nq, 1.5f), *dout = vec(no, 1);
    float *o1 = zeros(no), *o2 = zeros(no), *a1 = zeros(na), *a2 = zeros(na);
    float *d1 = vec(nq, 1), *d2 = vec(nq, 1), *s1 = zeros(na), *s2 = zeros(na);   /* dqkv is assigned: garbage first */
    attention_forward_ref(o1, a1, qkv, B, T, C, NH, causal);
    attention_forward(o2, a2, qkv, B, T, C, NH, causal);
    attention_backward_ref(d1, s1, dout, a1, qkv, B, T, C, NH, causal);
    attention_backward(d2, s2, dout, a1, qkv, B, T, C, NH, causal);
    double eo = 0, ea = 0, ed = 0;
    for (size_t i = 0; i < no; i++) eo = fmax(eo, fabs(o1[i] - o2[i]) / (1 + fabs(o1[i])));
    for (size_t i = 0; i < na; i++) ea = fmax(ea, fabs(a1[i] - a2[i]));
    for (size_t i = 0; i < nq; i++) ed = fmax(ed, fabs(d1[i] - d2[i]) / (1 + fabs(d1[i])));
    EXPECT_MSG(eo <= 2e-5 && ea <= 2e-5 && ed <= 2e-5, "B %d T %d C %d NH %d causal %d: out %.3g att %.3g dqkv %.3g",
               B, T, C, NH, causal, eo, ea, ed);
    if (causal)   /* probabilities above the diagonal are exactly zero in both */
        for (int t = 0; t < T; t++)
            for (int u = t + 1; u < T; u++) EXPECT(a2[(size_t)t * T + u] == 0.0f);
    drop(qkv); drop(dout); drop(o1); drop(o2); drop(a1); drop(a2); drop(d1); drop(d2); drop(s1); drop(s2);
}
TEST(attention_fast_matches_reference) {
    att_fast_case(3, 7, 15, 3, 1);
    att_fast_case(3, 7, 15, 3, 0);
    att_fast_case(2, 1, 14, 2, 1);
    att_fast_case(1, 31, 66, 2, 1);
    att_fast_case(2, 30, 256, 8, 1);   /* the seed config's head shape */
    att_fast_case(1, 70, 130, 2, 1);   /* longer rows: T = 70, hs = 65 */
    att_fast_case(1, 70, 130, 2, 0);
    /* the blocked kernels (hs a multiple of 16 up to 64, T up to 128): key blocks full, cut and
     * single, every head width, the longest rows, and T = 129 back on the loops */
    att_fast_case(3, 1, 32, 2, 1);
    att_fast_case(2, 17, 32, 2, 1);
    att_fast_case(1, 16, 96, 2, 0);
    att_fast_case(1, 33, 128, 2, 1);
    att_fast_case(1, 33, 128, 2, 0);
    att_fast_case(1, 128, 64, 2, 1);
    att_fast_case(1, 129, 64, 2, 0);
}

/* attention_step (generation's cache layout: keys transposed with row stride ldk, values as rows)
 * against the same row in double precision, at every head width the vector path takes (16-64), two
 * it does not (4, 65), and key counts around its 16- and 64-key blocks. The keys' rows are padded to
 * ldk with NaN, so a read past key n-1 would poison the result. Checked: scores over one key fewer,
 * or one value row skipped in the weighted sum, fail. */
static void att_step_case(int hs, int n) {
    size_t ldk = ((size_t)n + 15) / 16 * 16 + 16;
    float *q = vec(hs, 1.0f), *kT = vec((size_t)hs * ldk, 1.0f), *v = vec((size_t)n * hs, 1.0f);
    float *o = zeros(hs), *a = zeros(n);
    for (int d = 0; d < hs; d++)
        for (size_t u = (size_t)n; u < ldk; u++) kT[(size_t)d * ldk + u] = NAN;
    attention_step(o, a, q, kT, ldk, v, n, hs);
    double *p = malloc(sizeof(double) * (size_t)n), mx = -1e300, sum = 0.0, err = 0.0;
    for (int u = 0; u < n; u++) {
        double sc = 0.0;
        for (int d = 0; d < hs; d++) sc += (double)q[d] * kT[(size_t)d * ldk + u];
        p[u] = sc / sqrt((double)hs);
        mx = fmax(mx, p[u]);
    }
    for (int u = 0; u < n; u++) { p[u] = exp(p[u] - mx); sum += p[u]; }
    for (int u = 0; u < n; u++) err = fmax(err, fabs(a[u] - p[u] / sum));
    for (int i = 0; i < hs; i++) {
        double r = 0.0;
        for (int u = 0; u < n; u++) r += p[u] / sum * v[(size_t)u * hs + i];
        err = fmax(err, fabs(o[i] - r));
    }
    EXPECT_MSG(err <= 2e-6, "hs %d, %d keys: max error %.3g", hs, n, err);
    free(p);
    drop(q); drop(kT); drop(v); drop(o); drop(a);
}

TEST(attention_step_matches_double) {
    int hs[6] = {16, 32, 48, 64, 4, 65}, n[10] = {1, 3, 15, 16, 17, 63, 64, 65, 101, 130};
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 10; j++) att_step_case(hs[i], n[j]);
}

/* Cross-entropy (vectorised exp) against a double-precision softmax on an odd vocabulary with a
 * wide logit range; 1e-5 relative is 100x the float rounding of a sum of 1001 terms. */
TEST(crossentropy_matches_double) {
    int N = 5, V = 1001;
    float *x = vec((size_t)N * V, 8), *loss = zeros(N), *lse = zeros(N), *d = zeros((size_t)N * V), *dl = vec(N, 1);
    int tgt[5] = {0, 1000, 17, -1, 500};
    crossentropy_forward(loss, lse, x, tgt, N, V);
    crossentropy_backward(d, x, lse, tgt, dl, N, V);
    for (int n = 0; n < N; n++) {
        const float *r = x + (size_t)n * V;
        double mx = -1e300, sum = 0;
        for (int v = 0; v < V; v++) mx = fmax(mx, r[v]);
        for (int v = 0; v < V; v++) sum += exp(r[v] - mx);
        if (tgt[n] < 0) { EXPECT(loss[n] == 0.0f); EXPECT(d[(size_t)n * V + 3] == 0.0f); continue; }
        double ref = log(sum) + mx - r[tgt[n]];
        EXPECT_NEAR(loss[n], ref, 1e-5 * (1 + fabs(ref)));
        EXPECT_NEAR(lse[n], log(sum) + mx, 1e-5 * (1 + fabs(log(sum) + mx)));
        for (int v = 0; v < V; v++) {
            double g = dl[n] * (exp(r[v] - mx) / sum - (v == tgt[n]));
            EXPECT_NEAR(d[(size_t)n * V + v], g, 1e-5 * (fabs(dl[n]) + 1e-3));
        }
    }
    /* in place (dlogits == logits), as model_backward calls it: the same bits */
    crossentropy_backward(x, x, lse, tgt, dl, N, V);
    EXPECT(memcmp(x, d, sizeof(float) * (size_t)N * V) == 0);
    drop(x); drop(loss); drop(lse); drop(d); drop(dl);
}

/* Non-finite and out-of-range inputs reach exp_poly (a checkpoint with NaN weights, an lse that does
 * not belong to the logits): the result must be defined. Before the fix a NaN or an argument above
 * 88 made its exponent an out-of-range integer shifted into the sign bit (undefined behaviour that
 * `make test SAN=1` stops at; in a plain build exp(1e30) came out wrong, which the last check sees). */
TEST(exp_nonfinite_inputs_are_defined) {
    int N = 5, V = 37;
    float *x = vec((size_t)N * V, 3), *loss = zeros(N), *lse = zeros(N), *d = zeros((size_t)N * V), *dl = vec(N, 4);
    int tgt[5] = {1, 2, 3, 4, 5};
    x[0 * V + 7] = NAN;          /* row 0: a NaN logit */
    x[1 * V + 8] = INFINITY;     /* row 1: +inf: inf - inf inside the softmax */
    x[2 * V + 9] = -INFINITY;    /* row 2: -inf, not the target: a zero probability */
    x[3 * V + 4] = -INFINITY;    /* row 3: -inf at the target: infinite loss */
    crossentropy_forward(loss, lse, x, tgt, N, V);
    EXPECT(isnan(loss[0]) && isnan(loss[1]));
    EXPECT(isinf(loss[3]) && loss[3] > 0);
    const float *r = x + 2 * (size_t)V;
    double mx = -1e300, sum = 0;
    for (int v = 0; v < V; v++) if (v != 9) mx = fmax(mx, r[v]);
    for (int v = 0; v < V; v++) if (v != 9) sum += exp(r[v] - mx);
    EXPECT_NEAR(loss[2], log(sum) + mx - r[3], 1e-5 * (1 + fabs(log(sum) + mx)));
    EXPECT(isfinite(loss[4]));
    crossentropy_backward(d, x, lse, tgt, dl, N, V);
    EXPECT(isnan(d[0 * V + 7]) && fabsf(d[2 * V + 9]) < 1e-30f);   /* exp(-87.3) at most */
    /* an lse far below the logits: exp(x - lse) with x - lse = 100 and 1e30 is capped at exp(88) */
    lse[4] = -100.0f;
    lse[2] = -1e30f;
    dl[2] = 0.5f;
    crossentropy_backward(d, x, lse, tgt, dl, N, V);
    for (int v = 0; v < V; v++) EXPECT(isfinite(d[4 * V + v]));
    EXPECT(isfinite(d[2 * V]) && d[2 * V] > 8e37f);   /* 0.5 exp(88) = 8.3e37 */
    softmax_forward(d, x, N, V);
    EXPECT(isnan(d[0]) && isfinite(d[4 * V]));
    drop(x); drop(loss); drop(lse); drop(d); drop(dl);
}

/* The 8-lane exponential (ops_simd.h exp_poly8, used where GCC leaves loops over exp_poly scalar) has
 * exp_poly's bits in every lane: a sweep over [-100, 100] at an irrational step, the clamps' edges,
 * zeros, infinities and NaN. exp_row's sum is its documented order (element v in partial sum v mod
 * 16, the 16 added pairwise), whatever the length (the 16-wide body and the tail), and it stores
 * exp_poly's values; softmax_row and crossentropy_backward agree with exp_poly element by element. */
TEST(exp_lanes_equal_exp_poly) {
    enum { M = 4096 };
    float *in = zeros(M), *want = zeros(M), *got = zeros(M);
    for (int i = 0; i < M; i++) in[i] = -100.0f + (float)i * 0.0488281f * 1.0000003f;
    const float special[] = {-87.3f, -87.29999f, -87.30001f, 88.0f, 87.99999f, 88.00001f, 0.0f, -0.0f,
                             1e-30f, -1e-30f, INFINITY, -INFINITY, NAN, -NAN, 1e30f, -1e30f};
    for (int i = 0; i < 16; i++) in[M - 16 + i] = special[i];
    for (int i = 0; i < M; i++) want[i] = exp_poly(in[i]);
    int bad = 0;
#if defined(__AVX2__) && defined(__FMA__)
    for (int i = 0; i < M; i += 8) _mm256_storeu_ps(got + i, exp_poly8(_mm256_loadu_ps(in + i)));
    for (int i = 0; i < M; i++)
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0 && !(isnan(got[i]) && isnan(want[i]))) bad++;
    EXPECT_MSG(bad == 0, "%d of %d lanes differ from exp_poly", bad, M);
#else
    printf("  (the 8-lane exponential is built only with AVX2 and FMA)\n");
#endif
    for (int V = 0; V <= 70; V++) {
        float lane[16] = {0}, mx = 0.25f;
        for (int v = 0; v < V; v++) lane[v & 15] += exp_poly(sinf(1.7f * (float)v) - mx);   /* O(1) terms: order shows */
        for (int w = 8; w > 0; w /= 2)
            for (int i = 0; i < w; i++) lane[i] += lane[i + w];
        float row[70], out[70];
        for (int v = 0; v < V; v++) row[v] = sinf(1.7f * (float)v);
        float sum = exp_row(out, row, V, mx), sum2 = row_sumexp(row, V, mx);
        if (memcmp(&sum, &lane[0], sizeof sum) != 0 || memcmp(&sum2, &lane[0], sizeof sum) != 0) bad++;
        for (int v = 0; v < V; v++) if (out[v] != exp_poly(row[v] - mx)) bad++;
    }
    EXPECT_MSG(bad == 0, "%d sums or values of exp_row differ from its definition", bad);
    int N = 3, V = 43, tgt[3] = {0, 5, 42};
    float *x = vec((size_t)N * V, 11), *lse = vec(N, 12), *dl = vec(N, 13), *d = zeros((size_t)N * V);
    crossentropy_backward(d, x, lse, tgt, dl, N, V);
    bad = 0;
    for (int n = 0; n < N; n++)
        for (int v = 0; v < V; v++) {
            float e = dl[n] * exp_poly(x[n * V + v] - lse[n]);
            if (v == tgt[n]) e -= dl[n];
            if (d[n * V + v] != e) bad++;
        }
    EXPECT_MSG(bad == 0, "%d gradients of crossentropy_backward differ from g exp_poly(x - lse)", bad);
    drop(in); drop(want); drop(got); drop(x); drop(lse); drop(dl); drop(d);
}

/* GELU's 8-lane forward and gradient (ops.c gelu8, gelu_grad8) and ReLU's 8-lane gradient have the
 * scalar code's bits: each value of a sweep over [-12, 12] and the special inputs (and gradients),
 * through the vector body (a row of 4,096) and alone (a row of one: the scalar tail). */
TEST(gelu_lanes_equal_scalar) {
    enum { M = 4096 };
    float *in = zeros(M), *dy = zeros(M), *fv = zeros(M), *gv = zeros(M);
    for (int i = 0; i < M; i++) { in[i] = -12.0f + (float)i * 0.00585937f * 1.0000003f; dy[i] = 0.75f + (float)(i % 7) * 0.125f; }
    const float special[] = {0.0f, -0.0f, 10.0f, -10.0f, 1e30f, -1e30f, INFINITY, -INFINITY, NAN, 1e-30f, 88.0f, -88.0f};
    for (int i = 0; i < 12; i++) in[M - 12 + i] = special[i];
    dy[5] = INFINITY; dy[6] = -INFINITY; dy[7] = NAN; dy[8] = -0.0f;   /* ReLU's dout * 0 keeps these apart */
    int bad = 0;
    for (int a = 0; a < 2; a++) {
        Activation act = a ? ACT_RELU : ACT_GELU;
        activation_forward(fv, in, act, 1, M);
        activation_backward(gv, dy, in, act, 1, M);
        for (int i = 0; i < M; i++) {
            float f, g;
            activation_forward(&f, in + i, act, 1, 1);
            activation_backward(&g, dy + i, in + i, act, 1, 1);
            if (memcmp(&f, &fv[i], sizeof f) != 0 && !(isnan(f) && isnan(fv[i]))) bad++;
            if (memcmp(&g, &gv[i], sizeof g) != 0 && !(isnan(g) && isnan(gv[i]))) bad++;
        }
    }
    EXPECT_MSG(bad == 0, "%d GELU or ReLU values or gradients differ between the vector body and the scalar tail", bad);
    drop(in); drop(dy); drop(fv); drop(gv);
}

/* ---- activations ---- */
typedef struct { float *out, *inp, *r; int N, H; Activation act; } ActCtx;
static double act_loss(void *p) {
    ActCtx *c = p;
    activation_forward(c->out, c->inp, c->act, c->N, c->H);
    return fd_dot(c->out, c->r, (size_t)c->N * c->H);
}
static void act_case(Activation act) {
    int N = 4, H = 9, in = activation_in_width(act, H);
    ActCtx c = {zeros(N * H), vec(N * in, 2), vec(N * H, 1), N, H, act};
    /* keep ReLU inputs away from the kink, where the derivative does not exist */
    if (act == ACT_RELU) for (int i = 0; i < N * in; i++) if (fabsf(c.inp[i]) < 0.05f) c.inp[i] = 0.3f;
    float *dinp = zeros(N * in);
    act_loss(&c);
    activation_backward(dinp, c.r, c.inp, act, N, H);
    EXPECT(fd_check("dinp", c.inp, dinp, N * in, act_loss, &c, 1e-2f, ATOL, RTOL, 100));
}
TEST(relu_grad) { act_case(ACT_RELU); }
TEST(gelu_grad) { act_case(ACT_GELU); }
TEST(swiglu_grad) { act_case(ACT_SWIGLU); }

TEST(gelu_values) {
    /* exact erf GELU: gelu(1) = 0.8413447, gelu(-1) = -0.1586553 */
    float x[2] = {1.0f, -1.0f}, y[2];
    activation_forward(y, x, ACT_GELU, 1, 2);
    EXPECT_NEAR(y[0], 0.8413447, 1e-6);
    EXPECT_NEAR(y[1], -0.1586553, 1e-6);
}

/* The vectorised GELU against the erf form in double precision over [-12, 12] (the polynomial exp
 * and erf: error ~2e-7 of max(1, |x|) allowed, a plain erff is ~6e-8), the derivative too, and NaN
 * carried through (the training loop's non-finite check relies on it). */
TEST(gelu_accuracy) {
    enum { N = 24001 };
    float *x = zeros(N), *y = zeros(N), *d = zeros(N), *one = zeros(N);
    for (int i = 0; i < N; i++) { x[i] = -12.0f + 24.0f * (float)i / (N - 1); one[i] = 1.0f; }
    activation_forward(y, x, ACT_GELU, 1, N);
    activation_backward(d, one, x, ACT_GELU, 1, N);
    double worst_y = 0, worst_d = 0;
    for (int i = 0; i < N; i++) {
        double v = x[i], cdf = 0.5 * (1.0 + erf(v / sqrt(2.0))), pdf = exp(-0.5 * v * v) / sqrt(2.0 * M_PI);
        double scale = fabs(v) > 1.0 ? fabs(v) : 1.0;
        double ey = fabs(y[i] - v * cdf) / scale, ed = fabs(d[i] - (cdf + v * pdf)) / scale;
        worst_y = ey > worst_y ? ey : worst_y;
        worst_d = ed > worst_d ? ed : worst_d;
    }
    EXPECT_MSG(worst_y < 3e-7, "gelu error %.3g", worst_y);
    EXPECT_MSG(worst_d < 5e-7, "gelu' error %.3g", worst_d);
    float bad[3] = {NAN, 1e30f, -1e30f}, out[3], g[3], ones[3] = {1, 1, 1};
    activation_forward(out, bad, ACT_GELU, 1, 3);
    activation_backward(g, ones, bad, ACT_GELU, 1, 3);
    EXPECT(isnan(out[0]) && isnan(g[0]));
    EXPECT_MSG(out[1] == 1e30f && out[2] == 0.0f && fabsf(g[1] - 1.0f) < 1e-6f && fabsf(g[2]) < 1e-6f, "%g %g %g %g", out[1], out[2], g[1], g[2]);
}

/* ---- embeddings ---- */
typedef struct { float *out, *wte, *wpe, *r; int *inp; int B, T, C; } EncCtx;
static double enc_loss(void *p) {
    EncCtx *c = p;
    encoder_forward(c->out, c->inp, c->wte, c->wpe, c->B, c->T, c->C);
    return fd_dot(c->out, c->r, (size_t)c->B * c->T * c->C);
}
TEST(encoder_grad) {
    int B = 2, T = 4, C = 6, V = 5;
    int inp[8] = {1, 3, 3, 0, 4, 1, 1, 2};
    EncCtx c = {zeros(B * T * C), vec(V * C, 1), vec(T * C, 1), vec(B * T * C, 1), inp, B, T, C};
    float *dwte = zeros(V * C), *dwpe = zeros(T * C);
    enc_loss(&c);
    encoder_backward(dwte, dwpe, c.r, inp, B, T, C);
    EXPECT(fd_check("dwte", c.wte, dwte, V * C, enc_loss, &c, 1e-2f, ATOL, RTOL, 100));
    EXPECT(fd_check("dwpe", c.wpe, dwpe, T * C, enc_loss, &c, 1e-2f, ATOL, RTOL, 100));
}

/* ---- cross-entropy ---- */
typedef struct { float *losses, *lse, *logits, *w; int *tg; int N, V; } CeCtx;
static double ce_loss(void *p) {
    CeCtx *c = p;
    crossentropy_forward(c->losses, c->lse, c->logits, c->tg, c->N, c->V);
    return fd_dot(c->losses, c->w, c->N);
}
TEST(crossentropy_grad) {
    int N = 4, V = 7;
    int tg[4] = {2, 6, -1, 0};
    CeCtx c = {zeros(N), zeros(N), vec(N * V, 3), vec(N, 1), tg, N, V};
    float *dl = zeros(N * V);
    ce_loss(&c);
    EXPECT(c.losses[2] == 0.0f);   /* ignored target */
    crossentropy_backward(dl, c.logits, c.lse, tg, c.w, N, V);
    EXPECT(fd_check("dlogits", c.logits, dl, N * V, ce_loss, &c, 1e-3f, ATOL, RTOL, 100));
    /* value: uniform logits give log V */
    float z[7] = {0}, l;
    int t0 = 3;
    crossentropy_forward(&l, NULL, z, &t0, 1, V);
    EXPECT_NEAR(l, log(7.0), 1e-6);
}

/* ---- counter-based random numbers and dropout ---- */

/* rng_at's statistics. Tolerances: 5 standard deviations of each statistic under a true uniform
 * source (a false alarm about once in 3 million runs; the draws are fixed, so a pass stays a pass),
 * while a broken hash (a missing mix, a key that only shifts the stream) misses by far more. */
TEST(rng_at_statistics) {
    const uint64_t key = 0x1234567890ABCDEFull;
    enum { NB = 64, N = 1 << 20 };
    /* uniformity of rng_at_uniform over 64 bins: chi-square, 63 degrees of freedom (mean 63, sd 11.2) */
    double cnt[NB] = {0}, chi = 0.0, sum = 0.0, sum2 = 0.0, lag = 0.0;
    float prev = 0.0f;
    for (uint64_t i = 0; i < N; i++) {
        float u = rng_at_uniform(key, i);
        EXPECT(u >= 0.0f && u < 1.0f);
        cnt[(int)(u * NB)]++;
        sum += u; sum2 += (double)u * u;
        if (i) lag += ((double)u - 0.5) * ((double)prev - 0.5);
        prev = u;
    }
    for (int b = 0; b < NB; b++) chi += (cnt[b] - (double)N / NB) * (cnt[b] - (double)N / NB) / ((double)N / NB);
    EXPECT(chi < 63 + 5 * 11.2);
    /* mean 1/2 (sd 0.289/sqrt N), variance 1/12, neighbours uncorrelated (correlation sd 1/sqrt N) */
    EXPECT_NEAR(sum / N, 0.5, 5 * 0.289 / 1024);
    EXPECT_NEAR(sum2 / N - (sum / N) * (sum / N), 1.0 / 12, 0.002);
    EXPECT(fabs(lag / N * 12.0) < 5.0 / 1024);
    /* every bit of rng_at is set half the time (sd of the count: 512 in 2^20) */
    int bits_ok = 1;
    for (int k = 0; k < 64; k++) {
        long ones = 0;
        for (uint64_t i = 0; i < N; i++) ones += (rng_at(key, i) >> k) & 1;
        bits_ok &= labs(ones - N / 2) < 5 * 512;
    }
    EXPECT(bits_ok);
    /* avalanche: a counter or a key one bit apart changes half the 64 bits (mean 32, sd 4 per pair;
     * over 4096 pairs the mean's sd is 0.0625) */
    double flip_i = 0.0, flip_k = 0.0;
    for (uint64_t i = 0; i < 4096; i++) {
        flip_i += __builtin_popcountll(rng_at(key, i) ^ rng_at(key, i ^ (1ull << (i % 40))));
        flip_k += __builtin_popcountll(rng_at(key, i) ^ rng_at(key ^ (1ull << (i % 64)), i));
    }
    EXPECT_NEAR(flip_i / 4096, 32.0, 0.5);
    EXPECT_NEAR(flip_k / 4096, 32.0, 0.5);
    /* streams of keys that differ by a multiple of splitmix64's increment do not overlap shifted (the
     * plain splitmix64 stream of key + G is that of key, one draw on), nor do a site's sub-stream keys */
    const uint64_t G = 0x9E3779B97F4A7C15ull;
    long same = 0, close = 0;
    for (uint64_t i = 0; i < 100000; i++) {
        same += rng_at(key + G, i) == rng_at(key, i + 1);
        close += rng_at(rng_key(key, 1), i) == rng_at(rng_key(key, 2), i);
    }
    EXPECT(same == 0 && close == 0);
    /* a counter-based value is that of its place alone: any order gives it */
    EXPECT(rng_at(key, 77) == rng_at(key, 77) && rng_at(key, 77) != rng_at(key, 78));
}

TEST(dropout_mask_and_grad) {
    size_t n = 10000;
    float *x = vec(n, 1), *y = zeros(n), *dy = vec(n, 1), *dx = zeros(n);
    uint8_t *m = keep(malloc(n));
    const uint64_t key = 7, first = 12345;
    dropout_forward(y, m, x, 0.25f, n, key, first);
    /* the mask is the draws of its places (however the kernel computes them) */
    size_t differ = 0;
    for (size_t i = 0; i < n; i++) differ += m[i] != (rng_at_uniform(key, first + i) >= 0.25f);
    EXPECT(differ == 0);
    size_t kept = 0, wrong = 0;
    const float scale = 1.0f / 0.75f;
    for (size_t i = 0; i < n; i++) {
        kept += m[i];
        wrong += y[i] != (m[i] ? x[i] * scale : 0.0f);
    }
    EXPECT(wrong == 0);
    /* 7500 expected, sd ~43: 5 sd */
    EXPECT(kept > 7280 && kept < 7720);
    dropout_backward(dx, dy, m, 0.25f, n);
    wrong = 0;
    for (size_t i = 0; i < n; i++) wrong += dx[i] != (m[i] ? dy[i] * scale : 0.0f);
    EXPECT(wrong == 0);
    /* same key and place, same mask; another key, another mask */
    uint8_t *m2 = keep(malloc(n));
    dropout_forward(y, m2, x, 0.25f, n, key, first);
    EXPECT(memcmp(m, m2, n) == 0);
    dropout_forward(y, m2, x, 0.25f, n, key + 1, first);
    EXPECT(memcmp(m, m2, n) != 0);
}

/* A batch's mask does not depend on how its rows are split (over ranks: each takes its rows with its
 * first row's offset) nor on the thread count: the rows of one call over 12 rows of width 4000 equal
 * those of calls over 5 + 7 and 3 + 4 + 5 rows, at 1 and 2 threads. */
TEST(dropout_rank_split_and_threads) {
    enum { ROWS = 12, W = 4000 };   /* 48,000 elements: over PAR_MIN_WORK, so 2 threads split the loop */
    size_t n = (size_t)ROWS * W;
    float *x = vec(n, 1), *y = zeros(n), *y2 = zeros(n);
    uint8_t *m = keep(malloc(n)), *m2 = keep(malloc(n));
    const uint64_t key = 0xABCDull;
    dropout_forward(y, m, x, 0.1f, n, key, 0);
    int splits[2][4] = {{5, 7, 0, 0}, {3, 4, 5, 0}};
    for (int s = 0; s < 2; s++)
        for (int th = 1; th <= 2; th++) {
            omp_set_num_threads(th);
            memset(m2, 9, n);
            size_t row = 0;
            for (int k = 0; splits[s][k]; k++) {
                size_t off = row * W, cnt = (size_t)splits[s][k] * W;
                dropout_forward(y2 + off, m2 + off, x + off, 0.1f, cnt, key, off);
                row += (size_t)splits[s][k];
            }
            EXPECT(row == ROWS && memcmp(m, m2, n) == 0 && memcmp(y, y2, n * sizeof(float)) == 0);
        }
    omp_set_num_threads(1);
    /* a split that forgets the offset draws other masks (what one stream per rank did) */
    dropout_forward(y2 + 5 * W, m2 + 5 * W, x + 5 * W, 0.1f, 7 * W, key, 0);
    EXPECT(memcmp(m, m2, n) != 0);
}

/* ---- BLAS against the reference ---- */
TEST(gemm_matches_reference) {
    int shapes[][3] = {{1, 1, 1}, {7, 13, 5}, {33, 17, 65}, {129, 31, 257}, {3, 300, 2},
                       {1, 300, 77}, {1, 513, 1000}, {77, 1, 300}, {1, 7, 1}};   /* M or N = 1: sgemv */
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                float *A = vec((size_t)M * K, 1), *Bm = vec((size_t)K * N, 1);
                float *C1 = vec((size_t)M * N, 1), *C2 = malloc(sizeof(float) * M * N);
                memcpy(C2, C1, sizeof(float) * M * N);
                int lda = ta ? M : K, ldb = tb ? K : N;
                gemm(ta, tb, M, N, K, 0.7f, A, lda, Bm, ldb, 0.3f, C1, N);
                gemm_ref(ta, tb, M, N, K, 0.7f, A, lda, Bm, ldb, 0.3f, C2, N);
                /* float accumulation over K terms of size <= 1: error <= K * 6e-8 * sqrt-ish; 1e-5*K is safe */
                double worst = 0;
                for (int i = 0; i < M * N; i++) if (fabs(C1[i] - C2[i]) > worst) worst = fabs(C1[i] - C2[i]);
                EXPECT_MSG(worst <= 1e-5 * K, "M=%d N=%d K=%d ta=%d tb=%d worst %g", M, N, K, ta, tb, worst);
                drop(A); drop(Bm); drop(C1); free(C2);
            }
    }
}

/* gemm_pair and gemm_halves at two threads (the side-by-side path) and at one (one after the other):
 * gemm_pair's products with the bits gemm() alone gives them (a linear layer's two gradients, the
 * weight one accumulating, beta 1); gemm_halves (its forward) within rounding of gemm(), the row past
 * the halves untouched. */
static void pair_case(int threads) {
    int N = 96, C = 40, OC = 72;
    float *dout = vec((size_t)N * OC, 1), *inp = vec((size_t)N * C, 1), *w = vec((size_t)OC * C, 1);
    float *dx1 = zeros((size_t)N * C), *dx2 = zeros((size_t)N * C), *dw1 = vec((size_t)OC * C, 1);
    float *dw2 = zeros((size_t)OC * C);
    memcpy(dw2, dw1, sizeof(float) * OC * C);
    int was = omp_get_max_threads();
    omp_set_num_threads(threads);
    GemmCall gi = {0, 0, N, C, OC, 1.0f, dout, OC, w, C, 0.0f, dx1, C, 0, NULL};
    GemmCall gw = {1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dw1, C, 0, NULL};
    gemm_pair(&gi, &gw);
    omp_set_num_threads(1);
    gemm(0, 0, N, C, OC, 1.0f, dout, OC, w, C, 0.0f, dx2, C);
    gemm(1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dw2, C);
    EXPECT_MSG(memcmp(dx1, dx2, sizeof(float) * N * C) == 0, "dinp differs at %d threads", threads);
    EXPECT_MSG(memcmp(dw1, dw2, sizeof(float) * OC * C) == 0, "dw differs at %d threads", threads);
    /* one product not asked for (C NULL, as matmul_backward's dinp may be): the other alone */
    float *dx3 = zeros((size_t)N * C), *dx4 = zeros((size_t)N * C);
    GemmCall gx = {0, 0, N, C, OC, 1.0f, dout, OC, w, C, 0.0f, dx3, C, 0, NULL}, none = gw;
    none.C = NULL;
    omp_set_num_threads(threads);
    gemm_pair(&none, &gx);
    gemm(0, 0, N, C, OC, 1.0f, dout, OC, w, C, 0.0f, dx4, C);
    EXPECT_MSG(memcmp(dx3, dx4, sizeof(float) * N * C) == 0, "the lone product differs at %d threads", threads);
    /* gemm_halves: a linear layer's forward, rows cut in two (odd N: halves of 47 and 48) */
    float *y1 = vec((size_t)N * OC, 1), *y2 = zeros((size_t)N * OC);
    memcpy(y2, y1, sizeof(float) * N * OC);
    omp_set_num_threads(threads);
    gemm_halves(1, N - 1, OC, C, 1.0f, inp, C, w, C, 1.0f, y1, OC);
    omp_set_num_threads(1);
    gemm(0, 1, N - 1, OC, C, 1.0f, inp, C, w, C, 1.0f, y2, OC);
    /* BLAS may take another kernel for a half's shape (small-matrix paths), so not the same bits */
    double worst = 0;
    for (int i = 0; i < (N - 1) * OC; i++) worst = fmax(worst, fabs(y1[i] - y2[i]));
    EXPECT_MSG(worst <= 1e-5 * C, "gemm_halves at %d threads: worst %g", threads, worst);
    EXPECT(memcmp(y1 + (size_t)(N - 1) * OC, y2 + (size_t)(N - 1) * OC, sizeof(float) * OC) == 0);
    omp_set_num_threads(was);
}
TEST(gemm_pair_same_bits) {
    pair_case(2);
    pair_case(1);
}

/* team_barrier_wait: 3 threads (more than this machine's cores, so waits also yield) write their
 * round number, pass the barrier, and must all see every thread's write of that round; a second
 * barrier keeps the next round's writes after the reads. 500 rounds: each wait of an oversubscribed
 * barrier spins ~1 ms of CPU before it yields, so 3000 rounds cost ~7 CPU-s, most of test_ops; a
 * barrier that stops waiting after 50 spins still gives ~3000 wrong reads in 500 rounds. */
TEST(team_barrier_orders) {
    enum { ROUNDS = 500, NT = 3 };
    static TeamBarrier bar;
    static int slot[NT];
    int wrong = 0, ran = 0;
#pragma omp parallel num_threads(NT) reduction(+ : wrong, ran)
    {
        int nt = omp_get_num_threads(), me = omp_get_thread_num();
        ran = 1;
        for (int r = 1; r <= ROUNDS; r++) {
            __atomic_store_n(&slot[me], r, __ATOMIC_RELAXED);
            team_barrier_wait(&bar, nt);
            for (int i = 0; i < nt; i++) wrong += __atomic_load_n(&slot[i], __ATOMIC_RELAXED) != r;
            team_barrier_wait(&bar, nt);
        }
    }
    EXPECT_MSG(ran == NT, "%d threads ran", ran);
    EXPECT_MSG(wrong == 0, "%d reads saw another round", wrong);
}

/* activation_forward_cols over column ranges gives activation_forward's bits (one row; SwiGLU's
 * second half read at H + i) */
TEST(activation_cols_match) {
    enum { H = 37 };
    float inp[2 * H], whole[H], cols[H];
    for (int i = 0; i < 2 * H; i++) inp[i] = 3.0f * sinf(0.7f * i) - 0.4f;
    Activation acts[] = {ACT_RELU, ACT_GELU, ACT_SWIGLU};
    for (int a = 0; a < 3; a++) {
        activation_forward(whole, inp, acts[a], 1, H);
        memset(cols, 0xff, sizeof cols);
        activation_forward_cols(cols, inp, acts[a], H, 0, 16);
        activation_forward_cols(cols, inp, acts[a], H, 16, 17);
        activation_forward_cols(cols, inp, acts[a], H, 17, H);
        EXPECT_MSG(memcmp(whole, cols, sizeof whole) == 0, "activation %d: columns differ from the whole row", a);
    }
}

int main(void) {
    test_one_thread();
    RUN(matmul_grad);
    RUN(layernorm_grad);
    RUN(rmsnorm_grad);
    RUN(attention_causal_grad);
    RUN(attention_full_grad);
    RUN(attention_blocked_grad);
    RUN(attention_is_causal);
    RUN(attention_fast_matches_reference);
    RUN(attention_step_matches_double);
    RUN(crossentropy_matches_double);
    RUN(exp_nonfinite_inputs_are_defined);
    RUN(relu_grad);
    RUN(gelu_grad);
    RUN(swiglu_grad);
    RUN(gelu_values);
    RUN(gelu_accuracy);
    RUN(encoder_grad);
    RUN(crossentropy_grad);
    RUN(rng_at_statistics);
    RUN(dropout_mask_and_grad);
    RUN(dropout_rank_split_and_threads);
    RUN(gemm_matches_reference);
    RUN(gemm_pair_same_bits);
    RUN(team_barrier_orders);
    RUN(activation_cols_match);
    RUN(gelu_lanes_equal_scalar);
    RUN(exp_lanes_equal_exp_poly);   /* last: its vec() calls would move the others' random inputs */
    free_bufs();
    return test_summary("ops");
}
