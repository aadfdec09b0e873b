/* attn.c: the general attention core (attn.h): grouped-query heads, any head width and strides, a
 * scale, T5's additive position bias, HF's key mask, causal or not, Tq != Tk; forward, backward and
 * the one-query step over a KV cache.
 *
 * Three ways to the same numbers (tests/test_attn.c holds them together):
 *   - the references (attn_forward_ref, attn_backward_ref): HF's eager attention written out, a masked
 *     score set to -FLT_MAX and the softmax over all Tk keys with expf, every loop over every key;
 *   - the fast versions: each row's visible keys only (the causal prefix), masked keys given exactly
 *     0 and an all-masked row exactly 1/Tk (what -FLT_MAX gives, without computing it), exponentials
 *     by exp_poly, and for blocks of 16 x 16 scores and more the products of a (b, h) block as GEMMs
 *     (scores and probabilities times values; in the backward dP, dQ, dK, dV), a causal block's query
 *     rows 32 at a time against the keys they see; for smaller blocks vectorised loops;
 *   - attn_step, the last row of the forward for generation.
 * Dropout on the probabilities (training, T5 / Switch): attn_dropout_forward redoes the values' product
 * with the dropped probabilities, attn_dropout_backward is the backward of the pair.
 * Not here: the projections, RoPE and the bias table (rope.c, posbias.c).
 * Parallel over (b, h) in the forward, (b, kv head) in the backward: one thread owns the dk, dv rows
 * of a kv head and the dq columns of its query heads; dbias is a separate pass over its rows, each
 * summing the batch in order, so no result depends on the thread count.
 */
#include "attn.h"

#include <float.h>
#include <math.h>
#include <string.h>
#include "backend/gemm.h"
#include "common/util.h"
#include "ops.h"
#include "ops_simd.h"

/* A (b, h) block takes the GEMM route when its score matrix has at least this many entries and its
 * head at least ATTN_GEMM_MIN_HD dimensions. Measured one block forward and backward on one thread
 * (bench/RESULTS.md, "general attention"): the GEMM route 0.2-0.5x the loops' time from 16 x 16 scores
 * up at head widths 8-64, about even at 8 x 8, slower at 4 x 4 (a BLAS call's fixed cost). */
#define ATTN_GEMM_MIN_SCORES 256
#define ATTN_GEMM_MIN_HD 8

static void attn_check(const AttnDims *d) {
    CHECK(d->B > 0 && d->Tq > 0 && d->Tk > 0 && d->hd > 0);
    CHECK(d->NH > 0 && d->NKV > 0 && d->NH % d->NKV == 0);
    CHECK(d->ldq >= (size_t)d->NH * d->hd && d->ldo >= (size_t)d->NH * d->hd);
    CHECK(d->ldk >= (size_t)d->NKV * d->hd && d->ldv >= (size_t)d->NKV * d->hd);
}

/* Keys a causal query i may see: j < i + Tk - Tq + 1, clamped to [0, Tk]; all Tk when not causal. */
static inline int attn_extent(const AttnDims *d, int i) {
    if (!d->causal) return d->Tk;
    int n = i + d->Tk - d->Tq + 1;
    return n < 0 ? 0 : n > d->Tk ? d->Tk : n;
}

/* ---- references ---------------------------------------------------------------------------------- */

