/* gemm.c: reference GEMM and the BLAS behind the same signature. See gemm.h. */
#include "gemm.h"
#include "gemv.h"
#include "readprobe.h"
#include "barrier.h"
#include "runtime.h"
#include "gemm_bf16.h"
#include "common/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
/* iterations a libgomp thread spins at a barrier before it sleeps (libgomp: 300000, or 1000 when it
 * sees more threads than CPUs; it cannot see other processes) */
#define MOELM_GOMP_SPINCOUNT "10000"

#ifdef MOELM_BLAS
#include <cblas.h>
#endif
#include <sched.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void spin_pause(void) { _mm_pause(); }
#else
static inline void spin_pause(void) {}
#endif

void gemm_ref(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc) {
    /* Each (i) row of C is written by one thread only. Accumulation in double keeps the reference
     * a reference: it is what the fast path is compared against. */
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            double acc = 0.0;
            for (int k = 0; k < K; k++) {
                float a = transA ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                float b = transB ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                acc += (double)a * (double)b;
            }
            float *c = &C[(size_t)i * ldc + j];
            *c = (float)(alpha * acc + (beta == 0.0f ? 0.0 : (double)beta * (double)*c));
        }
    }
}

static void gemm_call(const GemmCall *g) {
    if (g->Bp) gemm_bf16_packed(g->transA, g->M, g->N, g->K, g->alpha, g->A, g->lda, g->Bp, g->beta, g->C, g->ldc);
    else if (g->bf16) gemm_bf16(g->transA, g->transB, g->M, g->N, g->K, g->alpha, g->A, g->lda, g->B, g->ldb, g->beta, g->C, g->ldc);
    else gemm(g->transA, g->transB, g->M, g->N, g->K, g->alpha, g->A, g->lda, g->B, g->ldb, g->beta, g->C, g->ldc);
}

/* Multiply-adds up to which a product counts as small for gemm_pair. */
#define GEMM_PAIR_MAX_MACS ((double)(1 << 30))

/* Whether two products of these sizes run side by side (see gemm_pair). */
static int pair_side_by_side(const GemmCall *a, const GemmCall *b) {
#ifdef _OPENMP
    double ma = (double)a->M * a->N * a->K, mb = (double)b->M * b->N * b->K;
    return omp_get_max_threads() == 2 && !omp_in_parallel() && ma <= GEMM_PAIR_MAX_MACS && mb <= GEMM_PAIR_MAX_MACS;
#else
    (void)a; (void)b;
    return 0;
#endif
}

/* a on thread 0 and b on thread 1 of a team of two (BLAS runs single-threaded inside the region) */
static void side_by_side(const GemmCall *a, const GemmCall *b) {
#pragma omp parallel num_threads(2)
    {
#ifdef _OPENMP
        gemm_call(omp_get_thread_num() == 0 ? a : b);
#else
        gemm_call(a);
        gemm_call(b);
#endif
    }
}

/* A product above GEMM_PAIR_MAX_MACS, with two threads outside a region: cut in two along its longer
 * side of C and run side by side, one thread per half, instead of one gemm() that BLAS threads. Each
 * half packs the operand the cut does not split (the smaller one, since the cut runs along the longer
 * side) for itself, and the halves never wait on each other; BLAS's own two-thread split shares packed
 * panels and waits for them (sched_yield on this VM). The seed head's products (1920 x 10000 x 512),
 * bench/RESULTS.md: dlogits @ W 284-291 -> 333-336 GFLOP/s, dlogits^T @ x 317-322 -> 342-347, the
 * logits product the same, a 2048^3 product the same. The cut changes no element's sum over K. */
static void gemm_big(const GemmCall *g) {
#ifdef _OPENMP
    double macs = (double)g->M * g->N * g->K;
    if (omp_get_max_threads() == 2 && !omp_in_parallel() && macs > GEMM_PAIR_MAX_MACS) {
        GemmCall a = *g, b = *g;
        /* a packed B is cut between its panels of GEMM_BF16_NR columns */
        int ncut = g->Bp ? g->N / 2 / GEMM_BF16_NR * GEMM_BF16_NR : g->N / 2;
        if (g->N > g->M && ncut > 0) {   /* columns of C: rows of B^T, or columns of B */
            a.N = ncut;
            b.N = g->N - a.N;
            b.B = g->transB ? g->B + (size_t)a.N * g->ldb : g->B + a.N;
            if (g->Bp) b.Bp = g->Bp + gemm_bf16_packed_offset(g->K, a.N);
            b.C = g->C + a.N;
        } else {             /* rows of C: columns of A^T, or rows of A */
            a.M = g->M / 2;
            b.M = g->M - a.M;
            b.A = g->transA ? g->A + a.M : g->A + (size_t)a.M * g->lda;
            b.C = g->C + (size_t)a.M * g->ldc;
        }
        side_by_side(&a, &b);
        return;
    }
#endif
    gemm_call(g);
}

