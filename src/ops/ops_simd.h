/* ops_simd.h: the small vectorised helpers that ops.c and attn.c share (internal to src/ops/), and
 * the work below which they open no parallel region.
 *
 * Each is plain C that the compiler vectorises (omp simd), or AVX-512 / AVX2 intrinsics under
 * __AVX512F__ / __AVX2__ with the scalar meaning in its comment (exp_poly8: GCC left the loops over
 * exp_poly scalar). Static inline, so each file gets its own copy and the
 * bits of every caller are those of the code it had before it was moved here.
 */
#ifndef MOELM_OPS_SIMD_H
#define MOELM_OPS_SIMD_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif


/* exp(x) for x <= 88 in plain arithmetic that the compiler vectorises (libm's expf is a call, one
 * lane at a time). exp(x) = 2^n exp(r), n = rint(x / ln 2), r = x - n ln 2 in two parts (|r| <= ln2/2),
 * exp(r) by Cephes' degree-6 polynomial: max relative error about 2 ulp, against libm's 1. Inputs
 * below -87.3 (and -inf) give 0 within 1e-38; inputs above 88 give exp(88) (callers pass x - max
 * <= 0); NaN gives NaN. Defined for every input: the exponent n is in [-126, 127] before it becomes
 * an integer (a NaN's is replaced by 0), and 2^n is built in unsigned arithmetic. */
static inline float exp_poly(float x) {
    x = x < -87.3f ? -87.3f : x > 88.0f ? 88.0f : x;   /* NaN passes both tests and stays NaN */
    float n = __builtin_rintf(x * 1.44269504088896341f);
    float r = __builtin_fmaf(n, -0.693359375f, x);
    r = __builtin_fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = __builtin_fmaf(p, r, 1.3981999507e-3f);
    p = __builtin_fmaf(p, r, 8.3334519073e-3f);
    p = __builtin_fmaf(p, r, 4.1665795894e-2f);
    p = __builtin_fmaf(p, r, 1.6666665459e-1f);
    p = __builtin_fmaf(p, r, 5.0000001201e-1f);
    p = __builtin_fmaf(p, r * r, r) + 1.0f;
    float nn = n == n ? n : 0.0f;   /* p is NaN already */
    union { uint32_t u; float f; } sc = {.u = (uint32_t)((int32_t)nn + 127) << 23};   /* 2^n, n in [-126, 127] */
    return p * sc.f;
}

/* The largest of x[0..V-1] (a vectorised reduction: max is exact in any order). */
static inline float row_max(const float *x, int V) {
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int v = 0; v < V; v++) mx = x[v] > mx ? x[v] : mx;
    return mx;
}

#if defined(__AVX2__) && defined(__FMA__)
/* exp_poly on 8 lanes: the same operations in the same order, so each lane has exp_poly's bits. GCC 12
 * does not vectorise loops over exp_poly itself when tuning for Zen (-march=native on Zen 3, znver4):
 * under the default -ftrapping-math its clamps stay branches, and those loops ran a lane at a time. */
static inline __m256 exp_poly8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.0f);
    x = _mm256_blendv_ps(x, lo, _mm256_cmp_ps(x, lo, _CMP_LT_OQ));   /* NaN fails both and stays */
    x = _mm256_blendv_ps(x, hi, _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693359375f), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    __m256 nn = _mm256_and_ps(n, _mm256_cmp_ps(n, n, _CMP_ORD_Q));   /* a NaN's exponent: 0 */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(nn), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#endif

/* sum_v exp(x[v] - mx), and out[v] = exp(x[v] - mx) when out is not NULL (out may be x). The sum is
 * 16 interleaved partial sums (element v in sum v mod 16) added pairwise at the end, so its order is
 * fixed by the code, not by the vector width or the thread count. */
