/* fd.h: central finite differences for gradient tests.
 *
 * fd_check perturbs up to max_coords coordinates of x (float, the dtype the engine computes in),
 * evaluates the scalar loss with f (which must accumulate in double), and compares
 * (L(x+h) - L(x-h)) / 2h against the analytic gradient. The float forward limits the precision
 * to about 1e-7 * |L| / h, so tests use O(1) values, h = 1e-2..1e-3 and a mixed tolerance
 * |analytic - numeric| <= atol + rtol * |numeric|; each test states its numbers and why.
 */
#ifndef MOELM_FD_H
#define MOELM_FD_H

#include <math.h>
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>

typedef double (*fd_loss_fn)(void *ctx);

static inline int fd_check(const char *what, float *x, const float *grad, size_t n, fd_loss_fn f, void *ctx,
                    float h, double atol, double rtol, int max_coords) {
    int bad = 0;
    size_t step = n > (size_t)max_coords ? n / (size_t)max_coords : 1;
    double worst = 0.0;
    for (size_t i = 0; i < n; i += step) {
        float old = x[i];
        x[i] = old + h;
        double lp = f(ctx);
        x[i] = old - h;
        double lm = f(ctx);
        x[i] = old;
        double num = (lp - lm) / (2.0 * (double)h);
        double err = fabs((double)grad[i] - num);
        double lim = atol + rtol * fabs(num);
        if (err / lim > worst) worst = err / lim;
        if (err > lim) {
            if (bad < 5) printf("  %s[%zu]: analytic %.7g numeric %.7g\n", what, i, grad[i], num);
            bad++;
        }
    }
    if (bad) printf("  %s: %d coordinates out of tolerance (worst err/limit %.2f)\n", what, bad, worst);
    return bad == 0;
}

/* Fills x[n] with uniform values in [-scale, scale) from a small LCG (tests need no Rng state). */
static inline void fd_fill(float *x, size_t n, float scale, uint64_t *seed) {
    for (size_t i = 0; i < n; i++) {
        *seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = scale * (2.0f * (float)((*seed >> 40) & 0xFFFFFF) / 16777216.0f - 1.0f);
    }
}

/* sum_i out[i] * r[i] in double: the projection loss that turns any output into a scalar. */
static inline double fd_dot(const float *out, const float *r, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)out[i] * (double)r[i];
    return s;
}

#endif
