/* tokenizer.c: the Tokenizer handle, the word and char vocabularies, moelm's vocabulary file format,
 * and dispatch to the SentencePiece code (spm_*.c).
 *
 * Word/char vocabulary file ("MOELMVOC"), all integers little-endian:
 *   magic[8] "MOELMVOC" | u32 version (1) | u32 kind (0 word, 1 char) | u32 V |
 *   V x (u32 len | len bytes) | u32 crc32 of every preceding byte
 * Invariants: piece ids are dense 0..V-1, pieces are distinct and never contain NUL;
 * word/char id 0 is "<unk>"; word id 1 is "<eos>".
 */
#define _POSIX_C_SOURCE 200809L
#include "tokenizer/tok_internal.h"
#include "io/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define VOC_MAGIC "MOELMVOC"
#define VOC_VERSION 1u

/* ---- handle ---------------------------------------------------------------------------------- */

Tokenizer *tok_alloc(TokenizerKind kind, int V) {
    Tokenizer *t = moelm_calloc(1, sizeof *t);
    if (!t) return NULL;
    t->kind = kind;
    t->V = V;
    t->unk_id = t->bos_id = t->eos_id = t->pad_id = -1;
    t->piece = moelm_calloc((size_t)(V > 0 ? V : 1), sizeof *t->piece);
    t->plen = moelm_calloc((size_t)(V > 0 ? V : 1), sizeof *t->plen);
    t->score = moelm_calloc((size_t)(V > 0 ? V : 1), sizeof *t->score);
    t->type = moelm_calloc((size_t)(V > 0 ? V : 1), sizeof *t->type);
    for (int i = 0; i < 256; i++) t->byte_id[i] = -1;
    if (!t->piece || !t->plen || !t->score || !t->type) { tokenizer_free(t); return NULL; }
    return t;
}

void tokenizer_free(Tokenizer *t) {
    if (!t) return;
    if (t->piece) for (int i = 0; i < t->V; i++) moelm_free(t->piece[i]);
    if (t->sent) for (int i = 0; i < t->n_sent; i++) moelm_free(t->sent[i]);
    moelm_free(t->sent);
    moelm_free(t->piece);
    moelm_free(t->plen);
    moelm_free(t->score);
    moelm_free(t->type);
    moelm_free(t->map);
    spm_free_fields(t);
    moelm_free(t);
}

moelm_status tok_set_piece(Tokenizer *t, int id, const char *s, size_t len, float score, int type) {
    CHECK(id >= 0 && id < t->V);
    char *p = moelm_malloc(len + 1);
    if (!p) return MOELM_ERR_NOMEM;
    memcpy(p, s, len);
    p[len] = 0;
    moelm_free(t->piece[id]);
    t->piece[id] = p;
    t->plen[id] = (uint32_t)len;
    t->score[id] = score;
    t->type[id] = (uint8_t)type;
    return MOELM_OK;
}

static uint64_t str_hash(const char *s, size_t n) { return hash_fnv1a64(s, n); }

int tok_lookup(const Tokenizer *t, const char *s, size_t len) {
    if (!t->map) return -1;
    size_t mask = t->map_cap - 1;
    for (size_t h = (size_t)str_hash(s, len) & mask;; h = (h + 1) & mask) {
        int32_t id = t->map[h];
        if (id < 0) return -1;
        if (t->plen[id] == len && memcmp(t->piece[id], s, len) == 0) return id;
    }
}

uint64_t tok_compute_hash(const Tokenizer *t) {
    /* FNV-1a over kind, then each piece with its score and type, then the normaliser. */
    uint64_t h = 1469598103934665603ull;
#define MIX(p, n) do { const uint8_t *_q = (const uint8_t *)(p); for (size_t _i = 0; _i < (n); _i++) { h ^= _q[_i]; h *= 1099511628211ull; } } while (0)
    uint32_t k = (uint32_t)t->kind;
    MIX(&k, 4);
    for (int i = 0; i < t->V; i++) {
        MIX(&t->plen[i], 4);
        MIX(t->piece[i], t->plen[i]);
        MIX(&t->score[i], 4);
        MIX(&t->type[i], 1);
    }
    if (t->kind == TOK_UNIGRAM || t->kind == TOK_BPE) {
        MIX(t->norm.name, strlen(t->norm.name));
        if (t->norm.charsmap) MIX(t->norm.charsmap, t->norm.charsmap_len);
        int f[5] = { t->norm.add_dummy_prefix, t->norm.remove_extra_whitespaces, t->norm.escape_whitespaces,
                     t->byte_fallback, t->treat_ws_as_suffix };
        MIX(f, sizeof f);
    }
#undef MIX
    return h;
}

