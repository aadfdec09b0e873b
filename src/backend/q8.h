/* q8.h: IEEE half precision (fp16), ggml's Q8_0 blocks, and the Q8_0 matrix-vector product that
 * generation runs on 8-bit weights.
 *
 * Dimensions: M output rows, K inputs (a multiple of Q8_0_BLOCK = 32).
 *
 * fp16: fp16_to_f32 is exact (subnormals, +-0, +-Inf; a NaN keeps its sign and payload and is made
 * quiet, as F16C's conversion does); fp16_round rounds to
 * nearest, ties to even, overflows to +-Inf (from 65520 up), keeps subnormals, and makes a NaN a
 * quiet NaN with the top 10 bits of its payload (what the F16C instruction does). bfloat16 lives in
 * gemm.h (bf16_round, bf16_to_f32).
 *
 * Q8_0 (ggml's GGML_TYPE_Q8_0): a row of K values is K/32 blocks, each an fp16 scale d and 32 int8
 * q, the value d*q. Quantizing a block (ggml's reference rule): amax = max |x|, d = amax / 127,
 * stored as fp16(d); q = roundf(x * (1/d)) (0 when d == 0; roundf rounds halves away from zero).
 * A block holding a NaN or an Inf is stored as d = NaN, q = 0, so it reads back as NaN (no
 * undefined conversion, and a non-finite input stays visible); q8_0_quantize returns how many such
 * blocks there were (the GGUF writer refuses them).
 *
 * The product y[M] = W[M,K] x[K] reads the int8 weights directly, never a float copy: x is first
 * quantized once to Q8_0 (Q8Vec: the same rule, the scales held as the floats fp16 gives), then
 * every row is a sum over blocks of d_w * d_x * (int8 dot of 32 pairs). The arithmetic is defined
 * exactly, so that the fast kernel and the reference give the same bits:
 *   - a block's 32 products are summed in 8 groups of 4 consecutive pairs (int32, exact);
 *   - blocks are taken in pairs (2p, 2p+1): float lane L (0..15) accumulates group L%8 of block
 *     2p + L/8 as acc[L] = fmaf(d_w * d_x, (float)group_sum, acc[L]) (the scale product d_w * d_x
 *     of two fp16 values is exact in float); a last, odd block feeds lanes 0..7 only;
 *   - y = the 16 lanes folded in halves: acc[L] += acc[L + h] for h = 8, 4, 2, 1 (L < h), then acc[0].
 * q8_0_gemv_ref is that arithmetic in plain loops (always compiled). q8_0_gemv is the fast one: with
 * AVX-512 VNNI (vpdpbusd, an unsigned x signed byte dot product: the weights are made unsigned by
 * adding 128, and the bias is removed by starting each lane from -128 times its 4 x values' sum,
 * Q8Vec.bias); else with AVX2 (vpmaddubsw on |w| and x with w's sign, then vpmaddwd: the same
 * group sums, lanes 0..7 and 8..15 in two registers); else the reference itself. All compute each
 * y[m] from row m alone, so rows split over threads give the bits of the whole.
 */
#ifndef MOELM_Q8_H
#define MOELM_Q8_H

#include <stddef.h>
#include <stdint.h>
#include "common/util.h"

#define Q8_0_BLOCK 32

/* ggml's block_q8_0, 34 bytes: the file layout of a GGUF Q8_0 tensor, one row = K/32 blocks */
typedef struct {
    uint16_t d;                  /* fp16 scale */
    int8_t qs[Q8_0_BLOCK];       /* values d * qs[i] */
} BlockQ8_0;

uint16_t fp16_round(float f);
float fp16_to_f32(uint16_t h);
void fp16_from_f32(uint16_t *dst, const float *src, size_t n);   /* dst[n] = fp16_round(src[n]) */
void fp16_to_f32_n(float *dst, const uint16_t *src, size_t n);
/* dst[n] <- the n 16-bit values (fp16, or bf16 when bf16 != 0) that lie in dst's upper half (bytes
 * [2n, 4n), little-endian), widened front to back in place: dst[i] covers bytes [4i, 4i + 4) and
 * every value j > i lies at or beyond 4i + 4, so none is overwritten before it is read. Lets a
 * reader pread 16-bit data straight into its float destination. */
void widen16_in_place(float *dst, size_t n, int bf16);

/* dst[n/32] <- src[n], n a multiple of 32 (CHECKed); returns the number of blocks whose scale is not
 * finite: those holding a NaN or an Inf (stored as NaN blocks, see above) and those whose amax / 127
 * overflows fp16 (|x| >= 65520 * 127, about 8.3e6: the scale is Inf). */
size_t q8_0_quantize(BlockQ8_0 *dst, const float *src, size_t n);
/* dst[n] <- src[n/32], exactly d * q in float (fp16 d widened, times an integer of at most 8 bits:
 * exact). n a multiple of 32. */
void q8_0_dequantize(float *dst, const BlockQ8_0 *src, size_t n);

/* An input vector quantized for q8_0_gemv: K values as Q8_0 in the kernel's layout. */
typedef struct {
    int K;
    int8_t *q;        /* [K] */
    float *d;         /* [K/32] the block scales, fp16 values widened */
    int32_t *bias;    /* [K/4] -128 * (the sum of each 4 consecutive q): vpdpbusd's offset removed */
    float *src;       /* [K of q8vec_alloc] the floats q8vec_quantize_once last quantized */
    int src_K;        /* how many of them (0: none) */
} Q8Vec;

/* One allocation for x's K values (K > 0, a multiple of 32, CHECKed); MOELM_ERR_NOMEM leaves v
 * zeroed. q8vec_free releases it (a zeroed struct is fine). */
moelm_status q8vec_alloc(Q8Vec *v, int K);
void q8vec_free(Q8Vec *v);
/* v <- x[v->K] quantized (the Q8_0 rule above, blocks with a NaN or Inf get d = NaN). With AVX2 the
 * blocks are quantized in vectors, the same bits as q8_0_quantize's plain rule (tests/test_q8.c). */
void q8vec_quantize(Q8Vec *v, const float *x);
/* q8vec_quantize, skipped when v already holds x: the last vector it quantized had the same K and the
 * same bits (a token step's products that read one input, e.g. q, k and v, or an expert's gate and
 * up, quantize it once). v->K may change between calls (at most q8vec_alloc's K); returns 1 when it
 * quantized. */
int q8vec_quantize_once(Q8Vec *v, const float *x);

/* y[M] = W[M, K] x, W as M rows of K/32 blocks, x quantized in xq (xq->K == K, CHECKed), on the
 * calling thread (inside a parallel region or not). */
void q8_0_gemv(float *y, const BlockQ8_0 *W, const Q8Vec *xq, int M, int K);
void q8_0_gemv_ref(float *y, const BlockQ8_0 *W, const Q8Vec *xq, int M, int K);
/* Which q8_0_gemv this build has: "avx512-vnni", "avx2" or "reference". */
const char *q8_0_kernel_name(void);

#endif
