/* ops.c: forward and backward of every dense layer op, on raw float arrays. See ops.h for the
 * shapes and the accumulation contract. Loops over rows are OpenMP-parallel where each thread owns
 * whole rows of the output; parameter-gradient reductions are written so that each thread owns
 * whole columns (or whole parameters) instead, so results do not depend on the thread count. */
#include "ops.h"

#include <math.h>
#include <string.h>
#include "backend/gemm.h"
#include "ops_simd.h"
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* ---- embeddings -------------------------------------------------------------------------------- */

void encoder_forward(float *out, const int *inp, const float *wte, const float *wpe, int B, int T, int C) {
#pragma omp parallel for schedule(static) if ((size_t)B * T * C >= PAR_MIN_WORK)
    for (int bt = 0; bt < B * T; bt++) {
        const float *te = wte + (size_t)inp[bt] * C;
        const float *pe = wpe ? wpe + (size_t)(bt % T) * C : NULL;
        float *o = out + (size_t)bt * C;
        for (int c = 0; c < C; c++) o[c] = te[c] + (pe ? pe[c] : 0.0f);
    }
}

void encoder_backward(float *dwte, float *dwpe, const float *dout, const int *inp, int B, int T, int C) {
    /* Sequential on purpose: several positions may hold the same token, and a fixed order keeps the
     * sum bit-identical at any thread count. It is O(B*T*C), small next to the matmuls. */
    for (int bt = 0; bt < B * T; bt++) {
        const float *d = dout + (size_t)bt * C;
        float *g = dwte + (size_t)inp[bt] * C;
        for (int c = 0; c < C; c++) g[c] += d[c];
    }
    if (dwpe) {
#pragma omp parallel for schedule(static) if ((size_t)B * T * C >= PAR_MIN_WORK)
        for (int t = 0; t < T; t++) {   /* each thread owns position t's row of dwpe */
            float *g = dwpe + (size_t)t * C;
            for (int b = 0; b < B; b++) {
                const float *d = dout + ((size_t)b * T + t) * C;
                for (int c = 0; c < C; c++) g[c] += d[c];
            }
        }
    }
}

/* ---- norms ----------------------------------------------------------------------------------- */

static inline void layernorm_row(float *o, float *mean, float *rstd, const float *x, const float *w, const float *b,
                                 int C, float eps) {
    /* the row sums over the vector lanes (omp simd): one serial chain of float adds per sum was
     * ~4 cycles an element, 2% of a dense seed step over its 13 norms forward and backward */
    float m = 0.0f;
#pragma omp simd reduction(+ : m)
    for (int c = 0; c < C; c++) m += x[c];
    m /= C;
    float v = 0.0f;
#pragma omp simd reduction(+ : v)
    for (int c = 0; c < C; c++) { float d = x[c] - m; v += d * d; }
    v /= C;
    float s = 1.0f / sqrtf(v + eps);
    for (int c = 0; c < C; c++) o[c] = (x[c] - m) * s * w[c] + b[c];
    *mean = m;
    *rstd = s;
}

/* Below PAR_MIN_WORK the ops run on the calling thread without opening a parallel region: called by
 * every thread of a region (generation), a nested region would cost a team of one per call. */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                       const float *b, int N, int C, float eps) {
    if ((size_t)N * C < PAR_MIN_WORK) {
        for (int n = 0; n < N; n++)
            layernorm_row(out + (size_t)n * C, mean + n, rstd + n, inp + (size_t)n * C, w, b, C, eps);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        layernorm_row(out + (size_t)n * C, mean + n, rstd + n, inp + (size_t)n * C, w, b, C, eps);
}

/* Columns per block in the column-sum reductions below: with d_model 256 a block of 256 left one thread
 * of two idle; 64 (four vectors of sums, kept in registers) gives every thread work. The block
 * size does not change the bits: per column the sum runs over n in order either way. */
#define COL_BLOCK 64

/* Column sums of a [N,C] product, reduced per column in row order so every thread count gives the
 * same bits: dw[c] += sum_n a[n,c] * (b ? b[n,c] : 1). */
static void colsum_product_acc(float *dw, const float *a, const float *b, int N, int C) {
    /* Blocks of CB columns, each owned by one thread, walked row by row (contiguous reads); per column
     * the sum still runs over n in order, so the bits match a column-at-a-time loop. */
    enum { CB = COL_BLOCK };
    int nblk = (C + CB - 1) / CB;
#pragma omp parallel for schedule(static) if ((size_t)N * C >= PAR_MIN_WORK && nblk > 1)
    for (int blk = 0; blk < nblk; blk++) {
        int c0 = blk * CB, nc = C - c0 < CB ? C - c0 : CB;
        float s[CB];
        for (int c = 0; c < nc; c++) s[c] = 0.0f;
        for (int n = 0; n < N; n++) {
            const float *ar = a + (size_t)n * C + c0, *br = b ? b + (size_t)n * C + c0 : NULL;
            if (br) for (int c = 0; c < nc; c++) s[c] += ar[c] * br[c];
            else for (int c = 0; c < nc; c++) s[c] += ar[c];
        }
        for (int c = 0; c < nc; c++) dw[c0 + c] += s[c];
    }
}

void layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, const float *mean, const float *rstd, int N, int C) {
    /* xhat = (x - mean) * rstd; y = xhat * w + b
     * dxhat = dy * w;  dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) */
    if (dw || db) {
        /* dw[c] = sum_n dy[n,c] * xhat[n,c], db[c] = sum_n dy[n,c]: blocks of columns, each owned by one
         * thread, walked row by row (contiguous, vectorised); per column the sum runs over n in order,
         * the same bits as a column-at-a-time loop. */
        enum { CB = COL_BLOCK };
        int nblk = (C + CB - 1) / CB;
#pragma omp parallel for schedule(static) if ((size_t)N * C >= PAR_MIN_WORK && nblk > 1)
        for (int blk = 0; blk < nblk; blk++) {
            int c0 = blk * CB, nc = C - c0 < CB ? C - c0 : CB;
            float sw[CB], sb[CB];
            for (int c = 0; c < nc; c++) sw[c] = sb[c] = 0.0f;
            for (int n = 0; n < N; n++) {
                const float *dy = dout + (size_t)n * C + c0, *x = inp + (size_t)n * C + c0;
                float m = mean[n], r = rstd[n];
                for (int c = 0; c < nc; c++) { sw[c] += dy[c] * (x[c] - m) * r; sb[c] += dy[c]; }
            }
            for (int c = 0; c < nc; c++) {
                if (dw) dw[c0 + c] += sw[c];
                if (db) db[c0 + c] += sb[c];
            }
        }
    }
#pragma omp parallel for schedule(static) if ((size_t)N * C >= PAR_MIN_WORK)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        float m = mean[n], s = rstd[n];
        float a = 0.0f, bsum = 0.0f;
#pragma omp simd reduction(+ : a, bsum)
        for (int c = 0; c < C; c++) {
            float dxh = dy[c] * w[c];
            a += dxh;
            bsum += dxh * (x[c] - m) * s;
        }
        a /= C;
        bsum /= C;
        float *dx = dinp + (size_t)n * C;
        for (int c = 0; c < C; c++) {
            float xh = (x[c] - m) * s;
            dx[c] += s * (dy[c] * w[c] - a - xh * bsum);
        }
    }
}