void gemm_pair(const GemmCall *a, const GemmCall *b) {
    if (!a->C || !b->C) {   /* one product asked for */
        if (a->C) gemm_big(a);
        if (b->C) gemm_big(b);
    } else if (pair_side_by_side(a, b)) {
        side_by_side(a, b);
    } else {
        gemm_big(a);
        gemm_big(b);
    }
}

void gemm_halves_call(const GemmCall *g) {
    CHECK(!g->transA);
    int h = g->M / 2;
    GemmCall top = *g, bot = *g;
    top.M = h;
    bot.M = g->M - h;
    bot.A = g->A + (size_t)h * g->lda;
    bot.C = g->C + (size_t)h * g->ldc;
    if (h > 0 && pair_side_by_side(&top, &bot)) side_by_side(&top, &bot);
    else gemm_big(g);
}

void gemm_halves(int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc) {
    GemmCall whole = {0, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, 0, NULL};
    gemm_halves_call(&whole);
}

/* y[n] = alpha * W[n,:] . x + beta * y[n] for n < N (W row-major [N, K], stride ldw): the matrix-vector
 * product of generation, where each layer sees one row. It streams W once, so it is bound by how fast
 * the weights arrive. OpenBLAS 0.3.21 would pack all of W as for a GEMM (sgemm), or open a parallel
 * region per call whose waits stalled on the shared machine (sgemv: 6.5 vs 132 tokens/s at 2 threads).
 * Here each row is one dot product read front to back (one sequential stream, which the hardware
 * prefetcher follows; four rows read side by side, 1 KiB apart, streamed 1.45x slower), and the rows
 * are split over the threads when W is large enough for two cores to pay: each row is computed by one
 * thread with the same code, so the bits do not depend on the thread count. beta == 0 does not read y. */
#define GEMV_PAR_MIN ((size_t)1 << 20)   /* floats of W (4 MiB, ~200 us): a region must outlast waking the second thread */

static inline float bf16_widen(uint16_t h);

#if defined(__AVX512F__)
/* x . w over K floats: four independent sums over 64-float steps (one FMA chain would wait on its own
 * latency), then 16-float steps, then a masked tail; summed in a fixed order. */
static inline float dot_row(const float *w, const float *x, int K) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int k = 0;
    for (; k + 64 <= K; k += 64) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), _mm512_loadu_ps(x + k), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 16), _mm512_loadu_ps(x + k + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 32), _mm512_loadu_ps(x + k + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 48), _mm512_loadu_ps(x + k + 48), a3);
    }
    for (; k + 16 <= K; k += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), _mm512_loadu_ps(x + k), a0);
    if (k < K) {
        __mmask16 m = (__mmask16)((1u << (K - k)) - 1u);
        a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + k), _mm512_maskz_loadu_ps(m, x + k), a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

/* the same with bf16 weights, each widened to float exactly (a 16-bit shift) */
static inline __m512 widen16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }

