/* test_gguf.c: GGUF v3 (src/io/gguf.c): the writer and the reader against each other and against
 * bytes built here by hand from the format description; every truncation of a valid file; a
 * catalogue of hostile headers; allocation and write failures. The independent reader
 * (@huggingface/gguf) is tests/test_gguf_js.sh, on files this program leaves in build/tmp/gguf
 * when run with an argument: `test_gguf --write-fixtures DIR`.
 */
#include "test.h"
#include "backend/gemv.h"
#include "backend/q8.h"
#include "common/util.h"
#include "io/fileio.h"
#include "io/gguf.h"
#include "io/json.h"

#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TMP "build/tmp/gguf"

/* ---- a file with every kind of metadata and every tensor type ---------------------------------- */

enum { QR = 5, QK = 96 };
static float g_f32[15], g_f16[24], g_bf16[7], g_q8[QR * QK];

static void fill(void) {
    Rng r;
    rng_seed(&r, 9);
    for (int i = 0; i < 15; i++) g_f32[i] = rng_normal(&r);
    for (int i = 0; i < 24; i++) g_f16[i] = rng_normal(&r) * 100.0f;
    for (int i = 0; i < 7; i++) g_bf16[i] = rng_normal(&r) * 1e20f;
    for (int i = 0; i < QR * QK; i++) g_q8[i] = rng_normal(&r) * (i < QK ? 1e-3f : 1.0f);
    g_q8[7] = 0.0f;
    for (int i = 64; i < 96; i++) g_q8[i] = 0.0f;   /* an all-zero block: d = 0 */
}

static const char *const g_strs[] = { "<unk>", "", "h\xc3\xa9llo", "a b" };
static const int32_t g_i32s[] = { -1, 0, 2147483647, -2147483647 - 1 };
static const float g_f32s[] = { 1.5f, -0.0f, 3e38f };
static const uint8_t g_bools[] = { 1, 0, 1 };
static const uint64_t g_u64s[] = { 0, UINT64_MAX };

/* Writes the rich file (alignment `align`: 0 leaves general.alignment out). */
static moelm_status write_rich(const char *path, uint32_t align) {
    GgufWriter *w = gguf_writer_new();
    CHECK(w);
    gguf_writer_add_string(w, "general.architecture", "moelm");
    if (align) gguf_writer_add_u32(w, "general.alignment", align);
    uint8_t u8 = 200; int8_t i8 = -100; uint16_t u16 = 65535; int16_t i16 = -32768; double f64 = -1.0 / 3.0;
    int64_t i64 = INT64_MIN;
    gguf_writer_add(w, "t.u8", GGUF_TYPE_U8, &u8);
    gguf_writer_add(w, "t.i8", GGUF_TYPE_I8, &i8);
    gguf_writer_add(w, "t.u16", GGUF_TYPE_U16, &u16);
    gguf_writer_add(w, "t.i16", GGUF_TYPE_I16, &i16);
    gguf_writer_add_u32(w, "t.u32", 4000000000u);
    gguf_writer_add_i32(w, "t.i32", -7);
    gguf_writer_add_f32(w, "t.f32", 0.1f);
    gguf_writer_add_bool(w, "t.bool", 1);
    gguf_writer_add_u64(w, "t.u64", 1ull << 40);
    gguf_writer_add(w, "t.i64", GGUF_TYPE_I64, &i64);
    gguf_writer_add(w, "t.f64", GGUF_TYPE_F64, &f64);
    gguf_writer_add_array_str(w, "t.strs", g_strs, 4);
    gguf_writer_add_array(w, "t.i32s", GGUF_TYPE_I32, g_i32s, 4);
    gguf_writer_add_array(w, "t.f32s", GGUF_TYPE_F32, g_f32s, 3);
    gguf_writer_add_array(w, "t.bools", GGUF_TYPE_BOOL, g_bools, 3);
    gguf_writer_add_array(w, "t.u64s", GGUF_TYPE_U64, g_u64s, 2);
    gguf_writer_add_array(w, "t.empty", GGUF_TYPE_U8, NULL, 0);
    gguf_writer_add_array_str(w, "t.nostrs", NULL, 0);
    int64_t s1[2] = { 3, 5 }, s2[3] = { 2, 3, 4 }, s3[1] = { 7 }, s4[2] = { QR, QK };
    gguf_writer_add_tensor(w, "f32.weight", GGUF_TENSOR_F32, 2, s1, g_f32);
    gguf_writer_add_tensor(w, "f16.weight", GGUF_TENSOR_F16, 3, s2, g_f16);
    gguf_writer_add_tensor(w, "bf16.bias", GGUF_TENSOR_BF16, 1, s3, g_bf16);
    gguf_writer_add_tensor(w, "blk.0.ffn_up.weight", GGUF_TENSOR_Q8_0, 2, s4, g_q8);
    moelm_status s = gguf_writer_write(w, path);
    gguf_writer_free(w);
    return s;
}

