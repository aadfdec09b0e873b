/* gemm.h: the one matrix-multiply interface of moelm.
 *
 * Row-major single-precision GEMM:  C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C[M,N]
 * where op(X) is X or X^T (trans != 0). lda/ldb/ldc are row strides of the stored matrices.
 * gemm_ref is the plain reference, always compiled. gemm() goes to OpenBLAS when built with BLAS
 * (the default) and to gemm_ref otherwise (make BLAS=0). Nothing above src/backend/ knows which.
 */
#ifndef MOELM_GEMM_H
#define MOELM_GEMM_H

#include <stddef.h>
#include <stdint.h>

void gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
          const float *B, int ldb, float beta, float *C, int ldc);

void gemm_ref(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc);

/* One gemm() call's arguments, for gemm_pair. */
typedef struct {
    int transA, transB, M, N, K;
    float alpha;
    const float *A;
    int lda;
    const float *B;
    int ldb;
    float beta;
    float *C;
    int ldc;
} GemmCall;

/* Two independent products (neither writes what the other reads), e.g. a linear layer's input
 * gradient and weight gradient. With two threads, outside any parallel region, and both products
 * small (a GEMM of a few hundred MFLOP does not scale to two threads, PERF-NOTES), they run side by
 * side, one thread each, BLAS single-threaded inside the region; otherwise one after the other, each
 * threaded by BLAS. Either way each product is computed whole by one gemm() call. A product whose C
 * is NULL is not asked for: the other runs alone. */
void gemm_pair(const GemmCall *a, const GemmCall *b);
/* gemm() with A not transposed, its rows cut in two halves that gemm_pair runs side by side when it
 * would (each half computed whole by one thread; BLAS may round a half's shape otherwise than the
 * whole, so the bits can differ from one gemm() call); otherwise one gemm() call. */
void gemm_halves(int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc);

/* y[N] = W[N,K] x[K] (+ bias[N]; bias may be NULL), W row-major as nn.Linear stores it: matmul_forward
 * for one row, with the same bits as gemm() gives it under BLAS. Its loop is an orphaned `omp for`:
 * called by every thread of a parallel region it splits the rows over them (each row computed by one
 * thread, so the bits do not depend on the thread count) and ends at the loop's barrier; called
 * outside a region it runs whole on the caller. */
void gemv_team(float *y, const float *x, const float *W, const float *bias, int N, int K);
/* gemv_team without the worksharing: the whole product on the calling thread, inside a region or
 * not (no barrier), with the same bits. */
void gemv_one(float *y, const float *x, const float *W, const float *bias, int N, int K);

/* bfloat16 (the upper 16 bits of a float) for generation's weights: bf16_round rounds to nearest,
 * ties to even (NaN stays NaN, Inf stays Inf); bf16_to_f32 is exact. gemv_team_bf16 is gemv_team with
 * W in bf16: each weight widened exactly, products and sums in float, half the bytes to stream; its
 * rows are split over a team the same way, with the same bits at any thread count. */
uint16_t bf16_round(float f);
float bf16_to_f32(uint16_t h);
void bf16_from_f32(uint16_t *dst, const float *src, size_t n);
void gemv_team_bf16(float *y, const float *x, const uint16_t *W, const float *bias, int N, int K);
void gemv_one_bf16(float *y, const float *x, const uint16_t *W, const float *bias, int N, int K);

/* Threads for both OpenMP loops and BLAS (one pool with the OpenMP build of OpenBLAS). */
void backend_set_threads(int n);
int backend_threads(void);
const char *backend_name(void);

/* Called first thing in main(). libgomp reads its wait policy once, when it loads, and by default
 * a thread that reaches a barrier spins for up to ~300k iterations: on a shared machine (more
 * runnable threads than cores) the spinner holds the core its descheduled sibling needs, and every
 * parallel region ends late. Unless the user chose (OMP_WAIT_POLICY or GOMP_SPINCOUNT set), this sets
 * a short spin and re-executes the program once so that libgomp sees it. Measured on the 2-core
 * machine under load: training 2.1-2.6x faster at 2 threads, the same bits (bench/RESULTS.md). */
void backend_init_runtime(char **argv);   /* e.g. "openblas 0.3.21 (Cooperlake, openmp)" or "reference" */

#endif
