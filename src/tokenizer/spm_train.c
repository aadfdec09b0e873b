/* spm_train.c: SentencePiece-style training of unigram and BPE models, in memory.
 *
 * Follows sentencepiece's trainers (TrainerInterface, unigram::Trainer, bpe::Trainer):
 *   1. sentences: every line of the inputs (lines over max_sentence_length bytes are skipped, the
 *      first input_sentence_size lines are kept; sentencepiece samples them at random instead),
 *      normalised like encoding does;
 *   2. required characters: code points by count until character_coverage of all characters is
 *      covered; the rest become the unknown character U+2585 and never enter a piece;
 *   3. words: each sentence is cut before every U+2581; distinct words with counts;
 *   unigram (Kudo 2018): seeds = all characters plus the most frequent right-branching substrings
 *      (score count * length, at most seed_sentencepiece_size; sentencepiece finds them with a
 *      suffix array over whole sentences, we count substrings of words, which gives the same
 *      counts because no piece crosses a word boundary); then EM sub-iterations (forward-backward
 *      expected counts, Bayesian M-step with digamma, pieces with expected count < 0.5 dropped)
 *      and pruning to shrinking_factor of the pieces by the loss of likelihood when a piece is
 *      replaced by its second-best segmentation, until vocab_size * 1.1 pieces remain; finally
 *      required characters plus the highest-scoring pieces up to vocab_size.
 *   bpe: repeatedly merge the most frequent adjacent pair of symbols (ties: fewer characters, then
 *      bytewise), score of the k-th merge = -k; required characters are appended last.
 *   A piece never mixes Unicode scripts (a coarse script table, see script_of), never holds U+2581
 *   except as its first character, and has at most max_sentencepiece_length characters.
 *
 * Not supported (documented in docs/TOKENIZER.md): nmt_nfkc training without a charsmap to embed,
 * sentence sampling, TSV input, pretokenisation delimiters, differential privacy.
 */
#include "tokenizer/tok_internal.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WS_CHAR 0x2581u
#define UNK_CHAR 0x2585u

void spm_train_options_default(SpmTrainOptions *o) {
    memset(o, 0, sizeof *o);
    o->model_type = TOK_UNIGRAM;
    o->vocab_size = 8000;
    o->character_coverage = 0.9995;
    snprintf(o->normalization_rule_name, sizeof o->normalization_rule_name, "identity");
    o->max_sentence_length = 4192;
    o->hard_vocab_limit = 1;
    o->unk_id = 0; o->bos_id = 1; o->eos_id = 2; o->pad_id = -1;
    o->max_sentencepiece_length = 16;
    o->num_sub_iterations = 2;
    o->shrinking_factor = 0.75;
    o->seed_sentencepiece_size = 1000000;
    o->add_dummy_prefix = o->remove_extra_whitespaces = 1;
    o->split_by_whitespace = o->split_by_unicode_script = o->split_by_number = 1;
    o->num_threads = 16;
}

/* ---- a byte-string table: string -> dense index ---------------------------------------------- */

typedef struct {
    char *arena; size_t alen, acap;
    size_t *off; uint32_t *len; size_t n, ncap;
    int32_t *slot; size_t cap;
    int oom;
} StrTab;

static uint64_t h64(const void *s, size_t n) { return hash_fnv1a64(s, n); }

static void st_free(StrTab *t) { moelm_free(t->arena); moelm_free(t->off); moelm_free(t->len); moelm_free(t->slot); memset(t, 0, sizeof *t); }
static const char *st_str(const StrTab *t, size_t i) { return t->arena + t->off[i]; }

static int st_grow(StrTab *t) {
    size_t nc = t->cap ? t->cap * 2 : 1024;
    int32_t *ns = moelm_malloc(nc * sizeof *ns);
    if (!ns) return 0;
    memset(ns, 0xff, nc * sizeof *ns);
    for (size_t i = 0; i < t->n; i++) {
        size_t h = (size_t)h64(st_str(t, i), t->len[i]) & (nc - 1);
        while (ns[h] >= 0) h = (h + 1) & (nc - 1);
        ns[h] = (int32_t)i;
    }
    moelm_free(t->slot);
    t->slot = ns; t->cap = nc;
    return 1;
}

/* index of s, added if absent (*added set); -1 on out of memory */
static long st_get(StrTab *t, const char *s, size_t n, int add, int *added) {
    if (added) *added = 0;
    if (t->oom) return -1;
    if (t->cap == 0 || (t->n + 1) * 2 > t->cap) { if (!add && t->cap) goto look; if (!st_grow(t)) { t->oom = 1; return -1; } }
look:
    if (!t->cap) return -1;
    size_t h = (size_t)h64(s, n) & (t->cap - 1);
    for (;; h = (h + 1) & (t->cap - 1)) {
        int32_t i = t->slot[h];
        if (i < 0) break;
        if (t->len[i] == n && !memcmp(st_str(t, (size_t)i), s, n)) return i;
    }
    if (!add) return -1;
    if (t->alen + n + 1 > t->acap) {
        size_t nc = t->acap ? t->acap * 2 : 1 << 16;
        while (nc < t->alen + n + 1) nc *= 2;
        char *na = moelm_realloc(t->arena, nc);
        if (!na) { t->oom = 1; return -1; }
        t->arena = na; t->acap = nc;
    }
    if (t->n == t->ncap) {
        size_t nc = t->ncap ? t->ncap * 2 : 1024;
        size_t *no = moelm_realloc(t->off, nc * sizeof *no);
        if (!no) { t->oom = 1; return -1; }
        t->off = no;
        uint32_t *nl = moelm_realloc(t->len, nc * sizeof *nl);
        if (!nl) { t->oom = 1; return -1; }
        t->len = nl; t->ncap = nc;
    }
    memcpy(t->arena + t->alen, s, n);
    t->arena[t->alen + n] = 0;
    t->off[t->n] = t->alen; t->len[t->n] = (uint32_t)n;
    t->alen += n + 1;
    t->slot[h] = (int32_t)t->n;
    if (added) *added = 1;
    return (long)t->n++;
}

/* ---- characters ---------------------------------------------------------------------------------- */