static void expect_rich(const char *path, uint32_t align) {
    Gguf *g = NULL;
    EXPECT_MSG(gguf_open(&g, path) == MOELM_OK, "%s", moelm_last_error());
    if (!g) return;
    EXPECT(gguf_alignment(g) == (align ? align : 32) && gguf_data_offset(g) % gguf_alignment(g) == 0);
    EXPECT(gguf_kv_count(g) == (align ? 20 : 19));
    EXPECT(strcmp(gguf_kv_key(g, 0), "general.architecture") == 0 && gguf_kv_key(g, 99) == NULL);
    const char *s;
    uint64_t len;
    EXPECT(gguf_get_string(g, "general.architecture", &s, &len) == MOELM_OK && strcmp(s, "moelm") == 0 && len == 5);
    uint8_t u8 = 0, b = 0; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; float f32; uint64_t u64;
    int64_t i64; double f64;
    EXPECT(gguf_get(g, "t.u8", GGUF_TYPE_U8, &u8) == MOELM_OK && u8 == 200);
    EXPECT(gguf_get(g, "t.i8", GGUF_TYPE_I8, &i8) == MOELM_OK && i8 == -100);
    EXPECT(gguf_get(g, "t.u16", GGUF_TYPE_U16, &u16) == MOELM_OK && u16 == 65535);
    EXPECT(gguf_get(g, "t.i16", GGUF_TYPE_I16, &i16) == MOELM_OK && i16 == -32768);
    EXPECT(gguf_get(g, "t.u32", GGUF_TYPE_U32, &u32) == MOELM_OK && u32 == 4000000000u);
    EXPECT(gguf_get(g, "t.i32", GGUF_TYPE_I32, &i32) == MOELM_OK && i32 == -7);
    EXPECT(gguf_get(g, "t.f32", GGUF_TYPE_F32, &f32) == MOELM_OK && f32 == 0.1f);
    EXPECT(gguf_get(g, "t.bool", GGUF_TYPE_BOOL, &b) == MOELM_OK && b == 1);
    EXPECT(gguf_get(g, "t.u64", GGUF_TYPE_U64, &u64) == MOELM_OK && u64 == 1ull << 40);
    EXPECT(gguf_get(g, "t.i64", GGUF_TYPE_I64, &i64) == MOELM_OK && i64 == INT64_MIN);
    EXPECT(gguf_get(g, "t.f64", GGUF_TYPE_F64, &f64) == MOELM_OK && f64 == -1.0 / 3.0);
    /* the widening getters */
    EXPECT(gguf_get_int(g, "t.u32", &i64) == MOELM_OK && i64 == 4000000000ll);
    EXPECT(gguf_get_int(g, "t.i8", &i64) == MOELM_OK && i64 == -100);
    EXPECT(gguf_get_int(g, "t.u64", &i64) == MOELM_OK && i64 == 1ll << 40);
    EXPECT(gguf_get_float(g, "t.f32", &f64) == MOELM_OK && f64 == (double)0.1f);
    EXPECT(gguf_get_float(g, "t.f64", &f64) == MOELM_OK && f64 == -1.0 / 3.0);
    /* type checks: the message names the file, the key and both types */
    EXPECT(gguf_get(g, "t.u32", GGUF_TYPE_I32, &i32) == MOELM_ERR_FORMAT);
    EXPECT_MSG(strstr(moelm_last_error(), path) && strstr(moelm_last_error(), "\"t.u32\"") &&
               strstr(moelm_last_error(), "u32") && strstr(moelm_last_error(), "i32"), "%s", moelm_last_error());
    EXPECT(gguf_get_int(g, "t.f32", &i64) == MOELM_ERR_FORMAT && strstr(moelm_last_error(), "integer"));
    EXPECT(gguf_get_float(g, "t.i32", &f64) == MOELM_ERR_FORMAT);
    EXPECT(gguf_get_string(g, "t.u8", &s, NULL) == MOELM_ERR_FORMAT);
    EXPECT(gguf_get(g, "missing", GGUF_TYPE_U8, &u8) == MOELM_ERR_FORMAT && strstr(moelm_last_error(), "\"missing\""));
    EXPECT(gguf_find_kv(g, "missing") == -1 && gguf_kv_type(g, gguf_find_kv(g, "t.strs")) == GGUF_TYPE_ARRAY);
    /* arrays */
    GgufType et;
    uint64_t n;
    const void *data;
    EXPECT(gguf_get_array(g, "t.strs", &et, &n, &data) == MOELM_OK && et == GGUF_TYPE_STRING && n == 4 && !data);
    for (uint64_t i = 0; i < 4; i++)
        EXPECT(gguf_get_array_str(g, "t.strs", i, &s, &len) == MOELM_OK && strcmp(s, g_strs[i]) == 0 &&
               len == strlen(g_strs[i]));
    EXPECT(gguf_get_array(g, "t.i32s", &et, &n, &data) == MOELM_OK && et == GGUF_TYPE_I32 && n == 4 &&
           memcmp(data, g_i32s, sizeof g_i32s) == 0);
    EXPECT(gguf_get_array(g, "t.f32s", &et, &n, &data) == MOELM_OK && n == 3 && memcmp(data, g_f32s, sizeof g_f32s) == 0);
    EXPECT(gguf_get_array(g, "t.bools", &et, &n, &data) == MOELM_OK && et == GGUF_TYPE_BOOL && memcmp(data, g_bools, 3) == 0);
    EXPECT(gguf_get_array(g, "t.u64s", &et, &n, &data) == MOELM_OK && memcmp(data, g_u64s, sizeof g_u64s) == 0);
    EXPECT(gguf_get_array(g, "t.empty", &et, &n, &data) == MOELM_OK && et == GGUF_TYPE_U8 && n == 0);
    EXPECT(gguf_get_array(g, "t.nostrs", &et, &n, NULL) == MOELM_OK && et == GGUF_TYPE_STRING && n == 0);
    EXPECT(gguf_get_array_str(g, "t.i32s", 0, &s, NULL) == MOELM_ERR_FORMAT);
    EXPECT(gguf_get_array(g, "t.u8", &et, &n, &data) == MOELM_ERR_FORMAT);
    /* tensors: infos, offsets aligned and in order, values */
    EXPECT(gguf_tensor_count(g) == 4 && gguf_tensor_at(g, 4) == NULL);
    const GgufTensorInfo *t = gguf_find_tensor(g, "f16.weight");
    EXPECT(t && t->type == GGUF_TENSOR_F16 && t->ndim == 3 && t->shape[0] == 2 && t->shape[2] == 4 && t->nbytes == 48);
    const GgufTensorInfo *q = gguf_find_tensor(g, "blk.0.ffn_up.weight");
    EXPECT(q && q->type == GGUF_TENSOR_Q8_0 && q->nbytes == QR * QK / 32 * 34 && q->shape[0] == QR && q->shape[1] == QK);
    uint64_t off = 0;
    for (int i = 0; i < 4; i++) {
        const GgufTensorInfo *ti = gguf_tensor_at(g, i);
        EXPECT(ti->offset == off && ti->offset % gguf_alignment(g) == 0);
        off = (ti->offset + ti->nbytes + gguf_alignment(g) - 1) / gguf_alignment(g) * gguf_alignment(g);
    }
    EXPECT(gguf_find_tensor(g, "nope") == NULL);
    float buf[QR * QK];
    int64_t s1[2] = { 3, 5 }, s2[3] = { 2, 3, 4 }, s3[1] = { 7 }, s4[2] = { QR, QK };
    EXPECT(gguf_read_tensor_f32(g, "f32.weight", buf, 2, s1) == MOELM_OK && memcmp(buf, g_f32, sizeof g_f32) == 0);
    EXPECT(gguf_read_tensor_f32(g, "f16.weight", buf, 3, s2) == MOELM_OK);
    for (int i = 0; i < 24; i++) EXPECT(buf[i] == fp16_to_f32(fp16_round(g_f16[i])));
    EXPECT(gguf_read_tensor_f32(g, "bf16.bias", buf, 1, s3) == MOELM_OK);
    for (int i = 0; i < 7; i++) EXPECT(buf[i] == bf16_to_f32(bf16_round(g_bf16[i])));
    EXPECT(gguf_read_tensor_f32(g, "blk.0.ffn_up.weight", buf, 2, s4) == MOELM_OK);
    BlockQ8_0 want[QR * QK / 32], raw[QR * QK / 32];
    EXPECT(q8_0_quantize(want, g_q8, QR * QK) == 0);
    float deq[QR * QK];
    q8_0_dequantize(deq, want, QR * QK);
    EXPECT(memcmp(buf, deq, sizeof deq) == 0);
    for (int i = 0; i < QR * QK; i++) {
        /* within half a step of the scale d = amax / 127, plus 127 times the fp16 rounding of d
         * (relative 2^-11, or 2^-25 absolute where d is an fp16 subnormal) */
        double amax = 0;
        for (int j = i / 32 * 32; j < i / 32 * 32 + 32; j++) amax = fmax(amax, fabsf(g_q8[j]));
        double d = amax / 127;
        EXPECT(fabs((double)buf[i] - g_q8[i]) <= amax / 254 + 127 * fmax(d * 0x1p-11, 0x1p-25) + 1e-30);
    }
    EXPECT(buf[7] == 0.0f && buf[64] == 0.0f && buf[95] == 0.0f);
    /* raw blocks: the quantizer's bytes; a row of them */
    EXPECT(gguf_read_tensor_raw(g, q, raw, 0, q->nbytes) == MOELM_OK && memcmp(raw, want, sizeof want) == 0);
    EXPECT(gguf_read_tensor_raw(g, q, raw, 2 * QK / 32 * 34, QK / 32 * 34) == MOELM_OK &&
           memcmp(raw, want + 2 * QK / 32, QK / 32 * 34) == 0);
    /* parts (Q8_0: whole blocks) */
    EXPECT(gguf_read_tensor_f32_part(g, "blk.0.ffn_up.weight", buf, 2, s4, 96, 64) == MOELM_OK &&
           memcmp(buf, deq + 96, 64 * sizeof(float)) == 0);
    EXPECT(gguf_read_tensor_f32_part(g, "f16.weight", buf, 3, s2, 5, 9) == MOELM_OK && buf[0] == fp16_to_f32(fp16_round(g_f16[5])));
    /* shape mismatches name the file, the tensor and both shapes */
    EXPECT(gguf_read_tensor_f32(g, "f32.weight", buf, 2, s4) == MOELM_ERR_FORMAT);
    EXPECT_MSG(strstr(moelm_last_error(), "f32.weight") && strstr(moelm_last_error(), "[3, 5]") &&
               strstr(moelm_last_error(), "[5, 96]"), "%s", moelm_last_error());
    EXPECT(gguf_read_tensor_f32(g, "nope", buf, 2, s4) == MOELM_ERR_FORMAT);
    gguf_close(g);
    EXPECT(moelm_alloc_live_bytes() == 0);
}

