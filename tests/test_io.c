/* test_io.c: JSON, atomic file writes with injected failures, safetensors and CHECKSUMS.
 *
 * Hostile inputs: every malformed JSON text and every malformed safetensors file must give a
 * non-OK status and a one-line message that names the file. Files live under build/tmp/io/.
 */
#include "test.h"
#include "common/util.h"
#include "io/checksum.h"
#include "io/fileio.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "backend/gemv.h"
#include "backend/q8.h"

#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TMP "build/tmp/io"

static int file_equals(const char *path, const void *data, size_t n) {
    char *got = NULL;
    size_t gn = 0;
    if (file_read_all(path, &got, &gn) != MOELM_OK) return 0;
    int eq = gn == n && memcmp(got, data, n) == 0;
    moelm_free(got);
    return eq;
}

static int one_line(const char *msg) { return strchr(msg, '\n') == NULL; }

/* ---- JSON ------------------------------------------------------------------------------------- */

TEST(json_valid_values) {
    const char *text = " {\"a\": [1, -2.5, 1e3, true, false, null], \"s\": \"x\\n\\\"\\u00e9\\ud83d\\ude00/\\/\","
                       " \"o\": {}, \"e\": [], \"big\": 9223372036854775807, \"min\": -9223372036854775808,"
                       " \"f\": 0.1, \"z\": -0 } ";
    Json *j = NULL;
    EXPECT(json_parse(&j, text, strlen(text), "t.json") == MOELM_OK);
    EXPECT(json_type(j) == JSON_OBJECT);
    EXPECT(json_len(j) == 8);
    const Json *a = json_get(j, "a");
    EXPECT(json_type(a) == JSON_ARRAY && json_len(a) == 6);
    EXPECT(json_number(json_at(a, 0)) == 1.0);
    EXPECT(json_number(json_at(a, 1)) == -2.5);
    EXPECT(json_number(json_at(a, 2)) == 1000.0);
    EXPECT(json_type(json_at(a, 3)) == JSON_BOOL && json_bool(json_at(a, 3)) == 1);
    EXPECT(json_bool(json_at(a, 4)) == 0);
    EXPECT(json_type(json_at(a, 5)) == JSON_NULL);
    EXPECT(json_at(a, 6) == NULL);
    EXPECT(strcmp(json_string(json_get(j, "s")), "x\n\"\xc3\xa9\xf0\x9f\x98\x80//") == 0);
    int64_t v = 0;
    EXPECT(json_int64(json_get(j, "big"), &v) && v == INT64_MAX);
    EXPECT(json_int64(json_get(j, "min"), &v) && v == INT64_MIN);
    EXPECT(!json_int64(json_get(j, "f"), &v));
    EXPECT(!json_int64(json_at(a, 2), &v));   /* 1e3 is not an integer literal */
    EXPECT(json_number(json_get(j, "f")) == 0.1);
    EXPECT(strcmp(json_key_at(j, 0), "a") == 0 && strcmp(json_key_at(j, 7), "z") == 0);
    EXPECT(json_get(j, "nope") == NULL);
    EXPECT(json_get(a, "a") == NULL);          /* not an object */
    EXPECT(json_string(a) == NULL);
    json_free(j);
    /* scalars at top level are JSON (RFC 8259) */
    EXPECT(json_parse(&j, "42", 2, "t") == MOELM_OK && json_number(j) == 42.0);
    json_free(j);
    /* an integer beyond int64 is still a number, just not an exact int64 */
    EXPECT(json_parse(&j, "92233720368547758070", 20, "t") == MOELM_OK && !json_int64(j, &v));
    json_free(j);
    EXPECT(moelm_alloc_live_bytes() == 0);
}

TEST(json_depth_limit_exact) {
    char buf[2 * JSON_MAX_DEPTH + 2];
    for (int i = 0; i < JSON_MAX_DEPTH; i++) { buf[i] = '['; buf[JSON_MAX_DEPTH + i] = ']'; }
    Json *j = NULL;
    EXPECT(json_parse(&j, buf, 2 * JSON_MAX_DEPTH, "deep.json") == MOELM_OK);
    json_free(j);
}

TEST(json_write_roundtrip) {
    const char *text = "{\"k\":[1,2.5,-3,true,null,\"a\\\"b\\\\c\\u0001\\t\"],\"n\":{\"x\":1e-300}}";
    Json *j = NULL;
    EXPECT(json_parse(&j, text, strlen(text), "t") == MOELM_OK);
    StrBuf sb = { 0 };
    json_write(&sb, j);
    EXPECT(!sb.failed);
    Json *j2 = NULL;
    EXPECT(json_parse(&j2, sb.buf, sb.len, "t2") == MOELM_OK);
    StrBuf sb2 = { 0 };
    json_write(&sb2, j2);
    EXPECT(sb.len == sb2.len && memcmp(sb.buf, sb2.buf, sb.len) == 0);
    EXPECT(json_number(json_get(json_get(j2, "n"), "x")) == 1e-300);
    json_free(j); json_free(j2); sb_free(&sb); sb_free(&sb2);

    /* floats written with %.9g round-trip exactly; NaN/Inf become null */
    Rng r;
    rng_seed(&r, 7);
    for (int i = 0; i < 2000; i++) {
        union { uint32_t u; float f; } x;
        x.u = rng_u32(&r);
        if (!isfinite(x.f)) continue;
        StrBuf s = { 0 };
        sb_json_float(&s, x.f);
        Json *n = NULL;
        EXPECT(json_parse(&n, s.buf, s.len, "f") == MOELM_OK);
        EXPECT((float)json_number(n) == x.f);
        json_free(n); sb_free(&s);
    }
    StrBuf s = { 0 };
    sb_json_float(&s, NAN); sb_printf(&s, ","); sb_json_double(&s, INFINITY);
    EXPECT(strcmp(s.buf, "null,null") == 0);
    sb_free(&s);
    /* -0 keeps its sign through a round trip */
    Json *z = NULL;
    EXPECT(json_parse(&z, "[-0,0,-0.0]", 11, "z") == MOELM_OK);
    json_write(&s, z);
    EXPECT(strcmp(s.buf, "[-0,0,-0]") == 0);
    json_free(z);
    sb_free(&s);
    char disp[8];
    EXPECT(strcmp(json_display("a\nb", disp, sizeof disp), "a?b") == 0);
    EXPECT(strcmp(json_display("abcdefghij", disp, sizeof disp), "abcd...") == 0);
    EXPECT(strcmp(json_display("abcdefg", disp, sizeof disp), "abcdefg") == 0);
    /* strings: invalid UTF-8 is replaced, output always parses back */
    sb_json_string(&s, "ok\xff\xc3\xa9\x1f");
    EXPECT(strcmp(s.buf, "\"ok\\ufffd\xc3\xa9\\u001f\"") == 0);
    Json *js = NULL;
    EXPECT(json_parse(&js, s.buf, s.len, "s") == MOELM_OK);
    json_free(js); sb_free(&s);
    EXPECT(moelm_alloc_live_bytes() == 0);
}

