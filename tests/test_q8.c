/* test_q8.c: fp16 conversions, Q8_0 quantization and the Q8_0 matrix-vector product.
 *
 * Oracles: fp16 widening against the format's formula evaluated with ldexp in double (and, where the
 * compiler targets F16C, the hardware conversion, both ways); fp16 rounding at every boundary
 * between two adjacent halves (the midpoint goes to the even one, one float ulp either side to the
 * nearer); Q8_0 against its definition, and the vector quantizer against it bit for bit; q8_0_gemv against q8_0_gemv_ref bit for bit on odd shapes,
 * and both against the exact sum in double within the float accumulation's bound.
 */
#include "test.h"
#include "backend/q8.h"
#include "common/util.h"

#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__F16C__)
#include <immintrin.h>
#endif

static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* the value of half h from the IEEE 754 binary16 definition, in double */
static double half_value(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

TEST(fp16_widen_exhaustive) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = fp16_to_f32((uint16_t)h);
        double want = half_value((uint16_t)h);
        if (isnan(want)) {
            /* NaN keeps its sign and payload (the 10 mantissa bits at the top of float's 23), quiet */
            if (!isnan(f) || (f2u(f) >> 31) != (h >> 15) || ((f2u(f) >> 13) & 1023) != ((h & 1023) | 0x200)) bad++;
        } else if ((double)f != want || !!signbit(f) != (int)(h >> 15)) {
            bad++;
        }
#if defined(__F16C__)
        if (f2u(f) != f2u(_cvtsh_ss((unsigned short)h))) bad++;
#endif
    }
    EXPECT_MSG(bad == 0, "%d halves widened wrongly", bad);
}

TEST(fp16_round_at_every_boundary) {
    int bad = 0;
    for (uint32_t h = 0; h < 0x7c00; h++) {   /* every finite non-negative half, and its negative */
        for (int sgn = 0; sgn < 2; sgn++) {
            uint16_t hs = (uint16_t)(h | (sgn ? 0x8000u : 0));
            float f = fp16_to_f32(hs);
            if (fp16_round(f) != hs) bad++;
            /* the midpoint to the next half up (exact in float: 12 significant bits) */
            double a = half_value((uint16_t)h), b = h + 1 == 0x7c00 ? 65536.0 : half_value((uint16_t)(h + 1));
            float mid = (float)((a + b) / 2), below = nextafterf(mid, 0.0f), above = nextafterf(mid, INFINITY);
            uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;   /* 0x7c00 (Inf) is even */
            uint16_t sbit = sgn ? 0x8000u : 0;
            if (fp16_round(sgn ? -mid : mid) != (even | sbit)) bad++;
            if (fp16_round(sgn ? -below : below) != (h | sbit)) bad++;
            if (fp16_round(sgn ? -above : above) != ((h + 1) | sbit)) bad++;
        }
    }
    EXPECT_MSG(bad == 0, "%d roundings wrong", bad);
    EXPECT(fp16_round(65504.0f) == 0x7bff && fp16_round(65519.99f) == 0x7bff && fp16_round(65520.0f) == 0x7c00);
    EXPECT(fp16_round(1e30f) == 0x7c00 && fp16_round(-INFINITY) == 0xfc00);
    EXPECT(fp16_round(0x1p-25f) == 0 && fp16_round(0x1.000002p-25f) == 1 && fp16_round(-0.0f) == 0x8000);
    EXPECT(fp16_round(1e-30f) == 0);
    uint16_t n = fp16_round(u2f(0x7fa00001u));   /* a signalling NaN becomes quiet, payload's top bits kept */
    EXPECT(n == (0x7e00 | (0x200001u >> 13)));
    EXPECT(fp16_round(-NAN) >> 15 == 1 && (fp16_round(NAN) & 0x7e00) == 0x7e00);
#if defined(__F16C__)
    /* the hardware conversion (round to nearest even) on 2^22 spread float patterns */
    Rng r;
    rng_seed(&r, 7);
    int hw = 0;
    for (int i = 0; i < (1 << 22); i++) {
        uint32_t u = rng_u32(&r);
        if (i & 1) u = (u & 0x80000000u) | (0x30000000u + (u & 0x17ffffffu));   /* near half's range */
        float f = u2f(u);
        if (fp16_round(f) != _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT)) hw++;
    }
    EXPECT_MSG(hw == 0, "%d differ from F16C", hw);
