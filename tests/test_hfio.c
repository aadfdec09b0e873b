/* test_hfio.c: Hugging Face weight sets (src/io/weights.c): one model.safetensors, or an index and
 * its shards; the sharding writer; the hostile catalogue of index files and shard sets.
 *
 * Oracles: values read back equal what was written (F16/BF16 as their rounding); the shard layout
 * against the rule written out in the test; the index and the shards checked by Python's json and
 * struct modules (an independent reader); every hostile set refused with one line naming a file.
 * Files live under build/tmp/hfio/.
 */
#include "test.h"
#include "backend/gemv.h"
#include "backend/q8.h"
#include "common/util.h"
#include "io/fileio.h"
#include "io/json.h"
#include "io/weights.h"

#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TMP "build/tmp/hfio"

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    CHECK(f);
    if (*text) CHECK(fwrite(text, 1, strlen(text), f) == strlen(text));
    CHECK(fclose(f) == 0);
}

static int exists(const char *dir, const char *name) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

/* five tensors: 400, 64, 1200 (alone: over the limit), 40, 40 bytes as stored */
static float g_a[100], g_b[32], g_c[300], g_d[10], g_e[20];
static const StTensor g_ts[5] = {
    { "model.embed.weight", g_a, 2, { 10, 10 } },
    { "model.layers.0.w", g_b, 2, { 4, 8 } },
    { "model.layers.0.experts", g_c, 3, { 3, 10, 10 } },
    { "model.norm.weight", g_d, 1, { 10 } },
    { "lm_head.weight", g_e, 2, { 2, 10 } },
};
static const StDtype g_dt[5] = { ST_F32, ST_F16, ST_F32, ST_F32, ST_BF16 };

static void fill(void) {
    float *all[5] = { g_a, g_b, g_c, g_d, g_e };
    int n[5] = { 100, 32, 300, 10, 20 };
    for (int t = 0; t < 5; t++)
        for (int i = 0; i < n[t]; i++) all[t][i] = (float)(t + 1) * 0.01f * (float)(i - 7);
}

static float stored(int t, float v) {
    return g_dt[t] == ST_F16 ? fp16_to_f32(fp16_round(v)) : g_dt[t] == ST_BF16 ? bf16_to_f32(bf16_round(v)) : v;
}

/* every tensor of g_ts reads back from ws as written (whole, and a part of the 3-d one) */
static void expect_all(const WeightSet *ws) {
    EXPECT(ws_count(ws) == 5);
    for (int t = 0; t < 5; t++) {
        const StTensor *x = &g_ts[t];
        size_t n = 1;
        for (int d = 0; d < x->ndim; d++) n *= (size_t)x->shape[d];
        float buf[300];
        EXPECT_MSG(ws_read_f32(ws, x->name, buf, x->ndim, x->shape) == MOELM_OK, "%s", moelm_last_error());
        int bad = 0;
        for (size_t i = 0; i < n; i++) bad += buf[i] != stored(t, x->data[i]);
        EXPECT_MSG(bad == 0, "%s: %d values differ", x->name, bad);
        const char *dt;
        int nd;
        int64_t sh[ST_MAX_DIMS];
        EXPECT(ws_info(ws, x->name, &dt, &nd, sh) && strcmp(dt, st_dtype_name(g_dt[t])) == 0 && nd == x->ndim);
        EXPECT(ws_file(ws, x->name) != NULL);
    }
    float part[100];
    EXPECT(ws_read_f32_part(ws, "model.layers.0.experts", part, 3, g_ts[2].shape, 100, 100) == MOELM_OK);
    EXPECT(memcmp(part, g_c + 100, sizeof part) == 0);
    /* names in strcmp order */
    for (int i = 1; i < ws_count(ws); i++) EXPECT(strcmp(ws_name(ws, i - 1), ws_name(ws, i)) < 0);
    EXPECT(ws_name(ws, 5) == NULL && !ws_info(ws, "nope", NULL, NULL, NULL) && ws_file(ws, "nope") == NULL);
    EXPECT(ws_read_f32(ws, "nope", part, 1, g_ts[3].shape) == MOELM_ERR_FORMAT);
    EXPECT(strstr(moelm_last_error(), "\"nope\"") != NULL);
}

