/* test_optim.c: LR schedules, AdamW/Adam against a hand-written double-precision update, and
 * global-norm clipping. */
#include <string.h>
#include "test.h"
#include "model/model.h"
#include "optim/optim.h"

TEST(schedules) {
    TrainConfig tc;
    config_preset_train(&tc, "demo");
    tc.lr = 1.0f;
    tc.min_lr_ratio = 0.1f;
    tc.warmup_steps = 10;
    tc.schedule = SCHED_COSINE;
    EXPECT_NEAR(lr_at(&tc, 0, 110), 0.1, 1e-6);        /* warm-up: (step + 1) / warmup */
    EXPECT_NEAR(lr_at(&tc, 9, 110), 1.0, 1e-6);
    EXPECT_NEAR(lr_at(&tc, 10, 110), 1.0, 1e-6);       /* decay starts at the peak */
    EXPECT_NEAR(lr_at(&tc, 60, 110), 0.55, 1e-6);      /* cosine half-way: (1 + 0.1) / 2 */
    EXPECT_NEAR(lr_at(&tc, 110, 110), 0.1, 1e-6);      /* ends at lr * min_lr_ratio */
    EXPECT_NEAR(lr_at(&tc, 500, 110), 0.1, 1e-6);      /* and stays there */
    tc.schedule = SCHED_LINEAR;
    EXPECT_NEAR(lr_at(&tc, 60, 110), 0.55, 1e-6);
    EXPECT_NEAR(lr_at(&tc, 35, 110), 0.775, 1e-6);
    tc.schedule = SCHED_CONSTANT;
    EXPECT_NEAR(lr_at(&tc, 100, 110), 1.0, 1e-6);
    tc.schedule = SCHED_COSINE;
    EXPECT_NEAR(lr_at_progress(&tc, 50, 0.5), 0.55, 1e-6);
}

static void small_model(Model *m) {
    ModelConfig c;
    config_preset(&c, "tiny");
    c.vocab_size = 7;
    c.d_model = 4;
    c.num_heads = 1;
    c.num_layers = 1;
    c.d_ff = 4;
    c.num_experts = 0;
    c.n_positions = 4;
    EXPECT(model_create(m, &c, 1, 2, 3) == MOELM_OK);
}

static void adam_case(int adamw) {
    Model m;
    small_model(&m);
    Optimizer o;
    EXPECT(optim_create(&o, m.n_params) == MOELM_OK);
    TrainConfig tc;
    config_preset_train(&tc, "demo");
    tc.adamw = adamw;
    tc.weight_decay = 0.1f;
    tc.beta1 = 0.9f;
    tc.beta2 = 0.95f;
    tc.eps = 1e-8f;
    float *p0 = malloc(sizeof(float) * m.n_params);
    double *mm = calloc(m.n_params, sizeof(double)), *vv = calloc(m.n_params, sizeof(double));
    double *ref = malloc(sizeof(double) * m.n_params);
    for (size_t i = 0; i < m.n_params; i++) ref[i] = m.params[i];
    /* adamw-scale: one tensor with an RMS below the 1e-3 floor, the others at their init */
    if (adamw == 2) for (size_t k = 0; k < m.tensors[1].size; k++) m.params[m.tensors[1].offset + k] *= 1e-4f;
    for (size_t i = 0; i < m.n_params; i++) ref[i] = m.params[i];
    for (int step = 1; step <= 3; step++) {
        for (size_t i = 0; i < m.n_params; i++) m.grads[i] = 0.01f * (float)((i * 7 + step) % 13) - 0.05f;
        memcpy(p0, m.params, sizeof(float) * m.n_params);
        optim_step(&o, &m, &tc, 0.01f, 1.0f);
        int zeroed = 1;   /* optim_step consumes the gradients */
        for (size_t i = 0; i < m.n_params; i++) zeroed &= m.grads[i] == 0.0f;
        EXPECT(zeroed);
        for (int t = 0; t < m.n_tensors; t++) {
            const TensorInfo *ti = &m.tensors[t];
            double wd = ti->decay ? 0.1 : 0.0, rel = 1.0;
            if (adamw == 2) {   /* the step times the tensor's RMS before it, at least 1e-3 */
                double ss = 0.0;
                for (size_t k = ti->offset; k < ti->offset + ti->size; k++) ss += ref[k] * ref[k];
                rel = fmax(1e-3, sqrt(ss / (double)ti->size));
            }
            for (size_t k = ti->offset; k < ti->offset + ti->size; k++) {
                double g = 0.01f * (float)((k * 7 + step) % 13) - 0.05f;   /* the gradient set above */
                if (!adamw) g += wd * ref[k];
                mm[k] = 0.9 * mm[k] + 0.1 * g;
                vv[k] = 0.95 * vv[k] + 0.05 * g * g;
                double mh = mm[k] / (1 - pow(0.9, step)), vh = vv[k] / (1 - pow(0.95, step));
                double upd = rel * (mh / (sqrt(vh) + 1e-8)) + (adamw ? wd * ref[k] : 0.0);
                ref[k] -= 0.01 * upd;
            }
        }
    }
    double worst = 0;
    for (size_t i = 0; i < m.n_params; i++) worst = fmax(worst, fabs(ref[i] - m.params[i]));
    /* float vs double over 3 updates of size ~0.01: differences of a few float ulps of the params */
    EXPECT_MSG(worst < 1e-6, "worst %g", worst);
    /* decay only where documented: norms, biases and positions are not decayed */
    for (int t = 0; t < m.n_tensors; t++) {
        const char *nm = m.tensors[t].name;
        int expect = m.tensors[t].ndim >= 2 && !strstr(nm, ".bias") && !strstr(nm, "pos_emb");
        EXPECT_MSG(m.tensors[t].decay == expect, "%s", nm);
    }
    free(p0); free(mm); free(vv); free(ref);
    optim_free(&o);
    model_free(&m);
}
TEST(adamw_matches_reference) { adam_case(1); }
TEST(adam_l2_matches_reference) { adam_case(0); }
TEST(adamw_scale_matches_reference) { adam_case(2); }

