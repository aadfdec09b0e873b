/* test_checkpoint.c: checkpoint directories survive failures at every step of a write.
 *
 * Checked:
 *   - save then load gives bit-identical weights, optimizer moments, state and identical logits;
 *   - a failure injected at each open, write, fsync, rename and symlink of ckpt_save (every n-th call,
 *     until a save needs fewer) and at each allocation returns an error whose one-line message says
 *     what failed (the errno's text), and leaves the previous checkpoint loadable through `latest`
 *     (ckpt_resolve + ckpt_load_model give the old weights), or, when only the durability of a
 *     complete new checkpoint is unknown, the new one; no temporary directory is left behind;
 *   - short writes are retried: every one gives a checkpoint identical to an undisturbed one;
 *   - a config.json or state.json edited in a checkpoint is refused by CHECKSUMS;
 *   - what a consistent CHECKSUMS cannot catch: NaN/Inf weights or moments and negative second
 *     moments (refused naming the tensor), a config.json asking for more than the weights hold
 *     (refused from the header, nothing allocated), a CHECKSUMS without some file's line;
 *   - pruning never removes the checkpoint `latest` names and orders by step; a `latest` pointing
 *     outside its run is refused; the run directory lock admits one writer.
 */
#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "test.h"
#include "io/checksum.h"
#include "io/fileio.h"
#include "model/model.h"
#include "optim/optim.h"
#include "train/checkpoint.h"

#define TDIR "build/tmp/checkpoint"

static const char k_text[] = "the cat sat on the mat\nthe dog ate the log\na cat and a dog\n";

typedef struct {
    Tokenizer *tok;
    Model m;
    Optimizer o;
    TrainState s;
} Fix;

static int fix_make(Fix *f) {
    memset(f, 0, sizeof *f);
    if (tokenizer_build_char(&f->tok, k_text, strlen(k_text))) return 1;
    ModelConfig c;
    config_preset(&c, "tiny");
    c.vocab_size = tokenizer_vocab_size(f->tok);
    c.d_model = 8;
    c.num_heads = 2;
    c.d_ff = 12;
    c.n_positions = 8;
    c.num_experts = 3;
    if (model_create(&f->m, &c, 2, 8, 7)) return 1;
    if (optim_create(&f->o, f->m.n_params)) return 1;
    for (size_t i = 0; i < f->o.n; i++) {
        f->o.m[i] = 0.001f * (float)(i % 97);
        f->o.v[i] = 0.0001f * (float)(i % 89);
    }
    f->o.t = 1;
    f->s.step = 1;
    f->s.data_epoch = 3;
    f->s.data_pos = 17;
    f->s.rng = 0x123456789abcdef0ull;
    f->s.seed = 42;
    f->s.threads = 2;
    f->s.batch_size = 2;
    f->s.seq_len = 8;
    f->s.tokens_seen = 16;
    snprintf(f->s.data, sizeof f->s.data, "builtin");
    f->s.tokenizer_hash = tokenizer_hash(f->tok);
    snprintf(f->s.train_json, sizeof f->s.train_json, "{\"lr\": 0.003}");
    return 0;
}

static void fix_free(Fix *f) {
    model_free(&f->m);
    optim_free(&f->o);
    tokenizer_free(f->tok);
}

/* A different set of weights and a later step: what the failing save tries to write. */
static void fix_advance(Fix *f) {
    for (size_t i = 0; i < f->m.n_params; i++) f->m.params[i] += 0.25f;
    f->o.t++;
    f->s.step++;
}

static char g_cmd[1024];
static void rm_rf(const char *d) { dir_remove_tree(d); }

/* The weights of the checkpoint `latest` of run points to, into out[n_params] (NULL on failure). */
static int load_latest(const char *run, const Model *like, float *out, long *step) {
    char dir[4096];
    if (ckpt_resolve(run, dir, sizeof dir)) return 1;
    ModelConfig c;
    if (ckpt_read_config(dir, &c)) return 1;
    TrainState s;
    if (ckpt_read_state(dir, &s)) return 1;
    *step = s.step;
    Model m;
    if (model_create(&m, &c, like->B, like->T, 1)) return 1;
    int bad = ckpt_load_model(dir, &m) != MOELM_OK || m.n_params != like->n_params;
    if (!bad) memcpy(out, m.params, sizeof(float) * m.n_params);
    model_free(&m);
    return bad;
}