static inline void rmsnorm_row(float *o, float *rstd, const float *x, const float *w, int C, float eps) {
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int c = 0; c < C; c++) ss += x[c] * x[c];
    float s = 1.0f / sqrtf(ss / C + eps);
    for (int c = 0; c < C; c++) o[c] = x[c] * s * w[c];
    *rstd = s;
}

void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int C, float eps) {
    if ((size_t)N * C < PAR_MIN_WORK) {
        for (int n = 0; n < N; n++) rmsnorm_row(out + (size_t)n * C, rstd + n, inp + (size_t)n * C, w, C, eps);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) rmsnorm_row(out + (size_t)n * C, rstd + n, inp + (size_t)n * C, w, C, eps);
}

void rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                      const float *rstd, int N, int C) {
    /* y = x * s * w, s = (mean(x^2) + eps)^-1/2;  dx = s * (dy*w - x * s^2 * mean(dy*w*x)) */
    if (dw) {   /* column blocks walked row by row, as in layernorm_backward: the same bits */
        enum { CB = COL_BLOCK };
        int nblk = (C + CB - 1) / CB;
#pragma omp parallel for schedule(static) if ((size_t)N * C >= PAR_MIN_WORK && nblk > 1)
        for (int blk = 0; blk < nblk; blk++) {
            int c0 = blk * CB, nc = C - c0 < CB ? C - c0 : CB;
            float sw[CB];
            for (int c = 0; c < nc; c++) sw[c] = 0.0f;
            for (int n = 0; n < N; n++) {
                const float *dy = dout + (size_t)n * C + c0, *x = inp + (size_t)n * C + c0;
                float r = rstd[n];
                for (int c = 0; c < nc; c++) sw[c] += dy[c] * x[c] * r;
            }
            for (int c = 0; c < nc; c++) dw[c0 + c] += sw[c];
        }
    }
#pragma omp parallel for schedule(static) if ((size_t)N * C >= PAR_MIN_WORK)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        float s = rstd[n], a = 0.0f;
#pragma omp simd reduction(+ : a)
        for (int c = 0; c < C; c++) a += dy[c] * w[c] * x[c];
        a /= C;
        float *dx = dinp + (size_t)n * C;
        for (int c = 0; c < C; c++) dx[c] += s * (dy[c] * w[c] - x[c] * s * s * a);
    }
}

/* ---- linear ---------------------------------------------------------------------------------- */

/* bias rows into out[N, OC] (the product then adds itself to them) */
static void bias_rows(float *out, const float *bias, int N, int OC) {
#pragma omp parallel for schedule(static) if ((size_t)N * OC >= PAR_MIN_WORK)
    for (int n = 0; n < N; n++) memcpy(out + (size_t)n * OC, bias, sizeof(float) * OC);
}

void matmul_forward(float *out, const float *inp, const float *w, const float *bias, int N, int C, int OC) {
    if (bias) bias_rows(out, bias, N, OC);
    gemm_halves(1, N, OC, C, 1.0f, inp, C, w, C, bias ? 1.0f : 0.0f, out, OC);
}

/* bf16: gemm_halves_call is gemm_halves with B packed (the same cuts) */
void matmul_forward_bf16(float *out, const float *inp, const Bf16Weight *w16, const float *bias, int N, int C, int OC) {
    if (bias) bias_rows(out, bias, N, OC);
    GemmCall g = {0, 1, N, OC, C, 1.0f, inp, C, NULL, C, bias ? 1.0f : 0.0f, out, OC, 1, w16->fwd};
    gemm_halves_call(&g);
}

void matmul_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                     const float *w, int N, int C, int OC) {
    GemmCall gi = {0, 0, N, C, OC, 1.0f, dout, OC, w, C, 0.0f, dinp, C, 0, NULL};      /* dinp = dout @ w (if dinp) */
    GemmCall gw = {1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dw, C, 0, NULL};       /* dw += dout^T @ inp (if dw) */
    gemm_pair(&gi, &gw);
    if (dbias) colsum_product_acc(dbias, dout, NULL, N, OC);
}

