/* llama_hf.c: the Llama / Mixtral family's weights as Hugging Face's files hold them, and Hugging Face
 * model directories of the family read and written (config.json, model.safetensors or shards).
 *
 * moelm's arena keeps HF's names for every tensor but the experts, which are slabs (model.c's
 * layout_llama): "...experts.w1_w3.weight" [E, 2H, C] holds expert e's w1 (gate) rows then its w3 (up)
 * rows, "...experts.w2.weight" [E, C, H]. HF's files have one tensor per expert and matrix
 * ("...block_sparse_moe.experts.E.w1.weight" [H, C], w3 [H, C], w2 [C, H]): llama_hf_tensors splits the
 * slabs into those views, here and only here. The zero expert-bias buffers are not in files.
 * (The switch_transformers work has a generic per-expert file view, model_file_tensors; when it is in
 * this tree, this view is its llama case.)
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

moelm_status llama_read_hf(Model *m, const WeightSet *ws, const char *dir) {
    int n;
    LlamaHfTensor *v = llama_hf_tensors_alloc(m, &n);
    if (!v) return MOELM_ERR_NOMEM;
    moelm_status st = MOELM_OK;
    for (int i = 0; i < n && !st; i++) st = ws_read_f32(ws, v[i].name, m->params + v[i].off, v[i].ndim, v[i].shape);
    /* every tensor of the set has a place (a tied model's file may carry HF's copy of the head) */
    for (int j = 0; j < ws_count(ws) && !st; j++) {
        const char *name = ws_name(ws, j);
        int found = m->cfg.tie_word_embeddings && !strcmp(name, "lm_head.weight");
        for (int i = 0; i < n && !found; i++) found = !strcmp(v[i].name, name);
        if (!found)
            st = moelm_fail(MOELM_ERR_FORMAT, "%s: tensor '%s' has no place in this %s model (a different model or "
                            "config?)", dir, name, m->cfg.model_type == MODEL_MIXTRAL ? "mixtral" : "llama");
    }
    moelm_free(v);
    return st;
}

moelm_status llama_write_hf(const Model *m, const char *dir, int dtype, uint64_t max_shard_bytes) {
    int n;
    LlamaHfTensor *v = llama_hf_tensors_alloc(m, &n);
    StTensor *ts = moelm_calloc((size_t)(n ? n : 1), sizeof(StTensor));
    StDtype *dt = moelm_calloc((size_t)(n ? n : 1), sizeof(StDtype));
    moelm_status st = v && ts && dt ? MOELM_OK : MOELM_ERR_NOMEM;
    for (int i = 0; i < n && !st; i++) {
        ts[i].name = v[i].name;
        ts[i].data = m->params + v[i].off;
        ts[i].ndim = v[i].ndim;
        ts[i].shape[0] = v[i].shape[0];
        ts[i].shape[1] = v[i].shape[1];
        dt[i] = dtype == 1 ? ST_F16 : dtype == 2 ? ST_BF16 : ST_F32;
    }
    const char *meta[] = {"format", "pt", NULL};   /* HF's loader wants format "pt" */
    if (!st) st = ws_write(dir, ts, dt, n, meta, max_shard_bytes);
    char *js = st ? NULL : config_to_json(&m->cfg);
    if (!st && !js) st = MOELM_ERR_NOMEM;
    if (!st) {
        char path[4096];
        snprintf(path, sizeof path, "%s/config.json", dir);
        st = file_write_atomic(path, js, strlen(js));
    }
    moelm_free(js);
    moelm_free(v);
    moelm_free(ts);
    moelm_free(dt);
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
