/* gemv.h: matrix-vector products on the calling thread (generation's token step): float and bf16
 * weights, and the product over a ReLU output's nonzero units. Implemented in gemm.c.
 */
#ifndef MOELM_GEMV_H
#define MOELM_GEMV_H

#include <stddef.h>
#include <stdint.h>

/* y[N] = W[N,K] x[K] (+ bias[N]; bias may be NULL), W row-major as nn.Linear stores it: matmul_forward
 * for one row, with the same bits as gemm() gives it under BLAS, on the calling thread (inside a
 * parallel region or not). Each y[n] is computed from row n alone, so a product split by rows over a
 * team (each thread calling it on its rows) has the bits of the whole. */
void gemv_one(float *y, const float *x, const float *W, const float *bias, int N, int K);

/* bfloat16 (the upper 16 bits of a float) for generation's weights: bf16_round rounds to nearest,
 * ties to even (NaN stays NaN, Inf stays Inf); bf16_to_f32 is exact. gemv_one_bf16 is gemv_one with
 * W in bf16: each weight widened exactly, products and sums in float, half the bytes to stream; each
 * y[n] again from row n alone. */
uint16_t bf16_round(float f);
float bf16_to_f32(uint16_t h);
void bf16_from_f32(uint16_t *dst, const float *src, size_t n);
void gemv_one_bf16(float *y, const float *x, const uint16_t *W, const float *bias, int N, int K);

/* y[i] = bias[i] + sum over the cnt units k = idx[j] (ascending) of x[k] Wt[k ldw + i], for i < n: a
 * product after a ReLU in generation, against (a block of columns of) the matrix stored down-major
 * (Wt [K, ldw], the transpose of nn.Linear's layout), with idx the nonzero units of x (nz_index: its
 * indices k < K with x[k] != 0, ascending, into idx [K]; returns their count), so that a zero unit's
 * row of weights is never read. The sum of gemv_one in another order: one FMA a unit, in order, from
 * the bias, so every y[i] gets the same bits whichever block or thread computes it. A zero x[k] drops
 * its row even where a weight is Inf or NaN (0 * Inf would be NaN); a NaN x[k] is kept. Skipping
 * pays only where each row is read in one long run (blocks of 256 outputs: 1 KiB of floats); which
 * layouts pay, and at what share of zeros, is measured in bench/RESULTS.md (session 11). The _bf16
 * form reads bf16 weights, each widened exactly. */
int nz_index(const float *x, int K, int *idx);
void gemv_t_nz(float *y, const float *x, const int *idx, int cnt, const float *Wt, int ldw, const float *bias, int n);
void gemv_t_nz_bf16(float *y, const float *x, const int *idx, int cnt, const uint16_t *Wt, int ldw, const float *bias, int n);

#endif
