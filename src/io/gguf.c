/* gguf.c: GGUF v3 reader (full header validation) and streaming atomic writer. See gguf.h.
 *
 * The reader parses the header through a small buffered cursor over pread and checks every count
 * and length against the bytes left in the file before it allocates, so a hostile header costs at
 * most a small constant times the file. Metadata are kept as read: a scalar's bytes, a string (NUL
 * added), a numeric array's packed elements, or a string array as one block of NUL-terminated
 * strings with their offsets. Lookups go through arrays of indices sorted by key / tensor name,
 * which also find duplicates.
 */
#include "io/gguf.h"
#include "backend/gemv.h"
#include "backend/q8.h"
#include "io/fileio.h"
#include "io/json.h"
#include "io/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c assumes a little-endian machine (GGUF v3 files are little-endian)"
#endif

/* ---- types ------------------------------------------------------------------------------------ */

static const char *const g_type_names[] = { "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
                                            "string", "array", "u64", "i64", "f64" };
static const unsigned g_type_size[] = { 1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8 };   /* 0: not a scalar */

const char *gguf_type_name(GgufType t) {
    return (unsigned)t <= GGUF_TYPE_F64 ? g_type_names[t] : "?";
}

static int is_scalar(uint32_t t) { return t <= GGUF_TYPE_F64 && g_type_size[t] != 0; }

typedef struct { GgufTensorType type; const char *name; unsigned block, bytes; } TensorType;

static const TensorType g_tensor_types[] = {
    { GGUF_TENSOR_F32, "F32", 1, 4 },       { GGUF_TENSOR_F16, "F16", 1, 2 },
    { GGUF_TENSOR_Q4_0, "Q4_0", 32, 18 },   { GGUF_TENSOR_Q4_1, "Q4_1", 32, 20 },
    { GGUF_TENSOR_Q5_0, "Q5_0", 32, 22 },   { GGUF_TENSOR_Q5_1, "Q5_1", 32, 24 },
    { GGUF_TENSOR_Q8_0, "Q8_0", 32, 34 },   { GGUF_TENSOR_Q2_K, "Q2_K", 256, 84 },
    { GGUF_TENSOR_Q3_K, "Q3_K", 256, 110 }, { GGUF_TENSOR_Q4_K, "Q4_K", 256, 144 },
    { GGUF_TENSOR_Q5_K, "Q5_K", 256, 176 }, { GGUF_TENSOR_Q6_K, "Q6_K", 256, 210 },
    { GGUF_TENSOR_Q8_K, "Q8_K", 256, 292 }, { GGUF_TENSOR_I8, "I8", 1, 1 },
    { GGUF_TENSOR_I16, "I16", 1, 2 },       { GGUF_TENSOR_I32, "I32", 1, 4 },
    { GGUF_TENSOR_I64, "I64", 1, 8 },       { GGUF_TENSOR_F64, "F64", 1, 8 },
    { GGUF_TENSOR_BF16, "BF16", 1, 2 },
};

static const TensorType *tensor_type(uint32_t t) {
    for (size_t i = 0; i < sizeof g_tensor_types / sizeof g_tensor_types[0]; i++)
        if ((uint32_t)g_tensor_types[i].type == t) return &g_tensor_types[i];
    return NULL;
}

const char *gguf_tensor_type_name(GgufTensorType t) {
    const TensorType *tt = tensor_type((uint32_t)t);
    return tt ? tt->name : NULL;
}

uint64_t gguf_row_bytes(GgufTensorType t, uint64_t n) {
    const TensorType *tt = tensor_type((uint32_t)t);
    if (!tt || n % tt->block || n / tt->block > UINT64_MAX / tt->bytes) return 0;
    return n / tt->block * tt->bytes;
}

/* ---- the open file ---------------------------------------------------------------------------- */

typedef struct {
    char *key;
    GgufType type;
    GgufType elem;                /* arrays */
    uint64_t n;                   /* array count, string length */
    unsigned char scalar[8];      /* a scalar's bytes */
    void *data;                   /* string bytes + NUL; packed elements; a string array's strings */
    uint64_t *offs;               /* string arrays: [n + 1] element i is data + offs[i], length offs[i+1]-offs[i]-1 */
} Kv;

struct Gguf {
    char *path;
    int fd;
    uint64_t fsize;
    uint32_t alignment;
    uint64_t data_start;
    int nkv;
    Kv *kv;                       /* [nkv] file order */
    int *kv_sorted;               /* [nkv] indices by key */
    int nt;
    GgufTensorInfo *t;            /* [nt] file order; names owned */
    int *t_sorted;                /* [nt] indices by name */
};

/* A buffered reader of the header. */
enum { CUR_BUF = 65536 };
typedef struct {
    int fd;
    const char *path;
    uint64_t fsize, pos;          /* the next byte to read */
    uint64_t bstart, blen;        /* buf holds the file's bytes [bstart, bstart + blen) */
    unsigned char *buf;           /* [CUR_BUF] */
    char what[160];               /* the part being read, for messages */
} Cur;

static uint64_t cur_left(const Cur *c) { return c->fsize - c->pos; }

