/* span.c: T5's span corruption and sequence-to-sequence pairs (span.h).
 *
 * Both loaders walk their examples (a stream's windows, a file's pairs) in DataLoader's order: a
 * DataLoader over the index stream 0, 1, ..., n with windows of one token gives, batch after batch,
 * the example indices in the permutation of (seed, epoch), and its (epoch, pos) is the whole state.
 * Nothing is allocated after init.
 */
#include "data/span.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include "tokenizer/tokenizer.h"
#include "io/fileio.h"

/* T5 rounds half to even (tf.round, np.round): rint in the default rounding mode. */
static int round_even(double x) { return (int)nearbyint(x); }

SpanLengths span_lengths_of(int L, float density, float mean_span) {
    SpanLengths s;
    int noise = round_even((double)L * density);
    if (noise < 1) noise = 1;
    if (noise > L - 1) noise = L - 1;
    int spans = round_even((double)noise / mean_span);
    if (spans < 1) spans = 1;
    if (spans > L - noise) spans = L - noise;   /* each span needs a kept token before it */
    s.raw = L;
    s.spans = spans;
    s.inputs = L - noise + spans + 1;
    s.targets = noise + spans + 1;
    return s;
}

SpanLengths span_lengths(int inputs_length, float density, float mean_span) {
    int L = 2;
    while (L < (1 << 20) && span_lengths_of(L + 1, density, mean_span).inputs <= inputs_length) L++;
    return span_lengths_of(L, density, mean_span);
}

/* seg[k] = the lengths of k non-empty segments of n items, uniformly at random: k - 1 distinct cut
 * points among the n - 1 gaps (a partial Fisher-Yates over them). scratch [n]. */
static void random_segmentation(int *seg, int n, int k, Rng *rng, int *scratch) {
    CHECK(k >= 1 && k <= n);
    for (int i = 0; i < n - 1; i++) scratch[i] = i + 1;   /* gap i + 1: a segment may start at item i + 1 */
    for (int i = 0; i < k - 1; i++) {
        int j = i + (int)rng_below(rng, (uint32_t)(n - 1 - i));
        int t = scratch[i];
        scratch[i] = scratch[j];
        scratch[j] = t;
    }
    /* the chosen starts, sorted (insertion sort: k is small against n) */
    for (int i = 1; i < k - 1; i++)
        for (int j = i; j > 0 && scratch[j - 1] > scratch[j]; j--) {
            int t = scratch[j];
            scratch[j] = scratch[j - 1];
            scratch[j - 1] = t;
        }
    int prev = 0;
    for (int i = 0; i < k - 1; i++) {
        seg[i] = scratch[i] - prev;
        prev = scratch[i];
    }
    seg[k - 1] = n - prev;
}

void span_noise_mask(uint8_t *mask, int L, float density, float mean_span, Rng *rng, int *scratch) {
    CHECK(L >= 2);
    SpanLengths s = span_lengths_of(L, density, mean_span);
    int noise = s.targets - s.spans - 1, kept = L - noise, k = s.spans;
    /* scratch: [L] for random_segmentation, then the noise and the kept segments' lengths */
    int pos = 0, *noise_len = scratch + L, *kept_len = scratch + 2 * L;
    random_segmentation(noise_len, noise, k, rng, scratch);
    random_segmentation(kept_len, kept, k, rng, scratch);
    for (int i = 0; i < k; i++) {
        for (int j = 0; j < kept_len[i]; j++) mask[pos++] = 0;
        for (int j = 0; j < noise_len[i]; j++) mask[pos++] = 1;
    }
    CHECK(pos == L);
}

void span_corrupt(int *inputs, int *n_in, int *labels, int *n_lab, const int *tokens, const uint8_t *mask, int L,
                  int sent0, int n_sent, int eos) {
    int ni = 0, nl = 0, span = 0;
    for (int t = 0; t < L; t++) {
        if (!mask[t]) {
            inputs[ni++] = tokens[t];
            continue;
        }
        if (t == 0 || !mask[t - 1]) {   /* a noise span starts: its sentinel on both sides */
            CHECK(span < n_sent);
            inputs[ni++] = sent0 - span;
            labels[nl++] = sent0 - span;
            span++;
        }
        labels[nl++] = tokens[t];
    }
    inputs[ni++] = eos;
    labels[nl++] = eos;
    *n_in = ni;
    *n_lab = nl;
}

