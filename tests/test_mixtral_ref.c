/* test_mixtral_ref.c: the Llama / Mixtral family against tests/ref/mixtral_ref.py, an independent
 * PyTorch implementation of HF's MixtralForCausalLM / LlamaForCausalLM: each fixture's HF directory
 * (F32; BF16 in two shards; F16) loaded by llama_load_hf_dir, its batch run forward and backward, and
 * compared with PyTorch's logits, loss, every layer's router logits, HF's load-balancing loss and the
 * gradient of every HF tensor (loss + coef * aux where output_router_logits). Then the directory is
 * written back (llama_write_hf) and must hold the same bits in F32. In bf16 mode the same batch against
 * the script's bf16 mixed precision (<case>.bf16.safetensors; bf16_case).
 *
 * Tolerances: logits within 1e-4 of the largest logit (the bar; float32 sums in another order
 * differ by ~1e-6 of it); loss and aux 1e-5 relative; router logits 1e-4 of the largest; gradients within
 * 1e-4 of each tensor's largest (observed ~1e-6). The fixtures' smallest top-k probability margin is
 * printed by the script (>= 5e-4), far above float error, so routing cannot flip. */
#include <math.h>
#include <string.h>
#include "test.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "model/llama_hf.h"
#include "model/model.h"

static const char *ref_dir(void) {
    const char *d = getenv("MOELM_MIXTRAL_REF_DIR");
    return d ? d : "tests/ref/mixtral";
}

/* max |a - b| over n, and max |b| */
static void diff(const float *a, const float *b, size_t n, double *d, double *scale) {
    *d = 0.0;
    *scale = 0.0;
    for (size_t i = 0; i < n; i++) {
        *d = fmax(*d, fabs((double)a[i] - b[i]));
        *scale = fmax(*scale, fabs((double)b[i]));
    }
}

/* reads a whole tensor of the expected file into a new buffer (ndim/shape out) */
static float *read_all(SafeTensors *st, const char *name, int *ndim, int64_t *shape) {
    int nd;
    int64_t sh[ST_MAX_DIMS];
    if (!st_info(st, name, NULL, &nd, sh)) return NULL;
    size_t n = 1;
    for (int i = 0; i < nd; i++) n *= (size_t)sh[i];
    float *x = malloc(sizeof(float) * (n ? n : 1));
    if (st_read_f32(st, name, x, nd, sh)) { free(x); return NULL; }
    if (ndim) *ndim = nd;
    if (shape) memcpy(shape, sh, sizeof(int64_t) * (size_t)nd);
    return x;
}

/* ||a - b|| / ||b|| over n (L2) */
static double rel_l2(const float *a, const float *b, size_t n) {
    double d = 0.0, r = 0.0;
    for (size_t i = 0; i < n; i++) {
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        r += (double)b[i] * b[i];
    }
    return sqrt(d) / (sqrt(r) + 1e-30);
}

/* The worst relative L2 difference from <name>.bf16.safetensors of m's logits and gradients (of its last
 * pass), tensor by tensor; the loss's relative difference in *dloss. */
static double bf16_worst(const Model *m, SafeTensors *ref, float loss, const LlamaHfTensor *v, int nt, double *dloss,
                         const char **worst) {
    size_t n = (size_t)m->B * m->T * m->cfg.vocab_size;
    float *want = read_all(ref, "logits", NULL, NULL);
    EXPECT(want != NULL);
    if (!want) return INFINITY;
    double w = rel_l2(m->a.logits, want, n);
    *worst = "logits";
    free(want);
    want = read_all(ref, "loss", NULL, NULL);
    *dloss = want ? fabs(loss - want[0]) / fabs(want[0]) : INFINITY;
    free(want);
    for (int i = 0; i < nt; i++) {
        char nm[160];
        snprintf(nm, sizeof nm, "grad.%s", v[i].name);
        want = read_all(ref, nm, NULL, NULL);
        EXPECT_MSG(want != NULL, "no %s", nm);
        if (!want) return INFINITY;
        double r = rel_l2(m->grads + v[i].off, want, v[i].count);
        if (r > w) { w = r; *worst = v[i].name; }
        free(want);
    }
    return w;
}

/* model's logits kept from the forward (the backward overwrites them with their gradient) */
static float pass(Model *m, const int *inp, const int *tgt, float *logits) {
    model_zero_grad(m);
    float loss = model_forward(m, inp, tgt, 0);
    memcpy(logits, m->a.logits, sizeof(float) * m->B * m->T * m->cfg.vocab_size);
    model_backward(m);
    memcpy(m->a.logits, logits, sizeof(float) * m->B * m->T * m->cfg.vocab_size);
    return loss;
}