TEST(json_hostile_catalogue) {
    static const struct { const char *text; size_t n; } bad[] = {
#define B(s) { s, sizeof(s) - 1 }
        B(""), B("   \n "), B("{"), B("[1,2"), B("[1,]"), B("{\"a\":1,}"), B("{\"a\" 1}"), B("{a:1}"),
        B("'x'"), B("01"), B("1."), B(".5"), B("-"), B("1e"), B("1e+"), B("1e400"), B("-1e400"), B("NaN"),
        B("Infinity"), B("-Infinity"), B("tru"), B("nul"), B("True"), B("\"abc"), B("\"\\x\""), B("\"\\u12\""),
        B("\"\\u12G4\""), B("\"\\ud800\""), B("\"\\udc00\""), B("\"\\ud800\\u0041\""), B("\"a\x01\""),
        B("\"\xff\""), B("\"\xc0\xaf\""), B("\"\xe0\x80\xaf\""), B("\"\xed\xa0\x80\""), B("\"\xf4\x90\x80\x80\""),
        B("\"\xc3\""), B("\"\x80\""), B("[1] 2"), B("{\"a\":1,\"a\":2}"), B("{\"b\":1,\"a\":2,\"b\":3}"),
        B("\xef\xbb\xbf{}"), B("\"\\u0000\""), B("+1"), B("[1 2]"), B("{\"a\":1 \"b\":2}"), B("/* c */ 1"),
        B("\"a\"\0"), B("[\"\\\"]"), B("{\"a\"}"), B("{,}"), B("[,1]"), B("\x00"), B("{\"a\":[}"),
        B("\"tab\there\""), B("1 /"), B("[1e5.0]"), B("[-01]"), B("[0x10]"), B("{\"\\uDBFF\\uDBFF\":1}"),
#undef B
    };
    int n = (int)(sizeof bad / sizeof bad[0]);
    EXPECT(n >= 20);
    for (int i = 0; i < n; i++) {
        Json *j = (Json *)1;
        moelm_status st = json_parse(&j, bad[i].text, bad[i].n, "bad.json");
        const char *msg = moelm_last_error();
        EXPECT_MSG(st == MOELM_ERR_FORMAT, "input #%d accepted", i);
        EXPECT_MSG(j == NULL, "input #%d: out not NULL", i);
        EXPECT_MSG(strncmp(msg, "bad.json: line ", 15) == 0 && strstr(msg, "column") && one_line(msg),
                   "input #%d: message \"%s\"", i, msg);
    }
    /* nesting beyond the limit, in arrays and objects */
    char deep[2 * (JSON_MAX_DEPTH + 1) + 8];
    for (int i = 0; i <= JSON_MAX_DEPTH; i++) { deep[i] = '['; deep[JSON_MAX_DEPTH + 1 + i] = ']'; }
    Json *j = NULL;
    EXPECT(json_parse(&j, deep, 2 * (JSON_MAX_DEPTH + 1), "deep.json") == MOELM_ERR_FORMAT);
    EXPECT(strstr(moelm_last_error(), "deep.json") && strstr(moelm_last_error(), "nesting"));
    StrBuf sb = { 0 };
    for (int i = 0; i < 100000; i++) sb_printf(&sb, "{\"a\":");
    EXPECT(json_parse(&j, sb.buf, sb.len, "deep2.json") == MOELM_ERR_FORMAT);
    sb_free(&sb);
    /* line and column are right */
    EXPECT(json_parse(&j, "{\n  \"a\": tru\n}", 14, "pos.json") == MOELM_ERR_FORMAT);
    EXPECT_MSG(strstr(moelm_last_error(), "line 2, column 8") != NULL, "%s", moelm_last_error());
    EXPECT(json_parse(&j, "{\"k\":1,\n\"k\":2}", 14, "dup.json") == MOELM_ERR_FORMAT);
    EXPECT_MSG(strstr(moelm_last_error(), "line 2, column 1") && strstr(moelm_last_error(), "duplicate key \"k\""),
               "%s", moelm_last_error());
    EXPECT(moelm_alloc_live_bytes() == 0);
}

TEST(json_files) {
    const char *p = TMP "/cfg.json";
    const char *good = "{\"d_model\": 64,\n \"x\": [1,2,3]}\n";
    test_write_file(p, good, strlen(good));
    Json *j = NULL;
    EXPECT(json_parse_file(&j, p) == MOELM_OK);
    EXPECT(json_number(json_get(j, "d_model")) == 64.0);
    json_free(j);
    const char *bad = "{\"d_model\": 64,\n \"x\": [1,2,3}\n";
    test_write_file(p, bad, strlen(bad));
    EXPECT(json_parse_file(&j, p) == MOELM_ERR_FORMAT && j == NULL);
    EXPECT_MSG(strstr(moelm_last_error(), p) && strstr(moelm_last_error(), "line 2"), "%s", moelm_last_error());
    EXPECT(json_parse_file(&j, TMP "/missing.json") == MOELM_ERR_IO);
    EXPECT(strstr(moelm_last_error(), TMP "/missing.json") != NULL);
}

TEST(json_out_of_memory_is_clean) {
    const char *text = "{\"a\":[1,2,{\"b\":\"cccc\"}],\"d\":{\"e\":[[],[null]]},\"f\":\"g\"}";
    int saw_ok = 0;
    for (long k = 1; k < 200 && !saw_ok; k++) {
        moelm_alloc_fail_after(k);
        Json *j = NULL;
        moelm_status st = json_parse(&j, text, strlen(text), "oom.json");
        moelm_alloc_fail_after(0);
        if (st == MOELM_OK) { saw_ok = 1; json_free(j); }
        else EXPECT(st == MOELM_ERR_NOMEM && j == NULL);
        EXPECT(moelm_alloc_live_bytes() == 0);
    }
    EXPECT(saw_ok);
}

/* The tree costs a small constant times the input, whatever its shape (no per-node allocation). */
TEST(json_memory_is_bounded_by_input) {
    const char *unit[] = { "0,", "\"\",", "[],", "{},", "[[]],", "true," };
    for (size_t u = 0; u < sizeof unit / sizeof unit[0]; u++) {
        StrBuf sb = { 0 };
        sb_printf(&sb, "[");
        for (int i = 0; i < 200000; i++) sb_printf(&sb, "%s", unit[u]);
        sb.buf[sb.len - 1] = ']';
        Json *j = NULL;
        EXPECT(json_parse(&j, sb.buf, sb.len, "big.json") == MOELM_OK);
        size_t live = moelm_alloc_live_bytes() - sb.cap;
        EXPECT_MSG(live <= 13 * sb.len + 1024, "unit %s: %zu bytes for %zu of input", unit[u], live, sb.len);
        json_free(j);
        sb_free(&sb);
    }
    /* an object with many distinct keys */
    StrBuf sb = { 0 };
    sb_printf(&sb, "{");
    for (int i = 0; i < 100000; i++) sb_printf(&sb, "%s\"%x\":0", i ? "," : "", i);
    sb_printf(&sb, "}");
    Json *j = NULL;
    EXPECT(json_parse(&j, sb.buf, sb.len, "keys.json") == MOELM_OK);
    EXPECT(json_len(j) == 100000 && json_get(j, "1869f") == json_at(j, 99999));
    EXPECT(moelm_alloc_live_bytes() - sb.cap <= 13 * sb.len + 1024);
    json_free(j);
    sb_free(&sb);
    EXPECT(moelm_alloc_live_bytes() == 0);
}

/* ---- fileio ----------------------------------------------------------------------------------- */

TEST(fileio_read_write) {
    const char *p = TMP "/a.bin";
    unsigned char data[3000];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (unsigned char)(i * 7);
    EXPECT(file_write_atomic(p, data, sizeof data) == MOELM_OK);
    char *got = NULL;
    size_t n = 0;
    EXPECT(file_read_all(p, &got, &n) == MOELM_OK);
    EXPECT(n == sizeof data && memcmp(got, data, n) == 0 && got[n] == 0);
    moelm_free(got);
    EXPECT(file_read_all_limit(p, &got, &n, 100) == MOELM_ERR_FORMAT && got == NULL);
    EXPECT(strstr(moelm_last_error(), p) != NULL);
    EXPECT(file_read_all(TMP "/nope", &got, &n) == MOELM_ERR_IO && strstr(moelm_last_error(), TMP "/nope"));
    EXPECT(file_read_all(TMP, &got, &n) == MOELM_ERR_IO && strstr(moelm_last_error(), "directory"));
    EXPECT(file_write_atomic(TMP "/no/such/dir/x", "x", 1) == MOELM_ERR_IO);
    EXPECT(strstr(moelm_last_error(), TMP "/no/such/dir/x") != NULL);
    /* empty file */
    EXPECT(file_write_atomic(p, "", 0) == MOELM_OK);
    EXPECT(file_read_all(p, &got, &n) == MOELM_OK && n == 0 && got[0] == 0);
    moelm_free(got);
    /* a /proc file reports size 0 but has content */
    EXPECT(file_read_all("/proc/self/status", &got, &n) == MOELM_OK && n > 0 && strstr(got, "Name:"));
    moelm_free(got);
    EXPECT(moelm_alloc_live_bytes() == 0);
}

static int tmp_left(const char *path) {
    char t[512];
    snprintf(t, sizeof t, "%s.tmp.%ld", path, (long)getpid());
    return path_exists(t);
}