TEST(gguf_roundtrip) {
    EXPECT(write_rich(TMP "/rich.gguf", 0) == MOELM_OK);
    expect_rich(TMP "/rich.gguf", 0);
    EXPECT(write_rich(TMP "/rich64.gguf", 64) == MOELM_OK);
    expect_rich(TMP "/rich64.gguf", 64);
    struct stat sb;
    EXPECT(stat(TMP "/rich.gguf", &sb) == 0 && sb.st_size % 32 == 0);   /* the last tensor padded too */
}

/* ---- bytes by hand ------------------------------------------------------------------------------ */

static void b_u32(StrBuf *b, uint32_t v) { unsigned char x[4]; for (int i = 0; i < 4; i++) x[i] = (unsigned char)(v >> (8 * i)); sb_append(b, x, 4); }
static void b_u64(StrBuf *b, uint64_t v) { unsigned char x[8]; for (int i = 0; i < 8; i++) x[i] = (unsigned char)(v >> (8 * i)); sb_append(b, x, 8); }
static void b_str(StrBuf *b, const char *s) { b_u64(b, strlen(s)); sb_append(b, s, strlen(s)); }
static void b_head(StrBuf *b, uint64_t nt, uint64_t nkv) { sb_append(b, "GGUF", 4); b_u32(b, 3); b_u64(b, nt); b_u64(b, nkv); }
static void b_pad(StrBuf *b, size_t a) { while (b->len % a) sb_append(b, "", 1); }
/* a tensor info with row-major shape given as ne (already reversed) */
static void b_tensor(StrBuf *b, const char *name, uint32_t nd, const uint64_t *ne, uint32_t type, uint64_t off) {
    b_str(b, name);
    b_u32(b, nd);
    for (uint32_t d = 0; d < nd; d++) b_u64(b, ne[d]);
    b_u32(b, type);
    b_u64(b, off);
}