void matmul_backward_bf16(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                          const Bf16Weight *w16, int N, int C, int OC) {
    GemmCall gi = {0, 0, N, C, OC, 1.0f, dout, OC, NULL, C, 0.0f, dinp, C, 1, w16->bwd};   /* dinp = dout @ w */
    GemmCall gw = {1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dw, C, 1, NULL};         /* dw += dout^T @ inp */
    gemm_pair(&gi, &gw);
    if (dbias) colsum_product_acc(dbias, dout, NULL, N, OC);
}

/* ---- attention ------------------------------------------------------------------------------- */

void attention_forward_ref(float *out, float *att, const float *qkv, int B, int T, int C, int NH, int causal) {
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)B * T * T * C >= PAR_MIN_WORK)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {   /* each thread owns one (b, h): its att block and out columns */
            for (int t = 0; t < T; t++) {
                const float *q = qkv + ((size_t)b * T + t) * 3 * C + h * hs;
                float *a = att + (((size_t)b * NH + h) * T + t) * T;
                int tmax = causal ? t : T - 1;
                float mx = -INFINITY;
                for (int u = 0; u <= tmax; u++) {
                    const float *k = qkv + ((size_t)b * T + u) * 3 * C + C + h * hs;
                    float s = 0.0f;
                    for (int i = 0; i < hs; i++) s += q[i] * k[i];
                    s *= scale;
                    a[u] = s;
                    if (s > mx) mx = s;
                }
                float sum = 0.0f;
                for (int u = 0; u <= tmax; u++) { a[u] = expf(a[u] - mx); sum += a[u]; }
                float inv = 1.0f / sum;
                for (int u = 0; u <= tmax; u++) a[u] *= inv;
                for (int u = tmax + 1; u < T; u++) a[u] = 0.0f;
                float *o = out + ((size_t)b * T + t) * C + h * hs;
                for (int i = 0; i < hs; i++) o[i] = 0.0f;
                for (int u = 0; u <= tmax; u++) {
                    const float *v = qkv + ((size_t)b * T + u) * 3 * C + 2 * C + h * hs;
                    float p = a[u];
                    for (int i = 0; i < hs; i++) o[i] += p * v[i];
                }
            }
        }
    }
}

void attention_backward_ref(float *dqkv, float *datt, const float *dout, const float *att, const float *qkv,
                            int B, int T, int C, int NH, int causal) {
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)B * T * T * C >= PAR_MIN_WORK)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {   /* each thread owns the (b, h) slice of dqkv: head columns of batch b */
            for (int t = 0; t < T; t++) {
                float *dq = dqkv + ((size_t)b * T + t) * 3 * C + h * hs;
                float *dk = dq + C, *dv = dq + 2 * C;
                for (int i = 0; i < hs; i++) dq[i] = dk[i] = dv[i] = 0.0f;
            }
            for (int t = 0; t < T; t++) {
                const float *a = att + (((size_t)b * NH + h) * T + t) * T;
                float *da = datt + (((size_t)b * NH + h) * T + t) * T;
                const float *dO = dout + ((size_t)b * T + t) * C + h * hs;
                const float *q = qkv + ((size_t)b * T + t) * 3 * C + h * hs;
                float *dq = dqkv + ((size_t)b * T + t) * 3 * C + h * hs;
                int tmax = causal ? t : T - 1;
                /* out = sum_u a[u] v[u]:  da[u] = dO . v[u];  dv[u] += a[u] dO */
                for (int u = 0; u <= tmax; u++) {
                    const float *v = qkv + ((size_t)b * T + u) * 3 * C + 2 * C + h * hs;
                    float *dv = dqkv + ((size_t)b * T + u) * 3 * C + 2 * C + h * hs;
                    float s = 0.0f;
                    for (int i = 0; i < hs; i++) { s += dO[i] * v[i]; dv[i] += a[u] * dO[i]; }
                    da[u] = s;
                }
                /* softmax backward: ds[u] = a[u] (da[u] - sum_w a[w] da[w]) */
                float dot = 0.0f;
                for (int u = 0; u <= tmax; u++) dot += a[u] * da[u];
                for (int u = 0; u <= tmax; u++) {
                    float ds = a[u] * (da[u] - dot) * scale;
                    const float *k = qkv + ((size_t)b * T + u) * 3 * C + C + h * hs;
                    float *dk = dqkv + ((size_t)b * T + u) * 3 * C + C + h * hs;
                    for (int i = 0; i < hs; i++) { dq[i] += ds * k[i]; dk[i] += ds * q[i]; }
                }
            }
        }
    }
}

/* The fast kernels: the same loops as the references above, with every inner loop over the head
 * dimension (hs) or the keys (u) a vectorised loop: dot products as simd reductions, the softmax's
 * exponentials by exp_poly, and the weighted sums as simd updates. Short sequences (T = 30, hs = 32
 * in the seed config) make a per-(b,h) GEMM too small to pay for its call; these loops keep q, k, v
 * rows in L1. Results differ from the references by float reordering only (tests/test_ops.c). */

void attention_row(float *o, float *a, const float *q, const float *k, const float *v, size_t stride, int n, int hs) {
    float scale = 1.0f / sqrtf((float)hs);
    for (int u = 0; u < n; u++) a[u] = scale * dot_simd(q, k + u * stride, hs);
    softmax_row(a, n);
    for (int i = 0; i < hs; i++) o[i] = 0.0f;
    for (int u = 0; u < n; u++) axpy_simd(o, a[u], v + u * stride, hs);
}

/* Generation's attention over its cache (see ops.h): keys transposed, so that the scores of 16 keys
 * come from one vector (a broadcast multiply-add per dimension, no horizontal sum per key as
 * attention_row has), and values as rows one after another. */