moelm_status tok_finish(Tokenizer *t, const char *what) {
    size_t cap = 16;
    while (cap < (size_t)t->V * 2) cap <<= 1;
    moelm_free(t->map);
    t->map = moelm_malloc(cap * sizeof *t->map);
    if (!t->map) return MOELM_ERR_NOMEM;
    t->map_cap = cap;
    memset(t->map, 0xff, cap * sizeof *t->map);
    for (int i = 0; i < t->V; i++) {
        if (!t->piece[i]) return moelm_fail(MOELM_ERR_FORMAT, "%s: piece %d is missing", what, i);
        size_t mask = cap - 1, h = (size_t)str_hash(t->piece[i], t->plen[i]) & mask;
        for (;; h = (h + 1) & mask) {
            int32_t id = t->map[h];
            if (id < 0) { t->map[h] = i; break; }
            if (t->plen[id] == t->plen[i] && memcmp(t->piece[id], t->piece[i], t->plen[i]) == 0)
                return moelm_fail(MOELM_ERR_FORMAT, "%s: duplicate piece \"%.64s\" (ids %d and %d)", what,
                                  t->piece[i], (int)id, i);
        }
    }
    t->hash = tok_compute_hash(t);
    return MOELM_OK;
}

TokenizerKind tokenizer_kind(const Tokenizer *t) { return t->kind; }
int tokenizer_vocab_size(const Tokenizer *t) { return t->V + t->n_sent; }
uint64_t tokenizer_hash(const Tokenizer *t) { return t->hash; }
int tokenizer_eos_id(const Tokenizer *t) { return t->eos_id; }
int tokenizer_unk_id(const Tokenizer *t) { return t->unk_id; }
int tokenizer_bos_id(const Tokenizer *t) { return t->bos_id; }
float tokenizer_piece_score(const Tokenizer *t, int id) { CHECK(id >= 0 && id < t->V); return t->score[id]; }
int tokenizer_piece_type(const Tokenizer *t, int id) { CHECK(id >= 0 && id < t->V); return t->type[id]; }
int tokenizer_adds_space_prefix(const Tokenizer *t) {
    return (t->kind == TOK_UNIGRAM || t->kind == TOK_BPE) && t->norm.add_dummy_prefix;
}
int tokenizer_byte_fallback(const Tokenizer *t) { return t->byte_fallback; }
int tokenizer_removes_extra_spaces(const Tokenizer *t) {
    return (t->kind == TOK_UNIGRAM || t->kind == TOK_BPE) && t->norm.remove_extra_whitespaces;
}
const char *tokenizer_piece(const Tokenizer *t, int id) {
    if (id >= t->V && id < t->V + t->n_sent) return t->sent[id - t->V];
    return (id >= 0 && id < t->V) ? t->piece[id] : NULL;
}
int tokenizer_piece_id(const Tokenizer *t, const char *piece) {
    int id = tok_sentinel_lookup(t, piece, strlen(piece));
    return id >= 0 ? id : tok_lookup(t, piece, strlen(piece));
}

/* ---- UTF-8 ------------------------------------------------------------------------------------ */

static int is_trail(uint8_t c) { return (c & 0xC0) == 0x80; }
static int valid_cp(uint32_t c) { return c < 0xD800 || (c >= 0xE000 && c <= 0x10FFFF); }

uint32_t tok_utf8_decode(const char *s, size_t n, size_t *mblen) {
    const uint8_t *b = (const uint8_t *)s;
    if (b[0] < 0x80) { *mblen = 1; return b[0]; }
    if (n >= 2 && (b[0] & 0xE0) == 0xC0) {
        uint32_t c = ((uint32_t)(b[0] & 0x1F) << 6) | (b[1] & 0x3F);
        if (is_trail(b[1]) && c >= 0x80 && valid_cp(c)) { *mblen = 2; return c; }
    } else if (n >= 3 && (b[0] & 0xF0) == 0xE0) {
        uint32_t c = ((uint32_t)(b[0] & 0x0F) << 12) | ((uint32_t)(b[1] & 0x3F) << 6) | (b[2] & 0x3F);
        if (is_trail(b[1]) && is_trail(b[2]) && c >= 0x800 && valid_cp(c)) { *mblen = 3; return c; }
    } else if (n >= 4 && (b[0] & 0xF8) == 0xF0) {
        uint32_t c = ((uint32_t)(b[0] & 0x07) << 18) | ((uint32_t)(b[1] & 0x3F) << 12) |
                     ((uint32_t)(b[2] & 0x3F) << 6) | (b[3] & 0x3F);
        if (is_trail(b[1]) && is_trail(b[2]) && is_trail(b[3]) && c >= 0x10000 && valid_cp(c)) { *mblen = 4; return c; }
    }
    *mblen = 1;
    return 0xFFFD;
}

