/* spm_core.c: SentencePiece normalisation, encoding and decoding, as sentencepiece 0.1.9x does them.
 *
 *   normalise (Normalizer::Normalize): user-defined symbols pass through untouched; otherwise the
 *     longest rule of the precompiled charsmap (a darts-clone double array over UTF-8 bytes plus a
 *     blob of NUL-terminated replacements); malformed UTF-8 becomes U+FFFD one byte at a time;
 *     leading, trailing and repeated spaces are dropped (remove_extra_whitespaces), a dummy U+2581
 *     is prepended (add_dummy_prefix), spaces become U+2581 (escape_whitespaces).
 *   unigram (unigram::Model::EncodeOptimized): Viterbi over byte positions, best path ending at
 *     each position; a candidate is summed and compared in double against the stored float best
 *     (sentencepiece's score has type double), stored as float; exact ties keep the earliest
 *     start (strict >); unknown characters get min_score - 10 (in float); user-defined pieces
 *     score len_bytes * max_score - 0.1.
 *   bpe (bpe::Model::Encode): start from characters (user-defined symbols frozen), repeatedly merge
 *     the adjacent pair whose concatenation is a piece with the highest score, leftmost first;
 *     unused pieces are re-split into the pair they were merged from.
 *   then (SentencePieceProcessor::PopulateSentencePieceText): runs of unknown pieces merge into one
 *     <unk>, or with byte_fallback each unknown piece becomes its bytes <0xNN>.
 *
 * Not here: reading/writing .model files (spm_model.c), training (spm_train*.c).
 */
#include "tokenizer/tok_internal.h"

#include <float.h>
#include <stdlib.h>
#include <string.h>

#define SPACE_SYM "\xE2\x96\x81"   /* U+2581 */

/* ---- piece trie ---------------------------------------------------------------------------------- */

void trie_free(PieceTrie *tr) {
    moelm_free(tr->first); moelm_free(tr->label); moelm_free(tr->child); moelm_free(tr->value);
    memset(tr, 0, sizeof *tr);
}

/* pieces to sort: qsort has no context argument, so each record carries its string */
typedef struct { const char *s; uint32_t len; int id; } PieceRef;
static int piece_cmp(const void *a, const void *b) {
    const PieceRef *x = a, *y = b;
    size_t m = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->s, y->s, m);
    if (c) return c;
    return x->len < y->len ? -1 : (x->len > y->len);
}