#endif
}

TEST(q8_0_quantize_rule) {
    float x[96];
    BlockQ8_0 b[3];
    for (int i = 0; i < 32; i++) x[i] = (float)(i - 13) * 0.37f;   /* amax 18 * 0.37 at i = 31 */
    for (int i = 32; i < 64; i++) x[i] = 0.0f;                    /* all zero: d = 0, q = 0 */
    for (int i = 64; i < 96; i++) x[i] = (i % 2 ? 1.0f : -1.0f) * 1e-3f * (float)(i - 63);
    EXPECT(q8_0_quantize(b, x, 96) == 0);
    for (int k = 0; k < 3; k++) {
        float amax = 0;
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[32 * k + i]));
        float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0;
        EXPECT(b[k].d == fp16_round(d));
        int qmax = 0;
        for (int i = 0; i < 32; i++) {
            float v = x[32 * k + i] * id;
            /* roundf: halves away from zero */
            int want = (int)(v >= 0 ? floor((double)v + 0.5) : -floor(-(double)v + 0.5));
            if (b[k].qs[i] != want) { EXPECT_MSG(0, "block %d q[%d] = %d, want %d", k, i, b[k].qs[i], want); break; }
            qmax = abs(b[k].qs[i]) > qmax ? abs(b[k].qs[i]) : qmax;
            /* dequantized within half a step (plus the scale's fp16 rounding, 2^-11 relative) */
            float deq = fp16_to_f32(b[k].d) * (float)b[k].qs[i];
            EXPECT(fabsf(deq - x[32 * k + i]) <= 0.5f * d + fabsf(x[32 * k + i]) * 0x1p-10f + 1e-12f);
        }
        EXPECT(qmax == (amax > 0 ? 127 : 0));
    }
    float back[96];
    q8_0_dequantize(back, b, 96);
    for (int i = 0; i < 96; i++) EXPECT(back[i] == fp16_to_f32(b[i / 32].d) * (float)b[i / 32].qs[i % 32]);
    EXPECT(back[31] == fp16_to_f32(b[0].d) * 127.0f);
    /* non-finite inputs and scales beyond fp16 are counted and stored as NaN / Inf blocks */
    x[5] = NAN;
    x[40] = INFINITY;
    x[70] = 1e7f;   /* 1e7 / 127 > 65504: the scale overflows */
    EXPECT(q8_0_quantize(b, x, 96) == 3);
    EXPECT(b[0].d == 0x7e00 && b[0].qs[0] == 0 && b[1].d == 0x7e00 && b[2].d == 0x7c00);
    q8_0_dequantize(back, b, 96);
    EXPECT(isnan(back[0]) && isnan(back[63]));
    EXPECT(sizeof(BlockQ8_0) == 34);
}

/* q8vec_quantize (AVX2 vectors where the build has them) against q8_0_quantize (the plain rule) bit
 * for bit, block by block: exact halves of every sign (amax 127: the step is 1), a value one float
 * ulp either side of a half, random normals at scales 1e-30 .. 1e6 (fp16 subnormal scales, and one
 * that overflows to Inf), -0 and all-zero blocks, a NaN and an Inf (the plain rule's fallback). Then
 * q8vec_quantize_once: quantizes a new x, skips the same bits, redoes a change of one bit or of K. */