/* The clip fused into the update: a step with gscale s on gradients g is bit-identical to grad_clip
 * scaling g in place and a step with gscale 1 (what training did before the fusion). */
TEST(fused_clip_matches_clip_then_step) {
    Model a, b;
    small_model(&a);
    small_model(&b);
    Optimizer oa, ob;
    EXPECT(optim_create(&oa, a.n_params) == MOELM_OK && optim_create(&ob, b.n_params) == MOELM_OK);
    TrainConfig tc;
    config_preset_train(&tc, "demo");
    tc.weight_decay = 0.1f;
    for (int step = 1; step <= 3; step++) {
        for (size_t i = 0; i < a.n_params; i++) a.grads[i] = b.grads[i] = (float)((i * 5 + step) % 11) - 5.0f;
        float na = grad_clip(&a, 1.0f);
        optim_step(&oa, &a, &tc, 0.01f, 1.0f);
        float nb = grad_norm(&b);
        EXPECT(nb == na && clip_scale(nb, 1.0f) < 1.0f);
        optim_step(&ob, &b, &tc, 0.01f, clip_scale(nb, 1.0f));
        EXPECT(memcmp(a.params, b.params, sizeof(float) * a.n_params) == 0);
        EXPECT(memcmp(oa.m, ob.m, sizeof(float) * a.n_params) == 0 && memcmp(oa.v, ob.v, sizeof(float) * a.n_params) == 0);
    }
    EXPECT(clip_scale(0.5f, 1.0f) == 1.0f && clip_scale(2.0f, 0.0f) == 1.0f && clip_scale(NAN, 1.0f) == 1.0f);
    EXPECT(clip_scale(4.0f, 1.0f) == 0.25f);
    optim_free(&oa); optim_free(&ob);
    model_free(&a); model_free(&b);
}

/* The weight average against the recurrence in double precision: ema += (1 - d) (p - ema) after each
 * update, d = min(ema_decay, (1 + t) / (10 + t)); a buffer (trainable 0) is never averaged; a swap
 * puts the average in and a second swap restores both arenas bit for bit. */
