/* adaptive.c: the adaptive softmax's loss, its gradient, and the full distribution (adaptive.h). */
#include "ops/adaptive.h"

#include <math.h>
#include <string.h>
#include "backend/gemm.h"
#include "common/util.h"
#include "ops/ops.h"
#include "ops/ops_simd.h"

static size_t up64(size_t b) { return (b + 63) & ~(size_t)63; }

size_t adaptive_acts_bytes(const AdaptiveShape *s, int N) {
    return 3 * up64(sizeof(float) * (size_t)N) + 2 * up64(sizeof(float) * (size_t)N * s->C)
         + 3 * up64(sizeof(int) * (size_t)N);
}

void adaptive_acts_bind(AdaptiveActs *a, void *mem, float *logits, const AdaptiveShape *s, int N) {
    char *p = mem;
    a->logits = logits;
#define TAKE(f, type, n) (a->f = (type *)p, p += up64(sizeof(type) * (size_t)(n)))
    TAKE(lse, float, N);
    TAKE(tlse, float, N);
    TAKE(dlg, float, N);
    TAKE(xg, float, (size_t)N * s->C);
    TAKE(dxg, float, (size_t)N * s->C);
    TAKE(ht, int, N);
    TAKE(rows, int, N);
    TAKE(tt, int, N);
#undef TAKE
}

/* The cluster of word w (>= cut[0]) */
static int cluster_of(const AdaptiveShape *s, int w) {
    int k = 0;
    while (w >= s->cut[k + 1]) k++;
    return k;
}

/* Cluster k's block of tail logits: after the head's [N, H], the clusters' [N_j, S_j] in order */
static float *tail_logits(const AdaptiveActs *a, const AdaptiveShape *s, int N, int k) {
    size_t off = (size_t)N * (s->cut[0] + s->n);
    for (int j = 0; j < k; j++) off += (size_t)(a->start[j + 1] - a->start[j]) * (s->cut[j + 1] - s->cut[j]);
    return a->logits + off;
}

static void gather_rows(float *dst, const float *x, const int *rows, int n, int C) {
    for (int j = 0; j < n; j++) memcpy(dst + (size_t)j * C, x + (size_t)rows[j] * C, sizeof(float) * C);
}

void adaptive_forward(AdaptiveActs *a, float *losses, const float *x, const float *W, const float *Wc,
                      const int *targets, const AdaptiveShape *s, int N) {
    int C = s->C, c0 = s->cut[0], n = s->n, H = c0 + n;
    int count[ADAPTIVE_MAX] = {0};
    for (int i = 0; i < N; i++) {
        int t = targets[i];
        CHECK(t < s->V);
        if (t < c0) {
            a->ht[i] = t;   /* a head word, or -1 */
            continue;
        }
        int k = cluster_of(s, t);
        a->ht[i] = c0 + k;
        count[k]++;
    }
    a->start[0] = 0;
    for (int k = 0; k < n; k++) a->start[k + 1] = a->start[k] + count[k];
    int at[ADAPTIVE_MAX];
    memcpy(at, a->start, sizeof at);
    for (int i = 0; i < N; i++) {   /* the tail rows grouped by cluster, each group in row order */
        if (a->ht[i] < c0) continue;
        int k = a->ht[i] - c0;
        a->rows[at[k]] = i;
        a->tt[at[k]++] = targets[i] - s->cut[k];
    }
    float *head = a->logits;
    gemm(0, 1, N, c0, C, 1.0f, x, C, W, C, 0.0f, head, H);
    gemm(0, 1, N, n, C, 1.0f, x, C, Wc, C, 0.0f, head + c0, H);
    crossentropy_forward(losses, a->lse, head, a->ht, N, H);
    for (int k = 0; k < n; k++) {
        int r0 = a->start[k], Nk = a->start[k + 1] - r0, Sk = s->cut[k + 1] - s->cut[k];
        if (!Nk) continue;
        float *tl = tail_logits(a, s, N, k);
        gather_rows(a->xg, x, a->rows + r0, Nk, C);
        gemm(0, 1, Nk, Sk, C, 1.0f, a->xg, C, W + (size_t)s->cut[k] * C, C, 0.0f, tl, Sk);
        crossentropy_forward(a->dlg, a->tlse + r0, tl, a->tt + r0, Nk, Sk);
        for (int j = 0; j < Nk; j++) losses[a->rows[r0 + j]] += a->dlg[j];
    }
}

