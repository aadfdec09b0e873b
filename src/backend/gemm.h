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
const char *backend_name(void);   /* e.g. "openblas 0.3.21 (Cooperlake, openmp)" or "reference" */

#endif
