/* llama_gguf_read.c: a GGUF file of architecture "llama" (dense, or Mixtral's layout when
 * llama.expert_count > 0) as a moelm model and its SentencePiece tokenizer: what llama_gguf.c writes and
 * what llama.cpp's converter writes (the same keys and tensor names).
 *
 * The config: llama.embedding_length (C), block_count (L), feed_forward_length (H, each expert's too),
 * attention.head_count (NH) and head_count_kv (NKV, default NH), attention.layer_norm_rms_epsilon,
 * rope.freq_base (default 10000), context_length, expert_count (E, default 0: dense) and
 * expert_used_count (K); the vocabulary size V is tokenizer.ggml.tokens' count. Keys of things moelm
 * does not build (rope scaling, a rotary width other than the head's, other key/value widths) are
 * refused by name.
 *
 * The tensors, from llama_hf.c's HF view of the model: each view's GGUF name (llama_gguf_name), an
 * expert's matrices as row slices of blk.N.ffn_{gate,up,down}_exps [E, H, C] / [E, C, H]; attn_q's and
 * attn_k's rows go back from llama.cpp's interleaved rotary order to HF's (row i + s hd/2 of a head <-
 * file row 2i + s: the inverse of llama_gguf.c's permutation). Every shape is checked against the keys
 * and every file tensor must have a place before the model is allocated, so a hostile file costs at
 * most its own size. A file without output.weight ties the head to token_embd (llama.cpp's rule).
 *
 * The tokenizer: tokenizer.ggml.model "llama" is SentencePiece as llama.cpp runs it, merges by piece
 * score (moelm's BPE kind); tokens, scores (default 0), token_type (default normal), the BOS / EOS ids,
 * add_space_prefix (default true) and remove_extra_whitespaces (default false, llama.cpp's; moelm's
 * exports write true, their tokenizers' setting).
 */
#include "model/llama_gguf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "model/llama_hf.h"

#define NO_DEFAULT INT64_MIN

/* *out = the integer key in [lo, hi]; dflt when absent (NO_DEFAULT: an error) */
static moelm_status key_int(const Gguf *g, const char *path, const char *key, int64_t lo, int64_t hi, int64_t dflt,
                            int64_t *out) {
    if (gguf_find_kv(g, key) < 0) {
        if (dflt != NO_DEFAULT) { *out = dflt; return MOELM_OK; }
        return moelm_fail(MOELM_ERR_FORMAT, "%s: no metadata key \"%s\" (moelm needs it to build the model)", path, key);
    }
    moelm_status st = gguf_get_int(g, key, out);
    if (!st && (*out < lo || *out > hi))
        st = moelm_fail(MOELM_ERR_FORMAT, "%s: %s = %lld is outside [%lld, %lld]", path, key, (long long)*out,
                        (long long)lo, (long long)hi);
    return st;
}

/* *out = the float key in (lo, hi); dflt when absent (NAN: an error) */
static moelm_status key_float(const Gguf *g, const char *path, const char *key, double lo, double hi, double dflt,
                              double *out) {
    if (gguf_find_kv(g, key) < 0) {
        if (!isnan(dflt)) { *out = dflt; return MOELM_OK; }
        return moelm_fail(MOELM_ERR_FORMAT, "%s: no metadata key \"%s\" (moelm needs it to build the model)", path, key);
    }
    moelm_status st = gguf_get_float(g, key, out);
    if (!st && !(*out > lo && *out < hi))
        st = moelm_fail(MOELM_ERR_FORMAT, "%s: %s = %g is outside (%g, %g)", path, key, *out, lo, hi);
    return st;
}

/* *out = the bool key; dflt when absent */
static moelm_status key_bool(const Gguf *g, const char *key, int dflt, int *out) {
    uint8_t v = (uint8_t)dflt;
    moelm_status st = gguf_find_kv(g, key) < 0 ? MOELM_OK : gguf_get(g, key, GGUF_TYPE_BOOL, &v);
    *out = v;
    return st;
}

/* The string key must be want; else an error saying what moelm reads */
static moelm_status key_string_is(const Gguf *g, const char *path, const char *key, const char *want, const char *what) {
    const char *s = NULL;
    moelm_status st = gguf_get_string(g, key, &s, NULL);
    if (!st && strcmp(s, want))
        st = moelm_fail(MOELM_ERR_FORMAT, "%s: %s is '%.40s': moelm reads %s only", path, key, s, what);
    return st;
}

