/* checkpoint.c: see checkpoint.h. */
#include "train/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include "io/checksum.h"
#include "io/fileio.h"
#include "io/gguf.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "io/weights.h"

const char *const ckpt_files[CKPT_N_FILES] = {"model.safetensors", "optimizer.safetensors", "config.json",
                                              "state.json", "tokenizer.model"};

static char *state_to_json(const TrainState *s) {
    StrBuf sb = {0};
    sb_printf(&sb, "{\n  \"step\": %ld,\n  \"data_epoch\": \"%" PRIu64 "\",\n  \"data_pos\": \"%" PRIu64 "\",\n",
              s->step, s->data_epoch, s->data_pos);
    sb_printf(&sb, "  \"rng\": \"%" PRIu64 "\",\n  \"seed\": \"%" PRIu64 "\",\n  \"threads\": %d,\n", s->rng, s->seed,
              s->threads);
    sb_printf(&sb, "  \"batch_size\": %d,\n  \"seq_len\": %d,\n  \"elapsed_s\": %.17g,\n  \"tokens_seen\": %.17g,\n",
              s->batch_size, s->seq_len, s->elapsed_s, s->tokens_seen);
    if (s->dropout >= 0) sb_printf(&sb, "  \"dropout\": %.9g,\n", s->dropout);
    sb_printf(&sb, "  \"bf16\": %s,\n", s->bf16 ? "true" : "false");
    if (s->complete) sb_printf(&sb, "  \"complete\": 1,\n");
    if (s->val_ppl > 0)
        sb_printf(&sb, "  \"val_step\": %ld,\n  \"val_ppl\": %.6g,\n  \"val_word_ppl\": %.6g,\n", s->val_step, s->val_ppl,
                  s->val_word_ppl);
    if (s->reserve_s > 0) sb_printf(&sb, "  \"reserve_s\": %.17g,\n  \"reserve_measured\": %d,\n", s->reserve_s, s->reserve_measured);
    sb_printf(&sb, "  \"data\": ");
    sb_json_string(&sb, s->data);
    sb_printf(&sb, ",\n  \"tokenizer_hash\": \"%" PRIu64 "\",\n  \"train\": %s\n}\n", s->tokenizer_hash,
              s->train_json[0] ? s->train_json : "{}");
    if (sb.failed) {
        sb_free(&sb);
        return NULL;
    }
    return sb.buf;
}

static moelm_status write_text(const char *dir, const char *name, const char *text) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return file_write_atomic(path, text, strlen(text));
}

/* A file's tensors from a CkptSource: tensor i is floats offs[i] .. of arena arena[i]. */
typedef struct {
    const CkptSource *src;
    const int *arena;
    const size_t *offs;
} Pieces;

static const float *piece(void *ctx, int i, size_t off, size_t want, size_t *got) {
    const Pieces *p = ctx;
    return p->src->read(p->src->ctx, p->arena[i], p->offs[i] + off, want, got);
}

/* The model's tensors as files hold them (model_file_tensors: per-expert slabs split into Hugging
 * Face's per-expert tensors; the other names unchanged); from src when it is not NULL (m->params NULL). */
static moelm_status write_model(const char *path, const Model *m, const CkptSource *src) {
    int n = model_file_tensors(m, NULL, 0);
    FileTensor *ft = moelm_calloc((size_t)(n ? n : 1), sizeof(FileTensor));
    StTensor *ts = moelm_calloc((size_t)(n ? n : 1), sizeof(StTensor));
    size_t *offs = moelm_calloc((size_t)(n ? n : 1), sizeof(size_t));
    int *arena = moelm_calloc((size_t)(n ? n : 1), sizeof(int));
    moelm_status st = ft && ts && offs && arena ? MOELM_OK : MOELM_ERR_NOMEM;
    if (!st) {
        model_file_tensors(m, ft, n);
        for (int i = 0, j = 0; i < n; i++) {
            CHECK(ft[i].first == 0);   /* the whole model (dist_save_checkpoint streams a sharded one) */
            j = i && ft[i].tensor == ft[i - 1].tensor ? j + 1 : 0;   /* the expert of a per-expert slab */
            offs[i] = m->tensors[ft[i].tensor].offset + (size_t)j * ft[i].count;
            ts[i].name = ft[i].name;
            ts[i].data = src ? NULL : ft[i].data;
            ts[i].ndim = ft[i].ndim;
            for (int d = 0; d < ft[i].ndim; d++) ts[i].shape[d] = ft[i].shape[d];
        }
        /* HF's loader wants format "pt"; moelm's version beside it */
        const char *meta[] = {"format", "pt", "moelm_version", MOELM_VERSION, NULL};
        Pieces pc = {src, arena, offs};
        st = st_write_from(path, ts, NULL, n, meta, src ? piece : NULL, &pc);
    }
    moelm_free(ft);
    moelm_free(ts);
    moelm_free(offs);
    moelm_free(arena);
    return st;
}