void adaptive_backward(float *dx, float *dW, float *dWc, const float *dlosses, AdaptiveActs *a, const float *x,
                       const float *W, const float *Wc, const AdaptiveShape *s, int N) {
    int C = s->C, c0 = s->cut[0], n = s->n, H = c0 + n;
    float *head = a->logits;
    crossentropy_backward(head, head, a->lse, a->ht, dlosses, N, H);   /* in place */
    GemmCall gi = {0, 0, N, C, c0, 1.0f, head, H, W, C, 0.0f, dx, C, 0, NULL};     /* dx = dhead_words W[:c0] */
    GemmCall gw = {1, 0, c0, C, N, 1.0f, head, H, x, C, 1.0f, dW, C, 0, NULL};     /* dW[:c0] += dhead^T x */
    gemm_pair(&gi, &gw);
    gemm(0, 0, N, C, n, 1.0f, head + c0, H, Wc, C, 1.0f, dx, C);
    gemm(1, 0, n, C, N, 1.0f, head + c0, H, x, C, 1.0f, dWc, C);
    for (int k = 0; k < n; k++) {
        int r0 = a->start[k], Nk = a->start[k + 1] - r0, Sk = s->cut[k + 1] - s->cut[k];
        if (!Nk) continue;
        const int *rows = a->rows + r0;
        float *tl = tail_logits(a, s, N, k);
        for (int j = 0; j < Nk; j++) a->dlg[j] = dlosses[rows[j]];
        crossentropy_backward(tl, tl, a->tlse + r0, a->tt + r0, a->dlg, Nk, Sk);
        gather_rows(a->xg, x, rows, Nk, C);
        const float *Wk = W + (size_t)s->cut[k] * C;
        GemmCall ti = {0, 0, Nk, C, Sk, 1.0f, tl, Sk, Wk, C, 0.0f, a->dxg, C, 0, NULL};
        GemmCall tw = {1, 0, Sk, C, Nk, 1.0f, tl, Sk, a->xg, C, 1.0f, dW + (size_t)s->cut[k] * C, C, 0, NULL};
        gemm_pair(&ti, &tw);
        for (int j = 0; j < Nk; j++) {   /* scattered back to the rows' gradients */
            float *d = dx + (size_t)rows[j] * C;
            add_forward(d, d, a->dxg + (size_t)j * C, C);
        }
    }
}

/* log sum exp of x[0..n) and (when m > 0) y[0..m), in double */
static double lse2(const float *x, int n, const float *y, int m) {
    float mx = row_max(x, n);
    for (int j = 0; j < m; j++) if (y[j] > mx) mx = y[j];
    double sum = row_sumexp(x, n, mx);
    for (int j = 0; j < m; j++) sum += exp((double)y[j] - mx);
    return log(sum) + mx;
}

void adaptive_normalize(float *logits, const float *clog, const AdaptiveShape *s, int N) {
    int V = s->V, c0 = s->cut[0], n = s->n;
#pragma omp parallel for schedule(static) if ((size_t)N * V >= PAR_MIN_WORK)
    for (int r = 0; r < N; r++) {
        float *z = logits + (size_t)r * V;
        const float *cl = clog + (size_t)r * n;
        double lh = lse2(z, c0, cl, n);
        for (int k = 0; k < n; k++) {
            int lo = s->cut[k], S = s->cut[k + 1] - lo;
            double shift = cl[k] - lh - lse2(z + lo, S, NULL, 0);
            for (int v = lo; v < lo + S; v++) z[v] = (float)(z[v] + shift);
        }
        for (int v = 0; v < c0; v++) z[v] = (float)(z[v] - lh);
    }
}