static moelm_status cur_read(Cur *c, void *dst, uint64_t n) {
    if (n > cur_left(c))
        return moelm_fail(MOELM_ERR_FORMAT, "%s: unexpected end of file in %s (%llu bytes at offset %llu, the file "
                          "has %llu)", c->path, c->what, (unsigned long long)n, (unsigned long long)c->pos,
                          (unsigned long long)c->fsize);
    unsigned char *d = dst;
    while (n > 0) {
        if (c->pos >= c->bstart && c->pos < c->bstart + c->blen) {
            uint64_t k = c->bstart + c->blen - c->pos;
            if (k > n) k = n;
            memcpy(d, c->buf + (c->pos - c->bstart), (size_t)k);
            d += k;
            c->pos += k;
            n -= k;
        } else if (n >= CUR_BUF) {
            moelm_status s = file_pread(c->fd, c->path, d, n, c->pos, c->what);
            if (!s) c->pos += n;
            return s;
        } else {
            c->bstart = c->pos;
            c->blen = cur_left(c) < CUR_BUF ? cur_left(c) : CUR_BUF;
            moelm_status s = file_pread(c->fd, c->path, c->buf, c->blen, c->pos, c->what);
            if (s) return s;
        }
    }
    return MOELM_OK;
}

static moelm_status cur_u32(Cur *c, uint32_t *v) { return cur_read(c, v, 4); }
static moelm_status cur_u64(Cur *c, uint64_t *v) { return cur_read(c, v, 8); }

/* A string of at most max bytes into *out (NUL added); *len its length. */
static moelm_status cur_string(Cur *c, char **out, uint64_t *len, uint64_t max) {
    *out = NULL;
    uint64_t n;
    moelm_status s = cur_u64(c, &n);
    if (s) return s;
    if (n > cur_left(c))
        return moelm_fail(MOELM_ERR_FORMAT, "%s: %s: string length %llu exceeds the %llu bytes left in the file",
                          c->path, c->what, (unsigned long long)n, (unsigned long long)cur_left(c));
    if (n > max)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: %s: string of %llu bytes, at most %llu allowed", c->path, c->what,
                          (unsigned long long)n, (unsigned long long)max);
    char *p = moelm_malloc((size_t)n + 1);
    if (!p) return moelm_fail_context(MOELM_ERR_NOMEM, "%s: reading %s", c->path, c->what);
    if ((s = cur_read(c, p, n))) { moelm_free(p); return s; }
    p[n] = 0;
    *out = p;
    if (len) *len = n;
    return MOELM_OK;
}

/* key, tensor name: not empty, no NUL inside */
static moelm_status check_name(const Cur *c, const char *s, uint64_t len) {
    if (len == 0) return moelm_fail(MOELM_ERR_FORMAT, "%s: %s is empty", c->path, c->what);
    if (memchr(s, 0, (size_t)len)) return moelm_fail(MOELM_ERR_FORMAT, "%s: %s holds a NUL byte", c->path, c->what);
    return MOELM_OK;
}

static moelm_status check_bools(const Cur *c, const unsigned char *b, uint64_t n) {
    for (uint64_t i = 0; i < n; i++)
        if (b[i] > 1)
            return moelm_fail(MOELM_ERR_FORMAT, "%s: %s: bool value %u (0 or 1 allowed)", c->path, c->what, b[i]);
    return MOELM_OK;
}

static moelm_status read_string_array(Cur *c, Kv *kv) {
    if (kv->n > cur_left(c) / 8)   /* each element takes at least its 8-byte length */
        return moelm_fail(MOELM_ERR_FORMAT, "%s: %s: %llu strings cannot fit in the %llu bytes left", c->path, c->what,
                          (unsigned long long)kv->n, (unsigned long long)cur_left(c));
    kv->offs = moelm_malloc(((size_t)kv->n + 1) * sizeof(uint64_t));
    size_t cap = 64, used = 0;
    char *chars = moelm_malloc(cap);
    kv->data = chars;
    if (!kv->offs || !chars) return moelm_fail_context(MOELM_ERR_NOMEM, "%s: reading %s", c->path, c->what);
    for (uint64_t i = 0; i < kv->n; i++) {
        uint64_t len;
        moelm_status s = cur_u64(c, &len);
        if (s) return s;
        if (len > cur_left(c))
            return moelm_fail(MOELM_ERR_FORMAT, "%s: %s: string %llu: length %llu exceeds the %llu bytes left in the "
                              "file", c->path, c->what, (unsigned long long)i, (unsigned long long)len,
                              (unsigned long long)cur_left(c));
        if (len + 1 > cap - used) {   /* bounded: the strings' bytes are in the file */
            size_t ncap = cap * 2 > used + len + 1 ? cap * 2 : used + (size_t)len + 1;
            char *p = moelm_realloc(chars, ncap);
            if (!p) return moelm_fail_context(MOELM_ERR_NOMEM, "%s: reading %s", c->path, c->what);
            kv->data = chars = p;
            cap = ncap;
        }
        if ((s = cur_read(c, chars + used, len))) return s;
        chars[used + len] = 0;
        kv->offs[i] = used;
        used += (size_t)len + 1;
    }
    kv->offs[kv->n] = used;
    return MOELM_OK;
}

