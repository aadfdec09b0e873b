/* fuzz_gguf_model.c: libFuzzer target for GGUF files read as models (llama_load_gguf: the llama.*
 * keys, the tensors against them, the tokenizer from tokenizer.ggml.*), with the Q8_0 matrices kept.
 *
 * Each input goes to a file and is loaded. Properties: no crash or leak; a rejected file gives a
 * one-line message naming it; an accepted one has a config that passes config_check, a tokenizer
 * whose size is the vocabulary's, and runs three generation steps from its blocks (the first token,
 * then the argmax) with finite-or-not logits but no fault.
 */
#include "common/util.h"
#include "model/llama_gguf.h"
#include "fuzz_readers.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_file("in.gguf", data, size);
    Model m;
    Tokenizer *tok = NULL;
    Q8Arena q8;
    if (llama_load_gguf(&m, &tok, &q8, path, 1, 2) != MOELM_OK) {
        if (tok != NULL || q8.blocks != NULL) abort();
        fuzz_check_message(path);
    } else {
        if (config_check(&m.cfg) != MOELM_OK || tokenizer_vocab_size(tok) != m.cfg.vocab_size) abort();
        KVCache kv;
        if (kv_create(&kv, &m) == MOELM_OK) {
            if (kv_load_weights(&kv, &m, 0) == MOELM_OK && kv_use_q8(&kv, &m, &q8) == MOELM_OK) {
                int token = 0;
                for (int t = 0; t < 3 && t < m.cfg.n_positions; t++) {
                    model_step_kv(&m, &kv, token);
                    token = sample_token(kv.logits, m.cfg.vocab_size, 0.0f, 0, 1.0f, NULL, NULL);
                }
            }
            kv_free(&kv);
        }
        q8_arena_free(&q8);
        tokenizer_free(tok);
        model_free(&m);
    }
    if (moelm_alloc_live_bytes() != 0) abort();
    return 0;
}
