/* init_from.c: SRC's config, tokenizer and weights for `moelm train --init-from SRC` (init_from.h).
 *
 * The weights are read into a whole model built from SRC's own config (its readers: checkpoints'
 * model_read_weights, HF's llama_read_hf or model_read_weights for switch_transformers), then copied
 * tensor by tensor, by name, into the run's model: the run's config may differ from SRC's in keys
 * that keep every shape (dropout, the router, capacity; --set), and under expert parallelism the
 * run's model holds only its rows of the experts' slabs. */
#include "train/init_from.h"

#include <stdio.h>
#include <string.h>
#include "io/fileio.h"
#include "model/encdec.h"
#include "train/checkpoint.h"

moelm_status init_from_open(InitSource *s, const char *src) {
    char p[4096];
    memset(s, 0, sizeof *s);
    if (strlen(src) > 3000) return moelm_fail(MOELM_ERR_ARG, "--init-from: path too long");
    if (!path_exists(src)) return moelm_fail(MOELM_ERR_IO, "--init-from %s: no such directory", src);
    moelm_status st = ckpt_resolve(src, s->dir, sizeof s->dir);
    if (st) return moelm_fail_context(st, "--init-from");
    snprintf(p, sizeof p, "%s/CHECKSUMS", s->dir);
    s->is_ckpt = path_exists(p);
    snprintf(p, sizeof p, "%s/config.json", s->dir);
    if (s->is_ckpt) {
        st = ckpt_read_config(s->dir, &s->cfg);
    } else if (!path_exists(p)) {
        return moelm_fail(MOELM_ERR_IO, "--init-from %s: no config.json (not a moelm run or a Hugging Face model "
                                        "directory)", s->dir);
    } else {
        st = config_load(&s->cfg, p);
    }
    if (!st && s->cfg.vocab_size < 1)
        st = moelm_fail(MOELM_ERR_CONFIG, "%s: vocab_size must be set in a model's config", p);
    if (st) return moelm_fail_context(st, "--init-from");
    snprintf(s->tokenizer, sizeof s->tokenizer, "%s/tokenizer.model", s->dir);
    if (!path_exists(s->tokenizer)) snprintf(s->tokenizer, sizeof s->tokenizer, "%s/spiece.model", s->dir);
    if (!path_exists(s->tokenizer)) s->tokenizer[0] = '\0';
    return MOELM_OK;
}

/* The whole model SRC holds, with its weights. */
static moelm_status load_whole(const InitSource *s, Model *w) {
    if (!s->is_ckpt) return model_load_dir(w, s->dir, 1, 1, 1);
    moelm_status st = s->cfg.model_type == MODEL_SWITCH ? model_create_encdec(w, &s->cfg, 1, 1, 1, 0, 0, 1)
                                                        : model_create(w, &s->cfg, 1, 1, 0);
    if (!st && (st = ckpt_load_model(s->dir, w)) != MOELM_OK) model_free(w);
    return st;
}

static void shape_fmt(char *buf, size_t cap, const TensorInfo *t, int64_t dim0) {
    int k = snprintf(buf, cap, "[");
    for (int d = 0; d < t->ndim && k > 0 && (size_t)k < cap; d++)
        k += snprintf(buf + k, cap - (size_t)k, "%s%lld", d ? ", " : "", (long long)(d ? t->shape[d] : dim0));
    if (k > 0 && (size_t)k < cap) snprintf(buf + k, cap - (size_t)k, "]");
}

static const TensorInfo *find_tensor(const Model *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return &m->tensors[i];
    return NULL;
}

/* Copies every tensor of w into m by name (m's held rows of a sharded slab). */
static moelm_status copy_tensors(Model *m, const Model *w, const char *dir) {
    for (int i = 0; i < m->n_tensors; i++) {
        const TensorInfo *t = &m->tensors[i], *u = find_tensor(w, t->name);
        if (!u && !t->trainable) continue;   /* a buffer SRC's config has no use for: its initial value */
        if (!u)
            return moelm_fail(MOELM_ERR_CONFIG, "--init-from %s: the run's model has a tensor %s that SRC lacks (a --set "
                              "that changes the model's shape?)", dir, t->name);
        int same = u->ndim == t->ndim && u->shape[0] == t->full_dim0;
        for (int d = 1; d < t->ndim; d++) same = same && u->shape[d] == t->shape[d];
        if (!same) {
            char a[96], b[96];
            shape_fmt(a, sizeof a, u, u->shape[0]);
            shape_fmt(b, sizeof b, t, t->full_dim0);
            return moelm_fail(MOELM_ERR_CONFIG, "--init-from %s: tensor %s is %s in SRC but %s in the run's model (a --set "
                              "that changes the model's shape?)", dir, t->name, a, b);
        }
        memcpy(m->params + t->offset, w->params + u->offset + tensor_held_first(t), t->size * sizeof(float));
    }
    for (int i = 0; i < w->n_tensors; i++)
        if (w->tensors[i].trainable && !find_tensor(m, w->tensors[i].name))
            return moelm_fail(MOELM_ERR_CONFIG, "--init-from %s: SRC's tensor %s has no place in the run's model (a --set "
                              "that changes the model's shape?)", dir, w->tensors[i].name);
    return MOELM_OK;
}

moelm_status init_from_load(const InitSource *s, Model *m) {
    Model w;
    memset(&w, 0, sizeof w);
    moelm_status st = load_whole(s, &w);
    if (st) return moelm_fail_context(st, "--init-from");
    st = copy_tensors(m, &w, s->dir);
    model_free(&w);
    return st;
}