static int no_tmp_left(const char *run) {
    DIR *d = opendir(run);
    if (!d) return 0;
    struct dirent *e;
    int ok = 1;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, ".tmp-", 5) || strstr(e->d_name, ".tmp.")) ok = 0;
    closedir(d);
    return ok;
}

/* A fresh run directory holding one checkpoint of f; the checkpoint's directory into dir. */
static void save_fresh(Fix *f, const char *run, char *dir, size_t cap) {
    rm_rf(run);
    dir_make(run);
    EXPECT(ckpt_save(run, &f->m, &f->o, &f->s, f->tok, 0) == MOELM_OK);
    EXPECT(ckpt_resolve(run, dir, cap) == MOELM_OK);
}

TEST(save_load_roundtrip) {
    Fix f;
    EXPECT(fix_make(&f) == 0);
    char dir[4096];
    save_fresh(&f, TDIR "/rt", dir, sizeof dir);
    ModelConfig c;
    EXPECT(ckpt_read_config(dir, &c) == MOELM_OK);
    TrainState s;
    EXPECT(ckpt_read_state(dir, &s) == MOELM_OK);
    EXPECT(s.step == 1 && s.data_epoch == 3 && s.data_pos == 17 && s.rng == f.s.rng && s.seed == 42);
    EXPECT(s.threads == 2 && s.batch_size == 2 && s.seq_len == 8 && s.tokenizer_hash == f.s.tokenizer_hash);
    EXPECT(!strcmp(s.data, "builtin") && strstr(s.train_json, "0.003"));
    Model m;
    EXPECT(model_create(&m, &c, 2, 8, 99) == MOELM_OK);
    EXPECT(ckpt_load_model(dir, &m) == MOELM_OK);
    EXPECT(m.n_params == f.m.n_params && memcmp(m.params, f.m.params, sizeof(float) * m.n_params) == 0);
    Optimizer o;
    EXPECT(optim_create(&o, m.n_params) == MOELM_OK);
    EXPECT(ckpt_load_optimizer(dir, &o, &m) == MOELM_OK);
    EXPECT(o.t == 1 && !memcmp(o.m, f.o.m, sizeof(float) * o.n) && !memcmp(o.v, f.o.v, sizeof(float) * o.n));
    int inp[16], tgt[16];
    for (int i = 0; i < 16; i++) {
        inp[i] = (i * 5 + 1) % c.vocab_size;
        tgt[i] = (i * 3 + 2) % c.vocab_size;
    }
    float l1 = model_forward(&f.m, inp, tgt, 0), l2 = model_forward(&m, inp, tgt, 0);
    EXPECT(l1 == l2);
    EXPECT(!memcmp(f.m.a.logits, m.a.logits, sizeof(float) * 16 * (size_t)c.vocab_size));
    char tp[4200];
    snprintf(tp, sizeof tp, "%s/tokenizer.model", dir);
    Tokenizer *t2 = NULL;
    EXPECT(tokenizer_load(&t2, tp) == MOELM_OK && t2 && tokenizer_hash(t2) == tokenizer_hash(f.tok));
    if (t2) tokenizer_free(t2);
    optim_free(&o);
    model_free(&m);
    fix_free(&f);
}

static const struct { const char *op, *says; } k_ops[] = {
    {"open", "Permission denied"}, {"write", "No space left on device"}, {"fsync", "Input/output error"},
    {"rename", "Input/output error"}, {"symlink", "Input/output error"},
};