TEST(fileio_injected_failures_keep_previous_file) {
    const char *p = TMP "/ckpt.bin";
    const char *old = "previous checkpoint contents";
    const char *ops[] = { "open", "write", "fsync", "rename" };
    for (int i = 0; i < 4; i++) {
        EXPECT(file_write_atomic(p, old, strlen(old)) == MOELM_OK);
        fileio_fail_at(ops[i], 1);
        moelm_status st = file_write_atomic(p, "NEW", 3);
        fileio_fail_reset();
        EXPECT_MSG(st == MOELM_ERR_IO, "op %s: status %d", ops[i], st);
        EXPECT_MSG(strstr(moelm_last_error(), p) && one_line(moelm_last_error()), "op %s: %s", ops[i],
                   moelm_last_error());
        EXPECT_MSG(file_equals(p, old, strlen(old)), "op %s changed the previous file", ops[i]);
        EXPECT_MSG(!tmp_left(p), "op %s left the temporary file", ops[i]);
    }
    /* the errno is realistic */
    fileio_fail_at("write", 1);
    EXPECT(file_write_atomic(p, "NEW", 3) == MOELM_ERR_IO);
    EXPECT(strstr(moelm_last_error(), "No space left on device") != NULL);
    fileio_fail_reset();
    /* a streamed write failing in the middle (3rd write) leaves the old file too */
    FileWriter w;
    EXPECT(fw_open(&w, p) == MOELM_OK);
    fileio_fail_at("write", 3);
    EXPECT(fw_write(&w, "aa", 2) == MOELM_OK);
    EXPECT(fw_write(&w, "bb", 2) == MOELM_OK);
    EXPECT(fw_write(&w, "cc", 2) == MOELM_ERR_IO);
    EXPECT(fw_write(&w, "dd", 2) == MOELM_ERR_IO);    /* sticky */
    EXPECT(fw_commit(&w) == MOELM_ERR_IO);
    fileio_fail_reset();
    EXPECT(file_equals(p, old, strlen(old)) && !tmp_left(p));
    /* short writes are retried until complete */
    static char big[100000];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (char)(i * 13 + 1);
    fileio_fail_at("short_write", 1);
    EXPECT(file_write_atomic(p, big, sizeof big) == MOELM_OK);
    fileio_fail_reset();
    EXPECT(file_equals(p, big, sizeof big));
    /* only the directory fsync (the 2nd fsync) fails: reported, and the new file is complete */
    EXPECT(file_write_atomic(p, old, strlen(old)) == MOELM_OK);
    fileio_fail_at("fsync", 2);
    EXPECT(file_write_atomic(p, "NEW", 3) == MOELM_ERR_IO && strstr(moelm_last_error(), "directory fsync"));
    fileio_fail_reset();
    EXPECT(file_equals(p, "NEW", 3) && !tmp_left(p));
    /* reads can fail too */
    char *got = NULL;
    size_t gn = 0;
    fileio_fail_at("read", 1);
    EXPECT(file_read_all(p, &got, &gn) == MOELM_ERR_IO && got == NULL);
    EXPECT(strstr(moelm_last_error(), p) && strstr(moelm_last_error(), "Input/output error"));
    fileio_fail_reset();
    EXPECT(file_write_atomic(p, big, sizeof big) == MOELM_OK);
    /* an aborted writer leaves nothing behind */
    EXPECT(fw_open(&w, p) == MOELM_OK);
    EXPECT(fw_write(&w, "zz", 2) == MOELM_OK);
    fw_abort(&w);
    EXPECT(file_equals(p, big, sizeof big) && !tmp_left(p));
    EXPECT(moelm_alloc_live_bytes() == 0);
}

TEST(fileio_dirs) {
    const char *root = TMP "/tree";
    EXPECT(dir_remove_tree(root) == MOELM_OK);
    EXPECT(!path_exists(root));
    EXPECT(dir_make(TMP "/tree/a/b//c/") == MOELM_OK);
    EXPECT(path_is_dir(TMP "/tree/a/b/c"));
    EXPECT(dir_make(TMP "/tree/a/b/c") == MOELM_OK);   /* already there */
    test_write_file(TMP "/tree/a/f.txt", "x", 1);
    EXPECT(dir_make(TMP "/tree/a/f.txt/d") == MOELM_ERR_IO && strstr(moelm_last_error(), "f.txt"));
    /* a symlink out of the tree is removed, not followed */
    test_write_file(TMP "/outside.txt", "keep", 4);
    EXPECT(symlink("../../outside.txt", TMP "/tree/a/link") == 0);
    EXPECT(symlink("../..", TMP "/tree/a/dirlink") == 0);
    EXPECT(dir_sync(TMP "/tree/a") == MOELM_OK);
    EXPECT(dir_remove_tree(root) == MOELM_OK);
    EXPECT(!path_exists(root));
    EXPECT(file_equals(TMP "/outside.txt", "keep", 4));
    EXPECT(path_is_dir(TMP));
    EXPECT(dir_sync(TMP "/nope") == MOELM_ERR_IO);
    const char *refused[] = { "", "/", "///", ".", "..", "./", TMP "/.", TMP "/..", TMP "/../" };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        EXPECT_MSG(dir_remove_tree(refused[i]) == MOELM_ERR_IO, "removed \"%s\"", refused[i]);
    EXPECT(path_is_dir(TMP));
    char buf[64];
    EXPECT(strcmp(path_dirname("a/b/c", buf, sizeof buf), "a/b") == 0);
    EXPECT(strcmp(path_dirname("c", buf, sizeof buf), ".") == 0);
    EXPECT(strcmp(path_dirname("/c", buf, sizeof buf), "/") == 0);
}

/* ---- safetensors ------------------------------------------------------------------------------ */

TEST(st_roundtrip) {
    const char *p = TMP "/model.safetensors";
    float w1[6] = { 1, -2, 3.5f, 1e-30f, -0.0f, 65504 };
    float w2[24];
    for (int i = 0; i < 24; i++) w2[i] = (float)i * 0.25f - 3;
    float s = 42;
    StTensor ts[4] = {
        { "layer.0.weight", w1, 2, { 2, 3 } },
        { "experts.w1", w2, 4, { 2, 3, 2, 2 } },
        { "scalar", &s, 0, { 0 } },
        { "empty", NULL, 2, { 0, 5 } },
    };
    const char *meta[] = { "format", "pt", "moelm", "0.1.0", "quote\"key", "line\nvalue", NULL };
    EXPECT(st_write(p, ts, 4, meta) == MOELM_OK);
    SafeTensors *st = NULL;
    EXPECT(st_open(&st, p) == MOELM_OK);
    if (!st) return;
    EXPECT(st_count(st) == 4);
    /* data order is the written order (zero-size "empty" sits at the end, begin == end) */
    EXPECT(strcmp(st_name(st, 0), "layer.0.weight") == 0 && strcmp(st_name(st, 1), "experts.w1") == 0);
    EXPECT(strcmp(st_name(st, 2), "scalar") == 0 && strcmp(st_name(st, 3), "empty") == 0);
    EXPECT(st_name(st, 4) == NULL);
    float r1[6], r2[24], rs = 0;
    int64_t sh1[2] = { 2, 3 }, sh2[4] = { 2, 3, 2, 2 }, she[2] = { 0, 5 };
    EXPECT(st_read_f32(st, "layer.0.weight", r1, 2, sh1) == MOELM_OK);
    EXPECT(memcmp(r1, w1, sizeof w1) == 0);
    EXPECT(st_read_f32(st, "experts.w1", r2, 4, sh2) == MOELM_OK);
    EXPECT(memcmp(r2, w2, sizeof w2) == 0);
    EXPECT(st_read_f32(st, "scalar", &rs, 0, NULL) == MOELM_OK && rs == 42);
    EXPECT(st_read_f32(st, "empty", NULL, 2, she) == MOELM_OK);
    /* a part: expert 1 of the [2, 3, 2, 2] tensor (elements 12..23), and a middle slice; the shape
     * is checked as for a whole read */
    float part[12];
    EXPECT(st_read_f32_part(st, "experts.w1", part, 4, sh2, 12, 12) == MOELM_OK);
    EXPECT(memcmp(part, w2 + 12, 12 * sizeof(float)) == 0);
    EXPECT(st_read_f32_part(st, "experts.w1", part, 4, sh2, 5, 3) == MOELM_OK);
    EXPECT(part[0] == w2[5] && part[2] == w2[7] && part[3] == w2[15]);   /* part[3] still from above */
    EXPECT(st_read_f32_part(st, "experts.w1", part, 2, sh1, 0, 6) == MOELM_ERR_FORMAT);
    EXPECT(strcmp(st_meta(st, "moelm"), "0.1.0") == 0);
    EXPECT(strcmp(st_meta(st, "quote\"key"), "line\nvalue") == 0);
    EXPECT(st_meta(st, "nope") == NULL);
    const char *dt;
    int nd;
    int64_t shp[ST_MAX_DIMS];
    EXPECT(st_info(st, "experts.w1", &dt, &nd, shp) && strcmp(dt, "F32") == 0 && nd == 4 && shp[3] == 2);
    EXPECT(!st_info(st, "nope", NULL, NULL, NULL));
    /* mismatches name the file, the tensor and the problem */
    int64_t bad[2] = { 3, 2 };
    EXPECT(st_read_f32(st, "layer.0.weight", r1, 2, bad) == MOELM_ERR_FORMAT);
    EXPECT_MSG(strstr(moelm_last_error(), p) && strstr(moelm_last_error(), "layer.0.weight") &&
               strstr(moelm_last_error(), "[2, 3]") && strstr(moelm_last_error(), "[3, 2]"), "%s", moelm_last_error());
    EXPECT(st_read_f32(st, "layer.0.weight", r1, 1, bad) == MOELM_ERR_FORMAT);
    EXPECT(st_read_f32(st, "missing", r1, 2, sh1) == MOELM_ERR_FORMAT);
    EXPECT(strstr(moelm_last_error(), p) && strstr(moelm_last_error(), "\"missing\""));
    st_close(st);
    /* header padded to 8 bytes */
    char *raw = NULL;
    size_t n = 0;
    EXPECT(file_read_all(p, &raw, &n) == MOELM_OK);
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++) hl |= (uint64_t)(unsigned char)raw[i] << (8 * i);
    EXPECT(hl % 8 == 0 && 8 + hl + (6 + 24 + 1) * 4 == n);
    moelm_free(raw);
    /* no tensors at all, no metadata */
    EXPECT(st_write(p, NULL, 0, NULL) == MOELM_OK);
    EXPECT(st_open(&st, p) == MOELM_OK && st_count(st) == 0 && st_meta(st, "x") == NULL);
    st_close(st);
    EXPECT(moelm_alloc_live_bytes() == 0);
}