static moelm_status write_optimizer(const char *path, const Optimizer *o, const CkptSource *src) {
    float t = (float)o->t;   /* exact below 2^24 steps */
    StTensor ts[4] = {
        {"adam.m", src ? NULL : o->m, 1, {(int64_t)o->n}},
        {"adam.v", src ? NULL : o->v, 1, {(int64_t)o->n}},
        {"adam.t", &t, 0, {0}},
        {"ema", src ? NULL : o->ema, 1, {(int64_t)o->n}},   /* with src, o->ema only says there is one */
    };
    int arena[4] = {1, 2, 0, 3};
    size_t offs[4] = {0, 0, 0, 0};
    Pieces pc = {src, arena, offs};
    return st_write_from(path, ts, NULL, o->ema ? 4 : 3, NULL, src ? piece : NULL, &pc);
}

static int ckpt_step_of(const char *name) {
    if (strncmp(name, "ckpt-", 5) != 0) return -1;
    char *end;
    long v = strtol(name + 5, &end, 10);
    return *end || v < 0 ? -1 : (int)v;
}

/* The highest step of RUN's ckpt-<step> directories (with whole = 1 only those holding a model), its
 * directory's name in name[cap] when given; -1 when there is none. */
static int newest_ckpt(const char *run_dir, int whole, char *name, size_t cap) {
    DIR *d = opendir(run_dir);
    if (!d) return -1;
    int best = -1;
    char buf[4200];
    struct dirent *e;
    while ((e = readdir(d))) {
        int s = ckpt_step_of(e->d_name);
        if (s <= best) continue;
        snprintf(buf, sizeof buf, "%s/%s/model.safetensors", run_dir, e->d_name);
        if (whole && !path_exists(buf)) continue;
        best = s;
        if (name) snprintf(name, cap, "%s", e->d_name);
    }
    closedir(d);
    return best;
}

int ckpt_newest_step(const char *run_dir) {
    int best = newest_ckpt(run_dir, 0, NULL, 0);
    char latest[4096];
    snprintf(latest, sizeof latest, "%s/latest", run_dir);
    struct stat sb;
    if (best < 0 && lstat(latest, &sb) == 0) best = 0;
    return best;
}

moelm_status ckpt_remove_all(const char *run_dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/latest", run_dir);
    if (unlink(path) != 0 && errno != ENOENT) return moelm_fail(MOELM_ERR_IO, "%s: cannot remove: %s", path, strerror(errno));
    DIR *d = opendir(run_dir);
    if (!d) return MOELM_OK;
    moelm_status st = MOELM_OK;
    struct dirent *e;
    while (!st && (e = readdir(d))) {
        if (ckpt_step_of(e->d_name) < 0) continue;
        snprintf(path, sizeof path, "%s/%s", run_dir, e->d_name);
        st = dir_remove_tree(path);
    }
    closedir(d);
    return st;
}

/* The step of the checkpoint RUN/latest names, and its name; -1 when there is no latest or it is
 * not a symbolic link to "ckpt-<step>" in RUN itself (never a path elsewhere). */
static int latest_target(const char *run_dir, char *name, size_t cap) {
    char link[4096], target[256];
    snprintf(link, sizeof link, "%s/latest", run_dir);
    ssize_t k = readlink(link, target, sizeof target - 1);
    if (k <= 0) return -1;
    target[k] = 0;
    int step = strchr(target, '/') ? -1 : ckpt_step_of(target);
    if (step >= 0 && name) snprintf(name, cap, "%s", target);
    return step;
}

typedef struct { int step; char name[64]; } CkptEntry;

static int entry_newer(const void *a, const void *b) {
    const CkptEntry *x = a, *y = b;
    return x->step != y->step ? (x->step > y->step ? -1 : 1) : strcmp(x->name, y->name);
}