/* For each op, the n-th call fails, n = 1, 2, ... until a save completes without reaching it. */
TEST(failure_at_every_step_keeps_previous) {
    Fix f;
    EXPECT(fix_make(&f) == 0);
    float *old = malloc(sizeof(float) * f.m.n_params), *got = malloc(sizeof(float) * f.m.n_params);
    memcpy(old, f.m.params, sizeof(float) * f.m.n_params);
    Fix g;
    EXPECT(fix_make(&g) == 0);
    fix_advance(&g);
    int total = 0;
    char dir[4096];
    for (size_t k = 0; k < sizeof k_ops / sizeof k_ops[0]; k++) {
        int n;
        for (n = 1; n < 500; n++) {
            save_fresh(&f, TDIR "/f", dir, sizeof dir);
            fileio_fail_at(k_ops[k].op, n);
            moelm_status st = ckpt_save(TDIR "/f", &g.m, &g.o, &g.s, g.tok, 1);
            fileio_fail_reset();
            if (st == MOELM_OK) break;   /* fewer than n such calls */
            total++;
            const char *msg = moelm_last_error();
            EXPECT_MSG(strstr(msg, k_ops[k].says) && !strchr(msg, '\n') && strstr(msg, "step 2"),
                       "%s #%d: '%s'", k_ops[k].op, n, msg);
            long step = -1;
            int bad = load_latest(TDIR "/f", &f.m, got, &step);
            EXPECT_MSG(!bad, "%s #%d: latest does not load: %s", k_ops[k].op, n, moelm_last_error());
            if (bad) continue;
            if (strstr(msg, "not written")) {
                EXPECT_MSG(step == 1 && !memcmp(got, old, sizeof(float) * f.m.n_params),
                           "%s #%d: latest is not the previous checkpoint (step %ld)", k_ops[k].op, n, step);
            } else {
                /* only the durability of the complete new one is unknown */
                EXPECT_MSG(strstr(msg, "made latest") && step == 2 && !memcmp(got, g.m.params, sizeof(float) * f.m.n_params),
                           "%s #%d: '%s', step %ld", k_ops[k].op, n, msg, step);
            }
            /* the previous checkpoint directory is intact whatever happened */
            char prev[256];
            snprintf(prev, sizeof prev, TDIR "/f/ckpt-%08d", 1);
            EXPECT_MSG(checksums_verify(prev, ckpt_files, CKPT_N_FILES) == MOELM_OK, "%s #%d: %s", k_ops[k].op, n, moelm_last_error());
            EXPECT_MSG(no_tmp_left(TDIR "/f"), "%s #%d: a temporary was left behind", k_ops[k].op, n);
        }
        EXPECT_MSG(n > 1 && n < 500, "%s: %d", k_ops[k].op, n);
        printf("  %s: failed at each of %d calls\n", k_ops[k].op, n - 1);
    }
    EXPECT(total > 20);
    free(old);
    free(got);
    fix_free(&f);
    fix_free(&g);
}

TEST(allocation_failure_keeps_previous) {
    Fix f, g;
    EXPECT(fix_make(&f) == 0);
    EXPECT(fix_make(&g) == 0);
    fix_advance(&g);
    float *got = malloc(sizeof(float) * f.m.n_params);
    char dir[4096];
    int n;
    for (n = 1; n < 2000; n++) {
        save_fresh(&f, TDIR "/a", dir, sizeof dir);
        moelm_alloc_fail_after(n);
        moelm_status st = ckpt_save(TDIR "/a", &g.m, &g.o, &g.s, g.tok, 1);
        moelm_alloc_fail_after(0);
        if (st == MOELM_OK) break;
        EXPECT_MSG(strstr(moelm_last_error(), "out of memory"), "alloc #%d: '%s'", n, moelm_last_error());
        long step = -1;
        EXPECT_MSG(load_latest(TDIR "/a", &f.m, got, &step) == 0 && step == 1 &&
                       !memcmp(got, f.m.params, sizeof(float) * f.m.n_params),
                   "alloc #%d: previous checkpoint not loadable (step %ld)", n, step);
    }
    EXPECT(n > 1 && n < 2000);
    printf("  allocation: failed at each of %d allocations\n", n - 1);
    free(got);
    fix_free(&f);
    fix_free(&g);
}