/* The model config from the llama.* keys; V from the vocabulary. */
static moelm_status read_config(const Gguf *g, const char *path, ModelConfig *cfg) {
    moelm_status st = key_string_is(g, path, "general.architecture", "llama", "'llama' (dense or Mixtral's layout)");
    if (st) return st;
    int64_t C, L, H, NH, NKV, P, E, K = 0, hd_rot, kl, vl;
    double eps, theta;
    GgufType elem;
    uint64_t V = 0;
    const void *unused;
    if ((st = key_int(g, path, "llama.embedding_length", 1, 1 << 16, NO_DEFAULT, &C)) ||
        (st = key_int(g, path, "llama.block_count", 1, 4096, NO_DEFAULT, &L)) ||
        (st = key_int(g, path, "llama.feed_forward_length", 1, 1 << 20, NO_DEFAULT, &H)) ||
        (st = key_int(g, path, "llama.attention.head_count", 1, C, NO_DEFAULT, &NH)) ||
        (st = key_int(g, path, "llama.attention.head_count_kv", 1, NH, NH, &NKV)) ||
        (st = key_int(g, path, "llama.context_length", 1, INT32_MAX, NO_DEFAULT, &P)) ||
        (st = key_int(g, path, "llama.expert_count", 0, 1 << 12, 0, &E)) ||
        (st = key_float(g, path, "llama.attention.layer_norm_rms_epsilon", 0.0, 1.0, NAN, &eps)) ||
        (st = key_float(g, path, "llama.rope.freq_base", 1.0, 1e12, 10000.0, &theta)))
        return st;
    if (C % NH)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: llama.attention.head_count %lld does not divide llama.embedding_length %lld",
                          path, (long long)NH, (long long)C);
    if (NH % NKV)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: llama.attention.head_count_kv %lld does not divide head_count %lld", path,
                          (long long)NKV, (long long)NH);
    if ((C / NH) % 2)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: the head width %lld (embedding_length / head_count) is odd: RoPE rotates "
                          "pairs", path, (long long)(C / NH));
    if (E > 0 && (st = key_int(g, path, "llama.expert_used_count", 1, E, NO_DEFAULT, &K))) return st;
    if ((st = key_int(g, path, "llama.rope.dimension_count", 0, INT32_MAX, C / NH, &hd_rot)) ||
        (st = key_int(g, path, "llama.attention.key_length", 0, INT32_MAX, C / NH, &kl)) ||
        (st = key_int(g, path, "llama.attention.value_length", 0, INT32_MAX, C / NH, &vl)))
        return st;
    if (hd_rot != C / NH || kl != C / NH || vl != C / NH)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: llama.rope.dimension_count / attention.key_length / value_length (%lld, %lld, "
                          "%lld) differ from the head width %lld: moelm builds full-width heads and rotary", path,
                          (long long)hd_rot, (long long)kl, (long long)vl, (long long)(C / NH));
    const char *scaling = NULL;
    if (gguf_find_kv(g, "llama.rope.scaling.type") >= 0 &&
        (gguf_get_string(g, "llama.rope.scaling.type", &scaling, NULL) || strcmp(scaling, "none")))
        return moelm_fail(MOELM_ERR_FORMAT, "%s: llama.rope.scaling.type is set: moelm builds plain RoPE only", path);
    if (gguf_find_kv(g, "tokenizer.ggml.tokens") < 0)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: no tokenizer.ggml.tokens: moelm takes the vocabulary (and its size) from it",
                          path);
    if ((st = gguf_get_array(g, "tokenizer.ggml.tokens", &elem, &V, &unused))) return st;
    if (elem != GGUF_TYPE_STRING || V < 1 || V > (1 << 24))
        return moelm_fail(MOELM_ERR_FORMAT, "%s: tokenizer.ggml.tokens must be 1..2^24 strings", path);
    int64_t v_key;
    if ((st = key_int(g, path, "llama.vocab_size", 0, INT64_MAX, (int64_t)V, &v_key))) return st;
    if (v_key != (int64_t)V)
        return moelm_fail(MOELM_ERR_FORMAT, "%s: llama.vocab_size %lld differs from tokenizer.ggml.tokens' %llu pieces", path,
                          (long long)v_key, (unsigned long long)V);
    config_llama_defaults(cfg, E > 0);
    cfg->vocab_size = (int)V;
    cfg->d_model = (int)C;
    cfg->num_layers = (int)L;
    cfg->d_ff = (int)H;
    cfg->num_heads = (int)NH;
    cfg->num_key_value_heads = (int)NKV;
    cfg->n_positions = (int)(P < LLAMA_GGUF_MAX_CONTEXT ? P : LLAMA_GGUF_MAX_CONTEXT);
    cfg->layer_norm_epsilon = (float)eps;
    cfg->rope_theta = (float)theta;
    cfg->num_experts = (int)E;
    if (E > 0) cfg->num_experts_per_tok = (int)K;
    cfg->tie_word_embeddings = gguf_find_tensor(g, "output.weight") == NULL;
    st = config_check(cfg);
    return st ? moelm_fail_context(st, "%s: the llama.* keys", path) : MOELM_OK;
}

