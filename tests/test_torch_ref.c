/* test_torch_ref.c: the whole model against an independent PyTorch implementation (STYLE.md, tier 3).
 *
 * Two modes:
 *   test_torch_ref --export DIR   writes DIR/<case>/init.safetensors (the initial weights under the
 *                                 tensor-table names, the batch as float tensors "batch.inputs" and
 *                                 "batch.targets" [B, T], metadata: config, train settings, B, T,
 *                                 steps) and DIR/<case>/config.json for tests/ref/torch_ref.py.
 *   test_torch_ref                (what `make test` runs) reads tests/ref/<case>.safetensors, written
 *                                 by tests/ref/torch_ref.py from the export: the same weights and
 *                                 batch plus PyTorch's logits, loss, aux loss, every parameter
 *                                 gradient ("grad.<name>") and a STEPS-step AdamW loss curve, and
 *                                 compares the C model against them. See tests/ref/README.md.
 *
 * The C side loads the weights from the file (the C RNG is not assumed to match anything), runs
 * model_forward(training = 1; dropout and jitter are 0, so training only selects the training
 * capacity factor) and model_backward, then STEPS steps of zero_grad, forward, backward, grad_clip,
 * optim_step at lr_at(step).
 *
 * Tolerances (both sides compute in fp32; they differ only in summation order and in libm):
 *   logits, loss, aux: |c - ref| <= 1e-5 * (1 + |ref|). fp32 rounding is 6e-8 relative; the
 *     forward chains ~20 ops whose reductions are <= 72 terms long, so differences of a few 1e-7
 *     are expected (measured: see the README). 1e-5 leaves ~30x headroom and still catches any
 *     wrong term, which moves a logit by O(0.1).
 *   gradients: per tensor, max |c - ref| <= 1e-4 * max |ref| + 1e-6 * G, G the largest gradient
 *     entry of the model. The backward is a longer chain (and reads the forward), so 1e-4 of the
 *     tensor's scale. The G term is for gradients that are zero mathematically but not in
 *     floating point (the key bias: softmax is invariant to a per-query shift of the scores), whose
 *     entries are rounding noise of order eps * G on both sides.
 *   loss curve: |c - ref| <= 1e-4 * |ref| per step. Adam divides by sqrt(v), so a gradient that
 *     differs by 1e-6 relative moves a parameter by about that relative amount per step; ten steps
 *     of lr 1e-2 keep the loss within ~1e-5. A routing decision that flipped between the two sides
 *     would move it by far more; torch_ref.py reports the smallest routing margin it saw, which is
 *     checked here (> 1e-4 in probability) so that a near-tie cannot make the test flaky.
 */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include "test.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "optim/optim.h"
#include "tiny_models.h"

#define B_ 2
#define T_ 6
#define STEPS 10

typedef struct {
    const char *name;
    void (*config)(ModelConfig *c);
    uint64_t seed;
} RefCase;

/* ---- the cases ---------------------------------------------------------------------------------- */

static void base(ModelConfig *c) {
    config_preset(c, "tiny");
    tiny_sizes(c, 17, 16, 2, 2, 24, 8);
    c->dropout_rate = 0.0f;
    c->layer_norm_epsilon = 1e-5f;
    c->num_experts = 0;
    c->min_capacity = 1;
    c->router_aux_loss_coef = 0.01f;
    c->router_z_loss_coef = 0.001f;
    c->router_jitter_noise = 0.0f;
}

static void cfg_dense(ModelConfig *c) {   /* layernorm, gelu, tied */
    base(c);
}

static void cfg_dense_rms_swiglu(ModelConfig *c) {   /* rmsnorm, swiglu, untied */
    base(c);
    c->norm_type = NORM_RMS;
    c->hidden_act = ACT_SWIGLU;
    c->tie_word_embeddings = 0;
}

static void cfg_switch(ModelConfig *c) {
    base(c);
    c->num_experts = 4;
    c->sparse_step = 1;                    /* both blocks sparse */
    c->router_type = ROUTER_SWITCH;
    c->num_experts_per_tok = 1;
    c->capacity_factor = 1.0f;             /* Cap = round(1.0 * 12 / 4) = 3: drops unless balanced */
    c->eval_capacity_factor = 1.0f;
}

