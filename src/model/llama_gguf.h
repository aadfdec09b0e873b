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

#endif