static inline float exp_row(float *out, const float *x, int V, float mx) {
    float lane[16] = {0};
    int v = 0;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 m = _mm256_set1_ps(mx), s0 = _mm256_setzero_ps(), s1 = s0;
    for (; v + 16 <= V; v += 16) {
        __m256 e0 = exp_poly8(_mm256_sub_ps(_mm256_loadu_ps(x + v), m));
        __m256 e1 = exp_poly8(_mm256_sub_ps(_mm256_loadu_ps(x + v + 8), m));
        if (out) { _mm256_storeu_ps(out + v, e0); _mm256_storeu_ps(out + v + 8, e1); }
        s0 = _mm256_add_ps(s0, e0);
        s1 = _mm256_add_ps(s1, e1);
    }
    _mm256_storeu_ps(lane, s0);
    _mm256_storeu_ps(lane + 8, s1);
#endif
    for (; v < V; v++) {
        float e = exp_poly(x[v] - mx);
        if (out) out[v] = e;
        lane[v & 15] += e;
    }
    for (int w = 8; w > 0; w /= 2)
        for (int i = 0; i < w; i++) lane[i] += lane[i + w];
    return lane[0];
}

/* sum_v exp(x[v] - mx) (exp_row's order) */
static inline float row_sumexp(const float *x, int V, float mx) { return exp_row(NULL, x, V, mx); }

/* sum_i a[i] b[i] over n floats */
static inline float dot_simd(const float *a, const float *b, int n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s = __builtin_fmaf(a[i], b[i], s);   /* -std=c11 contracts nothing by itself */
    return s;
}

/* y[i] += alpha x[i] over n floats */
static inline void axpy_simd(float *restrict y, float alpha, const float *restrict x, int n) {
#pragma omp simd
    for (int i = 0; i < n; i++) y[i] = __builtin_fmaf(alpha, x[i], y[i]);
}

/* a[0..n) = softmax(a[0..n)) in place: exponentials by exp_poly, summed in exp_row's order */
static inline void softmax_row(float *a, int n) {
    float mx = row_max(a, n), sum = exp_row(a, a, n, mx);
    float inv = 1.0f / sum;
#pragma omp simd
    for (int u = 0; u < n; u++) a[u] *= inv;
}

/* Below this much work a parallel region costs more than it saves, and on a loaded machine a
 * region whose second thread is descheduled stalls for a whole scheduler quantum. */
#define PAR_MIN_WORK 32768

#if defined(__AVX512F__)
static inline __mmask16 lanes_below(int left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u); }

/* a[u] = scale * sum_d q[d] kT[d ldk + u] for u < n: 16 keys a vector, four vectors a pass over q */
static inline void step_scores(float *a, const float *q, const float *kT, size_t ldk, int n, int hs, float scale) {
    for (int u0 = 0; u0 < n; u0 += 64) {
        __mmask16 m0 = lanes_below(n - u0), m1 = lanes_below(n - u0 - 16 > 0 ? n - u0 - 16 : 0);
        __mmask16 m2 = lanes_below(n - u0 - 32 > 0 ? n - u0 - 32 : 0), m3 = lanes_below(n - u0 - 48 > 0 ? n - u0 - 48 : 0);
        __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        for (int d = 0; d < hs; d++) {
            __m512 qd = _mm512_set1_ps(q[d]);
            const float *kd = kT + (size_t)d * ldk + u0;
            s0 = _mm512_fmadd_ps(qd, _mm512_maskz_loadu_ps(m0, kd), s0);
            s1 = _mm512_fmadd_ps(qd, _mm512_maskz_loadu_ps(m1, kd + 16), s1);
            s2 = _mm512_fmadd_ps(qd, _mm512_maskz_loadu_ps(m2, kd + 32), s2);
            s3 = _mm512_fmadd_ps(qd, _mm512_maskz_loadu_ps(m3, kd + 48), s3);
        }
        __m512 sc = _mm512_set1_ps(scale);
        _mm512_mask_storeu_ps(a + u0, m0, _mm512_mul_ps(s0, sc));
        _mm512_mask_storeu_ps(a + u0 + 16, m1, _mm512_mul_ps(s1, sc));
        _mm512_mask_storeu_ps(a + u0 + 32, m2, _mm512_mul_ps(s2, sc));
        _mm512_mask_storeu_ps(a + u0 + 48, m3, _mm512_mul_ps(s3, sc));
    }
}

