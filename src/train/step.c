/* step.c: the training step (see step.h). */
#include "train/step.h"

#include <math.h>
#include "model/encdec.h"
#include "train/dist.h"
#include "train/hooks.h"

/* The step once the batch is known: the forward (the caller's, through fwd), then the rest. */
static StepResult step_with(Trainer *t, void (*fwd)(Model *m, const void *batch), const void *batch, float lr,
                            long step) {
    Model *m = t->model;
    StepResult r = {0};
    double t0 = time_now();
    if (!t->grads_zero) model_zero_grad(m);
    t->grads_zero = 0;
    fwd(m, batch);
    r.loss = dist_loss(m);
    double t1 = time_now();
    hook_kill_rank(step);
    if (m->ed) encdec_backward(m);
    else model_backward(m);
    dist_reduce_grads(m);
    double t2 = time_now();
    hook_nonfinite(m, &r.loss, step);
    r.aux_loss = m->aux_loss;
    r.grad_norm = grad_norm(m);   /* NaN/Inf exactly when a gradient is */
    r.nonfinite = !isfinite(r.loss) || !isfinite(r.grad_norm) || !isfinite(r.aux_loss);
    if (!r.nonfinite) {
        optim_step(t->opt, m, t->tc, lr, clip_scale(r.grad_norm, t->tc->grad_clip));
        t->grads_zero = 1;
        MoELayer ml[CONFIG_MAX_MOE_LAYERS];
        int n = model_moe_layers(m, ml, CONFIG_MAX_MOE_LAYERS);
        for (int l = 0; l < n; l++) moe_update_bias(ml[l].p, ml[l].a, ml[l].cfg);
    }
    double t3 = time_now();
    r.fwd_s = t1 - t0;
    r.bwd_s = t2 - t1;
    r.opt_s = t3 - t2;
    return r;
}

typedef struct { const int *inputs, *targets; } LmBatch;

static void lm_forward(Model *m, const void *batch) {
    const LmBatch *b = batch;
    model_forward(m, b->inputs, b->targets, 1);
}

static void seq2seq_forward(Model *m, const void *batch) { encdec_forward(m, batch, 1); }

StepResult train_step(Trainer *t, const int *inputs, const int *targets, float lr, long step) {
    LmBatch b = {inputs, targets};
    return step_with(t, lm_forward, &b, lr, step);
}

StepResult train_step_seq2seq(Trainer *t, const Seq2SeqBatch *b, float lr, long step) {
    return step_with(t, seq2seq_forward, b, lr, step);
}