/* The exact bytes of a tiny file, built by hand from the format description. */
TEST(st_exact_bytes) {
    const char *p = TMP "/tiny.safetensors";
    float v[2] = { 1.0f, -2.0f };
    StTensor t = { "a", v, 1, { 2 } };
    EXPECT(st_write(p, &t, 1, NULL) == MOELM_OK);
    const char *hdr = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    size_t hl = strlen(hdr), padded = (hl + 7) / 8 * 8;
    unsigned char want[256];
    memset(want, 0, sizeof want);
    want[0] = (unsigned char)padded;
    memcpy(want + 8, hdr, hl);
    memset(want + 8 + hl, ' ', padded - hl);
    /* 1.0f = 0x3f800000, -2.0f = 0xc0000000, little-endian */
    const unsigned char data[8] = { 0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0 };
    memcpy(want + 8 + padded, data, 8);
    EXPECT(file_equals(p, want, 8 + padded + 8));
    /* and a hand-built file (as the Python library writes: unpadded is fine too) reads back */
    unsigned char h2[256];
    memset(h2, 0, sizeof h2);
    const char *hdr2 = "{\"__metadata__\":{\"format\":\"pt\"},\"b\":{\"dtype\":\"F32\",\"shape\":[1,2],"
                       "\"data_offsets\":[0,8]}}";
    size_t l2 = strlen(hdr2);
    h2[0] = (unsigned char)l2;
    memcpy(h2 + 8, hdr2, l2);
    memcpy(h2 + 8 + l2, data, 8);
    test_write_file(p, h2, 8 + l2 + 8);
    SafeTensors *st = NULL;
    EXPECT(st_open(&st, p) == MOELM_OK);
    if (!st) return;
    float r[2];
    int64_t sh[2] = { 1, 2 };
    EXPECT(st_read_f32(st, "b", r, 2, sh) == MOELM_OK && r[0] == 1.0f && r[1] == -2.0f);
    EXPECT(strcmp(st_meta(st, "format"), "pt") == 0);
    st_close(st);
}

/* Cross-check with an independent reader (Python's struct + json) when python3 is present. */
TEST(st_python_reads_it) {
    if (access("/usr/bin/python3", X_OK) != 0) { printf("  (skipped: no /usr/bin/python3)\n"); return; }
    const char *p = TMP "/py.safetensors";
    float w[6] = { 0.5f, -1.25f, 3, 4, 5, 6e-8f };
    float b[3] = { 7, 8, 9 };
    StTensor ts[2] = { { "w", w, 2, { 3, 2 } }, { "b", b, 1, { 3 } } };
    const char *meta[] = { "format", "pt", NULL };
    EXPECT(st_write(p, ts, 2, meta) == MOELM_OK);
    const char *script =
        "/usr/bin/python3 -c '\n"
        "import json, struct, sys\n"
        "d = open(sys.argv[1], \"rb\").read()\n"
        "n, = struct.unpack(\"<Q\", d[:8]); h = json.loads(d[8:8+n]); data = d[8+n:]\n"
        "assert h[\"__metadata__\"] == {\"format\": \"pt\"}\n"
        "w = h[\"w\"]; b = h[\"b\"]\n"
        "assert w[\"dtype\"] == \"F32\" and w[\"shape\"] == [3, 2] and w[\"data_offsets\"] == [0, 24]\n"
        "assert b[\"shape\"] == [3] and b[\"data_offsets\"] == [24, 36] and len(data) == 36\n"
        "v = struct.unpack(\"<9f\", data)\n"
        "assert v[:5] == (0.5, -1.25, 3.0, 4.0, 5.0) and abs(v[5] - 6e-8) < 1e-14 and v[6:] == (7.0, 8.0, 9.0)\n"
        "' " TMP "/py.safetensors";
    EXPECT(system(script) == 0);
}

/* Values that probe 16-bit rounding: ties, subnormals, overflow, signed zeros, Inf, NaN. */
static const float g_probe[] = {
    1.0f, -2.5f, 0.1f, 65504.0f, 65519.0f, 65520.0f, 1e5f, -1e30f, 0x1p-14f, 0x1p-24f, 0x1p-25f, 0x1.8p-25f,
    5.96e-8f, 1.0009765625f /* 1 + 2^-10: exact in fp16 */, 1.00048828125f /* tie, to even: 1 */,
    1.00146484375f /* tie, to even: 1 + 2^-9 */, 1.00390625f /* bf16 tie (1 + 2^-8): to even, 1 */,
    1.001953125f /* below a bf16 tie: 1 */, 1.005859375f /* above: 1 + 2^-7 */, 3.4e38f /* bf16: Inf */,
    -0.0f, 0.0f,
    INFINITY, -INFINITY, NAN, 1e-40f, -7.0e-39f, 123.456f,
};
#define NPROBE ((int)(sizeof g_probe / sizeof g_probe[0]))

static int same_value(float a, float b) {
    return (isnan(a) && isnan(b)) || (a == b && signbit(a) == signbit(b));
}

/* F16 and BF16 written from float and read back: each value is the rounding of the original; the
 * stored bytes are the 16-bit patterns, little-endian; a part of a 16-bit tensor reads as the whole
 * does; F32 beside them keeps its bits. */