/* bf16 mode (model_set_bf16) against mixtral_ref.py's bf16 mixed precision: the same rounded operands
 * (the router float in both) with float sums, in torch's order of sums. The sums differ by float
 * rounding, ~1e-7 of a product's terms; but a value that close to a bf16 rounding boundary rounds the
 * other way in one of the two (the float parts' order of sums differs between builds too: the -O2
 * -march=native and the sanitizer builds), moving it by 2^-8 of itself, and with it a row or column of
 * the products it enters: seen in the sanitizer build as k_proj's gradient 6.9e-4 off in relative L2
 * (one element of q_proj's 1.7e-3 of the tensor's largest), where the -O2 build agrees to 4.2e-7. So
 * each tensor (logits, every gradient) is held by its relative L2 difference, which bf16's rounding
 * moves in every element: within BF16_REF_TOL = 3e-3, the loss 1e-5 relative (seen 1.1e-7). Float
 * moelm against the same reference differs by bf16's rounding itself and must be beyond both (seen
 * 1.1e-2 to 3.5e-2 relative L2, loss 8.5e-5 to 1.5e-3): 3.7x and 4.3x from the tolerance either way. */
#define BF16_REF_TOL 3e-3
#define BF16_REF_LOSS_TOL 1e-5
static void bf16_case(Model *m, const char *name, const int *inp, const int *tgt, const LlamaHfTensor *v, int nt) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s.bf16.safetensors", ref_dir(), name);
    SafeTensors *ref = NULL;
    EXPECT_MSG(st_open(&ref, path) == MOELM_OK, "%s", moelm_last_error());
    if (!ref) return;
    float *logits = malloc(sizeof(float) * m->B * m->T * m->cfg.vocab_size);
    const char *wn = "";
    double dl, dlf;
    double wf = bf16_worst(m, ref, pass(m, inp, tgt, logits), v, nt, &dlf, &wn);   /* float against the bf16 reference */
    EXPECT(model_set_bf16(m, 1) == MOELM_OK);
    double w = bf16_worst(m, ref, pass(m, inp, tgt, logits), v, nt, &dl, &wn);
    printf("  %s bf16: worst relative L2 %.2g (%s), loss %.2g relative; float against it: %.2g, loss %.2g\n", name,
           w, wn, dl, wf, dlf);
    EXPECT_MSG(w <= BF16_REF_TOL && dl <= BF16_REF_LOSS_TOL, "%s bf16: %s differs by %.3g relative L2, loss by %.3g",
               name, wn, w, dl);
    EXPECT_MSG(wf > BF16_REF_TOL && dlf > BF16_REF_LOSS_TOL,
               "%s: float moelm is within the bf16 reference's bound (%.3g, loss %.3g): the bound sees no bf16", name, wf, dlf);
    EXPECT(model_set_bf16(m, 0) == MOELM_OK);
    free(logits);
    st_close(ref);
}