/* Where a view of the model lies in the file: its GGUF name, the tensor's shape there, and the
 * elements [*first, *first + view count) of it. */
static void file_place(const LlamaHfTensor *v, const Model *m, char *name, size_t cap, int *ndim, int64_t *shape,
                       size_t *first) {
    int l, e, at = 0;
    char w[4];
    *first = 0;
    if (sscanf(v->name, "model.layers.%d.block_sparse_moe.experts.%d.%2s%n", &l, &e, w, &at) == 3 && at) {
        int E = m->moe_cfg.E, H = m->moe_cfg.H, C = m->cfg.d_model, down = !strcmp(w, "w2");
        snprintf(name, cap, "blk.%d.%s.weight", l, down ? "ffn_down_exps" : !strcmp(w, "w1") ? "ffn_gate_exps" : "ffn_up_exps");
        *ndim = 3;
        shape[0] = E;
        shape[1] = down ? C : H;
        shape[2] = down ? H : C;
        *first = (size_t)e * v->count;
        return;
    }
    const char *gn = llama_gguf_name(v->name, name, cap);
    CHECK(gn != NULL);   /* every other view of the family has a name */
    if (gn != name) snprintf(name, cap, "%s", gn);
    *ndim = v->ndim;
    shape[0] = v->shape[0];
    shape[1] = v->shape[1];
}

/* Checks every tensor the model needs against the file, and that every file tensor has a place. */
static moelm_status check_tensors(const Gguf *g, const char *path, const Model *plan, const LlamaHfTensor *v, int n) {
    char name[96];
    int64_t shape[3];
    int ndim;
    size_t first;
    for (int i = 0; i < n; i++) {
        file_place(&v[i], plan, name, sizeof name, &ndim, shape, &first);
        const GgufTensorInfo *t = gguf_find_tensor(g, name);
        if (!t) return moelm_fail(MOELM_ERR_FORMAT, "%s: no tensor '%s' (the llama.* keys call for it)", path, name);
        int same = t->ndim == ndim;
        for (int d = 0; d < ndim && same; d++) same = t->shape[d] == shape[d];
        if (!same) {
            char want[64], got[64];
            int a = 0, b = 0;
            for (int d = 0; d < ndim; d++) a += snprintf(want + a, sizeof want - (size_t)a, d ? ", %lld" : "%lld", (long long)shape[d]);
            for (int d = 0; d < t->ndim; d++) b += snprintf(got + b, sizeof got - (size_t)b, d ? ", %lld" : "%lld", (long long)t->shape[d]);
            return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor '%s' is [%s], the llama.* keys make it [%s]", path, name, got, want);
        }
        if (t->type != GGUF_TENSOR_F32 && t->type != GGUF_TENSOR_F16 && t->type != GGUF_TENSOR_BF16 &&
            t->type != GGUF_TENSOR_Q8_0) {
            const char *tn = gguf_tensor_type_name(t->type);
            return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor '%s' is of type %s: moelm reads F32, F16, BF16 and Q8_0", path, name,
                              tn ? tn : "?");
        }
    }
    for (int j = 0; j < gguf_tensor_count(g); j++) {
        const char *fn = gguf_tensor_at(g, j)->name;
        int found = 0;
        for (int i = 0; i < n && !found; i++) {
            file_place(&v[i], plan, name, sizeof name, &ndim, shape, &first);
            found = !strcmp(name, fn);
        }
        if (!found)
            return moelm_fail(MOELM_ERR_FORMAT, "%s: tensor '%s' has no place in a llama model of these llama.* keys", path, fn);
    }
    return MOELM_OK;
}