/* o[hs] = sum_u a[u] v[u], hs a multiple of 16 up to 64: four chains over u (u mod 4), summed at the end */
static inline void step_values(float *o, const float *a, const float *v, int n, int hs) {
    int nv = hs / 16;
    __m512 acc[4][4];
    for (int c = 0; c < 4; c++)
        for (int j = 0; j < 4; j++) acc[c][j] = _mm512_setzero_ps();
    int u = 0;
    for (; u + 4 <= n; u += 4)
        for (int c = 0; c < 4; c++) {
            __m512 au = _mm512_set1_ps(a[u + c]);
            const float *vu = v + (size_t)(u + c) * hs;
            for (int j = 0; j < nv; j++) acc[c][j] = _mm512_fmadd_ps(au, _mm512_loadu_ps(vu + 16 * j), acc[c][j]);
        }
    for (int c = 0; u < n; u++, c++) {
        __m512 au = _mm512_set1_ps(a[u]);
        for (int j = 0; j < nv; j++) acc[c][j] = _mm512_fmadd_ps(au, _mm512_loadu_ps(v + (size_t)u * hs + 16 * j), acc[c][j]);
    }
    for (int j = 0; j < nv; j++)
        _mm512_storeu_ps(o + 16 * j, _mm512_add_ps(_mm512_add_ps(acc[0][j], acc[1][j]), _mm512_add_ps(acc[2][j], acc[3][j])));
}
#endif

/* The step over a KV cache for any head width: step_scores / step_values where they apply (hs a
 * multiple of 16 up to 64, AVX-512), else the same sums one key (or value) at a time. */
static inline int step_vector_width(int hs) {
#if defined(__AVX512F__)
    return hs % 16 == 0 && hs <= 64;
#else
    (void)hs;
    return 0;
#endif
}

/* a[u] = scale * sum_d q[d] kT[d ldk + u] for u < n */
static inline void step_scores_any(float *a, const float *q, const float *kT, size_t ldk, int n, int hs, float scale) {
#if defined(__AVX512F__)
    if (step_vector_width(hs)) { step_scores(a, q, kT, ldk, n, hs, scale); return; }
#endif
    /* blocks of 32 keys, their sums held in vector registers (four AVX2 vectors) over the pass down d:
     * each key's sum is the same chain, d ascending from 0, as the one-key loop below */
    enum { KB = 32 };
    int u0 = 0;
#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
    /* the same in intrinsics: the compiler kept the plain block's sums in memory, a store and a load
     * on every FMA's path (a third of a token's attention time); two blocks a pass where there are
     * two, eight chains for the core to overlap */
    for (; u0 + 2 * KB <= n; u0 += 2 * KB) {
        __m256 s[8];
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) s[j] = _mm256_setzero_ps();
        for (int d = 0; d < hs; d++) {
            const float *kd = kT + (size_t)d * ldk + u0;
            __m256 qd = _mm256_set1_ps(q[d]);
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) s[j] = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kd + 8 * j), s[j]);
        }
        __m256 sc = _mm256_set1_ps(scale);
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) _mm256_storeu_ps(a + u0 + 8 * j, _mm256_mul_ps(s[j], sc));
    }
    for (; u0 + KB <= n; u0 += KB) {
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        for (int d = 0; d < hs; d++) {
            const float *kd = kT + (size_t)d * ldk + u0;
            __m256 qd = _mm256_set1_ps(q[d]);
            s0 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kd), s0);
            s1 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kd + 8), s1);
            s2 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kd + 16), s2);
            s3 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kd + 24), s3);
        }
        __m256 sc = _mm256_set1_ps(scale);
        _mm256_storeu_ps(a + u0, _mm256_mul_ps(s0, sc));
        _mm256_storeu_ps(a + u0 + 8, _mm256_mul_ps(s1, sc));
        _mm256_storeu_ps(a + u0 + 16, _mm256_mul_ps(s2, sc));
        _mm256_storeu_ps(a + u0 + 24, _mm256_mul_ps(s3, sc));
    }
#endif
    for (; u0 + KB <= n; u0 += KB) {
        float s[KB] = {0.0f};
        for (int d = 0; d < hs; d++) {
            const float *kd = kT + (size_t)d * ldk + u0;
            float qd = q[d];
#pragma omp simd
            for (int j = 0; j < KB; j++) s[j] = __builtin_fmaf(qd, kd[j], s[j]);
        }
#pragma omp simd
        for (int j = 0; j < KB; j++) a[u0 + j] = s[j] * scale;
    }
    for (int u = u0; u < n; u++) {
        float s = 0.0f;
        for (int d = 0; d < hs; d++) s = __builtin_fmaf(q[d], kT[(size_t)d * ldk + u], s);
        a[u] = s * scale;
    }
}