TEST(short_writes_are_retried) {
    Fix f;
    EXPECT(fix_make(&f) == 0);
    char dir[4096];
    save_fresh(&f, TDIR "/s0", dir, sizeof dir);
    char *ref = NULL, *got = NULL;
    size_t nref = 0, ngot = 0;
    EXPECT(file_read_all(TDIR "/s0/latest/model.safetensors", &ref, &nref) == MOELM_OK);
    for (int n = 1; n <= 12; n++) {
        rm_rf(TDIR "/s");
        dir_make(TDIR "/s");
        fileio_fail_at("short_write", n);
        EXPECT_MSG(ckpt_save(TDIR "/s", &f.m, &f.o, &f.s, f.tok, 0) == MOELM_OK, "short write #%d: %s", n, moelm_last_error());
        fileio_fail_reset();
        EXPECT(file_read_all(TDIR "/s/latest/model.safetensors", &got, &ngot) == MOELM_OK);
        EXPECT_MSG(ngot == nref && got && !memcmp(got, ref, nref), "short write #%d: different bytes", n);
        EXPECT(checksums_verify(TDIR "/s/latest", ckpt_files, CKPT_N_FILES) == MOELM_OK);
        moelm_free(got);
        got = NULL;
    }
    moelm_free(ref);
    fix_free(&f);
}

/* Rewrites one byte of dir/name in place. */
static void poke(const char *dir, const char *name, long at, const char *with) {
    snprintf(g_cmd, sizeof g_cmd, "%s/%s", dir, name);
    FILE *fp = fopen(g_cmd, "r+b");
    if (!fp) return;
    fseek(fp, at, SEEK_SET);
    fwrite(with, 1, strlen(with), fp);
    fclose(fp);
}

TEST(edited_files_are_refused) {
    Fix f;
    EXPECT(fix_make(&f) == 0);
    char dir[4096];
    save_fresh(&f, TDIR "/e", dir, sizeof dir);
    ModelConfig c;
    poke(dir, "config.json", 20, "9");   /* a digit of a size, say */
    EXPECT(ckpt_read_config(dir, &c) != MOELM_OK);
    EXPECT_MSG(strstr(moelm_last_error(), "config.json") && !strchr(moelm_last_error(), '\n'), "%s", moelm_last_error());
    fix_free(&f);
}

/* NaN or Inf weights (or NaN moments, a negative second moment) written into a consistent checkpoint
 * (CHECKSUMS matches): loading refuses with one line naming the tensor. Before, they loaded and an
 * eval printed "perplexity nan" with exit 0. */
TEST(nonfinite_tensors_are_refused) {
    static const struct { int which; float value; const char *says; } cases[] = {
        { 0, NAN, "not a finite number" }, { 0, INFINITY, "not a finite number" }, { 0, -INFINITY, "not a finite number" },
        { 1, NAN, "adam.m" }, { 2, NAN, "adam.v" }, { 2, -1e-3f, "second moment must be >= 0" },
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        Fix f;
        EXPECT(fix_make(&f) == 0);
        const TensorInfo *t = &f.m.tensors[f.m.n_tensors / 2];
        size_t at = t->offset + t->size / 2;
        float *where = cases[k].which == 0 ? f.m.params : cases[k].which == 1 ? f.o.m : f.o.v;
        where[at] = cases[k].value;
        char dir[4096];
        ModelConfig c;
        save_fresh(&f, TDIR "/nf", dir, sizeof dir);
        EXPECT(ckpt_read_config(dir, &c) == MOELM_OK);
        Model m;
        Optimizer o;
        EXPECT(model_create(&m, &c, 2, 8, 1) == MOELM_OK && optim_create(&o, m.n_params) == MOELM_OK);
        moelm_status st = ckpt_load_model(dir, &m);
        if (!st) st = ckpt_load_optimizer(dir, &o, &m);
        const char *msg = moelm_last_error();
        EXPECT_MSG(st == MOELM_ERR_FORMAT && strstr(msg, cases[k].says) && !strchr(msg, '\n') &&
                       (cases[k].which || strstr(msg, t->name)),
                   "case %zu: %d '%s'", k, (int)st, msg);
        optim_free(&o);
        model_free(&m);
        fix_free(&f);
    }
}