static void run_case(const char *name) {
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/%s", ref_dir(), name);
    snprintf(path, sizeof path, "%s/%s.expected.safetensors", ref_dir(), name);
    SafeTensors *exp = NULL;
    EXPECT_MSG(st_open(&exp, path) == MOELM_OK, "%s", moelm_last_error());
    if (!exp) return;
    int nd;
    int64_t sh[ST_MAX_DIMS];
    float *ids_f = read_all(exp, "input_ids", &nd, sh);
    EXPECT(ids_f && nd == 2);
    int B = (int)sh[0], T = (int)sh[1], N = B * T;
    Model m;
    EXPECT_MSG(llama_load_hf_dir(&m, dir, B, T) == MOELM_OK, "%s: %s", name, moelm_last_error());
    if (!m.params) { st_close(exp); free(ids_f); return; }
    int V = m.cfg.vocab_size, *inp = malloc(sizeof(int) * N), *tgt = malloc(sizeof(int) * N);
    for (int i = 0; i < N; i++) inp[i] = (int)ids_f[i];
    for (int i = 0; i < N; i++) tgt[i] = i % T + 1 < T ? inp[i + 1] : -1;   /* HF's shifted labels */

    model_zero_grad(&m);
    float loss = model_forward(&m, inp, tgt, 0);
    double d, scale;
    float *want = read_all(exp, "logits", NULL, NULL);
    diff(m.a.logits, want, (size_t)N * V, &d, &scale);
    EXPECT_MSG(d <= 1e-4 * scale, "%s: logits differ by %.3g (largest %.3g)", name, d, scale);
    printf("  %s: logits within %.2g of the largest (%.3g)\n", name, d / scale, scale);
    free(want);
    want = read_all(exp, "loss", NULL, NULL);
    EXPECT_MSG(fabs(loss - want[0]) <= 1e-5 * fabs(want[0]), "%s: loss %.7g, torch %.7g", name, loss, want[0]);
    free(want);
    MoELayer lays[16];
    int nl = model_moe_layers(&m, lays, 16);
    EXPECT(nl == (m.cfg.model_type == MODEL_MIXTRAL ? m.cfg.num_layers : 0));
    for (int l = 0; l < nl; l++) {
        char nm[64];
        snprintf(nm, sizeof nm, "router_logits.%d", l);
        want = read_all(exp, nm, NULL, NULL);
        EXPECT(want != NULL);
        if (!want) continue;
        diff(lays[l].a->logits, want, (size_t)N * m.moe_cfg.E, &d, &scale);
        EXPECT_MSG(d <= 1e-4 * scale, "%s: %s differ by %.3g (largest %.3g)", name, nm, d, scale);
        free(want);
    }

    /* the gradient of every HF tensor */
    model_backward(&m);
    int nt;
    LlamaHfTensor *v = llama_hf_tensors_alloc(&m, &nt);
    int checked = 0;
    for (int i = 0; i < nt; i++) {
        char nm[160];
        snprintf(nm, sizeof nm, "grad.%s", v[i].name);
        want = read_all(exp, nm, NULL, NULL);
        EXPECT_MSG(want != NULL, "%s: no %s", name, nm);
        if (!want) continue;
        diff(m.grads + v[i].off, want, v[i].count, &d, &scale);
        EXPECT_MSG(d <= 1e-4 * scale + 1e-7, "%s: %s differs by %.3g (largest %.3g)", name, nm, d, scale);
        checked++;
        free(want);
    }
    EXPECT_MSG(checked == st_count(exp) - (int)(3 + nl + (nl > 0)), "%s: %d gradients checked of %d in the file", name,
               checked, st_count(exp));

    bf16_case(&m, name, inp, tgt, v, nt);

    /* HF's balance loss, unweighted: with output_router_logits on and coefficient 1 */
    if (nl) {
        want = read_all(exp, "aux_loss", NULL, NULL);
        m.cfg.output_router_logits = 1;
        m.cfg.router_aux_loss_coef = 1.0f;
        model_forward(&m, inp, tgt, 0);
        EXPECT_MSG(fabs(m.aux_loss - want[0]) <= 1e-5 * want[0], "%s: aux %.7g, torch %.7g", name, m.aux_loss, want[0]);
        free(want);
    }

    /* written back: the same tensors, bit for bit in F32 */
    snprintf(path, sizeof path, "build/tmp/mixtral_ref_%s", name);
    EXPECT_MSG(llama_write_hf(&m, path, 0, 0) == MOELM_OK, "%s", moelm_last_error());
    WeightSet *ws = NULL;
    EXPECT(ws_open(&ws, path) == MOELM_OK);
    WeightSet *orig = NULL;
    EXPECT(ws_open(&orig, dir) == MOELM_OK);
    EXPECT(ws && orig && ws_count(ws) == nt && ws_count(orig) == nt);
    for (int i = 0; i < nt && ws && orig; i++) {
        float *a = malloc(sizeof(float) * v[i].count), *b = malloc(sizeof(float) * v[i].count);
        EXPECT(ws_read_f32(ws, v[i].name, a, v[i].ndim, v[i].shape) == MOELM_OK);
        EXPECT(ws_read_f32(orig, v[i].name, b, v[i].ndim, v[i].shape) == MOELM_OK);
        EXPECT_MSG(memcmp(a, b, sizeof(float) * v[i].count) == 0, "%s: %s not bit-equal after writing", name, v[i].name);
        free(a);
        free(b);
    }
    ws_close(ws);
    ws_close(orig);
    moelm_free(v);
    free(inp);
    free(tgt);
    free(ids_f);
    model_free(&m);
    st_close(exp);
}

TEST(mixtral_gqa_untied) { run_case("mixtral_gqa_untied"); }
TEST(mixtral_tied_bf16) { run_case("mixtral_tied_bf16"); }
TEST(llama_mqa_f16) { run_case("llama_mqa_f16"); }

int main(void) {
    test_one_thread();
    RUN(mixtral_gqa_untied);
    RUN(mixtral_tied_bf16);
    RUN(llama_mqa_f16);
    return test_summary("mixtral_ref");
}
