/* weights.c: Hugging Face weight sets (one safetensors file, or an index and its shards), reading
 * and sharded writing. See weights.h for the rules.
 *
 * The set keeps every shard open (its header validated, data read with pread on demand) and one
 * table of all tensors sorted by name, each pointing at its shard; names point into the shards'
 * header trees, which live as long as the set.
 */
#include "io/weights.h"
#include "io/fileio.h"
#include "io/json.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    const char *name;     /* the tensor's name, owned by its shard */
    int shard;            /* index into WeightSet.shards */
} WsEntry;

struct WeightSet {
    char *dir;
    int nshards;
    SafeTensors **shards;   /* [nshards] */
    char **paths;           /* [nshards] dir/shard name */
    int count;
    WsEntry *entries;       /* [count] sorted by name */
};

static int entry_cmp(const void *a, const void *b) {
    return strcmp(((const WsEntry *)a)->name, ((const WsEntry *)b)->name);
}

static int str_cmp(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static char *path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = moelm_malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

void ws_close(WeightSet *ws) {
    if (!ws) return;
    for (int i = 0; i < ws->nshards; i++) {
        if (ws->shards) st_close(ws->shards[i]);
        if (ws->paths) moelm_free(ws->paths[i]);
    }
    moelm_free(ws->shards);
    moelm_free(ws->paths);
    moelm_free(ws->entries);
    moelm_free(ws->dir);
    moelm_free(ws);
}

/* Opens the shards named in names[0..n) (distinct) into ws->shards / ws->paths. */
static moelm_status open_shards(WeightSet *ws, const char *const *names, int n) {
    ws->shards = moelm_calloc((size_t)n, sizeof(SafeTensors *));
    ws->paths = moelm_calloc((size_t)n, sizeof(char *));
    if (!ws->shards || !ws->paths) return moelm_fail_context(MOELM_ERR_NOMEM, "%s: opening weights", ws->dir);
    ws->nshards = n;
    for (int i = 0; i < n; i++) {
        ws->paths[i] = path_join(ws->dir, names[i]);
        if (!ws->paths[i]) return moelm_fail_context(MOELM_ERR_NOMEM, "%s: opening weights", ws->dir);
        moelm_status s = st_open(&ws->shards[i], ws->paths[i]);
        if (s) return s;
    }
    return MOELM_OK;
}

static moelm_status open_single(WeightSet *ws) {
    const char *name = WS_SINGLE;
    moelm_status s = open_shards(ws, &name, 1);
    if (s) return s;
    ws->count = st_count(ws->shards[0]);
    ws->entries = moelm_calloc(ws->count ? (size_t)ws->count : 1, sizeof(WsEntry));
    if (!ws->entries) return moelm_fail_context(MOELM_ERR_NOMEM, "%s: opening weights", ws->dir);
    for (int i = 0; i < ws->count; i++) ws->entries[i] = (WsEntry){ st_name(ws->shards[0], i), 0 };
    qsort(ws->entries, (size_t)ws->count, sizeof(WsEntry), entry_cmp);
    return MOELM_OK;
}

/* A shard name from the index must name a plain file in the directory. */
static int shard_name_ok(const char *s) {
    if (!s[0] || s[0] == '.' || strlen(s) > 255) return 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p == '/' || *p == '\\' || *p < 0x20 || *p == 0x7f) return 0;
    return 1;
}