TEST(st_f16_bf16_roundtrip) {
    const char *p = TMP "/half.safetensors";
    float big[3 * 1000];   /* more than one conversion chunk would need for a small CHUNK */
    for (int i = 0; i < 3000; i++) big[i] = (float)i * 0.001f - 1.5f;
    StTensor ts[4] = {
        { "h", g_probe, 1, { NPROBE } },
        { "b", g_probe, 1, { NPROBE } },
        { "f", g_probe, 1, { NPROBE } },
        { "big", big, 2, { 3, 1000 } },
    };
    StDtype dt[4] = { ST_F16, ST_BF16, ST_F32, ST_BF16 };
    EXPECT(st_write_as(p, ts, dt, 4, NULL) == MOELM_OK);
    SafeTensors *st = NULL;
    EXPECT(st_open(&st, p) == MOELM_OK);
    if (!st) return;
    const char *d1, *d2, *d3;
    EXPECT(st_info(st, "h", &d1, NULL, NULL) && st_info(st, "b", &d2, NULL, NULL) && st_info(st, "f", &d3, NULL, NULL));
    EXPECT(strcmp(d1, "F16") == 0 && strcmp(d2, "BF16") == 0 && strcmp(d3, "F32") == 0);
    float r[NPROBE];
    int64_t n = NPROBE;
    EXPECT(st_read_f32(st, "h", r, 1, &n) == MOELM_OK);
    for (int i = 0; i < NPROBE; i++)
        EXPECT_MSG(same_value(r[i], fp16_to_f32(fp16_round(g_probe[i]))), "F16 %d: %g", i, r[i]);
    EXPECT(r[0] == 1.0f && r[5] == INFINITY && r[4] == 65504.0f && r[10] == 0.0f && r[11] == 0x1p-24f);
    EXPECT(r[14] == 1.0f && r[15] == 1.001953125f && isnan(r[24]) && signbit(r[20]));
    EXPECT(st_read_f32(st, "b", r, 1, &n) == MOELM_OK);
    for (int i = 0; i < NPROBE; i++)
        EXPECT_MSG(same_value(r[i], bf16_to_f32(bf16_round(g_probe[i]))), "BF16 %d: %g", i, r[i]);
    EXPECT(r[16] == 1.0f && r[17] == 1.0f && r[18] == 1.0078125f && r[19] == INFINITY && r[0] == 1.0f);
    EXPECT(st_read_f32(st, "f", r, 1, &n) == MOELM_OK && memcmp(r, g_probe, sizeof r) == 0);
    /* parts of a 16-bit tensor: every (first, count) of a short one, against the whole */
    float whole[3000], part[3000];
    int64_t shb[2] = { 3, 1000 };
    EXPECT(st_read_f32(st, "big", whole, 2, shb) == MOELM_OK);
    for (int i = 0; i < 3000; i++) EXPECT(whole[i] == bf16_to_f32(bf16_round(big[i])));
    EXPECT(st_read_f32_part(st, "big", part, 2, shb, 1000, 1000) == MOELM_OK);
    EXPECT(memcmp(part, whole + 1000, 1000 * sizeof(float)) == 0);
    int bad = 0;
    for (size_t first = 0; first < 12; first++)
        for (size_t cnt = 0; first + cnt <= 12; cnt++) {
            EXPECT(st_read_f32_part(st, "h", part, 1, &n, first, cnt) == MOELM_OK);
            for (size_t i = 0; i < cnt; i++) bad += !same_value(part[i], fp16_to_f32(fp16_round(g_probe[first + i])));
        }
    EXPECT(bad == 0);
    st_close(st);
    /* the bytes: header length, then "h" as little-endian fp16 patterns right after the header */
    char *raw = NULL;
    size_t rn = 0;
    EXPECT(file_read_all(p, &raw, &rn) == MOELM_OK);
    if (raw) {
        uint64_t hl = 0;
        for (int i = 0; i < 8; i++) hl |= (uint64_t)(unsigned char)raw[i] << (8 * i);
        const unsigned char *d = (const unsigned char *)raw + 8 + hl;
        EXPECT(d[0] == 0x00 && d[1] == 0x3c);                       /* 1.0 = 0x3c00 */
        EXPECT(d[2 * NPROBE] == 0x80 && d[2 * NPROBE + 1] == 0x3f);  /* bf16 1.0 = 0x3f80 */
        EXPECT(rn == 8 + hl + (size_t)NPROBE * (2 + 2 + 4) + 3000 * 2);
        EXPECT(strstr(raw + 8, "\"h\":{\"dtype\":\"F16\",\"shape\":[28],\"data_offsets\":[0,56]}") != NULL);
        moelm_free(raw);
    }
    /* NULL dtypes is st_write: the same bytes */
    char *a = NULL, *b2 = NULL;
    size_t an = 0, bn = 0;
    EXPECT(st_write_as(p, ts + 2, NULL, 1, NULL) == MOELM_OK && file_read_all(p, &a, &an) == MOELM_OK);
    EXPECT(st_write(p, ts + 2, 1, NULL) == MOELM_OK && file_read_all(p, &b2, &bn) == MOELM_OK);
    EXPECT(a && b2 && an == bn && memcmp(a, b2, an) == 0);
    moelm_free(a);
    moelm_free(b2);
    EXPECT(moelm_alloc_live_bytes() == 0);
}

/* Independent check with PyTorch (Debian's python3-torch): the file moelm wrote is parsed with json
 * and torch.frombuffer; its F16/BF16 tensors must be torch's own rounding of its F32 tensor (NaN:
 * NaN-ness only, torch makes every NaN canonical); and a file torch's values fill (raw bytes written
 * by Python) reads in moelm as torch widens it. */
TEST(st_torch_reads_and_writes_halves) {
    if (access("/usr/bin/python3", X_OK) != 0 || system("/usr/bin/python3 -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec(\"torch\") is None)' "
                                                            "2>/dev/null") != 0) {
        printf("  (skipped: no /usr/bin/python3 with torch)\n");
        return;
    }
    const char *p = TMP "/torch_half.safetensors", *q = TMP "/from_torch.safetensors";
    Rng rng;
    rng_seed(&rng, 11);
    float v[NPROBE + 2000];
    memcpy(v, g_probe, sizeof g_probe);
    for (int i = NPROBE; i < NPROBE + 2000; i++) {
        uint32_t u = rng_u32(&rng);
        if (i % 2) u = (u & 0x8000ffffu) | ((0x30u + rng_below(&rng, 0x18)) << 23);   /* near fp16's range */
        memcpy(&v[i], &u, 4);
    }
    int N = NPROBE + 2000;
    StTensor ts[3] = { { "f32", v, 1, { N } }, { "f16", v, 1, { N } }, { "bf16", v, 1, { N } } };
    StDtype dt[3] = { ST_F32, ST_F16, ST_BF16 };
    EXPECT(st_write_as(p, ts, dt, 3, NULL) == MOELM_OK);
    const char *script =
        "/usr/bin/python3 - " TMP "/torch_half.safetensors " TMP "/from_torch.safetensors <<'EOF'\n"
        "import json, struct, sys, torch\n"
        "def load(path):\n"
        "    d = open(path, 'rb').read(); n, = struct.unpack('<Q', d[:8]); h = json.loads(d[8:8+n]); out = {}\n"
        "    for k, e in h.items():\n"
        "        if k == '__metadata__': continue\n"
        "        t = {'F32': torch.float32, 'F16': torch.float16, 'BF16': torch.bfloat16}[e['dtype']]\n"
        "        b, en = e['data_offsets']; out[k] = torch.frombuffer(bytearray(d[8+n+b:8+n+en]), dtype=t).reshape(e['shape'])\n"
        "    return out\n"
        "t = load(sys.argv[1]); x = t['f32']\n"
        "for name, dt in (('f16', torch.float16), ('bf16', torch.bfloat16)):\n"
        "    want = x.to(dt); got = t[name]; nan = torch.isnan(want)\n"
        "    assert torch.equal(torch.isnan(got), nan), name\n"
        "    assert torch.equal(got[~nan].view(torch.int16), want[~nan].view(torch.int16)), name\n"
        "g = torch.Generator().manual_seed(5)\n"
        "h = (torch.randn(3, 50, generator=g) * 1000).to(torch.float16); h[0, :4] = torch.tensor([6e-8, -0.0, float('inf'), 65504])\n"
        "b = (torch.randn(7, generator=g) * 1e30).to(torch.bfloat16)\n"
        "blobs = [h.view(torch.int16).numpy().tobytes(), b.view(torch.int16).numpy().tobytes()]\n"
        "wide = torch.cat([h.float().flatten(), b.float()]).numpy().tobytes()\n"
        "hdr = {'h': {'dtype': 'F16', 'shape': [3, 50], 'data_offsets': [0, 300]},\n"
        "       'b': {'dtype': 'BF16', 'shape': [7], 'data_offsets': [300, 314]},\n"
        "       'wide': {'dtype': 'F32', 'shape': [157], 'data_offsets': [314, 942]}}\n"
        "hj = json.dumps(hdr).encode()\n"
        "open(sys.argv[2], 'wb').write(struct.pack('<Q', len(hj)) + hj + blobs[0] + blobs[1] + wide)\n"
        "EOF";
    EXPECT(system(script) == 0);
    SafeTensors *st = NULL;
    EXPECT(st_open(&st, q) == MOELM_OK);
    if (!st) return;
    float h[150 + 7], wide[157];
    int64_t sh[2] = { 3, 50 }, sb = 7, sw = 157;
    EXPECT(st_read_f32(st, "h", h, 2, sh) == MOELM_OK && st_read_f32(st, "b", h + 150, 1, &sb) == MOELM_OK);
    EXPECT(st_read_f32(st, "wide", wide, 1, &sw) == MOELM_OK);
    EXPECT(memcmp(h, wide, sizeof wide) == 0);
    EXPECT(h[0] == 0x1p-24f && signbit(h[1]) && h[2] == INFINITY && h[3] == 65504.0f);
    st_close(st);
}

typedef struct { const char *what; const char *header; size_t data; } HostileSt;

/* Writes an 8-byte length, the header and `data` zero bytes. */
static void write_st(const char *path, const char *header, size_t data) {
    size_t hl = strlen(header);
    unsigned char *buf = calloc(1, 8 + hl + data);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    test_write_file(path, buf, 8 + hl + data);
    free(buf);
}