void attn_forward_ref(float *out, float *att, const float *q, const float *k, const float *v, const float *bias,
                      const uint8_t *key_mask, const AttnDims *d) {
    attn_check(d);
    int Tq = d->Tq, Tk = d->Tk, hd = d->hd, rep = d->NH / d->NKV;
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < d->NH; h++)
            for (int i = 0; i < Tq; i++) {
                int g = h / rep, lim = attn_extent(d, i);
                const float *qi = q + ((size_t)b * Tq + i) * d->ldq + (size_t)h * hd;
                float *a = att + (((size_t)b * d->NH + h) * Tq + i) * Tk;
                float mx = -INFINITY;
                for (int j = 0; j < Tk; j++) {
                    const float *kj = k + ((size_t)b * Tk + j) * d->ldk + (size_t)g * hd;
                    float s = 0.0f;
                    for (int c = 0; c < hd; c++) s += qi[c] * kj[c];
                    s *= d->scale;
                    if (bias) s += bias[((size_t)h * Tq + i) * Tk + j];
                    /* HF adds finfo.min; any score plus it rounds to -FLT_MAX */
                    if (j >= lim || (key_mask && !key_mask[(size_t)b * Tk + j])) s = -FLT_MAX;
                    a[j] = s;
                    mx = s > mx ? s : mx;
                }
                float sum = 0.0f;
                for (int j = 0; j < Tk; j++) { a[j] = expf(a[j] - mx); sum += a[j]; }
                for (int j = 0; j < Tk; j++) a[j] /= sum;
                float *o = out + ((size_t)b * Tq + i) * d->ldo + (size_t)h * hd;
                for (int c = 0; c < hd; c++) o[c] = 0.0f;
                for (int j = 0; j < Tk; j++) {
                    const float *vj = v + ((size_t)b * Tk + j) * d->ldv + (size_t)g * hd;
                    for (int c = 0; c < hd; c++) o[c] += a[j] * vj[c];
                }
            }
}

/* dbias[h, i, j] += sum_b ds[b, h, i, j] (ds in datt), the batch summed in order first */
static void attn_bias_grad(float *dbias, const float *datt, const AttnDims *d) {
    size_t blk = (size_t)d->Tq * d->Tk, n = (size_t)d->NH * blk;
#pragma omp parallel for schedule(static) if (n * d->B >= PAR_MIN_WORK)
    for (int h = 0; h < d->NH; h++) {   /* each thread owns head h's rows of dbias */
        for (size_t e = 0; e < blk; e++) {
            float s = 0.0f;
            for (int b = 0; b < d->B; b++) s += datt[((size_t)b * d->NH + h) * blk + e];
            dbias[(size_t)h * blk + e] += s;
        }
    }
}

/* The head columns of rows [0, T) of x (stride ld) set to zero */
static void zero_cols(float *x, size_t ld, int T, int hd) {
    for (int t = 0; t < T; t++) memset(x + (size_t)t * ld, 0, sizeof(float) * hd);
}

void attn_backward_ref(float *dq, float *dk, float *dv, float *dbias, float *datt, const float *dout,
                       const float *att, const float *q, const float *k, const float *v, const AttnDims *d) {
    attn_check(d);
    int Tq = d->Tq, Tk = d->Tk, hd = d->hd, rep = d->NH / d->NKV;
    for (int b = 0; b < d->B; b++) {
        for (int h = 0; h < d->NH; h++) zero_cols(dq + (size_t)b * Tq * d->ldq + (size_t)h * hd, d->ldq, Tq, hd);
        for (int g = 0; g < d->NKV; g++) {
            zero_cols(dk + (size_t)b * Tk * d->ldk + (size_t)g * hd, d->ldk, Tk, hd);
            zero_cols(dv + (size_t)b * Tk * d->ldv + (size_t)g * hd, d->ldv, Tk, hd);
        }
        for (int h = 0; h < d->NH; h++)
            for (int i = 0; i < Tq; i++) {
                int g = h / rep;
                size_t row = (((size_t)b * d->NH + h) * Tq + i) * Tk;
                const float *a = att + row, *dO = dout + ((size_t)b * Tq + i) * d->ldo + (size_t)h * hd;
                const float *qi = q + ((size_t)b * Tq + i) * d->ldq + (size_t)h * hd;
                float *ds = datt + row, *dqi = dq + ((size_t)b * Tq + i) * d->ldq + (size_t)h * hd;
                /* out = sum_j a_j v_j:  da_j = dO . v_j,  dv_j += a_j dO */
                for (int j = 0; j < Tk; j++) {
                    const float *vj = v + ((size_t)b * Tk + j) * d->ldv + (size_t)g * hd;
                    float *dvj = dv + ((size_t)b * Tk + j) * d->ldv + (size_t)g * hd;
                    float s = 0.0f;
                    for (int c = 0; c < hd; c++) { s += dO[c] * vj[c]; dvj[c] += a[j] * dO[c]; }
                    ds[j] = s;
                }
                /* softmax: ds_j = a_j (da_j - sum_w a_w da_w); the score is scale (q . k) + bias */
                float dot = 0.0f;
                for (int j = 0; j < Tk; j++) dot += a[j] * ds[j];
                for (int j = 0; j < Tk; j++) {
                    ds[j] = a[j] * (ds[j] - dot);
                    const float *kj = k + ((size_t)b * Tk + j) * d->ldk + (size_t)g * hd;
                    float *dkj = dk + ((size_t)b * Tk + j) * d->ldk + (size_t)g * hd, w = ds[j] * d->scale;
                    for (int c = 0; c < hd; c++) { dqi[c] += w * kj[c]; dkj[c] += w * qi[c]; }
                }
            }
    }
    if (dbias) attn_bias_grad(dbias, datt, d);
}