int tok_utf8_valid_prefix(const char *s, size_t n, size_t *mblen) {
    uint32_t c = tok_utf8_decode(s, n, mblen);
    return c != 0xFFFD || *mblen == 3;
}

/* ---- files ------------------------------------------------------------------------------------ */

moelm_status tok_read_file(const char *path, uint8_t **data, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return moelm_fail(MOELM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    uint8_t *buf = moelm_malloc(cap);
    if (!buf) { fclose(f); return MOELM_ERR_NOMEM; }
    for (;;) {
        if (len == cap) {
            uint8_t *nb = moelm_realloc(buf, cap * 2);
            if (!nb) { moelm_free(buf); fclose(f); return MOELM_ERR_NOMEM; }
            buf = nb; cap *= 2;
        }
        size_t r = fread(buf + len, 1, cap - len, f);
        len += r;
        if (r == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) { moelm_free(buf); return moelm_fail(MOELM_ERR_IO, "%s: read error", path); }
    *data = buf;
    *n = len;
    return MOELM_OK;
}

/* The fileio protocol (tmp, fsync, rename, directory fsync), so that tests can inject failures. */
moelm_status tok_write_atomic(const char *path, const void *data, size_t n) {
    return file_write_atomic(path, data, n);
}

/* ---- word ------------------------------------------------------------------------------------- */

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f' || c == '\n'; }

size_t text_count_words(const char *text, size_t n) {
    size_t words = 0, i = 0;
    int line_has_content = 0;
    while (i < n) {
        if (text[i] == '\n') { words++; i++; line_has_content = 0; continue; }
        if (is_ws(text[i])) { i++; line_has_content = 1; continue; }
        while (i < n && !is_ws(text[i])) i++;
        words++;
        line_has_content = 1;
    }
    if (line_has_content) words++;   /* the last line has no '\n': it still ends */
    return words;
}

typedef struct { const char *s; uint32_t len; uint32_t count; } WordCount;

static int wc_cmp(const void *a, const void *b) {
    const WordCount *x = a, *y = b;
    if (x->count != y->count) return x->count > y->count ? -1 : 1;
    size_t m = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->s, y->s, m);
    if (c) return c;
    return x->len < y->len ? -1 : (x->len > y->len);
}

moelm_status tokenizer_build_word(Tokenizer **out, const char *text, size_t n, int max_vocab) {
    *out = NULL;
    if (max_vocab < 2) return moelm_fail(MOELM_ERR_CONFIG, "word vocabulary: max_vocab %d < 2", max_vocab);
    /* count distinct words with an open-addressing table of WordCount */
    size_t cap = 1024, used = 0;
    WordCount *tab = moelm_calloc(cap, sizeof *tab);
    if (!tab) return MOELM_ERR_NOMEM;
    size_t i = 0;
    while (i < n) {
        if (is_ws(text[i])) { i++; continue; }
        size_t b = i;
        while (i < n && !is_ws(text[i])) i++;
        size_t len = i - b;
        if ((len == 5 && !memcmp(text + b, "<unk>", 5)) || (len == 5 && !memcmp(text + b, "<eos>", 5))) continue;
        if (len > UINT32_MAX) continue;
        if ((used + 1) * 2 > cap) {
            size_t ncap = cap * 2;
            WordCount *nt = moelm_calloc(ncap, sizeof *nt);
            if (!nt) { moelm_free(tab); return MOELM_ERR_NOMEM; }
            for (size_t k = 0; k < cap; k++) if (tab[k].s) {
                size_t h = (size_t)str_hash(tab[k].s, tab[k].len) & (ncap - 1);
                while (nt[h].s) h = (h + 1) & (ncap - 1);
                nt[h] = tab[k];
            }
            moelm_free(tab);
            tab = nt; cap = ncap;
        }
        size_t h = (size_t)str_hash(text + b, len) & (cap - 1);
        while (tab[h].s && !(tab[h].len == len && !memcmp(tab[h].s, text + b, len))) h = (h + 1) & (cap - 1);
        if (!tab[h].s) { tab[h].s = text + b; tab[h].len = (uint32_t)len; used++; }
        tab[h].count++;
    }
    size_t m = 0;
    for (size_t k = 0; k < cap; k++) if (tab[k].s) tab[m++] = tab[k];
    qsort(tab, m, sizeof *tab, wc_cmp);
    size_t keep = m < (size_t)max_vocab - 2 ? m : (size_t)max_vocab - 2;
    Tokenizer *t = tok_alloc(TOK_WORD, (int)keep + 2);
    moelm_status st = t ? MOELM_OK : MOELM_ERR_NOMEM;
    if (!st) st = tok_set_piece(t, 0, "<unk>", 5, 0, SPM_UNKNOWN);
    if (!st) st = tok_set_piece(t, 1, "<eos>", 5, 0, SPM_CONTROL);
    for (size_t k = 0; k < keep && !st; k++) st = tok_set_piece(t, (int)k + 2, tab[k].s, tab[k].len, 0, SPM_NORMAL);
    moelm_free(tab);
    if (!st) { t->unk_id = 0; t->eos_id = 1; st = tok_finish(t, "word vocabulary"); }
    if (st) { tokenizer_free(t); return st; }
    *out = t;
    return MOELM_OK;
}

/* ---- char ------------------------------------------------------------------------------------- */

static int u32_cmp(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static size_t utf8_put(uint32_t c, char *o) {
    if (c < 0x80) { o[0] = (char)c; return 1; }
    if (c < 0x800) { o[0] = (char)(0xC0 | (c >> 6)); o[1] = (char)(0x80 | (c & 0x3F)); return 2; }
    if (c < 0x10000) { o[0] = (char)(0xE0 | (c >> 12)); o[1] = (char)(0x80 | ((c >> 6) & 0x3F)); o[2] = (char)(0x80 | (c & 0x3F)); return 3; }
    o[0] = (char)(0xF0 | (c >> 18)); o[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((c >> 6) & 0x3F)); o[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

/* Strict UTF-8 decode for the char vocabulary: returns 0 and *mblen = 1 on invalid bytes. */
static int char_decode(const char *s, size_t n, uint32_t *cp, size_t *mblen) {
    uint32_t c = tok_utf8_decode(s, n, mblen);
    if (c == 0xFFFD && *mblen != 3) return 0;
    *cp = c;
    return 1;
}

moelm_status tokenizer_build_char(Tokenizer **out, const char *text, size_t n) {
    *out = NULL;
    /* a bitmap over the code space finds the distinct code points in one pass */
    size_t words = (0x110000 + 63) / 64;
    uint64_t *seen = moelm_calloc(words, sizeof *seen);
    if (!seen) return MOELM_ERR_NOMEM;
    size_t distinct = 0;
    for (size_t i = 0; i < n;) {
        uint32_t c; size_t ml;
        if (char_decode(text + i, n - i, &c, &ml) && !(seen[c >> 6] >> (c & 63) & 1)) {
            seen[c >> 6] |= 1ull << (c & 63);
            distinct++;
        }
        i += ml;
    }
    Tokenizer *t = tok_alloc(TOK_CHAR, (int)distinct + 1);
    moelm_status st = t ? MOELM_OK : MOELM_ERR_NOMEM;
    if (!st) st = tok_set_piece(t, 0, "<unk>", 5, 0, SPM_UNKNOWN);
    int id = 1;
    for (uint32_t c = 0; c < 0x110000 && !st; c++) if (seen[c >> 6] >> (c & 63) & 1) {
        char b[4];
        size_t l = utf8_put(c, b);
        st = tok_set_piece(t, id++, b, l, 0, SPM_NORMAL);
    }
    moelm_free(seen);
    (void)u32_cmp;
    if (!st) { t->unk_id = 0; st = tok_finish(t, "char vocabulary"); }
    if (st) { tokenizer_free(t); return st; }
    *out = t;
    return MOELM_OK;
}

/* ---- encode / decode -------------------------------------------------------------------------- */

typedef struct { int *v; size_t n, cap; } IdVec;

static int idvec_push(IdVec *a, int id) {
    if (a->n == a->cap) {
        size_t nc = a->cap ? a->cap * 2 : 1024;
        int *nv = moelm_realloc(a->v, nc * sizeof *nv);
        if (!nv) return 0;
        a->v = nv; a->cap = nc;
    }
    a->v[a->n++] = id;
    return 1;
}

moelm_status tokenizer_encode(const Tokenizer *t, const char *text, size_t n, int **ids, size_t *count) {
    return t->n_sent ? tok_encode_sentinels(t, text, n, ids, count) : tok_encode_plain(t, text, n, ids, count);
}

moelm_status tok_encode_plain(const Tokenizer *t, const char *text, size_t n, int **ids, size_t *count) {
    *ids = NULL;
    *count = 0;
    IdVec a = {0};
    if (t->kind == TOK_WORD) {
        size_t i = 0;
        int line_open = 0;
        while (i < n) {
            if (text[i] == '\n') { if (!idvec_push(&a, t->eos_id)) goto nomem; i++; line_open = 0; continue; }
            if (is_ws(text[i])) { i++; line_open = 1; continue; }
            size_t b = i;
            while (i < n && !is_ws(text[i])) i++;
            int id = tok_lookup(t, text + b, i - b);
            if (!idvec_push(&a, id < 0 ? t->unk_id : id)) goto nomem;
            line_open = 1;
        }
        if (line_open && !idvec_push(&a, t->eos_id)) goto nomem;
    } else if (t->kind == TOK_CHAR) {
        for (size_t i = 0; i < n;) {
            uint32_t c; size_t ml;
            int id = -1;
            if (char_decode(text + i, n - i, &c, &ml)) id = tok_lookup(t, text + i, ml);
            if (!idvec_push(&a, id < 0 ? t->unk_id : id)) goto nomem;
            i += ml;
        }
    } else {
        /* The unknown piece's own text ("<unk>", which PTB spells out) is the unknown token, as the
         * word tokenizer reads it, not "<", "unk", ">" (that decode as " \u2047 unk \u2047 "); training left it
         * out of the pieces (replace_meta). tokenizer_encode_line stays sentencepiece's. */
        const char *unk = t->unk_id >= 0 ? tokenizer_piece(t, t->unk_id) : NULL;
        size_t ul = unk ? strlen(unk) : 0;
        for (size_t i = 0; i < n;) {
            const char *nl = memchr(text + i, '\n', n - i);
            size_t e = nl ? (size_t)(nl - text) : n;
            while (i < e) {
                const char *u = ul ? memmem(text + i, e - i, unk, ul) : NULL;
                size_t se = u ? (size_t)(u - text) : e;
                int *lid; size_t lc;
                moelm_status st = tokenizer_encode_line(t, text + i, se - i, &lid, &lc);
                if (st) { moelm_free(a.v); return st; }
                for (size_t k = 0; k < lc; k++) if (!idvec_push(&a, lid[k])) { moelm_free(lid); goto nomem; }
                moelm_free(lid);
                if (u && !idvec_push(&a, t->unk_id)) goto nomem;
                i = u ? se + ul : e;
            }
            if (t->eos_id >= 0 && !idvec_push(&a, t->eos_id)) goto nomem;
            i = e + 1;
        }
    }
    if (!a.v) { a.v = moelm_malloc(sizeof(int)); if (!a.v) goto nomem; }
    *ids = a.v;
    *count = a.n;
    return MOELM_OK;
nomem:
    moelm_free(a.v);
    return moelm_fail(MOELM_ERR_NOMEM, "tokenizer: out of memory encoding %zu bytes", n);
}

moelm_status tokenizer_decode(const Tokenizer *t, const int *ids, size_t count, char **text) {
    return t->n_sent ? tok_decode_sentinels(t, ids, count, text) : tok_decode_plain(t, ids, count, text);
}

moelm_status tok_decode_plain(const Tokenizer *t, const int *ids, size_t count, char **text) {
    *text = NULL;
    if (t->kind == TOK_UNIGRAM || t->kind == TOK_BPE) {
        /* split at eos ids: each run decodes as one line */
        size_t cap = 256, len = 0;
        char *o = moelm_malloc(cap);
        if (!o) return MOELM_ERR_NOMEM;
        size_t b = 0;
        for (size_t i = 0; i <= count; i++) {
            if (i < count && !(ids[i] == t->eos_id && t->eos_id >= 0)) continue;
            char *line;
            moelm_status st = tokenizer_decode_line(t, ids + b, i - b, &line);
            if (st) { moelm_free(o); return st; }
            size_t ll = strlen(line);
            if (len + ll + 2 > cap) {
                while (len + ll + 2 > cap) cap *= 2;
                char *no = moelm_realloc(o, cap);
                if (!no) { moelm_free(line); moelm_free(o); return MOELM_ERR_NOMEM; }
                o = no;
            }
            memcpy(o + len, line, ll);
            len += ll;
            moelm_free(line);
            if (i < count) o[len++] = '\n';
            b = i + 1;
        }
        o[len] = 0;
        *text = o;
        return MOELM_OK;
    }
    size_t total = 1;
    for (size_t i = 0; i < count; i++) {
        if (ids[i] < 0 || ids[i] >= t->V)
            return moelm_fail(MOELM_ERR_DATA, "tokenizer: id %d out of range [0, %d)", ids[i], t->V);
        total += t->plen[ids[i]] + 1;
    }
    char *o = moelm_malloc(total + 3 * count);
    if (!o) return MOELM_ERR_NOMEM;
    size_t len = 0;
    int at_line_start = 1;
    for (size_t i = 0; i < count; i++) {
        int id = ids[i];
        if (t->kind == TOK_WORD) {
            if (id == t->eos_id) { o[len++] = '\n'; at_line_start = 1; continue; }
            if (!at_line_start) o[len++] = ' ';
            memcpy(o + len, t->piece[id], t->plen[id]);
            len += t->plen[id];
            at_line_start = 0;
        } else {
            if (id == t->unk_id) { memcpy(o + len, "\xEF\xBF\xBD", 3); len += 3; continue; }
            memcpy(o + len, t->piece[id], t->plen[id]);
            len += t->plen[id];
        }
    }
    o[len] = 0;
    *text = o;
    return MOELM_OK;
}

/* ---- save / load ------------------------------------------------------------------------------ */

static void put_u32(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24); }
static uint32_t get_u32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

moelm_status tokenizer_save(const Tokenizer *t, const char *path) {
    uint8_t *buf = NULL;
    size_t n = 0;
    if (t->kind == TOK_UNIGRAM || t->kind == TOK_BPE) {
        moelm_status st = spm_serialize_model(t, &buf, &n);
        if (st) return st;
    } else {
        n = 8 + 12 + 4;
        for (int i = 0; i < t->V; i++) n += 4 + t->plen[i];
        buf = moelm_malloc(n);
        if (!buf) return MOELM_ERR_NOMEM;
        uint8_t *p = buf;
        memcpy(p, VOC_MAGIC, 8); p += 8;
        put_u32(p, VOC_VERSION); p += 4;
        put_u32(p, (uint32_t)t->kind); p += 4;
        put_u32(p, (uint32_t)t->V); p += 4;
        for (int i = 0; i < t->V; i++) {
            put_u32(p, t->plen[i]); p += 4;
            memcpy(p, t->piece[i], t->plen[i]); p += t->plen[i];
        }
        put_u32(p, crc32_update(0, buf, (size_t)(p - buf)));
    }
    moelm_status st = tok_write_atomic(path, buf, n);
    moelm_free(buf);
    return st;
}

static moelm_status load_vocab(Tokenizer **out, const uint8_t *b, size_t n, const char *path) {
    if (n < 24) return moelm_fail(MOELM_ERR_FORMAT, "%s: vocabulary file truncated (%zu bytes)", path, n);
    uint32_t crc = get_u32(b + n - 4);
    if (crc32_update(0, b, n - 4) != crc)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: vocabulary checksum mismatch (file corrupt or truncated)", path);
    uint32_t ver = get_u32(b + 8), kind = get_u32(b + 12), V = get_u32(b + 16);
    if (ver != VOC_VERSION) return moelm_fail(MOELM_ERR_FORMAT, "%s: vocabulary version %u, this moelm reads %u", path, ver, VOC_VERSION);
    if (kind != TOK_WORD && kind != TOK_CHAR) return moelm_fail(MOELM_ERR_FORMAT, "%s: bad vocabulary kind %u", path, kind);
    if (V < (kind == TOK_WORD ? 2u : 1u) || V > (n - 24) / 4)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: bad vocabulary size %u", path, V);
    Tokenizer *t = tok_alloc((TokenizerKind)kind, (int)V);
    if (!t) return MOELM_ERR_NOMEM;
    size_t off = 20, end = n - 4;
    moelm_status st = MOELM_OK;
    for (uint32_t i = 0; i < V && !st; i++) {
        if (end - off < 4) { st = moelm_fail(MOELM_ERR_FORMAT, "%s: piece %u truncated", path, i); break; }
        uint32_t l = get_u32(b + off); off += 4;
        if (l > end - off) { st = moelm_fail(MOELM_ERR_FORMAT, "%s: piece %u length %u past end of file", path, i, l); break; }
        if (memchr(b + off, 0, l)) { st = moelm_fail(MOELM_ERR_FORMAT, "%s: piece %u contains NUL", path, i); break; }
        int type = i == 0 ? SPM_UNKNOWN : (kind == TOK_WORD && i == 1) ? SPM_CONTROL : SPM_NORMAL;
        st = tok_set_piece(t, (int)i, (const char *)b + off, l, 0, type);
        off += l;
    }
    if (!st && off != end) st = moelm_fail(MOELM_ERR_FORMAT, "%s: %zu trailing bytes after the pieces", path, end - off);
    if (!st && strcmp(t->piece[0], "<unk>")) st = moelm_fail(MOELM_ERR_FORMAT, "%s: id 0 is not <unk>", path);
    if (!st && kind == TOK_WORD && strcmp(t->piece[1], "<eos>")) st = moelm_fail(MOELM_ERR_FORMAT, "%s: id 1 is not <eos>", path);
    if (!st) {
        t->unk_id = 0;
        if (kind == TOK_WORD) t->eos_id = 1;
        st = tok_finish(t, path);
    }
    if (st) { tokenizer_free(t); return st; }
    *out = t;
    return MOELM_OK;
}

moelm_status tokenizer_load(Tokenizer **out, const char *path) {
    *out = NULL;
    uint8_t *b;
    size_t n;
    char *raw;
    moelm_status st = file_read_all_limit(path, &raw, &n, TOK_MAX_MODEL_BYTES);
    if (st) return st;
    b = (uint8_t *)raw;
    if (n >= 8 && !memcmp(b, VOC_MAGIC, 8)) st = load_vocab(out, b, n, path);
    else st = spm_parse_model(out, b, n, path);
    moelm_free(b);
    return st;
}

moelm_status tokenizer_decode_piece(const Tokenizer *t, int id, char **text) {
    *text = NULL;
    if (id >= t->V && id < t->V + t->n_sent) {   /* a sentinel, set off by a space */
        *text = moelm_malloc(strlen(t->sent[id - t->V]) + 2);
        if (!*text) return MOELM_ERR_NOMEM;
        sprintf(*text, " %s", t->sent[id - t->V]);
        return MOELM_OK;
    }
    if (id < 0 || id >= t->V) return moelm_fail(MOELM_ERR_DATA, "tokenizer: id %d out of range [0, %d)", id, t->V);
    const char *p = t->piece[id];
    size_t n = t->plen[id];
    char *o = moelm_malloc(n + 8 + (t->unk_surface ? strlen(t->unk_surface) : 0));
    if (!o) return MOELM_ERR_NOMEM;
    size_t k = 0;
    int spm = t->kind == TOK_UNIGRAM || t->kind == TOK_BPE;
    if (t->kind == TOK_WORD && id == t->eos_id) o[k++] = '\n';
    else if (t->kind == TOK_CHAR && id == t->unk_id) { memcpy(o, "\xEF\xBF\xBD", 3); k = 3; }
    else if (spm && t->type[id] == SPM_CONTROL) k = 0;
    else if (spm && t->type[id] == SPM_UNKNOWN) { k = strlen(t->unk_surface); memcpy(o, t->unk_surface, k); }
    else if (spm && t->type[id] == SPM_BYTE) o[k++] = (char)strtol(p + 3, NULL, 16);
    else if (spm) {
        for (size_t i = 0; i < n;) {
            if (i + 3 <= n && !memcmp(p + i, "\xE2\x96\x81", 3)) { o[k++] = ' '; i += 3; }
            else o[k++] = p[i++];
        }
    } else { memcpy(o, p, n); k = n; }
    o[k] = 0;
    *text = o;
    return MOELM_OK;
}
