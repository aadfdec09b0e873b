/* q8.c: fp16 conversions, Q8_0 quantization, and the Q8_0 matrix-vector product (the reference and
 * the AVX-512 VNNI kernel). See q8.h for the exact arithmetic both follow.
 */
#include "backend/q8.h"
#include "backend/gemv.h"

#include <math.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VNNI__) && \
    defined(__F16C__)
#define Q8_VNNI 1
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define Q8_AVX2 1
#include <immintrin.h>
#endif

/* ---- fp16 ------------------------------------------------------------------------------------- */

uint16_t fp16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));   /* quiet NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);   /* >= 65520 (65504 + half an ulp): Inf */
    if (a >= 0x38800000u) {                                     /* >= 2^-14: a normal half */
        uint32_t m = a - 0x38000000u;                           /* exponent bias 127 -> 15 */
        m += 0xfffu + ((m >> 13) & 1u);                         /* drop 13 bits, ties to even */
        return (uint16_t)(sign | (m >> 13));                    /* a carry moves into the exponent */
    }
    if (a <= 0x33000000u) return sign;                          /* <= 2^-25: ties to even give 0 */
    /* a subnormal half: the value in units of 2^-24 is mant * 2^(e - 126), rounded to an integer */
    uint32_t e = a >> 23, mant = (a & 0x7fffffu) | 0x800000u, shift = 126 - e;   /* 14..24 */
    uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (uint16_t)(sign | q);
}

float fp16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, u;
    if (e == 0x1f) u = sign | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0);   /* Inf; NaN made quiet */
    else if (e) u = sign | ((e + 112) << 23) | (m << 13);       /* normal: bias 15 -> 127 */
    else {                                                      /* zero or subnormal: m * 2^-24, exact */
        float f = (float)m * 0x1p-24f;
        memcpy(&u, &f, sizeof u);
        u |= sign;
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

void fp16_from_f32(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = fp16_round(src[i]);
}

void fp16_to_f32_n(float *dst, const uint16_t *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = fp16_to_f32(src[i]);
}

void widen16_in_place(float *dst, size_t n, int bf16) {
    const unsigned char *raw = (const unsigned char *)dst + 2 * n;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, raw + 2 * i, 2);
        dst[i] = bf16 ? bf16_to_f32(h) : fp16_to_f32(h);
    }
}

/* ---- Q8_0 ------------------------------------------------------------------------------------- */

/* One block of 32 values to (*d, q[32]) by ggml's reference rule; returns 1 when the stored scale
 * is not finite (a NaN or Inf input: d = NaN and q = 0; or amax / 127 beyond fp16: d = Inf). */
static int quantize_block(uint16_t *d, int8_t *q, const float *x) {
    float amax = 0.0f;
    int finite = 1;
    for (int i = 0; i < Q8_0_BLOCK; i++) {
        float a = fabsf(x[i]);
        if (!(a <= 3.4028235e38f)) finite = 0;   /* NaN or Inf */
        else if (a > amax) amax = a;
    }
    if (!finite) {
        *d = 0x7e00u;
        memset(q, 0, Q8_0_BLOCK);
        return 1;
    }
    float dv = amax / 127.0f, id = dv != 0.0f ? 1.0f / dv : 0.0f;
    *d = fp16_round(dv);
    for (int i = 0; i < Q8_0_BLOCK; i++) q[i] = (int8_t)roundf(x[i] * id);   /* |x * id| <= 127.00002 */
    return (*d & 0x7c00u) == 0x7c00u;
}

size_t q8_0_quantize(BlockQ8_0 *dst, const float *src, size_t n) {
    CHECK(n % Q8_0_BLOCK == 0);
    size_t bad = 0;
    for (size_t b = 0; b < n / Q8_0_BLOCK; b++)
        bad += (size_t)quantize_block(&dst[b].d, dst[b].qs, src + b * Q8_0_BLOCK);
    return bad;
}

void q8_0_dequantize(float *dst, const BlockQ8_0 *src, size_t n) {
    CHECK(n % Q8_0_BLOCK == 0);
    for (size_t b = 0; b < n / Q8_0_BLOCK; b++) {
        float d = fp16_to_f32(src[b].d);
        for (int i = 0; i < Q8_0_BLOCK; i++) dst[b * Q8_0_BLOCK + i] = d * (float)src[b].qs[i];
    }
}