static moelm_status read_kv(Cur *c, Kv *kv, int i) {
    snprintf(c->what, sizeof c->what, "metadata key %d", i);
    uint64_t klen;
    moelm_status s = cur_string(c, &kv->key, &klen, GGUF_MAX_KEY);
    if (s || (s = check_name(c, kv->key, klen))) return s;
    char kb[96];
    snprintf(c->what, sizeof c->what, "metadata \"%s\"", json_display(kv->key, kb, sizeof kb));
    uint32_t t;
    if ((s = cur_u32(c, &t))) return s;
    if (t > GGUF_TYPE_F64)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: %s: unknown value type %u", c->path, c->what, t);
    kv->type = (GgufType)t;
    if (t == GGUF_TYPE_STRING) return cur_string(c, (char **)&kv->data, &kv->n, UINT64_MAX);
    if (t != GGUF_TYPE_ARRAY) {
        if ((s = cur_read(c, kv->scalar, g_type_size[t]))) return s;
        return t == GGUF_TYPE_BOOL ? check_bools(c, kv->scalar, 1) : MOELM_OK;
    }
    uint32_t e;
    if ((s = cur_u32(c, &e)) || (s = cur_u64(c, &kv->n))) return s;
    if (e == GGUF_TYPE_ARRAY)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: %s: an array of arrays (not supported)", c->path, c->what);
    if (e > GGUF_TYPE_F64)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: %s: unknown array element type %u", c->path, c->what, e);
    kv->elem = (GgufType)e;
    if (e == GGUF_TYPE_STRING) return read_string_array(c, kv);
    uint64_t size = g_type_size[e];
    if (kv->n > cur_left(c) / size)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: %s: %llu elements of %s exceed the %llu bytes left in the file",
                          c->path, c->what, (unsigned long long)kv->n, g_type_names[e], (unsigned long long)cur_left(c));
    kv->data = moelm_malloc((size_t)(kv->n * size) + 1);
    if (!kv->data) return moelm_fail_context(MOELM_ERR_NOMEM, "%s: reading %s", c->path, c->what);
    if ((s = cur_read(c, kv->data, kv->n * size))) return s;
    return e == GGUF_TYPE_BOOL ? check_bools(c, kv->data, kv->n) : MOELM_OK;
}

static const Gguf *g_sort_ctx;   /* qsort has no context argument; the open is single-threaded here */

static int kv_cmp(const void *a, const void *b) {
    return strcmp(g_sort_ctx->kv[*(const int *)a].key, g_sort_ctx->kv[*(const int *)b].key);
}
static int t_name_cmp(const void *a, const void *b) {
    return strcmp(g_sort_ctx->t[*(const int *)a].name, g_sort_ctx->t[*(const int *)b].name);
}
static int t_off_cmp(const void *a, const void *b) {
    const GgufTensorInfo *x = &g_sort_ctx->t[*(const int *)a], *y = &g_sort_ctx->t[*(const int *)b];
    return x->offset < y->offset ? -1 : x->offset > y->offset ? 1 : 0;
}

static moelm_status read_tensor_info(Cur *c, Gguf *g, GgufTensorInfo *ti, int i) {
    snprintf(c->what, sizeof c->what, "tensor info %d", i);
    char *name;
    uint64_t nlen;
    moelm_status s = cur_string(c, &name, &nlen, GGUF_MAX_NAME);
    ti->name = name;
    if (s || (s = check_name(c, name, nlen))) return s;
    char nb[96];
    snprintf(c->what, sizeof c->what, "tensor \"%s\"", json_display(name, nb, sizeof nb));
    uint32_t nd, type;
    if ((s = cur_u32(c, &nd))) return s;
    if (nd < 1 || nd > GGUF_MAX_DIMS)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: %s: %u dimensions (1 to %d allowed)", c->path, c->what, nd, GGUF_MAX_DIMS);
    ti->ndim = (int)nd;
    uint64_t ne[GGUF_MAX_DIMS], elems = 1;
    for (uint32_t d = 0; d < nd; d++) {
        if ((s = cur_u64(c, &ne[d]))) return s;
        if (ne[d] == 0 || ne[d] > (uint64_t)INT64_MAX)
            return moelm_fail(MOELM_ERR_FORMAT, "%s: %s: dimension %u is %llu (1 to 2^63-1 allowed)", c->path, c->what,
                              d, (unsigned long long)ne[d]);
        if (elems > (uint64_t)INT64_MAX / ne[d])
            return moelm_fail(MOELM_ERR_FORMAT, "%s: %s: the element count overflows", c->path, c->what);
        elems *= ne[d];
        ti->shape[nd - 1 - d] = (int64_t)ne[d];
    }
    if ((s = cur_u32(c, &type))) return s;
    const TensorType *tt = tensor_type(type);
    if (!tt) return moelm_fail(MOELM_ERR_FORMAT, "%s: %s: unknown tensor type %u", c->path, c->what, type);
    ti->type = tt->type;
    if (ne[0] % tt->block)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: %s: row length %llu is not a multiple of %s's block of %u", c->path,
                          c->what, (unsigned long long)ne[0], tt->name, tt->block);
    uint64_t row = gguf_row_bytes(tt->type, ne[0]), rows = elems / ne[0];
    if (row == 0 || rows > UINT64_MAX / row)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: %s: the byte size overflows", c->path, c->what);
    ti->nbytes = row * rows;
    if ((s = cur_u64(c, &ti->offset))) return s;
    if (ti->offset % g->alignment)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: %s: offset %llu is not a multiple of the alignment %u", c->path,
                          c->what, (unsigned long long)ti->offset, g->alignment);
    return MOELM_OK;
}

