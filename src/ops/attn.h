/* attn.h: the general attention core, rotary positions and T5 relative position biases, the pieces
 * of Hugging Face's T5 / Switch Transformers and Llama / Mixtral attention between the projections.
 *
 * Dimensions: B batch, Tq queries and Tk keys per sequence, NH query heads, NKV key/value heads
 * (NH % NKV == 0: grouped-query attention, query head h reads kv head h / (NH / NKV), the order of
 * HF's repeat_kv), hd head width (independent of d_model: T5's d_kv * num_heads may differ from it),
 * P positions in a rotary table, NB buckets of a relative position table.
 *
 * The attention of one head and sequence, as HF's eager attention computes it in float32:
 *     s[i, j] = scale * (q_i . k_j) + bias[h, i, j]           (bias: T5's position bias, or none)
 *     s[i, j] = finfo(float32).min where key j is masked       (key_mask[b, j] == 0, or j > i + Tk - Tq if causal)
 *     a[i, :] = softmax(s[i, :]);   out_i = sum_j a[i, j] v_j
 * HF adds the dtype's minimum, -FLT_MAX, to a masked score instead of -inf; any score plus it rounds
 * to exactly -FLT_MAX, so
 *   - in a row with at least one visible key the masked keys get probability exactly 0, and
 *   - a row whose keys are ALL masked (a padding query under causal left padding, a sequence that
 *     is all padding, Tq > Tk under causal) has every score equal: a[i, j] = 1 / Tk for every key,
 *     masked and causally hidden ones included, and out_i is the mean of all Tk values (not NaN,
 *     not zero). The backward is the softmax backward through those probabilities, which is what
 *     autograd gives HF (the true derivative of the forward in q, k, bias is 0 there, since the
 *     rounding absorbs them; a loss that ignores padding never sees the difference).
 *   (HF's sdpa path unmasks such rows instead and attends to the real scores: only eager is matched.)
 *
 * The accumulation contract of ops.h: dq, dk, dv are assigned, dbias and dtable accumulate (+=).
 */
#ifndef MOELM_ATTN_H
#define MOELM_ATTN_H

#include <stddef.h>
#include <stdint.h>
#include "common/util.h"

/* The shape and options of one attention call. q row (b, t) starts at q + (b Tq + t) ldq and its head
 * h at + h hd; k and v rows (b, u) at k + (b Tk + u) ldk, v + (b Tk + u) ldv, kv head g at + g hd; out
 * row (b, t) at out + (b Tq + t) ldo. So q, k, v may be column slices of one fused projection output
 * (ldq = ldk = ldv = (NH + 2 NKV) hd) or separate buffers (ldq = NH hd, ldk = ldv = NKV hd). The
 * gradients dq, dk, dv and dout use the same strides as q, k, v and out. */
typedef struct {
    int B, Tq, Tk;          /* batch, queries and keys per sequence (cross-attention: Tq != Tk) */
    int NH, NKV, hd;        /* query heads, key/value heads (NH % NKV == 0), head width */
    size_t ldq, ldk, ldv, ldo;   /* row strides in floats (>= NH hd for q and out, >= NKV hd for k, v) */
    float scale;            /* multiplies q . k: 1/sqrt(hd) for Llama/Mixtral, 1 for T5 */
    int causal;             /* query i sees keys j <= i + Tk - Tq (decoding against a cache too) */
} AttnDims;

/* out = attention(q, k, v); att[B, NH, Tq, Tk] saves the probabilities (exact zeros at masked keys of
 * rows with a visible key). bias[NH, Tq, Tk] (shared over the batch) and key_mask[B, Tk] (nonzero
 * keeps the key, 0 drops it, HF's attention_mask) may each be NULL. */
void attn_forward(float *out, float *att, const float *q, const float *k, const float *v, const float *bias,
                  const uint8_t *key_mask, const AttnDims *d);
/* dq, dk, dv = (the strides of q, k, v; only the head columns are written), dbias[NH, Tq, Tk] +=
 * (may be NULL: no bias gradient); datt[B, NH, Tq, Tk] is scratch (it ends holding the gradient of
 * the scores, whose sum over b is dbias's increment). att is the forward's. */
void attn_backward(float *dq, float *dk, float *dv, float *dbias, float *datt, const float *dout, const float *att,
                   const float *q, const float *k, const float *v, const AttnDims *d);
/* The plain references of the two above (scalar loops, libm expf), always compiled; the fast
 * versions are tested against them on odd shapes (tests/test_attn.c). */
void attn_forward_ref(float *out, float *att, const float *q, const float *k, const float *v, const float *bias,
                      const uint8_t *key_mask, const AttnDims *d);
void attn_backward_ref(float *dq, float *dk, float *dv, float *dbias, float *datt, const float *dout,
                       const float *att, const float *q, const float *k, const float *v, const AttnDims *d);