/* Builds a trie over the pieces whose type bit is set in type_mask (bit k = type k). */
moelm_status trie_build(PieceTrie *tr, const Tokenizer *t, unsigned type_mask) {
    trie_free(tr);
    PieceRef *ids = moelm_malloc(sizeof(PieceRef) * (size_t)(t->V + 1));
    if (!ids) return MOELM_ERR_NOMEM;
    int n = 0;
    size_t total = 1, maxlen = 0;
    for (int i = 0; i < t->V; i++) if (type_mask >> t->type[i] & 1) {
        ids[n++] = (PieceRef){ t->piece[i], t->plen[i], i };
        total += t->plen[i];
        if (t->plen[i] > maxlen) maxlen = t->plen[i];
    }
    qsort(ids, (size_t)n, sizeof *ids, piece_cmp);
    int32_t *fc = moelm_malloc(total * 4), *lc = moelm_malloc(total * 4), *ns = moelm_malloc(total * 4);
    int32_t *val = moelm_malloc(total * 4), *path = moelm_malloc((maxlen + 1) * 4);
    uint8_t *lab = moelm_malloc(total);
    moelm_status st = MOELM_OK;
    if (!fc || !lc || !ns || !val || !path || !lab) { st = MOELM_ERR_NOMEM; goto out; }
    int nodes = 1;
    fc[0] = lc[0] = ns[0] = -1; val[0] = -1; lab[0] = 0; path[0] = 0;
    int prev = -1;
    for (int k = 0; k < n; k++) {
        int id = ids[k].id;
        const uint8_t *s = (const uint8_t *)t->piece[id];
        size_t len = t->plen[id], lcp = 0;
        if (prev >= 0) {
            size_t pl = t->plen[prev];
            while (lcp < len && lcp < pl && (uint8_t)t->piece[prev][lcp] == s[lcp]) lcp++;
        }
        for (size_t d = lcp; d < len; d++) {
            int par = path[d], c = nodes++;
            fc[c] = lc[c] = ns[c] = -1; val[c] = -1; lab[c] = s[d];
            if (lc[par] < 0) fc[par] = c; else ns[lc[par]] = c;
            lc[par] = c;
            path[d + 1] = c;
        }
        val[path[len]] = id;
        prev = id;
    }
    tr->nodes = nodes;
    tr->first = moelm_malloc(sizeof(int32_t) * (size_t)(nodes + 1));
    tr->label = moelm_malloc((size_t)nodes);
    tr->child = moelm_malloc(sizeof(int32_t) * (size_t)nodes);
    tr->value = moelm_malloc(sizeof(int32_t) * (size_t)nodes);
    if (!tr->first || !tr->label || !tr->child || !tr->value) { st = MOELM_ERR_NOMEM; goto out; }
    int e = 0;
    for (int v = 0; v < nodes; v++) {
        tr->first[v] = e;
        tr->value[v] = val[v];
        for (int c = fc[v]; c >= 0; c = ns[c]) { tr->label[e] = lab[c]; tr->child[e] = c; e++; }
    }
    tr->first[nodes] = e;
    for (int b = 0; b < 256; b++) tr->root[b] = -1;
    for (int k = tr->first[0]; k < tr->first[1]; k++) tr->root[tr->label[k]] = tr->child[k];
out:
    moelm_free(ids); moelm_free(fc); moelm_free(lc); moelm_free(ns); moelm_free(val); moelm_free(path); moelm_free(lab);
    if (st) trie_free(tr);
    return st;
}

int trie_next(const PieceTrie *tr, int node, uint8_t c) {
    if (node == 0) return tr->root[c];
    int lo = tr->first[node], hi = tr->first[node + 1];
    while (lo < hi) {
        int mid = (lo + hi) >> 1;
        if (tr->label[mid] < c) lo = mid + 1; else hi = mid;
    }
    return (lo < tr->first[node + 1] && tr->label[lo] == c) ? tr->child[lo] : -1;
}

moelm_status spm_prepare(Tokenizer *t, const char *path) {
    t->min_score = FLT_MAX;
    t->max_score = FLT_MIN;   /* sentencepiece starts from FLT_MIN (the smallest positive float) */
    int normal = 0;
    for (int i = 0; i < 256; i++) t->byte_id[i] = -1;
    for (int i = 0; i < t->V; i++) {
        if (t->type[i] == SPM_NORMAL) {
            normal++;
            if (t->score[i] < t->min_score) t->min_score = t->score[i];
            if (t->score[i] > t->max_score) t->max_score = t->score[i];
        }
        if (t->type[i] == SPM_BYTE && t->plen[i] == 6) {
            int b = (int)strtol(t->piece[i] + 3, NULL, 16);
            if (b >= 0 && b < 256) t->byte_id[b] = i;
        }
    }
    moelm_status st = trie_build(&t->trie, t, 1u << SPM_NORMAL | 1u << SPM_USER_DEFINED | 1u << SPM_UNUSED);
    if (st) return st;
    if (t->trie.nodes <= 1)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: no normal or user-defined pieces (no entry is found in the trie)", path);
    trie_free(&t->user_trie);
    int users = 0;
    for (int i = 0; i < t->V; i++) users += t->type[i] == SPM_USER_DEFINED;
    if (users && (st = trie_build(&t->user_trie, t, 1u << SPM_USER_DEFINED))) return st;
    (void)normal;
    return MOELM_OK;
}

