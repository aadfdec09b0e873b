/* sentinels.c: T5's sentinel tokens <extra_id_k> (tokenizer.h), as Hugging Face's T5Tokenizer adds
 * them after a SentencePiece vocabulary: ids V .. V + n - 1, <extra_id_k> at V + n - 1 - k.
 *
 * Encoding splits the text at "<extra_id_k>" (k < n); each piece of text between is encoded as the
 * plain tokenizer does, less the end-of-line id it gets when it does not end a line; a text that ends
 * with a sentinel still gets its line's end. Decoding splits the ids at sentinels and joins the plain
 * decodings with the sentinels' text, set off by spaces. Not here: span corruption (src/data/span.c).
 */
#include "tokenizer/tok_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SENT_PREFIX "<extra_id_"

moelm_status tokenizer_add_sentinels(Tokenizer *t, int n) {
    if (t->n_sent) return moelm_fail(MOELM_ERR_CONFIG, "tokenizer: it already has %d sentinels", t->n_sent);
    if (n < 1 || n > 10000) return moelm_fail(MOELM_ERR_CONFIG, "tokenizer: %d sentinels is outside [1, 10000]", n);
    for (int i = 0; i < t->V; i++)
        if (!strncmp(t->piece[i], SENT_PREFIX, strlen(SENT_PREFIX)))
            return moelm_fail(MOELM_ERR_FORMAT, "tokenizer: the vocabulary already has the piece \"%.40s\" (id %d): "
                              "T5's sentinels after it would be ambiguous", t->piece[i], i);
    char **s = moelm_calloc((size_t)n, sizeof *s);
    if (!s) return MOELM_ERR_NOMEM;
    for (int i = 0; i < n; i++) {
        s[i] = moelm_malloc(32);
        if (!s[i]) {
            for (int j = 0; j < i; j++) moelm_free(s[j]);
            moelm_free(s);
            return MOELM_ERR_NOMEM;
        }
        snprintf(s[i], 32, SENT_PREFIX "%d>", n - 1 - i);   /* id V + i is <extra_id_{n-1-i}> */
    }
    t->sent = s;
    t->n_sent = n;
    uint64_t h = t->hash ^ 0x5E171E15ull;
    t->hash = hash_fnv1a64(&n, sizeof n) ^ (h * 1099511628211ull);
    return MOELM_OK;
}

int tokenizer_sentinel_count(const Tokenizer *t) { return t->n_sent; }

int tokenizer_sentinel_id(const Tokenizer *t, int k) {
    return k >= 0 && k < t->n_sent ? t->V + t->n_sent - 1 - k : -1;
}

/* The k of "<extra_id_k>" spelled exactly (decimal, no sign or leading zero) at s[0..len), or -1. */
static int sentinel_k(const char *s, size_t len) {
    size_t pl = strlen(SENT_PREFIX);
    if (len < pl + 2 || memcmp(s, SENT_PREFIX, pl) || s[len - 1] != '>') return -1;
    if (s[pl] == '0' && len != pl + 2) return -1;
    long k = 0;
    for (size_t i = pl; i < len - 1; i++) {
        if (s[i] < '0' || s[i] > '9' || k > 100000) return -1;
        k = k * 10 + (s[i] - '0');
    }
    return (int)k;
}

int tok_sentinel_lookup(const Tokenizer *t, const char *s, size_t len) {
    int k = sentinel_k(s, len);
    return k >= 0 ? tokenizer_sentinel_id(t, k) : -1;
}

/* The next sentinel in text[from, n): its start and length (and id), or start = n when none. */
static size_t next_sentinel(const Tokenizer *t, const char *text, size_t n, size_t from, size_t *len, int *id) {
    for (size_t i = from; i + strlen(SENT_PREFIX) < n; i++) {
        if (text[i] != '<' || memcmp(text + i, SENT_PREFIX, strlen(SENT_PREFIX))) continue;
        const char *gt = memchr(text + i, '>', n - i);
        if (!gt || gt - (text + i) > 24) continue;
        int sid = tok_sentinel_lookup(t, text + i, (size_t)(gt - (text + i)) + 1);
        if (sid < 0) continue;
        *len = (size_t)(gt - (text + i)) + 1;
        *id = sid;
        return i;
    }
    return n;
}