TEST(ws_single_file) {
    const char *d = TMP "/single";
    EXPECT(dir_remove_tree(d) == MOELM_OK);
    const char *meta[] = { "format", "pt", NULL };
    EXPECT(ws_write(d, g_ts, g_dt, 5, meta, 0) == MOELM_OK);
    EXPECT(exists(d, "model.safetensors") && !exists(d, "model.safetensors.index.json"));
    WeightSet *ws = NULL;
    EXPECT(ws_open(&ws, d) == MOELM_OK);
    if (!ws) return;
    EXPECT(ws_shard_count(ws) == 1);
    EXPECT(strcmp(ws_meta(ws, "format"), "pt") == 0 && ws_meta(ws, "x") == NULL);
    expect_all(ws);
    ws_close(ws);
    /* a limit that everything fits under is one file too */
    EXPECT(ws_write(d, g_ts, g_dt, 5, NULL, 1744) == MOELM_OK);
    EXPECT(exists(d, "model.safetensors") && !exists(d, "model-00001-of-00001.safetensors"));
    EXPECT(moelm_alloc_live_bytes() == 0);
}

/* The rule: tensors in order; a shard takes the next tensor unless that would pass the limit and
 * the shard already has one. Limit 500: [a 400, b 64] [c 1200] [d 40, e 40]; limit 1300: [a, b]
 * [c, d, e]. */
TEST(ws_sharded_roundtrip) {
    const char *d = TMP "/sharded";
    EXPECT(dir_remove_tree(d) == MOELM_OK);
    const char *meta[] = { "format", "pt", NULL };
    EXPECT(ws_write(d, g_ts, g_dt, 5, meta, 500) == MOELM_OK);
    EXPECT(exists(d, "model-00001-of-00003.safetensors") && exists(d, "model-00002-of-00003.safetensors") &&
           exists(d, "model-00003-of-00003.safetensors") && exists(d, "model.safetensors.index.json"));
    EXPECT(!exists(d, "model.safetensors") && !exists(d, "model-00004-of-00003.safetensors"));
    WeightSet *ws = NULL;
    EXPECT(ws_open(&ws, d) == MOELM_OK);
    if (!ws) return;
    EXPECT(ws_shard_count(ws) == 3);
    expect_all(ws);
    EXPECT(strstr(ws_file(ws, "model.layers.0.w"), "model-00001-of-00003.safetensors") != NULL);
    EXPECT(strstr(ws_file(ws, "model.layers.0.experts"), "model-00002-of-00003.safetensors") != NULL);
    EXPECT(strstr(ws_file(ws, "lm_head.weight"), "model-00003-of-00003.safetensors") != NULL);
    EXPECT(strcmp(ws_meta(ws, "format"), "pt") == 0);
    ws_close(ws);
    /* the index, read by our JSON parser: total_size is the tensors' bytes, every tensor listed */
    Json *idx = NULL;
    EXPECT(json_parse_file(&idx, TMP "/sharded/model.safetensors.index.json") == MOELM_OK);
    int64_t total = 0;
    EXPECT(json_int64(json_get(json_get(idx, "metadata"), "total_size"), &total) && total == 400 + 64 + 1200 + 40 + 40);
    EXPECT(json_len(json_get(idx, "weight_map")) == 5);
    EXPECT(strcmp(json_string(json_get(json_get(idx, "weight_map"), "model.norm.weight")),
                  "model-00003-of-00003.safetensors") == 0);
    json_free(idx);
    /* a different layout replaces the old files: 2 shards, then one file, then 3 shards again */
    EXPECT(ws_write(d, g_ts, g_dt, 5, NULL, 1300) == MOELM_OK);
    EXPECT(exists(d, "model-00002-of-00002.safetensors") && !exists(d, "model-00001-of-00003.safetensors") &&
           !exists(d, "model-00003-of-00003.safetensors"));
    EXPECT(ws_open(&ws, d) == MOELM_OK && ws_shard_count(ws) == 2);
    if (ws) expect_all(ws);
    ws_close(ws);
    write_text(TMP "/sharded/config.json", "{}");   /* other files stay */
    EXPECT(ws_write(d, g_ts, g_dt, 5, NULL, 0) == MOELM_OK);
    EXPECT(exists(d, "model.safetensors") && !exists(d, "model.safetensors.index.json") &&
           !exists(d, "model-00001-of-00002.safetensors") && exists(d, "config.json"));
    EXPECT(ws_write(d, g_ts, g_dt, 5, NULL, 500) == MOELM_OK);
    EXPECT(!exists(d, "model.safetensors") && exists(d, "model-00003-of-00003.safetensors"));
    EXPECT(ws_open(&ws, d) == MOELM_OK && ws_shard_count(ws) == 3);
    ws_close(ws);
    EXPECT(moelm_alloc_live_bytes() == 0);
}