/* Longest user-defined symbol at the start of s, 0 if none. */
static size_t user_prefix(const Tokenizer *t, const char *s, size_t n) {
    if (t->user_trie.nodes <= 1) return 0;
    int node = 0;
    size_t best = 0;
    for (size_t i = 0; i < n; i++) {
        node = trie_next(&t->user_trie, node, (uint8_t)s[i]);
        if (node < 0) break;
        if (t->user_trie.value[node] >= 0) best = i + 1;
    }
    return best;
}

/* ---- normaliser ------------------------------------------------------------------------------------ */

/* darts-clone unit accessors */
static inline int du_has_leaf(uint32_t u) { return (u >> 8) & 1; }
static inline uint32_t du_value(uint32_t u) { return u & 0x7FFFFFFFu; }
static inline uint32_t du_label(uint32_t u) { return u & (0x80000000u | 0xFFu); }
static inline uint32_t du_offset(uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); }

/* The longest charsmap rule matching a prefix of s: returns its byte length (0: none), *repl the
 * replacement. Mirrors Darts::DoubleArray::commonPrefixSearch with at most 32 results, as
 * sentencepiece calls it; units outside the array end the search. */
static size_t charsmap_longest(const SpmNormSpec *ns, const char *s, size_t n, const char **repl) {
    const uint32_t *a = ns->trie;
    size_t units = ns->trie_units;
    size_t longest = 0, results = 0;
    uint32_t value = 0;
    uint32_t id = du_offset(a[0]);
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        id ^= c;
        if (id >= units) break;
        uint32_t u = a[id];
        if (du_label(u) != c) break;
        id ^= du_offset(u);
        if (id >= units) break;
        if (du_has_leaf(u)) {
            if (results < 32 && (longest == 0 || i + 1 > longest)) { longest = i + 1; value = du_value(a[id]); }
            results++;
        }
    }
    if (longest == 0) return 0;
    if (value >= ns->normalized_len) { *repl = ""; return longest; }   /* corrupt rule: deletes */
    *repl = ns->normalized + value;
    return longest;
}

typedef struct { char *b; size_t n, cap; int oom; } Buf;
static void buf_put(Buf *o, const char *d, size_t n) {
    if (o->oom) return;
    if (o->n + n + 1 > o->cap) {
        size_t nc = o->cap ? o->cap * 2 : 256;
        while (nc < o->n + n + 1) nc *= 2;
        char *nb = moelm_realloc(o->b, nc);
        if (!nb) { o->oom = 1; return; }
        o->b = nb; o->cap = nc;
    }
    memcpy(o->b + o->n, d, n);
    o->n += n;
}

/* One step of Normalizer::NormalizePrefix: *consumed input bytes become out[0..*outn). */
static void normalize_prefix(const Tokenizer *t, const SpmNormSpec *ns, const char *s, size_t n,
                             const char **out, size_t *outn, size_t *consumed) {
    size_t u = t ? user_prefix(t, s, n) : 0;
    if (u) { *out = s; *outn = u; *consumed = u; return; }
    if (ns->trie) {
        const char *repl;
        size_t l = charsmap_longest(ns, s, n, &repl);
        if (l) { *out = repl; *outn = strlen(repl); *consumed = l; return; }
    }
    size_t ml;
    if (!tok_utf8_valid_prefix(s, n, &ml)) { *out = "\xEF\xBF\xBD"; *outn = 3; *consumed = 1; return; }
    *out = s; *outn = ml; *consumed = ml;
}