/* ---- fast versions ------------------------------------------------------------------------------- */

/* s[0..n) = softmax over the keys j < n that key mask m (NULL: all) keeps, each dropped key exactly 0,
 * and s[n..Tk) = 0; when no key is kept, s[0..Tk) = 1/Tk (HF's all -FLT_MAX row). Returns the extent of
 * the row's nonzero part: n, or Tk for the uniform row. */
static int softmax_visible(float *s, int n, int Tk, const uint8_t *m) {
    int kept = 0;
    if (m) {
        for (int j = 0; j < n; j++) kept += m[j] != 0;
    } else {
        kept = n;
    }
    if (kept == 0) {
        for (int j = 0; j < Tk; j++) s[j] = 1.0f / (float)Tk;
        return Tk;
    }
    float mx = -INFINITY, sum = 0.0f;
    if (m) {
        for (int j = 0; j < n; j++) mx = m[j] && s[j] > mx ? s[j] : mx;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < n; j++) { s[j] = m[j] ? exp_poly(s[j] - mx) : 0.0f; sum += s[j]; }
    } else {
        mx = row_max(s, n);
        sum = exp_row(s, s, n, mx);
    }
    float inv = 1.0f / sum;
#pragma omp simd
    for (int j = 0; j < n; j++) s[j] *= inv;
    for (int j = n; j < Tk; j++) s[j] = 0.0f;
    return n;
}

static int attn_use_gemm(const AttnDims *d) {
    return (size_t)d->Tq * d->Tk >= ATTN_GEMM_MIN_SCORES && d->hd >= ATTN_GEMM_MIN_HD;
}

/* The GEMM route takes a causal block's query rows ATTN_ROW_BLOCK at a time, each against the keys its
 * last row sees, so the products skip most of the hidden corner (with Tq = Tk = 256, 0.56 of the full
 * products); rows of a block past their own extent get exact zeros. */
#define ATTN_ROW_BLOCK 32

/* Query rows [i0, i1) of a block and the keys [0, n) the GEMMs cover for them. */
static int attn_block_keys(const AttnDims *d, int i1) { return d->causal ? attn_extent(d, i1 - 1) : d->Tk; }

/* One (b, h) block of the forward: qb, kb, vb, ob at the block's first row and head column; A the
 * block's probabilities [Tq, Tk]; biasb [Tq, Tk] or NULL; m the batch's key mask [Tk] or NULL. */