/* One u32 key and one F32 tensor [2, 3] (ne = [3, 2]), by hand: the writer's bytes must be these,
 * and the reader must read a hand-built file. */
TEST(gguf_exact_bytes) {
    float v[6] = { 1, -2, 0.5f, 3, 4, 5 };
    StrBuf b = { 0 };
    b_head(&b, 1, 1);
    b_str(&b, "n");
    b_u32(&b, GGUF_TYPE_U32);
    b_u32(&b, 7);
    uint64_t ne[2] = { 3, 2 };
    b_tensor(&b, "w", 2, ne, GGUF_TENSOR_F32, 0);
    b_pad(&b, 32);
    sb_append(&b, v, sizeof v);
    b_pad(&b, 32);
    GgufWriter *w = gguf_writer_new();
    gguf_writer_add_u32(w, "n", 7);
    int64_t sh[2] = { 2, 3 };
    gguf_writer_add_tensor(w, "w", GGUF_TENSOR_F32, 2, sh, v);
    EXPECT(gguf_writer_write(w, TMP "/tiny.gguf") == MOELM_OK);
    gguf_writer_free(w);
    char *got = NULL;
    size_t n = 0;
    EXPECT(file_read_all(TMP "/tiny.gguf", &got, &n) == MOELM_OK);
    EXPECT(got && n == b.len && memcmp(got, b.buf, n) == 0);
    moelm_free(got);
    /* a hand-built file without the trailing padding and with a u8 array reads */
    b.len -= 32 - 24;
    test_write_file(TMP "/hand.gguf", b.buf, b.len);
    Gguf *g = NULL;
    EXPECT(gguf_open(&g, TMP "/hand.gguf") == MOELM_OK);
    if (g) {
        uint32_t x = 0;
        float r[6];
        EXPECT(gguf_get(g, "n", GGUF_TYPE_U32, &x) == MOELM_OK && x == 7);
        EXPECT(gguf_read_tensor_f32(g, "w", r, 2, sh) == MOELM_OK && memcmp(r, v, sizeof v) == 0);
        EXPECT(gguf_data_offset(g) == 96);   /* 24 + 13 + 37 = 74 bytes of header, padded to 96 */
        gguf_close(g);
    }
    sb_free(&b);
}

/* ---- hostile files ------------------------------------------------------------------------------ */

static void expect_rejected(const char *path, const char *what, const char *needle) {
    Gguf *g = (Gguf *)1;
    moelm_status s = gguf_open(&g, path);
    const char *msg = moelm_last_error();
    EXPECT_MSG(s == MOELM_ERR_FORMAT || s == MOELM_ERR_IO, "%s: accepted (status %d)", what, s);
    EXPECT_MSG(g == NULL, "%s: handle not NULL", what);
    EXPECT_MSG(strncmp(msg, path, strlen(path)) == 0 && !strchr(msg, '\n') && (!needle || strstr(msg, needle)),
               "%s: message \"%s\"", what, msg);
    if (getenv("SHOW_MESSAGES")) printf("  %-34s %s\n", what, msg);
    if (s == MOELM_OK && g) gguf_close(g);
}

/* Every prefix of a valid file shorter than its last tensor's end is refused (truncated header,
 * metadata, tensor infos, padding or data); every longer one opens. */