moelm_status spm_normalize(const Tokenizer *t, const SpmNormSpec *ns, const char *in, size_t n, char **out, size_t *outn) {
    Buf o = {0};
    *out = NULL; *outn = 0;
    const char *p; size_t pn, used;
    if (ns->remove_extra_whitespaces) {
        while (n) {
            normalize_prefix(t, ns, in, n, &p, &pn, &used);
            if (!(pn == 1 && p[0] == ' ')) break;
            in += used; n -= used;
        }
    }
    int suffix = t ? t->treat_ws_as_suffix : 0;
    const char *ws = ns->escape_whitespaces ? SPACE_SYM : " ";
    size_t wsn = ns->escape_whitespaces ? 3 : 1;
    if (n) {
        if (!suffix && ns->add_dummy_prefix) buf_put(&o, ws, wsn);
        int prev_space = ns->remove_extra_whitespaces;
        while (n) {
            normalize_prefix(t, ns, in, n, &p, &pn, &used);
            while (prev_space && pn && p[0] == ' ') { p++; pn--; }
            if (pn) {
                for (size_t k = 0; k < pn; k++) {
                    if (ns->escape_whitespaces && p[k] == ' ') buf_put(&o, SPACE_SYM, 3);
                    else buf_put(&o, p + k, 1);
                }
                prev_space = p[pn - 1] == ' ';
            }
            in += used; n -= used;
            if (!ns->remove_extra_whitespaces) prev_space = 0;
        }
        if (ns->remove_extra_whitespaces)
            while (o.n >= wsn && memcmp(o.b + o.n - wsn, ws, wsn) == 0) o.n -= wsn;
        if (suffix && ns->add_dummy_prefix) buf_put(&o, ws, wsn);
    }
    buf_put(&o, "", 0);
    if (o.oom) { moelm_free(o.b); return moelm_fail(MOELM_ERR_NOMEM, "tokenizer: out of memory normalising"); }
    o.b[o.n] = 0;
    *out = o.b;
    *outn = o.n;
    return MOELM_OK;
}

/* ---- model encoders -------------------------------------------------------------------------------- */

typedef struct { int32_t start, len, id; } Seg;   /* a piece of the normalised string */
typedef struct { Seg *v; size_t n, cap; int oom; } SegVec;
static void seg_push(SegVec *a, int32_t start, int32_t len, int32_t id) {
    if (a->oom) return;
    if (a->n == a->cap) {
        size_t nc = a->cap ? a->cap * 2 : 64;
        Seg *nv = moelm_realloc(a->v, nc * sizeof *nv);
        if (!nv) { a->oom = 1; return; }
        a->v = nv; a->cap = nc;
    }
    a->v[a->n++] = (Seg){ start, len, id };
}

static void unigram_encode(const Tokenizer *t, const char *s, size_t size, SegVec *out) {
    typedef struct { int id; float score; int starts_at; } Best;
    Best *best = moelm_malloc(sizeof(Best) * (size + 1));
    if (!best) { out->oom = 1; return; }
    for (size_t i = 0; i <= size; i++) best[i] = (Best){ -1, 0.0f, -1 };
    const float unk_score = t->min_score - 10.0f;
    const PieceTrie *tr = &t->trie;
    size_t starts_at = 0;
    while (starts_at < size) {
        const float till_here = best[starts_at].score;
        int has_single = 0;
        size_t mblen = (size_t)tok_onechar_len((uint8_t)s[starts_at]);
        if (mblen > size - starts_at) mblen = size - starts_at;
        int node = 0;
        for (size_t key = starts_at; key < size;) {
            node = trie_next(tr, node, (uint8_t)s[key]);
            key++;
            if (node < 0) break;
            int id = tr->value[node];
            if (id < 0 || t->type[id] == SPM_UNUSED) continue;
            Best *tg = &best[key];
            size_t length = key - starts_at;
            /* sentencepiece's score is a double for every piece: the conditional that gives
             * user-defined pieces (length * max_score - 0.1) has type double, so a normal piece's
             * float score is promoted too. The candidate is summed and compared in double against
             * the stored float, then stored as float; equal float sums that differ in double (a
             * path's pieces in another order) are decided by that, and only exact ties keep the
             * earliest start. */
            double sc = t->type[id] == SPM_USER_DEFINED ? (double)((float)length * t->max_score) - 0.1
                                                        : (double)t->score[id];
            double cand = sc + (double)till_here;
            if (tg->starts_at == -1 || cand > (double)tg->score) {
                tg->score = (float)cand; tg->starts_at = (int)starts_at; tg->id = id;
            }
            if (length == mblen) has_single = 1;
        }
        if (!has_single) {
            Best *tg = &best[starts_at + mblen];
            float cand = unk_score + till_here;
            if (tg->starts_at == -1 || cand > tg->score) { tg->score = cand; tg->starts_at = (int)starts_at; tg->id = t->unk_id; }
        }
        starts_at += mblen;
    }
    /* backtrack, then reverse */
    size_t first = out->n;
    for (size_t e = size; e > 0;) {
        const Best *b = &best[e];
        seg_push(out, b->starts_at, (int32_t)(e - (size_t)b->starts_at), b->id);
        e = (size_t)b->starts_at;
    }
    for (size_t i = first, j = out->n ? out->n - 1 : 0; !out->oom && i < j; i++, j--) {
        Seg tmp = out->v[i]; out->v[i] = out->v[j]; out->v[j] = tmp;
    }
    moelm_free(best);
}