static moelm_status parse(Gguf *g, Cur *c) {
    const char *path = g->path;
    snprintf(c->what, sizeof c->what, "the header");
    unsigned char magic[4];
    uint32_t version;
    uint64_t nt, nkv;
    moelm_status s = cur_read(c, magic, 4);
    if (s) return s;
    if (memcmp(magic, "GGUF", 4) != 0) return moelm_fail(MOELM_ERR_FORMAT, "%s: not a GGUF file (bad magic)", path);
    if ((s = cur_u32(c, &version)) || (s = cur_u64(c, &nt)) || (s = cur_u64(c, &nkv))) return s;
    if (version != GGUF_VERSION)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: GGUF version %u%s, only %d is read", path, version,
                          version == 0x03000000u ? " (a big-endian file)" : "", GGUF_VERSION);
    /* a key-value takes at least 8 + 1 + 4 + 1 bytes, a tensor info 8 + 1 + 4 + 8 + 4 + 8 */
    if (nkv > cur_left(c) / 14 || nkv > INT32_MAX)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: %llu metadata entries cannot fit in the file", path,
                          (unsigned long long)nkv);
    if (nt > cur_left(c) / 33 || nt > INT32_MAX)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: %llu tensors cannot fit in the file", path, (unsigned long long)nt);
    g->kv = moelm_calloc(nkv ? (size_t)nkv : 1, sizeof(Kv));
    g->kv_sorted = moelm_malloc((nkv ? (size_t)nkv : 1) * sizeof(int));
    g->t = moelm_calloc(nt ? (size_t)nt : 1, sizeof(GgufTensorInfo));
    g->t_sorted = moelm_malloc((nt ? (size_t)nt : 1) * sizeof(int));
    if (!g->kv || !g->kv_sorted || !g->t || !g->t_sorted) return moelm_fail_context(MOELM_ERR_NOMEM, "%s: reading", path);
    for (uint64_t i = 0; i < nkv; i++) {
        g->nkv = (int)i + 1;
        if ((s = read_kv(c, &g->kv[i], (int)i))) return s;
        g->kv_sorted[i] = (int)i;
    }
    g_sort_ctx = g;
    qsort(g->kv_sorted, (size_t)g->nkv, sizeof(int), kv_cmp);
    char b[96];
    for (int i = 1; i < g->nkv; i++)
        if (strcmp(g->kv[g->kv_sorted[i - 1]].key, g->kv[g->kv_sorted[i]].key) == 0)
            return moelm_fail(MOELM_ERR_FORMAT, "%s: duplicate metadata key \"%s\"", path,
                              json_display(g->kv[g->kv_sorted[i]].key, b, sizeof b));
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    int ai = gguf_find_kv(g, "general.alignment");
    if (ai >= 0) {
        uint32_t a;
        if (g->kv[ai].type != GGUF_TYPE_U32)
            return moelm_fail(MOELM_ERR_FORMAT, "%s: general.alignment is a %s, not a u32", path,
                              g_type_names[g->kv[ai].type]);
        memcpy(&a, g->kv[ai].scalar, 4);
        if (a == 0 || (a & (a - 1)))
            return moelm_fail(MOELM_ERR_FORMAT, "%s: general.alignment %u is not a power of two", path, a);
        g->alignment = a;
    }
    for (uint64_t i = 0; i < nt; i++) {
        g->nt = (int)i + 1;
        if ((s = read_tensor_info(c, g, &g->t[i], (int)i))) return s;
        g->t_sorted[i] = (int)i;
    }
    uint64_t pad = (g->alignment - c->pos % g->alignment) % g->alignment;
    g->data_start = c->pos + pad;   /* no overflow: pos <= fsize < 2^63, pad < 2^32 */
    g_sort_ctx = g;
    qsort(g->t_sorted, (size_t)g->nt, sizeof(int), t_name_cmp);
    for (int i = 1; i < g->nt; i++)
        if (strcmp(g->t[g->t_sorted[i - 1]].name, g->t[g->t_sorted[i]].name) == 0)
            return moelm_fail(MOELM_ERR_FORMAT, "%s: duplicate tensor name \"%s\"", path,
                              json_display(g->t[g->t_sorted[i]].name, b, sizeof b));
    uint64_t room = g->fsize > g->data_start ? g->fsize - g->data_start : 0;
    for (int i = 0; i < g->nt; i++) {
        const GgufTensorInfo *t = &g->t[i];
        if (t->offset > room || t->nbytes > room - t->offset)
            return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\": data [%llu, +%llu) reach past the end of the file "
                              "(the data section has %llu bytes)", path, json_display(t->name, b, sizeof b),
                              (unsigned long long)t->offset, (unsigned long long)t->nbytes, (unsigned long long)room);
    }
    /* no two tensors overlap: sorted by offset, each starts at or after the previous one's end (the
     * name order is restored below) */
    int *by_off = moelm_malloc((g->nt ? (size_t)g->nt : 1) * sizeof(int));
    if (!by_off) return moelm_fail_context(MOELM_ERR_NOMEM, "%s: reading", path);
    for (int i = 0; i < g->nt; i++) by_off[i] = i;
    qsort(by_off, (size_t)g->nt, sizeof(int), t_off_cmp);
    for (int i = 1; i < g->nt && !s; i++) {
        const GgufTensorInfo *p = &g->t[by_off[i - 1]], *t = &g->t[by_off[i]];
        if (t->offset < p->offset + p->nbytes) {
            char b2[96];
            s = moelm_fail(MOELM_ERR_FORMAT, "%s: tensors \"%s\" and \"%s\" overlap (bytes [%llu, %llu) and [%llu, %llu) "
                           "of the data section)", path, json_display(p->name, b, sizeof b),
                           json_display(t->name, b2, sizeof b2), (unsigned long long)p->offset,
                           (unsigned long long)(p->offset + p->nbytes), (unsigned long long)t->offset,
                           (unsigned long long)(t->offset + t->nbytes));
        }
    }
    moelm_free(by_off);
    return s;
}