static void expect_st_rejected(const char *path, const char *what) {
    SafeTensors *st = (SafeTensors *)1;
    moelm_status s = st_open(&st, path);
    const char *msg = moelm_last_error();
    EXPECT_MSG(s == MOELM_ERR_FORMAT || s == MOELM_ERR_IO, "%s: accepted (status %d)", what, s);
    EXPECT_MSG(st == NULL, "%s: handle not NULL", what);
    EXPECT_MSG(strncmp(msg, path, strlen(path)) == 0 && one_line(msg), "%s: message \"%s\"", what, msg);
    if (s == MOELM_OK && st) st_close(st);
}

#define T16 "\"dtype\":\"F32\",\"shape\":[4]"

TEST(st_hostile_catalogue) {
    const char *p = TMP "/hostile.safetensors";
    static const HostileSt cases[] = {
        { "non-JSON header", "hello world!", 0 },
        { "header is an array", "[]", 0 },
        { "truncated JSON", "{\"a\":", 0 },
        { "trailing garbage after header", "{} x", 0 },
        { "duplicate tensor names", "{\"a\":{" T16 ",\"data_offsets\":[0,16]},\"a\":{" T16 ",\"data_offsets\":[0,16]}}", 16 },
        { "overlapping offsets", "{\"a\":{" T16 ",\"data_offsets\":[0,16]},\"b\":{" T16 ",\"data_offsets\":[8,24]}}", 24 },
        { "hole between tensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                                  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,24]}}", 24 },
        { "hole at the start", "{\"a\":{" T16 ",\"data_offsets\":[8,24]}}", 24 },
        { "truncated data", "{\"a\":{" T16 ",\"data_offsets\":[0,16]}}", 8 },
        { "trailing data", "{\"a\":{" T16 ",\"data_offsets\":[0,16]}}", 20 },
        { "end before begin", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[16,8]}}", 16 },
        { "offsets too short for shape", "{\"a\":{" T16 ",\"data_offsets\":[0,8]}}", 8 },
        { "offsets too long for shape", "{\"a\":{" T16 ",\"data_offsets\":[0,32]}}", 32 },
        { "unknown dtype", "{\"a\":{\"dtype\":\"F33\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16 },
        { "dtype not a string", "{\"a\":{\"dtype\":4,\"shape\":[4],\"data_offsets\":[0,16]}}", 16 },
        { "lower-case dtype", "{\"a\":{\"dtype\":\"f32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16 },
        { "overflowing shape product", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],"
                                        "\"data_offsets\":[0,16]}}", 16 },
        { "product overflows only with dtype size", "{\"a\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952,1],"
                                                    "\"data_offsets\":[0,0]}}", 0 },
        { "shape beyond int64", "{\"a\":{\"dtype\":\"U8\",\"shape\":[18446744073709551616],\"data_offsets\":[0,0]}}", 0 },
        { "negative dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1,-4],\"data_offsets\":[0,16]}}", 16 },
        { "fractional dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,10]}}", 10 },
        { "dim in exponent form", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4e0],\"data_offsets\":[0,16]}}", 16 },
        { "dim as string", "{\"a\":{\"dtype\":\"F32\",\"shape\":[\"4\"],\"data_offsets\":[0,16]}}", 16 },
        { "nine dims", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1 },
        { "shape not an array", "{\"a\":{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,16]}}", 16 },
        { "nested garbage in shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[[[[4]]]],\"data_offsets\":[0,16]}}", 16 },
        { "missing data_offsets", "{\"a\":{" T16 "}}", 16 },
        { "missing dtype", "{\"a\":{\"shape\":[4],\"data_offsets\":[0,16]}}", 16 },
        { "missing shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,16]}}", 16 },
        { "three offsets", "{\"a\":{" T16 ",\"data_offsets\":[0,8,16]}}", 16 },
        { "one offset", "{\"a\":{" T16 ",\"data_offsets\":[16]}}", 16 },
        { "negative offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[-16,0]}}", 16 },
        { "offsets as strings", "{\"a\":{" T16 ",\"data_offsets\":[\"0\",\"16\"]}}", 16 },
        { "offsets past the file", "{\"a\":{\"dtype\":\"U8\",\"shape\":[16],\"data_offsets\":"
                                   "[9223372036854775791,9223372036854775807]}}", 16 },
        { "offset overflows a double", "{\"a\":{" T16 ",\"data_offsets\":[0,1e400]}}", 16 },
        { "entry not an object", "{\"a\":5}", 0 },
        { "entry is null", "{\"a\":null}", 0 },
        { "unknown field", "{\"a\":{" T16 ",\"data_offsets\":[0,16],\"extra\":1}}", 16 },
        { "metadata not an object", "{\"__metadata__\":[\"a\"]}", 0 },
        { "metadata value not a string", "{\"__metadata__\":{\"step\":5}}", 0 },
        { "metadata nested", "{\"__metadata__\":{\"a\":{\"b\":\"c\"}}}", 0 },
        { "duplicate metadata", "{\"__metadata__\":{},\"__metadata__\":{}}", 0 },
        { "empty tensor name", "{\"\":{" T16 ",\"data_offsets\":[0,16]}}", 16 },
        { "invalid UTF-8 name", "{\"\xff\xfe\":{" T16 ",\"data_offsets\":[0,16]}}", 16 },
        { "zero-size tensor inside another", "{\"a\":{" T16 ",\"data_offsets\":[0,16]},"
                                             "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,8]}}", 16 },
        { "control character in header", "{\"a\":{" T16 ",\"data_offsets\":[0,16]}\x01}", 16 },
        { "newline in a bad tensor name", "{\"a\\nb\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,8]}}", 8 },
        { "NUL padding instead of spaces", "{\"a\":{" T16 ",\"data_offsets\":[0,16]}}\0\0\0", 16 },
    };
    int n = (int)(sizeof cases / sizeof cases[0]);
    EXPECT(n >= 20);
    for (int i = 0; i < n; i++) {
        if (strcmp(cases[i].what, "NUL padding instead of spaces") == 0) {
            /* strlen stops at the NULs: write this one by hand */
            const char *h = cases[i].header;
            size_t hl = strlen(h) + 3;
            unsigned char buf[256] = { 0 };
            buf[0] = (unsigned char)hl;
            memcpy(buf + 8, h, hl);
            test_write_file(p, buf, 8 + hl + 16);
        } else {
            write_st(p, cases[i].header, cases[i].data);
        }
        expect_st_rejected(p, cases[i].what);
    }
    /* bad header lengths, written byte by byte */
    unsigned char raw[64];
    memset(raw, 0, sizeof raw);
    test_write_file(p, raw, 0);
    expect_st_rejected(p, "empty file");
    test_write_file(p, raw, 5);
    expect_st_rejected(p, "5-byte file");
    test_write_file(p, raw, 16);
    expect_st_rejected(p, "header length 0");
    raw[0] = 100;
    memcpy(raw + 8, "{}", 2);
    test_write_file(p, raw, 20);
    expect_st_rejected(p, "header longer than the file");
    memset(raw, 0xff, 8);
    test_write_file(p, raw, 20);
    expect_st_rejected(p, "header length 2^64-1");
    memset(raw, 0, 8);
    raw[4] = 1;   /* 2^32 */
    test_write_file(p, raw, 20);
    expect_st_rejected(p, "header length 4 GiB");
    memset(raw, 0, 8);
    raw[0] = 0x01; raw[1] = 0xe1; raw[2] = 0xf5; raw[3] = 0x05;   /* 100000001 */
    test_write_file(p, raw, 20);
    expect_st_rejected(p, "header length just over 100 MB");
    /* deeply nested header */
    {
        StrBuf sb = { 0 };
        for (int i = 0; i < 200; i++) sb_printf(&sb, "{\"a\":");
        write_st(p, sb.buf, 0);
        sb_free(&sb);
        expect_st_rejected(p, "deep nesting");
    }
    expect_st_rejected(TMP "/does-not-exist.safetensors", "missing file");
    expect_st_rejected(TMP, "a directory");
    EXPECT(moelm_alloc_live_bytes() == 0);
}

