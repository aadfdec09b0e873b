/* model_files.c: a model's tensors as files hold them (model.h's FileTensor), and reading and writing
 * them as a Hugging Face weight set (io/weights.h): model.safetensors or shards with an index, F32,
 * F16 or BF16. The per-expert slabs are split here, and only here, into the per-expert tensors files
 * name. Not here: checkpoints' other files (train/checkpoint.c), configs (config*.c). */
#include "model/model.h"

#include <stdio.h>
#include <string.h>
#include "io/fileio.h"
#include "io/weights.h"
#include "model/encdec.h"
#include "model/llama_gguf.h"
#include "model/llama_hf.h"

int model_file_tensors(const Model *m, FileTensor *out, int max) {
    int n = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const TensorInfo *t = &m->tensors[i];
        int parts = t->per_expert ? (int)t->shape[0] : 1;
        size_t each = t->per_expert ? t->size / (size_t)t->shape[0] : t->size;
        for (int j = 0; j < parts; j++, n++) {
            if (n >= max) continue;
            FileTensor *f = &out[n];
            f->tensor = i;
            f->data = m->params ? m->params + t->offset + (size_t)j * each : NULL;   /* NULL: a model_plan */
            f->first = 0;
            f->count = each;
            if (t->per_expert) {
                snprintf(f->name, sizeof f->name, t->name, (int)(t->shard_first + j));
                f->ndim = t->ndim - 1;
                for (int d = 0; d < 4; d++) f->shape[d] = d < f->ndim ? t->shape[d + 1] : 0;
            } else {
                /* a slab files hold whole: this rank's rows of it */
                snprintf(f->name, sizeof f->name, "%s", t->name);
                f->ndim = t->ndim;
                for (int d = 0; d < 4; d++) f->shape[d] = t->shape[d];
                if (t->ndim) f->shape[0] = t->full_dim0;
                f->first = tensor_held_first(t);
            }
        }
    }
    return n;
}

/* Names a file may hold besides the model's own: HF's tied copies of switch_transformers' shared
 * embedding, and the head's copy of a tied switch_transformers or llama-family model. Returns 1 for
 * such a name. */
static int tied_copy(const Model *m, const char *name) {
    int sw = m->cfg.model_type == MODEL_SWITCH;
    if (sw && (!strcmp(name, "encoder.embed_tokens.weight") || !strcmp(name, "decoder.embed_tokens.weight"))) return 1;
    return (sw || config_is_llama(&m->cfg)) && m->cfg.tie_word_embeddings && !strcmp(name, "lm_head.weight");
}

/* The model family's name in messages. */
static const char *family_name(const ModelConfig *c) {
    return c->model_type == MODEL_LM || c->model_type == MODEL_SEED ? "moelm" : config_model_type_name(c->model_type);
}

static FileTensor *file_tensors_alloc(const Model *m, int *n) {
    *n = model_file_tensors(m, NULL, 0);
    FileTensor *ft = moelm_calloc((size_t)*n, sizeof(FileTensor));
    if (ft) model_file_tensors(m, ft, *n);
    return ft;
}

moelm_status model_read_weights(Model *m, const WeightSet *ws, const char *dir) {
    return model_read_view(m, file_tensors_alloc, ws, dir);
}

moelm_status model_read_view(Model *m, ModelFileView *view, const WeightSet *ws, const char *dir) {
    int n;
    FileTensor *ft = view(m, &n);
    if (!ft) return MOELM_ERR_NOMEM;
    moelm_status st = MOELM_OK;
    for (int i = 0; i < n && !st; i++) {
        const char *name = ft[i].name;
        if (!ws_info(ws, name, NULL, NULL, NULL) && !strcmp(name, "shared.weight") && m->cfg.model_type == MODEL_SWITCH) {
            /* HF may keep the shared embedding under a tied copy's name only */
            static const char *const alias[] = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                                                "lm_head.weight"};
            for (int a = 0; a < 3; a++)
                if (ws_info(ws, alias[a], NULL, NULL, NULL) && (a < 2 || m->cfg.tie_word_embeddings)) {
                    name = alias[a];
                    break;
                }
        }
        st = ws_read_f32_part(ws, name, ft[i].data, ft[i].ndim, ft[i].shape, ft[i].first, ft[i].count);
    }
    /* every tensor of the set must have a place in the model */
    for (int j = 0; j < ws_count(ws) && !st; j++) {
        const char *name = ws_name(ws, j);
        int found = tied_copy(m, name);
        for (int i = 0; i < n && !found; i++) found = !strcmp(ft[i].name, name);
        if (!found)
            st = moelm_fail(MOELM_ERR_FORMAT, "%s: tensor '%s' has no place in this %s model (a different model or "
                            "config?)", dir, name, family_name(&m->cfg));
    }
    moelm_free(ft);
    return st;
}

moelm_status model_write_weights(const Model *m, const char *dir, int dtype, uint64_t max_shard_bytes) {
    return model_write_view(m, file_tensors_alloc, dir, dtype, max_shard_bytes);
}

moelm_status model_write_view(const Model *m, ModelFileView *view, const char *dir, int dtype, uint64_t max_shard_bytes) {
    int n;
    FileTensor *ft = view(m, &n);
    StTensor *ts = moelm_calloc((size_t)(n ? n : 1), sizeof(StTensor));
    StDtype *dt = moelm_calloc((size_t)(n ? n : 1), sizeof(StDtype));
    moelm_status st = ft && ts && dt ? MOELM_OK : MOELM_ERR_NOMEM;
    for (int i = 0; i < n && !st; i++) {
        CHECK(ft[i].first == 0);   /* a whole model: a sharded one is gathered first */
        ts[i].name = ft[i].name;
        ts[i].data = ft[i].data;
        ts[i].ndim = ft[i].ndim;
        for (int d = 0; d < 4; d++) ts[i].shape[d] = ft[i].shape[d];
        dt[i] = dtype == 1 ? ST_F16 : dtype == 2 ? ST_BF16 : ST_F32;
    }
    const char *meta[] = {"format", "pt", NULL};   /* HF's loader wants format "pt" */
    if (!st) st = ws_write(dir, ts, dt, n, meta, max_shard_bytes);
    moelm_free(ft);
    moelm_free(ts);
    moelm_free(dt);
    return st;
}

moelm_status model_load_dir(Model *m, const char *dir, int B, int Te, int Td) {
    char path[4096];
    ModelConfig cfg;
    if (gguf_is_file(dir)) return llama_load_gguf(m, NULL, NULL, dir, B, Te);   /* a llama.cpp model file */
    snprintf(path, sizeof path, "%s/config.json", dir);
    moelm_status st = config_load(&cfg, path);
    if (st) return st;
    if (cfg.vocab_size < 1) return moelm_fail(MOELM_ERR_CONFIG, "%s: vocab_size must be set in a model's config", path);
    WeightSet *ws = NULL;
    st = ws_open(&ws, dir);
    if (st) return st;
    st = cfg.model_type == MODEL_SWITCH ? model_create_encdec(m, &cfg, B, Te, Td, 1, 0, 1) : model_create(m, &cfg, B, Te, 1);
    /* the family's HF files split the experts; a moelm checkpoint (train's latest/) keeps its slabs */
    int hf = config_is_llama(&cfg) && !ws_info(ws, "model.layers.0.block_sparse_moe.experts.w1_w3.weight", NULL, NULL, NULL);
    if (!st) st = hf ? llama_read_hf(m, ws, dir) : model_read_weights(m, ws, dir);
    ws_close(ws);
    if (st && m->params) model_free(m);
    return st;
}