moelm_status gguf_open(Gguf **out, const char *path) {
    *out = NULL;
    Gguf *g = moelm_calloc(1, sizeof *g);
    if (!g) return moelm_fail_context(MOELM_ERR_NOMEM, "%s: opening", path);
    g->fd = -1;
    Cur c = { 0 };
    moelm_status s = MOELM_OK;
    if (!(g->path = moelm_strdup(path)) || !(c.buf = moelm_malloc(CUR_BUF))) {
        s = moelm_fail_context(MOELM_ERR_NOMEM, "%s: opening", path);
        goto done;
    }
    g->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);   /* a FIFO must not block: refused below */
    struct stat sb;
    if (g->fd < 0) s = moelm_fail(MOELM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    else if (fstat(g->fd, &sb) != 0) s = moelm_fail(MOELM_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    else if (!S_ISREG(sb.st_mode)) s = moelm_fail(MOELM_ERR_IO, "%s: not a regular file", path);
    if (s) goto done;
    g->fsize = (uint64_t)sb.st_size;
    c.fd = g->fd;
    c.path = g->path;
    c.fsize = g->fsize;
    s = parse(g, &c);
done:
    moelm_free(c.buf);
    if (s) {
        gguf_close(g);
        return s;
    }
    *out = g;
    return MOELM_OK;
}

void gguf_close(Gguf *g) {
    if (!g) return;
    if (g->fd >= 0) close(g->fd);
    for (int i = 0; g->kv && i < g->nkv; i++) {
        moelm_free(g->kv[i].key);
        moelm_free(g->kv[i].data);
        moelm_free(g->kv[i].offs);
    }
    for (int i = 0; g->t && i < g->nt; i++) moelm_free((char *)g->t[i].name);
    moelm_free(g->kv);
    moelm_free(g->kv_sorted);
    moelm_free(g->t);
    moelm_free(g->t_sorted);
    moelm_free(g->path);
    moelm_free(g);
}

uint32_t gguf_alignment(const Gguf *g) { return g->alignment; }
uint64_t gguf_data_offset(const Gguf *g) { return g->data_start; }
int gguf_kv_count(const Gguf *g) { return g->nkv; }
const char *gguf_kv_key(const Gguf *g, int i) { return i >= 0 && i < g->nkv ? g->kv[i].key : NULL; }
GgufType gguf_kv_type(const Gguf *g, int i) { CHECK(i >= 0 && i < g->nkv); return g->kv[i].type; }

int gguf_find_kv(const Gguf *g, const char *key) {
    int lo = 0, hi = g->nkv - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, c = strcmp(g->kv[g->kv_sorted[mid]].key, key);
        if (c == 0) return g->kv_sorted[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

/* the entry for key, of type t (or, for t == GGUF_TYPE_ARRAY, any array); NULL and an error otherwise */
static const Kv *get_kv(const Gguf *g, const char *key, GgufType t, const char *want) {
    int i = gguf_find_kv(g, key);
    char b[96];
    if (i < 0) {
        moelm_fail(MOELM_ERR_FORMAT, "%s: no metadata key \"%s\"", g->path, json_display(key, b, sizeof b));
        return NULL;
    }
    if (g->kv[i].type != t) {
        moelm_fail(MOELM_ERR_FORMAT, "%s: metadata \"%s\" is a %s, expected %s", g->path, json_display(key, b, sizeof b),
                   g_type_names[g->kv[i].type], want ? want : g_type_names[t]);
        return NULL;
    }
    return &g->kv[i];
}

moelm_status gguf_get(const Gguf *g, const char *key, GgufType t, void *out) {
    CHECK(is_scalar((uint32_t)t));
    const Kv *kv = get_kv(g, key, t, NULL);
    if (!kv) return MOELM_ERR_FORMAT;
    memcpy(out, kv->scalar, g_type_size[t]);
    return MOELM_OK;
}

moelm_status gguf_get_int(const Gguf *g, const char *key, int64_t *out) {
    int i = gguf_find_kv(g, key);
    GgufType t = i >= 0 ? g->kv[i].type : GGUF_TYPE_U8;
    if (i < 0 || t == GGUF_TYPE_F32 || t == GGUF_TYPE_F64 || !is_scalar(t) || t == GGUF_TYPE_BOOL)
        return get_kv(g, key, (GgufType)-1, "an integer") ? MOELM_OK : MOELM_ERR_FORMAT;
    const unsigned char *p = g->kv[i].scalar;
    uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; uint64_t u64; int64_t i64;
    switch (t) {
    case GGUF_TYPE_U8: memcpy(&u8, p, 1); *out = u8; break;
    case GGUF_TYPE_I8: memcpy(&i8, p, 1); *out = i8; break;
    case GGUF_TYPE_U16: memcpy(&u16, p, 2); *out = u16; break;
    case GGUF_TYPE_I16: memcpy(&i16, p, 2); *out = i16; break;
    case GGUF_TYPE_U32: memcpy(&u32, p, 4); *out = u32; break;
    case GGUF_TYPE_I32: memcpy(&i32, p, 4); *out = i32; break;
    case GGUF_TYPE_I64: memcpy(&i64, p, 8); *out = i64; break;
    default:
        memcpy(&u64, p, 8);
        if (u64 > (uint64_t)INT64_MAX) {
            char b[96];
            return moelm_fail(MOELM_ERR_FORMAT, "%s: metadata \"%s\" = %llu is beyond int64", g->path,
                              json_display(key, b, sizeof b), (unsigned long long)u64);
        }
        *out = (int64_t)u64;
    }
    return MOELM_OK;
}

moelm_status gguf_get_float(const Gguf *g, const char *key, double *out) {
    int i = gguf_find_kv(g, key);
    if (i >= 0 && g->kv[i].type == GGUF_TYPE_F32) {
        float f;
        memcpy(&f, g->kv[i].scalar, 4);
        *out = f;
        return MOELM_OK;
    }
    if (i >= 0 && g->kv[i].type == GGUF_TYPE_F64) {
        memcpy(out, g->kv[i].scalar, 8);
        return MOELM_OK;
    }
    return get_kv(g, key, (GgufType)-1, "f32 or f64") ? MOELM_OK : MOELM_ERR_FORMAT;
}

moelm_status gguf_get_string(const Gguf *g, const char *key, const char **s, uint64_t *len) {
    const Kv *kv = get_kv(g, key, GGUF_TYPE_STRING, NULL);
    if (!kv) return MOELM_ERR_FORMAT;
    *s = kv->data;
    if (len) *len = kv->n;
    return MOELM_OK;
}

moelm_status gguf_get_array(const Gguf *g, const char *key, GgufType *elem, uint64_t *n, const void **data) {
    const Kv *kv = get_kv(g, key, GGUF_TYPE_ARRAY, NULL);
    if (!kv) return MOELM_ERR_FORMAT;
    if (elem) *elem = kv->elem;
    if (n) *n = kv->n;
    if (data) *data = kv->elem == GGUF_TYPE_STRING ? NULL : kv->data;
    return MOELM_OK;
}

moelm_status gguf_get_array_str(const Gguf *g, const char *key, uint64_t i, const char **s, uint64_t *len) {
    const Kv *kv = get_kv(g, key, GGUF_TYPE_ARRAY, "an array of strings");
    if (!kv) return MOELM_ERR_FORMAT;
    if (kv->elem != GGUF_TYPE_STRING) {
        char b[96];
        return moelm_fail(MOELM_ERR_FORMAT, "%s: metadata \"%s\" is an array of %s, expected strings", g->path,
                          json_display(key, b, sizeof b), g_type_names[kv->elem]);
    }
    CHECK(i < kv->n);
    *s = (const char *)kv->data + kv->offs[i];
    if (len) *len = kv->offs[i + 1] - kv->offs[i] - 1;
    return MOELM_OK;
}

int gguf_tensor_count(const Gguf *g) { return g->nt; }

const GgufTensorInfo *gguf_tensor_at(const Gguf *g, int i) { return i >= 0 && i < g->nt ? &g->t[i] : NULL; }

const GgufTensorInfo *gguf_find_tensor(const Gguf *g, const char *name) {
    int lo = 0, hi = g->nt - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, c = strcmp(g->t[g->t_sorted[mid]].name, name);
        if (c == 0) return &g->t[g->t_sorted[mid]];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

moelm_status gguf_read_tensor_f32(const Gguf *g, const char *name, float *dst, int ndim, const int64_t *shape) {
    return gguf_read_tensor_f32_part(g, name, dst, ndim, shape, 0, SIZE_MAX);
}

moelm_status gguf_read_tensor_f32_part(const Gguf *g, const char *name, float *dst, int ndim, const int64_t *shape,
                                       size_t first, size_t count) {
    const GgufTensorInfo *t = gguf_find_tensor(g, name);
    char b[96];
    if (!t) return moelm_fail(MOELM_ERR_FORMAT, "%s: no tensor named \"%s\"", g->path, json_display(name, b, sizeof b));
    moelm_status sc = st_check_shape(g->path, t->name, t->ndim, t->shape, ndim, shape);
    if (sc) return sc;
    uint64_t total = 1;
    for (int d = 0; d < t->ndim; d++) total *= (uint64_t)t->shape[d];
    if (count == SIZE_MAX) count = first <= total ? (size_t)(total - first) : 0;
    CHECK(first <= total && count <= total - first);
    if (count == 0) return MOELM_OK;
    CHECK(dst != NULL);
    char what[96];
    snprintf(what, sizeof what, "tensor \"%s\"", t->name);
    uint64_t at = g->data_start + t->offset;
    switch (t->type) {
    case GGUF_TENSOR_F32:
        return file_pread(g->fd, g->path, dst, count * 4, at + first * 4, what);
    case GGUF_TENSOR_F16:
    case GGUF_TENSOR_BF16: {
        moelm_status s = file_pread(g->fd, g->path, (char *)dst + 2 * count, count * 2, at + first * 2, what);
        if (!s) widen16_in_place(dst, count, t->type == GGUF_TENSOR_BF16);
        return s;
    }
    case GGUF_TENSOR_Q8_0: {
        CHECK(first % Q8_0_BLOCK == 0 && count % Q8_0_BLOCK == 0);
        enum { CH = 256 };   /* blocks read at a time */
        BlockQ8_0 buf[CH];
        size_t b0 = first / Q8_0_BLOCK, nb = count / Q8_0_BLOCK;
        for (size_t k = 0; k < nb; k += CH) {
            size_t m = nb - k < CH ? nb - k : CH;
            moelm_status s = file_pread(g->fd, g->path, buf, m * sizeof(BlockQ8_0), at + (b0 + k) * sizeof(BlockQ8_0), what);
            if (s) return s;
            q8_0_dequantize(dst + k * Q8_0_BLOCK, buf, m * Q8_0_BLOCK);
        }
        return MOELM_OK;
    }
    default:
        return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\" has type %s, which cannot be read as float (F32, F16, "
                          "BF16 and Q8_0 can)", g->path, t->name, gguf_tensor_type_name(t->type));
    }
}

moelm_status gguf_read_tensor_raw(const Gguf *g, const GgufTensorInfo *t, void *dst, uint64_t first_byte, uint64_t n) {
    CHECK(first_byte <= t->nbytes && n <= t->nbytes - first_byte);
    char what[96];
    snprintf(what, sizeof what, "tensor \"%s\"", t->name);
    return file_pread(g->fd, g->path, dst, n, g->data_start + t->offset + first_byte, what);
}

/* ---- writing ---------------------------------------------------------------------------------- */

typedef struct {
    char *name;
    GgufTensorType type;
    int ndim;
    int64_t shape[GGUF_MAX_DIMS];
    const float *data;
    uint64_t nbytes;
} WTensor;

struct GgufWriter {
    StrBuf kv;          /* the metadata section as bytes */
    uint64_t nkv;
    char **keys;        /* [nkv] for the duplicate check */
    uint32_t alignment;
    WTensor *t;
    int nt, cap_t;
    int failed;         /* an allocation failed */
};

GgufWriter *gguf_writer_new(void) {
    GgufWriter *w = moelm_calloc(1, sizeof *w);
    if (w) w->alignment = GGUF_DEFAULT_ALIGNMENT;
    return w;
}

void gguf_writer_free(GgufWriter *w) {
    if (!w) return;
    for (uint64_t i = 0; i < w->nkv; i++) moelm_free(w->keys[i]);
    for (int i = 0; i < w->nt; i++) moelm_free(w->t[i].name);
    moelm_free(w->keys);
    moelm_free(w->t);
    sb_free(&w->kv);
    moelm_free(w);
}

static void put_u32(StrBuf *b, uint32_t v) { sb_append(b, &v, 4); }
static void put_u64(StrBuf *b, uint64_t v) { sb_append(b, &v, 8); }
static void put_str(StrBuf *b, const char *s, uint64_t n) { put_u64(b, n); sb_append(b, s, (size_t)n); }

/* key and value type; the value follows */
static void put_key(GgufWriter *w, const char *key, GgufType t) {
    size_t n = strlen(key);
    CHECK(n > 0 && n <= GGUF_MAX_KEY);
    for (uint64_t i = 0; i < w->nkv; i++) CHECK(strcmp(w->keys[i], key) != 0);
    char **k = moelm_realloc(w->keys, (size_t)(w->nkv + 1) * sizeof(char *));
    char *copy = moelm_strdup(key);
    if (k) w->keys = k;
    if (!k || !copy) {
        moelm_free(copy);
        w->failed = 1;
        return;
    }
    w->keys[w->nkv++] = copy;
    put_str(&w->kv, key, n);
    put_u32(&w->kv, (uint32_t)t);
}

void gguf_writer_add(GgufWriter *w, const char *key, GgufType t, const void *value) {
    CHECK(is_scalar((uint32_t)t));
    if (t == GGUF_TYPE_BOOL) CHECK(*(const uint8_t *)value <= 1);
    if (strcmp(key, "general.alignment") == 0) {
        uint32_t a;
        CHECK(t == GGUF_TYPE_U32);
        memcpy(&a, value, 4);
        CHECK(a > 0 && (a & (a - 1)) == 0);
        w->alignment = a;
    }
    put_key(w, key, t);
    sb_append(&w->kv, value, g_type_size[t]);
}

void gguf_writer_add_u32(GgufWriter *w, const char *key, uint32_t v) { gguf_writer_add(w, key, GGUF_TYPE_U32, &v); }
void gguf_writer_add_i32(GgufWriter *w, const char *key, int32_t v) { gguf_writer_add(w, key, GGUF_TYPE_I32, &v); }
void gguf_writer_add_u64(GgufWriter *w, const char *key, uint64_t v) { gguf_writer_add(w, key, GGUF_TYPE_U64, &v); }
void gguf_writer_add_f32(GgufWriter *w, const char *key, float v) { gguf_writer_add(w, key, GGUF_TYPE_F32, &v); }

void gguf_writer_add_bool(GgufWriter *w, const char *key, int v) {
    uint8_t b = v != 0;
    gguf_writer_add(w, key, GGUF_TYPE_BOOL, &b);
}

void gguf_writer_add_string(GgufWriter *w, const char *key, const char *s) {
    put_key(w, key, GGUF_TYPE_STRING);
    put_str(&w->kv, s, strlen(s));
}

void gguf_writer_add_array(GgufWriter *w, const char *key, GgufType elem, const void *values, uint64_t n) {
    CHECK(is_scalar((uint32_t)elem) && (n == 0 || values));
    if (elem == GGUF_TYPE_BOOL)
        for (uint64_t i = 0; i < n; i++) CHECK(((const uint8_t *)values)[i] <= 1);
    put_key(w, key, GGUF_TYPE_ARRAY);
    put_u32(&w->kv, (uint32_t)elem);
    put_u64(&w->kv, n);
    sb_append(&w->kv, values, (size_t)(n * g_type_size[elem]));
}

void gguf_writer_add_array_str(GgufWriter *w, const char *key, const char *const *strs, uint64_t n) {
    put_key(w, key, GGUF_TYPE_ARRAY);
    put_u32(&w->kv, GGUF_TYPE_STRING);
    put_u64(&w->kv, n);
    for (uint64_t i = 0; i < n; i++) put_str(&w->kv, strs[i], strlen(strs[i]));
}

void gguf_writer_add_tensor(GgufWriter *w, const char *name, GgufTensorType type, int ndim, const int64_t *shape,
                            const float *data) {
    size_t len = strlen(name);
    CHECK(len > 0 && len <= GGUF_MAX_NAME);
    CHECK(type == GGUF_TENSOR_F32 || type == GGUF_TENSOR_F16 || type == GGUF_TENSOR_BF16 || type == GGUF_TENSOR_Q8_0);
    CHECK(ndim >= 1 && ndim <= GGUF_MAX_DIMS && data != NULL);
    for (int i = 0; i < w->nt; i++) CHECK(strcmp(w->t[i].name, name) != 0);
    uint64_t rows = 1;
    for (int d = 0; d < ndim; d++) {
        CHECK(shape[d] > 0);
        if (d < ndim - 1) {
            CHECK((uint64_t)shape[d] <= UINT64_MAX / rows);
            rows *= (uint64_t)shape[d];
        }
    }
    uint64_t row = gguf_row_bytes(type, (uint64_t)shape[ndim - 1]);
    CHECK(row > 0 && rows <= UINT64_MAX / row / 2);   /* Q8_0: the row a multiple of 32 */
    if (w->nt == w->cap_t) {
        int cap = w->cap_t ? 2 * w->cap_t : 16;
        WTensor *t = moelm_realloc(w->t, (size_t)cap * sizeof(WTensor));
        if (!t) { w->failed = 1; return; }
        w->t = t;
        w->cap_t = cap;
    }
    WTensor *t = &w->t[w->nt];
    memset(t, 0, sizeof *t);
    if (!(t->name = moelm_strdup(name))) { w->failed = 1; return; }
    t->type = type;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
    t->data = data;
    t->nbytes = row * rows;
    w->nt++;
}

static uint64_t align_up(uint64_t x, uint32_t a) { return (x + a - 1) / a * a; }

static moelm_status write_zeros(FileWriter *fw, uint64_t n) {
    static const unsigned char zeros[256];
    moelm_status s = MOELM_OK;
    while (n > 0 && !s) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        s = fw_write(fw, zeros, k);
        n -= k;
    }
    return s;
}

/* Streams tensor t's data, converted a chunk at a time through buf (CHUNK floats' worth of bytes). */
enum { CHUNK = 16384 };
static moelm_status write_tensor(FileWriter *fw, const WTensor *t, void *buf, const char *path) {
    if (t->type == GGUF_TENSOR_F32) return fw_write(fw, t->data, (size_t)t->nbytes);
    uint64_t n = 1;   /* elements */
    for (int d = 0; d < t->ndim; d++) n *= (uint64_t)t->shape[d];
    moelm_status s = MOELM_OK;
    for (uint64_t i = 0; i < n && !s; i += CHUNK) {
        size_t k = n - i < CHUNK ? (size_t)(n - i) : CHUNK;
        const float *src = t->data + i;
        if (t->type == GGUF_TENSOR_F16) {
            fp16_from_f32(buf, src, k);
            s = fw_write(fw, buf, k * 2);
        } else if (t->type == GGUF_TENSOR_BF16) {
            bf16_from_f32(buf, src, k);
            s = fw_write(fw, buf, k * 2);
        } else {
            size_t bad = q8_0_quantize(buf, src, k);   /* CHUNK is a multiple of 32, so is every row */
            if (bad) {
                fw_abort(fw);
                return moelm_fail(MOELM_ERR_ARG, "%s: tensor \"%s\": %zu blocks of 32 hold a NaN, an Inf or a value "
                                  "beyond Q8_0's range (|x| >= ~8.3e6); not written", path, t->name, bad);
            }
            s = fw_write(fw, buf, k / Q8_0_BLOCK * sizeof(BlockQ8_0));
        }
    }
    return s;
}

moelm_status gguf_writer_write(GgufWriter *w, const char *path) {
    if (w->failed || w->kv.failed) return moelm_fail(MOELM_ERR_NOMEM, "%s: out of memory collecting the GGUF metadata", path);
    StrBuf h = { 0 };
    sb_append(&h, "GGUF", 4);
    put_u32(&h, GGUF_VERSION);
    put_u64(&h, (uint64_t)w->nt);
    put_u64(&h, w->nkv);
    sb_append(&h, w->kv.buf, w->kv.len);
    uint64_t off = 0;
    for (int i = 0; i < w->nt; i++) {
        const WTensor *t = &w->t[i];
        put_str(&h, t->name, strlen(t->name));
        put_u32(&h, (uint32_t)t->ndim);
        for (int d = t->ndim - 1; d >= 0; d--) put_u64(&h, (uint64_t)t->shape[d]);   /* ne: contiguous first */
        put_u32(&h, (uint32_t)t->type);
        put_u64(&h, off);
        off += align_up(t->nbytes, w->alignment);
    }
    uint64_t pad = align_up(h.len, w->alignment) - h.len;
    void *buf = moelm_malloc(CHUNK * sizeof(float));
    moelm_status s = MOELM_OK;
    if (h.failed || !buf) s = moelm_fail(MOELM_ERR_NOMEM, "%s: out of memory writing", path);
    FileWriter fw;
    if (!s) s = fw_open(&fw, path);
    if (!s) s = fw_write(&fw, h.buf, h.len);
    if (!s) s = write_zeros(&fw, pad);
    for (int i = 0; i < w->nt && !s; i++) {
        s = write_tensor(&fw, &w->t[i], buf, path);
        if (!s) s = write_zeros(&fw, align_up(w->t[i].nbytes, w->alignment) - w->t[i].nbytes);
    }
    if (!s) s = fw_commit(&fw);
    moelm_free(buf);
    sb_free(&h);
    return s;
}

int gguf_is_file(const char *path) {
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char magic[4];
    int yes = read(fd, magic, 4) == 4 && !memcmp(magic, "GGUF", 4);
    close(fd);
    return yes;
}
