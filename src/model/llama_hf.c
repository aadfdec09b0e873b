/* llama_hf.c: the Llama / Mixtral family's weights as Hugging Face's files hold them, and Hugging Face
 * model directories of the family read and written (config.json, model.safetensors or shards).
 *
 * moelm's arena keeps HF's names for every tensor but the experts, which are slabs (model.c's
 * layout_llama): "...experts.w1_w3.weight" [E, 2H, C] holds expert e's w1 (gate) rows then its w3 (up)
 * rows, "...experts.w2.weight" [E, C, H]. HF's files have one tensor per expert and matrix
 * ("...block_sparse_moe.experts.E.w1.weight" [H, C], w3 [H, C], w2 [C, H]): llama_hf_tensors splits the
 * slabs into those views, here and only here. The zero expert-bias buffers are not in files.
 * Reading and writing a weight set are model_files.c's (model_read_view, model_write_view) through
 * this view.
 */
#include "model/llama_hf.h"

#include <stdio.h>
#include <string.h>
#include "io/fileio.h"
#include "io/weights.h"

/* 1 when name ends with suffix; *stem gets the length of the name before it */
static int ends_with(const char *name, const char *suffix, size_t *stem) {
    size_t n = strlen(name), s = strlen(suffix);
    if (n < s || strcmp(name + n - s, suffix)) return 0;
    *stem = n - s;
    return 1;
}

int llama_hf_tensors(const Model *m, LlamaHfTensor *out, int max) {
    CHECK(config_is_llama(&m->cfg) && m->n_params == m->n_params_full);   /* every expert held */
    int n = 0, E = m->moe_cfg.E, H = m->moe_cfg.H, C = m->cfg.d_model;
#define PUT(nm_fmt, arg, off_, nd, d0, d1) do { if (n < max) { LlamaHfTensor *f = &out[n]; \
        snprintf(f->name, sizeof f->name, nm_fmt, (int)stem, t->name, arg); f->off = (off_); f->ndim = (nd); \
        f->shape[0] = (d0); f->shape[1] = (d1); f->count = (size_t)(d0) * (size_t)((nd) > 1 ? (d1) : 1); } n++; } while (0)
    for (int i = 0; i < m->n_tensors; i++) {
        const TensorInfo *t = &m->tensors[i];
        size_t stem;
        if (!t->trainable) continue;   /* the experts' zero biases */
        if (ends_with(t->name, "experts.w1_w3.weight", &stem)) {
            stem += strlen("experts.");
            for (int e = 0; e < E; e++) {
                size_t at = t->offset + (size_t)e * 2 * H * C;
                PUT("%.*s%d.w1.weight", e, at, 2, H, C);
                PUT("%.*s%d.w3.weight", e, at + (size_t)H * C, 2, H, C);
            }
        } else if (ends_with(t->name, "experts.w2.weight", &stem)) {
            stem += strlen("experts.");
            for (int e = 0; e < E; e++) PUT("%.*s%d.w2.weight", e, t->offset + (size_t)e * C * H, 2, C, H);
        } else {
            stem = strlen(t->name);
            PUT("%.*s%s", "", t->offset, t->ndim, t->shape[0], t->shape[1]);
        }
    }
#undef PUT
    return n;
}

LlamaHfTensor *llama_hf_tensors_alloc(const Model *m, int *n) {
    *n = llama_hf_tensors(m, NULL, 0);
    LlamaHfTensor *v = moelm_calloc((size_t)*n, sizeof *v);
    if (v) llama_hf_tensors(m, v, *n);
    return v;
}

/* The family's file tensors (llama_hf_tensors) as model.h's FileTensor over m's weights: the view
 * (ModelFileView) of model_files.c's reader and writer. */
static FileTensor *hf_file_tensors(const Model *m, int *n) {
    LlamaHfTensor *v = llama_hf_tensors_alloc(m, n);
    FileTensor *ft = v ? moelm_calloc((size_t)(*n ? *n : 1), sizeof *ft) : NULL;
    for (int i = 0; ft && i < *n; i++) {
        FileTensor *f = &ft[i];
        CHECK(strlen(v[i].name) < sizeof f->name);
        snprintf(f->name, sizeof f->name, "%s", v[i].name);
        f->data = m->params + v[i].off;
        f->ndim = v[i].ndim;
        f->shape[0] = v[i].shape[0];
        f->shape[1] = v[i].shape[1];
        f->count = v[i].count;
        f->tensor = -1;   /* a view of a slab, or a whole tensor: the readers and writers do not ask */
    }
    moelm_free(v);
    return ft;
}

moelm_status llama_read_hf(Model *m, const WeightSet *ws, const char *dir) {
    return model_read_view(m, hf_file_tensors, ws, dir);
}

moelm_status llama_write_hf(const Model *m, const char *dir, int dtype, uint64_t max_shard_bytes) {
    moelm_status st = model_write_view(m, hf_file_tensors, dir, dtype, max_shard_bytes);
    char *js = st ? NULL : config_to_json(&m->cfg);
    if (!st && !js) st = MOELM_ERR_NOMEM;
    if (!st) {
        char path[4096];
        snprintf(path, sizeof path, "%s/config.json", dir);
        st = file_write_atomic(path, js, strlen(js));
    }
    moelm_free(js);
    return st;
}

moelm_status llama_load_hf_dir(Model *m, const char *dir, int B, int T) {
    char path[4096];
    ModelConfig cfg;
    memset(m, 0, sizeof *m);
    snprintf(path, sizeof path, "%s/config.json", dir);
    moelm_status st = config_load(&cfg, path);
    if (st) return st;
    if (!config_is_llama(&cfg))
        return moelm_fail(MOELM_ERR_CONFIG, "%s: model_type is not mixtral or llama", path);
    if (cfg.vocab_size < 1) return moelm_fail(MOELM_ERR_CONFIG, "%s: vocab_size must be set in a model's config", path);
    WeightSet *ws = NULL;
    st = ws_open(&ws, dir);
    if (st) return st;
    st = model_create(m, &cfg, B, T, 1);
    if (!st) st = llama_read_hf(m, ws, dir);
    ws_close(ws);
    if (st && m->params) model_free(m);
    return st;
}
