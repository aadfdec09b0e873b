/* optim.h: Adam and AdamW over the flat parameter arena, global-norm clipping, LR schedules.
 *
 * The moments are two arenas of n_params floats (one allocation each), walked tensor by tensor so
 * that weight decay applies to matrices only (TensorInfo.decay) and buffers (trainable == 0) are
 * left alone.
 */
#ifndef MOELM_OPTIM_H
#define MOELM_OPTIM_H

#include <stddef.h>
#include "model/config.h"
#include "model/model.h"

typedef struct {
    float *m, *v;   /* [n_params] first and second moments */
    float *ema;     /* [n_params] the weights' moving average (TrainConfig.ema_decay > 0), else NULL */
    size_t n;
    long t;         /* updates taken (bias correction) */
} Optimizer;

moelm_status optim_create(Optimizer *o, size_t n_params);
void optim_free(Optimizer *o);

/* The weights' exponential moving average, started as a copy of the model's weights: after each
 * update, ema += (1 - d) * (p - ema) over the trainable tensors, with d = min(ema_decay,
 * (1 + t) / (10 + t)) at update t (a short average early on, while the weights move fast). The
 * buffers (trainable == 0: the expert bias) are not averaged: evaluation uses their current value. */
moelm_status optim_enable_ema(Optimizer *o, const Model *m);

/* Exchanges the trainable tensors' weights with their average (twice: back as they were, exactly):
 * an evaluation of the averaged weights is a swap, the evaluation, a swap. */
void optim_swap_ema(Optimizer *o, Model *m);

/* One update of every trainable tensor from its gradient times gscale (the clip factor of
 * clip_scale, applied on the fly: g * 1 is g exactly). AdamW: p -= lr * (mhat / (sqrt(vhat) + eps) +
 * wd * p); Adam: g += wd * p first (L2), then the same update without the decoupled term.
 * adamw-scale (tc->adamw 2): AdamW whose Adam term is times max(1e-3, RMS(p)) of the tensor before the
 * step (over all its shards under expert parallelism): Adafactor's relative step size, which T5's
 * initialisation assumes (its embeddings start at std 1, its query weights at (d_model d_kv)^-1/2,
 * so one absolute step is 100x apart in relative size; nanoT5 found AdamW needs this to train T5).
 * Consumes the gradients: every gradient is 0 afterwards (zeroed in the same pass that reads it),
 * so the next backward needs no model_zero_grad. */
void optim_step(Optimizer *o, Model *m, const TrainConfig *tc, float lr, float gscale);

/* Dynamic evaluation's update (Krause et al. 2018, src/train/dyneval.h): the weights adapted to the text
 * just read, and pulled back toward the trained ones. */
typedef struct {
    float lr;               /* eta, the step size */
    float decay;            /* lambda, the share of (theta0 - theta) added back each update, in [0, 1] */
    const float *theta0;    /* [n_params] the trained weights */
    const float *rscale;    /* [n_params] 1 / (sqrt(MS) + eps), MS a weight's mean squared gradient on the
                             * training data (the RMS rule); NULL: 1 (plain SGD) */
} DynRule;

/* One update of every trainable tensor: theta <- theta - lr * g * gscale * rscale + decay * (theta0 - theta).
 * Buffers (trainable == 0) keep their values. Consumes the gradients as optim_step does. */
void optim_dyn_step(const DynRule *r, Model *m, float gscale);

/* The global L2 norm of the trainable gradients (double accumulation; with sharded experts the
 * shards' squares are summed over COMM_EP, a collective). NaN or Inf if any gradient is not finite. */
float grad_norm(const Model *m);

/* The factor that brings a gradient of this norm down to max_norm: max_norm / norm when max_norm > 0
 * and the norm is finite and above it, else 1. */
float clip_scale(float norm, float max_norm);

/* grad_norm, then the gradients scaled by clip_scale in place. Returns the norm before clipping.
 * (Training fuses the scaling into optim_step instead: one pass over the gradients fewer.) */
float grad_clip(Model *m, float max_norm);

/* Learning rate at step (0-based) of total: linear warm-up over warmup_steps, then constant,
 * cosine or linear decay to lr * min_lr_ratio at total. */
float lr_at(const TrainConfig *tc, long step, long total);

/* The same schedule with the decay's progress given directly (0..1), e.g. elapsed / time budget. */
float lr_at_progress(const TrainConfig *tc, long step, double progress);

/* "adam", "adamw" or "adamw-scale": the optimizer's name as configs spell it */
const char *optim_name(const TrainConfig *tc);

#endif