static inline float dot_row_bf16(const uint16_t *w, const float *x, int K) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int k = 0;
    for (; k + 64 <= K; k += 64) {
        a0 = _mm512_fmadd_ps(widen16(_mm256_loadu_si256((const __m256i *)(w + k))), _mm512_loadu_ps(x + k), a0);
        a1 = _mm512_fmadd_ps(widen16(_mm256_loadu_si256((const __m256i *)(w + k + 16))), _mm512_loadu_ps(x + k + 16), a1);
        a2 = _mm512_fmadd_ps(widen16(_mm256_loadu_si256((const __m256i *)(w + k + 32))), _mm512_loadu_ps(x + k + 32), a2);
        a3 = _mm512_fmadd_ps(widen16(_mm256_loadu_si256((const __m256i *)(w + k + 48))), _mm512_loadu_ps(x + k + 48), a3);
    }
    for (; k + 16 <= K; k += 16)
        a0 = _mm512_fmadd_ps(widen16(_mm256_loadu_si256((const __m256i *)(w + k))), _mm512_loadu_ps(x + k), a0);
    if (k < K) {
        __mmask16 m = (__mmask16)((1u << (K - k)) - 1u);
        a1 = _mm512_fmadd_ps(widen16(_mm256_maskz_loadu_epi16(m, w + k)), _mm512_maskz_loadu_ps(m, x + k), a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

uint32_t read_words(const uint32_t *a, size_t n) {
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i + 64 <= n; i += 64) {
        s0 = _mm512_xor_si512(s0, _mm512_loadu_si512(a + i));
        s1 = _mm512_xor_si512(s1, _mm512_loadu_si512(a + i + 16));
        s2 = _mm512_xor_si512(s2, _mm512_loadu_si512(a + i + 32));
        s3 = _mm512_xor_si512(s3, _mm512_loadu_si512(a + i + 48));
    }
    return (uint32_t)_mm512_reduce_or_epi32(_mm512_xor_si512(_mm512_xor_si512(s0, s1), _mm512_xor_si512(s2, s3)));
}
#elif defined(__AVX2__) && defined(__FMA__)
/* The AVX2 forms of the two above (machines without AVX-512): four independent sums of 8 floats over
 * 32-float steps (one chain would wait on the FMA's latency: 8 floats per 4-5 cycles, slower than L3
 * delivers a small model's weights), then 8-float steps, the lanes summed in a fixed order, then the tail (K % 8) one FMA at a
 * time. */
static inline float hsum8(__m256 v) {
    __m128 h4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
    return _mm_cvtss_f32(_mm_add_ss(h2, _mm_movehdup_ps(h2)));
}

static inline __m256 widen8(const uint16_t *h) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)h)), 16));
}

/* x . w (w float, or bf16 widened exactly when bf16); both forms are this code inlined */
static inline __attribute__((always_inline)) float dot_row_avx2(const void *wv, int bf16, const float *x, int K) {
    const float *w = wv;
    const uint16_t *w16 = wv;
#define DOT_LOAD(i) (bf16 ? widen8(w16 + (i)) : _mm256_loadu_ps(w + (i)))
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        a0 = _mm256_fmadd_ps(DOT_LOAD(k), _mm256_loadu_ps(x + k), a0);
        a1 = _mm256_fmadd_ps(DOT_LOAD(k + 8), _mm256_loadu_ps(x + k + 8), a1);
        a2 = _mm256_fmadd_ps(DOT_LOAD(k + 16), _mm256_loadu_ps(x + k + 16), a2);
        a3 = _mm256_fmadd_ps(DOT_LOAD(k + 24), _mm256_loadu_ps(x + k + 24), a3);
    }
    for (; k + 8 <= K; k += 8) a0 = _mm256_fmadd_ps(DOT_LOAD(k), _mm256_loadu_ps(x + k), a0);
#undef DOT_LOAD
    float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; k < K; k++) s = __builtin_fmaf(bf16 ? bf16_widen(w16[k]) : w[k], x[k], s);
    return s;
}

static inline float dot_row(const float *w, const float *x, int K) { return dot_row_avx2(w, 0, x, K); }
static inline float dot_row_bf16(const uint16_t *w, const float *x, int K) { return dot_row_avx2(w, 1, x, K); }

#else
static inline float dot_row(const float *w, const float *x, int K) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int k = 0; k < K; k++) s = __builtin_fmaf(w[k], x[k], s);
    return s;
}

static inline float dot_row_bf16(const uint16_t *w, const float *x, int K) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int k = 0; k < K; k++) s = __builtin_fmaf(bf16_widen(w[k]), x[k], s);
    return s;
}
#endif

#if !defined(__AVX512F__)
uint32_t read_words(const uint32_t *a, size_t n) {
    uint32_t lane[64] = {0}, acc = 0;
    for (size_t i = 0; i + 64 <= n; i += 64)
        for (int j = 0; j < 64; j++) lane[j] ^= a[i + j];
    for (int j = 0; j < 64; j++) acc ^= lane[j];
    return acc;
}
#endif

#ifdef MOELM_BLAS   /* gemm()'s one-row case */
static inline void gemv_row(int n, int K, float alpha, const float *W, int ldw, const float *x, float beta, float *y) {
    float s = dot_row(W + (size_t)n * ldw, x, K);
    y[n] = alpha * s + (beta == 0.0f ? 0.0f : beta * y[n]);
}

static void gemv_rows(int N, int K, float alpha, const float *W, int ldw, const float *x, float beta, float *y) {
    if ((size_t)N * K < GEMV_PAR_MIN) {   /* no region (a nested one would cost a team of one per call) */
        for (int n = 0; n < N; n++) gemv_row(n, K, alpha, W, ldw, x, beta, y);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) gemv_row(n, K, alpha, W, ldw, x, beta, y);
}
#endif

static inline float bias_at(const float *bias, int n) { return bias ? bias[n] : 0.0f; }

