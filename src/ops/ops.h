/* ops.h: layer math on raw float arrays, forward and backward.
 *
 * Dimensions: B batch, T sequence, C channels, NH heads, V vocab, N rows (= B*T), OC output channels.
 *
 * The accumulation contract (every op in this folder keeps it):
 *   - parameter gradients are ACCUMULATED (+=): the caller zeroes the gradient arena once per step;
 *   - activation gradients are ASSIGNED (=), except where an op reads the residual stream
 *     (layernorm_backward, rmsnorm_backward: dinp +=), because the residual stream has two consumers;
 *   - every backward takes the same saved tensors its forward wrote, and never reads an output
 *     buffer that a later op may have overwritten.
 * Forward:  op_forward(out, saved..., inp, weights..., dims...)
 * Backward: op_backward(dinp, dweights..., dout, saved..., inp, weights..., dims...)
 */
#ifndef MOELM_OPS_H
#define MOELM_OPS_H

#include <stdint.h>
#include "common/util.h"
#include "backend/gemm_bf16.h"

/* ACT_GELU_TANH is HF's "gelu_new" (T5 v1.1, GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
 * ACT_GEGLU is T5 v1.1's "gated-gelu": gelu_new(x W_0) * (x W_1), laid out as ACT_SWIGLU is. */
typedef enum { ACT_RELU = 0, ACT_GELU = 1, ACT_SWIGLU = 2, ACT_GELU_TANH = 3, ACT_GEGLU = 4 } Activation;

/* Gated activations read two columns per output (inp [N, 2H]): SwiGLU and GEGLU. */
static inline int activation_gated(Activation act) { return act == ACT_SWIGLU || act == ACT_GEGLU; }
/* The width of the input of an activation with H outputs, so of an FFN's first product [H1, C]:
 * 2H when gated (the gate columns, then the up columns), H otherwise. */
static inline int activation_in_width(Activation act, int H) { return activation_gated(act) ? 2 * H : H; }

/* out[B,T,C] = wte[inp[b,t]] + wpe[t]. wpe may be NULL (no learned positions). */
void encoder_forward(float *out, const int *inp, const float *wte, const float *wpe, int B, int T, int C);
/* dwte[V,C] +=, dwpe[maxT,C] += (may be NULL). */
void encoder_backward(float *dwte, float *dwpe, const float *dout, const int *inp, int B, int T, int C);

/* LayerNorm over the last axis: out[N,C], mean[N], rstd[N] saved. */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                       const float *b, int N, int C, float eps);
/* dinp[N,C] += (residual stream), dw[C] +=, db[C] += */
void layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, const float *mean, const float *rstd, int N, int C);

/* RMSNorm (T5/Switch): out = inp * rstd * w, rstd[N] saved. */
void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int C, float eps);
/* dinp[N,C] +=, dw[C] += */
void rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                      const float *rstd, int N, int C);

/* out[N,OC] = inp[N,C] @ w[OC,C]^T + bias[OC] (bias may be NULL). PyTorch nn.Linear layout. */
void matmul_forward(float *out, const float *inp, const float *w, const float *bias, int N, int C, int OC);
/* dinp[N,C] = (may be NULL: not needed), dw[OC,C] +=, dbias[OC] += (may be NULL) */
void matmul_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                     const float *w, int N, int C, int OC);

/* The same in mixed precision: the products in bf16 operands with float sums (gemm_bf16.h), the
 * weight w [OC, C] read from its packed bf16 forms w16 (bf16_weight_pack'ed from it; dw still float:
 * +=), inp and dout rounded as they are read; bias and dbias in float. */
void matmul_forward_bf16(float *out, const float *inp, const Bf16Weight *w16, const float *bias, int N, int C, int OC);
void matmul_backward_bf16(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                          const Bf16Weight *w16, int N, int C, int OC);

/* Multi-head self-attention core (after the QKV projection, before the output projection).
 * qkv[B,T,3C] holds q, k, v for each position (C each, heads of size C/NH side by side).
 * att[B,NH,T,T] saves the softmax probabilities (zero above the diagonal when causal).
 * out[B,T,C] = per head softmax(q k^T / sqrt(hs) + mask) v */
void attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int NH, int causal);
/* One query row of one head, the body of attention_forward (and of generation's step over its KV
 * cache): a[n] = softmax(q . k_u / sqrt(hs)) over keys u = 0..n-1, o[hs] = sum_u a[u] v_u, where key
 * and value u start at k + u stride and v + u stride. */
void attention_row(float *o, float *a, const float *q, const float *k, const float *v, size_t stride, int n, int hs);
/* attention_row over generation's cache layout: the keys transposed, kT[d ldk + u] (dimension d of key
 * u, ldk >= n), and the values as rows v[u hs + i]. The scores of 16 keys come from one vector (for hs
 * a multiple of 16 up to 64 with AVX-512); results differ from attention_row's by float reordering. */
void attention_step(float *o, float *a, const float *q, const float *kT, size_t ldk, const float *v, int n, int hs);
/* dqkv[B,T,3C] = ; datt[B,NH,T,T] is scratch */
void attention_backward(float *dqkv, float *datt, const float *dout, const float *att, const float *qkv,
                        int B, int T, int C, int NH, int causal);
/* The plain references of the two above (scalar loops, libm expf), always compiled; the fast
 * kernels are tested against them on odd shapes (tests/test_ops.c). */
void attention_forward_ref(float *out, float *att, const float *qkv, int B, int T, int C, int NH, int causal);
void attention_backward_ref(float *dqkv, float *datt, const float *dout, const float *att, const float *qkv,
                            int B, int T, int C, int NH, int causal);

/* Elementwise activations. For ACT_SWIGLU the input is [N, 2H] (gate columns 0..H-1, then up
 * columns H..2H-1) and the output [N, H] = silu(gate) * up; ACT_GEGLU the same with gelu_new(gate).
 * For ReLU/GELU/GELU_TANH, inp and out are [N, H]. GELU is the exact erf form (PyTorch's default). */
void activation_forward(float *out, const float *inp, Activation act, int N, int H);
/* Columns [lo, hi) of one row of activation_forward (N = 1; inp [2H] if gated, [H] otherwise), on the
 * calling thread, with the values activation_forward gives them: a team shares a row out by columns. */
void activation_forward_cols(float *out, const float *inp, Activation act, int H, int lo, int hi);
/* dinp = (shape of inp) */
void activation_backward(float *dinp, const float *dout, const float *inp, Activation act, int N, int H);

/* Inverted dropout: out = inp * mask / (1 - p); mask[n] in {0,1} saved, mask[i] = rng_at_uniform(key,
 * first + i) >= p (element i's place in its site's stream: first = where these n elements start in the
 * global batch, so ranks holding other rows draw the rest of one process's mask). p == 0 copies (mask
 * all 1). out may alias inp. */
void dropout_forward(float *out, uint8_t *mask, const float *inp, float p, size_t n, uint64_t key, uint64_t first);
/* dinp = dout * mask / (1 - p); dinp may alias dout. */
void dropout_backward(float *dinp, const float *dout, const uint8_t *mask, float p, size_t n);

/* Softmax cross-entropy per row: losses[N] = -log softmax(logits[n])[targets[n]], and (unless lse is
 * NULL) lse[n] = log sum_v exp(logits[n][v]), which the backward takes instead of reading each row
 * twice more. A target < 0 is ignored (loss 0, lse[n] not written). */
void crossentropy_forward(float *losses, float *lse, const float *logits, const int *targets, int N, int V);
/* dlogits[N,V] = dlosses[n] * (softmax(logits[n]) - onehot(targets[n])), softmax = exp(logits - lse)
 * with the forward's lse, in one pass over each row; dlogits may alias logits. */
void crossentropy_backward(float *dlogits, const float *logits, const float *lse, const int *targets,
                           const float *dlosses, int N, int V);

/* Row-wise softmax, in place allowed: out[N,V] */
void softmax_forward(float *out, const float *inp, int N, int V);

/* out[n] = a[n] + b[n] (out may alias a) */
void add_forward(float *out, const float *a, const float *b, size_t n);

#endif