/* An independent reader: Python's json and struct check the index against the shards' headers. */
TEST(ws_python_reads_the_set) {
    if (access("/usr/bin/python3", X_OK) != 0) { printf("  (skipped: no /usr/bin/python3)\n"); return; }
    const char *script =
        "/usr/bin/python3 - " TMP "/sharded <<'EOF'\n"
        "import json, os, struct, sys\n"
        "d = sys.argv[1]; idx = json.load(open(os.path.join(d, 'model.safetensors.index.json')))\n"
        "wm = idx['weight_map']; total = 0; seen = {}\n"
        "size = {'F32': 4, 'F16': 2, 'BF16': 2}\n"
        "for shard in sorted(set(wm.values())):\n"
        "    b = open(os.path.join(d, shard), 'rb').read(); n, = struct.unpack('<Q', b[:8]); h = json.loads(b[8:8+n])\n"
        "    h.pop('__metadata__', None)\n"
        "    for k, e in h.items():\n"
        "        assert wm[k] == shard and k not in seen, k; seen[k] = 1\n"
        "        cnt = 1\n"
        "        for x in e['shape']: cnt *= x\n"
        "        assert e['data_offsets'][1] - e['data_offsets'][0] == cnt * size[e['dtype']]; total += cnt * size[e['dtype']]\n"
        "assert len(seen) == len(wm) == 5 and idx['metadata']['total_size'] == total == 1744, total\n"
        "assert sorted(os.listdir(d)) == ['config.json', 'model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors',\n"
        "                                 'model-00003-of-00003.safetensors', 'model.safetensors.index.json'], os.listdir(d)\n"
        "EOF";
    EXPECT(system(script) == 0);
}

/* ---- hostile sets ----------------------------------------------------------------------------- */

static void expect_ws_rejected(const char *dir, const char *what, const char *needle) {
    WeightSet *ws = (WeightSet *)1;
    moelm_status s = ws_open(&ws, dir);
    const char *msg = moelm_last_error();
    EXPECT_MSG(s == MOELM_ERR_FORMAT || s == MOELM_ERR_IO, "%s: accepted (status %d)", what, s);
    EXPECT_MSG(ws == NULL, "%s: handle not NULL", what);
    EXPECT_MSG(strchr(msg, '\n') == NULL && strstr(msg, TMP "/bad") && (!needle || strstr(msg, needle)),
               "%s: message \"%s\"", what, msg);
    if (getenv("SHOW_MESSAGES")) printf("  %-40s %s\n", what, msg);
    if (s == MOELM_OK && ws) ws_close(ws);
    EXPECT(moelm_alloc_live_bytes() == 0);
}

/* A fresh two-shard set in TMP/bad: s1 holds "a" and "b", s2 holds "c"; the index is `index`
 * (NULL: the correct one). */
static const char *bad_set(const char *index) {
    const char *d = TMP "/bad";
    CHECK(dir_remove_tree(d) == MOELM_OK && dir_make(d) == MOELM_OK);
    static float v[4] = { 1, 2, 3, 4 };
    StTensor s1[2] = { { "a", v, 1, { 4 } }, { "b", v, 1, { 2 } } }, s2[1] = { { "c", v, 1, { 3 } } };
    CHECK(st_write(TMP "/bad/s1.safetensors", s1, 2, NULL) == MOELM_OK);
    CHECK(st_write(TMP "/bad/s2.safetensors", s2, 1, NULL) == MOELM_OK);
    write_text(TMP "/bad/model.safetensors.index.json",
               index ? index : "{\"metadata\":{\"total_size\":36},\"weight_map\":{\"a\":\"s1.safetensors\","
                               "\"b\":\"s1.safetensors\",\"c\":\"s2.safetensors\"}}");
    return d;
}

#define WM_AB "\"a\":\"s1.safetensors\",\"b\":\"s1.safetensors\""