static void cfg_top2(ModelConfig *c) {
    base(c);
    c->norm_type = NORM_RMS;
    c->hidden_act = ACT_SWIGLU;            /* SwiGLU experts */
    c->tie_word_embeddings = 0;
    c->num_experts = 4;
    c->sparse_step = 2;                    /* block 0 dense, block 1 sparse */
    c->router_type = ROUTER_TOPK;
    c->num_experts_per_tok = 2;
    c->topk_softmax_after = 0;             /* GShard: softmax over all, top-2, raw gates */
    c->capacity_factor = 0.75f;            /* Cap = round(0.75 * 12 * 2 / 4) = 5 < 24 / 4: drops */
    c->eval_capacity_factor = 0.75f;
}

static void seed_base(ModelConfig *c, RouterType r) {
    config_preset(c, "seed-switch");
    tiny_sizes(c, 17, 16, 2, 2, 24, 8);
    c->expert_d_ff = 20;
    c->head_hidden = 20;
    c->dropout_rate = 0.0f;
    c->num_experts = 4;
    c->router_type = r;
    c->num_experts_per_tok = 1;
    c->capacity_factor = 1.1f;             /* switch: Cap = floor(1.1 * 12 / 4 + 0.5) = 3 (ceil would be 4) */
    c->eval_capacity_factor = 1.1f;
    c->min_capacity = 1;
    c->router_aux_loss_coef = 0.01f;
    c->router_z_loss_coef = 0.001f;
    c->router_jitter_noise = 0.0f;
}

static void cfg_seed_switch(ModelConfig *c) { seed_base(c, ROUTER_SWITCH); }
static void cfg_seed_soft(ModelConfig *c) { seed_base(c, ROUTER_SOFT); }

static const RefCase cases[] = {
    {"dense_ln_gelu_tied", cfg_dense, 101},
    {"dense_rms_swiglu_untied", cfg_dense_rms_swiglu, 102},
    {"switch_lm", cfg_switch, 103},
    {"top2_lm", cfg_top2, 104},
    {"seed_switch", cfg_seed_switch, 105},
    {"seed_soft", cfg_seed_soft, 106},
};
#define N_CASES ((int)(sizeof cases / sizeof cases[0]))

static void train_settings(TrainConfig *tc) {
    config_preset_train(tc, "tiny");
    tc->lr = 1e-2f;
    tc->warmup_steps = 0;
    tc->schedule = SCHED_CONSTANT;
    tc->adamw = 1;
    tc->beta1 = 0.9f;
    tc->beta2 = 0.95f;
    tc->eps = 1e-8f;
    tc->weight_decay = 0.1f;
    tc->grad_clip = 1.0f;
    tc->steps = STEPS;
}

static char *train_json(const TrainConfig *tc) {
    static char buf[512];
    snprintf(buf, sizeof buf,
             "{\"optimizer\": \"%s\", \"lr\": %.9g, \"lr_schedule\": \"constant\", \"warmup_steps\": %d, "
             "\"beta1\": %.9g, \"beta2\": %.9g, \"eps\": %.9g, \"weight_decay\": %.9g, \"grad_clip\": %.9g, "
             "\"steps\": %ld}",
             tc->adamw ? "adamw" : "adam", tc->lr, tc->warmup_steps, tc->beta1, tc->beta2, tc->eps,
             tc->weight_decay, tc->grad_clip, tc->steps);
    return buf;
}

/* Initial weights for the comparison: larger than the training init (N(0, 0.02)) so that every term
 * of the forward and backward is visible: matrices N(0, 1/fan_in), embeddings N(0, 0.5^2), biases
 * N(0, 0.1^2), norm weights 1 + N(0, 0.1^2), the router N(0, (2/sqrt(C))^2) for decisive routing.
 * Only the exporter uses this; the test reads the weights back from the reference file. */
