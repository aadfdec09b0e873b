/* fuzz_spm_model.c: libFuzzer target for the SentencePiece .model reader.
 *
 * Property: any byte string either fails to parse with a one-line message, or yields a model that
 * encodes, decodes and re-serialises without a crash, and whose re-serialised form parses again
 * to a model with the same content hash.
 * Build and run: tests/fuzz/run_spm.sh SECONDS
 */
#include "tokenizer/tok_internal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Tokenizer *t = NULL;
    if (spm_parse_model(&t, data, size, "fuzz.model") != MOELM_OK) {
        if (strchr(moelm_last_error(), '\n')) abort();   /* messages are one line */
        return 0;
    }
    static const char *inputs[] = {
        "Hello world", "  the  <s> king\t\xEF\xBD\x81\xE2\x91\xA0 ", "\xFF\xC3\x28 x", "", "\xE2\x96\x81\xE2\x96\x81 a b c",
    };
    for (size_t k = 0; k < sizeof inputs / sizeof inputs[0]; k++) {
        int *ids; size_t n;
        if (tokenizer_encode_line(t, inputs[k], strlen(inputs[k]), &ids, &n) == MOELM_OK) {
            for (size_t i = 0; i < n; i++) if (ids[i] < 0 || ids[i] >= t->V) abort();
            char *text;
            if (tokenizer_decode_line(t, ids, n, &text) == MOELM_OK) moelm_free(text);
            moelm_free(ids);
        }
    }
    uint8_t *buf; size_t len;
    if (spm_serialize_model(t, &buf, &len) == MOELM_OK) {
        Tokenizer *t2 = NULL;
        if (spm_parse_model(&t2, buf, len, "fuzz.model") != MOELM_OK) abort();
        if (tokenizer_hash(t2) != tokenizer_hash(t)) abort();
        tokenizer_free(t2);
        moelm_free(buf);
    }
    tokenizer_free(t);
    return 0;
}