TEST(st_read_errors_after_open) {
    const char *p = TMP "/mixed.safetensors";
    /* a valid file with an I32 tensor: opens fine, reading it as F32 is refused */
    write_st(p, "{\"i\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                "\"h\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[8,16]}}", 16);
    SafeTensors *st = NULL;
    EXPECT(st_open(&st, p) == MOELM_OK);
    if (!st) return;
    float r[4];
    int64_t sh[2] = { 2, 2 };
    EXPECT(st_read_f32(st, "i", r, 1, sh) == MOELM_ERR_FORMAT);
    EXPECT_MSG(strstr(moelm_last_error(), p) && strstr(moelm_last_error(), "\"i\"") &&
               strstr(moelm_last_error(), "I32"), "%s", moelm_last_error());
    r[1] = 5;
    EXPECT(st_read_f32(st, "h", r, 2, sh) == MOELM_OK && r[0] == 0 && r[1] == 0 && r[3] == 0);   /* zero bytes */
    st_close(st);
    /* the file shrinks after the header was validated */
    float w[4] = { 1, 2, 3, 4 };
    StTensor t = { "w", w, 1, { 4 } };
    EXPECT(st_write(p, &t, 1, NULL) == MOELM_OK);
    EXPECT(st_open(&st, p) == MOELM_OK);
    if (!st) return;
    struct stat sb;
    EXPECT(stat(p, &sb) == 0);
    EXPECT(truncate(p, sb.st_size - 4) == 0);
    int64_t s4 = 4;
    EXPECT(st_read_f32(st, "w", r, 1, &s4) != MOELM_OK);
    EXPECT_MSG(strstr(moelm_last_error(), p) && strstr(moelm_last_error(), "\"w\""), "%s", moelm_last_error());
    st_close(st);
}

TEST(st_interrupted_write_keeps_previous) {
    const char *p = TMP "/ckpt.safetensors";
    float a[256], b[256];
    for (int i = 0; i < 256; i++) { a[i] = (float)i; b[i] = -(float)i; }
    StTensor ta[1] = { { "w", a, 2, { 16, 16 } } };
    StTensor tb[1] = { { "w", b, 2, { 16, 16 } } };
    const char *ops[] = { "open", "write", "write", "write", "fsync", "rename" };
    const int nth[] = { 1, 1, 2, 3, 1, 1 };
    for (int i = 0; i < 6; i++) {
        EXPECT(st_write(p, ta, 1, NULL) == MOELM_OK);
        fileio_fail_at(ops[i], nth[i]);
        EXPECT_MSG(st_write(p, tb, 1, NULL) == MOELM_ERR_IO, "%s #%d did not fail", ops[i], nth[i]);
        fileio_fail_reset();
        EXPECT(strstr(moelm_last_error(), p) != NULL);
        SafeTensors *st = NULL;
        EXPECT(st_open(&st, p) == MOELM_OK);
        if (!st) continue;
        float r[256];
        int64_t sh[2] = { 16, 16 };
        EXPECT(st_read_f32(st, "w", r, 2, sh) == MOELM_OK);
        EXPECT_MSG(memcmp(r, a, sizeof a) == 0, "%s #%d changed the previous file", ops[i], nth[i]);
        st_close(st);
        EXPECT(!tmp_left(p));
    }
    EXPECT(moelm_alloc_live_bytes() == 0);
}

/* Every allocation failure is reported as NOMEM, leaks nothing and leaves the previous file. */
TEST(io_out_of_memory_is_clean) {
    const char *p = TMP "/oom.safetensors";
    float w[6] = { 1, 2, 3, 4, 5, 6 };
    StTensor ts[2] = { { "a", w, 2, { 2, 2 } }, { "b", w + 4, 1, { 2 } } };
    const char *meta[] = { "k", "v", NULL };
    EXPECT(st_write(p, ts, 1, NULL) == MOELM_OK);
    int wrote = 0, opened = 0;
    for (long k = 1; k < 100 && !(wrote && opened); k++) {
        moelm_alloc_fail_after(k);
        moelm_status s = st_write(p, ts, 2, meta);
        moelm_alloc_fail_after(0);
        EXPECT(s == MOELM_OK || s == MOELM_ERR_NOMEM);
        EXPECT(moelm_alloc_live_bytes() == 0 && !tmp_left(p));
        if (s == MOELM_OK) wrote = 1;
        SafeTensors *st = NULL;
        if (s != MOELM_OK) {   /* the one-tensor file is still there and intact */
            EXPECT(st_open(&st, p) == MOELM_OK && st_count(st) == 1);
            st_close(st);
            continue;
        }
        for (long m = 1; m < 100 && !opened; m++) {
            moelm_alloc_fail_after(m);
            moelm_status o = st_open(&st, p);
            moelm_alloc_fail_after(0);
            if (o == MOELM_OK) { opened = 1; EXPECT(st_count(st) == 2); st_close(st); }
            else EXPECT(o == MOELM_ERR_NOMEM && st == NULL);
            EXPECT(moelm_alloc_live_bytes() == 0);
        }
    }
    EXPECT(wrote && opened);
    /* checksums */
    EXPECT(dir_make(TMP "/ckoom") == MOELM_OK);
    test_write_file(TMP "/ckoom/x", "abc", 3);
    const char *files[] = { "x" };
    int ok = 0;
    for (long k = 1; k < 100 && !ok; k++) {
        moelm_alloc_fail_after(k);
        moelm_status s = checksums_write(TMP "/ckoom", files, 1);
        moelm_alloc_fail_after(0);
        EXPECT(s == MOELM_OK || s == MOELM_ERR_NOMEM);
        EXPECT(moelm_alloc_live_bytes() == 0);
        ok = s == MOELM_OK;
    }
    ok = 0;
    for (long k = 1; k < 100 && !ok; k++) {
        moelm_alloc_fail_after(k);
        moelm_status s = checksums_verify(TMP "/ckoom", files, 1);
        moelm_alloc_fail_after(0);
        EXPECT(s == MOELM_OK || s == MOELM_ERR_NOMEM);
        EXPECT(moelm_alloc_live_bytes() == 0);
        ok = s == MOELM_OK;
    }
    EXPECT(ok);
}

/* ---- checksums -------------------------------------------------------------------------------- */

static int make_fifo(void) { return mkfifo(TMP "/ck/b.json", 0644); }
static int make_zero_link(void) { return symlink("/dev/zero", TMP "/ck/b.json"); }
static int make_file_link(void) { test_write_file(TMP "/ck/b2.json", "{}", 2); return symlink("b2.json", TMP "/ck/b.json"); }
static int make_dir_entry(void) { return mkdir(TMP "/ck/b.json", 0755); }

/* crc32_update (8 bytes a step) against crc32_update_ref (a byte a step) on every alignment and length
 * up to 80, chained at every split, and on a 1 MiB buffer; both against CRC-32's check value. */
TEST(crc32_fast_equals_reference) {
    EXPECT(crc32_update(0, "123456789", 9) == 0xCBF43926u && crc32_update_ref(0, "123456789", 9) == 0xCBF43926u);
    EXPECT(crc32_update(0, "", 0) == 0);
    enum { BIG = 1 << 20 };
    unsigned char *buf = malloc(BIG);
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < BIG; i++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; buf[i] = (unsigned char)x; }
    int bad = 0;
    for (int off = 0; off < 8; off++)
        for (int n = 0; n <= 80; n++) {
            uint32_t want = crc32_update_ref(0, buf + off, (size_t)n);
            if (crc32_update(0, buf + off, (size_t)n) != want) bad++;
            for (int k = 0; k <= n; k++)
                if (crc32_update(crc32_update(0, buf + off, (size_t)k), buf + off + k, (size_t)(n - k)) != want) bad++;
        }
    EXPECT_MSG(bad == 0, "%d mismatches", bad);
    EXPECT(crc32_update(7, buf + 3, BIG - 3) == crc32_update_ref(7, buf + 3, BIG - 3));
    free(buf);
}

/* The VmFlags line of the mapping that holds p (/proc/self/smaps) into flags; 0 if not found */
static int vm_flags_at(const void *p, char *flags, size_t cap) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return 0;
    char line[512];
    int inside = 0, found = 0;
    uintptr_t a = (uintptr_t)p;
    while (!found && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char *dash = strchr(line, '-'), *space = strchr(line, ' ');
        if (dash && space && dash < space && sscanf(line, "%lx-%lx ", &lo, &hi) == 2) inside = a >= lo && a < hi;
        else if (inside && !strncmp(line, "VmFlags:", 8)) { snprintf(flags, cap, "%s", line + 8); found = 1; }
    }
    fclose(f);
    return found;
}

/* Blocks of 4 MiB and more ask for transparent huge pages (the mapping's flag "hg"), and with
 * MOELM_HUGE_PAGES=0 ask for none ("nh", which also refuses them where THP is "always"). The flags,
 * not the pages: whether the kernel gives one is its business (a heap range reused by an earlier
 * block keeps the huge pages it had). */
