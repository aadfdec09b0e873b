/* safetensors.c: safetensors reader (full header validation) and streaming atomic writer.
 * See safetensors.h for the format and the rules enforced.
 *
 * F16 and BF16 use backend/q8.h's and backend/gemm.h's conversions (exact widening, rounding to
 * nearest even). The open file keeps the parsed header tree alive: tensor names and metadata strings point into
 * it. Entries are kept twice: sorted by name (lookup) and in data order (validation, st_name).
 */
#include "io/safetensors.h"
#include "backend/gemv.h"
#include "backend/q8.h"
#include "io/fileio.h"
#include "io/json.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian machine (the format stores little-endian data)"
#endif

typedef struct { const char *name; unsigned size; } DType;

static const DType g_dtypes[] = {
    { "BOOL", 1 }, { "U8", 1 }, { "I8", 1 }, { "F8_E5M2", 1 }, { "F8_E4M3", 1 },
    { "I16", 2 }, { "U16", 2 }, { "F16", 2 }, { "BF16", 2 },
    { "I32", 4 }, { "U32", 4 }, { "F32", 4 },
    { "I64", 8 }, { "U64", 8 }, { "F64", 8 },
};

typedef struct {
    const char *name;             /* points into the header tree */
    const char *dtype;            /* a g_dtypes name */
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end;          /* byte offsets in the data region */
} StEntry;

struct SafeTensors {
    char *path;
    int fd;
    uint64_t data_start;          /* 8 + header length */
    uint64_t data_size;
    Json *header;
    int count;
    StEntry *by_name;             /* [count] sorted by name */
    StEntry *by_offset;           /* [count] sorted by (begin, end) */
    const Json *meta;             /* the __metadata__ object, or NULL */
};

/* ---- writing ---------------------------------------------------------------------------------- */

static const char *const g_write_names[] = { "F32", "F16", "BF16" };

const char *st_dtype_name(StDtype t) {
    CHECK(t >= ST_F32 && t <= ST_BF16);
    return g_write_names[t];
}

moelm_status st_write(const char *path, const StTensor *tensors, int count, const char *const *meta_kv) {
    return st_write_as(path, tensors, NULL, count, meta_kv);
}

/* Writes src[n] as dtype t: F32 as it is, F16/BF16 rounded through buf[cap] a chunk at a time. */
static moelm_status write_converted(FileWriter *w, const float *src, size_t n, StDtype t, uint16_t *buf,
                                    size_t cap) {
    if (t == ST_F32) return fw_write(w, src, n * sizeof(float));
    moelm_status st = MOELM_OK;
    for (size_t i = 0; i < n && !st; i += cap) {
        size_t k = n - i < cap ? n - i : cap;
        if (t == ST_F16) fp16_from_f32(buf, src + i, k);
        else for (size_t j = 0; j < k; j++) buf[j] = bf16_round(src[i + j]);
        st = fw_write(w, buf, k * sizeof(uint16_t));
    }
    return st;
}

moelm_status st_write_as(const char *path, const StTensor *tensors, const StDtype *dtypes, int count,
                         const char *const *meta_kv) {
    return st_write_from(path, tensors, dtypes, count, meta_kv, NULL, NULL);
}