TEST(q8vec_quantize_matches_rule) {
    enum { NB = 24, K = NB * 32 };
    static float x[K];
    static BlockQ8_0 b[NB];
    Rng r;
    rng_seed(&r, 11);
    for (int i = 0; i < 32; i++) x[i] = (float)(i - 16) + (i == 31 ? 0.0f : 0.5f) + (i == 0 ? 111.0f : 0.0f);
    x[31] = 127.0f;                                                       /* amax 127: id = 1, exact halves */
    for (int i = 32; i < 64; i++) x[i] = -x[i - 32];
    for (int i = 64; i < 96; i++) x[i] = i == 95 ? 127.0f : nextafterf((float)(i - 80) + 0.5f, i % 2 ? 100.0f : -100.0f);
    static const float scales[] = {1e-30f, 1e-7f, 1e-3f, 1.0f, 37.0f, 1e6f, 1e7f};
    for (int b2 = 3; b2 < NB; b2++)
        for (int i = 0; i < 32; i++) x[32 * b2 + i] = rng_normal(&r) * scales[b2 % 7];
    for (int i = 0; i < 32; i++) x[32 * 10 + i] = i % 3 ? 0.0f : -0.0f;  /* zero block */
    x[32 * 11 + 7] = NAN;
    x[32 * 12 + 30] = -INFINITY;
    q8_0_quantize(b, x, K);
    Q8Vec v;
    CHECK(q8vec_alloc(&v, K) == MOELM_OK);
    EXPECT(q8vec_quantize_once(&v, x) == 1);
    int bad = 0;
    for (int k = 0; k < NB; k++) {
        uint32_t want = f2u(fp16_to_f32(b[k].d)), got = f2u(v.d[k]);
        if (got != want || memcmp(v.q + 32 * k, b[k].qs, 32) != 0) {
            if (bad++ < 3) EXPECT_MSG(0, "block %d: d %08x q[0] %d, the rule's %08x %d", k, got, v.q[32 * k], want, b[k].qs[0]);
        }
    }
    EXPECT(bad == 0);
    EXPECT(v.q[0] == 96 && v.q[1] == -15 && v.q[16] == 1 && v.q[32 + 16] == -1);   /* 95.5 -> 96, -14.5 -> -15, +-0.5 -> +-1 */
    EXPECT(q8vec_quantize_once(&v, x) == 0);
    x[5] = nextafterf(x[5], 0.0f);
    EXPECT(q8vec_quantize_once(&v, x) == 1);
    v.K = K - 32;
    EXPECT(q8vec_quantize_once(&v, x) == 1 && q8vec_quantize_once(&v, x) == 0);
    q8vec_quantize(&v, x);
    EXPECT(q8vec_quantize_once(&v, x) == 1);   /* q8vec_quantize forgets the copy */
    q8vec_free(&v);
    EXPECT(moelm_alloc_live_bytes() == 0);
}

/* W [M, K] random Q8_0 (weights including -128 and +-127, scales of every size including fp16
 * subnormals and zero), x with a zero block and a large one */
static void make_case(BlockQ8_0 *W, float *x, int M, int K, Rng *r) {
    int nb = K / 32;
    for (int i = 0; i < M * nb; i++) {
        uint32_t k = rng_below(r, 10);
        W[i].d = k == 0 ? 0 : k == 1 ? (uint16_t)(1 + rng_below(r, 1023)) : fp16_round((rng_uniform(r) - 0.5f) * 0.2f);
        for (int j = 0; j < 32; j++) {
            uint32_t t = rng_below(r, 16);
            W[i].qs[j] = (int8_t)(t == 0 ? -128 : t == 1 ? 127 : t == 2 ? -127 : (int)rng_below(r, 256) - 128);
        }
    }
    for (int i = 0; i < K; i++) x[i] = rng_normal(r) * (i / 32 == 1 ? 0.0f : i / 32 == 2 ? 300.0f : 1.0f);
}

