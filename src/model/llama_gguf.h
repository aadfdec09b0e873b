/* llama_gguf.h: a llama / mixtral model with its SentencePiece tokenizer as a GGUF file for llama.cpp
 * (llama_gguf.c: names, keys, the rotary row order). */
#ifndef MOELM_LLAMA_GGUF_H
#define MOELM_LLAMA_GGUF_H

#include "io/gguf.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

/* Writes m (whole, not expert-sharded) and tok to path, the matrices as type (F32, F16, BF16 or Q8_0;
 * norms and routers F32). MOELM_ERR_ARG, naming the problem, for a tokenizer llama.cpp cannot use (not
 * SentencePiece, no byte pieces, another vocabulary size) or Q8_0 with widths not multiples of 32. */
moelm_status llama_write_gguf(const Model *m, const Tokenizer *tok, const char *path, GgufTensorType type);

/* The GGUF name of a Hugging Face tensor name of the family ("model.layers.3.self_attn.q_proj.weight" ->
 * "blk.3.attn_q.weight") into buf; NULL for a per-expert tensor (stacked in blk.N.ffn_*_exps) or an
 * unknown name. */
const char *llama_gguf_name(const char *hf, char *buf, size_t cap);

/* Reads a GGUF file of architecture "llama" (llama.expert_count > 0: Mixtral's layout), as this file
 * writes it or llama.cpp's converter does: the config from the llama.* keys (n_positions is
 * llama.context_length, at most LLAMA_GGUF_MAX_CONTEXT), the weights into a blank model for B x T
 * (T <= 0: 256 or the context if shorter; at most the context) with attn_q's and attn_k's rows put back in HF's order and
 * the experts' stacks into moelm's slabs, F32, F16, BF16 and Q8_0 converted to float; with q8 (not
 * NULL) the Q8_0 matrices (not the routers) stay Q8_0 blocks in q8 instead (their floats are never
 * written: kv_use_q8 reads them). With tok (not NULL) the tokenizer from tokenizer.ggml.* (model
 * "llama": SentencePiece BPE, as llama.cpp tokenizes). m->cfg.bos_token_id is the id a sequence starts
 * with (tokenizer.ggml.bos_token_id when add_bos_token, else -1), eos_token_id the file's EOS.
 * Everything is checked against the file before anything is allocated for it: one-line errors
 * (MOELM_ERR_FORMAT) naming the file and the key or tensor. */
#define LLAMA_GGUF_MAX_CONTEXT 4096
moelm_status llama_load_gguf(Model *m, Tokenizer **tok, Q8Arena *q8, const char *path, int B, int T);

#endif