TEST(gguf_every_truncation) {
    char *data = NULL;
    size_t n = 0;
    EXPECT(write_rich(TMP "/trunc-src.gguf", 0) == MOELM_OK && file_read_all(TMP "/trunc-src.gguf", &data, &n) == MOELM_OK);
    if (!data) return;
    Gguf *g = NULL;
    EXPECT(gguf_open(&g, TMP "/trunc-src.gguf") == MOELM_OK);
    if (!g) { moelm_free(data); return; }
    const GgufTensorInfo *last = gguf_tensor_at(g, gguf_tensor_count(g) - 1);
    size_t end = (size_t)(gguf_data_offset(g) + last->offset + last->nbytes);
    gguf_close(g);
    int wrong = 0;
    for (size_t k = 0; k <= n; k++) {
        test_write_file(TMP "/trunc.gguf", data, k);
        Gguf *t = NULL;
        moelm_status s = gguf_open(&t, TMP "/trunc.gguf");
        if ((s == MOELM_OK) != (k >= end)) { wrong++; if (wrong < 4) printf("  prefix %zu: %s\n", k, moelm_last_error()); }
        if (s != MOELM_OK && (strncmp(moelm_last_error(), TMP "/trunc.gguf", 10) != 0 || strchr(moelm_last_error(), '\n'))) wrong++;
        gguf_close(t);
    }
    EXPECT_MSG(wrong == 0, "%d of %zu prefixes misjudged", wrong, n + 1);
    EXPECT(n > 500);
    moelm_free(data);
    EXPECT(moelm_alloc_live_bytes() == 0);
}

typedef void (*Build)(StrBuf *b);
#define CASE(fn) static void fn(StrBuf *b)

/* A valid base: one key, one F32 tensor of 8 values; the cases vary one thing */
static void base_tail(StrBuf *b, const char *tname, uint32_t nd, const uint64_t *ne, uint32_t type, uint64_t off,
                      size_t data) {
    b_tensor(b, tname, nd, ne, type, off);
    b_pad(b, 32);
    for (size_t i = 0; i < data; i++) sb_append(b, "\0", 1);
}
static const uint64_t NE8[1] = { 8 };
static void kv_u32(StrBuf *b, const char *k, uint32_t v) { b_str(b, k); b_u32(b, GGUF_TYPE_U32); b_u32(b, v); }