static void init_weights(Model *m, uint64_t seed) {
    Rng r;
    rng_seed(&r, seed);
    for (int i = 0; i < m->n_tensors; i++) {
        const TensorInfo *t = &m->tensors[i];
        float *x = m->params + t->offset;
        const char *nm = t->name;
        int is_norm = strstr(nm, "ln") != NULL && t->ndim == 1;
        int is_bias = strstr(nm, ".bias") != NULL;
        float fan_in = (float)t->shape[t->ndim - 1];
        for (size_t k = 0; k < t->size; k++) {
            float z = rng_normal(&r);
            if (is_norm && strstr(nm, ".weight")) x[k] = 1.0f + 0.1f * z;
            else if (is_norm || is_bias) x[k] = 0.1f * z;
            else if (strstr(nm, "router.weight")) x[k] = 2.0f / sqrtf(fan_in) * z;
            else if (strstr(nm, "_emb.")) x[k] = 0.5f * z;
            else x[k] = z / sqrtf(fan_in);
        }
    }
}

static void make_batch(int *inp, int *tgt, int n, int V, int seed) {
    for (int i = 0; i < n; i++) {
        inp[i] = (i * 7 + seed * 5 + (i * i) % 5) % V;
        tgt[i] = (i * 11 + seed * 3 + 1) % V;
    }
    tgt[4] = -1;   /* an ignored position: the mean is over the valid targets */
}

/* ---- export ------------------------------------------------------------------------------------- */

static int export_case(const RefCase *rc, const char *dir) {
    ModelConfig cfg;
    rc->config(&cfg);
    TrainConfig tc;
    train_settings(&tc);
    Model m;
    if (model_create(&m, &cfg, B_, T_, rc->seed) != MOELM_OK) {
        fprintf(stderr, "%s: %s\n", rc->name, moelm_last_error());
        return 1;
    }
    init_weights(&m, rc->seed);
    int inp[B_ * T_], tgt[B_ * T_];
    float finp[B_ * T_], ftgt[B_ * T_];
    make_batch(inp, tgt, B_ * T_, cfg.vocab_size, (int)rc->seed);
    for (int i = 0; i < B_ * T_; i++) { finp[i] = (float)inp[i]; ftgt[i] = (float)tgt[i]; }

    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, rc->name);
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) { perror(dir); return 1; }
    if (mkdir(path, 0777) != 0 && errno != EEXIST) { perror(path); return 1; }

    StTensor *ts = calloc((size_t)m.n_tensors + 2, sizeof *ts);
    int n = 0;
    for (int i = 0; i < m.n_tensors; i++) {
        const TensorInfo *t = &m.tensors[i];
        ts[n].name = t->name;
        ts[n].data = m.params + t->offset;
        ts[n].ndim = t->ndim;
        for (int d = 0; d < 4; d++) ts[n].shape[d] = t->shape[d];
        n++;
    }
    ts[n++] = (StTensor){"batch.inputs", finp, 2, {B_, T_}};
    ts[n++] = (StTensor){"batch.targets", ftgt, 2, {B_, T_}};
    char *cj = config_to_json(&cfg);
    char bs[16], ts_[16], ss[16];
    snprintf(bs, sizeof bs, "%d", B_);
    snprintf(ts_, sizeof ts_, "%d", T_);
    snprintf(ss, sizeof ss, "%d", STEPS);
    const char *meta[] = {"config", cj, "train", train_json(&tc), "B", bs, "T", ts_, "steps", ss,
                          "case", rc->name, NULL};
    char fpath[1100];
    snprintf(fpath, sizeof fpath, "%s/init.safetensors", path);
    int bad = st_write(fpath, ts, n, meta) != MOELM_OK;
    if (bad) fprintf(stderr, "%s\n", moelm_last_error());
    snprintf(fpath, sizeof fpath, "%s/config.json", path);
    FILE *f = fopen(fpath, "w");
    if (!f || fputs(cj, f) < 0 || fclose(f) != 0) { perror(fpath); bad = 1; }
    moelm_free(cj);
    free(ts);
    model_free(&m);
    if (!bad) printf("exported %s\n", path);
    return bad;
}

/* ---- comparison --------------------------------------------------------------------------------- */

static const char *ref_dir(void) {
    const char *d = getenv("MOELM_TORCH_REF_DIR");
    return d ? d : "tests/ref";
}