/* ---- the span-corruption loader ------------------------------------------------------------------- */

/* An index stream 0..n for DataLoader (see the file's top). */
static int *index_stream(size_t n) {
    int *v = moelm_malloc(sizeof(int) * (n + 1));
    if (v)
        for (size_t i = 0; i <= n; i++) v[i] = (int)i;
    return v;
}

moelm_status span_loader_init(SpanLoader *sl, const int *ids, size_t n, int B, int inputs_length, float density,
                              float mean_span, int sent0, int n_sent, int eos, uint64_t seed) {
    memset(sl, 0, sizeof *sl);
    if (!(density > 0.0f && density < 1.0f) || !(mean_span >= 1.0f))
        return moelm_fail(MOELM_ERR_CONFIG, "span corruption: noise density %g must be in (0, 1) and the mean span "
                          "length %g at least 1", density, mean_span);
    if (inputs_length < 4 || inputs_length > 1 << 16)
        return moelm_fail(MOELM_ERR_CONFIG, "span corruption: input length %d must be in [4, 65536]", inputs_length);
    SpanLengths len = span_lengths(inputs_length, density, mean_span);
    if (len.spans > n_sent)
        return moelm_fail(MOELM_ERR_CONFIG, "span corruption: %d noise spans a window need as many sentinels, the "
                          "tokenizer has %d", len.spans, n_sent);
    if (n < (size_t)len.raw)
        return moelm_fail(MOELM_ERR_DATA, "span corruption: %zu tokens are fewer than one window of %d", n, len.raw);
    size_t nwin = n / (size_t)len.raw;
    sl->len = len;
    sl->density = density;
    sl->mean_span = mean_span;
    sl->sent0 = sent0;
    sl->n_sent = n_sent;
    sl->eos = eos;
    sl->seed = seed;
    int *idx = index_stream(nwin);
    sl->win = moelm_malloc(sizeof(int) * (size_t)len.raw);
    sl->tgt = moelm_malloc(sizeof(int) * (size_t)B * 2);
    sl->scratch = moelm_malloc(sizeof(int) * 3 * (size_t)len.raw);
    sl->mask = moelm_malloc((size_t)len.raw);
    moelm_status st = idx && sl->win && sl->tgt && sl->scratch && sl->mask ? MOELM_OK : MOELM_ERR_NOMEM;
    if (!st) st = dataloader_init(&sl->dl, idx, nwin + 1, B, 1, 1, 1, seed);
    sl->stream = ids;
    sl->idx = idx;
    if (st) span_loader_free(sl);
    return st;
}

void span_loader_free(SpanLoader *sl) {
    dataloader_free(&sl->dl);
    moelm_free(sl->idx);
    moelm_free(sl->win);
    moelm_free(sl->tgt);
    moelm_free(sl->scratch);
    moelm_free(sl->mask);
    memset(sl, 0, sizeof *sl);
}

/* The noise of window w in epoch `epoch` of a stream seeded with seed. */
static void window_rng(Rng *r, uint64_t seed, uint64_t w, uint64_t epoch) {
    rng_seed(r, seed ^ 0x5BA4C0AA11E5ull);
    uint64_t a = rng_u64(r);
    rng_seed(r, a ^ (w * 0x9E3779B97F4A7C15ull) ^ (epoch * 0xD1B54A32D192ED03ull));
}

size_t span_eval_batches(size_t n, SpanLengths len, int B) {
    size_t nwin = n / (size_t)len.raw;
    return (nwin + (size_t)B - 1) / (size_t)B;
}