static void attn_block_forward(float *ob, float *A, const float *qb, const float *kb, const float *vb,
                               const float *biasb, const uint8_t *m, const AttnDims *d, int gemm_route) {
    int Tq = d->Tq, Tk = d->Tk, hd = d->hd;
    if (gemm_route) {
        /* per row block: S = scale Q K^T over the keys its rows may see, each row's softmax over its
         * visible prefix, then O = P V over the keys any row kept (all Tk after an all-masked row) */
        int rb = d->causal ? ATTN_ROW_BLOCK : Tq;
        for (int i0 = 0; i0 < Tq; i0 += rb) {
            int i1 = i0 + rb < Tq ? i0 + rb : Tq, n = attn_block_keys(d, i1), used = 0;
            float *Ab = A + (size_t)i0 * Tk;
            if (n > 0)
                gemm(0, 1, i1 - i0, n, hd, d->scale, qb + (size_t)i0 * d->ldq, (int)d->ldq, kb, (int)d->ldk, 0.0f, Ab, Tk);
            for (int i = i0; i < i1; i++) {
                float *s = A + (size_t)i * Tk;
                int ni = attn_extent(d, i);
                if (biasb) {
                    const float *br = biasb + (size_t)i * Tk;
#pragma omp simd
                    for (int j = 0; j < ni; j++) s[j] += br[j];
                }
                ni = softmax_visible(s, ni, Tk, m);
                used = ni > used ? ni : used;
            }
            gemm(0, 0, i1 - i0, hd, used, 1.0f, Ab, Tk, vb, (int)d->ldv, 0.0f, ob + (size_t)i0 * d->ldo, (int)d->ldo);
        }
        return;
    }
    for (int i = 0; i < Tq; i++) {
        float *s = A + (size_t)i * Tk, *o = ob + (size_t)i * d->ldo;
        const float *qi = qb + (size_t)i * d->ldq;
        int n = attn_extent(d, i);
        for (int j = 0; j < n; j++) s[j] = d->scale * dot_simd(qi, kb + (size_t)j * d->ldk, hd);
        if (biasb) {
            const float *br = biasb + (size_t)i * Tk;
#pragma omp simd
            for (int j = 0; j < n; j++) s[j] += br[j];
        }
        n = softmax_visible(s, n, Tk, m);
        for (int c = 0; c < hd; c++) o[c] = 0.0f;
        for (int j = 0; j < n; j++) axpy_simd(o, s[j], vb + (size_t)j * d->ldv, hd);
    }
}

void attn_forward(float *out, float *att, const float *q, const float *k, const float *v, const float *bias,
                  const uint8_t *key_mask, const AttnDims *d) {
    attn_check(d);
    int rep = d->NH / d->NKV, route = attn_use_gemm(d);
    size_t work = (size_t)d->B * d->NH * d->Tq * d->Tk * d->hd;
#pragma omp parallel for collapse(2) schedule(static) if (work >= PAR_MIN_WORK)
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < d->NH; h++) {   /* each thread owns block (b, h) of att and head h's columns of out */
            int g = h / rep;
            attn_block_forward(out + (size_t)b * d->Tq * d->ldo + (size_t)h * d->hd,
                               att + ((size_t)b * d->NH + h) * d->Tq * d->Tk,
                               q + (size_t)b * d->Tq * d->ldq + (size_t)h * d->hd,
                               k + (size_t)b * d->Tk * d->ldk + (size_t)g * d->hd,
                               v + (size_t)b * d->Tk * d->ldv + (size_t)g * d->hd,
                               bias ? bias + (size_t)h * d->Tq * d->Tk : NULL,
                               key_mask ? key_mask + (size_t)b * d->Tk : NULL, d, route);
        }
}

/* The nonzero extent of row i of a probability block: its causal prefix, or all Tk keys when the
 * forward made it uniform (no visible key; then the entry just past the prefix is 1/Tk, not 0). */
static inline int row_extent(const float *a, const AttnDims *d, int i) {
    int n = attn_extent(d, i);
    return n < d->Tk && (n == 0 || a[n] != 0.0f) ? d->Tk : n;
}