static moelm_status open_index(WeightSet *ws, const char *index_path) {
    char *text = NULL;
    size_t n = 0;
    struct stat sb;   /* a FIFO would block the open in file_read_all_limit, which reads pipes too */
    if (stat(index_path, &sb) != 0) return moelm_fail(MOELM_ERR_IO, "%s: cannot stat: %s", index_path, strerror(errno));
    if (!S_ISREG(sb.st_mode)) return moelm_fail(MOELM_ERR_IO, "%s: not a regular file", index_path);
    moelm_status s = file_read_all_limit(index_path, &text, &n, WS_MAX_INDEX);
    if (s) return s;
    Json *root = NULL;
    s = json_parse(&root, text, n, index_path);
    moelm_free(text);
    if (s) return s;
    const char **names = NULL;   /* the distinct shard names, sorted */
    int nnames = 0;
    char b1[96], b2[96];
    const Json *map = json_get(root, "weight_map"), *meta = json_get(root, "metadata");
    if (json_type(root) != JSON_OBJECT) {
        s = moelm_fail(MOELM_ERR_FORMAT, "%s: not a JSON object", index_path);
        goto done;
    }
    if (json_type(map) != JSON_OBJECT || json_len(map) == 0) {
        s = moelm_fail(MOELM_ERR_FORMAT, "%s: \"weight_map\" is %s", index_path,
                       !map ? "missing" : json_type(map) != JSON_OBJECT ? "not an object" : "empty");
        goto done;
    }
    if (meta) {
        int64_t total;
        const Json *ts = json_get(meta, "total_size");
        if (json_type(meta) != JSON_OBJECT) {
            s = moelm_fail(MOELM_ERR_FORMAT, "%s: \"metadata\" is not an object", index_path);
            goto done;
        }
        if (ts && (!json_int64(ts, &total) || total < 0)) {
            s = moelm_fail(MOELM_ERR_FORMAT, "%s: metadata.total_size is not a non-negative integer", index_path);
            goto done;
        }
    }
    size_t nmap = json_len(map);
    names = moelm_malloc(nmap * sizeof(char *));
    if (!names) { s = moelm_fail_context(MOELM_ERR_NOMEM, "%s: reading", index_path); goto done; }
    for (size_t i = 0; i < nmap; i++) {
        const char *shard = json_string(json_at(map, i));
        if (!shard) {
            s = moelm_fail(MOELM_ERR_FORMAT, "%s: weight_map entry \"%s\" is not a string", index_path,
                           json_display(json_key_at(map, i), b1, sizeof b1));
            goto done;
        }
        if (!shard_name_ok(shard)) {
            s = moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\": shard name \"%s\" is not a plain file name in the "
                           "directory", index_path, json_display(json_key_at(map, i), b1, sizeof b1),
                           json_display(shard, b2, sizeof b2));
            goto done;
        }
        names[i] = shard;
    }
    qsort(names, nmap, sizeof(char *), str_cmp);
    for (size_t i = 0; i < nmap; i++)
        if (i == 0 || strcmp(names[i], names[nnames - 1]) != 0) names[nnames++] = names[i];
    if ((s = open_shards(ws, names, nnames))) goto done;
    /* Every shard's tensors are listed for that shard, and (counting) every listed tensor is in one. */
    size_t total = 0;
    for (int k = 0; k < nnames; k++) total += (size_t)st_count(ws->shards[k]);
    ws->entries = moelm_calloc(total ? total : 1, sizeof(WsEntry));
    if (!ws->entries) { s = moelm_fail_context(MOELM_ERR_NOMEM, "%s: reading", index_path); goto done; }
    for (int k = 0; k < nnames; k++)
        for (int i = 0; i < st_count(ws->shards[k]); i++) {
            const char *t = st_name(ws->shards[k], i);
            const char *listed = json_string(json_get(map, t));
            if (!listed) {
                s = moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\" is not in the index %s", ws->paths[k],
                               json_display(t, b1, sizeof b1), index_path);
                goto done;
            }
            if (strcmp(listed, names[k]) != 0) {
                s = moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\" is also here, but the index %s puts it in %s",
                               ws->paths[k], json_display(t, b1, sizeof b1), index_path,
                               json_display(listed, b2, sizeof b2));
                goto done;
            }
            ws->entries[ws->count++] = (WsEntry){ t, k };
        }
    if ((size_t)ws->count != nmap) {   /* each shard tensor matched a distinct key: some key has no tensor */
        for (size_t i = 0; i < nmap; i++) {
            const char *t = json_key_at(map, i), *shard = json_string(json_at(map, i));
            int k = 0;
            while (strcmp(names[k], shard) != 0) k++;
            if (!st_info(ws->shards[k], t, NULL, NULL, NULL)) {
                s = moelm_fail(MOELM_ERR_FORMAT, "%s: tensor \"%s\" is listed in the index but missing from %s",
                               index_path, json_display(t, b1, sizeof b1), ws->paths[k]);
                goto done;
            }
        }
    }
    qsort(ws->entries, (size_t)ws->count, sizeof(WsEntry), entry_cmp);