TEST(huge_pages_setting) {
    char flags[2][256], *was = getenv("MOELM_HUGE_PAGES");   /* tests/run.sh sets 0 */
    was = was ? moelm_strdup(was) : NULL;
    size_t n = (size_t)16 << 20;
    int seen = 1;
    for (int off = 0; off < 2 && seen; off++) {
        if (off) setenv("MOELM_HUGE_PAGES", "0", 1);
        else unsetenv("MOELM_HUGE_PAGES");
        char *p = moelm_malloc(n);
        EXPECT(p != NULL);
        seen = p && vm_flags_at(p + n / 2, flags[off], sizeof flags[off]);
        moelm_free(p);
    }
    if (was) setenv("MOELM_HUGE_PAGES", was, 1);
    else unsetenv("MOELM_HUGE_PAGES");
    moelm_free(was);
    if (!seen) { printf("  (skipped: no VmFlags in /proc/self/smaps)\n"); return; }
    EXPECT_MSG(strstr(flags[0], " hg") && !strstr(flags[0], " nh"), "a 16 MiB block by default: flags%s", flags[0]);
    EXPECT_MSG(strstr(flags[1], " nh") && !strstr(flags[1], " hg"), "a 16 MiB block with MOELM_HUGE_PAGES=0: flags%s", flags[1]);
}

TEST(checksums) {
    const char *d = TMP "/ck";
    EXPECT(dir_remove_tree(d) == MOELM_OK);
    EXPECT(dir_make(d) == MOELM_OK);
    test_write_file(TMP "/ck/a.bin", "hello", 5);
    test_write_file(TMP "/ck/b.json", "{}", 2);
    const char *files[] = { "a.bin", "b.json" };
    EXPECT(checksums_write(d, files, 2) == MOELM_OK);
    /* crc32("hello") = 0x3610a686 */
    const char *want = "# moelm CHECKSUMS v1: crc32 size name\n3610a686 5 a.bin\na3a6bf43 2 b.json\n";
    EXPECT(file_equals(TMP "/ck/CHECKSUMS", want, strlen(want)));
    EXPECT(checksums_verify(d, files, 2) == MOELM_OK);
    /* one flipped byte */
    test_write_file(TMP "/ck/a.bin", "hellp", 5);
    EXPECT(checksums_verify(d, files, 2) == MOELM_ERR_FORMAT);
    EXPECT_MSG(strstr(moelm_last_error(), TMP "/ck/a.bin") && strstr(moelm_last_error(), "checksum"), "%s",
               moelm_last_error());
    /* truncated */
    test_write_file(TMP "/ck/a.bin", "hell", 4);
    EXPECT(checksums_verify(d, files, 2) == MOELM_ERR_FORMAT && strstr(moelm_last_error(), "size"));
    test_write_file(TMP "/ck/a.bin", "hello", 5);
    EXPECT(checksums_verify(d, files, 2) == MOELM_OK);
    /* missing */
    EXPECT(unlink(TMP "/ck/b.json") == 0);
    EXPECT(checksums_verify(d, files, 2) == MOELM_ERR_IO);
    EXPECT(strstr(moelm_last_error(), TMP "/ck/b.json") && strstr(moelm_last_error(), "missing"));
    /* listing a missing file fails and keeps the old CHECKSUMS */
    EXPECT(checksums_write(d, files, 2) == MOELM_ERR_IO && strstr(moelm_last_error(), "b.json"));
    /* names that escape the directory are refused */
    const char *evil[] = { "../x" };
    EXPECT(checksums_write(d, evil, 1) == MOELM_ERR_ARG);
    /* malformed CHECKSUMS files */
    static const char *bad[] = {
        "", "garbage\n", "# moelm CHECKSUMS v1: crc32 size name\n3610a686 5 a.bin",
        "# moelm CHECKSUMS v1: crc32 size name\n3610a68 5 a.bin\n",
        "# moelm CHECKSUMS v1: crc32 size name\n3610A686 5 a.bin\n",
        "# moelm CHECKSUMS v1: crc32 size name\n3610a686 -5 a.bin\n",
        "# moelm CHECKSUMS v1: crc32 size name\n3610a686 5 ../a.bin\n",
        "# moelm CHECKSUMS v1: crc32 size name\n3610a686 5 /etc/passwd\n",
        "# moelm CHECKSUMS v1: crc32 size name\n3610a686 99999999999999999999999 a.bin\n",
        "# moelm CHECKSUMS v1: crc32 size name\n3610a686 5\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        test_write_file(TMP "/ck/CHECKSUMS", bad[i], strlen(bad[i]));
        EXPECT_MSG(checksums_verify(d, files, 2) == MOELM_ERR_FORMAT, "bad CHECKSUMS #%zu accepted", i);
        EXPECT(strstr(moelm_last_error(), TMP "/ck/CHECKSUMS") != NULL);
    }
    /* gaps (each verified before the fix): a CHECKSUMS with only its header, or without the line of
     * one required file, let that file's bytes through unchecked */
    test_write_file(TMP "/ck/b.json", "{}", 2);
    EXPECT(checksums_write(d, files, 2) == MOELM_OK);
    const char *hdr = "# moelm CHECKSUMS v1: crc32 size name\n";
    test_write_file(TMP "/ck/CHECKSUMS", hdr, strlen(hdr));
    EXPECT(checksums_verify(d, files, 2) == MOELM_ERR_FORMAT && strstr(moelm_last_error(), "does not list a.bin"));
    const char *one = "# moelm CHECKSUMS v1: crc32 size name\n3610a686 5 a.bin\n";
    test_write_file(TMP "/ck/CHECKSUMS", one, strlen(one));
    EXPECT(checksums_verify(d, files, 2) == MOELM_ERR_FORMAT && strstr(moelm_last_error(), "does not list b.json"));
    EXPECT(checksums_verify(d, files, 1) == MOELM_OK);
    /* listed entries that are not regular files: a FIFO and a symbolic link to /dev/zero hung (read
     * forever), a link to /dev/urandom as well; each is refused without being opened */
    EXPECT(checksums_write(d, files, 2) == MOELM_OK);
    struct { const char *what; int (*make)(void); const char *says; } odd[] = {
        { "fifo", make_fifo, "not a regular file" },
        { "link to /dev/zero", make_zero_link, "symbolic link" },
        { "link to a regular file", make_file_link, "symbolic link" },
        { "directory", make_dir_entry, "not a regular file" },
    };
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        EXPECT(unlink(TMP "/ck/b.json") == 0 || rmdir(TMP "/ck/b.json") == 0);
        EXPECT(odd[i].make() == 0);
        alarm(20);
        moelm_status v = checksums_verify(d, files, 2);
        alarm(0);
        EXPECT_MSG(v == MOELM_ERR_FORMAT && strstr(moelm_last_error(), odd[i].says) && strstr(moelm_last_error(), "b.json"),
                   "%s: %d %s", odd[i].what, (int)v, moelm_last_error());
    }
    rmdir(TMP "/ck/b.json");
    unlink(TMP "/ck/b.json");
    test_write_file(TMP "/ck/b.json", "{}", 2);
    EXPECT(checksums_verify(d, files, 2) == MOELM_OK);
    /* CHECKSUMS itself as a FIFO: refused, not waited on */
    EXPECT(unlink(TMP "/ck/CHECKSUMS") == 0 && mkfifo(TMP "/ck/CHECKSUMS", 0644) == 0);
    alarm(20);
    EXPECT(checksums_verify(d, files, 2) == MOELM_ERR_FORMAT && strstr(moelm_last_error(), "CHECKSUMS"));
    alarm(0);
    unlink(TMP "/ck/CHECKSUMS");
    EXPECT(moelm_alloc_live_bytes() == 0);
}

int main(void) {
    test_one_thread();
    CHECK(dir_make(TMP) == MOELM_OK);
    RUN(json_valid_values);
    RUN(json_depth_limit_exact);
    RUN(json_write_roundtrip);
    RUN(json_hostile_catalogue);
    RUN(json_files);
    RUN(json_out_of_memory_is_clean);
    RUN(json_memory_is_bounded_by_input);
    RUN(fileio_read_write);
    RUN(fileio_injected_failures_keep_previous_file);
    RUN(fileio_dirs);
    RUN(st_roundtrip);
    RUN(st_exact_bytes);
    RUN(st_python_reads_it);
    RUN(st_f16_bf16_roundtrip);
    RUN(st_torch_reads_and_writes_halves);
    RUN(st_hostile_catalogue);
    RUN(st_read_errors_after_open);
    RUN(st_interrupted_write_keeps_previous);
    RUN(io_out_of_memory_is_clean);
    RUN(crc32_fast_equals_reference);
    RUN(huge_pages_setting);
    RUN(checksums);
    return test_summary("io");
}