TEST(ws_hostile_catalogue) {
    /* the base set is valid */
    WeightSet *ws = NULL;
    EXPECT(ws_open(&ws, bad_set(NULL)) == MOELM_OK && ws_count(ws) == 3 && ws_shard_count(ws) == 2);
    ws_close(ws);
    static const struct { const char *what, *index, *needle; } cases[] = {
        { "empty index", "", "index.json" },
        { "not JSON", "weights!", "index.json" },
        { "truncated JSON", "{\"weight_map\":{\"a\":", "index.json" },
        { "index is an array", "[]", "object" },
        { "weight_map missing", "{\"metadata\":{}}", "weight_map" },
        { "weight_map an array", "{\"weight_map\":[\"s1.safetensors\"]}", "weight_map" },
        { "weight_map empty", "{\"weight_map\":{}}", "empty" },
        { "shard not a string", "{\"weight_map\":{" WM_AB ",\"c\":2}}", "\"c\"" },
        { "shard null", "{\"weight_map\":{" WM_AB ",\"c\":null}}", "\"c\"" },
        { "metadata not an object", "{\"metadata\":5,\"weight_map\":{" WM_AB ",\"c\":\"s2.safetensors\"}}", "metadata" },
        { "total_size negative", "{\"metadata\":{\"total_size\":-1},\"weight_map\":{" WM_AB ",\"c\":\"s2.safetensors\"}}", "total_size" },
        { "total_size a string", "{\"metadata\":{\"total_size\":\"36\"},\"weight_map\":{" WM_AB ",\"c\":\"s2.safetensors\"}}", "total_size" },
        { "total_size beyond int64", "{\"metadata\":{\"total_size\":99999999999999999999},\"weight_map\":{" WM_AB ",\"c\":\"s2.safetensors\"}}", "total_size" },
        { "total_size 1e400", "{\"metadata\":{\"total_size\":1e400},\"weight_map\":{" WM_AB ",\"c\":\"s2.safetensors\"}}", "index.json" },
        { "shard ../", "{\"weight_map\":{" WM_AB ",\"c\":\"../bad/s2.safetensors\"}}", "plain file name" },
        { "shard ..", "{\"weight_map\":{" WM_AB ",\"c\":\"..\"}}", "plain file name" },
        { "shard .", "{\"weight_map\":{" WM_AB ",\"c\":\".\"}}", "plain file name" },
        { "shard in a subdirectory", "{\"weight_map\":{" WM_AB ",\"c\":\"sub/s2.safetensors\"}}", "plain file name" },
        { "shard absolute", "{\"weight_map\":{" WM_AB ",\"c\":\"/etc/passwd\"}}", "plain file name" },
        { "shard backslash", "{\"weight_map\":{" WM_AB ",\"c\":\"..\\\\s2.safetensors\"}}", "plain file name" },
        { "shard hidden", "{\"weight_map\":{" WM_AB ",\"c\":\".s2.safetensors\"}}", "plain file name" },
        { "shard empty name", "{\"weight_map\":{" WM_AB ",\"c\":\"\"}}", "plain file name" },
        { "shard control char", "{\"weight_map\":{" WM_AB ",\"c\":\"s2\\n.safetensors\"}}", "plain file name" },
        { "shard missing", "{\"weight_map\":{" WM_AB ",\"c\":\"s3.safetensors\"}}", "s3.safetensors" },
        { "listed but not in its shard", "{\"weight_map\":{" WM_AB ",\"c\":\"s2.safetensors\",\"d\":\"s2.safetensors\"}}", "\"d\"" },
        { "listed in the wrong shard", "{\"weight_map\":{" WM_AB ",\"c\":\"s1.safetensors\"}}", "\"c\"" },
        { "a shard tensor not listed", "{\"weight_map\":{\"a\":\"s1.safetensors\",\"c\":\"s2.safetensors\"}}", "\"b\"" },
        { "duplicate key", "{\"weight_map\":{" WM_AB ",\"a\":\"s1.safetensors\",\"c\":\"s2.safetensors\"}}", "index.json" },
        { "duplicate weight_map", "{\"weight_map\":{\"a\":\"s1.safetensors\"},\"weight_map\":{" WM_AB "}}", "index.json" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_ws_rejected(bad_set(cases[i].index), cases[i].what, cases[i].needle);
    /* a tensor in two shards: s2 also holds "a" (the index maps it to s1) */
    {
        const char *d = bad_set(NULL);
        static float v[4] = { 0 };
        StTensor s2[2] = { { "c", v, 1, { 3 } }, { "a", v, 1, { 4 } } };
        CHECK(st_write(TMP "/bad/s2.safetensors", s2, 2, NULL) == MOELM_OK);
        expect_ws_rejected(d, "tensor in two shards", "\"a\"");
    }
    /* shards and indexes that are not regular files: /dev/zero through a symlink, a FIFO (must not
     * block), a directory, a symlink loop; a shard whose header is hostile; an index over the limit */
    static const struct { const char *file, *kind, *what, *needle; } specials[] = {
        { "s2.safetensors", "zero", "shard -> /dev/zero", "regular" },
        { "s2.safetensors", "fifo", "shard is a FIFO", "regular" },
        { "s2.safetensors", "dir", "shard is a directory", "s2.safetensors" },
        { "s2.safetensors", "loop", "shard symlink loop", "s2.safetensors" },
        { "model.safetensors.index.json", "fifo", "index is a FIFO", "regular" },
        { "model.safetensors.index.json", "zero", "index -> /dev/zero", "regular" },
    };
    const char *d;
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++) {
        d = bad_set(NULL);
        char p[256];
        snprintf(p, sizeof p, TMP "/bad/%s", specials[i].file);
        CHECK(unlink(p) == 0);
        const char *k = specials[i].kind;
        CHECK(strcmp(k, "zero") == 0 ? symlink("/dev/zero", p) == 0 : strcmp(k, "fifo") == 0 ? mkfifo(p, 0600) == 0
              : strcmp(k, "dir") == 0 ? mkdir(p, 0700) == 0 : symlink(specials[i].file, p) == 0);
        expect_ws_rejected(d, specials[i].what, specials[i].needle);
    }
    d = bad_set(NULL);
    {
        unsigned char raw[16] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}' };
        FILE *f = fopen(TMP "/bad/s2.safetensors", "wb");
        CHECK(f && fwrite(raw, 1, sizeof raw, f) == sizeof raw && fclose(f) == 0);
        expect_ws_rejected(d, "shard header length 2^63", "header length");
    }
    d = bad_set(NULL);
    CHECK(truncate(TMP "/bad/model.safetensors.index.json", (off_t)WS_MAX_INDEX + 1) == 0);
    expect_ws_rejected(d, "index over the size limit", "bytes");
    /* a single model.safetensors that is hostile is refused, not bypassed for the index */
    d = bad_set(NULL);
    write_text(TMP "/bad/model.safetensors", "garbage!");
    expect_ws_rejected(d, "hostile model.safetensors beside a good index", "model.safetensors");
    /* no weights at all; not a directory; missing */
    d = bad_set(NULL);
    CHECK(unlink(TMP "/bad/model.safetensors.index.json") == 0);
    expect_ws_rejected(d, "no weights in the directory", "model.safetensors");
    expect_ws_rejected(TMP "/bad/s1.safetensors", "a file, not a directory", "directory");
    expect_ws_rejected(TMP "/bad/missing", "missing directory", NULL);
}

