/* step.h: one training step, the only one: `moelm train` (every rank of an mpirun job) and
 * `moelm bench` both call train_step, so what bench times is what training runs.
 *
 * A step on a batch: zero the gradients (when the last step left them), forward with dropout, the
 * mean loss over the global batch (dist_loss), backward, the gradient all-reduce over the ranks
 * (dist_reduce_grads), the non-finite check, the global norm (its clip is fused into the optimizer
 * step), the Adam/AdamW update, and the expert-bias update of every MoE layer (model_moe_layers: the
 * lm's sparse blocks and the seed head alike). A step whose loss, auxiliary loss or gradients are
 * NaN or Inf updates nothing and says so; whether that ends the run is the caller's rule.
 * What it is not: the learning-rate schedule, data, logging (the caller's). Nothing is allocated.
 */
#ifndef MOELM_TRAIN_STEP_H
#define MOELM_TRAIN_STEP_H

#include "model/config.h"
#include "model/encdec.h"
#include "model/model.h"
#include "optim/optim.h"

/* What steps share: the model and optimizer they update, and whether the gradients are known to be
 * zero (optim_step consumes them; the first step and the one after a skipped update zero them). */
typedef struct {
    Model *model;
    Optimizer *opt;
    const TrainConfig *tc;      /* beta1, beta2, eps, weight decay, grad_clip, adamw */
    int grads_zero;             /* start at 0 */
} Trainer;

/* A step's numbers. */
typedef struct {
    float loss;                 /* mean cross-entropy over the global batch's valid targets */
    float aux_loss;             /* the MoE layers' auxiliary losses (Model.aux_loss) */
    float grad_norm;            /* global L2 norm of the gradients before clipping */
    int nonfinite;              /* 1: the loss, aux loss or a gradient was NaN/Inf: no update was made */
    double fwd_s, bwd_s, opt_s; /* wall seconds: zero grad + forward + loss, backward + all-reduce, the rest */
} StepResult;

/* One step on inputs, targets [N*B*T]: N = tc->grad_accum micro-batches of B rows one after the
 * other (1 when grad_accum <= 1), whose gradients add up and whose update is their mean, the update
 * of one batch of N*B (the loss and aux loss are the micro-batches' mean; MoE capacity, balancing
 * and the expert-bias update follow each micro-batch). B is the global batch: under mpirun each rank
 * takes its rows of each micro-batch, dist_take_rows, before calling. At learning rate lr; step is the step's 1-based number (the test
 * hooks' clock, src/train/hooks.h). A collective under mpirun: every rank calls it. */
StepResult train_step(Trainer *t, const int *inputs, const int *targets, float lr, long step);

/* The same step for an encoder-decoder (switch_transformers) on a batch of this rank's rows. */
StepResult train_step_seq2seq(Trainer *t, const Seq2SeqBatch *b, float lr, long step);

/* Dynamic evaluation's step (src/train/dyneval.h) on inputs, targets [B*T]: the forward in evaluation
 * mode (no dropout, no jitter, the evaluation capacity: the pass that scores the text, whose per-token
 * losses Model.a.losses still holds afterwards), its backward (the cross-entropy's mean over the valid
 * targets plus the MoE layers' auxiliary losses, as in training), global-norm clipping at tc->grad_clip,
 * and optim_dyn_step with rule; the expert bias is not updated. t->opt is not used. */
StepResult train_step_dynamic(Trainer *t, const int *inputs, const int *targets, const DynRule *rule);

#endif
