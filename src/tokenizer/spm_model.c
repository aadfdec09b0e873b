/* spm_model.c: SentencePiece .model files (protobuf ModelProto), read and written by hand.
 *
 * Reads: pieces {piece=1, score=2, type=3}, trainer_spec=2 (kept as raw bytes and written back; the
 * few fields encoding needs are parsed), normalizer_spec=3, denormalizer_spec=5. Other top-level
 * fields (self_test_data=4, extensions) are kept raw and written back. Unknown fields are skipped.
 * Every length is bounded by the bytes that remain; groups (wire types 3, 4) and wire types 6, 7
 * are errors. Never asserts on file contents.
 *
 * Invariants after spm_parse_model: exactly one UNKNOWN piece, no empty or duplicate pieces, pieces
 * are valid UTF-8 without NUL, byte pieces are spelled <0xNN> and, when byte_fallback is set, all
 * 256 exist.
 */
#include "tokenizer/tok_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- wire format reader ------------------------------------------------------------------------ */

typedef struct { const uint8_t *p, *end; } PbIn;

static int pb_varint(PbIn *in, uint64_t *v) {
    uint64_t r = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (in->p >= in->end) return 0;
        uint8_t b = *in->p++;
        r |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) { *v = r; return 1; }
    }
    return 0;
}

/* Reads one field header and its payload. For wire type 2, *data and *len hold the payload; for 0, *v;
 * for 1 and 5, *v holds the raw little-endian bits. Returns 1, 0 at a clean end, -1 on error
 * (message in err). */
static int pb_field(PbIn *in, uint32_t *field, int *wt, uint64_t *v, const uint8_t **data, size_t *len, const char **err) {
    if (in->p >= in->end) return 0;
    uint64_t key;
    if (!pb_varint(in, &key)) { *err = "truncated field key"; return -1; }
    *field = (uint32_t)(key >> 3);
    *wt = (int)(key & 7);
    if ((key >> 3) == 0 || (key >> 3) > 0x1FFFFFFF) { *err = "bad field number"; return -1; }
    switch (*wt) {
    case 0: if (!pb_varint(in, v)) { *err = "truncated varint"; return -1; } return 1;
    case 1:
        if (in->end - in->p < 8) { *err = "truncated 64-bit field"; return -1; }
        *v = 0; for (int i = 7; i >= 0; i--) *v = (*v << 8) | in->p[i];
        in->p += 8; return 1;
    case 5:
        if (in->end - in->p < 4) { *err = "truncated 32-bit field"; return -1; }
        *v = (uint64_t)in->p[0] | (uint64_t)in->p[1] << 8 | (uint64_t)in->p[2] << 16 | (uint64_t)in->p[3] << 24;
        in->p += 4; return 1;
    case 2: {
        uint64_t l;
        if (!pb_varint(in, &l)) { *err = "truncated length"; return -1; }
        if (l > (uint64_t)(in->end - in->p)) { *err = "length past end of message"; return -1; }
        *data = in->p; *len = (size_t)l; in->p += l; return 1;
    }
    default: *err = "unsupported wire type (group or invalid)"; return -1;
    }
}

static float bits_to_float(uint32_t b) { float f; memcpy(&f, &b, 4); return f; }

static int utf8_valid(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        size_t ml;
        uint32_t c = tok_utf8_decode((const char *)s + i, n - i, &ml);
        if (c == 0xFFFD && ml != 3) return 0;
        if (c == 0) return 0;   /* NUL: pieces are C strings */
        i += ml;
    }
    return 1;
}

static char *dup_bytes(const uint8_t *d, size_t n) {
    char *s = moelm_malloc(n + 1);
    if (!s) return NULL;
    memcpy(s, d, n);
    s[n] = 0;
    return s;
}

/* ---- TrainerSpec: the fields encoding needs ---------------------------------------------------- */

typedef struct {
    int model_type;                 /* 1 unigram, 2 bpe, 3 word, 4 char */
    int byte_fallback, treat_ws_as_suffix;
    char *unk_surface, *bos_piece, *eos_piece, *pad_piece;
} TrainerBits;

