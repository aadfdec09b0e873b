/* test_adaptive.c: the adaptive softmax (ops/adaptive.h) against a double-precision reference of its
 * definition, written here from the formula, not from the op:
 *     log p(w) = log softmax(head)[slot(w)] + (w in a tail cluster k: log softmax(x . W[cluster k words])[w])
 * with head = (x . W[0..c0), x . Wc[0..n)).
 *  - the op's losses equal the reference's -log p within float rounding;
 *  - adaptive_normalize gives every word's log p: each row sums to 1, and the targets' entries are the
 *    losses;
 *  - the gradients of sum_r g_r loss_r (g: uneven weights, a target of -1 ignored, a cluster no target
 *    falls in) with respect to x, W and Wc equal central finite differences of the double reference
 *    (h = 1e-5 in double: truncation ~1e-10, rounding ~1e-11), within 2e-5 + 1e-3 relative, a float
 *    product's rounding; a wrong or missing term is off by O(|grad|) ~ 1e-2. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "test.h"
#include "fd.h"
#include "ops/adaptive.h"

enum { N = 9, C = 6, V = 23, NC = 3 };
static const int cuts[NC] = {7, 12, 20};   /* head 7 words; clusters [7,12), [12,20), [20,23) */

static AdaptiveShape shape(void) {
    AdaptiveShape s = {V, C, NC, {0}};
    memcpy(s.cut, cuts, sizeof cuts);
    s.cut[NC] = V;
    return s;
}

/* targets: head words, clusters 0 and 2 (none in cluster 1), one ignored row */
static const int tgt[N] = {3, 8, 21, -1, 0, 11, 22, 6, 9};

static double dot(const double *a, const double *b) {
    double s = 0.0;
    for (int c = 0; c < C; c++) s += a[c] * b[c];
    return s;
}

static double lse(const double *z, int n) {
    double mx = z[0], s = 0.0;
    for (int i = 1; i < n; i++) if (z[i] > mx) mx = z[i];
    for (int i = 0; i < n; i++) s += exp(z[i] - mx);
    return log(s) + mx;
}

/* -log p(w | x) by the definition, in double */
static double ref_nll(const double *x, const double *W, const double *Wc, int w) {
    double head[V + NC], tail[V];
    int c0 = cuts[0];
    for (int v = 0; v < c0; v++) head[v] = dot(x, W + v * C);
    for (int k = 0; k < NC; k++) head[c0 + k] = dot(x, Wc + k * C);
    double lh = lse(head, c0 + NC);
    if (w < c0) return lh - head[w];
    int k = 0;
    while (k + 1 < NC && w >= cuts[k + 1]) k++;
    int lo = cuts[k], hi = k + 1 < NC ? cuts[k + 1] : V;
    for (int v = lo; v < hi; v++) tail[v - lo] = dot(x, W + v * C);
    return lh - head[c0 + k] + lse(tail, hi - lo) - tail[w - lo];
}

typedef struct { double x[N * C], W[V * C], Wc[NC * C], g[N]; } Ref;

static double ref_loss(const Ref *r) {
    double s = 0.0;
    for (int i = 0; i < N; i++) if (tgt[i] >= 0) s += r->g[i] * ref_nll(r->x + i * C, r->W, r->Wc, tgt[i]);
    return s;
}

static void fill(Ref *r, float *x, float *W, float *Wc, float *g) {
    uint64_t seed = 7;
    fd_fill(x, N * C, 1.0f, &seed);
    fd_fill(W, V * C, 1.0f, &seed);
    fd_fill(Wc, NC * C, 1.0f, &seed);
    for (int i = 0; i < N; i++) g[i] = 0.05f * (float)(i + 1);
    for (int i = 0; i < N * C; i++) r->x[i] = x[i];
    for (int i = 0; i < V * C; i++) r->W[i] = W[i];
    for (int i = 0; i < NC * C; i++) r->Wc[i] = Wc[i];
    for (int i = 0; i < N; i++) r->g[i] = g[i];
}

typedef struct { AdaptiveActs a; void *mem; float logits[N * (V + NC)]; } Acts;

static void acts_init(Acts *t, const AdaptiveShape *s) {
    t->mem = malloc(adaptive_acts_bytes(s, N));
    adaptive_acts_bind(&t->a, t->mem, t->logits, s, N);
}

