/* bench/ops_bench.c: the kernels of a dense seed step, each side by side with what it replaces or is
 * checked against, at the seed config's shapes (batch 64 x 30 tokens, d_model 256, 8 heads, vocab
 * 10,000, head hidden 512). Built by `make bench-ops` into build/bench_ops; run with
 * `env OPENBLAS_CORETYPE=Cooperlake build/bench_ops [REPS]` (REPS, default 50: each figure is the
 * minimum over REPS runs (at most 20 for attention, 10 for the head), the two sides of a line
 * interleaved run by run).
 *
 *   attention   attention_forward + attention_backward (causal) against the plain reference loops
 *   general attention  attn_forward + attn_backward (src/ops/attn.h) at the seed shape against
 *               attention_forward + attention_backward, and at a Switch encoder's shape (bias, padding)
 *               and a Mixtral-like one (GQA 8 -> 2, causal) against attn_forward_ref + attn_backward_ref
 *   layernorm   layernorm_forward + layernorm_backward, 1920 x 256
 *   head gemm   the head's three products through gemm() (OpenBLAS threads one product) against
 *               gemm_pair with one product (cut in two halves that run side by side, gemm_big)
 *   head down   generation's second product of the seed head (W2 10,000 x 512 down-major, half the
 *               hidden units zero, skipped: gemv_t_nz) in blocks of 256 outputs (1 KiB a unit) against
 *               blocks of 1024 (4 KiB a unit, read in four passes of 256), the blocks dealt round the
 *               two threads; before each run a 48 MB sweep of other memory (a token reads its other
 *               weights between two heads), not timed
 *   bf16        the step's products (a layer's forward, input and weight gradients; an expert's slab of
 *               60 rows; the head's; a 2048^3 peak) in float and with bf16 operands (gemm_bf16), at 1
 *               and 2 threads
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "backend/gemm.h"
#include "backend/gemv.h"
#include "backend/runtime.h"
#include "backend/gemm_bf16.h"
#include "ops/attn.h"
#include "ops/ops.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *filled(size_t n, unsigned seed) {
    float *x = malloc(sizeof(float) * n);
    if (!x) { fprintf(stderr, "ops_bench: out of memory\n"); exit(1); }
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)(seed >> 8) / 16777216.0f - 0.5f;
    }
    return x;
}

enum { B = 64, T = 30, C = 256, NH = 8, V = 10000, HH = 512, N = B * T };
static float *qkv, *att, *out, *dout, *dqkv, *datt;

static void attn_fast(void) {
    attention_forward(out, att, qkv, B, T, C, NH, 1);
    attention_backward(dqkv, datt, dout, att, qkv, B, T, C, NH, 1);
}
static void attn_ref(void) {
    attention_forward_ref(out, att, qkv, B, T, C, NH, 1);
    attention_backward_ref(dqkv, datt, dout, att, qkv, B, T, C, NH, 1);
}

/* the general attention's problem: buffers sized for the largest shape below */
static AttnDims gd;
static float *gq, *gk, *gv, *gbias, *gout, *gatt, *gdout, *gdq, *gdk, *gdv, *gdbias, *gdatt;
static uint8_t *gmask;
static void gattn_fast(void) {
    attn_forward(gout, gatt, gq, gk, gv, gbias, gmask, &gd);
    attn_backward(gdq, gdk, gdv, gdbias, gdatt, gdout, gatt, gq, gk, gv, &gd);
}
static void gattn_ref(void) {
    attn_forward_ref(gout, gatt, gq, gk, gv, gbias, gmask, &gd);
    attn_backward_ref(gdq, gdk, gdv, gdbias, gdatt, gdout, gatt, gq, gk, gv, &gd);
}
static void gattn_seed(void) {   /* the seed shape, q k v fused as attention_forward reads them */
    gd = (AttnDims){B, T, T, NH, NH, C / NH, 3 * C, 3 * C, 3 * C, C, 1.0f / sqrtf((float)(C / NH)), 1};
    attn_forward(out, att, qkv, qkv + C, qkv + 2 * C, NULL, NULL, &gd);
    attn_backward(dqkv, dqkv + C, dqkv + 2 * C, NULL, datt, dout, att, qkv, qkv + C, qkv + 2 * C, &gd);
}