CASE(c_valid) { b_head(b, 1, 1); kv_u32(b, "a", 1); base_tail(b, "w", 1, NE8, 0, 0, 32); }
CASE(c_magic) { sb_append(b, "GGUG", 4); b_u32(b, 3); b_u64(b, 0); b_u64(b, 0); }
CASE(c_version2) { sb_append(b, "GGUF", 4); b_u32(b, 2); b_u64(b, 0); b_u64(b, 0); }
CASE(c_bigendian) { sb_append(b, "GGUF", 4); b_u32(b, 0x03000000u); b_u64(b, 0); b_u64(b, 0); }
CASE(c_huge_nkv) { b_head(b, 0, UINT64_MAX); kv_u32(b, "a", 1); }
CASE(c_huge_nt) { b_head(b, 1ull << 40, 0); base_tail(b, "w", 1, NE8, 0, 0, 32); }
CASE(c_nkv_past_end) { b_head(b, 0, 3); kv_u32(b, "a", 1); kv_u32(b, "b", 1); }
CASE(c_key_len_huge) { b_head(b, 0, 1); b_u64(b, 1ull << 62); sb_append(b, "abcdefgh", 8); }
CASE(c_key_len_past) { b_head(b, 0, 1); b_u64(b, 20); sb_append(b, "abc", 3); }
CASE(c_key_over_limit) { b_head(b, 0, 1); b_u64(b, 65536); for (int i = 0; i < 65536; i++) sb_append(b, "k", 1); b_u32(b, 0); sb_append(b, "\1", 1); }
CASE(c_key_empty) { b_head(b, 0, 1); kv_u32(b, "", 1); }
CASE(c_key_nul) { b_head(b, 0, 1); b_u64(b, 3); sb_append(b, "a\0b", 3); b_u32(b, GGUF_TYPE_U32); b_u32(b, 1); }
CASE(c_value_type) { b_head(b, 0, 1); b_str(b, "a"); b_u32(b, 13); b_u32(b, 1); }
CASE(c_value_type_huge) { b_head(b, 0, 1); b_str(b, "a"); b_u32(b, 0xffffffffu); b_u32(b, 1); }
CASE(c_bool_2) { b_head(b, 0, 1); b_str(b, "a"); b_u32(b, GGUF_TYPE_BOOL); sb_append(b, "\2", 1); }
CASE(c_bool_array) { b_head(b, 0, 1); b_str(b, "a"); b_u32(b, GGUF_TYPE_ARRAY); b_u32(b, GGUF_TYPE_BOOL); b_u64(b, 3); sb_append(b, "\1\0\5", 3); }
CASE(c_nested_array) { b_head(b, 0, 1); b_str(b, "a"); b_u32(b, GGUF_TYPE_ARRAY); b_u32(b, GGUF_TYPE_ARRAY); b_u64(b, 1); b_u32(b, 0); b_u64(b, 0); }
CASE(c_array_elem_type) { b_head(b, 0, 1); b_str(b, "a"); b_u32(b, GGUF_TYPE_ARRAY); b_u32(b, 99); b_u64(b, 0); }
CASE(c_array_count_huge) { b_head(b, 0, 1); b_str(b, "a"); b_u32(b, GGUF_TYPE_ARRAY); b_u32(b, GGUF_TYPE_U64); b_u64(b, 1ull << 61); b_u64(b, 0); }
CASE(c_array_count_past) { b_head(b, 0, 1); b_str(b, "a"); b_u32(b, GGUF_TYPE_ARRAY); b_u32(b, GGUF_TYPE_U32); b_u64(b, 3); b_u32(b, 0); b_u32(b, 0); }
CASE(c_strarray_count_huge) { b_head(b, 0, 1); b_str(b, "a"); b_u32(b, GGUF_TYPE_ARRAY); b_u32(b, GGUF_TYPE_STRING); b_u64(b, UINT64_MAX); b_str(b, "x"); }
CASE(c_strarray_len_huge) { b_head(b, 0, 1); b_str(b, "a"); b_u32(b, GGUF_TYPE_ARRAY); b_u32(b, GGUF_TYPE_STRING); b_u64(b, 2); b_str(b, "x"); b_u64(b, UINT64_MAX - 3); }
CASE(c_string_len_huge) { b_head(b, 0, 1); b_str(b, "a"); b_u32(b, GGUF_TYPE_STRING); b_u64(b, UINT64_MAX); sb_append(b, "xyz", 3); }
CASE(c_dup_key) { b_head(b, 0, 2); kv_u32(b, "a", 1); kv_u32(b, "a", 2); }
CASE(c_align_u64) { b_head(b, 0, 1); b_str(b, "general.alignment"); b_u32(b, GGUF_TYPE_U64); b_u64(b, 32); }
CASE(c_align_0) { b_head(b, 0, 1); kv_u32(b, "general.alignment", 0); }
CASE(c_align_3) { b_head(b, 0, 1); kv_u32(b, "general.alignment", 48); }
CASE(c_align_huge) { b_head(b, 1, 1); kv_u32(b, "general.alignment", 1u << 31); base_tail(b, "w", 1, NE8, 0, 0, 32); }
CASE(c_tname_64) { b_head(b, 1, 0); base_tail(b, "0123456789012345678901234567890123456789012345678901234567890123", 1, NE8, 0, 0, 32); }
CASE(c_tname_empty) { b_head(b, 1, 0); base_tail(b, "", 1, NE8, 0, 0, 32); }
CASE(c_tname_dup) { b_head(b, 2, 0); b_tensor(b, "w", 1, NE8, 0, 0); base_tail(b, "w", 1, NE8, 0, 32, 64); }
CASE(c_ndims_0) { b_head(b, 1, 0); base_tail(b, "w", 0, NE8, 0, 0, 32); }
CASE(c_ndims_5) { uint64_t ne[5] = { 1, 1, 1, 1, 8 }; b_head(b, 1, 0); base_tail(b, "w", 5, ne, 0, 0, 32); }
CASE(c_ndims_huge) { b_head(b, 1, 0); b_str(b, "w"); b_u32(b, 0xffffffffu); b_u64(b, 8); b_u32(b, 0); b_u64(b, 0); b_pad(b, 32); }
CASE(c_dim_0) { uint64_t ne[2] = { 8, 0 }; b_head(b, 1, 0); base_tail(b, "w", 2, ne, 0, 0, 32); }
CASE(c_dim_2_63) { uint64_t ne[1] = { 1ull << 63 }; b_head(b, 1, 0); base_tail(b, "w", 1, ne, 0, 0, 32); }
CASE(c_dims_overflow) { uint64_t ne[3] = { 1ull << 32, 1ull << 32, 2 }; b_head(b, 1, 0); base_tail(b, "w", 3, ne, 0, 0, 32); }
CASE(c_bytes_overflow) { uint64_t ne[2] = { 1ull << 31, 1ull << 31 }; b_head(b, 1, 0); base_tail(b, "w", 2, ne, 0, 0, 32); }
CASE(c_type_unknown) { b_head(b, 1, 0); base_tail(b, "w", 1, NE8, 99, 0, 32); }
CASE(c_type_removed) { b_head(b, 1, 0); base_tail(b, "w", 1, NE8, 4, 0, 32); }
CASE(c_q8_row) { uint64_t ne[1] = { 33 }; b_head(b, 1, 0); base_tail(b, "w", 1, ne, GGUF_TENSOR_Q8_0, 0, 64); }
CASE(c_misaligned) { b_head(b, 1, 0); base_tail(b, "w", 1, NE8, 0, 16, 48); }
CASE(c_past_end) { b_head(b, 1, 0); base_tail(b, "w", 1, NE8, 0, 0, 31); }
CASE(c_offset_huge) { b_head(b, 1, 0); base_tail(b, "w", 1, NE8, 0, UINT64_MAX - 31, 32); }
CASE(c_overlap) { uint64_t ne[1] = { 16 }; b_head(b, 2, 0); b_tensor(b, "a", 1, ne, 0, 0); base_tail(b, "b", 1, NE8, 0, 32, 64); }
CASE(c_same_offset) { b_head(b, 2, 0); b_tensor(b, "a", 1, NE8, 0, 0); base_tail(b, "b", 1, NE8, 0, 0, 32); }
CASE(c_empty) { (void)b; }
CASE(c_only_magic) { sb_append(b, "GGUF", 4); }