TEST(ema_matches_reference) {
    Model m;
    small_model(&m);
    m.tensors[0].trainable = 0;   /* stands for a buffer (the expert bias) */
    Optimizer o;
    EXPECT(optim_create(&o, m.n_params) == MOELM_OK);
    TrainConfig tc;
    config_preset_train(&tc, "demo");
    tc.ema_decay = 0.8f;
    EXPECT(optim_enable_ema(&o, &m) == MOELM_OK);
    EXPECT(memcmp(o.ema, m.params, sizeof(float) * m.n_params) == 0);
    double *ref = malloc(sizeof(double) * m.n_params);
    for (size_t i = 0; i < m.n_params; i++) ref[i] = m.params[i];
    for (int step = 1; step <= 40; step++) {   /* (1 + t) / (10 + t) is below 0.8 until t = 35: both branches */
        for (size_t i = 0; i < m.n_params; i++) m.grads[i] = 0.01f * (float)((i * 3 + step) % 7) - 0.03f;
        optim_step(&o, &m, &tc, 0.05f, 1.0f);
        double d = fmin(0.8, (1.0 + step) / (10.0 + step));
        for (size_t i = 0; i < m.n_params; i++) ref[i] += (1 - d) * (m.params[i] - ref[i]);
    }
    const TensorInfo *t0 = &m.tensors[0];
    double worst = 0;
    for (size_t i = t0->offset + t0->size; i < m.n_params; i++) worst = fmax(worst, fabs(ref[i] - o.ema[i]));
    EXPECT_MSG(worst < 1e-6, "worst %g", worst);
    int moved = 0;   /* the average lags the weights: it is not a copy of them */
    for (size_t i = t0->offset + t0->size; i < m.n_params; i++) moved += o.ema[i] != m.params[i];
    EXPECT(moved > (int)(m.n_params - t0->size) / 2);
    float *p1 = malloc(sizeof(float) * m.n_params), *e1 = malloc(sizeof(float) * m.n_params);
    memcpy(p1, m.params, sizeof(float) * m.n_params);
    memcpy(e1, o.ema, sizeof(float) * m.n_params);
    optim_swap_ema(&o, &m);
    EXPECT(memcmp(m.params + t0->offset + t0->size, e1 + t0->offset + t0->size,
                  sizeof(float) * (m.n_params - t0->offset - t0->size)) == 0);
    EXPECT(memcmp(m.params + t0->offset, p1 + t0->offset, sizeof(float) * t0->size) == 0);   /* the buffer stays */
    optim_swap_ema(&o, &m);
    EXPECT(memcmp(m.params, p1, sizeof(float) * m.n_params) == 0 && memcmp(o.ema, e1, sizeof(float) * m.n_params) == 0);
    /* ema_decay 0: the average is not updated */
    tc.ema_decay = 0.0f;
    for (size_t i = 0; i < m.n_params; i++) m.grads[i] = 0.01f;
    optim_step(&o, &m, &tc, 0.05f, 1.0f);
    EXPECT(memcmp(o.ema, e1, sizeof(float) * m.n_params) == 0);
    free(ref); free(p1); free(e1);
    optim_free(&o);
    model_free(&m);
}

TEST(clipping) {
    Model m;
    small_model(&m);
    double ss = 0;
    for (size_t i = 0; i < m.n_params; i++) { m.grads[i] = (float)(i % 5) - 2.0f; ss += m.grads[i] * m.grads[i]; }
    float norm = grad_clip(&m, 1.0f);
    EXPECT_NEAR(norm, sqrt(ss), 1e-3 * sqrt(ss));
    double after = 0;
    for (size_t i = 0; i < m.n_params; i++) after += m.grads[i] * m.grads[i];
    EXPECT_NEAR(sqrt(after), 1.0, 1e-5);
    /* below the threshold nothing changes */
    float g0 = m.grads[1];
    grad_clip(&m, 10.0f);
    EXPECT(m.grads[1] == g0);
    /* a NaN gradient gives a NaN norm (the training loop stops on it) and is left unscaled */
    m.grads[3] = NAN;
    EXPECT(isnan(grad_clip(&m, 1.0f)));
    model_free(&m);
}

int main(void) {
    test_one_thread();
    RUN(schedules);
    RUN(adamw_matches_reference);
    RUN(adam_l2_matches_reference);
    RUN(adamw_scale_matches_reference);
    RUN(clipping);
    RUN(fused_clip_matches_clip_then_step);
    RUN(ema_matches_reference);
    return test_summary("optim");
}