/* BPE: symbols form a doubly linked list over the normalised string; a max-heap holds candidate
 * pairs ordered by (score desc, left asc). Stale pairs are detected by their byte size. */
typedef struct { int prev, next; int32_t start, len; int freeze; } Sym;
typedef struct { float score; int left, right; int32_t size; } Pair;

static int pair_before(const Pair *a, const Pair *b) {   /* a pops before b */
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}
typedef struct { Pair *v; size_t n, cap; int oom; } Heap;
static void heap_push(Heap *h, Pair p) {
    if (h->oom) return;
    if (h->n == h->cap) {
        size_t nc = h->cap ? h->cap * 2 : 64;
        Pair *nv = moelm_realloc(h->v, nc * sizeof *nv);
        if (!nv) { h->oom = 1; return; }
        h->v = nv; h->cap = nc;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t par = (i - 1) / 2;
        if (!pair_before(&p, &h->v[par])) break;
        h->v[i] = h->v[par];
        i = par;
    }
    h->v[i] = p;
}
static Pair heap_pop(Heap *h) {
    Pair top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const Pair *best = &last;
        if (l < h->n && pair_before(&h->v[l], best)) { m = l; best = &h->v[l]; }
        if (r < h->n && pair_before(&h->v[r], best)) { m = r; }
        if (m == i) break;
        h->v[i] = h->v[m];
        i = m;
    }
    if (h->n) h->v[i] = last;
    return top;
}

/* id of a piece in sentencepiece's pieces_ (normal, user-defined, unused), -1 if none */
static int pieces_lookup(const Tokenizer *t, const char *s, size_t n) {
    int id = tok_lookup(t, s, n);
    if (id < 0) return -1;
    int ty = t->type[id];
    return (ty == SPM_NORMAL || ty == SPM_USER_DEFINED || ty == SPM_UNUSED) ? id : -1;
}

/* rev_merge: for unused pieces met as a pair, the split they were made from (the last one recorded
 * for that string wins, as in sentencepiece's map assignment). */
typedef struct { int32_t start, len_l, len_r; } RevMerge;
typedef struct { RevMerge *v; size_t n, cap; int oom; } RevVec;

static void bpe_add_pair(const Tokenizer *t, const char *s, const Sym *sy, Heap *h, RevVec *rv, int left, int right) {
    if (left < 0 || right < 0 || sy[left].freeze || sy[right].freeze) return;
    int id = pieces_lookup(t, s + sy[left].start, (size_t)(sy[left].len + sy[right].len));
    if (id < 0) return;
    heap_push(h, (Pair){ t->score[id], left, right, sy[left].len + sy[right].len });
    if (t->type[id] == SPM_UNUSED && !rv->oom) {
        if (rv->n == rv->cap) {
            size_t nc = rv->cap ? rv->cap * 2 : 16;
            RevMerge *nv = moelm_realloc(rv->v, nc * sizeof *nv);
            if (!nv) { rv->oom = 1; return; }
            rv->v = nv; rv->cap = nc;
        }
        rv->v[rv->n++] = (RevMerge){ sy[left].start, sy[left].len, sy[right].len };
    }
}