/* One query head's share of a (b, kv head) block of the backward: dq assigned, dk and dv accumulated
 * (the caller zeroes them before the group's first head). */
static void attn_block_backward(float *dqb, float *dkb, float *dvb, float *D, const float *dob, const float *A,
                                const float *qb, const float *kb, const float *vb, const AttnDims *d, int gemm_route) {
    int Tq = d->Tq, Tk = d->Tk, hd = d->hd;
    if (gemm_route) {
        int rb = d->causal ? ATTN_ROW_BLOCK : Tq;
        for (int i0 = 0; i0 < Tq; i0 += rb) {
            int i1 = i0 + rb < Tq ? i0 + rb : Tq, n = 0, nb = i1 - i0;
            for (int i = i0; i < i1; i++) {
                int ni = row_extent(A + (size_t)i * Tk, d, i);
                n = ni > n ? ni : n;
            }
            float *Db = D + (size_t)i0 * Tk;
            const float *Ab = A + (size_t)i0 * Tk, *dOb = dob + (size_t)i0 * d->ldo, *Qb = qb + (size_t)i0 * d->ldq;
            gemm(0, 1, nb, n, hd, 1.0f, dOb, (int)d->ldo, vb, (int)d->ldv, 0.0f, Db, Tk);   /* dP = dO V^T */
            for (int i = i0; i < i1; i++) {   /* dS = P * (dP - rowsum(P * dP)) */
                const float *a = A + (size_t)i * Tk;
                float *ds = D + (size_t)i * Tk;
                float dot = dot_simd(a, ds, n);
#pragma omp simd
                for (int j = 0; j < n; j++) ds[j] = a[j] * (ds[j] - dot);
                for (int j = n; j < Tk; j++) ds[j] = 0.0f;
            }
            gemm(0, 0, nb, hd, n, d->scale, Db, Tk, kb, (int)d->ldk, 0.0f, dqb + (size_t)i0 * d->ldq, (int)d->ldq);  /* dQ = scale dS K */
            gemm(1, 0, n, hd, nb, d->scale, Db, Tk, Qb, (int)d->ldq, 1.0f, dkb, (int)d->ldk);   /* dK += scale dS^T Q */
            gemm(1, 0, n, hd, nb, 1.0f, Ab, Tk, dOb, (int)d->ldo, 1.0f, dvb, (int)d->ldv);      /* dV += P^T dO */
        }
        return;
    }
    for (int i = 0; i < Tq; i++) {
        const float *a = A + (size_t)i * Tk, *dO = dob + (size_t)i * d->ldo, *qi = qb + (size_t)i * d->ldq;
        float *ds = D + (size_t)i * Tk, *dqi = dqb + (size_t)i * d->ldq;
        int n = row_extent(a, d, i);
        for (int j = 0; j < n; j++) {   /* out = sum_j a_j v_j: da_j = dO . v_j, dv_j += a_j dO */
            ds[j] = dot_simd(dO, vb + (size_t)j * d->ldv, hd);
            axpy_simd(dvb + (size_t)j * d->ldv, a[j], dO, hd);
        }
        float dot = dot_simd(a, ds, n);
        for (int c = 0; c < hd; c++) dqi[c] = 0.0f;
        for (int j = 0; j < n; j++) {
            ds[j] = a[j] * (ds[j] - dot);
            float w = ds[j] * d->scale;
            axpy_simd(dqi, w, kb + (size_t)j * d->ldk, hd);
            axpy_simd(dkb + (size_t)j * d->ldk, w, qi, hd);
        }
        for (int j = n; j < Tk; j++) ds[j] = 0.0f;
    }
}