/* Dropout on the probabilities, as Hugging Face's T5 / Switch attention applies it in training (after
 * the softmax, before the values): after attn_forward (which saved att), out = att_d v with att_d =
 * att * mask / (1 - p), mask[B, NH, Tq, Tk] drawn as dropout_forward's (key, first + i) and att_d
 * [B, NH, Tq, Tk] written (scratch the caller may reuse). The backward replaces attn_backward for such a
 * forward: dv = att_d^T dout, d att = (dout v^T) mask / (1 - p), then the softmax's backward through
 * att; att_d is scratch again (recomputed from att and mask), the rest as attn_backward. Both are one
 * GEMM route over whole (b, h) blocks; tests/test_attn.c holds them to finite differences and, with
 * every key kept and p = 0, to attn_forward / attn_backward. */
void attn_dropout_forward(float *out, float *att_d, uint8_t *mask, const float *att, const float *v, float p,
                          const AttnDims *d, uint64_t key, uint64_t first);
void attn_dropout_backward(float *dq, float *dk, float *dv, float *dbias, float *datt, float *att_d, const float *dout,
                           const float *att, const uint8_t *mask, float p, const float *q, const float *k,
                           const float *v, const AttnDims *d);

/* One new query of one sequence against n cached keys (generation): the last row of attn_forward
 * with Tq = 1, Tk = n (so causal or not alike). q and out [NH hd]; a [NH, n] gets the probabilities.
 * The cache of kv head g: keys transposed, kT + g k_head_stride, dimension i of key u at
 * [i ldk + u] (ldk >= n), and values as rows, v + g v_head_stride, value u at [u hd]: the layout of
 * ops.h's attention_step, so 16 keys' scores come from one vector. bias [NH, n] (row h at h ldb) and
 * key_mask [n] may be NULL. Runs on the calling thread. */
void attn_step(float *out, float *a, const float *q, const float *kT, size_t ldk, size_t k_head_stride,
               const float *v, size_t v_head_stride, const float *bias, size_t ldb, const uint8_t *key_mask, int n,
               int NH, int NKV, int hd, float scale);

/* ---- rotary positions (Llama, Mixtral) ---------------------------------------------------------------
 * HF's rotate_half form: dimension i of a head pairs with i + hd/2, rotated by the angle
 * pos * inv_freq_i, inv_freq_i = 1 / theta^(2i / hd), with HF's float32 rounding: the exponent 2i/hd,
 * the power and its reciprocal, and the angle pos * inv_freq are each rounded to float as torch does;
 * cos and sin of that float angle are correctly rounded (torch's are within an ulp). Then
 *     x'_i = x_i cos - x_{i+hd/2} sin,   x'_{i+hd/2} = x_{i+hd/2} cos + x_i sin   (no fused multiply-add). */

/* inv[hd/2]: inv_freq_i as HF rounds it (hd even, theta > 0). */
void rope_inv_freq(float *inv, int hd, float theta);
/* cos[P, hd/2], sin[P, hd/2]: the tables of positions 0..P-1 (hd even), computed once. */
void rope_tables(float *cos, float *sin, int P, int hd, float theta);
/* Rotates NHR heads of hd in place in each of N rows: row n at x + n ld, head r at + r hd, at position
 * pos[n] (0 <= pos[n] < P, the tables' positions). */
void rope_forward(float *x, const int *pos, const float *cos, const float *sin, int P, int N, int NHR, int hd,
                  size_t ld);
/* dx = R(-angle) dx in place: the transpose of the rotation, the gradient of the input. */
void rope_backward(float *dx, const int *pos, const float *cos, const float *sin, int P, int N, int NHR, int hd,
                   size_t ld);
/* pos[B, T] = offset + t: the positions of B sequences of T tokens after offset cached ones (decoding). */
void rope_positions(int *pos, int B, int T, int offset);

/* ---- T5 relative position bias (T5, Switch Transformers) ---------------------------------------------
 * HF's _relative_position_bucket of rel = key position - query position: bidirectional, half the
 * buckets for rel > 0; then |rel| (or -min(rel, 0) one-way) below max_exact = buckets/2 is its own
 * bucket, larger ones max_exact + trunc(log(|rel| / max_exact) / log(max_distance / max_exact) *
 * (buckets - max_exact)) in float32 as torch computes it, capped at buckets - 1. */
int t5_relative_bucket(int rel, int bidirectional, int num_buckets, int max_distance);
/* bkt[Tq + Tk - 1]: bkt[j - i + Tq - 1] = the bucket of rel = j - (i + q0), for query i (at position
 * i + q0: q0 = cached positions when decoding) and key j. Computed once per shape. */
void posbias_buckets(int *bkt, int Tq, int Tk, int q0, int bidirectional, int num_buckets, int max_distance);
/* bias[NH, Tq, Tk] = table[bkt[j - i + Tq - 1], h], table [NB, NH] (nn.Embedding's layout) */
void posbias_forward(float *bias, const int *bkt, const float *table, int NH, int Tq, int Tk);
/* dtable[NB, NH] += the sum of dbias[h, i, j] over the (i, j) of each bucket */
void posbias_backward(float *dtable, const float *dbias, const int *bkt, int NH, int Tq, int Tk);

#endif