static size_t put_utf8(uint32_t c, char *o) {
    if (c < 0x80) { o[0] = (char)c; return 1; }
    if (c < 0x800) { o[0] = (char)(0xC0 | (c >> 6)); o[1] = (char)(0x80 | (c & 0x3F)); return 2; }
    if (c < 0x10000) { o[0] = (char)(0xE0 | (c >> 12)); o[1] = (char)(0x80 | ((c >> 6) & 0x3F)); o[2] = (char)(0x80 | (c & 0x3F)); return 3; }
    o[0] = (char)(0xF0 | (c >> 18)); o[1] = (char)(0x80 | ((c >> 12) & 0x3F)); o[2] = (char)(0x80 | ((c >> 6) & 0x3F)); o[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

static uint32_t next_cp(const char *s, size_t n, size_t *ml) { return tok_utf8_decode(s, n, ml); }

/* A coarse Unicode script: 0 Common, 1 Inherited, 2 Latin, 3 Greek, 4 Cyrillic, 5 Han (with kana),
 * 6 Hangul, otherwise 100 + the 128-code-point block. Enough for the rule "a piece never mixes
 * scripts"; sentencepiece uses ICU's full table. */
enum { SC_COMMON = 0, SC_INHERITED = 1, SC_LATIN = 2 };
static int script_of(uint32_t c) {
    if (c < 0x80) return ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') ? SC_LATIN : SC_COMMON;
    if (c < 0xC0) return (c == 0xAA || c == 0xBA) ? SC_LATIN : SC_COMMON;
    if (c < 0x250) return (c == 0xD7 || c == 0xF7) ? SC_COMMON : SC_LATIN;
    if (c < 0x2B0) return SC_LATIN;
    if (c < 0x300) return SC_COMMON;
    if (c < 0x370) return SC_INHERITED;
    if (c < 0x400) return 3;
    if (c < 0x530) return 4;
    if (c >= 0x1E00 && c < 0x1F00) return SC_LATIN;
    if (c >= 0x1F00 && c < 0x2000) return 3;
    if (c >= 0x2000 && c < 0x2E80) return SC_COMMON;
    if ((c >= 0x2E80 && c < 0x2FE0) || (c >= 0x3040 && c < 0x3100) || (c >= 0x3400 && c < 0xA000) ||
        (c >= 0xF900 && c < 0xFB00) || (c >= 0x20000 && c < 0x30000) || (c >= 0x31F0 && c < 0x3200) || (c >= 0xFF66 && c < 0xFFA0))
        return 5;
    if (c >= 0x3000 && c < 0x3040) return SC_COMMON;
    if ((c >= 0xAC00 && c < 0xD7B0) || (c >= 0x1100 && c < 0x1200) || (c >= 0x3130 && c < 0x3190)) return 6;
    if (c >= 0xFF21 && c < 0xFF3B) return SC_LATIN;
    if (c >= 0xFF41 && c < 0xFF5B) return SC_LATIN;
    if (c >= 0xFF00 && c < 0xFF66) return SC_COMMON;
    if (c >= 0xFE00 && c < 0xFE10) return SC_INHERITED;
    if (c >= 0x1F000 && c < 0x1FB00) return SC_COMMON;
    return 100 + (int)(c >> 7);
}

/* sentencepiece's TrainerInterface::IsValidSentencePiece over code points */
static int valid_piece(const uint32_t *c, size_t n, const SpmTrainOptions *o) {
    if (n == 0 || n > (size_t)o->max_sentencepiece_length) return 0;
    int prev = -1;
    for (size_t i = 0; i < n; i++) {
        uint32_t ch = c[i];
        if (ch == UNK_CHAR || ch == 0 || ch == 0x20 || ch == 0x2586 /* upp boundary */) return 0;
        if (ch == WS_CHAR) {
            if (o->treat_whitespace_as_suffix) { if ((o->split_by_whitespace && i < n - 1) || (!o->split_by_whitespace && i < n - 1 && i == 0)) return 0; }
            else if ((o->split_by_whitespace && i > 0) || (!o->split_by_whitespace && i > 0 && i == n - 1)) return 0;
            continue;
        }
        int s = script_of(ch);
        int digit = ch >= '0' && ch <= '9';
        if (!o->split_by_number && digit) s = -1;
        if (o->split_digits && digit && n > 1) return 0;
        if (o->split_by_unicode_script && s != -1 && prev != -1 && prev != s) return 0;
        prev = s;
    }
    return 1;
}

static int decode_u32(const char *s, size_t n, uint32_t *out) {
    int k = 0;
    for (size_t i = 0; i < n;) { size_t ml; out[k++] = next_cp(s + i, n - i, &ml); i += ml; }
    return k;
}

/* ---- corpus ------------------------------------------------------------------------------------------ */

typedef struct { const char *s; uint32_t len; double freq; } WordF;   /* s points into a StrTab */

typedef struct { uint32_t c; double n; } CharCount;
static int cc_cmp(const void *a, const void *b) {   /* count desc, code point asc */
    const CharCount *x = a, *y = b;
    if (x->n != y->n) return x->n > y->n ? -1 : 1;
    return x->c < y->c ? -1 : (x->c > y->c);
}

typedef struct {
    StrTab words; double *wfreq; size_t wcap;   /* distinct words and their counts */
    uint8_t *wfollow;                           /* bit 0: seen before another word, bit 1: at a sentence end */
    CharCount *req; size_t nreq;                /* required characters, by count */
    CharCount *allc; size_t nallc;              /* every character seen */
} Corpus;

static void corpus_free(Corpus *c) { st_free(&c->words); moelm_free(c->wfreq); moelm_free(c->wfollow); moelm_free(c->req); moelm_free(c->allc); }

static int add_word(Corpus *c, const char *s, size_t n, double f, int follow) {
    int added;
    long i = st_get(&c->words, s, n, 1, &added);
    if (i < 0) return 0;
    if ((size_t)i >= c->wcap) {
        size_t nc = c->wcap ? c->wcap * 2 : 4096;
        double *nf = moelm_realloc(c->wfreq, nc * sizeof *nf);
        if (!nf) return 0;
        c->wfreq = nf;
        uint8_t *nw = moelm_realloc(c->wfollow, nc);
        if (!nw) return 0;
        c->wfollow = nw; c->wcap = nc;
    }
    if (added) { c->wfreq[i] = 0; c->wfollow[i] = 0; }
    c->wfreq[i] += f;
    c->wfollow[i] |= (uint8_t)follow;
    return 1;
}

/* sentencepiece replaces every meta piece (<unk>, <s>, user-defined symbols, ...) found in a
 * normalised training sentence with U+2586, a boundary no piece may contain. Longest match first. */
static char *replace_meta(const char *s, size_t n, char *const *meta, int nmeta, size_t *outn) {
    char *o = moelm_malloc(n * 3 + 4);
    if (!o) return NULL;
    size_t k = 0;
    uint8_t first[256] = {0};
    for (int m = 0; m < nmeta; m++) first[(uint8_t)meta[m][0]] = 1;
    for (size_t i = 0; i < n;) {
        size_t best = 0;
        for (int m = 0; m < nmeta && first[(uint8_t)s[i]]; m++) {
            size_t l = strlen(meta[m]);
            if (l > best && l <= n - i && meta[m][0] == s[i] && !memcmp(meta[m], s + i, l)) best = l;
        }
        if (best) { memcpy(o + k, "\xE2\x96\x86", 3); k += 3; i += best; continue; }
        size_t ml = (size_t)tok_onechar_len((uint8_t)s[i]);
        if (ml > n - i) ml = n - i;
        memcpy(o + k, s + i, ml); k += ml; i += ml;
    }
    *outn = k;
    return o;
}

static moelm_status load_corpus(Corpus *c, const char *const *texts, const size_t *lens, int ntexts,
                                const SpmNormSpec *ns, const SpmTrainOptions *o, char *const *meta, int nmeta) {
    memset(c, 0, sizeof *c);
    StrTab sents = {0};
    double *sfreq = NULL; size_t scap = 0;
    moelm_status st = MOELM_OK;
    long taken = 0;
    /* distinct normalised sentences with counts */
    for (int k = 0; k < ntexts; k++) {
        const char *t = texts[k];
        size_t n = lens[k];
        for (size_t i = 0; i < n;) {
            const char *nl = memchr(t + i, '\n', n - i);
            size_t e = nl ? (size_t)(nl - t) : n;
            size_t ll = e - i;
            const char *line = t + i;
            i = e + 1;
            if (ll == 0 || ll > (size_t)o->max_sentence_length) continue;
            if (o->input_sentence_size > 0 && taken >= o->input_sentence_size) break;
            taken++;
            char *norm; size_t nn;
            if ((st = spm_normalize(NULL, ns, line, ll, &norm, &nn))) goto out;
            if (nmeta) {
                size_t rn;
                char *r = replace_meta(norm, nn, meta, nmeta, &rn);
                moelm_free(norm);
                if (!r) { st = MOELM_ERR_NOMEM; goto out; }
                norm = r; nn = rn;
            }
            int added;
            long si = st_get(&sents, norm, nn, 1, &added);
            moelm_free(norm);
            if (si < 0) { st = MOELM_ERR_NOMEM; goto out; }
            if ((size_t)si >= scap) {
                size_t nc = scap ? scap * 2 : 4096;
                double *nf = moelm_realloc(sfreq, nc * sizeof *nf);
                if (!nf) { st = MOELM_ERR_NOMEM; goto out; }
                sfreq = nf; scap = nc;
            }
            if (added) sfreq[si] = 0;
            sfreq[si] += 1;
        }
    }
    if (sents.n == 0) { st = moelm_fail(MOELM_ERR_DATA, "tokenizer train: no sentences in the input"); goto out; }
    /* character counts -> required characters by coverage */
    {
        size_t cap = 256, n = 0;
        CharCount *cc = moelm_malloc(cap * sizeof *cc);
        int32_t *idx = moelm_malloc(0x110000 * sizeof *idx);
        if (!cc || !idx) { moelm_free(cc); moelm_free(idx); st = MOELM_ERR_NOMEM; goto out; }
        memset(idx, 0xff, 0x110000 * sizeof *idx);
        double all = 0;
        for (size_t s = 0; s < sents.n; s++) {
            const char *p = st_str(&sents, s);
            size_t len = sents.len[s];
            for (size_t i = 0; i < len;) {
                size_t ml; uint32_t ch = next_cp(p + i, len - i, &ml); i += ml;
                if (ch == 0 || ch == 0x20 || ch == 0x2586 || ch > 0x10FFFF) continue;
                if (idx[ch] < 0) {
                    if (n == cap) { cap *= 2; CharCount *nc2 = moelm_realloc(cc, cap * sizeof *cc); if (!nc2) { moelm_free(cc); moelm_free(idx); st = MOELM_ERR_NOMEM; goto out; } cc = nc2; }
                    idx[ch] = (int32_t)n; cc[n++] = (CharCount){ ch, 0 };
                }
                cc[idx[ch]].n += sfreq[s];
                all += sfreq[s];
            }
        }
        moelm_free(idx);
        qsort(cc, n, sizeof *cc, cc_cmp);
        double acc = 0;
        size_t r = 0;
        for (; r < n; r++) {
            if (acc / all >= o->character_coverage) break;
            acc += cc[r].n;
        }
        c->allc = cc; c->nallc = n;
        c->req = moelm_malloc((r ? r : 1) * sizeof *c->req);
        if (!c->req) { st = MOELM_ERR_NOMEM; goto out; }
        memcpy(c->req, cc, r * sizeof *cc);
        c->nreq = r;
    }
    /* words, with rare characters replaced by the unknown character */
    {
        uint8_t *isreq = moelm_calloc(0x110000, 1);
        size_t bcap = 1024;
        char *buf = moelm_malloc(bcap);
        if (!isreq || !buf) { moelm_free(isreq); moelm_free(buf); st = MOELM_ERR_NOMEM; goto out; }
        for (size_t r = 0; r < c->nreq; r++) isreq[c->req[r].c] = 1;
        for (size_t s = 0; s < sents.n && !st; s++) {
            const char *p = st_str(&sents, s);
            size_t len = sents.len[s];
            if (len * 2 + 8 > bcap) { bcap = len * 2 + 8; char *nb = moelm_realloc(buf, bcap); if (!nb) { st = MOELM_ERR_NOMEM; break; } buf = nb; }
            size_t bl = 0, wstart = 0;
            for (size_t i = 0; i < len;) {
                size_t ml; uint32_t ch = next_cp(p + i, len - i, &ml); i += ml;
                if (ch == WS_CHAR && !o->treat_whitespace_as_suffix && bl > wstart) {
                    if (!add_word(c, buf + wstart, bl - wstart, sfreq[s], 1)) { st = MOELM_ERR_NOMEM; break; }
                    wstart = bl;
                }
                if (ch <= 0x10FFFF && !isreq[ch] && ch != 0x20 && ch != 0x2586) ch = UNK_CHAR;
                bl += put_utf8(ch, buf + bl);
                if (ch == WS_CHAR && o->treat_whitespace_as_suffix) {
                    if (!add_word(c, buf + wstart, bl - wstart, sfreq[s], 1)) { st = MOELM_ERR_NOMEM; break; }
                    wstart = bl;
                }
            }
            if (!st && bl > wstart && !add_word(c, buf + wstart, bl - wstart, sfreq[s], 2)) st = MOELM_ERR_NOMEM;
        }
        moelm_free(isreq);
        moelm_free(buf);
    }
out:
    st_free(&sents);
    moelm_free(sfreq);
    if (st) corpus_free(c);
    return st;
}

/* ---- unigram ------------------------------------------------------------------------------------- */

typedef struct { char *s; uint32_t len; float score; } SP;   /* a sentence piece and its score */
typedef struct { SP *v; size_t n, cap; } SPVec;

static int sp_push(SPVec *a, const char *s, size_t len, float score) {
    if (a->n == a->cap) {
        size_t nc = a->cap ? a->cap * 2 : 1024;
        SP *nv = moelm_realloc(a->v, nc * sizeof *nv);
        if (!nv) return 0;
        a->v = nv; a->cap = nc;
    }
    char *c = moelm_malloc(len + 1);
    if (!c) return 0;
    memcpy(c, s, len); c[len] = 0;
    a->v[a->n++] = (SP){ c, (uint32_t)len, score };
    return 1;
}
static void sp_free(SPVec *a) { for (size_t i = 0; i < a->n; i++) moelm_free(a->v[i].s); moelm_free(a->v); memset(a, 0, sizeof *a); }

static int sp_score_cmp(const void *a, const void *b) {   /* score desc, then bytes asc (sentencepiece's Sorted) */
    const SP *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return strcmp(x->s, y->s);
}

/* The trainer's model: a trie over the current pieces. */
typedef struct { Tokenizer fake; PieceTrie trie; float min_score; } TModel;

static moelm_status tmodel_build(TModel *m, const SPVec *p) {
    memset(&m->fake, 0, sizeof m->fake);
    m->fake.V = (int)p->n;
    m->fake.piece = moelm_malloc(p->n * sizeof(char *));
    m->fake.plen = moelm_malloc(p->n * sizeof(uint32_t));
    m->fake.type = moelm_malloc(p->n);
    m->fake.score = moelm_malloc(p->n * sizeof(float));
    if (!m->fake.piece || !m->fake.plen || !m->fake.type || !m->fake.score) return MOELM_ERR_NOMEM;
    m->min_score = FLT_MAX;
    for (size_t i = 0; i < p->n; i++) {
        m->fake.piece[i] = p->v[i].s; m->fake.plen[i] = p->v[i].len; m->fake.type[i] = SPM_NORMAL;
        m->fake.score[i] = p->v[i].score;
        if (p->v[i].score < m->min_score) m->min_score = p->v[i].score;
    }
    memset(&m->trie, 0, sizeof m->trie);
    return trie_build(&m->trie, &m->fake, 1u << SPM_NORMAL);
}
static void tmodel_free(TModel *m) {
    moelm_free(m->fake.piece); moelm_free(m->fake.plen); moelm_free(m->fake.type); moelm_free(m->fake.score);
    trie_free(&m->trie);
}

typedef struct { int begin, end, id; float score; } LNode;
typedef struct { LNode *v; size_t n, cap; int *cpos; size_t ccap; int nc; } Lattice;

/* Lattice of a word: nodes ordered by begin, then length (sentencepiece's insertion order). */
static int lattice_build(Lattice *L, const TModel *m, const char *s, size_t n) {
    if (n + 1 > L->ccap) { L->ccap = n + 1; moelm_free(L->cpos); L->cpos = moelm_malloc(L->ccap * sizeof(int) * 2); if (!L->cpos) return 0; }
    int *cpos = L->cpos, *char_at = L->cpos + L->ccap;   /* char index -> byte, byte -> char index (-1 mid-char) */
    int nc = 0;
    for (size_t i = 0; i <= n; i++) char_at[i] = -1;
    for (size_t i = 0; i < n;) { cpos[nc] = (int)i; char_at[i] = nc; nc++; size_t ml = (size_t)tok_onechar_len((uint8_t)s[i]); i += ml < n - i ? ml : n - i; }
    cpos[nc] = (int)n; char_at[n] = nc;
    L->nc = nc;
    L->n = 0;
    float unk = m->min_score - 10.0f;
    for (int b = 0; b < nc; b++) {
        int node = 0, single = 0;
        for (size_t k = (size_t)cpos[b]; k < n;) {
            node = trie_next(&m->trie, node, (uint8_t)s[k]);
            k++;
            if (node < 0) break;
            int id = m->trie.value[node];
            if (id < 0 || char_at[k] < 0) continue;
            if (L->n == L->cap) { size_t nc2 = L->cap ? L->cap * 2 : 256; LNode *nv = moelm_realloc(L->v, nc2 * sizeof *nv); if (!nv) return 0; L->v = nv; L->cap = nc2; }
            L->v[L->n++] = (LNode){ b, char_at[k], id, m->fake.score[id] };
            if (char_at[k] == b + 1) single = 1;
        }
        if (!single) {
            if (L->n == L->cap) { size_t nc2 = L->cap ? L->cap * 2 : 256; LNode *nv = moelm_realloc(L->v, nc2 * sizeof *nv); if (!nv) return 0; L->v = nv; L->cap = nc2; }
            L->v[L->n++] = (LNode){ b, b + 1, -1, unk };
        }
    }
    return 1;
}

static double lse(double x, double y, int init) {
    if (init) return y;
    double mn = x < y ? x : y, mx = x < y ? y : x;
    if (mx > mn + 50) return mx;
    return mx + log(exp(mn - mx) + 1.0);
}

/* forward-backward: adds freq * marginal to expected[id]; returns log Z */
static double lattice_marginal(const Lattice *L, double freq, double *expected, double *fwd, double *bwd, char *init) {
    int nc = L->nc;
    for (int p = 0; p <= nc; p++) { fwd[p] = 0; bwd[p] = 0; }
    memset(init, 1, (size_t)nc + 1);
    for (size_t i = 0; i < L->n; i++) {
        const LNode *x = &L->v[i];
        double a = (x->begin == 0 ? 0.0 : fwd[x->begin]) + x->score;
        fwd[x->end] = lse(fwd[x->end], a, init[x->end]);
        init[x->end] = 0;
    }
    memset(init, 1, (size_t)nc + 1);
    for (size_t i = L->n; i-- > 0;) {
        const LNode *x = &L->v[i];
        double b = (x->end == nc ? 0.0 : bwd[x->end]) + x->score;
        bwd[x->begin] = lse(bwd[x->begin], b, init[x->begin]);
        init[x->begin] = 0;
    }
    double Z = fwd[nc];
    for (size_t i = 0; i < L->n; i++) {
        const LNode *x = &L->v[i];
        if (x->id < 0) continue;
        double a = x->begin == 0 ? 0.0 : fwd[x->begin], b = x->end == nc ? 0.0 : bwd[x->end];
        expected[x->id] += freq * exp(a + x->score + b - Z);
    }
    return Z;
}

/* Viterbi: writes the node indices of the best path into path, returns their number. Ties keep
 * the earliest node (strict >), as sentencepiece's Lattice::Viterbi. */
static int lattice_viterbi(const Lattice *L, int *path, float *best, int *back) {
    int nc = L->nc;
    for (int p = 0; p <= nc; p++) back[p] = -1;
    best[0] = 0;
    for (size_t i = 0; i < L->n; i++) {
        const LNode *x = &L->v[i];
        if (x->begin > 0 && back[x->begin] < 0) continue;
        float sc = best[x->begin] + x->score;
        if (back[x->end] < 0 || sc > best[x->end]) { best[x->end] = sc; back[x->end] = (int)i; }
    }
    int k = 0;
    for (int p = nc; p > 0 && back[p] >= 0; p = L->v[back[p]].begin) path[k++] = back[p];
    for (int i = 0, j = k - 1; i < j; i++, j--) { int t = path[i]; path[i] = path[j]; path[j] = t; }
    return k;
}

/* The two best paths of a short string (for pruning). Returns the number found (0..2); the node
 * counts go to n1/n2 and the ids of the second path to alt. */
static int lattice_two_best(const Lattice *L, int *n1, int *alt, int *n2) {
    int nc = L->nc;
    typedef struct { float s; int node, prank; int ok; } E;
    E top[17][2];
    if (nc > 16) return 0;
    for (int p = 0; p <= nc; p++) top[p][0].ok = top[p][1].ok = 0;
    top[0][0] = (E){ 0, -1, -1, 1 };
    for (size_t i = 0; i < L->n; i++) {
        const LNode *x = &L->v[i];
        for (int r = 0; r < 2; r++) {
            if (!top[x->begin][r].ok) continue;
            E c = { top[x->begin][r].s + x->score, (int)i, r, 1 };
            E *t = top[x->end];
            if (!t[0].ok || c.s > t[0].s) { t[1] = t[0]; t[0] = c; }
            else if (!t[1].ok || c.s > t[1].s) t[1] = c;
        }
    }
    int found = top[nc][0].ok + top[nc][1].ok;
    for (int r = 0; r < found; r++) {
        int cnt = 0, p = nc, rank = r;
        int ids[17];
        while (p > 0) { E e = top[p][rank]; ids[cnt++] = L->v[e.node].id; p = L->v[e.node].begin; rank = e.prank; }
        if (r == 0) *n1 = cnt;
        else { *n2 = cnt; for (int i = 0; i < cnt; i++) alt[i] = ids[cnt - 1 - i]; }
    }
    return found;
}

static double digamma(double x) {
    double r = 0;
    for (; x < 7; ++x) r -= 1 / x;
    x -= 0.5;
    double xx = 1.0 / x, xx2 = xx * xx, xx4 = xx2 * xx2;
    return r + log(x) + xx2 / 24.0 - 7.0 / 960.0 * xx4 + 31.0 / 8064.0 * xx4 * xx2 - 127.0 / 30720.0 * xx4 * xx4;
}

typedef struct { long idx; double score; } Cand;
static int cand_cmp(const void *a, const void *b) {
    const Cand *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

typedef struct { double freq; uint32_t first_next; uint8_t branching; } SubInfo;

static moelm_status unigram_seed(const Corpus *c, const SpmTrainOptions *o, SPVec *seeds) {
    StrTab subs = {0};
    SubInfo *info = NULL; size_t icap = 0;
    uint32_t cp[4096];
    moelm_status st = MOELM_OK;
    for (size_t w = 0; w < c->words.n; w++) {
        const char *s = st_str(&c->words, w);
        size_t n = c->words.len[w];
        if (n > 4000) continue;
        int nc = decode_u32(s, n, cp);
        size_t off[4097]; off[0] = 0;
        for (int i = 0; i < nc; i++) { char tmp[4]; off[i + 1] = off[i] + put_utf8(cp[i], tmp); }
        for (int i = 0; i < nc; i++) {
            for (int l = 2; l <= o->max_sentencepiece_length && i + l <= nc; l++) {
                if (!valid_piece(cp + i, (size_t)l, o)) break;   /* extensions of an invalid piece are invalid too */
                int added;
                long k = st_get(&subs, s + off[i], off[i + l] - off[i], 1, &added);
                if (k < 0) { st = MOELM_ERR_NOMEM; goto out; }
                if ((size_t)k >= icap) {
                    size_t nc2 = icap ? icap * 2 : 1 << 16;
                    SubInfo *ni = moelm_realloc(info, nc2 * sizeof *ni);
                    if (!ni) { st = MOELM_ERR_NOMEM; goto out; }
                    info = ni; icap = nc2;
                }
                /* the character after this occurrence: inside the word, or U+2581 / end of sentence */
                uint8_t fm = c->wfollow[w];
                uint32_t nx = i + l < nc ? cp[i + l] : (fm & 1) ? WS_CHAR : 0;
                if (added) info[k] = (SubInfo){ 0, nx, 0 };
                else if (info[k].first_next != nx) info[k].branching = 1;
                if (i + l == nc && fm == 3) info[k].branching = 1;
                info[k].freq += c->wfreq[w];
            }
        }
    }
    {
        /* all characters first (sorted by count), then the best substrings by count * length */
        for (size_t i = 0; i < c->nallc; i++) {
            if (c->allc[i].c == UNK_CHAR) continue;
            char b[4]; size_t l = put_utf8(c->allc[i].c, b);
            if (!sp_push(seeds, b, l, (float)c->allc[i].n)) { st = MOELM_ERR_NOMEM; goto out; }
        }
        size_t nchars = seeds->n;
        Cand *cand = moelm_malloc((subs.n + 1) * sizeof *cand);
        if (!cand) { st = MOELM_ERR_NOMEM; goto out; }
        size_t m = 0;
        for (size_t k = 0; k < subs.n; k++) {
            if (info[k].freq < 2 || !info[k].branching) continue;
            uint32_t tmp[64];
            int nc = decode_u32(st_str(&subs, k), subs.len[k], tmp);
            cand[m++] = (Cand){ (long)k, info[k].freq * nc };
        }
        qsort(cand, m, sizeof *cand, cand_cmp);
        if (m > (size_t)o->seed_sentencepiece_size) m = (size_t)o->seed_sentencepiece_size;
        for (size_t i = 0; i < m; i++)
            if (!sp_push(seeds, st_str(&subs, (size_t)cand[i].idx), subs.len[cand[i].idx], (float)cand[i].score)) { moelm_free(cand); st = MOELM_ERR_NOMEM; goto out; }
        moelm_free(cand);
        (void)nchars;
        /* to log probabilities */
        double sum = 0;
        for (size_t i = 0; i < seeds->n; i++) sum += seeds->v[i].score;
        double ls = log(sum);
        for (size_t i = 0; i < seeds->n; i++) seeds->v[i].score = (float)(log((double)seeds->v[i].score) - ls);
    }
out:
    st_free(&subs);
    moelm_free(info);
    return st;
}

static moelm_status unigram_train(const Corpus *c, const SpmTrainOptions *o, int vocab_left, SPVec *final) {
    SPVec pieces = {0};
    moelm_status st = unigram_seed(c, o, &pieces);
    if (st) { sp_free(&pieces); return st; }
    size_t desired = (size_t)(o->vocab_size * 1.1);
    size_t maxc = 16;
    for (size_t w = 0; w < c->words.n; w++) if (c->words.len[w] + 2 > maxc) maxc = c->words.len[w] + 2;
    double *fwd = moelm_malloc((3 * maxc + 8) * sizeof(double));
    float *best = moelm_malloc(maxc * sizeof(float));
    int *back = moelm_malloc(maxc * sizeof(int)), *path = moelm_malloc(maxc * sizeof(int));
    Lattice L = {0};
    TModel m;
    memset(&m, 0, sizeof m);
    if (!fwd || !best || !back || !path) { st = MOELM_ERR_NOMEM; goto out; }
    for (;;) {
        for (int iter = 0; iter < o->num_sub_iterations; iter++) {
            tmodel_free(&m);
            if ((st = tmodel_build(&m, &pieces))) goto out;
            double *expected = moelm_calloc(pieces.n, sizeof(double));
            if (!expected) { st = MOELM_ERR_NOMEM; goto out; }
            for (size_t w = 0; w < c->words.n; w++) {
                if (!lattice_build(&L, &m, st_str(&c->words, w), c->words.len[w])) { moelm_free(expected); st = MOELM_ERR_NOMEM; goto out; }
                lattice_marginal(&L, c->wfreq[w], expected, fwd, fwd + maxc, (char *)(fwd + 2 * maxc));
            }
            /* M step: Bayesian (digamma) re-estimation, dropping pieces expected < 0.5 times */
            SPVec np = {0};
            double sum = 0;
            for (size_t i = 0; i < pieces.n; i++) {
                if (expected[i] < 0.5) continue;
                if (!sp_push(&np, pieces.v[i].s, pieces.v[i].len, (float)expected[i])) { sp_free(&np); moelm_free(expected); st = MOELM_ERR_NOMEM; goto out; }
                sum += expected[i];
            }
            moelm_free(expected);
            double lsum = digamma(sum);
            for (size_t i = 0; i < np.n; i++) np.v[i].score = (float)(digamma(np.v[i].score) - lsum);
            sp_free(&pieces);
            pieces = np;
        }
        if (pieces.n <= desired) break;
        /* prune */
        tmodel_free(&m);
        if ((st = tmodel_build(&m, &pieces))) goto out;
        size_t P = pieces.n;
        uint8_t *keep = moelm_malloc(P);
        int *alt = moelm_malloc(P * 17 * sizeof(int)), *nalt = moelm_calloc(P, sizeof(int));
        double *freq = moelm_calloc(P, sizeof(double)), *F = moelm_calloc(P, sizeof(double));
        Cand *cand = moelm_malloc(P * sizeof *cand);
        if (!keep || !alt || !nalt || !freq || !F || !cand) {
            moelm_free(keep); moelm_free(alt); moelm_free(nalt); moelm_free(freq); moelm_free(F); moelm_free(cand);
            st = MOELM_ERR_NOMEM; goto out;
        }
        for (size_t i = 0; i < P; i++) {
            keep[i] = 1;
            if (!lattice_build(&L, &m, pieces.v[i].s, pieces.v[i].len)) { st = MOELM_ERR_NOMEM; break; }
            int n1 = 0, n2 = 0;
            int found = lattice_two_best(&L, &n1, alt + i * 17, &n2);
            if (found <= 1) continue;
            if (n1 >= 2) keep[i] = 0;
            else nalt[i] = n2;
        }
        double vsum = 0;
        for (size_t w = 0; w < c->words.n && !st; w++) {
            if (!lattice_build(&L, &m, st_str(&c->words, w), c->words.len[w])) { st = MOELM_ERR_NOMEM; break; }
            int k = lattice_viterbi(&L, path, best, back);
            vsum += c->wfreq[w];
            /* F[i]: total count of the words whose best path uses piece i (sentencepiece's inverted index) */
            for (int j = 0; j < k; j++) {
                int id = L.v[path[j]].id;
                if (id < 0) continue;
                freq[id] += c->wfreq[w];
                int dup = 0;
                for (int q = 0; q < j; q++) if (L.v[path[q]].id == id) { dup = 1; break; }
                F[id] += dup ? c->wfreq[w] : c->wfreq[w];
            }
        }
        SPVec np = {0};
        size_t nc = 0;
        if (!st) {
            double sum = 0;
            for (size_t i = 0; i < P; i++) sum += freq[i];
            double logsum = log(sum);
            for (size_t i = 0; i < P && !st; i++) {
                if (freq[i] == 0 || !keep[i]) continue;
                if (nalt[i] == 0) { if (!sp_push(&np, pieces.v[i].s, pieces.v[i].len, pieces.v[i].score)) st = MOELM_ERR_NOMEM; continue; }
                double f = F[i] / vsum;
                double lp_sp = log(freq[i]) - logsum;
                double logsum_alt = log(sum + freq[i] * (nalt[i] - 1));
                double lp_alt = 0;
                for (int a = 0; a < nalt[i]; a++) { int id = alt[i * 17 + a]; lp_alt += log((id >= 0 ? freq[id] : 0) + freq[i]) - logsum_alt; }
                cand[nc++] = (Cand){ (long)i, f * (lp_sp - lp_alt) };
            }
            qsort(cand, nc, sizeof *cand, cand_cmp);
            size_t pruned = (size_t)(o->shrinking_factor * (double)P);
            if (pruned < desired) pruned = desired;
            for (size_t k = 0; k < nc && np.n < pruned && !st; k++)
                if (!sp_push(&np, pieces.v[cand[k].idx].s, pieces.v[cand[k].idx].len, pieces.v[cand[k].idx].score)) st = MOELM_ERR_NOMEM;
        }
        moelm_free(keep); moelm_free(alt); moelm_free(nalt); moelm_free(freq); moelm_free(F); moelm_free(cand);
        if (st) { sp_free(&np); goto out; }
        sp_free(&pieces);
        pieces = np;
        /* pieces without a second segmentation are always kept; when they alone exceed the target
         * a round removes nothing, and the final selection below cuts to vocab_size instead */
        if (pieces.n >= P) break;
    }
    /* finalise: required characters, then the best pieces */
    {
        StrTab have = {0};
        float min_score = FLT_MAX;
        for (size_t i = 0; i < pieces.n; i++) if (pieces.v[i].score < min_score) min_score = pieces.v[i].score;
        for (size_t i = 0; i < pieces.n; i++) st_get(&have, pieces.v[i].s, pieces.v[i].len, 1, NULL);
        StrTab in_final = {0};
        float pen = 0;
        for (size_t r = 0; r < c->nreq && !st; r++) {
            char b[4]; size_t l = put_utf8(c->req[r].c, b);
            long k = st_get(&have, b, l, 0, NULL);
            float sc;
            if (k >= 0) sc = pieces.v[k].score;
            else { sc = min_score + pen; pen += 0.0001f; }
            if (!sp_push(final, b, l, sc)) st = MOELM_ERR_NOMEM;
            st_get(&in_final, b, l, 1, NULL);
        }
        qsort(pieces.v, pieces.n, sizeof *pieces.v, sp_score_cmp);
        for (size_t i = 0; i < pieces.n && !st; i++) {
            if (st_get(&in_final, pieces.v[i].s, pieces.v[i].len, 0, NULL) >= 0) continue;
            if (final->n >= (size_t)vocab_left) break;
            if (!sp_push(final, pieces.v[i].s, pieces.v[i].len, pieces.v[i].score)) st = MOELM_ERR_NOMEM;
        }
        if (have.oom || in_final.oom) st = MOELM_ERR_NOMEM;
        st_free(&have); st_free(&in_final);
        qsort(final->v, final->n, sizeof *final->v, sp_score_cmp);
    }
out:
    tmodel_free(&m);
    moelm_free(L.v); moelm_free(L.cpos);
    moelm_free(fwd); moelm_free(best); moelm_free(back); moelm_free(path);
    sp_free(&pieces);
    return st;
}

/* ---- BPE ---------------------------------------------------------------------------------------- */

typedef struct { int a, b; double freq; int valid; int nchars; int32_t *words; int nw, cw; int banned; } BPair;
typedef struct { double freq; int pair; } HEnt;

typedef struct {
    StrTab sym; int *sym_chars;  size_t sym_cap;
    BPair *pairs; size_t np, pcap;
    int64_t *pkey; int32_t *pslot; size_t pscap;
    HEnt *heap; size_t hn, hcap;
    const SpmTrainOptions *o;
    int oom;
} Bpe;

static int sym_get(Bpe *B, const char *s, size_t n, int nchars) {
    int added;
    long k = st_get(&B->sym, s, n, 1, &added);
    if (k < 0) { B->oom = 1; return -1; }
    if ((size_t)k >= B->sym_cap) {
        size_t nc = B->sym_cap ? B->sym_cap * 2 : 4096;
        int *ns = moelm_realloc(B->sym_chars, nc * sizeof *ns);
        if (!ns) { B->oom = 1; return -1; }
        B->sym_chars = ns; B->sym_cap = nc;
    }
    if (added) B->sym_chars[k] = nchars;
    return (int)k;
}

/* pair order: freq desc, then fewer characters, then the concatenation bytewise */
static int concat_cmp(const Bpe *B, const BPair *x, const BPair *y) {
    const char *xs[2] = { st_str(&B->sym, (size_t)x->a), st_str(&B->sym, (size_t)x->b) };
    const char *ys[2] = { st_str(&B->sym, (size_t)y->a), st_str(&B->sym, (size_t)y->b) };
    size_t xl[2] = { B->sym.len[x->a], B->sym.len[x->b] }, yl[2] = { B->sym.len[y->a], B->sym.len[y->b] };
    size_t xi = 0, yi = 0; int xp = 0, yp = 0;
    for (;;) {
        while (xp < 2 && xi == xl[xp]) { xp++; xi = 0; }
        while (yp < 2 && yi == yl[yp]) { yp++; yi = 0; }
        if (xp == 2 && yp == 2) return 0;
        if (xp == 2) return -1;
        if (yp == 2) return 1;
        uint8_t cx = (uint8_t)xs[xp][xi++], cy = (uint8_t)ys[yp][yi++];
        if (cx != cy) return cx < cy ? -1 : 1;
    }
}
static int hent_before(const Bpe *B, const HEnt *x, const HEnt *y) {
    if (x->freq != y->freq) return x->freq > y->freq;
    const BPair *p = &B->pairs[x->pair], *q = &B->pairs[y->pair];
    if (p->nchars != q->nchars) return p->nchars < q->nchars;
    return concat_cmp(B, p, q) < 0;
}
static void hpush(Bpe *B, HEnt e) {
    if (B->hn == B->hcap) {
        size_t nc = B->hcap ? B->hcap * 2 : 1 << 16;
        HEnt *nh = moelm_realloc(B->heap, nc * sizeof *nh);
        if (!nh) { B->oom = 1; return; }
        B->heap = nh; B->hcap = nc;
    }
    size_t i = B->hn++;
    while (i > 0) { size_t p = (i - 1) / 2; if (!hent_before(B, &e, &B->heap[p])) break; B->heap[i] = B->heap[p]; i = p; }
    B->heap[i] = e;
}
static HEnt hpop(Bpe *B) {
    HEnt top = B->heap[0], last = B->heap[--B->hn];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const HEnt *b = &last;
        if (l < B->hn && hent_before(B, &B->heap[l], b)) { m = l; b = &B->heap[l]; }
        if (r < B->hn && hent_before(B, &B->heap[r], b)) m = r;
        if (m == i) break;
        B->heap[i] = B->heap[m]; i = m;
    }
    if (B->hn) B->heap[i] = last;
    return top;
}

static int pair_get(Bpe *B, int a, int b) {
    int64_t key = (int64_t)a << 32 | (uint32_t)b;
    if ((B->np + 1) * 2 > B->pscap) {
        size_t nc = B->pscap ? B->pscap * 2 : 1 << 16;
        int32_t *ns = moelm_malloc(nc * sizeof *ns);
        if (!ns) { B->oom = 1; return -1; }
        memset(ns, 0xff, nc * sizeof *ns);
        for (size_t i = 0; i < B->np; i++) {
            size_t h = (size_t)h64(&B->pkey[i], 8) & (nc - 1);
            while (ns[h] >= 0) h = (h + 1) & (nc - 1);
            ns[h] = (int32_t)i;
        }
        moelm_free(B->pslot); B->pslot = ns; B->pscap = nc;
    }
    size_t h = (size_t)h64(&key, 8) & (B->pscap - 1);
    for (;; h = (h + 1) & (B->pscap - 1)) {
        int32_t i = B->pslot[h];
        if (i < 0) break;
        if (B->pkey[i] == key) return i;
    }
    if (B->np == B->pcap) {
        size_t nc = B->pcap ? B->pcap * 2 : 1 << 14;
        BPair *npv = moelm_realloc(B->pairs, nc * sizeof *npv);
        int64_t *nk = npv ? moelm_realloc(B->pkey, nc * sizeof *nk) : NULL;
        if (npv) B->pairs = npv;
        if (!npv || !nk) { B->oom = 1; return -1; }
        B->pkey = nk; B->pcap = nc;
    }
    int i = (int)B->np++;
    B->pslot[h] = i;
    B->pkey[i] = key;
    BPair *p = &B->pairs[i];
    memset(p, 0, sizeof *p);
    p->a = a; p->b = b;
    p->nchars = B->sym_chars[a] + B->sym_chars[b];
    /* validity of the concatenation */
    uint32_t cp[64];
    size_t la = B->sym.len[a], lb = B->sym.len[b];
    if (p->nchars <= B->o->max_sentencepiece_length && p->nchars <= 64) {
        char buf[512];
        if (la + lb <= sizeof buf) {
            memcpy(buf, st_str(&B->sym, (size_t)a), la); memcpy(buf + la, st_str(&B->sym, (size_t)b), lb);
            int n = decode_u32(buf, la + lb, cp);
            p->valid = valid_piece(cp, (size_t)n, B->o);
        }
    }
    return i;
}

static void pair_add(Bpe *B, int a, int b, double f, int word, int *touched, int *nt) {
    int k = pair_get(B, a, b);
    if (k < 0) return;
    BPair *p = &B->pairs[k];
    if (!p->valid) return;
    p->freq += f;
    if (word >= 0 && (p->nw == 0 || p->words[p->nw - 1] != word)) {
        if (p->nw == p->cw) {
            int nc = p->cw ? p->cw * 2 : 4;
            int32_t *nw = moelm_realloc(p->words, (size_t)nc * sizeof *nw);
            if (!nw) { B->oom = 1; return; }
            p->words = nw; p->cw = nc;
        }
        p->words[p->nw++] = word;
    }
    if (touched) touched[(*nt)++] = k;
}

static moelm_status bpe_train(const Corpus *c, const SpmTrainOptions *o, int vocab_left, SPVec *final) {
    Bpe B;
    memset(&B, 0, sizeof B);
    B.o = o;
    size_t W = c->words.n;
    int **ws = moelm_calloc(W, sizeof *ws);
    int *wl = moelm_calloc(W, sizeof *wl);
    int *stamp = moelm_calloc(W, sizeof *stamp);
    int *touched = NULL; size_t tcap = 0;
    StrTab done = {0};
    moelm_status st = MOELM_OK;
    uint32_t cp[4096];
    if (!ws || !wl || !stamp) { st = MOELM_ERR_NOMEM; goto out; }
    uint8_t *isreq = moelm_calloc(0x110000, 1);
    if (!isreq) { st = MOELM_ERR_NOMEM; goto out; }
    for (size_t r = 0; r < c->nreq; r++) isreq[c->req[r].c] = 1;
    for (size_t w = 0; w < W; w++) {
        const char *s = st_str(&c->words, w);
        size_t n = c->words.len[w];
        if (n > 4000) { wl[w] = 0; continue; }
        int nc = decode_u32(s, n, cp);
        ws[w] = moelm_malloc((size_t)(nc ? nc : 1) * sizeof(int));
        if (!ws[w]) { moelm_free(isreq); st = MOELM_ERR_NOMEM; goto out; }
        for (int i = 0; i < nc; i++) {
            char b[4]; size_t l = put_utf8(cp[i], b);
            ws[w][i] = sym_get(&B, b, l, 1);
        }
        wl[w] = nc;
        for (int i = 0; i + 1 < nc; i++) pair_add(&B, ws[w][i], ws[w][i + 1], c->wfreq[w], (int)w, NULL, NULL);
    }
    moelm_free(isreq);
    if (B.oom) { st = MOELM_ERR_NOMEM; goto out; }
    for (size_t k = 0; k < B.np; k++) if (B.pairs[k].valid && B.pairs[k].freq > 0) hpush(&B, (HEnt){ B.pairs[k].freq, (int)k });
    int target = vocab_left - (int)c->nreq;
    int iter = 0;
    while ((int)final->n < target && B.hn && !B.oom) {
        HEnt e = hpop(&B);
        BPair *p = &B.pairs[e.pair];
        if (p->banned || p->freq != e.freq || p->freq <= 0) continue;
        size_t la = B.sym.len[p->a], lb = B.sym.len[p->b];
        char *buf = moelm_malloc(la + lb + 1);
        if (!buf) { st = MOELM_ERR_NOMEM; goto out; }
        memcpy(buf, st_str(&B.sym, (size_t)p->a), la); memcpy(buf + la, st_str(&B.sym, (size_t)p->b), lb);
        int added;
        st_get(&done, buf, la + lb, 1, &added);
        if (!added) { p->banned = 1; moelm_free(buf); continue; }   /* the same string from another pair */
        if (!sp_push(final, buf, la + lb, -(float)final->n)) { moelm_free(buf); st = MOELM_ERR_NOMEM; goto out; }
        int a = p->a, b = p->b, nchars = p->nchars;
        int sym = sym_get(&B, buf, la + lb, nchars);
        moelm_free(buf);
        if (sym < 0) { st = MOELM_ERR_NOMEM; goto out; }
        p = &B.pairs[e.pair];
        iter++;
        /* replace a b -> sym in every word holding the pair, updating pair counts */
        int nw = p->nw;
        int32_t *wlist = moelm_malloc((size_t)(nw ? nw : 1) * sizeof *wlist);
        if (!wlist) { st = MOELM_ERR_NOMEM; goto out; }
        memcpy(wlist, p->words, (size_t)nw * sizeof *wlist);
        for (int q = 0; q < nw; q++) {
            int w = wlist[q];
            if (stamp[w] == iter) continue;
            stamp[w] = iter;
            int *s = ws[w], n = wl[w];
            int has = 0;
            for (int i = 0; i + 1 < n; i++) if (s[i] == a && s[i + 1] == b) { has = 1; break; }
            if (!has) continue;
            double f = c->wfreq[w];
            if (tcap < (size_t)(4 * n + 8)) { tcap = (size_t)(4 * n + 8); moelm_free(touched); touched = moelm_malloc(tcap * sizeof *touched); if (!touched) { moelm_free(wlist); st = MOELM_ERR_NOMEM; goto out; } }
            int nt = 0;
            for (int i = 0; i + 1 < n; i++) pair_add(&B, s[i], s[i + 1], -f, -1, touched, &nt);
            int m = 0;
            for (int i = 0; i < n;) {
                if (i + 1 < n && s[i] == a && s[i + 1] == b) { s[m++] = sym; i += 2; }
                else s[m++] = s[i++];
            }
            wl[w] = m;
            for (int i = 0; i + 1 < m; i++) pair_add(&B, s[i], s[i + 1], f, (s[i] == sym || s[i + 1] == sym) ? w : -1, touched, &nt);
            for (int k = 0; k < nt; k++) {
                BPair *t = &B.pairs[touched[k]];
                if (t->freq > 0 && !t->banned) hpush(&B, (HEnt){ t->freq, touched[k] });
            }
        }
        moelm_free(wlist);
        if (B.oom) { st = MOELM_ERR_NOMEM; goto out; }
        if (B.hn > 8 * (B.np + 1024)) {
            /* drop stale heap entries now and then */
            size_t k = 0;
            for (size_t i = 0; i < B.hn; i++) { HEnt h = B.heap[i]; if (!B.pairs[h.pair].banned && B.pairs[h.pair].freq == h.freq) B.heap[k++] = h; }
            size_t nn = k; B.hn = 0;
            HEnt *old = B.heap; B.heap = NULL; B.hcap = 0;
            for (size_t i = 0; i < nn; i++) hpush(&B, old[i]);
            moelm_free(old);
        }
    }
    for (size_t r = 0; r < c->nreq; r++) {
        char b[4]; size_t l = put_utf8(c->req[r].c, b);
        if (!sp_push(final, b, l, -(float)final->n)) { st = MOELM_ERR_NOMEM; goto out; }
    }
out:
    if (ws) for (size_t w = 0; w < W; w++) moelm_free(ws[w]);
    moelm_free(ws); moelm_free(wl); moelm_free(stamp); moelm_free(touched);
    for (size_t k = 0; k < B.np; k++) moelm_free(B.pairs[k].words);
    moelm_free(B.pairs); moelm_free(B.pkey); moelm_free(B.pslot); moelm_free(B.heap);
    moelm_free(B.sym_chars); st_free(&B.sym); st_free(&done);
    return st;
}

/* ---- driver --------------------------------------------------------------------------------------- */

typedef struct { char *s; int type; } Meta;

static int split_list(const char *list, Meta *m, int n, int max, int type) {
    if (!list) return n;
    const char *p = list;
    while (*p && n < max) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l) {
            m[n].s = moelm_malloc(l + 1);
            if (!m[n].s) return -1;
            memcpy(m[n].s, p, l); m[n].s[l] = 0;
            m[n].type = type; n++;
        }
        if (!e) break;
        p = e + 1;
    }
    return n;
}