/* Keeps the checkpoint `latest` names and the keep - 1 newest by step before it; removes older ones.
 * Checkpoints with a later step than latest's (left by a crash between the rename and the switch of
 * latest, or a run resumed from an earlier checkpoint) are not counted and not removed: the run
 * replaces each when it saves that step again. Without a valid latest nothing is removed. */
static void prune(const char *run_dir, int keep) {
    if (keep <= 0) return;
    char lname[256];
    int ls = latest_target(run_dir, lname, sizeof lname);
    if (ls < 0) return;
    DIR *d = opendir(run_dir);
    if (!d) return;
    CkptEntry *v = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int s = ckpt_step_of(e->d_name);
        if (s < 0 || s >= ls || strlen(e->d_name) >= sizeof v->name || !strcmp(e->d_name, lname)) continue;
        if (n == cap) {
            size_t nc = cap ? 2 * cap : 64;
            CkptEntry *nv = moelm_realloc(v, nc * sizeof *nv);
            if (!nv) break;   /* out of memory: prune what was listed */
            v = nv;
            cap = nc;
        }
        v[n].step = s;
        snprintf(v[n].name, sizeof v[n].name, "%s", e->d_name);
        n++;
    }
    closedir(d);
    if (n) qsort(v, n, sizeof *v, entry_newer);
    for (size_t i = (size_t)keep - 1; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", run_dir, v[i].name);
        dir_remove_tree(path);
    }
    moelm_free(v);
}