void attention_step(float *o, float *a, const float *q, const float *kT, size_t ldk, const float *v, int n, int hs) {
    step_scores_any(a, q, kT, ldk, n, hs, 1.0f / sqrtf((float)hs));
    softmax_row(a, n);
    step_values_any(o, a, v, n, hs);
}

/* One (b, h) block of attention_forward with the loops above: q, k, v rows of one head, stride C3. */
static void att_block_forward(float *out, float *att, const float *qb, size_t C3, size_t C, int T, int hs, int causal) {
    const float *kb = qb + C, *vb = qb + 2 * C;
    for (int t = 0; t < T; t++) {
        float *a = att + (size_t)t * T;
        int n = (causal ? t : T - 1) + 1;   /* keys 0..n-1 */
        attention_row(out + (size_t)t * C, a, qb + t * C3, kb, vb, C3, n, hs);
        for (int u = n; u < T; u++) a[u] = 0.0f;
    }
}

/* One (b, h) block of attention_backward with the loops above; dq, dk, dv are assigned. */
static void att_block_backward(float *dqb, float *datt, const float *dout, const float *att, const float *qb, size_t C3,
                               size_t C, int T, int hs, int causal) {
    const float *kb = qb + C, *vb = qb + 2 * C;
    float *dkb = dqb + C, *dvb = dqb + 2 * C;
    float scale = 1.0f / sqrtf((float)hs);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < hs; i++) dqb[t * C3 + i] = dkb[t * C3 + i] = dvb[t * C3 + i] = 0.0f;
    for (int t = 0; t < T; t++) {
        const float *a = att + (size_t)t * T;
        float *da = datt + (size_t)t * T;
        const float *dO = dout + (size_t)t * C;
        const float *q = qb + t * C3;
        float *dq = dqb + t * C3;
        int n = (causal ? t : T - 1) + 1;
        /* out = sum_u a[u] v[u]:  da[u] = dO . v[u];  dv[u] += a[u] dO */
        for (int u = 0; u < n; u++) {
            da[u] = dot_simd(dO, vb + u * C3, hs);
            axpy_simd(dvb + u * C3, a[u], dO, hs);
        }
        /* softmax backward: ds[u] = a[u] (da[u] - sum_w a[w] da[w]), times the score scale */
        float dot = dot_simd(a, da, n);
        for (int u = 0; u < n; u++) {
            float ds = a[u] * (da[u] - dot) * scale;
            axpy_simd(dq, ds, kb + u * C3, hs);
            axpy_simd(dkb + u * C3, ds, q, hs);
        }
    }
}

#if defined(__AVX512F__)
/* The blocked kernels for a head width of 16, 32, 48 or 64 floats (hs/16 vectors) and rows of at most
 * ATT_TMAX keys. The loops above spend most of their time in dot products of hs floats, each ending
 * in a horizontal sum. Here a block's keys (or values) are first transposed into KT [hs][Tp] (Tp: T
 * rounded up to 16), so that 16 scores come out of one vector: hs broadcast-multiply-adds, no
 * horizontal sum; weighted sums of rows run as four independent chains per vector. The seed config's
 * head (T = 30, hs = 32) ran 2-3x faster than with the loops above. Results differ from the
 * references by float reordering only (tests/test_ops.c). */
#define ATT_TMAX 128
#define ATT_HSMAX 64

static int att_blocked(int T, int hs) { return hs % 16 == 0 && hs <= ATT_HSMAX && T <= ATT_TMAX; }

/* r[j][k] = r[k][j] for a 16 x 16 tile in registers: interleave pairs of rows, then pairs of pairs
 * (64-bit), then 128-bit lanes twice */
static inline void transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int m = 0; m < 8; m++) {
        t[2 * m] = _mm512_unpacklo_ps(r[2 * m], r[2 * m + 1]);
        t[2 * m + 1] = _mm512_unpackhi_ps(r[2 * m], r[2 * m + 1]);
    }
    for (int p = 0; p < 4; p++) {   /* u[4p + q], lane l: column 4l + q of rows 4p..4p+3 */
        u[4 * p] = _mm512_shuffle_ps(t[4 * p], t[4 * p + 2], 0x44);
        u[4 * p + 1] = _mm512_shuffle_ps(t[4 * p], t[4 * p + 2], 0xEE);
        u[4 * p + 2] = _mm512_shuffle_ps(t[4 * p + 1], t[4 * p + 3], 0x44);
        u[4 * p + 3] = _mm512_shuffle_ps(t[4 * p + 1], t[4 * p + 3], 0xEE);
    }
    for (int q = 0; q < 4; q++) {   /* gather lane l of u[q], u[4+q], u[8+q], u[12+q] into row 4l + q */
        __m512 v0 = _mm512_shuffle_f32x4(u[q], u[4 + q], 0x88), v1 = _mm512_shuffle_f32x4(u[q], u[4 + q], 0xDD);
        __m512 v2 = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0x88), v3 = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0xDD);
        r[q] = _mm512_shuffle_f32x4(v0, v2, 0x88);
        r[8 + q] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
        r[4 + q] = _mm512_shuffle_f32x4(v1, v3, 0x88);
        r[12 + q] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
    }
}

/* XT[i * Tp + u] = x[u * stride + i] for u < T, zero for T <= u < Tp, in 16 x 16 tiles */
static void att_transpose(float *XT, const float *x, size_t stride, int T, int Tp, int hs) {
    __m512 r[16];
    for (int j = 0; j < Tp; j += 16)
        for (int c = 0; c < hs; c += 16) {
            for (int k = 0; k < 16; k++) r[k] = j + k < T ? _mm512_loadu_ps(x + (j + k) * stride + c) : _mm512_setzero_ps();
            transpose16(r);
            for (int k = 0; k < 16; k++) _mm512_store_ps(XT + (size_t)(c + k) * Tp + j, r[k]);
        }
}