/* dst's rows [heads hd] in HF's rotate-half order from src's in llama.cpp's pairs: row h hd + i + s hd/2
 * <- row h hd + 2i + s (rows of rb bytes) */
static void unpermute_rows(char *dst, const char *src, int heads, int hd, size_t rb) {
    for (int h = 0; h < heads; h++)
        for (int i = 0; i < hd / 2; i++)
            for (int s = 0; s < 2; s++)
                memcpy(dst + ((size_t)h * hd + i + (size_t)s * hd / 2) * rb, src + ((size_t)h * hd + 2 * i + s) * rb, rb);
}

/* Reads view v into the model (floats) or into q8's blocks (its Q8_0 matrices) */
static moelm_status read_view(const Gguf *g, const char *path, Model *m, Q8Arena *q8, const LlamaHfTensor *v) {
    char name[96];
    int64_t shape[3];
    int ndim;
    size_t first;
    file_place(v, m, name, sizeof name, &ndim, shape, &first);
    const GgufTensorInfo *t = gguf_find_tensor(g, name);
    int NH = m->cfg.num_heads, hd = m->cfg.d_model / NH, NKV = m->cfg.num_key_value_heads ? m->cfg.num_key_value_heads : NH;
    int heads = strstr(name, ".attn_q.") ? NH : strstr(name, ".attn_k.") ? NKV : 0;
    int keep = q8 && t->type == GGUF_TENSOR_Q8_0 && v->ndim == 2 && !strstr(name, "ffn_gate_inp") &&
               v->off % Q8_0_BLOCK == 0;
    size_t cols = (size_t)shape[ndim - 1], rows = v->count / cols;
    size_t rb = keep ? (size_t)gguf_row_bytes(t->type, cols) : sizeof(float) * cols;
    char *dst = keep ? (char *)(q8->blocks + v->off / Q8_0_BLOCK) : (char *)(m->params + v->off);
    char *tmp = heads ? moelm_malloc(rb * rows) : NULL;
    if (heads && !tmp) return MOELM_ERR_NOMEM;
    char *to = heads ? tmp : dst;
    moelm_status st = keep ? gguf_read_tensor_raw(g, t, to, first / cols * rb, rb * rows)
                           : gguf_read_tensor_f32_part(g, name, (float *)to, ndim, shape, first, v->count);
    if (!st && heads) unpermute_rows(dst, tmp, heads, hd, rb);
    if (!st && keep) st = q8_arena_add(q8, v->off, v->count);
    moelm_free(tmp);
    return st;
}