moelm_status st_write_from(const char *path, const StTensor *tensors, const StDtype *dtypes, int count,
                           const char *const *meta_kv, StSource source, void *ctx) {
    CHECK(count >= 0 && (count == 0 || tensors));
    StrBuf h = { 0 };
    sb_append(&h, "{", 1);
    int first = 1;
    if (meta_kv && meta_kv[0]) {
        sb_append(&h, "\"__metadata__\":{", 16);
        for (int i = 0; meta_kv[i]; i += 2) {
            CHECK(meta_kv[i + 1] != NULL);   /* keys and values come in pairs */
            for (int k = 0; k < i; k += 2) CHECK(strcmp(meta_kv[k], meta_kv[i]) != 0);
            if (i) sb_append(&h, ",", 1);
            sb_json_string(&h, meta_kv[i]);
            sb_append(&h, ":", 1);
            sb_json_string(&h, meta_kv[i + 1]);
        }
        sb_append(&h, "}", 1);
        first = 0;
    }
    uint64_t off = 0;
    for (int i = 0; i < count; i++) {
        const StTensor *t = &tensors[i];
        CHECK(t->name && t->name[0] && strcmp(t->name, "__metadata__") != 0);
        CHECK(t->ndim >= 0 && t->ndim <= 4);
        for (int k = 0; k < i; k++) CHECK(strcmp(tensors[k].name, t->name) != 0);
        uint64_t elems = 1;
        for (int d = 0; d < t->ndim; d++) {
            CHECK(t->shape[d] >= 0);
            CHECK(t->shape[d] == 0 || elems <= UINT64_MAX / 4 / (uint64_t)t->shape[d]);
            elems *= (uint64_t)t->shape[d];
        }
        CHECK(elems == 0 || t->data || source);
        StDtype dt = dtypes ? dtypes[i] : ST_F32;
        uint64_t nb = elems * (dt == ST_F32 ? 4 : 2);
        if (!first) sb_append(&h, ",", 1);
        first = 0;
        sb_json_string(&h, t->name);
        sb_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype_name(dt));
        for (int d = 0; d < t->ndim; d++) sb_printf(&h, d ? ",%lld" : "%lld", (long long)t->shape[d]);
        sb_printf(&h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                  (unsigned long long)(off + nb));
        off += nb;
    }
    sb_append(&h, "}", 1);
    while (!h.failed && h.len % 8) sb_append(&h, " ", 1);   /* data start 8-byte aligned */
    if (h.failed) {
        sb_free(&h);
        return moelm_fail(MOELM_ERR_NOMEM, "%s: out of memory building the safetensors header", path);
    }
    enum { CHUNK = 16384 };   /* elements converted at a time (32 KiB) */
    uint16_t *buf = NULL;
    for (int i = 0; dtypes && i < count && !buf; i++)
        if (dtypes[i] != ST_F32 && !(buf = moelm_malloc(CHUNK * sizeof(uint16_t)))) {
            sb_free(&h);
            return moelm_fail_context(MOELM_ERR_NOMEM, "%s: writing", path);
        }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    FileWriter w;
    moelm_status st = fw_open(&w, path);
    if (!st) st = fw_write(&w, len8, 8);
    if (!st) st = fw_write(&w, h.buf, h.len);
    for (int i = 0; i < count && !st; i++) {
        const StTensor *t = &tensors[i];
        size_t elems = 1;
        for (int d = 0; d < t->ndim; d++) elems *= (size_t)t->shape[d];
        StDtype dt = dtypes ? dtypes[i] : ST_F32;
        if (t->data) {
            if (elems) st = write_converted(&w, t->data, elems, dt, buf, CHUNK);
            continue;
        }
        for (size_t off = 0, got = 0; off < elems && !st; off += got) {   /* the source's pieces, in order */
            const float *p = source(ctx, i, off, elems - off, &got);
            CHECK(p != NULL && got >= 1 && got <= elems - off);
            st = write_converted(&w, p, got, dt, buf, CHUNK);
        }
    }
    if (!st) st = fw_commit(&w);
    moelm_free(buf);
    sb_free(&h);
    return st;
}

/* ---- reading ---------------------------------------------------------------------------------- */

static const DType *dtype_find(const char *s) {
    for (size_t i = 0; i < sizeof g_dtypes / sizeof g_dtypes[0]; i++)
        if (strcmp(g_dtypes[i].name, s) == 0) return &g_dtypes[i];
    return NULL;
}

static int entry_name_cmp(const void *a, const void *b) {
    return strcmp(((const StEntry *)a)->name, ((const StEntry *)b)->name);
}

