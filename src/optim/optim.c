/* optim.c: see optim.h. */
#include "optim/optim.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "backend/comm.h"

moelm_status optim_create(Optimizer *o, size_t n) {
    memset(o, 0, sizeof *o);
    o->m = moelm_calloc(n, sizeof(float));
    o->v = moelm_calloc(n, sizeof(float));
    if (!o->m || !o->v) {
        optim_free(o);
        return MOELM_ERR_NOMEM;
    }
    o->n = n;
    return MOELM_OK;
}

void optim_free(Optimizer *o) {
    moelm_free(o->m);
    moelm_free(o->v);
    moelm_free(o->ema);
    memset(o, 0, sizeof *o);
}

moelm_status optim_enable_ema(Optimizer *o, const Model *m) {
    CHECK(o->n == m->n_params);
    if (!o->ema && !(o->ema = moelm_malloc(sizeof(float) * (o->n ? o->n : 1)))) return MOELM_ERR_NOMEM;
    memcpy(o->ema, m->params, sizeof(float) * o->n);
    return MOELM_OK;
}

void optim_swap_ema(Optimizer *o, Model *m) {
    CHECK(o->ema);
    for (int i = 0; i < m->n_tensors; i++) {
        const TensorInfo *t = &m->tensors[i];
        if (!t->trainable) continue;
        float *p = m->params + t->offset, *a = o->ema + t->offset;
        for (size_t k = 0; k < t->size; k++) {
            float x = p[k];
            p[k] = a[k];
            a[k] = x;
        }
    }
}

const char *optim_name(const TrainConfig *tc) {
    return tc->adamw == 2 ? "adamw-scale" : tc->adamw ? "adamw" : "adam";
}

/* max(1e-3, RMS) of a trainable tensor, every expert-parallel shard of it included (a collective then) */
static float tensor_rms(const TensorInfo *t, const float *p) {
    double ss = 0.0;
#pragma omp parallel for simd schedule(static) reduction(+ : ss) if (t->size >= 32768)
    for (size_t k = 0; k < t->size; k++) ss += (double)p[k] * (double)p[k];
    double s[2] = {ss, (double)t->size};
    if (tensor_sharded(t)) comm_allreduce_f64(COMM_EP, s, 2);
    double r = sqrt(s[0] / (s[1] > 0 ? s[1] : 1.0));
    return (float)(r > 1e-3 ? r : 1e-3);
}

/* 1 for a buffer (trainable == 0), which no update touches: its gradient is zeroed (consumed) */
static int buffer_skipped(Model *m, const TensorInfo *t) {
    if (t->trainable) return 0;
    memset(m->grads + t->offset, 0, sizeof(float) * t->size);
    return 1;
}

/* Adam's update of elements [lo, hi) of one tensor (each independent: no two threads touch the same
 * index). The gradient is read once, scaled (the clip; g * 1 is g exactly) and zeroed in the same pass.
 * Inlined with adamw and has_ema constant inside the parallel region (below), so each of its four
 * loops is straight-line code that GCC vectorises: with the two tests in the loop it stayed scalar,
 * and a parallel for inside this function would be outlined once, before the constants are known. */
static inline __attribute__((always_inline)) void adam_range(size_t lo, size_t hi, float *restrict p,
                                                            float *restrict g, float *restrict mm,
                                                            float *restrict vv, float *restrict ema, int adamw,
                                                            int has_ema, float gscale, float wd, float b1,
                                                            float b2, float bc1, float bc2, float eps, float rel,
                                                            float lr, float ema_w) {
    for (size_t k = lo; k < hi; k++) {
        float gk = g[k] * gscale;
        g[k] = 0.0f;
        if (!adamw) gk += wd * p[k];
        mm[k] = b1 * mm[k] + (1.0f - b1) * gk;
        vv[k] = b2 * vv[k] + (1.0f - b2) * gk * gk;
        float upd = rel * ((mm[k] / bc1) / (sqrtf(vv[k] / bc2) + eps));
        if (adamw) upd += wd * p[k];
        p[k] -= lr * upd;
        if (has_ema) ema[k] += ema_w * (p[k] - ema[k]);
    }
}

