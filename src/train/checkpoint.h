/* checkpoint.h: checkpoint directories.
 *
 * RUN/ckpt-<step>/ holds model.safetensors (one tensor per parameter, the model's names),
 * optimizer.safetensors (flat "adam.m", "adam.v" over the parameter arena, "adam.t"), config.json,
 * state.json (step, data position, RNG states, thread count, run settings), tokenizer.model and
 * CHECKSUMS (CRC-32 and size of every file, verified on load).
 * Writing: everything goes into RUN/.tmp-ckpt-<step>, each file fsynced, CHECKSUMS last, the
 * directory fsynced and renamed into place, RUN fsynced; then the symlink RUN/latest is replaced
 * atomically (symlink to a temporary name, rename). A crash at any point leaves the previous
 * checkpoint and `latest` intact.
 */
#ifndef MOELM_CHECKPOINT_H
#define MOELM_CHECKPOINT_H

#include <stdint.h>
#include "model/model.h"
#include "optim/optim.h"
#include "tokenizer/tokenizer.h"

/* The files of a checkpoint directory besides CHECKSUMS, which must list every one of them. */
#define CKPT_N_FILES 5
extern const char *const ckpt_files[CKPT_N_FILES];

typedef struct {
    long step;                  /* optimizer steps done */
    uint64_t data_epoch;        /* dataloader position */
    uint64_t data_pos;
    uint64_t rng;               /* model RNG state (dropout, jitter, random router) */
    uint64_t seed;              /* the run's seed */
    int threads;
    int batch_size, seq_len;
    double elapsed_s;           /* training wall-clock so far */
    double tokens_seen;
    double dropout;             /* the dropout rate the run's rule fixed; -1: not fixed (yet) */
    int bf16;                   /* the steps up to this checkpoint ran in bf16 mixed precision (--bf16); a
                                 * record: the weights are float either way, and a resume takes either mode */
    int complete;               /* the run's final checkpoint: its steps or its time budget are done */
    double reserve_s;           /* a time-budgeted run: what its end will take (0: none) */
    int reserve_measured;       /* 1: reserve_s was measured by a periodic evaluation, 0: estimated */
    long val_step;              /* the last evaluation: its step, perplexities (0: none yet) */
    double val_ppl, val_word_ppl;
    char data[512];             /* the --data spec the run trains on */
    uint64_t tokenizer_hash;
    char train_json[2048];      /* the TrainConfig as JSON (lr, schedule, ...) */
} TrainState;

/* Writes RUN/ckpt-<step> and points RUN/latest at it; then keeps the one latest names and the
 * keep - 1 newest (by step) before it (keep <= 0: all); checkpoints after latest's step are kept. */
moelm_status ckpt_save(const char *run_dir, const Model *m, const Optimizer *o, const TrainState *st,
                       const Tokenizer *tok, int keep);

/* ckpt_save of a model whose data come from src (a model spread over ranks, dist.c): m and o give
 * the whole model's tensors (shapes, full offsets) and settings, with m->params, o->m and o->v NULL
 * (o->ema non-NULL when the file is to hold a weight average); src->read(ctx, arena, off, want, &got)
 * returns floats off .. off + got - 1 (1 <= got <= want, valid until the next call) of the whole
 * model's arena: 0 the parameters, 1 and 2 Adam's m and v, 3 the average. It is asked in one order:
 * the parameters' file tensors, then m, v and the average, each by increasing offset. */
typedef struct {
    const float *(*read)(void *ctx, int arena, size_t off, size_t want, size_t *got);
    void *ctx;
} CkptSource;
moelm_status ckpt_save_from(const char *run_dir, const Model *m, const Optimizer *o, const TrainState *st,
                            const Tokenizer *tok, int keep, const CkptSource *src);

/* The step of the newest RUN/ckpt-<step> (0 when only RUN/latest exists), -1 when RUN holds none. */
int ckpt_newest_step(const char *run_dir);
/* An exclusive lock (flock) on the run directory, held until ckpt_unlock_run (or the process ends):
 * a second writer gets MOELM_ERR_ARG with one line saying another process trains there. */
moelm_status ckpt_lock_run(const char *run_dir, int *fd);
void ckpt_unlock_run(int fd);
/* Deletes RUN/latest and every RUN/ckpt-<step> (a new run started over an old one with --force). */
moelm_status ckpt_remove_all(const char *run_dir);

/* Resolves a path given by the user (a checkpoint dir, RUN/latest, or a RUN dir with `latest`)
 * to a checkpoint directory in out. A `latest` that is not a symbolic link to a ckpt-<step>
 * directory of its own run directory (a path elsewhere, a directory) is refused. A RUN dir without
 * `latest` (killed between its first checkpoint's rename and the link) gives its newest checkpoint. */
moelm_status ckpt_resolve(const char *path, char *out, size_t cap);

/* The run directory a checkpoint directory (as ckpt_resolve gives it: RUN/latest, RUN/ckpt-<step>)
 * belongs to: its parent. A run resumed from any of its checkpoints goes on in it. Returns 1 when the
 * parent is a run directory of it: ckdir is RUN/latest, or RUN/ckpt-<step> beside a `latest` or a
 * metrics.jsonl; 0 for a checkpoint copied elsewhere (its parent is not its run). */
int ckpt_run_dir(const char *ckdir, char *out, size_t cap);

/* Reads config.json and verifies CHECKSUMS. */
moelm_status ckpt_read_config(const char *dir, ModelConfig *cfg);
moelm_status ckpt_read_state(const char *dir, TrainState *st);

/* Loads the weights into a model created from the checkpoint's config (any B, T). */
moelm_status ckpt_load_model(const char *dir, Model *m);
moelm_status ckpt_load_optimizer(const char *dir, Optimizer *o, const Model *m);
/* Replaces the trainable tensors' weights of a model loaded by ckpt_load_model with the checkpoint's
 * weight average (optimizer.safetensors "ema", kept by a run with ema_decay > 0); a checkpoint
 * without one is an error that says so. */
moelm_status ckpt_load_ema(const char *dir, Model *m);

#endif