moelm_status ckpt_lock_run(const char *run_dir, int *fd) {
    *fd = open(run_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (*fd < 0) return moelm_fail(MOELM_ERR_IO, "%s: cannot open the run directory: %s", run_dir, strerror(errno));
    if (flock(*fd, LOCK_EX | LOCK_NB) != 0) {
        int err = errno;
        close(*fd);
        *fd = -1;
        if (err == EWOULDBLOCK)
            return moelm_fail(MOELM_ERR_ARG, "%s: another moelm process is training in this run directory; "
                              "wait for it to finish or choose another --out", run_dir);
        return moelm_fail(MOELM_ERR_IO, "%s: cannot lock the run directory: %s", run_dir, strerror(err));
    }
    return MOELM_OK;
}

void ckpt_unlock_run(int fd) {
    if (fd >= 0) close(fd);   /* closing the descriptor releases the lock */
}

moelm_status ckpt_save(const char *run_dir, const Model *m, const Optimizer *o, const TrainState *s,
                       const Tokenizer *tok, int keep) {
    return ckpt_save_from(run_dir, m, o, s, tok, keep, NULL);
}

moelm_status ckpt_save_from(const char *run_dir, const Model *m, const Optimizer *o, const TrainState *s,
                            const Tokenizer *tok, int keep, const CkptSource *src) {
    char tmp[4096], final[4096], path[4096], name[64];
    snprintf(name, sizeof name, "ckpt-%08ld", s->step);
    snprintf(tmp, sizeof tmp, "%s/.tmp-%s", run_dir, name);
    snprintf(final, sizeof final, "%s/%s", run_dir, name);
    moelm_status st = dir_remove_tree(tmp);
    if (!st) st = dir_make(tmp);
    char *cfg = NULL, *state = NULL;
    if (!st) {
        snprintf(path, sizeof path, "%s/model.safetensors", tmp);
        st = write_model(path, m, src);
    }
    if (!st) {
        snprintf(path, sizeof path, "%s/optimizer.safetensors", tmp);
        st = write_optimizer(path, o, src);
    }
    if (!st) {
        cfg = config_to_json(&m->cfg);
        state = state_to_json(s);
        st = cfg && state ? MOELM_OK : moelm_fail(MOELM_ERR_NOMEM, "out of memory writing the checkpoint");
    }
    if (!st) st = write_text(tmp, "config.json", cfg);
    if (!st) st = write_text(tmp, "state.json", state);
    if (!st) {
        snprintf(path, sizeof path, "%s/tokenizer.model", tmp);
        st = tokenizer_save(tok, path);
    }
    if (!st) st = checksums_write(tmp, ckpt_files, CKPT_N_FILES);
    if (!st) st = dir_sync(tmp);
    moelm_free(cfg);
    moelm_free(state);
    if (!st) {
        /* a checkpoint of the same step from an earlier, interrupted run is replaced whole */
        if (path_exists(final)) st = dir_remove_tree(final);
        if (!st) st = file_rename(tmp, final);
    }
    if (!st) st = dir_sync(run_dir);
    int moved = 0;   /* latest points at the new checkpoint */
    if (!st) {
        char link_tmp[4096], link[4096];
        snprintf(link_tmp, sizeof link_tmp, "%s/.latest.tmp", run_dir);
        snprintf(link, sizeof link, "%s/latest", run_dir);
        unlink(link_tmp);
        st = file_symlink(name, link_tmp);
        if (!st) st = file_rename(link_tmp, link);
        if (st) unlink(link_tmp);
        moved = !st;
        if (!st) st = dir_sync(run_dir);
    }
    if (st && moved)
        return moelm_fail_context(st, "checkpoint at step %ld written and made latest, but not known to be durable", s->step);
    if (st) {
        dir_remove_tree(tmp);
        return moelm_fail_context(st, "checkpoint at step %ld not written (the previous one is intact)", s->step);
    }
    prune(run_dir, keep);
    return MOELM_OK;
}

int ckpt_run_dir(const char *ckdir, char *out, size_t cap) {
    char buf[4096], p[4200];
    snprintf(buf, sizeof buf, "%s", ckdir);
    size_t n = strlen(buf);
    while (n > 1 && buf[n - 1] == '/') buf[--n] = 0;
    path_dirname(buf, out, cap);
    const char *base = strrchr(buf, '/');
    base = base ? base + 1 : buf;
    if (!strcmp(base, "latest")) return 1;   /* ckpt_resolve checked it is the run's own link */
    if (ckpt_step_of(base) < 0) return 0;
    struct stat sb;
    snprintf(p, sizeof p, "%s/latest", out);
    if (lstat(p, &sb) == 0) return 1;
    snprintf(p, sizeof p, "%s/metrics.jsonl", out);
    return path_exists(p);
}

/* A `latest` given or found must be a symbolic link to a checkpoint of its own run directory. */
static moelm_status check_latest(const char *run_dir, const char *link) {
    if (latest_target(run_dir, NULL, 0) >= 0) return MOELM_OK;
    char target[512];
    ssize_t k = readlink(link, target, sizeof target - 1);
    if (k < 0) return moelm_fail(MOELM_ERR_FORMAT, "%s: not a symbolic link to a checkpoint (moelm writes one)", link);
    target[k] = 0;
    return moelm_fail(MOELM_ERR_FORMAT, "%s: points to \"%s\", not to a ckpt-<step> directory of %s; refusing to follow it",
                      link, target, run_dir);
}

/* RUN/ckpt-<step> of the highest step holding a model (a checkpoint directory appears whole, by a
 * rename, so the newest is complete); 0 when there is none. */
static int newest_complete(const char *run_dir, char *out, size_t cap) {
    char name[256];
    if (newest_ckpt(run_dir, 1, name, sizeof name) < 0) return 0;
    snprintf(out, cap, "%s/%s", run_dir, name);
    return 1;
}

moelm_status ckpt_resolve(const char *path, char *out, size_t cap) {
    char buf[4096], dirbuf[4096];
    if (!path_exists(path)) return moelm_fail(MOELM_ERR_IO, "%s: no such checkpoint or run directory", path);
    if (!path_is_dir(path)) {
        if (gguf_is_file(path))
            return moelm_fail(MOELM_ERR_IO, "%s is a GGUF file, not a run or checkpoint directory (-m FILE.gguf works in "
                              "generate, eval, forward, export and bench; moelm export -m %s --format hf -o DIR makes "
                              "a directory that --init-from takes)", path, path);
        return moelm_fail(MOELM_ERR_IO, "%s is a file, not a run or checkpoint directory", path);
    }
    snprintf(buf, sizeof buf, "%s/model.safetensors", path);
    int here = path_exists(buf);
    snprintf(buf, sizeof buf, "%s/model.safetensors.index.json", path);   /* a sharded Hugging Face directory */
    if (here || path_exists(buf)) {
        const char *base = strrchr(path, '/');
        struct stat sb;
        if (!strcmp(base ? base + 1 : path, "latest") && lstat(path, &sb) == 0 && S_ISLNK(sb.st_mode)) {
            moelm_status st = check_latest(path_dirname(path, dirbuf, sizeof dirbuf), path);
            if (st) return st;
        }
        snprintf(out, cap, "%s", path);
        return MOELM_OK;
    }
    snprintf(buf, sizeof buf, "%s/latest", path);
    struct stat sb;
    if (lstat(buf, &sb) == 0) {
        moelm_status st = check_latest(path, buf);
        if (st) return st;
        snprintf(buf, sizeof buf, "%s/latest/model.safetensors", path);
        if (path_exists(buf)) {
            snprintf(out, cap, "%s/latest", path);
            return MOELM_OK;
        }
    } else if (newest_complete(path, out, cap)) {
        return MOELM_OK;   /* killed between its first checkpoint's rename and the making of latest */
    }
    return moelm_fail(MOELM_ERR_IO, "%s: not a checkpoint (no model.safetensors) and no latest checkpoint in it", path);
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && k < cap; d++) k += (size_t)snprintf(buf + k, cap - k, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

/* Every tensor the config needs is in model.safetensors with its shape, and nothing else: checked
 * from the header alone, before anything is allocated for the config (a config.json edited to ask
 * for gigabytes is refused at once, not after the allocation). */
static moelm_status check_shapes(const char *dir, const ModelConfig *cfg) {
    Model plan;
    moelm_status st = model_plan(&plan, cfg);
    if (st) return st;
    int n = model_file_tensors(&plan, NULL, 0);
    FileTensor *ft = moelm_calloc((size_t)(n ? n : 1), sizeof *ft);
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    SafeTensors *sf = NULL;
    if (!ft) st = moelm_fail_context(MOELM_ERR_NOMEM, "%s: checking shapes", path);
    else {
        model_file_tensors(&plan, ft, n);
        st = st_open(&sf, path);
    }
    for (int i = 0; !st && i < n; i++) {   /* a missing tensor by name */
        const char *dtype;
        int ndim;
        int64_t shape[ST_MAX_DIMS];
        if (!st_info(sf, ft[i].name, &dtype, &ndim, shape)) {
            st = moelm_fail(MOELM_ERR_FORMAT, "%s: no tensor %s, which config.json needs", path, ft[i].name);
            break;
        }
        int same = ndim == ft[i].ndim && !strcmp(dtype, "F32");
        for (int d = 0; same && d < ndim; d++) same = shape[d] == ft[i].shape[d];
        if (!same) {
            char have[128], want[128];
            shape_str(have, sizeof have, ndim, shape);
            shape_str(want, sizeof want, ft[i].ndim, ft[i].shape);
            st = moelm_fail(MOELM_ERR_FORMAT, "%s: tensor %s is %s %s, config.json needs F32 %s", path, ft[i].name, dtype,
                            have, want);
        }
    }
    /* every needed one is there: name one that is not needed (names are unique on both sides: the header's
     * JSON refuses a duplicate key), so the counts then agree */
    for (int i = 0; !st && i < st_count(sf); i++) {
        int needed = 0;
        for (int j = 0; !needed && j < n; j++) needed = !strcmp(st_name(sf, i), ft[j].name);
        if (!needed)
            st = moelm_fail(MOELM_ERR_FORMAT, "%s: tensor %s, which config.json's model does not have (%d tensors, it "
                            "needs %d)", path, st_name(sf, i), st_count(sf), n);
    }
    st_close(sf);
    moelm_free(ft);
    model_free(&plan);
    return st;
}

moelm_status ckpt_read_config(const char *dir, ModelConfig *cfg) {
    moelm_status st = checksums_verify(dir, ckpt_files, CKPT_N_FILES);
    if (st) return st;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((st = config_load(cfg, path))) return st;
    return check_shapes(dir, cfg);
}

static moelm_status get_u64(const Json *j, const char *key, uint64_t *v, const char *path) {
    const Json *x = json_get(j, key);
    if (!x || json_type(x) != JSON_STRING) return moelm_fail(MOELM_ERR_FORMAT, "%s: missing \"%s\"", path, key);
    char *end;
    errno = 0;
    unsigned long long u = strtoull(json_string(x), &end, 10);
    if (errno || *end || end == json_string(x)) return moelm_fail(MOELM_ERR_FORMAT, "%s: \"%s\" is not an unsigned integer", path, key);
    *v = u;
    return MOELM_OK;
}

static moelm_status get_num(const Json *j, const char *key, double *v, double lo, double hi, const char *path) {
    const Json *x = json_get(j, key);
    if (!x || json_type(x) != JSON_NUMBER) return moelm_fail(MOELM_ERR_FORMAT, "%s: missing number \"%s\"", path, key);
    *v = json_number(x);
    if (!(*v >= lo && *v <= hi)) return moelm_fail(MOELM_ERR_FORMAT, "%s: \"%s\" = %g out of range", path, key, *v);
    return MOELM_OK;
}

moelm_status ckpt_read_state(const char *dir, TrainState *s) {
    char path[4096];
    snprintf(path, sizeof path, "%s/state.json", dir);
    Json *j = NULL;
    moelm_status st = json_parse_file(&j, path);
    if (st) return st;
    memset(s, 0, sizeof *s);
    double step = 0, threads = 0, bs = 0, sl = 0;
    if (json_type(j) != JSON_OBJECT) st = moelm_fail(MOELM_ERR_FORMAT, "%s: not a JSON object", path);
    if (!st) st = get_num(j, "step", &step, 0, 1e15, path);
    if (!st) st = get_u64(j, "data_epoch", &s->data_epoch, path);
    if (!st) st = get_u64(j, "data_pos", &s->data_pos, path);
    if (!st) st = get_u64(j, "rng", &s->rng, path);
    if (!st) st = get_u64(j, "seed", &s->seed, path);
    if (!st) st = get_num(j, "threads", &threads, 1, 4096, path);
    if (!st) st = get_num(j, "batch_size", &bs, 1, 1 << 20, path);
    if (!st) st = get_num(j, "seq_len", &sl, 1, 1 << 20, path);
    if (!st) st = get_num(j, "elapsed_s", &s->elapsed_s, 0, 1e12, path);
    if (!st) st = get_num(j, "tokens_seen", &s->tokens_seen, 0, 1e18, path);
    if (!st) st = get_u64(j, "tokenizer_hash", &s->tokenizer_hash, path);
    s->dropout = -1;   /* optional: only a run whose dropout rule has fixed its rate has one */
    if (!st && json_get(j, "dropout")) st = get_num(j, "dropout", &s->dropout, 0, 0.99, path);
    if (!st && json_get(j, "bf16")) {   /* optional: checkpoints before bf16 mode have none (float) */
        const Json *b = json_get(j, "bf16");
        if (json_type(b) != JSON_BOOL) st = moelm_fail(MOELM_ERR_FORMAT, "%s: \"bf16\" is not true or false", path);
        else s->bf16 = json_bool(b);
    }
    double complete = 0;   /* optional: the run's final checkpoint */
    if (!st && json_get(j, "complete")) st = get_num(j, "complete", &complete, 0, 1, path);
    s->complete = complete > 0;
    double measured = 0;   /* optional: a budgeted run's reserve for its end (train.c) */
    if (!st && json_get(j, "reserve_s")) st = get_num(j, "reserve_s", &s->reserve_s, 0, 1e12, path);
    if (!st && json_get(j, "reserve_measured")) st = get_num(j, "reserve_measured", &measured, 0, 1, path);
    s->reserve_measured = measured > 0;
    double vstep = 0;   /* optional: the last evaluation's perplexities */
    if (!st && json_get(j, "val_ppl")) st = get_num(j, "val_ppl", &s->val_ppl, 0, 1e300, path);
    if (!st && json_get(j, "val_word_ppl")) st = get_num(j, "val_word_ppl", &s->val_word_ppl, 0, 1e300, path);
    if (!st && json_get(j, "val_step")) st = get_num(j, "val_step", &vstep, 0, 1e15, path);
    s->val_step = (long)vstep;
    if (!st) {
        const Json *d = json_get(j, "data");
        if (!d || json_type(d) != JSON_STRING) st = moelm_fail(MOELM_ERR_FORMAT, "%s: missing \"data\"", path);
        else snprintf(s->data, sizeof s->data, "%s", json_string(d));
    }
    if (!st) {
        const Json *t = json_get(j, "train");
        if (t && json_type(t) == JSON_OBJECT) {
            StrBuf sb = {0};
            json_write(&sb, t);
            if (!sb.failed && sb.len < sizeof s->train_json) memcpy(s->train_json, sb.buf, sb.len + 1);
            sb_free(&sb);
        }
    }
    if (!st) {   /* only validated numbers are converted (an out-of-range double is UB to cast) */
        s->step = (long)step;
        s->threads = (int)threads;
        s->batch_size = (int)bs;
        s->seq_len = (int)sl;
    }
    json_free(j);
    return st;
}

/* The first value of x[0..n) that is NaN or infinite (or negative, with nonneg), as a message naming
 * the tensor: a checkpoint holding one evaluates to NaN or trains from garbage. */
static moelm_status check_finite(const float *x, size_t n, size_t first, int nonneg, const char *path, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]) || (nonneg && x[i] < 0))
            return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor %s holds %g at index %zu (%s)", path, name, (double)x[i], first + i,
                              isfinite(x[i]) ? "a second moment must be >= 0" : "not a finite number");
    return MOELM_OK;
}