void attn_backward(float *dq, float *dk, float *dv, float *dbias, float *datt, const float *dout, const float *att,
                   const float *q, const float *k, const float *v, const AttnDims *d) {
    attn_check(d);
    int rep = d->NH / d->NKV, route = attn_use_gemm(d);
    size_t work = (size_t)d->B * d->NH * d->Tq * d->Tk * d->hd, blk = (size_t)d->Tq * d->Tk;
#pragma omp parallel for collapse(2) schedule(static) if (work >= PAR_MIN_WORK)
    for (int b = 0; b < d->B; b++)
        for (int g = 0; g < d->NKV; g++) {   /* each thread owns kv head g of batch b: its dk, dv rows and its query heads' dq */
            float *dkb = dk + (size_t)b * d->Tk * d->ldk + (size_t)g * d->hd;
            float *dvb = dv + (size_t)b * d->Tk * d->ldv + (size_t)g * d->hd;
            const float *kb = k + (size_t)b * d->Tk * d->ldk + (size_t)g * d->hd;
            const float *vb = v + (size_t)b * d->Tk * d->ldv + (size_t)g * d->hd;
            zero_cols(dkb, d->ldk, d->Tk, d->hd);
            zero_cols(dvb, d->ldv, d->Tk, d->hd);
            for (int r = 0; r < rep; r++) {
                int h = g * rep + r;
                size_t oq = (size_t)b * d->Tq * d->ldq + (size_t)h * d->hd, oa = ((size_t)b * d->NH + h) * blk;
                attn_block_backward(dq + oq, dkb, dvb, datt + oa, dout + (size_t)b * d->Tq * d->ldo + (size_t)h * d->hd,
                                    att + oa, q + oq, kb, vb, d, route);
            }
        }
    if (dbias) attn_bias_grad(dbias, datt, d);
}

/* ---- dropout on the probabilities ------------------------------------------------------------------ */

void attn_dropout_forward(float *out, float *att_d, uint8_t *mask, const float *att, const float *v, float p,
                          const AttnDims *d, uint64_t key, uint64_t first) {
    attn_check(d);
    CHECK(p >= 0.0f && p < 1.0f);
    int rep = d->NH / d->NKV;
    size_t blk = (size_t)d->Tq * d->Tk, work = (size_t)d->B * d->NH * blk * d->hd;
    dropout_forward(att_d, mask, att, p, (size_t)d->B * d->NH * blk, key, first);
#pragma omp parallel for collapse(2) schedule(static) if (work >= PAR_MIN_WORK)
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < d->NH; h++)   /* each thread owns head h's columns of out in batch b */
            gemm(0, 0, d->Tq, d->hd, d->Tk, 1.0f, att_d + ((size_t)b * d->NH + h) * blk, d->Tk,
                 v + (size_t)b * d->Tk * d->ldv + (size_t)(h / rep) * d->hd, (int)d->ldv, 0.0f,
                 out + (size_t)b * d->Tq * d->ldo + (size_t)h * d->hd, (int)d->ldo);
}