static float *x, *y, *w, *bvec, *dw, *db, *mean, *rstd, *dx;
static void layernorm(void) {
    layernorm_forward(y, mean, rstd, x, w, bvec, N, C, 1e-5f);
    layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, N, C);
}

/* generation's head down product, blocks of `bw` outputs, after evicting the caches; seconds */
static double head_down(const float *W2, const float *hid, float *logits, int bw, const float *sweep, size_t nsweep) {
    static int idx[2][HH];
    double s = 0.0;
#pragma omp parallel for num_threads(2) reduction(+ : s)
    for (size_t i = 0; i < nsweep; i += 16) s += sweep[i];
    if (s == 1.0) printf(" ");   /* keeps the sweep */
    double t0 = now();
#pragma omp parallel num_threads(2)
    {
        int me = omp_get_thread_num(), cnt = nz_index(hid, HH, idx[me]), nb = (V + bw - 1) / bw;
        for (int b = me; b < nb; b += 2) {
            int r0 = b * bw, w = V - r0 < bw ? V - r0 : bw;
            gemv_t_nz(logits + r0, hid, idx[me], cnt, W2 + (size_t)r0 * HH, w, NULL, w);
        }
    }
    return now() - t0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static GemmCall head[3];
static int which;
static void gemm_threaded(void) {
    const GemmCall *g = &head[which];
    gemm(g->transA, g->transB, g->M, g->N, g->K, g->alpha, g->A, g->lda, g->B, g->ldb, g->beta, g->C, g->ldc);
}
static void gemm_split(void) {
    GemmCall none = {0};
    gemm_pair(&head[which], &none);
}

/* minimum seconds of a and of b over reps runs, interleaved */
static void race(void (*a)(void), void (*b)(void), int reps, double *ta, double *tb) {
    *ta = *tb = 1e30;
    a(); b();   /* warm-up */
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        a();
        double t1 = now();
        b();
        double t2 = now();
        if (t1 - t0 < *ta) *ta = t1 - t0;
        if (t2 - t1 < *tb) *tb = t2 - t1;
    }
}

/* bf16 products (gemm_bf16.h) against the same products in float, as the model calls them: a layer's
 * forward through gemm_halves_call (B = the weight packed once, as bf16 mode does), its input gradient
 * (packed weight) and weight gradient (both operands packed per call) through gemm_pair alone */
static GemmCall prod;
static void prod_float(void) {
    GemmCall g = prod, none = {0};
    g.bf16 = 0;
    g.Bp = NULL;
    if (g.transA) gemm_pair(&g, &none);
    else gemm_halves_call(&g);
}
static void prod_bf16(void) {
    GemmCall g = prod, none = {0};
    g.bf16 = 1;
    if (g.transA) gemm_pair(&g, &none);
    else gemm_halves_call(&g);
}

/* one line: float and bf16 for C[M,N] = op(A) op(B), kind "NT" (x W^T), "NN" (dy W) or "TN" (dy^T x);
 * the weight of NT and NN packed beforehand */
static void bf16_line(const char *what, const char *kind, int M, int N, int K, int reps) {
    int ta = kind[0] == 'T', tb = kind[1] == 'T';
    float *A = filled((size_t)M * K, 31), *Bm = filled((size_t)K * N, 32), *Cm = filled((size_t)M * N, 33);
    uint16_t *Bp = NULL;
    if (!ta) {
        Bp = malloc(sizeof(uint16_t) * gemm_bf16_packed_size(K, N));
        if (!Bp) { fprintf(stderr, "ops_bench: out of memory\n"); exit(1); }
        gemm_bf16_pack(Bp, tb, K, N, Bm, tb ? K : N);
    }
    prod = (GemmCall){ta, tb, M, N, K, 1.0f, A, ta ? M : K, Bm, tb ? K : N, 0.0f, Cm, N, 0, Bp};
    double tf, th;
    race(prod_float, prod_bf16, reps, &tf, &th);
    double gf = 2.0 * M * N * K / 1e9;
    printf("  %-12s %s %5d x %5d x %5d: float %7.1f GFLOP/s, bf16 %7.1f GFLOP/s (%.2fx)\n", what, kind, M, N, K,
           gf / tf, gf / th, tf / th);
    free(A); free(Bm); free(Cm); free(Bp);
}

