/* gemm.c: reference GEMM and the BLAS behind the same signature. See gemm.h. */
#include "gemm.h"

#include <stdio.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef MOELM_BLAS
#include <cblas.h>
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

void gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
          const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
#ifdef MOELM_BLAS
    if (K <= 0) {   /* BLAS leaves C untouched only when beta == 1; keep the C[...] = beta*C meaning */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
        return;
    }
    if (M == 1 || N == 1) {
        /* A matrix-vector product (generation runs every layer on one row). OpenBLAS 0.3.21's sgemm
         * packs the whole weight matrix for it, each call; sgemv streams it once. beta == 0 must not
         * read C (it may hold NaN garbage): zero it first, as sgemm's meaning requires. */
        int n = M == 1 ? N : M, inc = M == 1 ? 1 : ldc;
        if (beta == 0.0f) for (int i = 0; i < n; i++) C[(size_t)i * inc] = 0.0f;
        if (M == 1)   /* C[0,:] = alpha op(B)^T a + beta C, a = row 0 of op(A) */
            cblas_sgemv(CblasRowMajor, transB ? CblasNoTrans : CblasTrans, transB ? N : K, transB ? K : N, alpha, B, ldb,
                        A, transA ? lda : 1, beta, C, 1);
        else          /* C[:,0] = alpha op(A) b + beta C, b = column 0 of op(B) */
            cblas_sgemv(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transA ? K : M, transA ? M : K, alpha, A, lda,
                        B, transB ? 1 : ldb, beta, C, ldc);
        return;
    }
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#else
    gemm_ref(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
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

const char *backend_name(void) {
#ifdef MOELM_BLAS
    static char buf[160];
    snprintf(buf, sizeof buf, "openblas (%s; %s)", openblas_get_corename(), openblas_get_config());
    return buf;
#else
    return "reference (no BLAS)";
#endif
}