void optim_step(Optimizer *o, Model *m, const TrainConfig *tc, float lr, float gscale) {
    o->t++;
    float b1 = tc->beta1, b2 = tc->beta2, eps = tc->eps;
    float bc1 = 1.0f - powf(b1, (float)o->t), bc2 = 1.0f - powf(b2, (float)o->t);
    float ema_d = (1.0f + (float)o->t) / (10.0f + (float)o->t);
    if (tc->ema_decay < ema_d) ema_d = tc->ema_decay;
    float ema_w = 1.0f - ema_d;   /* the new weights' share of the average */
    for (int i = 0; i < m->n_tensors; i++) {
        const TensorInfo *t = &m->tensors[i];
        if (buffer_skipped(m, t)) continue;
        float *p = m->params + t->offset, *g = m->grads + t->offset;
        size_t n = t->size;
        float wd = t->decay ? tc->weight_decay : 0.0f;
        float *mm = o->m + t->offset, *vv = o->v + t->offset;
        float *ema = o->ema && tc->ema_decay > 0 ? o->ema + t->offset : NULL;
        float rel = tc->adamw == 2 ? tensor_rms(t, p) : 1.0f;   /* adamw-scale: the step relative to the tensor */
        int adamw = tc->adamw != 0;
#pragma omp parallel if (n >= 32768)
        {
#ifdef _OPENMP
            size_t nt = (size_t)omp_get_num_threads(), r = (size_t)omp_get_thread_num();
#else
            size_t nt = 1, r = 0;
#endif
            size_t lo = n * r / nt, hi = n * (r + 1) / nt;   /* as schedule(static): contiguous shares */
#define ADAM_RANGE(aw, he) adam_range(lo, hi, p, g, mm, vv, ema, aw, he, gscale, wd, b1, b2, bc1, bc2, eps, rel, lr, ema_w)
            if (adamw && ema) ADAM_RANGE(1, 1);
            else if (adamw) ADAM_RANGE(1, 0);
            else if (ema) ADAM_RANGE(0, 1);
            else ADAM_RANGE(0, 0);
#undef ADAM_RANGE
        }
    }
}

void optim_dyn_step(const DynRule *r, Model *m, float gscale) {
    for (int i = 0; i < m->n_tensors; i++) {
        const TensorInfo *t = &m->tensors[i];
        if (buffer_skipped(m, t)) continue;
        float *p = m->params + t->offset, *g = m->grads + t->offset;
        size_t n = t->size;
        const float *p0 = r->theta0 + t->offset, *rs = r->rscale ? r->rscale + t->offset : NULL;
        float lr = r->lr, lambda = r->decay;
        /* each element is independent: no two threads touch the same index. Krause et al.'s rule,
         * theta <- theta - lr g / (sqrt(MS) + eps) + lambda (theta0 - theta), both terms from the same theta
         * (lr 0 and lambda 0 leave every weight with its bits) */
#pragma omp parallel for schedule(static) if (n >= 32768)
        for (size_t k = 0; k < n; k++) {
            float gk = g[k] * gscale;
            g[k] = 0.0f;
            p[k] = p[k] - lr * (rs ? gk * rs[k] : gk) + lambda * (p0[k] - p[k]);
        }
    }
}

float grad_norm(const Model *m) {
    double ss = 0.0, shard_ss = 0.0;   /* replicated tensors; this rank's shards of the experts */
    int sharded = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const TensorInfo *t = &m->tensors[i];
        if (!t->trainable) continue;
        const float *g = m->grads + t->offset;
        double s = 0.0;
        /* the reduction is per-thread partial sums, each over the vector lanes, combined by OpenMP:
         * the order is fixed for a fixed thread count (static schedule), which is what bit-exact
         * resume needs. One serial chain of double adds per thread was 4 cycles an element (~1% of
         * a dense seed step); lanes make it a pass at memory speed. */
#pragma omp parallel for simd schedule(static) reduction(+ : s) if (t->size >= 32768)
        for (size_t k = 0; k < t->size; k++) s += (double)g[k] * (double)g[k];
        if (tensor_sharded(t)) { shard_ss += s; sharded = 1; }
        else ss += s;
    }
    /* expert parallelism: the expert-parallel group together holds every expert once */
    if (sharded) comm_allreduce_f64(COMM_EP, &shard_ss, 1);
    ss += shard_ss;
    return (float)sqrt(ss);
}

float clip_scale(float norm, float max_norm) {
    return max_norm > 0.0f && isfinite(norm) && norm > max_norm ? max_norm / norm : 1.0f;
}

float grad_clip(Model *m, float max_norm) {
    float norm = grad_norm(m), scale = clip_scale(norm, max_norm);
    if (scale != 1.0f) {
        for (int i = 0; i < m->n_tensors; i++) {
            const TensorInfo *t = &m->tensors[i];
            if (!t->trainable) continue;
            float *g = m->grads + t->offset;
#pragma omp parallel for schedule(static) if (t->size >= 32768)
            for (size_t k = 0; k < t->size; k++) g[k] *= scale;
        }
    }
    return norm;
}

float lr_at_progress(const TrainConfig *tc, long step, double progress) {
    float lr = tc->lr;
    if (tc->warmup_steps > 0 && step < tc->warmup_steps) return lr * (float)(step + 1) / (float)tc->warmup_steps;
    if (tc->schedule == SCHED_CONSTANT) return lr;
    float frac = progress < 0 ? 0.0f : progress > 1 ? 1.0f : (float)progress;
    float lo = lr * tc->min_lr_ratio;
    if (tc->schedule == SCHED_COSINE) return lo + (lr - lo) * 0.5f * (1.0f + cosf(3.14159265358979f * frac));
    return lr - (lr - lo) * frac;
}

float lr_at(const TrainConfig *tc, long step, long total) {
    long span = total - tc->warmup_steps;
    return lr_at_progress(tc, step, span > 0 ? (double)(step - tc->warmup_steps) / (double)span : 0.0);
}