TEST(gguf_hostile_catalogue) {
    static const struct { const char *what; Build fn; const char *needle; } cases[] = {
        { "empty file", c_empty, "end of file" },
        { "magic only", c_only_magic, "end of file" },
        { "bad magic", c_magic, "magic" },
        { "version 2", c_version2, "version 2" },
        { "big-endian file", c_bigendian, "big-endian" },
        { "2^64-1 metadata entries", c_huge_nkv, "metadata entries" },
        { "2^40 tensors", c_huge_nt, "tensors cannot fit" },
        { "more entries than present", c_nkv_past_end, "cannot fit" },
        { "key length 2^62", c_key_len_huge, "string length" },
        { "key length past the end", c_key_len_past, "cannot fit" },
        { "key of 65536 bytes", c_key_over_limit, "at most 65535" },
        { "empty key", c_key_empty, "empty" },
        { "NUL in a key", c_key_nul, "NUL" },
        { "value type 13", c_value_type, "unknown value type 13" },
        { "value type 2^32-1", c_value_type_huge, "unknown value type" },
        { "bool 2", c_bool_2, "bool value 2" },
        { "bool 5 in an array", c_bool_array, "bool value 5" },
        { "array of arrays", c_nested_array, "array of arrays" },
        { "array element type 99", c_array_elem_type, "element type 99" },
        { "array of 2^61 u64", c_array_count_huge, "exceed" },
        { "array longer than the file", c_array_count_past, "exceed" },
        { "2^64-1 strings", c_strarray_count_huge, "cannot fit" },
        { "array string length huge", c_strarray_len_huge, "length" },
        { "string length 2^64-1", c_string_len_huge, "string length" },
        { "duplicate key", c_dup_key, "duplicate metadata key \"a\"" },
        { "alignment as u64", c_align_u64, "not a u32" },
        { "alignment 0", c_align_0, "power of two" },
        { "alignment 48", c_align_3, "power of two" },
        { "alignment 2^31", c_align_huge, "tensor \"w\"" },
        { "tensor name of 64 bytes", c_tname_64, "at most 63" },
        { "empty tensor name", c_tname_empty, "empty" },
        { "duplicate tensor name", c_tname_dup, "duplicate tensor name \"w\"" },
        { "0 dimensions", c_ndims_0, "0 dimensions" },
        { "5 dimensions", c_ndims_5, "5 dimensions" },
        { "2^32-1 dimensions", c_ndims_huge, "dimensions" },
        { "a dimension of 0", c_dim_0, "dimension 1 is 0" },
        { "a dimension of 2^63", c_dim_2_63, "dimension 0" },
        { "element count overflow", c_dims_overflow, "overflows" },
        { "byte size overflow", c_bytes_overflow, "byte size overflows" },
        { "tensor type 99", c_type_unknown, "unknown tensor type 99" },
        { "tensor type 4 (removed Q4_2)", c_type_removed, "unknown tensor type 4" },
        { "Q8_0 row of 33", c_q8_row, "multiple of Q8_0" },
        { "misaligned offset", c_misaligned, "not a multiple of the alignment" },
        { "data past the end", c_past_end, "past the end" },
        { "offset near 2^64", c_offset_huge, "past the end" },
        { "overlapping tensors", c_overlap, "overlap" },
        { "two tensors at one offset", c_same_offset, "overlap" },
    };
    const char *p = TMP "/hostile.gguf";
    StrBuf b = { 0 };
    c_valid(&b);
    test_write_file(p, b.buf, b.len);
    Gguf *g = NULL;
    EXPECT(gguf_open(&g, p) == MOELM_OK);   /* the base the cases vary is valid */
    gguf_close(g);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        b.len = 0;
        cases[i].fn(&b);
        test_write_file(p, b.buf, b.len);
        expect_rejected(p, cases[i].what, cases[i].needle);
    }
    sb_free(&b);
    /* not regular files, missing */
    unlink(TMP "/fifo.gguf");
    CHECK(mkfifo(TMP "/fifo.gguf", 0600) == 0);
    expect_rejected(TMP "/fifo.gguf", "a FIFO", "regular");
    unlink(TMP "/zero.gguf");
    CHECK(symlink("/dev/zero", TMP "/zero.gguf") == 0);
    expect_rejected(TMP "/zero.gguf", "-> /dev/zero", "regular");
    expect_rejected(TMP, "a directory", "regular");
    expect_rejected(TMP "/missing.gguf", "missing", "cannot open");
    EXPECT(moelm_alloc_live_bytes() == 0);
}

/* Reading types that are validated but not converted; a file that shrinks after opening. */
TEST(gguf_read_errors_after_open) {
    StrBuf b = { 0 };
    uint64_t ne[1] = { 256 };
    b_head(&b, 2, 0);
    b_tensor(&b, "q4k", 1, ne, GGUF_TENSOR_Q4_K, 0);
    b_tensor(&b, "w", 1, NE8, GGUF_TENSOR_F32, 160);
    b_pad(&b, 32);
    for (int i = 0; i < 192; i++) sb_append(&b, "\0", 1);
    test_write_file(TMP "/q4k.gguf", b.buf, b.len);
    sb_free(&b);
    Gguf *g = NULL;
    EXPECT(gguf_open(&g, TMP "/q4k.gguf") == MOELM_OK);
    if (!g) return;
    const GgufTensorInfo *t = gguf_find_tensor(g, "q4k");
    EXPECT(t && t->nbytes == 144 && strcmp(gguf_tensor_type_name(t->type), "Q4_K") == 0);
    float r[256];
    int64_t sh = 256, s8 = 8;
    EXPECT(gguf_read_tensor_f32(g, "q4k", r, 1, &sh) == MOELM_ERR_FORMAT && strstr(moelm_last_error(), "Q4_K"));
    EXPECT(truncate(TMP "/q4k.gguf", 200) == 0);
    EXPECT(gguf_read_tensor_f32(g, "w", r, 1, &s8) == MOELM_ERR_FORMAT);
    EXPECT_MSG(strstr(moelm_last_error(), TMP "/q4k.gguf") && strstr(moelm_last_error(), "\"w\""), "%s", moelm_last_error());
    gguf_close(g);
}

