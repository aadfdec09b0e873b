/* step.c: the training step (see step.h). */
#include "train/step.h"

#include <math.h>
#include "model/encdec.h"
#include "train/dist.h"
#include "train/hooks.h"

/* The step once the batch is known: N forwards and backwards (micro-batch k's forward is the
 * caller's, through fwd), then the rest. Gradient accumulation: grads sum the micro-batches'
 * gradients (the backward adds), and the update takes their mean (1/N folded into the clip scale;
 * N = 1 divides by 1, the same bits). */
static StepResult step_with(Trainer *t, void (*fwd)(Model *m, const void *batch, int k), const void *batch, int N,
                            float lr, long step, const DynRule *dyn) {
    Model *m = t->model;
    StepResult r = {0};
    double t0 = time_now(), f = 0, b = 0;
    if (!t->grads_zero) model_zero_grad(m);
    t->grads_zero = 0;
    float aux = 0.0f;
    for (int k = 0; k < N; k++) {
        double a = time_now();
        fwd(m, batch, k);
        float loss = dist_loss(m);
        r.loss = N == 1 ? loss : r.loss + loss / (float)N;
        double c = time_now();
        hook_kill_rank(step);
        if (m->ed) encdec_backward(m);
        else model_backward(m);
        aux = N == 1 ? m->aux_loss : aux + m->aux_loss / (float)N;
        f += c - a;
        b += time_now() - c;
    }
    double t1 = time_now();
    dist_reduce_grads(m);
    double t2 = time_now();
    hook_nonfinite(m, &r.loss, step);
    r.aux_loss = aux;
    r.grad_norm = grad_norm(m) / (float)N;   /* NaN/Inf exactly when a gradient is */
    r.nonfinite = !isfinite(r.loss) || !isfinite(r.grad_norm) || !isfinite(r.aux_loss);
    if (!r.nonfinite && dyn) {   /* dynamic evaluation: its own rule, the expert bias as trained */
        optim_dyn_step(dyn, m, clip_scale(r.grad_norm, t->tc->grad_clip));
        t->grads_zero = 1;
    } else if (!r.nonfinite) {
        optim_step(t->opt, m, t->tc, lr, clip_scale(r.grad_norm, t->tc->grad_clip) / (float)N);
        t->grads_zero = 1;
        MoELayer ml[CONFIG_MAX_MOE_LAYERS];
        int n = model_moe_layers(m, ml, CONFIG_MAX_MOE_LAYERS);
        for (int l = 0; l < n; l++) moe_update_bias(ml[l].p, ml[l].a, ml[l].cfg);
    }
    double t3 = time_now();
    r.fwd_s = f + (t1 - t0 - f - b);   /* zero grad + forwards + losses */
    r.bwd_s = b + (t2 - t1);
    r.opt_s = t3 - t2;
    return r;
}

typedef struct { const int *inputs, *targets; int training; } LmBatch;

static void lm_forward(Model *m, const void *batch, int k) {
    const LmBatch *b = batch;
    size_t rows = (size_t)m->B * m->T;
    model_forward(m, b->inputs + k * rows, b->targets + k * rows, b->training);
}

static void seq2seq_forward(Model *m, const void *batch, int k) {
    (void)k;
    encdec_forward(m, batch, 1);
}

StepResult train_step(Trainer *t, const int *inputs, const int *targets, float lr, long step) {
    LmBatch b = {inputs, targets, 1};
    return step_with(t, lm_forward, &b, t->tc->grad_accum > 1 ? t->tc->grad_accum : 1, lr, step, NULL);
}

StepResult train_step_dynamic(Trainer *t, const int *inputs, const int *targets, const DynRule *rule) {
    CHECK(!t->model->ed);
    LmBatch b = {inputs, targets, 0};
    return step_with(t, lm_forward, &b, 1, rule->lr, 0, rule);
}

StepResult train_step_seq2seq(Trainer *t, const Seq2SeqBatch *b, float lr, long step) {
    return step_with(t, seq2seq_forward, b, 1, lr, step, NULL);
}