/* s[u] = scale * (x . XT[:, u]) for u < 16 nb: 16 keys per vector, four chains over the head */
static void att_dots(float *s, const float *x, const float *XT, int Tp, int nb, int hs, float scale) {
    for (int j = 0; j < nb; j++) {
        const float *c = XT + 16 * j;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int i = 0; i < hs; i += 4) {
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(x[i]), _mm512_loadu_ps(c + (size_t)i * Tp), a0);
            a1 = _mm512_fmadd_ps(_mm512_set1_ps(x[i + 1]), _mm512_loadu_ps(c + (size_t)(i + 1) * Tp), a1);
            a2 = _mm512_fmadd_ps(_mm512_set1_ps(x[i + 2]), _mm512_loadu_ps(c + (size_t)(i + 2) * Tp), a2);
            a3 = _mm512_fmadd_ps(_mm512_set1_ps(x[i + 3]), _mm512_loadu_ps(c + (size_t)(i + 3) * Tp), a3);
        }
        __m512 sum = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
        _mm512_storeu_ps(s + 16 * j, _mm512_mul_ps(sum, _mm512_set1_ps(scale)));
    }
}

/* o = sum_{u < n} w[u] x_u (rows of hs floats, stride apart), assigned; four chains per vector */
static void att_weighted_rows(float *o, const float *w, const float *x, size_t stride, int n, int hs) {
    for (int c = 0; c < hs; c += 16) {
        const float *xc = x + c;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int u = 0;
        for (; u + 4 <= n; u += 4) {
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(w[u]), _mm512_loadu_ps(xc + u * stride), a0);
            a1 = _mm512_fmadd_ps(_mm512_set1_ps(w[u + 1]), _mm512_loadu_ps(xc + (u + 1) * stride), a1);
            a2 = _mm512_fmadd_ps(_mm512_set1_ps(w[u + 2]), _mm512_loadu_ps(xc + (u + 2) * stride), a2);
            a3 = _mm512_fmadd_ps(_mm512_set1_ps(w[u + 3]), _mm512_loadu_ps(xc + (u + 3) * stride), a3);
        }
        for (; u < n; u++) a0 = _mm512_fmadd_ps(_mm512_set1_ps(w[u]), _mm512_loadu_ps(xc + u * stride), a0);
        _mm512_storeu_ps(o + c, _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    }
}

/* y_u += w[u] x for u < n (rows of hs floats, contiguous) */
static void att_rank1_rows(float *y, const float *w, const float *x, int n, int hs) {
    for (int u = 0; u < n; u++) {
        __m512 wu = _mm512_set1_ps(w[u]);
        for (int c = 0; c < hs; c += 16) {
            float *yc = y + u * hs + c;
            _mm512_storeu_ps(yc, _mm512_fmadd_ps(wu, _mm512_loadu_ps(x + c), _mm512_loadu_ps(yc)));
        }
    }
}

static void att_block_forward_blocked(float *out, float *att, const float *qb, size_t C3, size_t C, int T, int hs,
                                      int causal) {
    int Tp = (T + 15) & ~15;
    float KT[ATT_HSMAX * ATT_TMAX] __attribute__((aligned(64))), s[ATT_TMAX] __attribute__((aligned(64)));
    att_transpose(KT, qb + C, C3, T, Tp, hs);
    float scale = 1.0f / sqrtf((float)hs);
    for (int t = 0; t < T; t++) {
        int n = (causal ? t : T - 1) + 1;
        int np = (n + 15) & ~15;   /* whole vectors: keys n..np-1 are masked, no scalar tail */
        att_dots(s, qb + t * C3, KT, Tp, np / 16, hs, scale);
        for (int u = n; u < np; u++) s[u] = -INFINITY;   /* exp_poly gives 1e-38 there, against a sum >= 1 */
        float mx = row_max(s, np), sum = exp_row(s, s, np, mx);
        float inv = 1.0f / sum, *a = att + (size_t)t * T;
#pragma omp simd
        for (int u = 0; u < np; u++) s[u] *= inv;
        memcpy(a, s, sizeof(float) * n);
        for (int u = n; u < T; u++) a[u] = 0.0f;
        att_weighted_rows(out + (size_t)t * C, s, qb + 2 * C, C3, n, hs);
    }
}