moelm_status ckpt_load_model(const char *dir, Model *m) {
    /* every file tensor by name; a sharded model reads its rows of the whole tensors */
    WeightSet *ws = NULL;
    moelm_status st = ws_open(&ws, dir);
    if (!st) st = model_read_weights(m, ws, dir);
    /* every value finite; a message names the file that holds the tensor */
    int n = st ? 0 : model_file_tensors(m, NULL, 0);
    FileTensor *ft = n ? moelm_calloc((size_t)n, sizeof *ft) : NULL;
    if (n && !ft) st = moelm_fail_context(MOELM_ERR_NOMEM, "%s: checking the weights", dir);
    if (ft) model_file_tensors(m, ft, n);
    for (int i = 0; ft && !st && i < n; i++) {
        const char *file = ws_file(ws, ft[i].name);
        st = check_finite(ft[i].data, ft[i].count, ft[i].first, 0, file ? file : dir, ft[i].name);
    }
    moelm_free(ft);
    ws_close(ws);
    return st;
}

/* Reads vector `key` of optimizer.safetensors (path), laid out as the whole model's arena
 * [n_params_full], into x (m's arena): each tensor's part this model holds (a sharded model's rows of
 * it), every tensor or only the trainable ones (trainable_only: the buffers keep their values), and
 * checks every value finite (and >= 0 with nonneg). */