done:
    /* shard names and tensor names point into the shards and the index tree: keep only the former */
    moelm_free(names);
    json_free(root);
    return s;
}

moelm_status ws_open(WeightSet **out, const char *dir) {
    *out = NULL;
    WeightSet *ws = moelm_calloc(1, sizeof *ws);
    if (!ws || !(ws->dir = moelm_strdup(dir))) {
        moelm_free(ws);
        return moelm_fail_context(MOELM_ERR_NOMEM, "%s: opening weights", dir);
    }
    char *single = path_join(dir, WS_SINGLE), *index = path_join(dir, WS_INDEX);
    moelm_status s;
    if (!single || !index) s = moelm_fail_context(MOELM_ERR_NOMEM, "%s: opening weights", dir);
    else if (!path_is_dir(dir)) s = moelm_fail(MOELM_ERR_IO, "%s: not a directory", dir);
    else if (path_exists(single)) s = open_single(ws);
    else if (path_exists(index)) s = open_index(ws, index);
    else s = moelm_fail(MOELM_ERR_IO, "%s: neither %s nor %s is there", dir, WS_SINGLE, WS_INDEX);
    moelm_free(single);
    moelm_free(index);
    if (s) {
        ws_close(ws);
        return s;
    }
    *out = ws;
    return MOELM_OK;
}

int ws_count(const WeightSet *ws) { return ws->count; }
int ws_shard_count(const WeightSet *ws) { return ws->nshards; }

const char *ws_name(const WeightSet *ws, int i) {
    return i >= 0 && i < ws->count ? ws->entries[i].name : NULL;
}

static const WsEntry *ws_find(const WeightSet *ws, const char *name) {
    if (!ws->count) return NULL;
    WsEntry key = { name, 0 };
    return bsearch(&key, ws->entries, (size_t)ws->count, sizeof(WsEntry), entry_cmp);
}

int ws_info(const WeightSet *ws, const char *name, const char **dtype, int *ndim, int64_t *shape) {
    const WsEntry *e = ws_find(ws, name);
    return e ? st_info(ws->shards[e->shard], name, dtype, ndim, shape) : 0;
}

const char *ws_file(const WeightSet *ws, const char *name) {
    const WsEntry *e = ws_find(ws, name);
    return e ? ws->paths[e->shard] : NULL;
}

moelm_status ws_read_f32(const WeightSet *ws, const char *name, float *dst, int ndim, const int64_t *shape) {
    return ws_read_f32_part(ws, name, dst, ndim, shape, 0, SIZE_MAX);
}

moelm_status ws_read_f32_part(const WeightSet *ws, const char *name, float *dst, int ndim, const int64_t *shape,
                              size_t first, size_t count) {
    const WsEntry *e = ws_find(ws, name);
    if (!e) {
        char b[96];
        return moelm_fail(MOELM_ERR_FORMAT, "%s: no tensor named \"%s\" in the weights", ws->dir,
                          json_display(name, b, sizeof b));
    }
    return st_read_f32_part(ws->shards[e->shard], name, dst, ndim, shape, first, count);
}

const char *ws_meta(const WeightSet *ws, const char *key) {
    for (int i = 0; i < ws->nshards; i++) {
        const char *v = st_meta(ws->shards[i], key);
        if (v) return v;
    }
    return NULL;
}

/* ---- writing ---------------------------------------------------------------------------------- */

static uint64_t tensor_bytes(const StTensor *t, StDtype dt) {
    uint64_t n = dt == ST_F32 ? 4 : 2;
    for (int d = 0; d < t->ndim; d++) n *= (uint64_t)t->shape[d];
    return n;
}

/* "model-00001-of-00003.safetensors": five digits or more, as transformers names them */
static int is_shard_name(const char *s) {
    unsigned a, b;
    int end = 0;
    return sscanf(s, "model-%5u-of-%5u.safetensors%n", &a, &b, &end) == 2 && s[end] == 0 &&
           strlen(s) == strlen("model-00001-of-00001.safetensors");
}