/* Reads a tensor of n floats (any shape with that many elements) into dst. */
static int read_any(const SafeTensors *st, const char *name, float *dst, size_t n) {
    const char *dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    if (!st_info(st, name, &dtype, &ndim, shape)) {
        printf("  reference file has no tensor '%s'\n", name);
        return 0;
    }
    size_t cnt = 1;
    for (int i = 0; i < ndim; i++) cnt *= (size_t)shape[i];
    if (cnt != n) {
        printf("  '%s': %zu elements in the reference, %zu expected\n", name, cnt, n);
        return 0;
    }
    if (st_read_f32(st, name, dst, ndim, shape) != MOELM_OK) {
        printf("  %s\n", moelm_last_error());
        return 0;
    }
    return 1;
}

static double max_abs(const float *x, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

/* A case's reference, read from tests/ref/<case>.safetensors, and the C model loaded with its
 * initial weights. */
typedef struct {
    ModelConfig cfg;
    TrainConfig tc;
    Model m;
    int inp[B_ * T_], tgt[B_ * T_];
    float *logits, *grads;   /* [N, V], [n_params] */
    float loss, aux, curve[STEPS], curve_aux[STEPS], margin;
} Ref;

static void ref_free(Ref *r) {
    free(r->logits);
    free(r->grads);
    model_free(&r->m);
}

/* 1 when the reference exists, was made from this very case (same config, training settings and
 * shapes: a stale file would compare against something else) and is complete. */
static int ref_load(Ref *r, const RefCase *rc) {
    memset(r, 0, sizeof *r);
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.safetensors", ref_dir(), rc->name);
    SafeTensors *st = NULL;
    if (st_open(&st, path) != MOELM_OK) {
        EXPECT_MSG(0, "%s (regenerate: see tests/ref/README.md)", moelm_last_error());
        return 0;
    }
    ModelConfig fcfg;
    rc->config(&r->cfg);
    train_settings(&r->tc);
    const char *mc = st_meta(st, "config"), *mt = st_meta(st, "train");
    EXPECT_MSG(mc != NULL && mt != NULL, "%s: no config/train metadata", path);
    if (!mc || !mt) { st_close(st); return 0; }
    char tmp[1100];
    if (mkdir("build", 0777) != 0 && errno != EEXIST) perror("build");
    if (mkdir("build/tmp", 0777) != 0 && errno != EEXIST) perror("build/tmp");
    snprintf(tmp, sizeof tmp, "build/tmp/torch_ref_%s.json", rc->name);
    FILE *f = fopen(tmp, "w");
    if (f) { fputs(mc, f); fclose(f); }
    int ok = config_load(&fcfg, tmp) == MOELM_OK && memcmp(&r->cfg, &fcfg, sizeof fcfg) == 0;
    EXPECT_MSG(ok, "%s: the reference was made from another config (regenerate it)", path);
    int tr_ok = strcmp(mt, train_json(&r->tc)) == 0;
    EXPECT_MSG(tr_ok, "%s: the reference was made with other train settings: %s", path, mt);
    const char *sb = st_meta(st, "B"), *stt = st_meta(st, "T"), *ss = st_meta(st, "steps");
    int shape_ok = sb && stt && ss && atoi(sb) == B_ && atoi(stt) == T_ && atoi(ss) == STEPS;
    EXPECT(shape_ok);
    if (!ok || !tr_ok || !shape_ok) { st_close(st); return 0; }
    if (model_create(&r->m, &r->cfg, B_, T_, rc->seed) != MOELM_OK) {
        EXPECT_MSG(0, "%s", moelm_last_error());
        st_close(st);
        return 0;
    }
    Model *m = &r->m;
    int N = B_ * T_, V = r->cfg.vocab_size;
    /* the initial weights: every tensor of the table, zeroed first so a missing one shows */
    memset(m->params, 0, sizeof(float) * m->n_params);
    for (int i = 0; i < m->n_tensors; i++)
        ok &= read_any(st, m->tensors[i].name, m->params + m->tensors[i].offset, m->tensors[i].size);
    float fb[2][B_ * T_];
    ok &= read_any(st, "batch.inputs", fb[0], (size_t)N);
    ok &= read_any(st, "batch.targets", fb[1], (size_t)N);
    for (int i = 0; i < N; i++) { r->inp[i] = (int)fb[0][i]; r->tgt[i] = (int)fb[1][i]; }
    r->logits = malloc(sizeof(float) * (size_t)N * V);
    r->grads = calloc(m->n_params, sizeof(float));
    ok &= read_any(st, "logits", r->logits, (size_t)N * V);
    ok &= read_any(st, "loss", &r->loss, 1);
    ok &= read_any(st, "aux", &r->aux, 1);
    ok &= read_any(st, "curve", r->curve, STEPS);
    ok &= read_any(st, "curve_aux", r->curve_aux, STEPS);
    ok &= read_any(st, "min_routing_margin", &r->margin, 1);
    char gname[128];
    for (int i = 0; i < m->n_tensors; i++) {
        snprintf(gname, sizeof gname, "grad.%s", m->tensors[i].name);
        if (m->tensors[i].trainable) ok &= read_any(st, gname, r->grads + m->tensors[i].offset, m->tensors[i].size);
    }
    st_close(st);
    EXPECT_MSG(ok, "%s: incomplete reference", path);
    /* near-ties in routing would make the comparison depend on rounding (see the header) */
    EXPECT_MSG(r->margin > 1e-4f, "%s: routing margin %g: the case is too close to a tie to compare", rc->name,
               r->margin);
    if (!ok) ref_free(r);
    return ok;
}

/* logits, loss, aux, then every parameter gradient */
static void compare_forward_backward(const RefCase *rc) {
    Ref r;
    if (!ref_load(&r, rc)) return;
    Model *m = &r.m;
    int N = B_ * T_, V = r.cfg.vocab_size;
    model_zero_grad(m);
    float loss = model_forward(m, r.inp, r.tgt, 1);
    double dl = 0.0, rl = 0.0;
    for (int i = 0; i < N * V; i++) {
        double d = fabs((double)m->a.logits[i] - r.logits[i]);
        double q = d / (1.0 + fabs(r.logits[i]));
        dl = d > dl ? d : dl;
        rl = q > rl ? q : rl;
    }
    EXPECT_MSG(rl <= 1e-5, "%s: logits max |diff| %.3g, max |diff|/(1+|ref|) %.3g > 1e-5", rc->name, dl, rl);
    EXPECT_NEAR(loss, r.loss, 1e-5 * (1.0 + fabs(r.loss)));
    EXPECT_NEAR(m->aux_loss, r.aux, 1e-5 * (1.0 + fabs(r.aux)));
    printf("  %s: logits max abs %.2e rel %.2e; loss %.9g vs %.9g (abs %.2e); aux %.9g vs %.9g (abs %.2e)\n",
           rc->name, dl, rl, loss, r.loss, fabs(loss - r.loss), m->aux_loss, r.aux, fabs(m->aux_loss - r.aux));

    model_backward(m);
    double G = 0.0, worst_rel = 0.0, worst_abs = 0.0;
    const char *worst = "";
    for (int i = 0; i < m->n_tensors; i++)
        if (m->tensors[i].trainable) {
            double g = max_abs(r.grads + m->tensors[i].offset, m->tensors[i].size);
            G = g > G ? g : G;
        }
    for (int i = 0; i < m->n_tensors; i++) {
        const TensorInfo *t = &m->tensors[i];
        if (!t->trainable) continue;
        const float *a = m->grads + t->offset, *b = r.grads + t->offset;
        double scale = max_abs(b, t->size), d = 0.0;
        size_t at = 0;
        for (size_t k = 0; k < t->size; k++) {
            double e = fabs((double)a[k] - b[k]);
            if (e > d) { d = e; at = k; }
        }
        double tol = 1e-4 * scale + 1e-6 * G;
        EXPECT_MSG(d <= tol, "%s: grad %s[%zu]: C %.9g torch %.9g, |diff| %.3g > %.3g (tensor max %.3g)", rc->name,
                   t->name, at, a[at], b[at], d, tol, scale);
        double rel = d / (scale + 1e-6 * G);
        if (rel > worst_rel) { worst_rel = rel; worst = t->name; }
        worst_abs = d > worst_abs ? d : worst_abs;
    }
    printf("  %s: grads max abs %.2e, max |diff|/(tensor max + 1e-6 G) %.2e (%s), G %.3g\n", rc->name, worst_abs,
           worst_rel, worst, G);
    ref_free(&r);
}

/* STEPS steps of zero_grad, forward, backward, grad_clip, optim_step: the CE and aux before each */
static void compare_curve(const RefCase *rc) {
    Ref r;
    if (!ref_load(&r, rc)) return;
    Model *m = &r.m;
    Optimizer o;
    EXPECT(optim_create(&o, m->n_params) == MOELM_OK);
    double cabs = 0.0, crel = 0.0, aabs = 0.0;
    int first_bad = -1;
    for (int s = 0; s < STEPS; s++) {
        model_zero_grad(m);
        float l = model_forward(m, r.inp, r.tgt, 1);
        float aux = m->aux_loss;
        model_backward(m);
        grad_clip(m, r.tc.grad_clip);
        optim_step(&o, m, &r.tc, lr_at(&r.tc, s, r.tc.steps), 1.0f);
        double d = fabs((double)l - r.curve[s]), da = fabs((double)aux - r.curve_aux[s]);
        int bad = d > 1e-4 * fabs(r.curve[s]) || da > 1e-4 * fabs(r.curve_aux[s]) + 1e-7;
        EXPECT_MSG(!bad, "%s: step %d: loss C %.9g torch %.9g (rel %.2e), aux C %.9g torch %.9g", rc->name, s, l,
                   r.curve[s], d / fabs(r.curve[s]), aux, r.curve_aux[s]);
        if (bad && first_bad < 0) first_bad = s;
        cabs = d > cabs ? d : cabs;
        crel = d / fabs(r.curve[s]) > crel ? d / fabs(r.curve[s]) : crel;
        aabs = da > aabs ? da : aabs;
    }
    printf("  %s: curve %.6f -> %.6f, loss max abs %.2e rel %.2e, aux max abs %.2e\n", rc->name, r.curve[0],
           r.curve[STEPS - 1], cabs, crel, aabs);
    if (first_bad > 0)
        printf("  %s: the curve agrees at step 0 and departs from step %d: when torch_%s passes, the "
               "difference is in the update (see tests/ref/README.md, known discrepancies)\n", rc->name, first_bad,
               rc->name);
    optim_free(&o);
    ref_free(&r);
}

#define CASE_TESTS(i, name) \
    TEST(torch_##name) { compare_forward_backward(&cases[i]); } \
    TEST(torch_##name##_curve) { compare_curve(&cases[i]); }
CASE_TESTS(0, dense_ln_gelu_tied)
CASE_TESTS(1, dense_rms_swiglu_untied)
CASE_TESTS(2, switch_lm)
CASE_TESTS(3, top2_lm)
CASE_TESTS(4, seed_switch)
CASE_TESTS(5, seed_soft)

int main(int argc, char **argv) {
    test_one_thread();
    if (argc == 3 && strcmp(argv[1], "--export") == 0) {
        int bad = 0;
        for (int i = 0; i < N_CASES; i++) bad |= export_case(&cases[i], argv[2]);
        return bad;
    }
    if (argc != 1) {
        fprintf(stderr, "usage: %s [--export DIR]\n", argv[0]);
        return 2;
    }
    RUN(torch_dense_ln_gelu_tied);
    RUN(torch_dense_ln_gelu_tied_curve);
    RUN(torch_dense_rms_swiglu_untied);
    RUN(torch_dense_rms_swiglu_untied_curve);
    RUN(torch_switch_lm);
    RUN(torch_switch_lm_curve);
    RUN(torch_top2_lm);
    RUN(torch_top2_lm_curve);
    RUN(torch_seed_switch);
    RUN(torch_seed_switch_curve);
    RUN(torch_seed_soft);
    RUN(torch_seed_soft_curve);
    return test_summary("torch_ref");
}
