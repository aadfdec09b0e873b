/* rope.c: rotary position embeddings as Hugging Face's Llama and Mixtral apply them (attn.h).
 *
 * The tables follow HF's float32 arithmetic step by step, because at long positions the rounding of
 * the angle is larger than the error of any cos: at position 4000 one ulp of the float angle is
 * 2.4e-4 rad, so an angle computed in double would differ from HF's by up to 1.2e-4 in cos and sin.
 *     e_i   = fl(2i / hd)                    torch: arange(0, hd, 2).float() / hd
 *     inv_i = fl(1 / fl(theta^e_i))          torch: 1.0 / (theta ** e)  (torch's powf is within an ulp
 *                                            of the correctly rounded one used here: 4 of 972 differ over
 *                                            11 head widths and 4 thetas)
 *     ang   = fl(pos * inv_i)                torch: inv_freq @ position_ids, one product per entry
 *     cos, sin of ang, correctly rounded     torch's are within an ulp
 * Not here: the scaled variants (linear, dynamic NTK, YaRN, llama3); HF's attention_scaling is 1
 * without them. The rotation itself, x cos + rotate_half(x) sin, rounds each product (no FMA), as
 * torch's separate multiplies and add do.
 */
#include "attn.h"

#include <math.h>
#include "common/util.h"
#include "ops_simd.h"

/* inv_freq_i = fl(1 / fl(theta^fl(2i / hd))) */
static float rope_inv_one(int i, int hd, float theta) {
    float e = (float)(2 * i) / (float)hd;
    return 1.0f / (float)pow((double)theta, (double)e);
}

void rope_inv_freq(float *inv, int hd, float theta) {
    CHECK(hd > 0 && hd % 2 == 0 && theta > 0.0f);
    for (int i = 0; i < hd / 2; i++) inv[i] = rope_inv_one(i, hd, theta);
}

void rope_tables(float *cos_t, float *sin_t, int P, int hd, float theta) {
    CHECK(hd > 0 && hd % 2 == 0 && P >= 0 && theta > 0.0f);
    int half = hd / 2;
    for (int i = 0; i < half; i++) {
        float inv = rope_inv_one(i, hd, theta);
        for (int p = 0; p < P; p++) {
            float ang = (float)p * inv;
            cos_t[(size_t)p * half + i] = (float)cos((double)ang);
            sin_t[(size_t)p * half + i] = (float)sin((double)ang);
        }
    }
}

/* Rotates every head of every row by the angle of its position, times sign (+1 forward, -1 backward:
 * R(-a) = R(a)^T, the gradient of a rotation). */
static void rope_apply(float *x, const int *pos, const float *cos_t, const float *sin_t, int P, int N, int NHR,
                       int hd, size_t ld, float sign) {
    CHECK(hd > 0 && hd % 2 == 0 && ld >= (size_t)NHR * hd);
    int half = hd / 2;
#pragma omp parallel for schedule(static) if ((size_t)N * NHR * hd >= PAR_MIN_WORK)
    for (int n = 0; n < N; n++) {   /* each thread owns whole rows */
        CHECK(pos[n] >= 0 && pos[n] < P);
        const float *c = cos_t + (size_t)pos[n] * half, *s = sin_t + (size_t)pos[n] * half;
        for (int r = 0; r < NHR; r++) {
            float *x1 = x + (size_t)n * ld + (size_t)r * hd, *x2 = x1 + half;
#pragma omp simd
            for (int i = 0; i < half; i++) {
                float a = x1[i], b = x2[i], sn = sign * s[i];
                float p = a * c[i], m = b * sn;   /* named products: no contraction into an FMA */
                float u = b * c[i], w = a * sn;
                x1[i] = p - m;
                x2[i] = u + w;
            }
        }
    }
}

void rope_forward(float *x, const int *pos, const float *cos_t, const float *sin_t, int P, int N, int NHR, int hd,
                  size_t ld) {
    rope_apply(x, pos, cos_t, sin_t, P, N, NHR, hd, ld, 1.0f);
}

void rope_backward(float *dx, const int *pos, const float *cos_t, const float *sin_t, int P, int N, int NHR, int hd,
                   size_t ld) {
    rope_apply(dx, pos, cos_t, sin_t, P, N, NHR, hd, ld, -1.0f);
}

void rope_positions(int *pos, int B, int T, int offset) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) pos[(size_t)b * T + t] = offset + t;
}