moelm_status spm_train(Tokenizer **out, const char *const *texts, const size_t *lens, int ntexts, const SpmTrainOptions *o) {
    *out = NULL;
    if (o->model_type != TOK_UNIGRAM && o->model_type != TOK_BPE)
        return moelm_fail(MOELM_ERR_CONFIG, "tokenizer train: model_type must be unigram or bpe here");
    if (o->vocab_size < 4) return moelm_fail(MOELM_ERR_CONFIG, "tokenizer train: vocab_size %d too small", o->vocab_size);
    if (o->character_coverage <= 0 || o->character_coverage > 1)
        return moelm_fail(MOELM_ERR_CONFIG, "tokenizer train: character_coverage %g not in (0, 1]", o->character_coverage);
    if (o->unk_id < 0) return moelm_fail(MOELM_ERR_CONFIG, "tokenizer train: unk_id must be >= 0");
    SpmNormSpec ns;
    memset(&ns, 0, sizeof ns);
    ns.add_dummy_prefix = o->add_dummy_prefix;
    ns.remove_extra_whitespaces = o->remove_extra_whitespaces;
    ns.escape_whitespaces = 1;
    moelm_status st = MOELM_OK;
    if (strcmp(o->normalization_rule_name, "identity") != 0 && !o->charsmap)
        return moelm_fail(MOELM_ERR_CONFIG, "tokenizer train: normalization rule \"%s\" needs its precompiled charsmap "
                          "(moelm embeds none; use identity, or --normalization_charsmap_from MODEL)", o->normalization_rule_name);
    if (o->charsmap) {
        ns.charsmap = moelm_malloc(o->charsmap_len);
        if (!ns.charsmap) return MOELM_ERR_NOMEM;
        memcpy(ns.charsmap, o->charsmap, o->charsmap_len);
        ns.charsmap_len = o->charsmap_len;
        if ((st = spm_norm_parse_charsmap(&ns, "charsmap"))) { moelm_free(ns.charsmap); return st; }
    }
    /* meta pieces: unk/bos/eos/pad at their ids, then control and user-defined symbols, then bytes */
    Meta meta[4096 + 256 + 8];
    int nm = 0;
    memset(meta, 0, sizeof meta);
    int special[4] = { o->unk_id, o->bos_id, o->eos_id, o->pad_id };
    const char *sname[4] = { "<unk>", "<s>", "</s>", "<pad>" };
    int stype[4] = { SPM_UNKNOWN, SPM_CONTROL, SPM_CONTROL, SPM_CONTROL };
    Meta extra[4096];
    int ne = 0;
    memset(extra, 0, sizeof extra);
    ne = split_list(o->control_symbols, extra, ne, 4000, SPM_CONTROL);
    if (ne >= 0) ne = split_list(o->user_defined_symbols, extra, ne, 4000, SPM_USER_DEFINED);
    Corpus corp;
    memset(&corp, 0, sizeof corp);
    SPVec final = {0};
    Tokenizer *t = NULL;
    if (ne < 0) { st = MOELM_ERR_NOMEM; goto out; }
    {
        int nspecial = 0;
        for (int k = 0; k < 4; k++) if (special[k] >= 0) nspecial++;
        int total = nspecial + ne + (o->byte_fallback ? 256 : 0);
        for (int k = 0; k < 4; k++) if (special[k] >= total) { st = moelm_fail(MOELM_ERR_CONFIG, "tokenizer train: %s id %d is not in [0, %d)", sname[k], special[k], total); goto out; }
        for (int k = 0; k < 4; k++) for (int j = k + 1; j < 4; j++)
            if (special[k] >= 0 && special[k] == special[j]) { st = moelm_fail(MOELM_ERR_CONFIG, "tokenizer train: %s and %s share id %d", sname[k], sname[j], special[k]); goto out; }
        int e = 0, b = 0;
        for (int id = 0; id < total; id++) {
            int k;
            for (k = 0; k < 4; k++) if (special[k] == id) break;
            if (k < 4) { meta[id].s = moelm_strdup(sname[k]); meta[id].type = stype[k]; }
            else if (e < ne) { meta[id] = extra[e]; extra[e].s = NULL; e++; }
            else { char buf[16]; snprintf(buf, sizeof buf, "<0x%02X>", (unsigned)(b++ & 0xFF)); meta[id].s = moelm_strdup(buf); meta[id].type = SPM_BYTE; }
            if (!meta[id].s) { st = MOELM_ERR_NOMEM; goto out; }
        }
        nm = total;
    }
    if (o->vocab_size <= nm) { st = moelm_fail(MOELM_ERR_CONFIG, "tokenizer train: vocab_size %d leaves no room after %d special pieces", o->vocab_size, nm); goto out; }
    {
        char *mp[4096 + 256 + 8];
        for (int i = 0; i < nm; i++) mp[i] = meta[i].s;
        if ((st = load_corpus(&corp, texts, lens, ntexts, &ns, o, mp, nm))) goto out;
    }
    /* as sentencepiece (TrainerInterface): every required character is a piece, so they and the
     * meta pieces must fit; otherwise the unigram pruning could never reach its target and BPE
     * would end far above vocab_size */
    if ((long)corp.nreq + nm > o->vocab_size) {
        st = moelm_fail(MOELM_ERR_CONFIG, "tokenizer train: vocab_size %d is smaller than the %zu required characters "
                        "(character_coverage %g) plus %d meta pieces; raise the vocabulary size or lower character_coverage",
                        o->vocab_size, corp.nreq, o->character_coverage, nm);
        goto out;
    }
    int vocab_left = o->vocab_size - nm;
    if (o->model_type == TOK_UNIGRAM) st = unigram_train(&corp, o, vocab_left, &final);
    else st = bpe_train(&corp, o, vocab_left, &final);
    if (st) goto out;
    if (o->hard_vocab_limit && (int)final.n < vocab_left) {
        st = moelm_fail(MOELM_ERR_CONFIG, "tokenizer train: vocabulary size is too high (%d); the corpus gives at most %d; "
                        "use a smaller --vocab_size or --hard_vocab_limit=false", o->vocab_size, (int)final.n + nm);
        goto out;
    }
    /* a user-defined or control symbol also learned as a piece keeps its meta entry only */
    size_t kept = 0;
    for (size_t i = 0; i < final.n; i++) {
        int dup = 0;
        for (int k = 0; k < nm && !dup; k++) dup = !strcmp(meta[k].s, final.v[i].s);
        if (dup) { moelm_free(final.v[i].s); continue; }
        final.v[kept++] = final.v[i];
    }
    final.n = kept;
    t = tok_alloc(o->model_type, nm + (int)final.n);
    if (!t) { st = MOELM_ERR_NOMEM; goto out; }
    for (int i = 0; i < nm && !st; i++) st = tok_set_piece(t, i, meta[i].s, strlen(meta[i].s), 0.0f, meta[i].type);
    for (size_t i = 0; i < final.n && !st; i++)
        st = tok_set_piece(t, nm + (int)i, final.v[i].s, final.v[i].len, final.v[i].score, SPM_NORMAL);
    if (st) goto out;
    t->norm = ns; memset(&ns, 0, sizeof ns);
    t->norm.name = moelm_strdup(o->normalization_rule_name);
    t->denorm.name = moelm_strdup("");
    t->has_denorm = 0;
    t->unk_surface = moelm_strdup(" \xE2\x81\x87 ");
    t->byte_fallback = o->byte_fallback;
    t->treat_ws_as_suffix = o->treat_whitespace_as_suffix;
    t->unk_id = o->unk_id;
    t->bos_id = o->bos_id; t->eos_id = o->eos_id; t->pad_id = o->pad_id;
    if (!t->norm.name || !t->denorm.name || !t->unk_surface) { st = MOELM_ERR_NOMEM; goto out; }
    if ((st = spm_build_trainer_spec(o, &t->trainer_raw, &t->trainer_raw_len))) goto out;
    if ((st = tok_finish(t, "tokenizer train"))) goto out;
    st = spm_prepare(t, "tokenizer train");
out:
    for (int i = 0; i < nm; i++) moelm_free(meta[i].s);
    for (int i = 0; i < ne; i++) moelm_free(extra[i].s);
    corpus_free(&corp);
    sp_free(&final);
    moelm_free(ns.charsmap); moelm_free(ns.trie_copy); moelm_free((void *)ns.normalized);
    if (st) { tokenizer_free(t); return st; }
    *out = t;
    return MOELM_OK;
}

static moelm_status train_spm(Tokenizer **out, const char *text, size_t n, TokenizerKind kind, int vocab_size, int bytes) {
    SpmTrainOptions o;
    spm_train_options_default(&o);
    o.model_type = kind;
    o.vocab_size = vocab_size;
    o.byte_fallback = bytes;
    return spm_train(out, &text, &n, 1, &o);
}

moelm_status tokenizer_train_spm(Tokenizer **out, const char *text, size_t n, TokenizerKind kind, int vocab_size) {
    return train_spm(out, text, n, kind, vocab_size, 0);
}

moelm_status tokenizer_train_spm_bytes(Tokenizer **out, const char *text, size_t n, TokenizerKind kind, int vocab_size) {
    return train_spm(out, text, n, kind, vocab_size, 1);
}
