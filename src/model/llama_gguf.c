/* llama_gguf.c: a llama / mixtral model and its SentencePiece tokenizer as a GGUF file llama.cpp runs
 * (architecture "llama"; with llama.expert_count > 0 the Mixtral layout).
 *
 * Tensors, from llama_hf.c's HF view: token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output,
 * ffn_norm}, Mixtral's blk.N.ffn_gate_inp (router) and blk.N.ffn_{gate,up,down}_exps (the experts stacked:
 * [E, H, C], [E, H, C], [E, C, H] row-major), a dense model's blk.N.ffn_{gate,up,down}, output_norm, output
 * (written for a tied model too: the embedding again). llama.cpp's rotary embedding rotates interleaved
 * pairs (2i, 2i+1) of a head, HF's rotate_half pairs (i, i + hd/2): attn_q's and attn_k's rows are permuted
 * within each head, row 2i <- HF row i, row 2i+1 <- HF row i + hd/2, as llama.cpp's converter does; the
 * scores q.k are unchanged. Norms and the router stay F32; the other matrices take the requested type.
 *
 * The tokenizer: tokenizer.ggml.model "llama" (SentencePiece), its pieces, scores and types, the special
 * ids, and how moelm conditions text: a sequence starts with the tokenizer's end-of-text id (a line
 * break in training), so that id is the file's BOS with add_bos_token true, and no EOS is appended.
 */
#include "model/llama_gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "io/gguf.h"
#include "model/llama_hf.h"

/* dst[R, C] = src with the rows of each head of hd permuted from HF's rotate-half order to pairs */
static void permute_rope_rows(float *dst, const float *src, int heads, int hd, int C) {
    for (int h = 0; h < heads; h++)
        for (int i = 0; i < hd / 2; i++)
            for (int s = 0; s < 2; s++)
                memcpy(dst + ((size_t)h * hd + 2 * i + s) * C, src + ((size_t)h * hd + i + s * hd / 2) * C,
                       sizeof(float) * (size_t)C);
}

const char *llama_gguf_name(const char *hf, char *buf, size_t cap) {
    static const struct { const char *hf, *gg; } map[] = {
        {"input_layernorm.weight", "attn_norm.weight"}, {"self_attn.q_proj.weight", "attn_q.weight"},
        {"self_attn.k_proj.weight", "attn_k.weight"}, {"self_attn.v_proj.weight", "attn_v.weight"},
        {"self_attn.o_proj.weight", "attn_output.weight"}, {"post_attention_layernorm.weight", "ffn_norm.weight"},
        {"block_sparse_moe.gate.weight", "ffn_gate_inp.weight"}, {"mlp.gate_proj.weight", "ffn_gate.weight"},
        {"mlp.up_proj.weight", "ffn_up.weight"}, {"mlp.down_proj.weight", "ffn_down.weight"}, {NULL, NULL}};
    if (!strcmp(hf, "model.embed_tokens.weight")) return "token_embd.weight";
    if (!strcmp(hf, "model.norm.weight")) return "output_norm.weight";
    if (!strcmp(hf, "lm_head.weight")) return "output.weight";
    int l, at = 0;
    if (sscanf(hf, "model.layers.%d.%n", &l, &at) != 1 || !at) return NULL;
    for (int i = 0; map[i].hf; i++)
        if (!strcmp(hf + at, map[i].hf)) {
            snprintf(buf, cap, "blk.%d.%s", l, map[i].gg);
            return buf;
        }
    return NULL;
}

