/* gemm_bf16.h: matrix products with bfloat16 operands and float accumulation (mixed precision).
 *
 *   C[M,N] = alpha * op(A)[M,K] op(B)[K,N] + beta * C[M,N]      (row-major, as gemm() in gemm.h)
 *
 * with every element of A and B rounded to bf16 (round to nearest, ties to even: bf16_rne) and the
 * products summed in float, in a fixed order over K: pairs of k (2j, 2j+1), each pair's odd product
 * added before its even one (the order of AVX-512 BF16's vdpbf16ps), pairs in increasing k, in
 * blocks of GEMM_BF16_KC whose sums are added to C in turn. A product of two bf16 values is exact in
 * float, so each step rounds once. The order does not depend on how M and N are cut (threads, halves):
 * an element's bits depend only on its row of A, its column of B, K, alpha, beta and its C.
 *
 * Three kernels compute that, over the same packed operands (the AVX2 and portable ones with the same
 * bits; vdpbf16ps as Intel specifies it, the same order, subnormals flushed):
 *   - vdpbf16ps (AVX-512 BF16: 32 products a vector, twice the float FMA rate), compiled on every
 *     x86-64 build (a function target attribute) and used when the CPU has it (gemm_bf16_fast);
 *   - AVX2 + FMA, widening each bf16 to float (a CPU without AVX-512 BF16, e.g. Zen 3: no faster than
 *     float products, bf16 mode is then for its numbers, not its speed);
 *   - a portable one in plain C, the fallback elsewhere and the others' reference.
 * gemm_bf16_ref is the plain reference of the whole product: the same rounded operands, the sum in
 * double. Inputs are finite normal floats in practice; the portable kernel and bf16_rne keep
 * subnormals, vdpbf16ps flushes them to zero (products below ~1e-38 are lost), within the bound below.
 *
 * Error bound (tests/test_bf16.c): bf16 keeps 8 significant bits, so rounding moves an operand by at
 * most 2^-8 of itself and a product by at most 2^-7 + 2^-16 of itself; the float sum adds at most
 * (K + 2) 2^-24 of sum_k |a_k b_k| (one rounding a step, alpha and beta included). Against the exact
 * product of the unrounded operands: |C - C_exact| <= |alpha| (2^-7 + 2^-16 + (K + 2) 2^-24) S +
 * 2^-24 |beta C|, S = sum_k |a_k b_k|; against gemm_bf16_ref (the rounded operands) only the sum's part.
 *
 * The weights of a linear layer can be packed once (gemm_bf16_pack) and used by many products
 * (gemm_bf16_packed), the layout the kernels read: B's columns in panels of GEMM_BF16_NR, each panel
 * over all of K (rounded up to even), pairs of k in one 32-bit word (k even in the low half).
 * gemm_bf16 takes B in float and packs it per call into a per-thread buffer, allocated on a thread's
 * first product (gemm_bf16_reserve does it for every thread of the OpenMP pool beforehand).
 */
#ifndef MOELM_GEMM_BF16_H
#define MOELM_GEMM_BF16_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define GEMM_BF16_MR 6      /* rows of C a kernel call computes */
#define GEMM_BF16_NR 64     /* columns of C a kernel call computes: a packed panel's width */
#define GEMM_BF16_KC 256    /* k a kernel call sums before adding to C (even) */

/* f rounded to bf16 (the upper 16 bits of a float), to nearest, ties to even; NaN stays a quiet NaN,
 * overflow rounds to Inf. Written without branches so that loops over it vectorise. */
static inline uint16_t bf16_rne(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t q = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? q : r);
}

/* 1 when products run on vdpbf16ps (compiled in and the CPU has AVX-512 BF16); 0: the portable kernel */
int gemm_bf16_fast(void);
/* the kernel products run on: "avx512bf16", "avx2" or "portable" */
const char *gemm_bf16_kernel(void);
/* Test hook: force the portable kernel (1) or the best one the CPU runs (0). Not inside a product. */
void gemm_bf16_force_portable(int on);

/* bf16 elements of B [K,N] packed (panels of GEMM_BF16_NR columns, K rounded up to even) */
size_t gemm_bf16_packed_size(int K, int N);
/* Elements from the start of a packed B to the panel holding column n0 (n0 a multiple of GEMM_BF16_NR):
 * the packed B of columns n0.. is Bp + that. */
size_t gemm_bf16_packed_offset(int K, int n0);
/* Bp = op(B) [K,N] rounded to bf16 and packed; transB: B is stored [N,K] (nn.Linear's weight as
 * the B of x W^T). Each panel is written by one thread. */
void gemm_bf16_pack(uint16_t *Bp, int transB, int K, int N, const float *B, int ldb);

void gemm_bf16(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc);
/* gemm_bf16 with B packed by gemm_bf16_pack (for the same K and at least N columns) */
void gemm_bf16_packed(int transA, int M, int N, int K, float alpha, const float *A, int lda, const uint16_t *Bp,
                      float beta, float *C, int ldc);
void gemm_bf16_ref(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc);

/* A linear layer's weight W [OC, C] (nn.Linear's layout) rounded to bf16 and packed for both of the
 * layer's products that read it: fwd as the B of x W^T (K = C, N = OC), bwd as the B of dy W (K = OC,
 * N = C). Both NULL: not packed (the layer computes in float). bf16_weight_bind points w at mem
 * (E bf16_weight_size elements: the E weights of a slab W [E, OC, C], the fwd forms, then the bwd
 * forms; E = 1 for one matrix); bf16_weight_pack fills them from W; bf16_weight_expert gives expert
 * e's of a slab. */
typedef struct {
    uint16_t *fwd;   /* gemm_bf16_packed_size(C, OC) */
    uint16_t *bwd;   /* gemm_bf16_packed_size(OC, C) */
} Bf16Weight;
size_t bf16_weight_size(int OC, int C);
void bf16_weight_bind(Bf16Weight *w, uint16_t *mem, int E, int OC, int C);
Bf16Weight bf16_weight_expert(const Bf16Weight *slab, int e, int OC, int C);
void bf16_weight_pack(const Bf16Weight *w, const float *W, int E, int OC, int C);

/* Allocates the packing buffers of every thread of an OpenMP team of the current size, so that no
 * product allocates later. 0, or -1 when memory ran out. */
int gemm_bf16_reserve(void);
/* Test hook: packing buffers allocated so far (a step that allocates none adds none) */
long gemm_bf16_buffers(void);

#endif
