/* adaptive.h: the adaptive softmax (Grave et al. 2017) as a two-level factorisation over a vocabulary
 * whose ids are ordered by frequency (the word tokenizer's are).
 *
 * Cutoffs c_0 < c_1 < ... < c_{n-1} < V split the ids into a head [0, c_0) and n tail clusters
 * [c_k, c_{k+1}) (c_n = V). The head is a softmax over its c_0 words and one logit per cluster;
 * a word w of cluster k has
 *     log p(w) = log softmax_head(x)[c_0 + k] + log softmax_k(x)[w - c_k]
 * where every word's logit is x . W[w] (W [V, C]: the output matrix, the tied embedding when tied) and a
 * cluster's is x . Wc[k] (Wc [n, C]). The distribution is normalised over all V words. Training reads the
 * head for every row and a cluster's words only for the rows whose target lies in it: with PTB's
 * frequency profile a fifth of the full output layer's products (bench/RESULTS.md).
 *
 * The ops keep ops.h's accumulation contract: dW, dWc +=; dx =.
 */
#ifndef MOELM_ADAPTIVE_H
#define MOELM_ADAPTIVE_H

#include <stddef.h>

#define ADAPTIVE_MAX 8   /* tail clusters at most */

typedef struct {
    int V, C, n;                  /* vocabulary, width, tail clusters (n >= 1) */
    int cut[ADAPTIVE_MAX + 1];    /* cut[0]: head words; cluster k is [cut[k], cut[k + 1]); cut[n] = V */
} AdaptiveShape;

/* What the forward saves for the backward, in caller-owned memory (adaptive_acts_bytes for N rows) */
typedef struct {
    float *logits;    /* [N, H] head logits (H = cut[0] + n), then each cluster's [N_k, S_k] rows (the caller's) */
    float *lse;       /* [N] head log-normaliser */
    float *tlse;      /* [N] the tail rows' log-normalisers, in cluster order */
    float *xg, *dxg;  /* [N, C] a cluster's rows of x gathered, and their gradient */
    float *dlg;       /* [N] a cluster's rows' loss weights */
    int *ht;          /* [N] head targets: the word (< cut[0]), cut[0] + k for cluster k, or -1 */
    int *rows;        /* [N] the rows whose target is in a tail cluster, grouped by cluster */
    int *tt;          /* [N] their targets within the cluster, in the same order */
    int start[ADAPTIVE_MAX + 1];   /* cluster k's rows are rows[start[k] .. start[k + 1]) */
} AdaptiveActs;

size_t adaptive_acts_bytes(const AdaptiveShape *s, int N);
/* a's buffers from mem (adaptive_acts_bytes of it) and the caller's logits [N, V + n] */
void adaptive_acts_bind(AdaptiveActs *a, void *mem, float *logits, const AdaptiveShape *s, int N);

/* losses[N] = -log p(targets[n] | x[n]) (0 for a target < 0), from x [N, C], W [V, C], Wc [n, C] */
void adaptive_forward(AdaptiveActs *a, float *losses, const float *x, const float *W, const float *Wc,
                      const int *targets, const AdaptiveShape *s, int N);
/* dx [N, C] =, dW [V, C] +=, dWc [n, C] += the gradient of sum_n dlosses[n] losses[n]; spends a's logits */
void adaptive_backward(float *dx, float *dW, float *dWc, const float *dlosses, AdaptiveActs *a, const float *x,
                       const float *W, const float *Wc, const AdaptiveShape *s, int N);

/* logits [N, V]: every word's x . W[w], in place to log p(w); clog [N, n]: the clusters' logits */
void adaptive_normalize(float *logits, const float *clog, const AdaptiveShape *s, int N);

#endif