static void bf16_lines(int threads, int reps) {
    backend_set_threads(threads);
    printf("bf16 products (%s kernel), %d thread%s, min of %d runs:\n", gemm_bf16_kernel(), threads, threads > 1 ? "s" : "", reps);
    bf16_line("qkv", "NT", N, 3 * C, C, reps);
    bf16_line("ffn fc1", "NT", N, 512, C, reps);
    bf16_line("ffn fc2", "NT", N, C, 512, reps);
    bf16_line("qkv dinp", "NN", N, C, 3 * C, reps);
    bf16_line("qkv dw", "TN", 3 * C, C, N, reps);
    bf16_line("expert fc1", "NT", 60, 512, C, reps);
    bf16_line("expert dinp", "NN", 60, C, 512, reps);
    bf16_line("expert dw", "TN", 512, C, 60, reps);
    bf16_line("head logits", "NT", N, V, HH, reps > 5 ? 5 : reps);
    bf16_line("head dinp", "NN", N, HH, V, reps > 5 ? 5 : reps);
    bf16_line("head dw", "TN", V, HH, N, reps > 5 ? 5 : reps);
    bf16_line("peak", "NN", 2048, 2048, 2048, reps > 3 ? 3 : reps);
    backend_set_threads(2);
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 50;
    if (reps < 1) { fprintf(stderr, "ops_bench: REPS must be a positive integer\n"); return 2; }
    if (backend_runtime_env()) execv(argv[0], argv);   /* as moelm: the BLAS kernel when unset, GOMP_SPINCOUNT */
    backend_set_threads(2);
    printf("ops_bench: 2 threads, backend %s, min of %d runs\n", backend_name(), reps);
    double ta, tb;

    qkv = filled((size_t)N * 3 * C, 1); dout = filled((size_t)N * C, 2);
    out = filled((size_t)N * C, 3); dqkv = filled((size_t)N * 3 * C, 4);
    att = filled((size_t)B * NH * T * T, 5); datt = filled((size_t)B * NH * T * T, 6);
    race(attn_fast, attn_ref, reps > 20 ? 20 : reps, &ta, &tb);
    printf("attention fwd+bwd B %d T %d C %d heads %d: %.3f ms, reference loops %.3f ms (%.1fx)\n", B, T, C, NH,
           1e3 * ta, 1e3 * tb, tb / ta);

    race(gattn_seed, attn_fast, reps > 20 ? 20 : reps, &ta, &tb);
    printf("general attention fwd+bwd at the seed shape: %.3f ms, attention_forward/backward %.3f ms (%.2fx)\n",
           1e3 * ta, 1e3 * tb, tb / ta);
    /* a Switch (T5) encoder's self-attention: d_kv 64, 8 heads, 128 tokens, position bias, padding;
     * a Mixtral-like decoder's: 8 query heads on 2 kv heads of 32, 256 tokens, causal */
    size_t gmax = (size_t)8 * 256 * 8 * 64;
    gq = filled(gmax, 30); gk = filled(gmax, 31); gv = filled(gmax, 32); gout = filled(gmax, 33);
    gdout = filled(gmax, 34); gdq = filled(gmax, 35); gdk = filled(gmax, 36); gdv = filled(gmax, 37);
    gatt = filled((size_t)8 * 8 * 256 * 256, 38); gdatt = filled((size_t)8 * 8 * 256 * 256, 39);
    gbias = filled((size_t)8 * 128 * 128, 40); gdbias = filled((size_t)8 * 128 * 128, 41);
    gmask = malloc((size_t)8 * 128);
    for (int e = 0; e < 8 * 128; e++) gmask[e] = e % 128 < 128 - 9 * (e / 128);   /* sequence b: 9 b padding */
    gd = (AttnDims){8, 128, 128, 8, 8, 64, 512, 512, 512, 512, 1.0f, 0};
    race(gattn_fast, gattn_ref, reps > 5 ? 5 : reps, &ta, &tb);
    printf("general attention fwd+bwd switch encoder B 8 T 128 heads 8 d_kv 64 bias mask: %.2f ms, reference %.1f ms (%.0fx)\n",
           1e3 * ta, 1e3 * tb, tb / ta);
    gbias = NULL; gdbias = NULL; gmask = NULL;
    gd = (AttnDims){4, 256, 256, 8, 2, 32, 256, 64, 64, 256, 1.0f / sqrtf(32.0f), 1};
    race(gattn_fast, gattn_ref, reps > 5 ? 5 : reps, &ta, &tb);
    printf("general attention fwd+bwd mixtral-like B 4 T 256 heads 8 kv 2 hd 32 causal: %.2f ms, reference %.1f ms (%.0fx)\n",
           1e3 * ta, 1e3 * tb, tb / ta);

    x = filled((size_t)N * C, 7); y = filled((size_t)N * C, 8); dx = filled((size_t)N * C, 9);
    w = filled(C, 10); bvec = filled(C, 11); dw = filled(C, 12); db = filled(C, 13);
    mean = filled(N, 14); rstd = filled(N, 15);
    race(layernorm, layernorm, reps, &ta, &tb);
    printf("layernorm fwd+bwd %d x %d: %.1f us\n", N, C, 1e6 * (ta < tb ? ta : tb));

    float *h = filled((size_t)N * HH, 16), *W2 = filled((size_t)V * HH, 17), *L = filled((size_t)N * V, 18);
    float *dh = filled((size_t)N * HH, 19), *dW2 = filled((size_t)V * HH, 20);
    head[0] = (GemmCall){0, 1, N, V, HH, 1.0f, h, HH, W2, HH, 0.0f, L, V, 0, NULL};     /* logits = h W2^T */
    head[1] = (GemmCall){0, 0, N, HH, V, 1.0f, L, V, W2, HH, 0.0f, dh, HH, 0, NULL};    /* dh = dlogits W2 */
    head[2] = (GemmCall){1, 0, V, HH, N, 1.0f, L, V, h, HH, 1.0f, dW2, HH, 0, NULL};    /* dW2 += dlogits^T h */
    const char *name[3] = {"logits = h W^T   ", "dh = dlogits W   ", "dW += dlogits^T h"};
    double flop = 2.0 * N * V * HH;
    for (which = 0; which < 3; which++) {
        race(gemm_threaded, gemm_split, reps > 10 ? 10 : reps, &ta, &tb);
        printf("head %s %dx%dx%d: BLAS-threaded %.2f ms (%.0f GFLOP/s), halves side by side %.2f ms (%.0f GFLOP/s), %.2fx\n",
               name[which], head[which].M, head[which].N, head[which].K, 1e3 * ta, flop / ta / 1e9, 1e3 * tb,
               flop / tb / 1e9, ta / tb);
    }

    /* the same weights taken as down-major blocks (the values do not matter, only where they lie) */
    float *hid = filled(HH, 21), *sweep = filled((size_t)12 << 20, 22), *lg = filled(V, 23);
    enum { RUNS = 41 };
    double t256[RUNS], t1024[RUNS];
    unsigned seed = 5;
    for (int r = 0; r < RUNS; r++) {
        for (int k = 0; k < HH; k++) {   /* a new half of the units zero each run, as each token */
            seed = seed * 1664525u + 1013904223u;
            hid[k] = (seed >> 31) ? 0.0f : 0.5f + (float)k / HH;
        }
        t256[r] = head_down(W2, hid, lg, 256, sweep, (size_t)12 << 20);
        t1024[r] = head_down(W2, hid, lg, 1024, sweep, (size_t)12 << 20);
    }
    qsort(t256, RUNS, sizeof(double), cmp_double);
    qsort(t1024, RUNS, sizeof(double), cmp_double);
    printf("head down (generation) %d x %d, half zero: blocks of 256 %.1f us, of 1024 %.1f us (medians of %d), %.2fx\n",
           V, HH, 1e6 * t256[RUNS / 2], 1e6 * t1024[RUNS / 2], RUNS, t256[RUNS / 2] / t1024[RUNS / 2]);
    bf16_lines(1, reps > 10 ? 10 : reps);
    bf16_lines(2, reps > 10 ? 10 : reps);
    return 0;
}