static void att_block_backward_blocked(float *dqb, float *datt, const float *dout, const float *att, const float *qb,
                                       size_t C3, size_t C, int T, int hs, int causal) {
    int Tp = (T + 15) & ~15;
    float VT[ATT_HSMAX * ATT_TMAX] __attribute__((aligned(64))), ds[ATT_TMAX] __attribute__((aligned(64)));
    float ap[ATT_TMAX] __attribute__((aligned(64)));   /* a row of att, zero up to whole vectors */
    /* dk and dv accumulate here, rows hs apart, and are copied out at the end: rows of dqkv lie 3C
     * apart, so k and v rows of different positions share their address mod 4 KiB, and a load after
     * a store to such a row waited on it (measured 1.5x slower) */
    float dK[ATT_TMAX * ATT_HSMAX] __attribute__((aligned(64))), dV[ATT_TMAX * ATT_HSMAX] __attribute__((aligned(64)));
    att_transpose(VT, qb + 2 * C, C3, T, Tp, hs);
    memset(dK, 0, sizeof(float) * T * hs);
    memset(dV, 0, sizeof(float) * T * hs);
    float scale = 1.0f / sqrtf((float)hs);
    for (int t = 0; t < T; t++) {
        const float *a = att + (size_t)t * T, *dO = dout + (size_t)t * C, *q = qb + t * C3;
        int n = (causal ? t : T - 1) + 1, np = (n + 15) & ~15;
        memcpy(ap, a, sizeof(float) * n);
        for (int u = n; u < np; u++) ap[u] = 0.0f;
        /* out = sum_u a[u] v[u]:  da[u] = dO . v[u];  dv[u] += a[u] dO */
        att_dots(ds, dO, VT, Tp, np / 16, hs, 1.0f);
        memcpy(datt + (size_t)t * T, ds, sizeof(float) * n);
        att_rank1_rows(dV, a, dO, n, hs);
        /* softmax backward: ds[u] = a[u] (da[u] - sum_w a[w] da[w]), times the score scale */
        float dot = dot_simd(ap, ds, np);
#pragma omp simd
        for (int u = 0; u < np; u++) ds[u] = ap[u] * (ds[u] - dot) * scale;
        att_rank1_rows(dK, ds, q, n, hs);                           /* dk[u] += ds[u] q */
        att_weighted_rows(dqb + t * C3, ds, qb + C, C3, n, hs);   /* dq = sum_u ds[u] k_u */
    }
    for (int u = 0; u < T; u++) {
        memcpy(dqb + C + u * C3, dK + u * hs, sizeof(float) * hs);
        memcpy(dqb + 2 * C + u * C3, dV + u * hs, sizeof(float) * hs);
    }
}
#else
static int att_blocked(int T, int hs) { (void)T; (void)hs; return 0; }
static void att_block_forward_blocked(float *out, float *att, const float *qb, size_t C3, size_t C, int T, int hs,
                                      int causal) { att_block_forward(out, att, qb, C3, C, T, hs, causal); }
static void att_block_backward_blocked(float *dqb, float *datt, const float *dout, const float *att, const float *qb,
                                       size_t C3, size_t C, int T, int hs, int causal) {
    att_block_backward(dqb, datt, dout, att, qb, C3, C, T, hs, causal);
}
#endif

void attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int NH, int causal) {
    int hs = C / NH, blocked = att_blocked(T, hs);
    size_t C3 = (size_t)3 * C;
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)B * T * T * C >= PAR_MIN_WORK)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {   /* each thread owns one (b, h): its att block and out columns */
            const float *qb = qkv + (size_t)b * T * C3 + h * hs;
            float *ob = out + (size_t)b * T * C + h * hs, *ab = att + ((size_t)b * NH + h) * T * T;
            if (blocked) att_block_forward_blocked(ob, ab, qb, C3, C, T, hs, causal);
            else att_block_forward(ob, ab, qb, C3, C, T, hs, causal);
        }
    }
}

void attention_backward(float *dqkv, float *datt, const float *dout, const float *att, const float *qkv,
                        int B, int T, int C, int NH, int causal) {
    int hs = C / NH, blocked = att_blocked(T, hs);
    size_t C3 = (size_t)3 * C;
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)B * T * T * C >= PAR_MIN_WORK)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {   /* each thread owns the (b, h) slice of dqkv: head columns of batch b */
            size_t o = (size_t)b * T * C3 + h * hs, oa = ((size_t)b * NH + h) * T * T;
            const float *dob = dout + (size_t)b * T * C + h * hs;
            if (blocked) att_block_backward_blocked(dqkv + o, datt + oa, dob, att + oa, qkv + o, C3, C, T, hs, causal);
            else att_block_backward(dqkv + o, datt + oa, dob, att + oa, qkv + o, C3, C, T, hs, causal);
        }
    }
}

/* ---- activations ----------------------------------------------------------------------------- */

/* GELU (the exact, erf form) with branch-free arithmetic only, so that its loops vectorise: libm's
 * erff and expf are calls the compiler cannot vectorise without -ffast-math, and took 12% of a
 * dense-ptb step (perf, bench/RESULTS.md). gauss(x) = exp(-x^2 / 2) by exp_poly; a NaN x gives 1 (not
 * a NaN cast to an integer inside exp_poly): the callers carry NaN through their factor x. */
static inline float gauss(float x) {
    float a = -0.5f * x * x;
    return exp_poly(a <= 0.0f ? a : 0.0f);
}

/* Phi(x) = (1 + erf(x / sqrt 2)) / 2 given e = exp(-x^2 / 2), with erf(z) for z >= 0 from
 * Abramowitz & Stegun 7.1.26: 1 - (a1 t + .. + a5 t^5) e^{-z^2}, t = 1 / (1 + p z), absolute error
 * below 1.5e-7 (float rounding adds ~1e-7); erf is odd. */
static inline float normal_cdf(float x, float e) {
    float z = fabsf(x) * 0.70710678118654752f;
    float t = 1.0f / fmaf(0.3275911f, z, 1.0f);
    float q = fmaf(fmaf(fmaf(fmaf(1.061405429f, t, -1.453152027f), t, 1.421413741f), t, -0.284496736f), t, 0.254829592f);
    float erf_abs = 1.0f - q * t * e;
    return 0.5f + 0.5f * (x < 0.0f ? -erf_abs : erf_abs);
}

static inline float gelu(float x) { return x * normal_cdf(x, gauss(x)); }
static inline float gelu_grad(float x) {
    /* d/dx x*Phi(x) = Phi(x) + x*phi(x), phi(x) = e / sqrt(2 pi) */
    float e = gauss(x);
    return normal_cdf(x, e) + x * (0.39894228040143268f * e);
}
static inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

#if defined(__AVX2__) && defined(__FMA__)
/* gauss, normal_cdf, gelu and gelu_grad on 8 lanes: the same operations in the same order (-std=c11
 * contracts nothing), so each lane has the scalar function's bits. GCC 12 tuning for Zen left their
 * loops scalar (ops_simd.h exp_poly8). */