/* A Q8_0 tensor with a value Q8_0 cannot hold is refused, naming it; the previous file survives, as
 * it does an injected write or rename failure; every allocation failure is NOMEM without leaks. */
TEST(gguf_write_failures_keep_previous) {
    const char *p = TMP "/keep.gguf";
    EXPECT(write_rich(p, 0) == MOELM_OK);
    char *before = NULL, *after = NULL;
    size_t nb = 0, na = 0;
    EXPECT(file_read_all(p, &before, &nb) == MOELM_OK);
    float bad[64];
    for (int i = 0; i < 64; i++) bad[i] = (float)i;
    bad[40] = NAN;
    int64_t sh[1] = { 64 };
    GgufWriter *w = gguf_writer_new();
    gguf_writer_add_tensor(w, "bad", GGUF_TENSOR_Q8_0, 1, sh, bad);
    EXPECT(gguf_writer_write(w, p) == MOELM_ERR_ARG && strstr(moelm_last_error(), "\"bad\""));
    bad[40] = 1e7f;
    EXPECT(gguf_writer_write(w, p) == MOELM_ERR_ARG);
    bad[40] = 1e6f;   /* within range */
    EXPECT(gguf_writer_write(w, TMP "/ok.gguf") == MOELM_OK);
    gguf_writer_free(w);
    const char *ops[] = { "open", "write", "write", "fsync", "rename" };
    const int nth[] = { 1, 1, 3, 1, 1 };
    for (int i = 0; i < 5; i++) {
        fileio_fail_at(ops[i], nth[i]);
        EXPECT_MSG(write_rich(p, 64) == MOELM_ERR_IO, "%s #%d did not fail", ops[i], nth[i]);
        fileio_fail_reset();
    }
    EXPECT(file_read_all(p, &after, &na) == MOELM_OK);
    EXPECT(before && after && na == nb && memcmp(before, after, nb) == 0);
    moelm_free(before);
    moelm_free(after);
    int wrote = 0, opened = 0;
    for (long k = 1; k < 300 && !wrote; k++) {
        moelm_alloc_fail_after(k);
        GgufWriter *x = gguf_writer_new();
        moelm_status s = MOELM_ERR_NOMEM;
        if (x) {
            gguf_writer_add_string(x, "general.name", "x");
            gguf_writer_add_array_str(x, "t.strs", g_strs, 4);
            int64_t s3[1] = { 7 };
            gguf_writer_add_tensor(x, "bf16.bias", GGUF_TENSOR_BF16, 1, s3, g_bf16);
            s = gguf_writer_write(x, TMP "/oom.gguf");
        }
        gguf_writer_free(x);
        moelm_alloc_fail_after(0);
        EXPECT(s == MOELM_OK || s == MOELM_ERR_NOMEM);
        wrote = s == MOELM_OK;
        EXPECT(moelm_alloc_live_bytes() == 0);
    }
    for (long k = 1; k < 300 && !opened; k++) {
        Gguf *g = NULL;
        moelm_alloc_fail_after(k);
        moelm_status s = gguf_open(&g, TMP "/rich.gguf");
        moelm_alloc_fail_after(0);
        EXPECT(s == MOELM_OK || (s == MOELM_ERR_NOMEM && g == NULL));
        opened = s == MOELM_OK;
        gguf_close(g);
        EXPECT(moelm_alloc_live_bytes() == 0);
    }
    EXPECT(wrote && opened);
}

static void json_floats(StrBuf *b, const char *name, const float *v, int n) {
    sb_printf(b, "%s\"%s\": [", b->len > 1 ? ", " : "", name);
    for (int i = 0; i < n; i++) {
        if (i) sb_append(b, ", ", 2);
        sb_json_float(b, v[i]);
    }
    sb_append(b, "]", 1);
}

/* For tests/test_gguf_js.sh: the rich file at alignment 32 and 64, and rich.json, the float values
 * its tensors were written from. */
static int write_fixtures(const char *dir) {
    char p[512];
    snprintf(p, sizeof p, "%s/rich.gguf", dir);
    if (write_rich(p, 0)) return 1;
    snprintf(p, sizeof p, "%s/rich64.gguf", dir);
    if (write_rich(p, 64)) return 1;
    StrBuf b = { 0 };
    sb_append(&b, "{", 1);
    json_floats(&b, "f32.weight", g_f32, 15);
    json_floats(&b, "f16.weight", g_f16, 24);
    json_floats(&b, "bf16.bias", g_bf16, 7);
    json_floats(&b, "blk.0.ffn_up.weight", g_q8, QR * QK);
    sb_append(&b, "}\n", 2);
    snprintf(p, sizeof p, "%s/rich.json", dir);
    moelm_status s = file_write_atomic(p, b.buf, b.len);
    sb_free(&b);
    return s != MOELM_OK;
}

int main(int argc, char **argv) {
    test_one_thread();
    CHECK(dir_make(TMP) == MOELM_OK);
    fill();
    if (argc == 3 && strcmp(argv[1], "--write-fixtures") == 0) return write_fixtures(argv[2]);
    RUN(gguf_roundtrip);
    RUN(gguf_exact_bytes);
    RUN(gguf_every_truncation);
    RUN(gguf_hostile_catalogue);
    RUN(gguf_read_errors_after_open);
    RUN(gguf_write_failures_keep_previous);
    return test_summary("gguf");
}
