/* gemm.h: the one matrix-multiply interface of moelm.
 *
 * Row-major single-precision GEMM:  C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C[M,N]
 * where op(X) is X or X^T (trans != 0). lda/ldb/ldc are row strides of the stored matrices.
 * gemm_ref is the plain reference, always compiled. gemm() goes to OpenBLAS when built with BLAS
 * (the default) and to gemm_ref otherwise (make BLAS=0). Nothing above src/backend/ knows which.
 */
#ifndef MOELM_GEMM_H
#define MOELM_GEMM_H

void gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
          const float *B, int ldb, float beta, float *C, int ldc);

void gemm_ref(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc);

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