static inline __m256 gauss8(__m256 x) {
    __m256 a = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(-0.5f), x), x), zero = _mm256_setzero_ps();
    return exp_poly8(_mm256_blendv_ps(zero, a, _mm256_cmp_ps(a, zero, _CMP_LE_OQ)));   /* NaN: 0 */
}
static inline __m256 normal_cdf8(__m256 x, __m256 e) {
    __m256 z = _mm256_mul_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), x), _mm256_set1_ps(0.70710678118654752f));
    __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), z, _mm256_set1_ps(1.0f)));
    __m256 q = _mm256_fmadd_ps(_mm256_set1_ps(1.061405429f), t, _mm256_set1_ps(-1.453152027f));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(1.421413741f));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(-0.284496736f));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(0.254829592f));
    __m256 erf_abs = _mm256_sub_ps(_mm256_set1_ps(1.0f), _mm256_mul_ps(_mm256_mul_ps(q, t), e));
    __m256 neg = _mm256_xor_ps(erf_abs, _mm256_set1_ps(-0.0f));
    __m256 sel = _mm256_blendv_ps(erf_abs, neg, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
    return _mm256_add_ps(_mm256_set1_ps(0.5f), _mm256_mul_ps(_mm256_set1_ps(0.5f), sel));
}
static inline __m256 gelu8(__m256 x) { return _mm256_mul_ps(x, normal_cdf8(x, gauss8(x))); }
static inline __m256 gelu_grad8(__m256 x) {
    __m256 e = gauss8(x);
    return _mm256_add_ps(normal_cdf8(x, e), _mm256_mul_ps(x, _mm256_mul_ps(_mm256_set1_ps(0.39894228040143268f), e)));
}
#endif

/* gelu_new's factor (1 + tanh u) / 2 = sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3), by exp_poly so
 * that the loops vectorise; exactly 0 where exp(-2u) would pass 2^127 (x below about -10: HF's
 * 1 + tanh is 0 there too), and 1/2 for a NaN x (kept out of exp_poly's integer cast; the callers
 * carry NaN through their factor x). */
static inline float gelu_tanh_factor(float x) {
    float a = -2.0f * 0.79788456080286536f * (x + 0.044715f * x * x * x);
    float e = exp_poly(a <= 88.0f ? a : 0.0f);
    return a > 88.0f ? 0.0f : 1.0f / (1.0f + e);
}
static inline float gelu_tanh(float x) { return x * gelu_tanh_factor(x); }
/* d/dx x s(x) = s + x s (1 - s) 2 u'(x), u' = sqrt(2/pi) (1 + 3 0.044715 x^2); beyond |x| = 10 the
 * second term is below 1e-30 and x is clamped there (x^2 would overflow into 0 * inf); NaN stays NaN */
static inline float gelu_tanh_grad(float x) {
    float s = gelu_tanh_factor(x), xc = x > 10.0f ? 10.0f : x < -10.0f ? -10.0f : x;
    return s + xc * s * (1.0f - s) * (2.0f * 0.79788456080286536f) * (1.0f + 3.0f * 0.044715f * xc * xc);
}

/* columns [lo, hi) of one row: the one loop behind activation_forward and a team's share of a row */
void activation_forward_cols(float *out, const float *inp, Activation act, int H, int lo, int hi) {
    if (act == ACT_SWIGLU) {
        for (int i = lo; i < hi; i++) out[i] = inp[i] * sigmoid(inp[i]) * inp[H + i];
    } else if (act == ACT_GEGLU) {
#pragma omp simd
        for (int i = lo; i < hi; i++) out[i] = gelu_tanh(inp[i]) * inp[H + i];
    } else if (act == ACT_GELU_TANH) {
#pragma omp simd
        for (int i = lo; i < hi; i++) out[i] = gelu_tanh(inp[i]);
    } else if (act == ACT_RELU) {   /* its own loop: a select, so it vectorises */
#pragma omp simd
        for (int i = lo; i < hi; i++) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
    } else {
        int i = lo;
#if defined(__AVX2__) && defined(__FMA__)
        for (; i + 8 <= hi; i += 8) _mm256_storeu_ps(out + i, gelu8(_mm256_loadu_ps(inp + i)));
#endif
        for (; i < hi; i++) out[i] = gelu(inp[i]);
    }
}

void activation_forward(float *out, const float *inp, Activation act, int N, int H) {
    size_t in_row = (size_t)activation_in_width(act, H);
#pragma omp parallel for schedule(static) if ((size_t)N * H >= PAR_MIN_WORK)
    for (int n = 0; n < N; n++) activation_forward_cols(out + (size_t)n * H, inp + (size_t)n * in_row, act, H, 0, H);
}