static int entry_offset_cmp(const void *a, const void *b) {
    const StEntry *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Validates one tensor entry `name: {...}` into e. */
static moelm_status parse_entry(const char *path, const char *raw_name, const Json *v, uint64_t data_size,
                                StEntry *e) {
    memset(e, 0, sizeof *e);
    e->name = raw_name;
    char nbuf[96], kbuf[48];
    const char *name = json_display(raw_name, nbuf, sizeof nbuf);   /* for messages */
    if (name[0] == 0) return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor with an empty name", path);
    if (json_type(v) != JSON_OBJECT)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\": entry is not a JSON object", path, name);
    for (size_t i = 0; i < json_len(v); i++) {
        const char *k = json_key_at(v, i);
        if (strcmp(k, "dtype") && strcmp(k, "shape") && strcmp(k, "data_offsets"))
            return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\": unknown field \"%s\"", path, name,
                              json_display(k, kbuf, sizeof kbuf));
    }
    const Json *jd = json_get(v, "dtype"), *js = json_get(v, "shape"), *jo = json_get(v, "data_offsets");
    if (!jd) return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\": missing \"dtype\"", path, name);
    if (!js) return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\": missing \"shape\"", path, name);
    if (!jo) return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\": missing \"data_offsets\"", path, name);
    if (json_type(jd) != JSON_STRING)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\": dtype is not a string", path, name);
    const DType *dt = dtype_find(json_string(jd));
    if (!dt) {
        char shown[48];
        json_display(json_string(jd), shown, sizeof shown);
        return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\": unknown dtype \"%s\"", path, name, shown);
    }
    e->dtype = dt->name;
    if (json_type(js) != JSON_ARRAY)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\": shape is not an array", path, name);
    if (json_len(js) > ST_MAX_DIMS)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\": shape has %zu dimensions, at most %d allowed",
                          path, name, json_len(js), ST_MAX_DIMS);
    e->ndim = (int)json_len(js);
    uint64_t elems = 1;
    int overflow = 0;
    for (int d = 0; d < e->ndim; d++) {
        int64_t x;
        if (!json_int64(json_at(js, (size_t)d), &x) || x < 0)
            return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\": shape[%d] is not a non-negative integer",
                              path, name, d);
        e->shape[d] = x;
        if (x == 0) elems = 0;
        else if (elems > UINT64_MAX / (uint64_t)x) overflow = 1;
        else elems *= (uint64_t)x;
    }
    if (elems == 0) overflow = 0;   /* a zero dimension makes the product 0 whatever the others are */
    if (overflow || elems > UINT64_MAX / dt->size)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\": shape product overflows", path, name);
    uint64_t nbytes = elems * dt->size;
    if (json_type(jo) != JSON_ARRAY || json_len(jo) != 2)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\": data_offsets is not a [begin, end] pair",
                          path, name);
    int64_t b, en;
    if (!json_int64(json_at(jo, 0), &b) || !json_int64(json_at(jo, 1), &en) || b < 0 || en < 0)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\": data_offsets are not non-negative integers",
                          path, name);
    if (en < b)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\": data_offsets end %lld is before begin %lld",
                          path, name, (long long)en, (long long)b);
    e->begin = (uint64_t)b;
    e->end = (uint64_t)en;
    if (e->end - e->begin != nbytes)
        return moelm_fail(MOELM_ERR_FORMAT,
                          "%s: tensor \"%s\": data_offsets span %llu bytes but dtype %s and the shape need %llu",
                          path, name, (unsigned long long)(e->end - e->begin), dt->name,
                          (unsigned long long)nbytes);
    if (e->end > data_size)
        return moelm_fail(MOELM_ERR_FORMAT,
                          "%s: tensor \"%s\": data_offsets [%llu, %llu) reach past the data region (%llu bytes)",
                          path, name, (unsigned long long)e->begin, (unsigned long long)e->end,
                          (unsigned long long)data_size);
    return MOELM_OK;
}

