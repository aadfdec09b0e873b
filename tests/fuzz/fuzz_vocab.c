/* fuzz_vocab.c: libFuzzer target for tokenizer files as `moelm` opens them (tokenizer_load: the
 * moelm word/char vocabulary "MOELMVOC", or a SentencePiece .model; fuzz_spm_model.c goes deeper
 * into the latter).
 *
 * Properties: no crash, no leak; a failure has a one-line message naming the file; a loaded
 * tokenizer encodes a fixed text to ids in [0, V) and saves and loads back to the same hash.
 */
#include <stdint.h>
#include "tokenizer/tokenizer.h"
#include "fuzz_readers.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_file("tok.model", data, size);
    char saved[512];
    snprintf(saved, sizeof saved, "%s.saved", path);
    Tokenizer *t = NULL;
    if (tokenizer_load(&t, path) != MOELM_OK) {
        if (t) abort();
        fuzz_check_message(path);
    } else {
        static const char text[] = "the cat sat on the mat\nhello world \xc3\xa9\n";
        int *ids = NULL;
        size_t n = 0;
        if (tokenizer_encode(t, text, sizeof text - 1, &ids, &n) == MOELM_OK) {
            for (size_t i = 0; i < n; i++)
                if (ids[i] < 0 || ids[i] >= tokenizer_vocab_size(t)) abort();
            moelm_free(ids);
        }
        if (tokenizer_save(t, saved) != MOELM_OK) abort();
        Tokenizer *u = NULL;
        if (tokenizer_load(&u, saved) != MOELM_OK || tokenizer_hash(u) != tokenizer_hash(t)) abort();
        tokenizer_free(u);
        tokenizer_free(t);
    }
    if (moelm_alloc_live_bytes() != 0) abort();
    return 0;
}