/* CHECKSUMS rewritten after an edit, so that only the checks behind it can catch what was done. */
static void resum(const char *dir) { EXPECT(checksums_write(dir, ckpt_files, CKPT_N_FILES) == MOELM_OK); }

/* A config.json that asks for far more than model.safetensors holds (d_model 8192: about 3.7 GB with
 * its gradients) is refused from the safetensors header, before anything is allocated for it. */
TEST(config_checked_against_weights_before_allocating) {
    Fix f;
    EXPECT(fix_make(&f) == 0);
    char dir[4096], path[4200];
    save_fresh(&f, TDIR "/big", dir, sizeof dir);
    ModelConfig c = f.m.cfg;
    c.d_model = 8192;
    c.d_ff = 32768;
    c.num_heads = 8;
    char *js = config_to_json(&c);
    snprintf(path, sizeof path, "%s/config.json", dir);
    EXPECT(js && file_write_atomic(path, js, strlen(js)) == MOELM_OK);
    moelm_free(js);
    resum(dir);
    size_t live = moelm_alloc_live_bytes();
    moelm_status st = ckpt_read_config(dir, &c);
    EXPECT_MSG(st == MOELM_ERR_FORMAT && strstr(moelm_last_error(), "model.safetensors") &&
                   strstr(moelm_last_error(), "config.json needs"), "%d '%s'", (int)st, moelm_last_error());
    EXPECT(moelm_alloc_live_bytes() == live);
    fix_free(&f);
}

/* Saves f at step `step` into run (keep 0: nothing pruned). */
static void save_at(Fix *f, const char *run, long step, int keep) {
    f->s.step = step;
    EXPECT(ckpt_save(run, &f->m, &f->o, &f->s, f->tok, keep) == MOELM_OK);
}

static int exists_ckpt(const char *run, long step) {
    snprintf(g_cmd, sizeof g_cmd, "%s/ckpt-%08ld", run, step);
    return path_exists(g_cmd);
}

/* latest -> ckpt-8 with a complete ckpt-12 beside it (a kill between the rename of ckpt-12 and the
 * switch of latest): saving step 9 with keep 1 kept ckpt-12 as "the newest" and deleted ckpt-9, so
 * latest pointed at nothing. Now latest's checkpoint is never pruned, older ones are, by step, and
 * ckpt-12 (after latest) is left for the run to replace. */
TEST(prune_keeps_what_latest_names) {
    Fix f;
    EXPECT(fix_make(&f) == 0);
    const char *run = TDIR "/pr";
    rm_rf(run);
    dir_make(run);
    save_at(&f, run, 5, 0);
    save_at(&f, run, 8, 0);
    save_at(&f, run, 12, 0);
    EXPECT(unlink(TDIR "/pr/latest") == 0 && file_symlink("ckpt-00000008", TDIR "/pr/latest") == MOELM_OK);
    save_at(&f, run, 9, 1);
    float *got = malloc(sizeof(float) * f.m.n_params);
    long step = -1;
    EXPECT_MSG(load_latest(run, &f.m, got, &step) == 0 && step == 9, "latest: %s (step %ld)", moelm_last_error(), step);
    EXPECT(exists_ckpt(run, 9) && exists_ckpt(run, 12) && !exists_ckpt(run, 8) && !exists_ckpt(run, 5));
    /* keep 2: latest and the newest before it */
    save_at(&f, run, 10, 0);
    save_at(&f, run, 11, 2);
    EXPECT(exists_ckpt(run, 11) && exists_ckpt(run, 10) && !exists_ckpt(run, 9) && exists_ckpt(run, 12));
    /* a checkpoint named with fewer digits is ordered by its step, and removed by its own name */
    EXPECT(dir_make(TDIR "/pr/ckpt-3") == MOELM_OK);
    save_at(&f, run, 13, 1);
    EXPECT(!path_exists(TDIR "/pr/ckpt-3") && exists_ckpt(run, 13) && !exists_ckpt(run, 12));
    free(got);
    fix_free(&f);
}