static moelm_status validate_header(SafeTensors *st) {
    const char *path = st->path;
    const Json *root = st->header;
    if (json_type(root) != JSON_OBJECT)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: header is not a JSON object", path);
    size_t n = json_len(root);
    const Json *meta = json_get(root, "__metadata__");
    size_t ntensors = n - (meta ? 1 : 0);
    if (meta) {
        if (json_type(meta) != JSON_OBJECT)
            return moelm_fail(MOELM_ERR_FORMAT, "%s: __metadata__ is not a JSON object", path);
        for (size_t i = 0; i < json_len(meta); i++) {
            char kbuf[64];
            if (json_type(json_at(meta, i)) != JSON_STRING)
                return moelm_fail(MOELM_ERR_FORMAT, "%s: __metadata__ value of \"%s\" is not a string", path,
                                  json_display(json_key_at(meta, i), kbuf, sizeof kbuf));
        }
        st->meta = meta;
    }
    if (ntensors > 0) {
        st->by_name = moelm_malloc(ntensors * sizeof(StEntry));
        st->by_offset = moelm_malloc(ntensors * sizeof(StEntry));
        if (!st->by_name || !st->by_offset) return moelm_fail_context(MOELM_ERR_NOMEM, "%s: reading header", path);
    }
    int k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name = json_key_at(root, i);
        if (strcmp(name, "__metadata__") == 0) continue;
        moelm_status s = parse_entry(path, name, json_at(root, i), st->data_size, &st->by_offset[k]);
        if (s) return s;
        k++;
    }
    st->count = k;
    if (k) {
        memcpy(st->by_name, st->by_offset, (size_t)k * sizeof(StEntry));
        qsort(st->by_name, (size_t)k, sizeof(StEntry), entry_name_cmp);
        qsort(st->by_offset, (size_t)k, sizeof(StEntry), entry_offset_cmp);
    }
    /* The tensors must tile the data region: no overlaps, no holes, nothing after the last. */
    uint64_t pos = 0;
    char n1[64], n2[64];
    for (int i = 0; i < k; i++) {
        const StEntry *e = &st->by_offset[i];
        if (e->begin < pos)
            return moelm_fail(MOELM_ERR_FORMAT, "%s: tensors \"%s\" and \"%s\" overlap (bytes [%llu, %llu) and "
                              "[%llu, %llu))", path, json_display(st->by_offset[i - 1].name, n1, sizeof n1),
                              json_display(e->name, n2, sizeof n2),
                              (unsigned long long)st->by_offset[i - 1].begin,
                              (unsigned long long)st->by_offset[i - 1].end,
                              (unsigned long long)e->begin, (unsigned long long)e->end);
        if (e->begin > pos)
            return moelm_fail(MOELM_ERR_FORMAT, "%s: hole in the data region: bytes [%llu, %llu) before tensor "
                              "\"%s\" belong to no tensor", path, (unsigned long long)pos,
                              (unsigned long long)e->begin, json_display(e->name, n1, sizeof n1));
        pos = e->end;
    }
    if (pos != st->data_size)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: the data region has %llu bytes but the tensors cover %llu "
                          "(truncated or trailing data)", path, (unsigned long long)st->data_size,
                          (unsigned long long)pos);
    return MOELM_OK;
}

