/* step.c: the training step (see step.h). */
#include "train/step.h"

#include <math.h>
#include "train/dist.h"
#include "train/hooks.h"

StepResult train_step(Trainer *t, const int *inputs, const int *targets, float lr, long step) {
    Model *m = t->model;
    StepResult r = {0};
    double t0 = time_now();
    if (!t->grads_zero) model_zero_grad(m);
    t->grads_zero = 0;
    model_forward(m, inputs, targets, 1);
    r.loss = dist_loss(m);
    double t1 = time_now();
    hook_kill_rank(step);
    model_backward(m);
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