int span_eval_batch(const int *ids, size_t n, SpanLengths len, float density, float mean_span, int B, size_t batch,
                    uint64_t seed, int sent0, int n_sent, int eos, int *input_ids, int *labels, int *tokens,
                    uint8_t *mask, int *scratch) {
    size_t nwin = n / (size_t)len.raw;
    CHECK(batch < span_eval_batches(n, len, B));
    int rows = 0;
    for (int b = 0; b < B; b++) {
        size_t w = batch * (size_t)B + (size_t)b;
        if (w >= nwin) break;
        Rng r;
        window_rng(&r, seed, w, 0);
        memcpy(tokens, ids + w * (size_t)len.raw, sizeof(int) * (size_t)len.raw);
        span_noise_mask(mask, len.raw, density, mean_span, &r, scratch);
        int ni, nl;
        span_corrupt(input_ids + (size_t)b * len.inputs, &ni, labels + (size_t)b * len.targets, &nl, tokens, mask,
                     len.raw, sent0, n_sent, eos);
        rows++;
    }
    return rows;
}

void span_loader_next(SpanLoader *sl, int *input_ids, int *labels) {
    int B = sl->dl.B, L = sl->len.raw;
    int *which = sl->tgt, *next = sl->tgt + B;   /* [B] window indices, [B] unused targets */
    uint64_t epoch = sl->dl.epoch;
    size_t pos = sl->dl.pos;
    dataloader_next(&sl->dl, which, next);
    for (int b = 0; b < B; b++) {
        if (pos >= sl->dl.nwin) {   /* the loader moved to the next epoch before this row */
            epoch++;
            pos = 0;
        }
        pos++;
        /* the window's noise from (seed, window, epoch): the same after a resume */
        Rng r;
        window_rng(&r, sl->seed, (uint64_t)which[b], epoch);
        memcpy(sl->win, sl->stream + (size_t)which[b] * L, sizeof(int) * (size_t)L);
        span_noise_mask(sl->mask, L, sl->density, sl->mean_span, &r, sl->scratch);
        int ni, nl;
        span_corrupt(input_ids + (size_t)b * sl->len.inputs, &ni, labels + (size_t)b * sl->len.targets, &nl, sl->win,
                     sl->mask, L, sl->sent0, sl->n_sent, sl->eos);
        CHECK(ni == sl->len.inputs && nl == sl->len.targets);
    }
}

/* ---- sequence-to-sequence pairs ----------------------------------------------------------------------- */

void seq2seq_free(Seq2SeqData *d) {
    moelm_free(d->in_off);
    moelm_free(d->tg_off);
    moelm_free(d->in_ids);
    moelm_free(d->tg_ids);
    dataloader_free(&d->dl);
    moelm_free(d->idx);
    memset(d, 0, sizeof *d);
}

/* Appends the ids of text[0..n) (the tokenizer's line encoding: ending with its EOS when it has one)
 * truncated to cap tokens with the last one EOS, at ids + *len. */
static moelm_status append_side(const Tokenizer *tok, const char *text, size_t n, int cap, int eos, int *ids,
                                int *len) {
    int *v;
    size_t c;
    moelm_status st = tokenizer_encode(tok, text, n, &v, &c);
    if (st) return st;
    if (eos >= 0 && (c == 0 || v[c - 1] != eos)) {   /* a tokenizer without a line end: EOS added */
        int *nv = moelm_realloc(v, sizeof(int) * (c + 1));
        if (!nv) {
            moelm_free(v);
            return MOELM_ERR_NOMEM;
        }
        v = nv;
        v[c++] = eos;
    }
    if ((int)c > cap) {
        c = (size_t)cap;
        if (eos >= 0) v[c - 1] = eos;
    }
    memcpy(ids + *len, v, sizeof(int) * c);
    *len += (int)c;
    moelm_free(v);
    return MOELM_OK;
}

moelm_status seq2seq_load_tsv(Seq2SeqData *d, const char *path, const Tokenizer *tok, int Te, int Td, int pad,
                              uint64_t seed) {
    char *text = NULL;
    size_t n = 0;
    memset(d, 0, sizeof *d);
    moelm_status st = file_read_all(path, &text, &n);
    if (!st) st = seq2seq_load_text(d, text, n, path, tok, Te, Td, pad, seed);
    moelm_free(text);
    return st;
}