TEST(adaptive_loss_matches_double) {
    AdaptiveShape s = shape();
    static float x[N * C], W[V * C], Wc[NC * C], g[N], loss[N];
    static Ref r;
    fill(&r, x, W, Wc, g);
    Acts t;
    acts_init(&t, &s);
    adaptive_forward(&t.a, loss, x, W, Wc, tgt, &s, N);
    for (int i = 0; i < N; i++) {
        double want = tgt[i] >= 0 ? ref_nll(r.x + i * C, r.W, r.Wc, tgt[i]) : 0.0;
        EXPECT_MSG(fabs(loss[i] - want) <= 2e-6 * (1.0 + want), "row %d: loss %.8g, reference %.8g", i, loss[i], want);
    }
    /* the whole distribution: log p of every word */
    static float full[N * V], clog[N * NC];
    for (int i = 0; i < N; i++) {
        for (int v = 0; v < V; v++) full[i * V + v] = (float)dot(r.x + i * C, r.W + v * C);
        for (int k = 0; k < NC; k++) clog[i * NC + k] = (float)dot(r.x + i * C, r.Wc + k * C);
    }
    adaptive_normalize(full, clog, &s, N);
    for (int i = 0; i < N; i++) {
        double sum = 0.0;
        for (int v = 0; v < V; v++) sum += exp((double)full[i * V + v]);
        EXPECT_MSG(fabs(sum - 1.0) < 1e-5, "row %d: the distribution sums to %.8f", i, sum);
        for (int w = 0; w < V; w += 5) {
            double want = -ref_nll(r.x + i * C, r.W, r.Wc, w);
            EXPECT_MSG(fabs(full[i * V + w] - want) <= 2e-6 * (1.0 + fabs(want)), "row %d word %d: log p %.8g, reference %.8g",
                       i, w, full[i * V + w], want);
        }
    }
    free(t.mem);
}

static Ref *fd_ref;
static double ref_fn(void *ctx) { (void)ctx; return ref_loss(fd_ref); }

/* central differences of the double reference at each coordinate of p[n] against grad[n] */
static int check(const char *what, double *p, const float *grad, int n) {
    int bad = 0;
    const double h = 1e-5;
    for (int i = 0; i < n; i++) {
        double old = p[i];
        p[i] = old + h;
        double lp = ref_fn(NULL);
        p[i] = old - h;
        double lm = ref_fn(NULL);
        p[i] = old;
        double num = (lp - lm) / (2 * h);
        if (fabs(grad[i] - num) > 2e-5 + 1e-3 * fabs(num)) {
            if (bad < 4) printf("  %s[%d]: analytic %.8g numeric %.8g\n", what, i, grad[i], num);
            bad++;
        }
    }
    return bad;
}

TEST(adaptive_grad_matches_double_fd) {
    AdaptiveShape s = shape();
    static float x[N * C], W[V * C], Wc[NC * C], g[N], loss[N], dx[N * C], dW[V * C], dWc[NC * C];
    static Ref r;
    fill(&r, x, W, Wc, g);
    Acts t;
    acts_init(&t, &s);
    adaptive_forward(&t.a, loss, x, W, Wc, tgt, &s, N);
    for (int i = 0; i < N * C; i++) dx[i] = 123.0f;   /* assigned, not accumulated */
    for (int i = 0; i < V * C; i++) dW[i] = 0.5f;      /* accumulated */
    for (int i = 0; i < NC * C; i++) dWc[i] = -0.25f;
    adaptive_backward(dx, dW, dWc, g, &t.a, x, W, Wc, &s, N);
    for (int i = 0; i < V * C; i++) dW[i] -= 0.5f;
    for (int i = 0; i < NC * C; i++) dWc[i] += 0.25f;
    fd_ref = &r;
    EXPECT_MSG(check("dx", r.x, dx, N * C) == 0, "dx differs from the finite differences");
    EXPECT_MSG(check("dW", r.W, dW, V * C) == 0, "dW differs from the finite differences");
    EXPECT_MSG(check("dWc", r.Wc, dWc, NC * C) == 0, "dWc differs from the finite differences");
    /* the ignored row and the empty cluster's words get nothing */
    for (int c = 0; c < C; c++) EXPECT(dx[3 * C + c] == 0.0f);
    double empty = 0.0;
    for (int v = 12; v < 20; v++) for (int c = 0; c < C; c++) empty += fabs(dW[v * C + c]);
    EXPECT_MSG(empty == 0.0, "cluster 1 (no target) has gradient %g", empty);
    free(t.mem);
}

int main(void) {
    test_one_thread();
    RUN(adaptive_loss_matches_double);
    RUN(adaptive_grad_matches_double_fd);
    return test_summary("adaptive");
}