/* Removes what an earlier set left that the new one (single, or nshards shards) does not have. */
static moelm_status remove_stale(const char *dir, int nshards) {
    char keep_tail[32];
    snprintf(keep_tail, sizeof keep_tail, "-of-%05d.safetensors", nshards);
    DIR *d = opendir(dir);
    if (!d) return moelm_fail(MOELM_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
    moelm_status s = MOELM_OK;
    struct dirent *e;
    while (!s && (e = readdir(d))) {
        const char *n = e->d_name;
        int stale = 0;
        if (nshards == 1) stale = is_shard_name(n) || strcmp(n, WS_INDEX) == 0;
        else stale = strcmp(n, WS_SINGLE) == 0 || (is_shard_name(n) && !strstr(n, keep_tail));
        if (stale) {
            char *p = path_join(dir, n);
            if (!p) s = moelm_fail_context(MOELM_ERR_NOMEM, "%s: removing old weights", dir);
            else if (unlink(p) != 0 && errno != ENOENT)
                s = moelm_fail(MOELM_ERR_IO, "%s: cannot remove: %s", p, strerror(errno));
            moelm_free(p);
        }
    }
    closedir(d);
    return s ? s : dir_sync(dir);
}

moelm_status ws_write(const char *dir, const StTensor *tensors, const StDtype *dtypes, int count,
                      const char *const *meta_kv, uint64_t max_shard_bytes) {
    CHECK(count >= 0 && (count == 0 || tensors));
    for (int i = 0; i < count; i++)   /* unique across shards too: the index is a JSON object */
        for (int j = 0; j < i; j++) CHECK(strcmp(tensors[i].name, tensors[j].name) != 0);
    moelm_status s = dir_make(dir);
    if (s) return s;
    /* shard k holds tensors [start[k], start[k + 1]) */
    int *start = moelm_malloc(((size_t)count + 2) * sizeof(int));
    if (!start) return moelm_fail_context(MOELM_ERR_NOMEM, "%s: writing weights", dir);
    int nshards = 0;
    uint64_t fill = 0, total = 0;
    start[0] = 0;
    for (int i = 0; i < count; i++) {
        uint64_t b = tensor_bytes(&tensors[i], dtypes ? dtypes[i] : ST_F32);
        if (i > 0 && max_shard_bytes && fill + b > max_shard_bytes && i > start[nshards]) {
            start[++nshards] = i;
            fill = 0;
        }
        fill += b;
        total += b;
    }
    start[++nshards] = count;
    char name[64];
    StrBuf idx = { 0 };
    if (nshards > 1)
        sb_printf(&idx, "{\n  \"metadata\": {\"total_size\": %llu},\n  \"weight_map\": {", (unsigned long long)total);
    if (nshards > 99999) s = moelm_fail(MOELM_ERR_ARG, "%s: %d shards, more than 99999", dir, nshards);
    for (int k = 0; k < nshards && !s; k++) {
        if (nshards == 1) snprintf(name, sizeof name, "%s", WS_SINGLE);
        else snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", k + 1, nshards);
        char *p = path_join(dir, name);
        if (!p) { s = moelm_fail_context(MOELM_ERR_NOMEM, "%s: writing weights", dir); break; }
        s = st_write_as(p, tensors + start[k], dtypes ? dtypes + start[k] : NULL, start[k + 1] - start[k], meta_kv);
        moelm_free(p);
        for (int i = start[k]; i < start[k + 1] && nshards > 1; i++) {
            sb_append(&idx, i ? ",\n    " : "\n    ", i ? 6 : 5);
            sb_json_string(&idx, tensors[i].name);
            sb_append(&idx, ": ", 2);
            sb_json_string(&idx, name);
        }
    }
    if (!s && nshards > 1) {
        sb_append(&idx, "\n  }\n}\n", 7);
        char *p = path_join(dir, WS_INDEX);
        if (idx.failed || !p) s = moelm_fail_context(MOELM_ERR_NOMEM, "%s: writing the index", dir);
        else s = file_write_atomic(p, idx.buf, idx.len);
        moelm_free(p);
    }
    if (!s) s = remove_stale(dir, nshards);
    sb_free(&idx);
    moelm_free(start);
    return s;
}