moelm_status q8vec_alloc(Q8Vec *v, int K) {
    CHECK(K > 0 && K % Q8_0_BLOCK == 0);
    memset(v, 0, sizeof *v);
    size_t nq = (size_t)K, nd = (size_t)K / Q8_0_BLOCK, nbias = (size_t)K / 4;
    /* one block: bias (64-byte aligned, K/4 int32 = 8 a block), then d, then src, then q */
    char *p = moelm_malloc(nbias * sizeof(int32_t) + nd * sizeof(float) + nq * sizeof(float) + nq);
    if (!p) return MOELM_ERR_NOMEM;
    v->K = K;
    v->bias = (int32_t *)p;
    v->d = (float *)(p + nbias * sizeof(int32_t));
    v->src = v->d + nd;
    v->q = (int8_t *)(v->src + nq);
    v->src_K = 0;
    return MOELM_OK;
}

void q8vec_free(Q8Vec *v) {
    moelm_free(v->bias);
    memset(v, 0, sizeof *v);
}

#if defined(Q8_AVX2) || defined(Q8_VNNI)
/* quantize_block in AVX2 vectors, the same bits: |x| and its maximum are exact in any order, x * id
 * is the same product, and roundf (halves away from zero) is trunc(v) plus v's sign where |v -
 * trunc(v)| >= 1/2 (the difference is exact for |v| < 2^23). A block holding a NaN or an Inf takes
 * the plain rule. */
static int quantize_block_fast(uint16_t *d, int8_t *q, const float *x) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)), big = _mm256_set1_ps(3.4028235e38f);
    __m256 v[4], a[4], bad = _mm256_setzero_ps();
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        a[i] = _mm256_and_ps(v[i], absmask);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(a[i], big, _CMP_NLE_UQ));   /* NaN or beyond FLT_MAX */
    }
    if (_mm256_movemask_ps(bad)) return quantize_block(d, q, x);
    __m256 m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    float dv = amax / 127.0f, id = dv != 0.0f ? 1.0f / dv : 0.0f;
    *d = fp16_round(dv);
    const __m256 idv = _mm256_set1_ps(id), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    __m256i n[4];
    for (int i = 0; i < 4; i++) {
        __m256 p = _mm256_mul_ps(v[i], idv);
        __m256 t = _mm256_round_ps(p, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        __m256 away = _mm256_cmp_ps(_mm256_and_ps(_mm256_sub_ps(p, t), absmask), half, _CMP_GE_OQ);
        __m256 step = _mm256_or_ps(one, _mm256_andnot_ps(absmask, p));   /* +-1 with p's sign */
        n[i] = _mm256_cvttps_epi32(_mm256_add_ps(t, _mm256_and_ps(away, step)));
    }
    /* 32 int32 to 32 int8 in order: the packs work within 128-bit lanes, the permute restores it */
    __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(n[0], n[1]), _mm256_packs_epi32(n[2], n[3]));
    b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, b);
    return (*d & 0x7c00u) == 0x7c00u;
}
#else
static int quantize_block_fast(uint16_t *d, int8_t *q, const float *x) { return quantize_block(d, q, x); }
#endif

void q8vec_quantize(Q8Vec *v, const float *x) {
    for (int b = 0; b < v->K / Q8_0_BLOCK; b++) {
        uint16_t d;
        int8_t *q = v->q + (size_t)b * Q8_0_BLOCK;
        quantize_block_fast(&d, q, x + (size_t)b * Q8_0_BLOCK);
        v->d[b] = fp16_to_f32(d);
        for (int g = 0; g < Q8_0_BLOCK / 4; g++)
            v->bias[b * 8 + g] = -128 * (q[4 * g] + q[4 * g + 1] + q[4 * g + 2] + q[4 * g + 3]);
    }
    v->src_K = 0;   /* not q8vec_quantize_once's copy any more */
}

int q8vec_quantize_once(Q8Vec *v, const float *x) {
    size_t bytes = sizeof(float) * (size_t)v->K;
    if (v->src_K == v->K && memcmp(v->src, x, bytes) == 0) return 0;
    q8vec_quantize(v, x);
    memcpy(v->src, x, bytes);
    v->src_K = v->K;
    return 1;
}

