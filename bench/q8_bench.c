/* bench/q8_bench.c: generation's matrix-vector product on 8-bit weights (q8_0_gemv: x quantized once
 * per product, int8 dot products, never a float copy of W) against the float and bf16 products it
 * would replace (gemv_one, gemv_one_bf16), at an expert's shape of a 1B-7B model: W [M, K] with
 * M = 14336 outputs and K = 4096 inputs (62 MB in Q8_0, 117 MB in bf16, 235 MB in float, so every
 * product streams W from memory). Rows are split over the team in two contiguous halves (each y[m]
 * from row m alone, as generation splits them). Built by `make bench-q8` into build/bench_q8; run
 * `build/bench_q8 [REPS] [THREADS...]` (REPS default 20; threads default 1 2): each figure is the
 * minimum over REPS, the three kernels interleaved rep by rep. Prints ms per product and GB/s of
 * weight bytes read, and checks that the Q8_0 product stays within its quantization error of the
 * float one.
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "backend/gemv.h"
#include "backend/q8.h"

enum { M = 14336, K = 4096 };

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *xmalloc(size_t n) {
    void *p = aligned_alloc(64, (n + 63) / 64 * 64);
    if (!p) { fprintf(stderr, "q8_bench: out of memory\n"); exit(1); }
    return p;
}

static float *W, *x, *yf, *yb, *yq;
static uint16_t *Wb;
static BlockQ8_0 *Wq;
static Q8Vec xq;

/* each thread its contiguous share of the rows */
static void run(int kind, int nt) {
    if (kind == 2) q8vec_quantize(&xq, x);   /* once per product, part of its time */
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), r0 = (int)((long)M * t / nt), r1 = (int)((long)M * (t + 1) / nt);
        if (kind == 0) gemv_one(yf + r0, x, W + (size_t)r0 * K, NULL, r1 - r0, K);
        else if (kind == 1) gemv_one_bf16(yb + r0, x, Wb + (size_t)r0 * K, NULL, r1 - r0, K);
        else q8_0_gemv(yq + r0, Wq + (size_t)r0 * (K / 32), &xq, r1 - r0, K);
    }
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 20;
    int threads[8] = { 1, 2 }, nthreads = 2;
    if (argc > 2) {
        nthreads = 0;
        for (int i = 2; i < argc && nthreads < 8; i++) threads[nthreads++] = atoi(argv[i]);
    }
    W = xmalloc(sizeof(float) * (size_t)M * K);
    Wb = xmalloc(sizeof(uint16_t) * (size_t)M * K);
    Wq = xmalloc(sizeof(BlockQ8_0) * (size_t)M * K / 32);
    x = xmalloc(sizeof(float) * K);
    yf = xmalloc(sizeof(float) * M);
    yb = xmalloc(sizeof(float) * M);
    yq = xmalloc(sizeof(float) * M);
    unsigned s = 1;
    for (size_t i = 0; i < (size_t)M * K; i++) {
        s = s * 1664525u + 1013904223u;
        W[i] = ((float)(s >> 8) / 16777216.0f - 0.5f) * 0.04f;
    }
    for (int i = 0; i < K; i++) x[i] = sinf((float)i * 0.37f);
    bf16_from_f32(Wb, W, (size_t)M * K);
    if (q8_0_quantize(Wq, W, (size_t)M * K) != 0 || q8vec_alloc(&xq, K) != 0) return 1;
    const double bytes[3] = { 4.0 * M * K, 2.0 * M * K, 34.0 * M * K / 32 };
    const char *names[3] = { "float gemv_one", "bf16 gemv_one_bf16", "q8_0_gemv" };
    printf("q8_bench: W [%d, %d]; Q8_0 kernel %s; min of %d reps, kernels interleaved\n", M, K, q8_0_kernel_name(), reps);
    for (int ti = 0; ti < nthreads; ti++) {
        int nt = threads[ti];
        double best[3] = { 1e9, 1e9, 1e9 };
        for (int r = 0; r < reps; r++)
            for (int k = 0; k < 3; k++) {
                double t0 = now();
                run(k, nt);
                double dt = now() - t0;
                if (dt < best[k]) best[k] = dt;
            }
        for (int k = 0; k < 3; k++)
            printf("  %d thread%s  %-20s %7.2f ms  %6.1f GB/s of weights  %5.2fx float's time\n", nt, nt > 1 ? "s" : " ",
                   names[k], best[k] * 1e3, bytes[k] / best[k] / 1e9, best[0] / best[k]);
    }
    /* the Q8_0 product is the float product within the quantization error (both W and x rounded to
     * 1/254 of their block's amax): report the largest error relative to sum |w x| */
    double worst = 0;
    for (int m = 0; m < M; m++) {
        double mag = 0;
        for (int k = 0; k < K; k++) mag += fabs((double)W[(size_t)m * K + k] * x[k]);
        double e = fabs((double)yq[m] - yf[m]) / mag;
        if (e > worst) worst = e;
    }
    printf("  q8_0 vs float: largest |dy| / sum|w x| = %.2e (bound 2/254 + 2^-9 = %.2e)\n", worst, 2.0 / 254 + 1.0 / 512);
    return worst <= 2.0 / 254 + 1.0 / 512 ? 0 : 1;
}