static void bpe_resegment(const Tokenizer *t, const char *s, int32_t start, int32_t len, const RevVec *rv, SegVec *out, int depth) {
    int id = tok_lookup(t, s + start, (size_t)len);
    if (id < 0) { seg_push(out, start, len, t->unk_id); return; }
    if (t->type[id] != SPM_UNUSED || depth > 256) { seg_push(out, start, len, id); return; }
    for (size_t k = rv->n; k-- > 0;) {
        const RevMerge *r = &rv->v[k];
        if (r->len_l + r->len_r == len && !memcmp(s + r->start, s + start, (size_t)len)) {
            bpe_resegment(t, s, start, r->len_l, rv, out, depth + 1);
            bpe_resegment(t, s, start + r->len_l, r->len_r, rv, out, depth + 1);
            return;
        }
    }
    seg_push(out, start, len, id);
}

static void bpe_encode(const Tokenizer *t, const char *s, size_t size, SegVec *out) {
    Sym *sy = moelm_malloc(sizeof(Sym) * (size + 1));
    if (!sy) { out->oom = 1; return; }
    int ns = 0;
    for (size_t i = 0; i < size;) {
        size_t u = user_prefix(t, s + i, size - i);
        size_t ml = u ? u : (size_t)tok_onechar_len((uint8_t)s[i]);
        if (ml > size - i) ml = size - i;
        sy[ns] = (Sym){ ns - 1, -1, (int32_t)i, (int32_t)ml, u != 0 };
        if (ns > 0) sy[ns - 1].next = ns;
        ns++;
        i += ml;
    }
    Heap h = {0};
    RevVec rv = {0};
    for (int i = 1; i < ns; i++) bpe_add_pair(t, s, sy, &h, &rv, i - 1, i);
    while (h.n && !h.oom) {
        Pair top = heap_pop(&h);
        Sym *L = &sy[top.left], *R = &sy[top.right];
        if (L->len == 0 || R->len == 0 || L->len + R->len != top.size) continue;
        L->len += R->len;
        L->next = R->next;
        if (R->next >= 0) sy[R->next].prev = top.left;
        R->len = 0;
        bpe_add_pair(t, s, sy, &h, &rv, L->prev, top.left);
        bpe_add_pair(t, s, sy, &h, &rv, top.left, L->next);
    }
    if (h.oom || rv.oom) out->oom = 1;
    for (int i = ns > 0 ? 0 : -1; i >= 0; i = sy[i].next)
        bpe_resegment(t, s, sy[i].start, sy[i].len, &rv, out, 0);
    moelm_free(rv.v);
    moelm_free(h.v);
    moelm_free(sy);
}