static moelm_status read_arena_vector(SafeTensors *sf, const char *key, float *x, const Model *m, int trainable_only,
                                      int nonneg, const char *path) {
    int64_t n = (int64_t)m->n_params_full;
    moelm_status st = MOELM_OK;
    for (int i = 0; !st && i < m->n_tensors; i++) {
        const TensorInfo *ti = &m->tensors[i];
        if (trainable_only && !ti->trainable) continue;
        size_t first = ti->full_offset + tensor_held_first(ti);
        st = st_read_f32_part(sf, key, x + ti->offset, 1, &n, first, ti->size);
        if (!st) st = check_finite(x + ti->offset, ti->size, first, nonneg, path, key);
    }
    return st;
}

/* Opens dir/optimizer.safetensors; path [4096] gets its name. */
static moelm_status open_optimizer(const char *dir, char *path, SafeTensors **sf) {
    snprintf(path, 4096, "%s/optimizer.safetensors", dir);
    *sf = NULL;
    return st_open(sf, path);
}

moelm_status ckpt_load_ema(const char *dir, Model *m) {
    char path[4096];
    SafeTensors *sf;
    moelm_status st = open_optimizer(dir, path, &sf);
    if (st) return st;
    if (!st_info(sf, "ema", NULL, NULL, NULL))
        st = moelm_fail(MOELM_ERR_ARG, "%s holds no weight average: the run trained without one (--set ema_decay=0.999 "
                                       "keeps one)", dir);
    if (!st) st = read_arena_vector(sf, "ema", m->params, m, 1, 0, path);
    st_close(sf);
    return st;
}

moelm_status ckpt_load_optimizer(const char *dir, Optimizer *o, const Model *m) {
    char path[4096];
    SafeTensors *sf;
    moelm_status st = open_optimizer(dir, path, &sf);
    if (st) return st;
    float t = 0;
    /* a run with a weight average that resumes a checkpoint without one starts it from the weights */
    int ema = o->ema && st_info(sf, "ema", NULL, NULL, NULL);
    /* the moments of the whole model's arena; a sharded model reads its tensors' parts of it */
    st = read_arena_vector(sf, "adam.m", o->m, m, 0, 0, path);
    if (!st) st = read_arena_vector(sf, "adam.v", o->v, m, 0, 1, path);
    if (!st && ema) st = read_arena_vector(sf, "ema", o->ema, m, 0, 0, path);
    if (!st) st = st_read_f32(sf, "adam.t", &t, 0, NULL);
    if (!st && !(t >= 0 && t < 16777216.0f)) st = moelm_fail(MOELM_ERR_FORMAT, "%s: adam.t = %g is not a step count", path, t);
    o->t = (long)t;
    st_close(sf);
    return st;
}