static int parse_trainer(const uint8_t *d, size_t n, TrainerBits *tb, const char **err) {
    PbIn in = { d, d + n };
    uint32_t f; int wt; uint64_t v; const uint8_t *data; size_t len;
    int r;
    while ((r = pb_field(&in, &f, &wt, &v, &data, &len, err)) == 1) {
        char **dst = NULL;
        if (f == 3 && wt == 0) tb->model_type = (int)v;
        else if (f == 35 && wt == 0) tb->byte_fallback = v != 0;
        else if (f == 24 && wt == 0) tb->treat_ws_as_suffix = v != 0;
        else if (f == 44 && wt == 2) dst = &tb->unk_surface;
        else if (f == 46 && wt == 2) dst = &tb->bos_piece;
        else if (f == 47 && wt == 2) dst = &tb->eos_piece;
        else if (f == 48 && wt == 2) dst = &tb->pad_piece;
        if (dst) {
            moelm_free(*dst);
            *dst = NULL;   /* an error below must not leave it dangling for the caller to free again */
            if (memchr(data, 0, len)) { *err = "trainer_spec string contains NUL"; return -1; }
            if (!(*dst = dup_bytes(data, len))) { *err = "out of memory"; return -1; }
        }
    }
    return r;
}

/* ---- NormalizerSpec ---------------------------------------------------------------------------- */

static void norm_init(SpmNormSpec *ns) {
    memset(ns, 0, sizeof *ns);
    ns->add_dummy_prefix = ns->remove_extra_whitespaces = ns->escape_whitespaces = 1;
}

static void norm_free(SpmNormSpec *ns) {
    moelm_free(ns->name);
    moelm_free(ns->charsmap);
    moelm_free(ns->trie_copy);
    moelm_free((void *)ns->normalized);
    moelm_free(ns->rule_tsv);
    norm_init(ns);
}