#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
/* step_values_any's chains (o[i] = fma(a[u], v[u][i], o[i]), u ascending from 0) for hs = 8 nv, nv
 * constant: held in registers, where the plain loop's compiled form kept o in memory, a store and a
 * load on every FMA's path */
static inline __attribute__((always_inline)) void step_values_avx2(float *o, const float *a, const float *v, int n,
                                                                  const int nv) {
    __m256 acc[8];
#pragma GCC unroll 8
    for (int j = 0; j < nv; j++) acc[j] = _mm256_setzero_ps();
    for (int u = 0; u < n; u++) {
        __m256 au = _mm256_set1_ps(a[u]);
        const float *vu = v + (size_t)u * 8 * nv;
#pragma GCC unroll 8
        for (int j = 0; j < nv; j++) acc[j] = _mm256_fmadd_ps(au, _mm256_loadu_ps(vu + 8 * j), acc[j]);
    }
#pragma GCC unroll 8
    for (int j = 0; j < nv; j++) _mm256_storeu_ps(o + 8 * j, acc[j]);
}
#endif

#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
/* step_values_avx2 for two heads (weights a0, a1) over the same values (grouped-query attention):
 * each value row loaded once for both, 2 nv chains (nv <= 4) */
static inline __attribute__((always_inline)) void step_values2_avx2(float *o0, float *o1, const float *a0,
                                                                   const float *a1, const float *v, int n, const int nv) {
    __m256 c0[4], c1[4];
#pragma GCC unroll 4
    for (int j = 0; j < nv; j++) c0[j] = c1[j] = _mm256_setzero_ps();
    for (int u = 0; u < n; u++) {
        __m256 w0 = _mm256_set1_ps(a0[u]), w1 = _mm256_set1_ps(a1[u]);
        const float *vu = v + (size_t)u * 8 * nv;
#pragma GCC unroll 4
        for (int j = 0; j < nv; j++) {
            __m256 vj = _mm256_loadu_ps(vu + 8 * j);
            c0[j] = _mm256_fmadd_ps(w0, vj, c0[j]);
            c1[j] = _mm256_fmadd_ps(w1, vj, c1[j]);
        }
    }
#pragma GCC unroll 4
    for (int j = 0; j < nv; j++) {
        _mm256_storeu_ps(o0 + 8 * j, c0[j]);
        _mm256_storeu_ps(o1 + 8 * j, c1[j]);
    }
}
#endif

/* o[hs] = sum_{u < n} a[u] v[u hs .. u hs + hs) */
static inline void step_values_any(float *o, const float *a, const float *v, int n, int hs) {
#if defined(__AVX512F__)
    if (step_vector_width(hs)) { step_values(o, a, v, n, hs); return; }
#endif
#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
    switch (hs) {   /* a constant width each, so that the sums stay in registers */
    case 8: step_values_avx2(o, a, v, n, 1); return;
    case 16: step_values_avx2(o, a, v, n, 2); return;
    case 32: step_values_avx2(o, a, v, n, 4); return;
    case 64: step_values_avx2(o, a, v, n, 8); return;
    default: break;
    }
#endif
    for (int i = 0; i < hs; i++) o[i] = 0.0f;
    for (int u = 0; u < n; u++) axpy_simd(o, a[u], v + (size_t)u * hs, hs);
}

/* step_values_any for two heads over the same values: o0 from a0 and o1 from a1, the same bits */
static inline void step_values2_any(float *o0, float *o1, const float *a0, const float *a1, const float *v, int n, int hs) {
#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
    switch (hs) {
    case 8: step_values2_avx2(o0, o1, a0, a1, v, n, 1); return;
    case 16: step_values2_avx2(o0, o1, a0, a1, v, n, 2); return;
    case 32: step_values2_avx2(o0, o1, a0, a1, v, n, 4); return;
    default: break;
    }
#endif
    step_values_any(o0, a0, v, n, hs);
    step_values_any(o1, a1, v, n, hs);
}

#endif
