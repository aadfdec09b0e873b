/* dyneval.h: dynamic evaluation (Krause et al. 2018, "Dynamic Evaluation of Neural Sequence Models").
 *
 * A decoder-only model reads a token stream in order, in segments of its context length T (the windows
 * of a static evaluation at stride T, one at a time): each segment is scored with the current weights,
 * and only then do the weights take one step on that segment's loss (train_step_dynamic: the forward
 * that scored it, its backward, optim_dyn_step). A token's probability therefore depends on the tokens
 * before it alone, and the weights carry what the earlier segments taught across window boundaries
 * that a static evaluation cannot see across. The update, with theta0 the trained weights:
 *     theta <- theta - lr g / (sqrt(MS) + eps) + lambda (theta0 - theta)
 * MS is a weight's mean squared gradient on the training data: a moelm checkpoint's Adam second
 * moment (optimizer.safetensors adam.v, bias-corrected), the average of g^2 over the run's last
 * ~1/(1 - beta2) steps (Krause et al. gather it in a pass over the training set at the evaluation's
 * segment length; this is the same statistic at the training batch's), eps = 1% of the mean sqrt(MS)
 * so that a weight the training barely moved cannot take a huge step (`eval --dyn-rms`). Or plain SGD,
 * g itself: `eval --dynamic`'s default, the better of the two on PTB's validation split (bench/RESULTS.md:
 * the RMS rule gained less and diverged at twice its best lr, SGD at three times). Each update's
 * gradient is clipped at the run's grad_clip.
 *
 * The MoE layers: the router is adapted like every other weight, by the gradient of the segment's
 * cross-entropy plus the auxiliary balance and z losses at the config's coefficients (the objective
 * the model was trained on); routing in the scoring forward is evaluation's (no jitter, the eval
 * capacity factor); the expert bias (a buffer) stays as trained.
 *
 * What it is not: a perplexity comparable with static ones (the model learns from the text it is
 * scored on), nor for the encoder-decoder (span corruption has no reading order). Nothing is
 * allocated per segment: dyn_create sizes everything.
 */
#ifndef MOELM_TRAIN_DYNEVAL_H
#define MOELM_TRAIN_DYNEVAL_H

#include "optim/optim.h"
#include "train/step.h"
#include "train/train.h"

/* the defaults, chosen on PTB's validation split after a short switch-ptb run (bench/RESULTS.md) */
#define DYN_LR_SGD 0.1f
#define DYN_LR_RMS 1e-5f
#define DYN_DECAY 0.01f

typedef struct {
    Model *m;             /* B = 1: one segment at a time, T its context */
    TrainConfig tc;       /* the step's settings: grad_clip (the rest unused) */
    Trainer tr;           /* train_step_dynamic's */
    DynRule rule;         /* lr, decay and the two arrays below */
    float *theta0;        /* [n_params] the trained weights */
    float *rscale;        /* [n_params] 1 / (sqrt(MS) + eps), or NULL: plain SGD */
    int *inp, *tgt;       /* [T] a segment */
} DynEval;

/* Sizes dynamic evaluation for m (B must be 1): theta0 is m's weights as they are now; ms [n_params]
 * the mean squared training gradients (NULL: plain SGD); grad_clip the global-norm clip of each
 * update (0: none). lr >= 0, decay in [0, 1]. */
moelm_status dyn_create(DynEval *d, Model *m, float lr, float decay, const float *ms, float grad_clip);
void dyn_free(DynEval *d);

/* MS from an Adam optimizer's second moment: v / (1 - beta2^t), into ms [o->n]. */
void dyn_ms_from_adam(float *ms, const Optimizer *o, float beta2);

/* The number of segments of a stream of n tokens at T. */
size_t dyn_segments(size_t n, int T);

/* Scores segment s of ids[n] with the current weights (its targets' NLL added to r->nll, their count
 * to r->tokens; tok_nll non-NULL: tok_nll[p] = the NLL of predicting ids[p]), then adapts the weights
 * on it. */
void dyn_segment(DynEval *d, const int *ids, size_t n, size_t s, EvalResult *r, float *tok_nll);

/* Every segment of ids[n] in order (r: nll and tokens as evaluate fills them, no MoE statistics;
 * tok_nll [n] or NULL as in dyn_segment, entries never predicted left as they are). The model's
 * weights end adapted to the whole text. */
moelm_status evaluate_dynamic(DynEval *d, const int *ids, size_t n, EvalResult *r, float *tok_nll);

#endif