/* A latest that points outside its run directory (or is no link) is refused, not followed. */
TEST(latest_outside_the_run_is_refused) {
    Fix f;
    EXPECT(fix_make(&f) == 0);
    const char *run = TDIR "/lo", *other = TDIR "/lo-other";
    rm_rf(run); rm_rf(other);
    dir_make(run); dir_make(other);
    save_at(&f, run, 1, 0);
    save_at(&f, other, 2, 0);
    char dir[4096], abs_other[4096];
    EXPECT(realpath(TDIR "/lo-other/ckpt-00000002", abs_other) != NULL);
    const char *targets[] = { "../lo-other/ckpt-00000002", abs_other };
    for (int i = 0; i < 2; i++) {
        unlink(TDIR "/lo/latest");
        EXPECT(file_symlink(targets[i], TDIR "/lo/latest") == MOELM_OK);
        EXPECT_MSG(ckpt_resolve(run, dir, sizeof dir) == MOELM_ERR_FORMAT && strstr(moelm_last_error(), "refusing"),
                   "%s: %s", targets[i], moelm_last_error());
        EXPECT(ckpt_resolve(TDIR "/lo/latest", dir, sizeof dir) == MOELM_ERR_FORMAT);
    }
    unlink(TDIR "/lo/latest");
    EXPECT(file_symlink("ckpt-00000001", TDIR "/lo/latest") == MOELM_OK);
    EXPECT(ckpt_resolve(run, dir, sizeof dir) == MOELM_OK);
    fix_free(&f);
}

/* One writer per run directory: a second lock is refused with one line until the first is released. */
TEST(run_lock_is_exclusive) {
    dir_make(TDIR "/lk");
    int a = -1, b = -1;
    EXPECT(ckpt_lock_run(TDIR "/lk", &a) == MOELM_OK && a >= 0);
    EXPECT(ckpt_lock_run(TDIR "/lk", &b) == MOELM_ERR_ARG && b == -1);
    EXPECT(strstr(moelm_last_error(), "another moelm process") && !strchr(moelm_last_error(), '\n'));
    ckpt_unlock_run(a);
    EXPECT(ckpt_lock_run(TDIR "/lk", &b) == MOELM_OK);
    ckpt_unlock_run(b);
    EXPECT(ckpt_lock_run(TDIR "/no-such-run", &a) == MOELM_ERR_IO);
}

/* Every file of a checkpoint must be listed in CHECKSUMS: a line removed let an edited model load. */
TEST(unlisted_files_are_refused) {
    Fix f;
    EXPECT(fix_make(&f) == 0);
    char dir[4096], path[4200];
    save_fresh(&f, TDIR "/ul", dir, sizeof dir);
    const char *only[] = { "optimizer.safetensors", "config.json", "state.json", "tokenizer.model" };
    EXPECT(checksums_write(dir, only, 4) == MOELM_OK);
    ModelConfig c;
    EXPECT(ckpt_read_config(dir, &c) == MOELM_ERR_FORMAT && strstr(moelm_last_error(), "does not list model.safetensors"));
    snprintf(path, sizeof path, "%s/CHECKSUMS", dir);
    const char *hdr = "# moelm CHECKSUMS v1: crc32 size name\n";
    EXPECT(file_write_atomic(path, hdr, strlen(hdr)) == MOELM_OK);
    EXPECT(ckpt_read_config(dir, &c) == MOELM_ERR_FORMAT && strstr(moelm_last_error(), "does not list"));
    fix_free(&f);
}

int main(void) {
    test_one_thread();
    dir_make(TDIR);
    RUN(save_load_roundtrip);
    RUN(failure_at_every_step_keeps_previous);
    RUN(allocation_failure_keeps_previous);
    RUN(short_writes_are_retried);
    RUN(edited_files_are_refused);
    RUN(nonfinite_tensors_are_refused);
    RUN(config_checked_against_weights_before_allocating);
    RUN(prune_keeps_what_latest_names);
    RUN(latest_outside_the_run_is_refused);
    RUN(run_lock_is_exclusive);
    RUN(unlisted_files_are_refused);
    int rc = test_summary("checkpoint");
    if (moelm_alloc_live_bytes() != 0) printf("leak: %zu bytes live at exit\n", moelm_alloc_live_bytes());
    return rc;
}