/* ---- the product ------------------------------------------------------------------------------ */

/* acc[16] folded in halves: acc[L] += acc[L + h], h = 8, 4, 2, 1 (q8.h) */
static float fold16(float *acc) {
    for (int h = 8; h >= 1; h /= 2)
        for (int L = 0; L < h; L++) acc[L] += acc[L + h];
    return acc[0];
}

/* One row: nb blocks of w against x, the lane arithmetic of q8.h in plain loops. */
static float row_ref(const BlockQ8_0 *w, const Q8Vec *x, int nb) {
    float acc[16] = { 0 };
    for (int b = 0; b < nb; b++) {
        float d = fp16_to_f32(w[b].d) * x->d[b];
        const int8_t *xq = x->q + (size_t)b * Q8_0_BLOCK;
        float *lane = acc + 8 * (b & 1);   /* block 2p: lanes 0..7, block 2p+1: lanes 8..15 */
        for (int g = 0; g < 8; g++) {
            int32_t s = 0;
            for (int j = 4 * g; j < 4 * g + 4; j++) s += (int32_t)w[b].qs[j] * (int32_t)xq[j];
            lane[g] = fmaf(d, (float)s, lane[g]);
        }
    }
    return fold16(acc);
}

void q8_0_gemv_ref(float *y, const BlockQ8_0 *W, const Q8Vec *xq, int M, int K) {
    CHECK(xq->K == K && K % Q8_0_BLOCK == 0);
    int nb = K / Q8_0_BLOCK;
    for (int m = 0; m < M; m++) y[m] = row_ref(W + (size_t)m * nb, xq, nb);
}

#ifdef Q8_VNNI
/* The 16 lanes of row_ref in one register. Per pair of blocks: the two blocks' 32 weights side by
 * side, xor 0x80 (w + 128, unsigned: vpdpbusd's first operand), times x's 64 signed bytes, each
 * lane's 4 products summed onto x's bias (-128 * the 4 x's sum): exactly the lane's int8 dot. */
static inline float row_vnni(const BlockQ8_0 *w, const Q8Vec *x, int nb) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512 acc = _mm512_setzero_ps();
    int b = 0;
    for (; b + 2 <= nb; b += 2) {
        __m256i w0 = _mm256_loadu_si256((const __m256i *)w[b].qs);
        __m256i w1 = _mm256_loadu_si256((const __m256i *)w[b + 1].qs);
        __m512i wu = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(w0), w1, 1), flip);
        __m512i s = _mm512_dpbusd_epi32(_mm512_loadu_si512(x->bias + b * 8), wu,
                                        _mm512_loadu_si512(x->q + (size_t)b * Q8_0_BLOCK));
        float d0 = _cvtsh_ss(w[b].d) * x->d[b], d1 = _cvtsh_ss(w[b + 1].d) * x->d[b + 1];
        __m512 dv = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(d0)), _mm256_set1_ps(d1), 1);
        acc = _mm512_fmadd_ps(dv, _mm512_cvtepi32_ps(s), acc);
    }
    if (b < nb) {   /* the odd last block: lanes 0..7 only, the upper lanes left as they are */
        __m512i wu = _mm512_zextsi256_si512(
            _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)w[b].qs), _mm512_castsi512_si256(flip)));
        __m512i s = _mm512_dpbusd_epi32(_mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(x->bias + b * 8))),
                                        wu, _mm512_zextsi256_si512(_mm256_loadu_si256(
                                                (const __m256i *)(x->q + (size_t)b * Q8_0_BLOCK))));
        __m512 dv = _mm512_set1_ps(_cvtsh_ss(w[b].d) * x->d[b]);
        acc = _mm512_mask3_fmadd_ps(dv, _mm512_cvtepi32_ps(s), acc, (__mmask16)0x00ff);
    }
    /* fold16: L + (L+8), then + (L+4), + (L+2), + (L+1) */
    __m256 h8 = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1));
    __m128 h4 = _mm_add_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps(h8, 1));
    __m128 h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
    __m128 h1 = _mm_add_ss(h2, _mm_movehdup_ps(h2));
    return _mm_cvtss_f32(h1);
}
#endif