TEST(q8_0_gemv_matches_reference_bitwise) {
    static const int Ms[] = { 1, 3, 17, 33 }, Ks[] = { 32, 64, 96, 160, 4128 };
    Rng r;
    rng_seed(&r, 42);
    int checked = 0;
    for (size_t a = 0; a < sizeof Ms / sizeof Ms[0]; a++)
        for (size_t c = 0; c < sizeof Ks / sizeof Ks[0]; c++) {
            int M = Ms[a], K = Ks[c], nb = K / 32;
            BlockQ8_0 *W = moelm_malloc(sizeof(BlockQ8_0) * (size_t)M * (size_t)nb);
            float *x = moelm_malloc(sizeof(float) * (size_t)K), *y = moelm_malloc(sizeof(float) * (size_t)M),
                  *yr = moelm_malloc(sizeof(float) * (size_t)M);
            Q8Vec xq;
            CHECK(W && x && y && yr && q8vec_alloc(&xq, K) == MOELM_OK);
            make_case(W, x, M, K, &r);
            q8vec_quantize(&xq, x);
            q8_0_gemv(y, W, &xq, M, K);
            q8_0_gemv_ref(yr, W, &xq, M, K);
            for (int m = 0; m < M; m++) {
                EXPECT_MSG(f2u(y[m]) == f2u(yr[m]), "M %d K %d row %d: %.9g vs %.9g", M, K, m, y[m], yr[m]);
                /* the exact sum in double; the float lanes add at most nb/2 + 4 roundings, each within
                 * 2^-24 of a partial sum bounded by the sum of |terms| */
                double exact = 0, mag = 0;
                for (int b = 0; b < nb; b++) {
                    double d = (double)fp16_to_f32(W[m * nb + b].d) * xq.d[b];
                    long s = 0;
                    for (int j = 0; j < 32; j++) s += (long)W[m * nb + b].qs[j] * xq.q[b * 32 + j];
                    exact += d * (double)s;
                    for (int j = 0; j < 32; j += 4) {
                        long g = 0;
                        for (int t = j; t < j + 4; t++) g += (long)W[m * nb + b].qs[t] * xq.q[b * 32 + t];
                        mag += fabs(d * (double)g);
                    }
                }
                EXPECT_NEAR(y[m], exact, (nb / 2 + 5) * 0x1p-24 * mag + 1e-30);
                checked++;
            }
            /* the quantized x is x within half a step per block */
            for (int i = 0; i < K; i++)
                EXPECT(fabsf(xq.d[i / 32] * (float)xq.q[i] - x[i]) <= 0.51f * xq.d[i / 32] + fabsf(x[i]) * 0x1p-10f);
            for (int g = 0; g < K / 4; g++)
                EXPECT(xq.bias[g] == -128 * (xq.q[4 * g] + xq.q[4 * g + 1] + xq.q[4 * g + 2] + xq.q[4 * g + 3]));
            q8vec_free(&xq);
            moelm_free(W); moelm_free(x); moelm_free(y); moelm_free(yr);
        }
    EXPECT(checked == (1 + 3 + 17 + 33) * 5);
    printf("  (kernel: %s)\n", q8_0_kernel_name());
    EXPECT(moelm_alloc_live_bytes() == 0);
}

/* A NaN scale poisons its row only; a NaN in x poisons every row (its block's d is NaN). Against a
 * float product of the dequantized weights the error is the quantization's, small for this shape. */
TEST(q8_0_gemv_nonfinite_and_float_product) {
    enum { M = 5, K = 256, NB = K / 32 };
    static BlockQ8_0 W[M * NB];
    static float Wf[M * K], x[K], y[M], yr[M];
    Rng r;
    rng_seed(&r, 3);
    for (int i = 0; i < M * K; i++) Wf[i] = rng_normal(&r) * 0.05f;
    for (int i = 0; i < K; i++) x[i] = rng_normal(&r);
    EXPECT(q8_0_quantize(W, Wf, M * K) == 0);
    Q8Vec xq;
    CHECK(q8vec_alloc(&xq, K) == MOELM_OK);
    q8vec_quantize(&xq, x);
    q8_0_gemv(y, W, &xq, M, K);
    for (int m = 0; m < M; m++) {
        double ref = 0, mag = 0;
        for (int k = 0; k < K; k++) { ref += (double)Wf[m * K + k] * x[k]; mag += fabs((double)Wf[m * K + k] * x[k]); }
        /* each of w and x off by at most half a step of 1/127 of its block's amax: relative 1/254 of
         * |w||x| each, so 2/254 of the sum of |w x| bounds loosely (plus fp16 scales, 2^-10) */
        EXPECT_NEAR(y[m], ref, mag * (2.0 / 254 + 0x1p-9));
    }
    W[2 * NB + 3].d = 0x7e00;
    q8_0_gemv(y, W, &xq, M, K);
    q8_0_gemv_ref(yr, W, &xq, M, K);
    for (int m = 0; m < M; m++) EXPECT(isnan(y[m]) == (m == 2) && isnan(yr[m]) == (m == 2));
    x[100] = NAN;
    q8vec_quantize(&xq, x);
    q8_0_gemv(y, W, &xq, M, K);
    for (int m = 0; m < M; m++) EXPECT(isnan(y[m]));
    q8vec_free(&xq);
    EXPECT(moelm_alloc_live_bytes() == 0);
}

int main(void) {
    test_one_thread();
    RUN(fp16_widen_exhaustive);
    RUN(fp16_round_at_every_boundary);
    RUN(q8_0_quantize_rule);
    RUN(q8vec_quantize_matches_rule);
    RUN(q8_0_gemv_matches_reference_bitwise);
    RUN(q8_0_gemv_nonfinite_and_float_product);
    return test_summary("q8");
}