moelm_status st_open(SafeTensors **out, const char *path) {
    *out = NULL;
    SafeTensors *st = moelm_calloc(1, sizeof *st);
    if (!st) return moelm_fail_context(MOELM_ERR_NOMEM, "%s: opening", path);
    st->fd = -1;
    moelm_status s = MOELM_OK;
    char *hbuf = NULL;
    st->path = moelm_strdup(path);
    if (!st->path) { s = moelm_fail_context(MOELM_ERR_NOMEM, "%s: opening", path); goto fail; }
    st->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);   /* a FIFO must not block: it is refused below */
    if (st->fd < 0) { s = moelm_fail(MOELM_ERR_IO, "%s: cannot open: %s", path, strerror(errno)); goto fail; }
    struct stat sb;
    if (fstat(st->fd, &sb) != 0) { s = moelm_fail(MOELM_ERR_IO, "%s: cannot stat: %s", path, strerror(errno)); goto fail; }
    if (!S_ISREG(sb.st_mode)) { s = moelm_fail(MOELM_ERR_IO, "%s: not a regular file", path); goto fail; }
    uint64_t fsize = (uint64_t)sb.st_size;
    if (fsize < 8) {
        s = moelm_fail(MOELM_ERR_FORMAT, "%s: file is %llu bytes, too short for a safetensors file (8-byte "
                       "header length, then the header)", path, (unsigned long long)fsize);
        goto fail;
    }
    unsigned char len8[8];
    if ((s = file_pread(st->fd, path, len8, 8, 0, "the header length"))) goto fail;
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)len8[i] << (8 * i);
    if (hlen == 0) { s = moelm_fail(MOELM_ERR_FORMAT, "%s: header length is 0", path); goto fail; }
    if (hlen > ST_MAX_HEADER) {
        s = moelm_fail(MOELM_ERR_FORMAT, "%s: header length %llu exceeds the %u-byte limit (not a safetensors "
                       "file?)", path, (unsigned long long)hlen, ST_MAX_HEADER);
        goto fail;
    }
    if (hlen > fsize - 8) {
        s = moelm_fail(MOELM_ERR_FORMAT, "%s: header length %llu exceeds the %llu bytes after the length field "
                       "(truncated file?)", path, (unsigned long long)hlen, (unsigned long long)(fsize - 8));
        goto fail;
    }
    st->data_start = 8 + hlen;
    st->data_size = fsize - st->data_start;
    hbuf = moelm_malloc((size_t)hlen);
    if (!hbuf) { s = moelm_fail_context(MOELM_ERR_NOMEM, "%s: reading header", path); goto fail; }
    if ((s = file_pread(st->fd, path, hbuf, hlen, 8, "the header"))) goto fail;
    {
        size_t wlen = strlen(path) + 16;
        char *what = moelm_malloc(wlen);
        if (!what) { s = moelm_fail_context(MOELM_ERR_NOMEM, "%s: reading header", path); goto fail; }
        snprintf(what, wlen, "%s: header", path);
        s = json_parse(&st->header, hbuf, (size_t)hlen, what);
        moelm_free(what);
        if (s) goto fail;
    }
    moelm_free(hbuf);
    hbuf = NULL;
    if ((s = validate_header(st))) goto fail;
    *out = st;
    return MOELM_OK;
fail:
    moelm_free(hbuf);
    st_close(st);
    return s;
}

int st_count(const SafeTensors *st) { return st->count; }

const char *st_name(const SafeTensors *st, int i) {
    if (i < 0 || i >= st->count) return NULL;
    return st->by_offset[i].name;
}

static const StEntry *find(const SafeTensors *st, const char *name) {
    if (!st->count) return NULL;
    StEntry key;
    key.name = name;
    return bsearch(&key, st->by_name, (size_t)st->count, sizeof(StEntry), entry_name_cmp);
}

int st_info(const SafeTensors *st, const char *name, const char **dtype, int *ndim, int64_t *shape) {
    const StEntry *e = find(st, name);
    if (!e) return 0;
    if (dtype) *dtype = e->dtype;
    if (ndim) *ndim = e->ndim;
    if (shape) for (int d = 0; d < e->ndim; d++) shape[d] = e->shape[d];
    return 1;
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, cap - k, "[");
    for (int d = 0; d < ndim && k < cap; d++)
        k += (size_t)snprintf(buf + k, cap - k, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

moelm_status st_check_shape(const char *path, const char *name, int have_ndim, const int64_t *have, int ndim,
                            const int64_t *want) {
    int same = have_ndim == ndim;
    for (int d = 0; same && d < ndim; d++) same = have[d] == want[d];
    if (same) return MOELM_OK;
    char hs[160], ws[160];
    shape_str(hs, sizeof hs, have_ndim, have);
    shape_str(ws, sizeof ws, ndim, want);
    return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\" has shape %s, expected %s", path, name, hs, ws);
}