moelm_status tokenizer_encode_line(const Tokenizer *t, const char *line, size_t n, int **ids, size_t *count) {
    *ids = NULL; *count = 0;
    if (t->kind != TOK_UNIGRAM && t->kind != TOK_BPE)
        return moelm_fail(MOELM_ERR_CONFIG, "tokenizer: line encoding needs a SentencePiece model");
    char *norm; size_t nn;
    moelm_status st = spm_normalize(t, &t->norm, line, n, &norm, &nn);
    if (st) return st;
    SegVec seg = {0};
    if (nn) {
        if (t->kind == TOK_UNIGRAM) unigram_encode(t, norm, nn, &seg);
        else bpe_encode(t, norm, nn, &seg);
    }
    /* PopulateSentencePieceText: byte fallback or merging of unknown runs */
    size_t cap = 16;
    for (size_t i = 0; i < seg.n; i++) cap += t->byte_fallback && seg.v[i].id == t->unk_id ? (size_t)seg.v[i].len : 1;
    int *o = seg.oom ? NULL : moelm_malloc(cap * sizeof *o);
    if (!o) { moelm_free(seg.v); moelm_free(norm); return moelm_fail(MOELM_ERR_NOMEM, "tokenizer: out of memory encoding"); }
    size_t m = 0;
    int prev_unk = 0;
    for (size_t i = 0; i < seg.n; i++) {
        int id = seg.v[i].id, is_unk = t->type[id] == SPM_UNKNOWN;
        if (is_unk && t->byte_fallback) {
            for (int32_t k = 0; k < seg.v[i].len; k++) o[m++] = t->byte_id[(uint8_t)norm[seg.v[i].start + k]];
        } else if (!(is_unk && prev_unk)) {
            o[m++] = id;
        }
        prev_unk = is_unk;
    }
    moelm_free(seg.v);
    moelm_free(norm);
    *ids = o;
    *count = m;
    return MOELM_OK;
}

/* ---- decoding ---------------------------------------------------------------------------------- */

moelm_status tokenizer_decode_line(const Tokenizer *t, const int *ids, size_t count, char **text) {
    *text = NULL;
    Buf o = {0};
    buf_put(&o, "", 0);
    /* the leading U+2581 of the text is dropped when the normaliser adds a dummy prefix or removes
     * extra whitespace; with remove_extra_whitespaces, every leading one while the text is empty */
    int strip = t->norm.add_dummy_prefix || t->norm.remove_extra_whitespaces;
    int is_bos_ws = 1, bos_ws_seen = 0;
    for (size_t i = 0; i < count;) {
        int id = ids[i];
        if (id < 0 || id >= t->V) { moelm_free(o.b); return moelm_fail(MOELM_ERR_DATA, "tokenizer: id %d out of range [0, %d)", id, t->V); }
        int ty = t->type[id];
        if (ty == SPM_BYTE) {
            /* a run of byte pieces is reassembled, then read as UTF-8 (malformed bytes -> U+FFFD) */
            size_t j = i;
            char bytes[256];
            Buf run = {0};
            while (j < count && ids[j] >= 0 && ids[j] < t->V && t->type[ids[j]] == SPM_BYTE) {
                bytes[0] = (char)strtol(t->piece[ids[j]] + 3, NULL, 16);
                buf_put(&run, bytes, 1);
                j++;
            }
            for (size_t k = 0; k < run.n;) {
                size_t ml;
                if (tok_utf8_valid_prefix(run.b + k, run.n - k, &ml)) buf_put(&o, run.b + k, ml);
                else buf_put(&o, "\xEF\xBF\xBD", 3);
                k += ml;
            }
            moelm_free(run.b);
            i = j;
            continue;
        }
        i++;
        if (bos_ws_seen || o.n) is_bos_ws = 0;
        bos_ws_seen = 0;
        if (ty == SPM_CONTROL) continue;
        if (ty == SPM_UNKNOWN) { buf_put(&o, t->unk_surface, strlen(t->unk_surface)); continue; }
        const char *p = t->piece[id];
        size_t pn = t->plen[id];
        if (is_bos_ws && strip && pn >= 3 && !memcmp(p, SPACE_SYM, 3)) {
            p += 3; pn -= 3;
            bos_ws_seen = !t->norm.remove_extra_whitespaces;
        }
        for (size_t k = 0; k < pn;) {
            if (k + 3 <= pn && !memcmp(p + k, SPACE_SYM, 3)) { buf_put(&o, " ", 1); k += 3; }
            else { buf_put(&o, p + k, 1); k++; }
        }
    }
    buf_put(&o, "", 0);
    if (o.oom) { moelm_free(o.b); return moelm_fail(MOELM_ERR_NOMEM, "tokenizer: out of memory decoding"); }
    o.b[o.n] = 0;
    *text = o.b;
    return MOELM_OK;
}