void activation_backward(float *dinp, const float *dout, const float *inp, Activation act, int N, int H) {
    if (activation_gated(act)) {
#pragma omp parallel for schedule(static) if ((size_t)N * H >= PAR_MIN_WORK)
        for (int n = 0; n < N; n++) {
            const float *g = inp + (size_t)n * 2 * H, *u = g + H;
            const float *dy = dout + (size_t)n * H;
            float *dg = dinp + (size_t)n * 2 * H, *du = dg + H;
            if (act == ACT_SWIGLU) {
                for (int i = 0; i < H; i++) {
                    /* y = silu(g) u;  silu'(g) = s (1 + g (1 - s)), s = sigmoid(g) */
                    float s = sigmoid(g[i]);
                    float silu = g[i] * s;
                    dg[i] = dy[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
                    du[i] = dy[i] * silu;
                }
            } else {
#pragma omp simd
                for (int i = 0; i < H; i++) {   /* y = gelu_new(g) u */
                    dg[i] = dy[i] * u[i] * gelu_tanh_grad(g[i]);
                    du[i] = dy[i] * gelu_tanh(g[i]);
                }
            }
        }
        return;
    }
    size_t total = (size_t)N * H;
    if (act == ACT_GELU_TANH) {
#pragma omp parallel for simd schedule(static) if (total >= PAR_MIN_WORK)
        for (size_t i = 0; i < total; i++) dinp[i] = dout[i] * gelu_tanh_grad(inp[i]);
        return;
    }
    if (act == ACT_RELU) {   /* dout * 1[x > 0], written as a select of the two products: the same bits */
        size_t done = 0;
#if defined(__AVX2__) && defined(__FMA__)
        done = total / 8 * 8;   /* 8 lanes by hand: GCC 12 tuning for Zen kept the select a branch */
#pragma omp parallel for schedule(static) if (total >= PAR_MIN_WORK)
        for (size_t i = 0; i < done; i += 8) {
            __m256 d = _mm256_loadu_ps(dout + i), keep = _mm256_cmp_ps(_mm256_loadu_ps(inp + i), _mm256_setzero_ps(), _CMP_GT_OQ);
            _mm256_storeu_ps(dinp + i, _mm256_blendv_ps(_mm256_mul_ps(d, _mm256_setzero_ps()),
                                                        _mm256_mul_ps(d, _mm256_set1_ps(1.0f)), keep));
        }
#endif
        for (size_t i = done; i < total; i++) dinp[i] = inp[i] > 0.0f ? dout[i] * 1.0f : dout[i] * 0.0f;
        return;
    }
    size_t done = 0;
#if defined(__AVX2__) && defined(__FMA__)
    done = total / 8 * 8;
#pragma omp parallel for schedule(static) if (total >= PAR_MIN_WORK)
    for (size_t i = 0; i < done; i += 8)
        _mm256_storeu_ps(dinp + i, _mm256_mul_ps(_mm256_loadu_ps(dout + i), gelu_grad8(_mm256_loadu_ps(inp + i))));
#endif
    for (size_t i = done; i < total; i++) dinp[i] = dout[i] * gelu_grad(inp[i]);
}

/* ---- dropout ----------------------------------------------------------------------------------- */

void dropout_forward(float *out, uint8_t *mask, const float *inp, float p, size_t n, uint64_t key, uint64_t first) {
    if (p <= 0.0f) {
        if (out != inp) memcpy(out, inp, n * sizeof(float));
        memset(mask, 1, n);
        return;
    }
    /* element i keeps with the draw rng_at_uniform(key, first + i): computed alone, so any thread count,
     * the vector lanes and any split of the rows over ranks give the same mask */
    float scale = 1.0f / (1.0f - p);
#pragma omp parallel for simd schedule(static) if (n >= PAR_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        float u = rng_at_uniform(key, first + i);
        mask[i] = u >= p;
        out[i] = u >= p ? inp[i] * scale : 0.0f;
    }
}

void dropout_backward(float *dinp, const float *dout, const uint8_t *mask, float p, size_t n) {
    float scale = p > 0.0f ? 1.0f / (1.0f - p) : 1.0f;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN_WORK)
    for (size_t i = 0; i < n; i++) dinp[i] = mask[i] ? dout[i] * scale : 0.0f;
}

/* ---- softmax and cross-entropy --------------------------------------------------------------- */

void softmax_forward(float *out, const float *inp, int N, int V) {
#pragma omp parallel for schedule(static) if ((size_t)N * V >= PAR_MIN_WORK)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * V;
        float *y = out + (size_t)n * V;
        float mx = -INFINITY;
        for (int v = 0; v < V; v++) if (x[v] > mx) mx = x[v];
        float sum = 0.0f;
        for (int v = 0; v < V; v++) { y[v] = expf(x[v] - mx); sum += y[v]; }
        float inv = 1.0f / sum;
        for (int v = 0; v < V; v++) y[v] *= inv;
    }
}

void crossentropy_forward(float *losses, float *lse, const float *logits, const int *targets, int N, int V) {
#pragma omp parallel for schedule(static) if ((size_t)N * V >= PAR_MIN_WORK)
    for (int n = 0; n < N; n++) {
        if (targets[n] < 0) { losses[n] = 0.0f; continue; }
        const float *x = logits + (size_t)n * V;
        float mx = row_max(x, V);
        double l = log((double)row_sumexp(x, V, mx)) + mx;
        losses[n] = (float)(l - x[targets[n]]);
        if (lse) lse[n] = (float)l;
    }
}

void crossentropy_backward(float *dlogits, const float *logits, const float *lse, const int *targets,
                           const float *dlosses, int N, int V) {
#pragma omp parallel for schedule(static) if ((size_t)N * V >= PAR_MIN_WORK)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;
        float *d = dlogits + (size_t)n * V;
        if (targets[n] < 0) { memset(d, 0, sizeof(float) * V); continue; }
        float g = dlosses[n], l = lse[n];
        /* d = g (softmax - onehot), 8 lanes at a time: element v is read then written, so the in-place case
         * (d == x) carries no dependence between iterations; x <= lse, so exp_poly sees x - l <= 0 */
        int v = 0;
#if defined(__AVX2__) && defined(__FMA__)
        __m256 gv = _mm256_set1_ps(g), lv = _mm256_set1_ps(l);
        for (; v + 8 <= V; v += 8)
            _mm256_storeu_ps(d + v, _mm256_mul_ps(gv, exp_poly8(_mm256_sub_ps(_mm256_loadu_ps(x + v), lv))));
#endif
        for (; v < V; v++) d[v] = g * exp_poly(x[v] - l);
        d[targets[n]] -= g;
    }
}

void add_forward(float *out, const float *a, const float *b, size_t n) {
    if (n < PAR_MIN_WORK) {
        for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
        return;
    }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}
