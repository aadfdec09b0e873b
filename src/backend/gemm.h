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

/* One gemm() call's arguments, for gemm_pair. With bf16 set it is a gemm_bf16() call instead (bf16
 * operands, float sums: gemm_bf16.h), with Bp set a gemm_bf16_packed() call on that packed B (B,
 * ldb and transB unused). */
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
    int bf16;
    const uint16_t *Bp;
} GemmCall;

/* Two independent products (neither writes what the other reads), e.g. a linear layer's input
 * gradient and weight gradient. With two threads, outside any parallel region, and both products
 * small (a GEMM of a few hundred MFLOP does not scale to two threads, PERF-NOTES), they run side by
 * side, one thread each, BLAS single-threaded inside the region; otherwise one after the other: each
 * product above that size (2^30 multiply-adds) cut in two halves along the longer side of C that run
 * side by side (with two threads outside a region), a smaller one threaded by BLAS. A product whose
 * C is NULL is not asked for: the other runs alone. No way of running changes an element's sum. */
void gemm_pair(const GemmCall *a, const GemmCall *b);
/* gemm() with A not transposed, its rows cut in two halves that gemm_pair runs side by side when it
 * would (each half computed whole by one thread; BLAS may round a half's shape otherwise than the
 * whole, so the bits can differ from one gemm() call); a larger product as gemm_pair runs one. */
void gemm_halves(int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc);
/* gemm_halves of any call with A not transposed (a bf16 one included) */
void gemm_halves_call(const GemmCall *g);

#endif