static moelm_status push_ids(int **v, size_t *n, size_t *cap, const int *src, size_t k) {
    if (*n + k > *cap) {
        size_t nc = *cap ? *cap : 256;
        while (nc < *n + k) nc *= 2;
        int *nv = moelm_realloc(*v, nc * sizeof *nv);
        if (!nv) return MOELM_ERR_NOMEM;
        *v = nv;
        *cap = nc;
    }
    memcpy(*v + *n, src, k * sizeof *src);
    *n += k;
    return MOELM_OK;
}

moelm_status tok_encode_sentinels(const Tokenizer *t, const char *text, size_t n, int **ids, size_t *count) {
    int *v = NULL;
    size_t nv = 0, cap = 0, pos = 0;
    moelm_status st = MOELM_OK;
    int ended_with_sentinel = 0;
    while (pos < n && !st) {
        size_t slen = 0;
        int sid = -1;
        size_t at = next_sentinel(t, text, n, pos, &slen, &sid);
        int *pv;
        size_t pc;
        st = tok_encode_plain(t, text + pos, at - pos, &pv, &pc);
        if (st) break;
        /* a piece of text before a sentinel does not end its line: drop the end-of-line id it got */
        if (at < n && pc && t->eos_id >= 0 && pv[pc - 1] == t->eos_id && (at == pos || text[at - 1] != '\n')) pc--;
        st = push_ids(&v, &nv, &cap, pv, pc);
        moelm_free(pv);
        if (!st && at < n) st = push_ids(&v, &nv, &cap, &sid, 1);
        ended_with_sentinel = at < n && at + slen == n;
        pos = at < n ? at + slen : n;
    }
    if (!st && ended_with_sentinel && t->eos_id >= 0 && t->kind != TOK_CHAR) st = push_ids(&v, &nv, &cap, &t->eos_id, 1);
    if (!st && !v && !(v = moelm_malloc(sizeof(int)))) st = MOELM_ERR_NOMEM;   /* an allocation even when empty */
    if (st) {
        moelm_free(v);
        return st == MOELM_ERR_NOMEM ? moelm_fail(st, "tokenizer: out of memory encoding %zu bytes", n) : st;
    }
    *ids = v;
    *count = nv;
    return MOELM_OK;
}

moelm_status tok_decode_sentinels(const Tokenizer *t, const int *ids, size_t count, char **text) {
    size_t cap = 64, len = 0, b = 0;
    char *o = moelm_malloc(cap);
    if (!o) return MOELM_ERR_NOMEM;
    o[0] = 0;
    for (size_t i = 0; i <= count; i++) {
        int sent = i < count && ids[i] >= t->V && ids[i] < t->V + t->n_sent;
        if (i < count && !sent) continue;
        char *part = NULL;
        moelm_status st = tok_decode_plain(t, ids + b, i - b, &part);
        if (st) {
            moelm_free(o);
            return st;
        }
        const char *stext = sent ? t->sent[ids[i] - t->V] : "";
        size_t need = len + strlen(part) + strlen(stext) + 3;
        if (need > cap) {
            while (need > cap) cap *= 2;
            char *no = moelm_realloc(o, cap);
            if (!no) {
                moelm_free(part);
                moelm_free(o);
                return MOELM_ERR_NOMEM;
            }
            o = no;
        }
        /* "text <extra_id_0> text": a space between a word and a sentinel, none at a line's start */
        if (part[0] && len && o[len - 1] != '\n' && o[len - 1] != ' ' && part[0] != ' ' && part[0] != '\n') o[len++] = ' ';
        memcpy(o + len, part, strlen(part));
        len += strlen(part);
        if (sent) {
            if (len && o[len - 1] != '\n' && o[len - 1] != ' ') o[len++] = ' ';
            memcpy(o + len, stext, strlen(stext));
            len += strlen(stext);
        }
        o[len] = 0;
        moelm_free(part);
        b = i + 1;
    }
    *text = o;
    return MOELM_OK;
}