moelm_status llama_write_gguf(const Model *m, const Tokenizer *tok, const char *path, GgufTensorType type) {
    const ModelConfig *c = &m->cfg;
    int C = c->d_model, NH = c->num_heads, hd = C / NH, NKV = c->num_key_value_heads ? c->num_key_value_heads : NH;
    int V = c->vocab_size, L = c->num_layers, E = m->moe_cfg.E, H = m->moe_cfg.H;
    int mixtral = c->model_type == MODEL_MIXTRAL;
    if (tokenizer_kind(tok) != TOK_BPE && tokenizer_kind(tok) != TOK_UNIGRAM)
        return moelm_fail(MOELM_ERR_ARG, "export --format gguf: the model's tokenizer must be SentencePiece (bpe or unigram), "
                          "as llama.cpp's tokenizer is");
    if (tokenizer_vocab_size(tok) != V)
        return moelm_fail(MOELM_ERR_ARG, "export --format gguf: the tokenizer has %d pieces, the model %d",
                          tokenizer_vocab_size(tok), V);
    if (!tokenizer_byte_fallback(tok))
        return moelm_fail(MOELM_ERR_ARG, "export --format gguf: the tokenizer has no byte pieces (<0x00>..<0xFF>), which "
                          "llama.cpp needs: train with --tokenizer bpe:N:bytes");
    if (type == GGUF_TENSOR_Q8_0 && (C % 32 || H % 32))
        return moelm_fail(MOELM_ERR_ARG, "export --type q8_0: hidden_size (%d) and intermediate_size (%d) must be multiples "
                          "of 32 (Q8_0's blocks)", C, H);
    int n;
    LlamaHfTensor *v = llama_hf_tensors_alloc(m, &n);
    GgufWriter *w = gguf_writer_new();
    /* the permuted q and k rows, and a stacked copy of each expert matrix (a slab holds w1 and w3 together) */
    size_t qk = (size_t)L * (NH + NKV) * hd * C, ex = mixtral ? (size_t)L * 3 * E * H * C : 0;
    float *buf = moelm_malloc(sizeof(float) * (qk + ex + 1));
    const char **pieces = moelm_malloc(sizeof(char *) * (size_t)V);
    float *scores = moelm_malloc(sizeof(float) * (size_t)V);
    int32_t *types = moelm_malloc(sizeof(int32_t) * (size_t)V);
    moelm_status st = v && w && buf && pieces && scores && types ? MOELM_OK : MOELM_ERR_NOMEM;
    if (st) goto done;

    gguf_writer_add_string(w, "general.architecture", "llama");
    gguf_writer_add_string(w, "general.name", mixtral ? "moelm mixtral" : "moelm llama");
    uint32_t ftype = type == GGUF_TENSOR_F32 ? 0 : type == GGUF_TENSOR_F16 ? 1 : type == GGUF_TENSOR_Q8_0 ? 7 : 32;
    gguf_writer_add_u32(w, "general.file_type", ftype);
    gguf_writer_add_u32(w, "llama.vocab_size", (uint32_t)V);
    gguf_writer_add_u32(w, "llama.context_length", (uint32_t)c->n_positions);
    gguf_writer_add_u32(w, "llama.embedding_length", (uint32_t)C);
    gguf_writer_add_u32(w, "llama.block_count", (uint32_t)L);
    gguf_writer_add_u32(w, "llama.feed_forward_length", (uint32_t)c->d_ff);
    gguf_writer_add_u32(w, "llama.attention.head_count", (uint32_t)NH);
    gguf_writer_add_u32(w, "llama.attention.head_count_kv", (uint32_t)NKV);
    gguf_writer_add_f32(w, "llama.attention.layer_norm_rms_epsilon", c->layer_norm_epsilon);
    gguf_writer_add_f32(w, "llama.rope.freq_base", c->rope_theta);
    gguf_writer_add_u32(w, "llama.rope.dimension_count", (uint32_t)hd);
    if (mixtral) {
        gguf_writer_add_u32(w, "llama.expert_count", (uint32_t)E);
        gguf_writer_add_u32(w, "llama.expert_used_count", (uint32_t)m->moe_cfg.K);
    }

    for (int i = 0; i < V; i++) {
        pieces[i] = tokenizer_piece(tok, i);
        scores[i] = tokenizer_piece_score(tok, i);
        types[i] = tokenizer_piece_type(tok, i);
    }
    int sep = tokenizer_eos_id(tok), unk = tokenizer_unk_id(tok);
    gguf_writer_add_string(w, "tokenizer.ggml.model", "llama");
    gguf_writer_add_array_str(w, "tokenizer.ggml.tokens", pieces, (uint64_t)V);
    gguf_writer_add_array(w, "tokenizer.ggml.scores", GGUF_TYPE_F32, scores, (uint64_t)V);
    gguf_writer_add_array(w, "tokenizer.ggml.token_type", GGUF_TYPE_I32, types, (uint64_t)V);
    if (sep >= 0) {
        gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)sep);
        gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)sep);
    }
    if (unk >= 0) gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)unk);
    gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", sep >= 0);
    gguf_writer_add_bool(w, "tokenizer.ggml.add_eos_token", 0);
    gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", tokenizer_adds_space_prefix(tok));
    gguf_writer_add_bool(w, "tokenizer.ggml.remove_extra_whitespaces", tokenizer_removes_extra_spaces(tok));

    float *q = buf, *x = buf + qk;
    int64_t shape[3];
    char nm[96];
    for (int i = 0; i < n; i++) {
        const LlamaHfTensor *t = &v[i];
        const float *data = m->params + t->off;
        const char *name = llama_gguf_name(t->name, nm, sizeof nm);
        if (!name) continue;   /* an expert's own matrix: stacked below, with its layer's router */
        int norm = t->ndim == 1, router = strstr(name, "ffn_gate_inp") != NULL;
        int heads = strstr(name, ".attn_q.") ? NH : strstr(name, ".attn_k.") ? NKV : 0;
        if (heads) {
            permute_rope_rows(q, data, heads, hd, C);
            data = q;
            q += (size_t)heads * hd * C;
        }
        shape[0] = t->shape[0];
        shape[1] = t->shape[1];
        gguf_writer_add_tensor(w, name, norm || router ? GGUF_TENSOR_F32 : type, t->ndim, shape, data);
        if (!strcmp(name, "token_embd.weight") && c->tie_word_embeddings)   /* llama.cpp's head: output.weight */
            gguf_writer_add_tensor(w, "output.weight", type, 2, shape, data);
        if (router) {
            /* this layer's experts, stacked per matrix: gate (HF w1), up (w3), down (w2) */
            int l = atoi(name + 4);
            const char *part[3] = {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"};
            for (int p = 0; p < 3; p++) {
                for (int e = 0; e < E; e++) {
                    char hn[128];
                    snprintf(hn, sizeof hn, "model.layers.%d.block_sparse_moe.experts.%d.%s.weight", l, e,
                             p == 0 ? "w1" : p == 1 ? "w3" : "w2");
                    const LlamaHfTensor *et = NULL;
                    for (int j = 0; j < n && !et; j++) if (!strcmp(v[j].name, hn)) et = &v[j];
                    CHECK(et != NULL);
                    memcpy(x + (size_t)e * H * C, m->params + et->off, sizeof(float) * (size_t)H * C);
                }
                int64_t es[3] = {E, p == 2 ? C : H, p == 2 ? H : C};
                snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, part[p]);
                gguf_writer_add_tensor(w, nm, type, 3, es, x);
                x += (size_t)E * H * C;
            }
        }
    }
    st = gguf_writer_write(w, path);
done:
    gguf_writer_free(w);
    moelm_free(v);
    moelm_free(buf);
    moelm_free(pieces);
    moelm_free(scores);
    moelm_free(types);
    return st;
}