void gemv_one(float *y, const float *x, const float *W, const float *bias, int N, int K) {
    for (int n = 0; n < N; n++) y[n] = bias_at(bias, n) + dot_row(W + (size_t)n * K, x, K);
}

void team_barrier_wait(TeamBarrier *b, int nthreads) {
    int gen = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->arrived, 1, __ATOMIC_ACQ_REL) == nthreads) {   /* the last one releases */
        __atomic_store_n(&b->arrived, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->generation, gen + 1, __ATOMIC_RELEASE);
        return;
    }
    for (long spins = 0; __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == gen; spins++) {
        if (spins < 20000) spin_pause();
        else sched_yield();
    }
}

uint16_t bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);   /* NaN stays a (quiet) NaN */
    u += 0x7fffu + ((u >> 16) & 1u);   /* round to nearest, ties to even; overflow rounds to Inf */
    return (uint16_t)(u >> 16);
}

static inline float bf16_widen(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float bf16_to_f32(uint16_t h) { return bf16_widen(h); }

void bf16_from_f32(uint16_t *dst, const float *src, size_t n) {
#pragma omp parallel for schedule(static) if (n >= GEMV_PAR_MIN)
    for (size_t i = 0; i < n; i++) dst[i] = bf16_round(src[i]);
}

/* gemv_one with bf16 weights: half the bytes of W to stream */
void gemv_one_bf16(float *y, const float *x, const uint16_t *W, const float *bias, int N, int K) {
    for (int n = 0; n < N; n++) y[n] = bias_at(bias, n) + dot_row_bf16(W + (size_t)n * K, x, K);
}

/* ---- y = Wt^T x over x's nonzeros (generation's products after a ReLU) ---------------------------- */

/* Each y[i] is one FMA a row, rows in order. Up to NZ_REGS floats of y stay in registers while the
 * rows go by, each row's part read front to back before the next. Wt is float (bf16 == 0) or bf16,
 * widened exactly; both forms are this code inlined with bf16 constant. */
enum { NZ_REGS = 256 };
#define NZ_INLINE static inline __attribute__((always_inline))

int nz_index(const float *x, int K, int *idx) {
    int cnt = 0;
    for (int k = 0; k < K; k++) {   /* without a branch: about half the units are zero, in no pattern */
        idx[cnt] = k;
        cnt += x[k] != 0.0f;   /* NaN is not zero: it reaches y */
    }
    return cnt;
}

NZ_INLINE float nz_at(const void *Wt, size_t i, int bf16) {
    return bf16 ? bf16_widen(((const uint16_t *)Wt)[i]) : ((const float *)Wt)[i];
}

#if defined(__AVX512F__)
NZ_INLINE __m512 nz_load(const void *Wt, size_t i, int bf16) {
    return bf16 ? widen16(_mm256_loadu_si256((const __m256i *)((const uint16_t *)Wt + i))) : _mm512_loadu_ps((const float *)Wt + i);
}

NZ_INLINE __m512 nz_load_mask(const void *Wt, size_t i, __mmask16 m, int bf16) {
    return bf16 ? widen16(_mm256_maskz_loadu_epi16(m, (const uint16_t *)Wt + i)) : _mm512_maskz_loadu_ps(m, (const float *)Wt + i);
}
#endif

/* y[0..n) (n <= NZ_REGS) += columns c0..c0+n of the rows idx[0..cnt) of Wt, scaled by their x */
NZ_INLINE void nz_rows(float *y, const float *x, const int *idx, int cnt, const void *Wt, int bf16, int ldw, int c0, int n) {
#if defined(__AVX512F__)
    __m512 acc[NZ_REGS / 16];
    __mmask16 mk[NZ_REGS / 16];
#pragma GCC unroll 16
    for (int v = 0; v < NZ_REGS / 16; v++) {
        int rem = n - 16 * v;
        mk[v] = rem >= 16 ? (__mmask16)0xffff : rem > 0 ? (__mmask16)((1u << rem) - 1u) : (__mmask16)0;
        acc[v] = _mm512_maskz_loadu_ps(mk[v], y + 16 * v);
    }
    if (n == NZ_REGS) {   /* plain loads (16 masks do not fit the 8 mask registers: 1.1-1.25x slower) */
        for (int j = 0; j < cnt; j++) {
            __m512 xs = _mm512_set1_ps(x[idx[j]]);
            size_t row = (size_t)idx[j] * (size_t)ldw + (size_t)c0;
#pragma GCC unroll 16
            for (int v = 0; v < NZ_REGS / 16; v++) acc[v] = _mm512_fmadd_ps(xs, nz_load(Wt, row + 16 * v, bf16), acc[v]);
        }
    } else {
        for (int j = 0; j < cnt; j++) {
            __m512 xs = _mm512_set1_ps(x[idx[j]]);
            size_t row = (size_t)idx[j] * (size_t)ldw + (size_t)c0;
#pragma GCC unroll 16
            for (int v = 0; v < NZ_REGS / 16; v++) acc[v] = _mm512_fmadd_ps(xs, nz_load_mask(Wt, row + 16 * v, mk[v], bf16), acc[v]);
        }
    }
#pragma GCC unroll 16
    for (int v = 0; v < NZ_REGS / 16; v++) _mm512_mask_storeu_ps(y + 16 * v, mk[v], acc[v]);
#else
    for (int j = 0; j < cnt; j++) {
        float xv = x[idx[j]];
        size_t row = (size_t)idx[j] * (size_t)ldw + (size_t)c0;
        for (int i = 0; i < n; i++) y[i] = __builtin_fmaf(xv, nz_at(Wt, row + i, bf16), y[i]);
    }
#endif
}

NZ_INLINE void gemv_t_nz_any(float *y, const float *x, const int *idx, int cnt, const void *Wt, int bf16, int ldw,
                             const float *bias, int n) {
    for (int i = 0; i < n; i++) y[i] = bias_at(bias, i);
    for (int i = 0; i < n; i += NZ_REGS) nz_rows(y + i, x, idx, cnt, Wt, bf16, ldw, i, n - i < NZ_REGS ? n - i : NZ_REGS);
}

void gemv_t_nz(float *y, const float *x, const int *idx, int cnt, const float *Wt, int ldw, const float *bias, int n) {
    gemv_t_nz_any(y, x, idx, cnt, Wt, 0, ldw, bias, n);
}

void gemv_t_nz_bf16(float *y, const float *x, const int *idx, int cnt, const uint16_t *Wt, int ldw, const float *bias, int n) {
    gemv_t_nz_any(y, x, idx, cnt, Wt, 1, ldw, bias, n);
}

void gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
          const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
#ifdef MOELM_BLAS
    if (K <= 0) {   /* BLAS leaves C untouched only when beta == 1; keep the C[...] = beta*C meaning */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
        return;
    }
    if (M == 1 && !transA && transB) {   /* one row against nn.Linear weights: generation's case */
        gemv_rows(N, K, alpha, B, ldb, A, beta, C);
        return;
    }
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#else
    gemm_ref(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

/* OpenBLAS 0.3.21 reads OPENBLAS_CORETYPE once, when it is loaded, and its own detection does not
 * know Zen 5: left alone it picks the generic SSE3 "Prescott" kernel (2-4x slower than the AVX-512
 * one). When the variable is unset, moelm names the kernel the CPU supports; a value the user or
 * the environment set is never changed. Returns 1 when it set something. */
static int choose_blas_kernel(void) {
#if defined(MOELM_BLAS) && defined(__x86_64__)
    if (getenv("OPENBLAS_CORETYPE")) return 0;
    __builtin_cpu_init();
    const char *core = NULL;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        core = "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        core = "Haswell";
    if (!core) return 0;
    setenv("OPENBLAS_CORETYPE", core, 1);
    return 1;
#else
    return 0;
#endif
}

int backend_runtime_env(void) {
    int changed = choose_blas_kernel();
#ifdef _OPENMP
    if (!getenv("OMP_WAIT_POLICY") && !getenv("GOMP_SPINCOUNT")) {   /* never override the user's choice */
        setenv("GOMP_SPINCOUNT", MOELM_GOMP_SPINCOUNT, 1);
        changed = 1;
    }
#endif
    return changed;
}

static int g_threads = 1;

void backend_set_threads(int n) {
    if (n < 1) n = 1;
    g_threads = n;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
#ifdef MOELM_BLAS
    openblas_set_num_threads(n);
#endif
}

int backend_threads(void) { return g_threads; }

int backend_cpus(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
    int n = CPU_COUNT(&set);
    return n > 0 ? n : 1;
}

double backend_load(void) {
    FILE *f = fopen("/proc/loadavg", "r");
    double load = NAN;
    if (f) {
        if (fscanf(f, "%lf", &load) != 1) load = NAN;
        fclose(f);
    }
    return load;
}

const char *backend_name(void) {
#ifdef MOELM_BLAS
    static char buf[160];
    snprintf(buf, sizeof buf, "openblas (%s; %s)", openblas_get_corename(), openblas_get_config());
    return buf;
#else
    return "reference (no BLAS)";
#endif
}
