/* posbias.c: T5's relative position bias (T5, Switch Transformers; attn.h).
 *
 * A bucket per relative position rel = key position - query position, as HF's
 * _relative_position_bucket computes it; then bias[h, i, j] = table[bucket(j - i), h], the table
 * an nn.Embedding [num_buckets, NH]. HF computes the large buckets in float32:
 *     max_exact + (long)(fl(fl(log(fl(|rel| / max_exact)) / fl(log(max_distance / max_exact))) * (nb - max_exact)))
 * (the divisor is math.log in double, rounded to float when torch divides a float tensor by it; the
 * cast truncates toward zero). Each step here rounds to float the same way, the log correctly rounded
 * (torch's is within an ulp, and tests/ref/attn_ref.py's fixture holds torch's buckets for every rel
 * in [-2000, 2000] under several settings: all equal).
 * Buckets depend on j - i only, so a call computes the Tq + Tk - 1 of them once (posbias_buckets) and
 * the forward and backward gather and scatter by them, with no log in the loops.
 */
#include "attn.h"

#include <math.h>
#include "common/util.h"
#include "ops_simd.h"

int t5_relative_bucket(int rel, int bidirectional, int num_buckets, int max_distance) {
    int nb = num_buckets, bucket = 0;
    if (bidirectional) {
        nb /= 2;
        if (rel > 0) bucket += nb;
        rel = rel < 0 ? -rel : rel;
    } else {
        rel = rel < 0 ? -rel : 0;   /* -min(rel, 0): keys after the query share bucket 0 */
    }
    int max_exact = nb / 2;
    CHECK(max_exact >= 1 && max_distance > max_exact);
    if (rel < max_exact) return bucket + rel;
    float ratio = (float)rel / (float)max_exact;
    float lg = (float)log((double)ratio);
    float denom = (float)log((double)max_distance / (double)max_exact);
    float scaled = lg / denom * (float)(nb - max_exact);
    /* scaled >= 0 here; above nb it is capped anyway (and stays far from the long range) */
    int large = scaled >= (float)nb ? nb - 1 : max_exact + (int)scaled;
    return bucket + (large < nb - 1 ? large : nb - 1);
}

void posbias_buckets(int *bkt, int Tq, int Tk, int q0, int bidirectional, int num_buckets, int max_distance) {
    CHECK(Tq > 0 && Tk > 0 && q0 >= 0);
    for (int r = 0; r < Tq + Tk - 1; r++)   /* r = j - i + Tq - 1, so j - (i + q0) = r - (Tq - 1) - q0 */
        bkt[r] = t5_relative_bucket(r - (Tq - 1) - q0, bidirectional, num_buckets, max_distance);
}

void posbias_forward(float *bias, const int *bkt, const float *table, int NH, int Tq, int Tk) {
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)NH * Tq * Tk >= PAR_MIN_WORK)
    for (int h = 0; h < NH; h++)
        for (int i = 0; i < Tq; i++) {   /* each thread owns whole rows of bias */
            float *row = bias + ((size_t)h * Tq + i) * Tk;
            const int *br = bkt + (Tq - 1 - i);   /* br[j] = bkt[j - i + Tq - 1] */
            for (int j = 0; j < Tk; j++) row[j] = table[(size_t)br[j] * NH + h];
        }
}

void posbias_backward(float *dtable, const float *dbias, const int *bkt, int NH, int Tq, int Tk) {
#pragma omp parallel for schedule(static) if ((size_t)NH * Tq * Tk >= PAR_MIN_WORK)
    for (int h = 0; h < NH; h++) {   /* each thread owns column h of dtable; rows and keys summed in order */
        for (int i = 0; i < Tq; i++) {
            const float *row = dbias + ((size_t)h * Tq + i) * Tk;
            const int *br = bkt + (Tq - 1 - i);
            for (int j = 0; j < Tk; j++) dtable[(size_t)br[j] * NH + h] += row[j];
        }
    }
}