#ifdef Q8_AVX2
/* The portable fallback where there is no VNNI (AVX2 machines): one block a step, lanes 0..7 of
 * row_ref in `lo` (even blocks) and 8..15 in `hi` (odd blocks). vpmaddubsw multiplies unsigned by
 * signed bytes into pairs summed in int16 (saturating): |w| (w = -128 gives 0x80, read as 128) times
 * x with w's sign (x is within +-127, so the negation is exact); a pair is at most 2 * 128 * 127 =
 * 32512, no saturation. vpmaddwd with ones then sums each 4 consecutive products into int32. */
static inline __m256 block_avx2(const BlockQ8_0 *w, const int8_t *xq, float dx, __m256 acc) {
    __m256i wv = _mm256_loadu_si256((const __m256i *)w->qs), xv = _mm256_loadu_si256((const __m256i *)xq);
    __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
    __m256i s = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
    return _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(w->d) * dx), _mm256_cvtepi32_ps(s), acc);
}

/* fold16 of lanes lo (0..7) and hi (8..15), as in row_vnni */
static inline float fold_avx2(__m256 lo, __m256 hi) {
    __m256 h8 = _mm256_add_ps(lo, hi);
    __m128 h4 = _mm_add_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps(h8, 1));
    __m128 h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
    __m128 h1 = _mm_add_ss(h2, _mm_movehdup_ps(h2));
    return _mm_cvtss_f32(h1);
}

static inline float row_avx2(const BlockQ8_0 *w, const Q8Vec *x, int nb) {
    __m256 lo = _mm256_setzero_ps(), hi = lo;
    int b = 0;
    for (; b + 2 <= nb; b += 2) {
        lo = block_avx2(&w[b], x->q + (size_t)b * Q8_0_BLOCK, x->d[b], lo);
        hi = block_avx2(&w[b + 1], x->q + (size_t)(b + 1) * Q8_0_BLOCK, x->d[b + 1], hi);
    }
    if (b < nb) lo = block_avx2(&w[b], x->q + (size_t)b * Q8_0_BLOCK, x->d[b], lo);
    return fold_avx2(lo, hi);
}
#endif

#ifdef Q8_AVX2
/* row_avx2 on four rows side by side, each row's lanes the same arithmetic (the same bits): the four
 * rows' sums are independent chains that the core overlaps (1.15x over one row at a time on Zen 3,
 * the weights in cache) */
static void rows4_avx2(float *y, const BlockQ8_0 *w, const Q8Vec *x, int nb) {
    __m256 lo[4], hi[4];
    for (int r = 0; r < 4; r++) lo[r] = hi[r] = _mm256_setzero_ps();
    int b = 0;
    for (; b + 2 <= nb; b += 2) {
        const int8_t *xa = x->q + (size_t)b * Q8_0_BLOCK, *xb = xa + Q8_0_BLOCK;
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            lo[r] = block_avx2(&w[(size_t)r * nb + b], xa, x->d[b], lo[r]);
            hi[r] = block_avx2(&w[(size_t)r * nb + b + 1], xb, x->d[b + 1], hi[r]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) {
        if (b < nb) lo[r] = block_avx2(&w[(size_t)r * nb + b], x->q + (size_t)b * Q8_0_BLOCK, x->d[b], lo[r]);
        y[r] = fold_avx2(lo[r], hi[r]);
    }
}
#endif

void q8_0_gemv(float *y, const BlockQ8_0 *W, const Q8Vec *xq, int M, int K) {
    CHECK(xq->K == K && K % Q8_0_BLOCK == 0);
    int nb = K / Q8_0_BLOCK;
#if defined(Q8_VNNI)
    for (int m = 0; m < M; m++) y[m] = row_vnni(W + (size_t)m * nb, xq, nb);
#elif defined(Q8_AVX2)
    int m = 0;
    for (; m + 4 <= M; m += 4) rows4_avx2(y + m, W + (size_t)m * nb, xq, nb);
    for (; m < M; m++) y[m] = row_avx2(W + (size_t)m * nb, xq, nb);
#else
    for (int m = 0; m < M; m++) y[m] = row_ref(W + (size_t)m * nb, xq, nb);
#endif
}

const char *q8_0_kernel_name(void) {
#if defined(Q8_VNNI)
    return "avx512-vnni";
#elif defined(Q8_AVX2)
    return "avx2";
#else
    return "reference";
#endif
}