void attn_dropout_backward(float *dq, float *dk, float *dv, float *dbias, float *datt, float *att_d, const float *dout,
                           const float *att, const uint8_t *mask, float p, const float *q, const float *k,
                           const float *v, const AttnDims *d) {
    attn_check(d);
    CHECK(p >= 0.0f && p < 1.0f);
    int rep = d->NH / d->NKV, Tq = d->Tq, Tk = d->Tk, hd = d->hd;
    size_t blk = (size_t)Tq * Tk, work = (size_t)d->B * d->NH * blk * hd;
    float keep = 1.0f / (1.0f - p);
#pragma omp parallel for collapse(2) schedule(static) if (work >= PAR_MIN_WORK)
    for (int b = 0; b < d->B; b++)
        for (int g = 0; g < d->NKV; g++) {   /* each thread owns kv head g of batch b, as attn_backward */
            float *dkb = dk + (size_t)b * Tk * d->ldk + (size_t)g * hd;
            float *dvb = dv + (size_t)b * Tk * d->ldv + (size_t)g * hd;
            const float *kb = k + (size_t)b * Tk * d->ldk + (size_t)g * hd;
            const float *vb = v + (size_t)b * Tk * d->ldv + (size_t)g * hd;
            zero_cols(dkb, d->ldk, Tk, hd);
            zero_cols(dvb, d->ldv, Tk, hd);
            for (int r = 0; r < rep; r++) {
                int h = g * rep + r;
                size_t oa = ((size_t)b * d->NH + h) * blk;
                const float *A = att + oa, *dOb = dout + (size_t)b * Tq * d->ldo + (size_t)h * hd;
                const float *qb = q + (size_t)b * Tq * d->ldq + (size_t)h * hd;
                const uint8_t *M = mask + oa;
                float *D = datt + oa, *Ad = att_d + oa;
                for (size_t e = 0; e < blk; e++) Ad[e] = M[e] ? A[e] * keep : 0.0f;
                gemm(0, 1, Tq, Tk, hd, 1.0f, dOb, (int)d->ldo, vb, (int)d->ldv, 0.0f, D, Tk);   /* d att_d = dO V^T */
                for (int i = 0; i < Tq; i++) {   /* d att = d att_d mask / (1 - p); dS = att (d att - rowsum(att d att)) */
                    const float *a = A + (size_t)i * Tk;
                    float *ds = D + (size_t)i * Tk, dot = 0.0f;
                    for (int j = 0; j < Tk; j++) {
                        ds[j] = M[(size_t)i * Tk + j] ? ds[j] * keep : 0.0f;
                        dot += a[j] * ds[j];
                    }
                    for (int j = 0; j < Tk; j++) ds[j] = a[j] * (ds[j] - dot);
                }
                gemm(0, 0, Tq, hd, Tk, d->scale, D, Tk, kb, (int)d->ldk, 0.0f,
                     dq + (size_t)b * Tq * d->ldq + (size_t)h * hd, (int)d->ldq);                 /* dQ = scale dS K */
                gemm(1, 0, Tk, hd, Tq, d->scale, D, Tk, qb, (int)d->ldq, 1.0f, dkb, (int)d->ldk);  /* dK += scale dS^T Q */
                gemm(1, 0, Tk, hd, Tq, 1.0f, Ad, Tk, dOb, (int)d->ldo, 1.0f, dvb, (int)d->ldv);    /* dV += att_d^T dO */
            }
        }
    if (dbias) attn_bias_grad(dbias, datt, d);
}

/* ---- one query over a KV cache --------------------------------------------------------------------- */

void attn_step(float *out, float *a, const float *q, const float *kT, size_t ldk, size_t k_head_stride,
               const float *v, size_t v_head_stride, const float *bias, size_t ldb, const uint8_t *key_mask, int n,
               int NH, int NKV, int hd, float scale) {
    CHECK(n > 0 && hd > 0 && NKV > 0 && NH % NKV == 0 && ldk >= (size_t)n);
    int rep = NH / NKV;
    for (int h = 0; h < NH; h++) {
        const float *qh = q + (size_t)h * hd, *kTg = kT + (size_t)(h / rep) * k_head_stride;
        const float *vg = v + (size_t)(h / rep) * v_head_stride;
        float *ah = a + (size_t)h * n;
        step_scores_any(ah, qh, kTg, ldk, n, hd, scale);
        if (bias) {
            const float *br = bias + (size_t)h * ldb;
#pragma omp simd
            for (int u = 0; u < n; u++) ah[u] += br[u];
        }
        softmax_visible(ah, n, n, key_mask);
        /* heads r and r + 1 (r even) of a key/value group (grouped-query) read its values in one
         * pass, once r + 1's weights are known; an odd group's last head alone */
        int r = h % rep;
        if (r % 2 == 1) step_values2_any(out + (size_t)(h - 1) * hd, out + (size_t)h * hd, ah - n, ah, vg, n, hd);
        else if (r == rep - 1) step_values_any(out + (size_t)h * hd, ah, vg, n, hd);
    }
}