moelm_status spm_norm_parse_charsmap(SpmNormSpec *ns, const char *what) {
    moelm_free(ns->trie_copy);
    moelm_free((void *)ns->normalized);
    ns->trie_copy = NULL; ns->trie = NULL; ns->trie_units = 0; ns->normalized = NULL; ns->normalized_len = 0;
    if (!ns->charsmap || ns->charsmap_len == 0) return MOELM_OK;
    const uint8_t *b = ns->charsmap;
    size_t n = ns->charsmap_len;
    if (n < 4) return moelm_fail(MOELM_ERR_FORMAT, "%s: precompiled_charsmap truncated (%zu bytes)", what, n);
    uint32_t tsz = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    if (tsz > n - 4 || tsz % 4 != 0 || tsz == 0)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: precompiled_charsmap trie size %u does not fit its %zu bytes", what, tsz, n);
    ns->trie_units = tsz / 4;
    ns->trie_copy = moelm_malloc(tsz);
    size_t nl = n - 4 - tsz;
    char *norm = moelm_malloc(nl + 1);
    if (!ns->trie_copy || !norm) { moelm_free(norm); return MOELM_ERR_NOMEM; }
    for (size_t i = 0; i < ns->trie_units; i++) {
        const uint8_t *u = b + 4 + 4 * i;
        ns->trie_copy[i] = (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
    }
    memcpy(norm, b + 4 + tsz, nl);
    norm[nl] = 0;   /* every replacement string is NUL-terminated inside the copy */
    ns->trie = ns->trie_copy;
    ns->normalized = norm;
    ns->normalized_len = nl;
    return MOELM_OK;
}

static int parse_normalizer(const uint8_t *d, size_t n, SpmNormSpec *ns, const char **err) {
    PbIn in = { d, d + n };
    uint32_t f; int wt; uint64_t v; const uint8_t *data; size_t len;
    int r;
    while ((r = pb_field(&in, &f, &wt, &v, &data, &len, err)) == 1) {
        if (f == 1 && wt == 2) {
            moelm_free(ns->name);
            ns->name = NULL;
            if (memchr(data, 0, len)) { *err = "normalizer name contains NUL"; return -1; }
            if (!(ns->name = dup_bytes(data, len))) { *err = "out of memory"; return -1; }
        } else if (f == 2 && wt == 2) {
            moelm_free(ns->charsmap);
            ns->charsmap = NULL; ns->charsmap_len = 0;
            if (len) {
                if (!(ns->charsmap = moelm_malloc(len))) { *err = "out of memory"; return -1; }
                memcpy(ns->charsmap, data, len);
                ns->charsmap_len = len;
            }
        } else if (f == 3 && wt == 0) { ns->add_dummy_prefix = v != 0; ns->has_add_dummy_prefix = 1; }
        else if (f == 4 && wt == 0) { ns->remove_extra_whitespaces = v != 0; ns->has_remove_extra_whitespaces = 1; }
        else if (f == 5 && wt == 0) { ns->escape_whitespaces = v != 0; ns->has_escape_whitespaces = 1; }
        else if (f == 6 && wt == 2) {
            moelm_free(ns->rule_tsv);
            ns->rule_tsv = NULL;
            if (memchr(data, 0, len)) { *err = "normalization_rule_tsv contains NUL"; return -1; }
            if (!(ns->rule_tsv = dup_bytes(data, len))) { *err = "out of memory"; return -1; }
        }
    }
    return r;
}

/* ---- ModelProto --------------------------------------------------------------------------------- */

typedef struct { const uint8_t *piece; size_t len; float score; int type; } RawPiece;

void spm_free_fields(Tokenizer *t) {
    norm_free(&t->norm);
    norm_free(&t->denorm);
    moelm_free(t->norm.name);   /* norm_init leaves name NULL; harmless */
    moelm_free(t->trainer_raw);
    moelm_free(t->extra_raw);
    moelm_free(t->unk_surface);
    t->unk_surface = NULL;
    t->trainer_raw = t->extra_raw = NULL;
    trie_free(&t->trie);
    trie_free(&t->user_trie);
}

static int is_byte_piece(const char *s, size_t n, int *byte) {
    static const char hex[] = "0123456789ABCDEF";
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return 0;
    const char *a = strchr(hex, s[3]), *b = strchr(hex, s[4]);
    if (!a || !b || !s[3] || !s[4]) return 0;
    *byte = (int)((a - hex) * 16 + (b - hex));
    return 1;
}

moelm_status spm_parse_model(Tokenizer **out, const uint8_t *buf, size_t n, const char *path) {
    *out = NULL;
    const char *err = NULL;
    PbIn in = { buf, buf + n };
    uint32_t f; int wt; uint64_t v; const uint8_t *data; size_t len;
    size_t np = 0, cap = 0;
    RawPiece *rp = NULL;
    TrainerBits tb = { .model_type = 1 };
    const uint8_t *trainer = NULL, *normsp = NULL, *denormsp = NULL;
    size_t trainer_len = 0, norm_len = 0, denorm_len = 0;
    int have_norm = 0, have_denorm = 0, have_trainer = 0;
    uint8_t *extra = NULL;
    size_t extra_len = 0;
    moelm_status st = MOELM_OK;
    Tokenizer *t = NULL;
    int r;

    if (n == 0) return moelm_fail(MOELM_ERR_FORMAT, "%s: empty file (not a SentencePiece model)", path);
    extra = moelm_malloc(n);
    if (!extra) return MOELM_ERR_NOMEM;
    while ((r = pb_field(&in, &f, &wt, &v, &data, &len, &err)) == 1) {
        if (f == 1 && wt == 2) {
            RawPiece p = { NULL, 0, 0.0f, SPM_NORMAL };
            PbIn pin = { data, data + len };
            uint32_t pf; int pwt; uint64_t pv; const uint8_t *pd; size_t pl;
            int have_piece = 0;
            while ((r = pb_field(&pin, &pf, &pwt, &pv, &pd, &pl, &err)) == 1) {
                if (pf == 1 && pwt == 2) { p.piece = pd; p.len = pl; have_piece = 1; }
                else if (pf == 2 && pwt == 5) p.score = bits_to_float((uint32_t)pv);
                else if (pf == 3 && pwt == 0) p.type = (int)pv;
            }
            if (r < 0) { st = moelm_fail(MOELM_ERR_FORMAT, "%s: piece %zu: %s", path, np, err); goto done; }
            if (!have_piece || p.len == 0) { st = moelm_fail(MOELM_ERR_FORMAT, "%s: piece %zu is empty", path, np); goto done; }
            if (p.len > 4096) { st = moelm_fail(MOELM_ERR_FORMAT, "%s: piece %zu is %zu bytes long (limit 4096)", path, np, p.len); goto done; }
            if (!utf8_valid(p.piece, p.len)) { st = moelm_fail(MOELM_ERR_FORMAT, "%s: piece %zu is not valid UTF-8", path, np); goto done; }
            if (p.type < 1 || p.type > 6) { st = moelm_fail(MOELM_ERR_FORMAT, "%s: piece %zu has unknown type %d", path, np, p.type); goto done; }
            if (np == cap) {
                cap = cap ? cap * 2 : 1024;
                RawPiece *nr = moelm_realloc(rp, cap * sizeof *rp);
                if (!nr) { st = MOELM_ERR_NOMEM; goto done; }
                rp = nr;
            }
            rp[np++] = p;
            if (np > (1u << 24)) { st = moelm_fail(MOELM_ERR_FORMAT, "%s: more than 2^24 pieces", path); goto done; }
        } else if (f == 2 && wt == 2) { trainer = data; trainer_len = len; have_trainer = 1; }
        else if (f == 3 && wt == 2) { normsp = data; norm_len = len; have_norm = 1; }
        else if (f == 5 && wt == 2) { denormsp = data; denorm_len = len; have_denorm = 1; }
    }
    if (r < 0) { st = moelm_fail(MOELM_ERR_FORMAT, "%s: not a SentencePiece model (%s)", path, err); goto done; }
    /* second pass: copy the raw bytes of fields we do not interpret (self_test_data, unknown) */
    {
        PbIn in2 = { buf, buf + n };
        const uint8_t *before = in2.p;
        while (pb_field(&in2, &f, &wt, &v, &data, &len, &err) == 1) {
            if (!((f == 1 || f == 2 || f == 3 || f == 5) && wt == 2)) {
                memcpy(extra + extra_len, before, (size_t)(in2.p - before));
                extra_len += (size_t)(in2.p - before);
            }
            before = in2.p;
        }
    }
    if (np == 0) { st = moelm_fail(MOELM_ERR_FORMAT, "%s: no pieces (not a SentencePiece model)", path); goto done; }
    if (have_trainer && parse_trainer(trainer, trainer_len, &tb, &err) < 0) {
        st = moelm_fail(MOELM_ERR_FORMAT, "%s: trainer_spec: %s", path, err); goto done;
    }
    if (tb.model_type != 1 && tb.model_type != 2) {
        st = moelm_fail(MOELM_ERR_FORMAT, "%s: model_type %d is not supported (moelm reads unigram and bpe .model files)", path, tb.model_type);
        goto done;
    }
    t = tok_alloc(tb.model_type == 2 ? TOK_BPE : TOK_UNIGRAM, (int)np);
    if (!t) { st = MOELM_ERR_NOMEM; goto done; }
    norm_init(&t->norm);
    norm_init(&t->denorm);
    if (have_norm && parse_normalizer(normsp, norm_len, &t->norm, &err) < 0) {
        st = moelm_fail(MOELM_ERR_FORMAT, "%s: normalizer_spec: %s", path, err); goto done;
    }
    if (have_denorm) {
        t->has_denorm = 1;
        if (parse_normalizer(denormsp, denorm_len, &t->denorm, &err) < 0) {
            st = moelm_fail(MOELM_ERR_FORMAT, "%s: denormalizer_spec: %s", path, err); goto done;
        }
    }
    if (!t->norm.name && !(t->norm.name = moelm_strdup(""))) { st = MOELM_ERR_NOMEM; goto done; }
    if (!t->denorm.name && !(t->denorm.name = moelm_strdup(""))) { st = MOELM_ERR_NOMEM; goto done; }
    if ((st = spm_norm_parse_charsmap(&t->norm, path))) goto done;
    if (have_trainer) {
        if (!(t->trainer_raw = moelm_malloc(trainer_len ? trainer_len : 1))) { st = MOELM_ERR_NOMEM; goto done; }
        memcpy(t->trainer_raw, trainer, trainer_len);
        t->trainer_raw_len = trainer_len;
    }
    t->extra_raw = extra; t->extra_raw_len = extra_len; extra = NULL;
    t->unk_surface = tb.unk_surface; tb.unk_surface = NULL;
    if (!t->unk_surface && !(t->unk_surface = moelm_strdup(" \xE2\x81\x87 "))) { st = MOELM_ERR_NOMEM; goto done; }
    t->byte_fallback = tb.byte_fallback;
    t->treat_ws_as_suffix = tb.treat_ws_as_suffix;
    for (size_t i = 0; i < np && !st; i++) {
        /* a NaN or infinite score would poison every Viterbi comparison */
        if (!isfinite(rp[i].score)) st = moelm_fail(MOELM_ERR_FORMAT, "%s: piece %zu has a non-finite score", path, i);
        else st = tok_set_piece(t, (int)i, (const char *)rp[i].piece, rp[i].len, rp[i].score, rp[i].type);
    }
    if (st) goto done;
    /* checks sentencepiece makes when it loads a model */
    for (int i = 0; i < t->V; i++) {
        if (t->type[i] == SPM_UNKNOWN) {
            if (t->unk_id >= 0) { st = moelm_fail(MOELM_ERR_FORMAT, "%s: unk is already defined (ids %d and %d)", path, t->unk_id, i); goto done; }
            t->unk_id = i;
        }
        if (t->type[i] == SPM_BYTE) {
            int b;
            if (!is_byte_piece(t->piece[i], t->plen[i], &b)) { st = moelm_fail(MOELM_ERR_FORMAT, "%s: byte piece %d \"%.32s\" is not spelled <0xNN>", path, i, t->piece[i]); goto done; }
            if (!t->byte_fallback) { st = moelm_fail(MOELM_ERR_FORMAT, "%s: byte piece %s is found although byte_fallback is false", path, t->piece[i]); goto done; }
            t->byte_id[b] = i;
        }
    }
    if (t->unk_id < 0) { st = moelm_fail(MOELM_ERR_FORMAT, "%s: unk is not defined (no piece of type UNKNOWN)", path); goto done; }
    if (t->byte_fallback)
        for (int b = 0; b < 256; b++) if (t->byte_id[b] < 0) {
            st = moelm_fail(MOELM_ERR_FORMAT, "%s: there are not 256 byte pieces although byte_fallback is true", path); goto done;
        }
    if ((st = tok_finish(t, path))) goto done;
    {
        const char *bos = tb.bos_piece ? tb.bos_piece : "<s>", *eos = tb.eos_piece ? tb.eos_piece : "</s>";
        const char *pad = tb.pad_piece ? tb.pad_piece : "<pad>";
        int id;
        if ((id = tok_lookup(t, bos, strlen(bos))) >= 0 && t->type[id] == SPM_CONTROL) t->bos_id = id;
        if ((id = tok_lookup(t, eos, strlen(eos))) >= 0 && t->type[id] == SPM_CONTROL) t->eos_id = id;
        if ((id = tok_lookup(t, pad, strlen(pad))) >= 0 && t->type[id] == SPM_CONTROL) t->pad_id = id;
    }
    st = spm_prepare(t, path);
done:
    moelm_free(rp);
    moelm_free(extra);
    moelm_free(tb.unk_surface); moelm_free(tb.bos_piece); moelm_free(tb.eos_piece); moelm_free(tb.pad_piece);
    if (st) { tokenizer_free(t); return st; }
    *out = t;
    return MOELM_OK;
}

/* ---- writer ------------------------------------------------------------------------------------ */

typedef struct { uint8_t *b; size_t n, cap; int oom; } PbOut;

static void out_bytes(PbOut *o, const void *d, size_t n) {
    if (o->oom) return;
    if (o->n + n > o->cap) {
        size_t nc = o->cap ? o->cap : 4096;
        while (nc < o->n + n) nc *= 2;
        uint8_t *nb = moelm_realloc(o->b, nc);
        if (!nb) { o->oom = 1; return; }
        o->b = nb; o->cap = nc;
    }
    memcpy(o->b + o->n, d, n);
    o->n += n;
}
static void out_varint(PbOut *o, uint64_t v) {
    uint8_t t[10]; int k = 0;
    do { t[k++] = (uint8_t)((v & 0x7F) | (v > 0x7F ? 0x80 : 0)); v >>= 7; } while (v);
    out_bytes(o, t, (size_t)k);
}
static void out_key(PbOut *o, uint32_t f, int wt) { out_varint(o, (uint64_t)f << 3 | (uint64_t)wt); }
static void out_len(PbOut *o, uint32_t f, const void *d, size_t n) { out_key(o, f, 2); out_varint(o, n); out_bytes(o, d, n); }
static void out_bool(PbOut *o, uint32_t f, int v) { out_key(o, f, 0); out_varint(o, v ? 1 : 0); }
static void out_float(PbOut *o, uint32_t f, float x) {
    uint32_t b; memcpy(&b, &x, 4);
    uint8_t t[4] = { (uint8_t)b, (uint8_t)(b >> 8), (uint8_t)(b >> 16), (uint8_t)(b >> 24) };
    out_key(o, f, 5); out_bytes(o, t, 4);
}

static void out_normalizer(PbOut *o, uint32_t field, const SpmNormSpec *ns) {
    PbOut m = {0};
    if (ns->name && ns->name[0]) out_len(&m, 1, ns->name, strlen(ns->name));
    if (ns->charsmap_len) out_len(&m, 2, ns->charsmap, ns->charsmap_len);
    out_bool(&m, 3, ns->add_dummy_prefix);
    out_bool(&m, 4, ns->remove_extra_whitespaces);
    out_bool(&m, 5, ns->escape_whitespaces);
    if (ns->rule_tsv) out_len(&m, 6, ns->rule_tsv, strlen(ns->rule_tsv));
    if (m.oom) { o->oom = 1; moelm_free(m.b); return; }
    out_len(o, field, m.b ? m.b : (uint8_t *)"", m.n);
    moelm_free(m.b);
}

moelm_status spm_serialize_model(const Tokenizer *t, uint8_t **buf, size_t *n) {
    PbOut o = {0};
    PbOut pc = {0};
    for (int i = 0; i < t->V; i++) {
        pc.n = 0;
        out_len(&pc, 1, t->piece[i], t->plen[i]);
        out_float(&pc, 2, t->score[i]);
        if (t->type[i] != SPM_NORMAL) { out_key(&pc, 3, 0); out_varint(&pc, t->type[i]); }
        if (pc.oom) break;
        out_len(&o, 1, pc.b, pc.n);
    }
    moelm_free(pc.b);
    if (t->trainer_raw) out_len(&o, 2, t->trainer_raw, t->trainer_raw_len);
    out_normalizer(&o, 3, &t->norm);
    if (t->extra_raw_len) out_bytes(&o, t->extra_raw, t->extra_raw_len);
    if (t->has_denorm) out_normalizer(&o, 5, &t->denorm);
    if (o.oom || pc.oom) { moelm_free(o.b); return moelm_fail(MOELM_ERR_NOMEM, "tokenizer: out of memory serialising model"); }
    *buf = o.b;
    *n = o.n;
    return MOELM_OK;
}

/* TrainerSpec writer for models trained by moelm (field numbers of sentencepiece_model.proto). */
moelm_status spm_build_trainer_spec(const SpmTrainOptions *op, uint8_t **buf, size_t *n) {
    PbOut o = {0};
    out_key(&o, 3, 0); out_varint(&o, op->model_type == TOK_BPE ? 2 : 1);
    out_key(&o, 4, 0); out_varint(&o, (uint64_t)op->vocab_size);
    out_float(&o, 10, (float)op->character_coverage);
    out_key(&o, 11, 0); out_varint(&o, (uint64_t)op->input_sentence_size);
    out_key(&o, 14, 0); out_varint(&o, (uint64_t)op->seed_sentencepiece_size);
    out_float(&o, 15, (float)op->shrinking_factor);
    out_key(&o, 18, 0); out_varint(&o, (uint64_t)op->max_sentence_length);
    out_key(&o, 16, 0); out_varint(&o, (uint64_t)op->num_threads);
    out_key(&o, 17, 0); out_varint(&o, (uint64_t)op->num_sub_iterations);
    out_key(&o, 20, 0); out_varint(&o, (uint64_t)op->max_sentencepiece_length);
    out_bool(&o, 21, op->split_by_unicode_script);
    out_bool(&o, 23, op->split_by_number);
    out_bool(&o, 22, op->split_by_whitespace);
    out_bool(&o, 25, op->split_digits);
    out_bool(&o, 24, op->treat_whitespace_as_suffix);
    out_bool(&o, 35, op->byte_fallback);
    out_bool(&o, 33, op->hard_vocab_limit);
    out_key(&o, 40, 0); out_varint(&o, (uint64_t)(int64_t)op->unk_id);
    out_key(&o, 41, 0); out_varint(&o, (uint64_t)(int64_t)op->bos_id);
    out_key(&o, 42, 0); out_varint(&o, (uint64_t)(int64_t)op->eos_id);
    out_key(&o, 43, 0); out_varint(&o, (uint64_t)(int64_t)op->pad_id);
    out_len(&o, 45, "<unk>", 5);
    out_len(&o, 46, "<s>", 3);
    out_len(&o, 47, "</s>", 4);
    out_len(&o, 48, "<pad>", 5);
    out_len(&o, 44, " \xE2\x81\x87 ", 5);
    if (o.oom) { moelm_free(o.b); return MOELM_ERR_NOMEM; }
    *buf = o.b;
    *n = o.n;
    return MOELM_OK;
}

/* ---- a vocabulary's parts ------------------------------------------------------------------------ */

/* The .model file v describes, parsed as any other: one set of checks for both sources. */
moelm_status tokenizer_from_vocab(Tokenizer **out, const TokenizerVocab *v, const char *what) {
    *out = NULL;
    CHECK(v->kind == TOK_BPE || v->kind == TOK_UNIGRAM);
    PbOut o = {0}, pc = {0}, tr = {0};
    int bytes = 0;
    for (int i = 0; i < v->n; i++) {
        if (v->len[i] == 0 || v->len[i] > 4096)
            return moelm_fail(MOELM_ERR_FORMAT, "%s: piece %d is %llu bytes long (1..4096)", what, i,
                              (unsigned long long)v->len[i]);
        pc.n = 0;
        out_len(&pc, 1, v->piece[i], (size_t)v->len[i]);
        out_float(&pc, 2, v->score[i]);
        out_key(&pc, 3, 0);
        out_varint(&pc, (uint64_t)(uint32_t)v->type[i]);
        out_len(&o, 1, pc.b ? pc.b : (uint8_t *)"", pc.n);
        bytes += v->type[i] == SPM_BYTE;
    }
    out_key(&tr, 3, 0);
    out_varint(&tr, v->kind == TOK_BPE ? 2 : 1);
    out_bool(&tr, 35, bytes > 0);
    /* the special pieces by name, as sentencepiece finds them (a control piece of that spelling) */
    if (v->bos_id >= 0 && v->bos_id < v->n) out_len(&tr, 46, v->piece[v->bos_id], (size_t)v->len[v->bos_id]);
    if (v->eos_id >= 0 && v->eos_id < v->n) out_len(&tr, 47, v->piece[v->eos_id], (size_t)v->len[v->eos_id]);
    out_len(&o, 2, tr.b ? tr.b : (uint8_t *)"", tr.n);
    SpmNormSpec ns;
    norm_init(&ns);
    ns.name = (char *)"identity";
    ns.add_dummy_prefix = v->add_dummy_prefix;
    ns.remove_extra_whitespaces = v->remove_extra_whitespaces;
    out_normalizer(&o, 3, &ns);
    moelm_status st = o.oom || pc.oom || tr.oom ? MOELM_ERR_NOMEM : spm_parse_model(out, o.b, o.n, what);
    moelm_free(o.b);
    moelm_free(pc.b);
    moelm_free(tr.b);
    return st;
}
