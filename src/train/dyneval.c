/* dyneval.c: dynamic evaluation (see dyneval.h). */
#include "train/dyneval.h"

#include <math.h>
#include <string.h>
#include "data/dataloader.h"

moelm_status dyn_create(DynEval *d, Model *m, float lr, float decay, const float *ms, float grad_clip) {
    CHECK(m->B == 1 && !m->ed);
    CHECK(lr >= 0.0f && decay >= 0.0f && decay <= 1.0f);
    memset(d, 0, sizeof *d);
    size_t n = m->n_params;
    d->m = m;
    d->theta0 = moelm_malloc(sizeof(float) * (n ? n : 1));
    d->rscale = ms ? moelm_malloc(sizeof(float) * (n ? n : 1)) : NULL;
    d->inp = moelm_malloc(sizeof(int) * (size_t)m->T);
    d->tgt = moelm_malloc(sizeof(int) * (size_t)m->T);
    if (!d->theta0 || (ms && !d->rscale) || !d->inp || !d->tgt) {
        dyn_free(d);
        return MOELM_ERR_NOMEM;
    }
    memcpy(d->theta0, m->params, sizeof(float) * n);
    if (ms) {
        /* eps: 1% of the mean RMS gradient, so that a weight training barely moved takes no huge step */
        double sum = 0.0;
        size_t cnt = 0;
        for (int i = 0; i < m->n_tensors; i++) {
            const TensorInfo *t = &m->tensors[i];
            if (!t->trainable) continue;
            for (size_t k = 0; k < t->size; k++) sum += sqrt((double)ms[t->offset + k]);
            cnt += t->size;
        }
        float eps = cnt ? (float)(0.01 * sum / (double)cnt) : 1.0f;
        if (!(eps > 0.0f)) eps = 1e-8f;
        for (size_t k = 0; k < n; k++) d->rscale[k] = 1.0f / (sqrtf(ms[k]) + eps);
    }
    d->tc.grad_clip = grad_clip;
    d->tr = (Trainer){m, NULL, &d->tc, 0};
    d->rule = (DynRule){lr, decay, d->theta0, d->rscale};
    return MOELM_OK;
}

void dyn_free(DynEval *d) {
    moelm_free(d->theta0);
    moelm_free(d->rscale);
    moelm_free(d->inp);
    moelm_free(d->tgt);
    memset(d, 0, sizeof *d);
}

void dyn_ms_from_adam(float *ms, const Optimizer *o, float beta2) {
    float bc = o->t > 0 ? 1.0f - powf(beta2, (float)o->t) : 1.0f;
    for (size_t k = 0; k < o->n; k++) ms[k] = o->v[k] / bc;
}

size_t dyn_segments(size_t n, int T) {
    return eval_num_batches(n, 1, T, T);
}

void dyn_segment(DynEval *d, const int *ids, size_t n, size_t s, EvalResult *r, float *tok_nll) {
    Model *m = d->m;
    int T = m->T;
    eval_batch(ids, n, 1, T, T, s, d->inp, d->tgt);
    /* the forward inside the step scores the segment before the update: its losses are read after */
    train_step_dynamic(&d->tr, d->inp, d->tgt, &d->rule);
    for (int i = 0; i < T; i++) {
        if (d->tgt[i] < 0) continue;
        r->nll += m->a.losses[i];
        if (tok_nll) tok_nll[s * (size_t)T + (size_t)i + 1] = m->a.losses[i];
    }
    r->tokens += m->n_valid;
}

moelm_status evaluate_dynamic(DynEval *d, const int *ids, size_t n, EvalResult *r, float *tok_nll) {
    memset(r, 0, sizeof *r);
    size_t ns = dyn_segments(n, d->m->T);
    for (size_t s = 0; s < ns; s++) dyn_segment(d, ids, n, s, r, tok_nll);
    return MOELM_OK;
}