moelm_status seq2seq_load_text(Seq2SeqData *d, const char *text, size_t n, const char *path, const Tokenizer *tok,
                               int Te, int Td, int pad, uint64_t seed) {
    memset(d, 0, sizeof *d);
    moelm_status st = MOELM_OK;
    int lines = 0;
    for (size_t i = 0; i < n; i++) lines += text[i] == '\n';
    lines++;
    d->in_off = moelm_calloc((size_t)lines + 1, sizeof(int));
    d->tg_off = moelm_calloc((size_t)lines + 1, sizeof(int));
    d->in_ids = moelm_malloc(sizeof(int) * (size_t)lines * (size_t)Te);
    d->tg_ids = moelm_malloc(sizeof(int) * (size_t)lines * (size_t)Td);
    if (!d->in_off || !d->tg_off || !d->in_ids || !d->tg_ids) st = MOELM_ERR_NOMEM;
    int eos = tokenizer_eos_id(tok), lineno = 0, in_len = 0, tg_len = 0;
    for (size_t i = 0; i < n && !st;) {
        const char *nl = memchr(text + i, '\n', n - i);
        size_t e = nl ? (size_t)(nl - text) : n;
        lineno++;
        size_t len = e - i;
        if (len && text[e - 1] == '\r') len--;
        if (len) {
            const char *tab = memchr(text + i, '\t', len);
            if (!tab) {
                st = moelm_fail(MOELM_ERR_DATA, "%s: line %d has no tab (expected input<TAB>target)", path, lineno);
                break;
            }
            size_t a = (size_t)(tab - (text + i));
            st = append_side(tok, text + i, a, Te, eos, d->in_ids, &in_len);
            if (!st) st = append_side(tok, tab + 1, len - a - 1, Td, eos, d->tg_ids, &tg_len);
            if (!st) {
                d->n++;
                d->in_off[d->n] = in_len;
                d->tg_off[d->n] = tg_len;
            }
        }
        i = e + 1;
    }
    if (!st && d->n == 0) st = moelm_fail(MOELM_ERR_DATA, "%s: no input<TAB>target pairs", path);
    d->Te = Te;
    d->Td = Td;
    d->pad = pad;
    if (!st) {
        d->idx = index_stream((size_t)d->n);
        st = d->idx ? dataloader_init(&d->dl, d->idx, (size_t)d->n + 1, 1, 1, 1, 1, seed) : MOELM_ERR_NOMEM;
    }
    if (st) seq2seq_free(d);
    return st;
}

/* Row b of a batch: pair k, padded. */
static void pair_row(const Seq2SeqData *d, int k, int b, int *input_ids, int *attention_mask, int *labels) {
    int ni = d->in_off[k + 1] - d->in_off[k], nt = d->tg_off[k + 1] - d->tg_off[k];
    for (int t = 0; t < d->Te; t++) {
        input_ids[b * d->Te + t] = t < ni ? d->in_ids[d->in_off[k] + t] : d->pad;
        attention_mask[b * d->Te + t] = t < ni;
    }
    for (int t = 0; t < d->Td; t++) labels[b * d->Td + t] = t < nt ? d->tg_ids[d->tg_off[k] + t] : -100;
}

size_t seq2seq_eval_batches(const Seq2SeqData *d, int B) { return ((size_t)d->n + (size_t)B - 1) / (size_t)B; }

int seq2seq_eval_batch(const Seq2SeqData *d, int B, size_t batch, int *input_ids, int *attention_mask, int *labels) {
    CHECK(batch < seq2seq_eval_batches(d, B));
    int rows = 0;
    for (int b = 0; b < B && (size_t)batch * B + b < (size_t)d->n; b++, rows++)
        pair_row(d, (int)(batch * (size_t)B) + b, b, input_ids, attention_mask, labels);
    return rows;
}

void seq2seq_next(Seq2SeqData *d, int B, int *input_ids, int *attention_mask, int *labels) {
    for (int b = 0; b < B; b++) {
        int k, unused;
        dataloader_next(&d->dl, &k, &unused);
        pair_row(d, k, b, input_ids, attention_mask, labels);
    }
}