/* Every allocation failure while opening a sharded set is NOMEM, with nothing leaked. */
TEST(ws_out_of_memory_is_clean) {
    int opened = 0;
    for (long k = 1; k < 200 && !opened; k++) {
        WeightSet *ws = NULL;
        moelm_alloc_fail_after(k);
        moelm_status s = ws_open(&ws, TMP "/sharded");
        moelm_alloc_fail_after(0);
        EXPECT(s == MOELM_OK || s == MOELM_ERR_NOMEM);
        if (s == MOELM_OK) { opened = 1; EXPECT(ws_count(ws) == 5); ws_close(ws); }
        EXPECT(moelm_alloc_live_bytes() == 0);
    }
    EXPECT(opened);
    int wrote = 0;
    for (long k = 1; k < 200 && !wrote; k++) {
        moelm_alloc_fail_after(k);
        moelm_status s = ws_write(TMP "/oom", g_ts, g_dt, 5, NULL, 500);
        moelm_alloc_fail_after(0);
        EXPECT(s == MOELM_OK || s == MOELM_ERR_NOMEM);
        wrote = s == MOELM_OK;
        EXPECT(moelm_alloc_live_bytes() == 0);
    }
    EXPECT(wrote);
    /* an injected write failure is reported and leaves no temporary file */
    fileio_fail_at("write", 4);
    EXPECT(ws_write(TMP "/oom", g_ts, g_dt, 5, NULL, 500) == MOELM_ERR_IO);
    fileio_fail_reset();
    EXPECT(strstr(moelm_last_error(), TMP "/oom") != NULL);
    WeightSet *ws = NULL;
    EXPECT(ws_open(&ws, TMP "/oom") == MOELM_OK);   /* the previous set, same layout, still reads */
    if (ws) expect_all(ws);
    ws_close(ws);
}

int main(void) {
    test_one_thread();
    CHECK(dir_make(TMP) == MOELM_OK);
    fill();
    RUN(ws_single_file);
    RUN(ws_sharded_roundtrip);
    RUN(ws_python_reads_the_set);
    RUN(ws_hostile_catalogue);
    RUN(ws_out_of_memory_is_clean);
    return test_summary("hfio");
}