/* The tokenizer of tokenizer.ggml.*; the ids a sequence starts and ends with into cfg */
static moelm_status read_tokenizer(const Gguf *g, const char *path, Tokenizer **tok, ModelConfig *cfg) {
    moelm_status st = key_string_is(g, path, "tokenizer.ggml.model", "llama", "SentencePiece vocabularies ('llama')");
    if (st) return st;
    int V = cfg->vocab_size;
    int64_t bos, eos;
    int add_bos, add_space, remove_ws;
    if ((st = key_int(g, path, "tokenizer.ggml.bos_token_id", 0, V - 1, -1, &bos)) ||
        (st = key_int(g, path, "tokenizer.ggml.eos_token_id", 0, V - 1, -1, &eos)) ||
        (st = key_bool(g, "tokenizer.ggml.add_bos_token", 1, &add_bos)) ||
        (st = key_bool(g, "tokenizer.ggml.add_space_prefix", 1, &add_space)) ||
        (st = key_bool(g, "tokenizer.ggml.remove_extra_whitespaces", 0, &remove_ws)))
        return st;
    cfg->bos_token_id = add_bos ? (int)bos : -1;
    cfg->eos_token_id = (int)eos;
    if (!tok) return MOELM_OK;
    /* scores and types: optional arrays of V F32 / I32 */
    const void *sc = NULL, *ty = NULL;
    static const struct { const char *key; GgufType elem; } arr[2] = {{"tokenizer.ggml.scores", GGUF_TYPE_F32},
                                                                     {"tokenizer.ggml.token_type", GGUF_TYPE_I32}};
    for (int a = 0; a < 2; a++) {
        GgufType elem;
        uint64_t n;
        if (gguf_find_kv(g, arr[a].key) < 0) continue;
        if ((st = gguf_get_array(g, arr[a].key, &elem, &n, a ? &ty : &sc))) return st;
        if (elem != arr[a].elem || n != (uint64_t)V)
            return moelm_fail(MOELM_ERR_FORMAT, "%s: %s must be %d %s values (one per token)", path, arr[a].key, V,
                              gguf_type_name(arr[a].elem));
    }
    const char **pieces = moelm_malloc(sizeof(char *) * (size_t)V);
    uint64_t *lens = moelm_malloc(sizeof(uint64_t) * (size_t)V);
    float *scores = moelm_malloc(sizeof(float) * (size_t)V);
    int32_t *types = moelm_malloc(sizeof(int32_t) * (size_t)V);
    st = pieces && lens && scores && types ? MOELM_OK : MOELM_ERR_NOMEM;
    for (int i = 0; i < V && !st; i++) {
        st = gguf_get_array_str(g, "tokenizer.ggml.tokens", (uint64_t)i, &pieces[i], &lens[i]);
        if (!st && memchr(pieces[i], 0, (size_t)lens[i]))
            st = moelm_fail(MOELM_ERR_FORMAT, "%s: token %d holds a NUL byte", path, i);
        float s = 0.0f;
        int32_t ty1 = 1;
        if (sc) memcpy(&s, (const char *)sc + 4 * (size_t)i, 4);
        if (ty) memcpy(&ty1, (const char *)ty + 4 * (size_t)i, 4);
        scores[i] = s;
        types[i] = ty1;
    }
    if (!st) {
        TokenizerVocab tv = {TOK_BPE, V, pieces, lens, scores, types, (int)bos, (int)eos, add_space, remove_ws};
        char what[4200];
        snprintf(what, sizeof what, "%s: tokenizer.ggml", path);
        st = tokenizer_from_vocab(tok, &tv, what);
    }
    moelm_free(pieces);
    moelm_free(lens);
    moelm_free(scores);
    moelm_free(types);
    return st;
}

moelm_status llama_load_gguf(Model *m, Tokenizer **tok, Q8Arena *q8, const char *path, int B, int T) {
    memset(m, 0, sizeof *m);
    if (tok) *tok = NULL;
    if (q8) memset(q8, 0, sizeof *q8);
    Gguf *g = NULL;
    moelm_status st = gguf_open(&g, path);
    if (st) return st;
    ModelConfig cfg;
    Model plan;
    memset(&plan, 0, sizeof plan);
    LlamaHfTensor *v = NULL;
    int n = 0;
    st = read_config(g, path, &cfg);
    if (!st) st = read_tokenizer(g, path, tok, &cfg);
    if (!st) st = model_plan(&plan, &cfg);
    if (!st && !(v = llama_hf_tensors_alloc(&plan, &n))) st = MOELM_ERR_NOMEM;
    if (!st) st = check_tensors(g, path, &plan, v, n);
    if (plan.tensors) model_free(&plan);
    if (T <= 0) T = cfg.n_positions < 256 ? cfg.n_positions : 256;
    if (T > cfg.n_positions) T = cfg.n_positions;
    if (!st && (st = model_create_blank(m, &cfg, B, T)) != MOELM_OK) st = moelm_fail_context(st, "%s", path);
    if (!st && q8 && !(q8->blocks = moelm_malloc(sizeof(BlockQ8_0) * (m->n_params / Q8_0_BLOCK + 1)))) st = MOELM_ERR_NOMEM;
    for (int i = 0; i < n && !st; i++) st = read_view(g, path, m, q8, &v[i]);
    moelm_free(v);
    gguf_close(g);
    if (st) {
        if (m->params) model_free(m);
        if (q8) q8_arena_free(q8);
        if (tok) {
            tokenizer_free(*tok);
            *tok = NULL;
        }
    }
    return st;
}