moelm_status st_read_f32(const SafeTensors *st, const char *name, float *dst, int ndim, const int64_t *shape) {
    return st_read_f32_part(st, name, dst, ndim, shape, 0, SIZE_MAX);
}

moelm_status st_read_f32_part(const SafeTensors *st, const char *name, float *dst, int ndim, const int64_t *shape,
                              size_t first, size_t count) {
    CHECK(ndim >= 0 && ndim <= ST_MAX_DIMS);
    const StEntry *e = find(st, name);
    if (!e) return moelm_fail(MOELM_ERR_FORMAT, "%s: no tensor named \"%s\"", st->path, name);
    int f32 = strcmp(e->dtype, "F32") == 0, f16 = strcmp(e->dtype, "F16") == 0, bf16 = strcmp(e->dtype, "BF16") == 0;
    if (!f32 && !f16 && !bf16)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\" has dtype %s, which is not a float type "
                          "(F32, F16 or BF16)", st->path, name, e->dtype);
    moelm_status sc = st_check_shape(st->path, name, e->ndim, e->shape, ndim, shape);
    if (sc) return sc;
    size_t esize = f32 ? 4 : 2;
    uint64_t total = (e->end - e->begin) / esize;
    if (count == SIZE_MAX) count = first <= total ? (size_t)(total - first) : 0;
    CHECK(first <= total && count <= total - first);   /* the caller's part lies inside the checked shape */
    if (count == 0) return MOELM_OK;
    CHECK(dst != NULL);
    char what[64 + 32];
    snprintf(what, sizeof what, "tensor \"%.64s\"", name);
    if (f32) return file_pread(st->fd, st->path, dst, count * 4, st->data_start + e->begin + first * 4, what);
    /* 16-bit values read into the upper half of dst, then widened in place */
    moelm_status s = file_pread(st->fd, st->path, (char *)dst + 2 * count, count * 2,
                             st->data_start + e->begin + first * 2, what);
    if (!s) widen16_in_place(dst, count, bf16);
    return s;
}

moelm_status st_read_i32(const SafeTensors *st, const char *name, int32_t *dst, int ndim, const int64_t *shape) {
    CHECK(ndim >= 0 && ndim <= ST_MAX_DIMS);
    const StEntry *e = find(st, name);
    if (!e) return moelm_fail(MOELM_ERR_FORMAT, "%s: no tensor named \"%s\"", st->path, name);
    if (strcmp(e->dtype, "I32"))
        return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\" has dtype %s, expected I32", st->path, name, e->dtype);
    moelm_status sc = st_check_shape(st->path, name, e->ndim, e->shape, ndim, shape);
    if (sc) return sc;
    char what[64 + 32];
    snprintf(what, sizeof what, "tensor \"%.64s\"", name);
    uint64_t bytes = e->end - e->begin;
    return bytes ? file_pread(st->fd, st->path, dst, bytes, st->data_start + e->begin, what) : MOELM_OK;
}

const char *st_meta(const SafeTensors *st, const char *key) {
    return st->meta ? json_string(json_get(st->meta, key)) : NULL;
}

void st_close(SafeTensors *st) {
    if (!st) return;
    if (st->fd >= 0) close(st->fd);
    json_free(st->header);
    moelm_free(st->by_name);
    moelm_free(st->by_offset);
    moelm_free(st->path);
    moelm_free(st);
}
